# guardian's container image. Build: docker build -t guardian .   Run it with deploy/compose/compose.yaml
# (config, secrets and the journal's volume are mounted there; none of them is ever in the image).
#
# The build context is only pyproject.toml, README.md, requirements/run.txt and guardian/ (.dockerignore
# allows nothing else), so no secret, journal or virtualenv of the checkout can end up in a layer.
#
# The base image is pinned by digest: the multi-platform index of python:3.11-slim-bookworm (Python 3.11.16 on
# the Debian bookworm of 2026-08-24), as docker-library/repo-info records it (repos/python/remote/
# 3.11-slim-bookworm.md at commit 33a22f41ac7bf613bc03380b0317536a9a7fb5e8). To move to a newer build, take
# the digest from that file (or `docker buildx imagetools inspect python:3.11-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/guardian
WORKDIR /src
# Exact versions with hashes, and the setuptools that builds guardian: nothing unhashed is installed.
COPY requirements/run.txt ./requirements/run.txt
RUN /opt/guardian/bin/pip install --require-hashes --no-deps --requirement requirements/run.txt
COPY pyproject.toml README.md ./
COPY guardian ./guardian
RUN /opt/guardian/bin/pip install --no-deps --no-build-isolation . \
 && /opt/guardian/bin/pip check

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/guardian/bin:$PATH
# A fixed, unprivileged uid: compose file secrets are bind mounts, readable only if the host file is
# (chown 10001 on the host, see docs/docker.md).
RUN groupadd --system --gid 10001 guardian \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/guardian \
      --shell /usr/sbin/nologin guardian \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/guardian \
 && install -d -m 0755 /etc/guardian
COPY --from=build /opt/guardian /opt/guardian
USER 10001:10001
WORKDIR /var/lib/guardian
# The journal (journal.path = "/var/lib/guardian/journal.sqlite3"): keep it on a volume.
VOLUME ["/var/lib/guardian"]
# server.listen must be "0.0.0.0:8787" in a container; publish the port on the host's loopback only.
EXPOSE 8787
# guardian stops in order on SIGTERM and bounds the whole stop at 9 s, inside `docker stop`'s default
# 10 s (compose.yaml gives it 15 s).
STOPSIGNAL SIGTERM
# Liveness: /healthz answers 200 while the event loop runs and every switch task lives. `guardian
# healthcheck` asks it on the port of the configuration's server.listen, over https when it has
# tls_cert_file (trusting that certificate); an HTTP error or no answer exits non-zero. Run with another
# configuration path, or with mutual TLS (a client certificate), give the command again (docs/docker.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/guardian/bin/guardian", "healthcheck", "--config", "/etc/guardian/config.toml"]
ENTRYPOINT ["/opt/guardian/bin/guardian"]
CMD ["run", "--config", "/etc/guardian/config.toml"]
