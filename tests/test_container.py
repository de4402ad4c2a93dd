"""The image, built and run for real: podman (with runc) builds the Dockerfile and runs it as compose would.

No image registry is reachable here, so a Debian bookworm made with debootstrap (Python 3.11.2, python3-venv)
stands in for python:3.11-slim-bookworm (`--build-arg PYTHON_IMAGE`). It is kept in podman's image store
under a tag keyed by its recipe and rebuilt after BASE_MAX_AGE_DAYS: a warm run builds nothing but what
changed in the checkout, a fresh machine builds it all (about a minute). The commands and their flags are
the ones docs/docker.md gives for podman on this kind of machine (../shared/containers.md found them):

- runc, not crun ("cgroups in hybrid mode not supported"); rlimits cannot be set in a container here, so
  the build gets low explicit ones, the run `--ulimit host`, and podman a containers.conf with
  `default_ulimits = []` (CONTAINERS_CONF, written by this module: nothing in /etc is changed);
- `--format docker`, or podman drops the HEALTHCHECK; `--network host`, so guardian listens on the host's
  127.0.0.1:8787, the port the HEALTHCHECK probes.

The container gets compose's hardening (init, read-only root, no capabilities, no-new-privileges, a tmpfs
/tmp), compose's config (deploy/compose/config.toml, pointed at a simulator this test runs on the host), its
secrets as read-only files under /run/secrets and the journal on a named volume. The build context and the
image's additions over its base are listed and held against what .dockerignore and the Dockerfile allow.
The compose file goes through `docker compose config` or `podman-compose config`, where one of them has it.

Skipped, with podman's own error, where podman cannot run a container, and when not run as root; a missing
program fails (`make tools` installs them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from guardian.journal import read_journal
from guardian.sim.app import Simulator
from tests.conftest import TRADE_KEY, TRADE_SECRET
from tests.daemon import signed_post

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "config.toml"

# Every test here shares one build: the first pays for it (cold: debootstrap about 45 s, the build about
# 20 s), so the bound is the sum of the subprocess bounds below, not the usual minute.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The stand-in base: the recipe is its cache key (change it and the base is rebuilt).
BASE_REPOSITORY = "localhost/guardian-test-base"
BASE_MAX_AGE_DAYS = 30
DEBOOTSTRAP = ("--variant=minbase", "--include=python3,python3-venv", "bookworm")
BASE_RECIPE = (
    f"debootstrap {' '.join(DEBOOTSTRAP)}; ln -sf python3 /usr/bin/python (the Dockerfile calls `python`); "
    "rm /var/cache/apt/archives/*.deb /var/lib/apt/lists/* (as the slim image does)"
)
IMAGE = "localhost/guardian-test:latest"
BUILD_STAGE = "localhost/guardian-test-build:latest"  # the Dockerfile's first stage

# The build context, by .dockerignore, and what the image keeps of the checkout.
CONTEXT = ("pyproject.toml", "README.md", "requirements/run.txt", "guardian")
UID = 10001
LISTEN = "127.0.0.1:8787"  # the HEALTHCHECK's port, on the host's network
# Directories of the checkout whose files are not the project's (caches, the virtualenv's packages).
NOT_THE_PROJECT = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
# Shorter than this, a file's content says nothing of where it came from (an empty __init__.py).
MIN_TELLING_SIZE = 64

GRID_BOT_KEY = "grid-bot-key-0001"  # deploy/compose/config.toml's bot


# ---- podman -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    """`podman --runtime runc` with this module's containers.conf; every call bounded in time."""

    env: dict[str, str]

    def __call__(
        self, *args: str | Path, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--runtime", "runc", *map(str, args)]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and done.returncode != 0:
            pytest.fail(f"`{' '.join(argv)}` exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def run_async(self, *args: str | Path, timeout: float, check: bool = True) -> Any:
        """The same, in a thread: the simulator keeps serving on the event loop meanwhile."""
        return asyncio.to_thread(self, *args, timeout=timeout, check=check)


def program(name: str) -> str:
    # debootstrap and runc live in /usr/sbin, which a non-login PATH may lack.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: `make tools` installs it (as root; apt-get install {name})")
    return path


def reason(done: subprocess.CompletedProcess[str]) -> str:
    """A failed command's own words: its error line, else its last line."""
    said = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    errors = [line for line in said if re.search(r"error|unknown|not found|denied", line, re.IGNORECASE)]
    return (errors or said or [f"exit status {done.returncode}"])[-1 if not errors else 0]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    for name in ("podman", "runc", "catatonit", "debootstrap"):  # catatonit: compose's `init: true`
        program(name)
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    conf.write_text("[containers]\n# rlimits cannot be set in a container here.\ndefault_ulimits = []\n")
    if os.geteuid() != 0:
        # debootstrap, `podman image mount` and giving the secrets to group 10001 all need root.
        pytest.skip("these tests run podman as root, as CI does (`make test` as root)")
    tool = Podman({**os.environ, "CONTAINERS_CONF": str(conf)})
    done = tool("info", timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"podman cannot run here: `podman info`: {reason(done)}")
    return tool


def image_created(podman: Podman, reference: str) -> float | None:
    """When an image was made (epoch seconds), or None if there is no such image."""
    done = podman("images", "--format", "json", "--filter", f"reference={reference}", timeout=60)
    found = json.loads(done.stdout or "[]")
    return float(found[0]["Created"]) if found else None


@pytest.fixture(scope="module")
def base(podman: Podman) -> str:
    """The stand-in for python:3.11-slim-bookworm, built once per recipe (and month) on a machine."""
    key = hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]
    tag = f"{BASE_REPOSITORY}:bookworm-{key}"
    created = image_created(podman, tag)
    if created is None or time.time() - created > BASE_MAX_AGE_DAYS * 86400:
        build_base(podman, tag)
        for old in podman(
            "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY, timeout=60
        ).stdout.split():
            if old != tag:
                podman("rmi", old, timeout=60, check=False)  # still used by an older build: left
    # podman can store and build; whether it can run a container here is known only by running one.
    probe = podman(
        "run", "--rm", "--ulimit", "host", "--network", "host", tag, "true", timeout=120, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container here: `podman run`: {reason(probe)}")
    return tag


def build_base(podman: Podman, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="guardian-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        done = subprocess.run(
            [program("debootstrap"), *DEBOOTSTRAP, str(rootfs)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        (rootfs / "usr" / "bin" / "python").symlink_to("python3")
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], timeout=300, check=True)
        podman("import", "--message", BASE_RECIPE, tarball, tag, timeout=300)


@pytest.fixture(scope="module")
def image(podman: Podman, base: str) -> str:
    """The Dockerfile built over the stand-in base, with the flags docs/docker.md gives for podman.

    The build stage is tagged too: when the checkout changed, both stages' previous builds are removed
    (with their layers no newer build shares), so repeated runs keep two images, not one per change."""
    flags = [
        "--format", "docker",
        "--ulimit", "nofile=1024:1024",
        "--ulimit", "nproc=1024:1024",
        "--network", "host",
        "--build-arg", f"PYTHON_IMAGE={base}",
        "-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
        "-f", DOCKERFILE,
    ]  # fmt: skip
    before = {tag: image_id(podman, tag) for tag in (BUILD_STAGE, IMAGE)}
    podman("build", *flags, "--target", "build", "-t", BUILD_STAGE, ROOT, timeout=600)
    podman("build", *flags, "-t", IMAGE, ROOT, timeout=600)  # the build stage comes from the cache
    for tag, old in before.items():
        if old and old != image_id(podman, tag):
            podman("rmi", old, timeout=60, check=False)
    return IMAGE


def image_id(podman: Podman, reference: str) -> str:
    return podman("images", "--quiet", "--no-trunc", reference, timeout=60).stdout.strip()


def image_diff(podman: Podman, image: str, base: str) -> dict[str, str]:
    """Every path the image adds (A), changes (C) or deletes (D) over its base."""
    done = podman("image", "diff", image, base, timeout=120)
    return {line[2:]: line[0] for line in done.stdout.splitlines() if line.strip()}


# ---- what of the checkout reaches the build and the image ---------------------------------------------


def checkout_context() -> set[str]:
    """What .dockerignore lets into the build context, by its rules: the allowed paths, with their parent
    directories, less __pycache__ and *.pyc."""
    found = set()
    for entry in CONTEXT:
        path = ROOT / entry
        found.update(str(parent) for parent in Path(entry).parents if str(parent) != ".")
        found.add(entry)
        if path.is_dir():
            for sub in path.rglob("*"):
                rel = sub.relative_to(ROOT)
                if "__pycache__" not in rel.parts and sub.suffix != ".pyc":
                    found.add(str(rel))
    return found


def package_files() -> set[str]:
    """The files of guardian/ a wheel holds: its modules and pyproject.toml's package data."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "guardian"
    files = {
        str(path.relative_to(package))
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    return {
        name for name in files if name.endswith(".py") or any(Path(name).match(p) for p in data["guardian"])
    }


def checkout_fingerprints() -> dict[str, set[str]]:
    """sha256 of every file of the checkout (caches and the virtualenv aside) -> its paths."""
    prints: dict[str, set[str]] = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in NOT_THE_PROJECT]
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size < MIN_TELLING_SIZE:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            prints.setdefault(digest, set()).add(str(path.relative_to(ROOT)))
    return prints


def test_the_build_context_is_only_what_dockerignore_allows(
    podman: Podman, base: str, tmp_path: Path
) -> None:
    """A probe build copies the whole context (`COPY . /ctx`) from the checkout, with its .dockerignore."""
    (tmp_path / "Containerfile").write_text(f"FROM {base}\nCOPY . /ctx/\n")
    probe = f"localhost/guardian-test-context:{uuid.uuid4().hex[:12]}"
    podman("build", "--network", "host", "-t", probe, "-f", tmp_path / "Containerfile", ROOT, timeout=300)
    try:
        added = image_diff(podman, probe, base)
    finally:
        podman("rmi", "-f", probe, timeout=60, check=False)
    context = {path.removeprefix("/ctx/") for path in added if path.startswith("/ctx/")}
    assert context == checkout_context(), (
        f"in the context, not allowed: {sorted(context - checkout_context())}; "
        f"allowed, missing: {sorted(checkout_context() - context)}"
    )


def test_the_image_adds_the_virtualenv_and_guardians_user_and_nothing_else_of_the_checkout(
    podman: Podman, base: str, image: str
) -> None:
    added = image_diff(podman, image, base)
    # The Dockerfile's runtime stage: the user and group (with the shadow files' backups), two empty
    # directories and the virtualenv. The build stage's /src is not there.
    expected = {"/etc/guardian", "/var/lib/guardian", "/opt/guardian"}
    accounts = {
        f"/etc/{name}{suffix}" for name in ("passwd", "group", "shadow", "gshadow") for suffix in ("", "-")
    }
    parents = {"/opt", "/etc", "/var", "/var/lib"}
    elsewhere = {
        path: change
        for path, change in added.items()
        if not path.startswith("/opt/guardian/") and path not in expected | accounts | parents
    }
    assert elsewhere == {}, "the image changes its base outside what the Dockerfile means to"
    assert expected <= added.keys() and "D" not in added.values(), added
    venv_files = [path for path in added if path.startswith("/opt/guardian/")]

    mounted = podman("image", "mount", image, timeout=60)
    try:
        top = Path(mounted.stdout.strip())
        assert list((top / "etc" / "guardian").iterdir()) == []
        assert list((top / "var" / "lib" / "guardian").iterdir()) == []
        (site,) = (top / "opt" / "guardian" / "lib").glob("python3.*/site-packages")
        installed = {
            str(path.relative_to(site / "guardian"))
            for path in (site / "guardian").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        assert installed == package_files(), "the image's guardian package is not the checkout's"
        # Content: no file the Dockerfile added is a copy of a checkout file (a test, a doc, a journal, a
        # secret, the lock, ...), except guardian's own modules where the wheel puts them.
        prints = checkout_fingerprints()
        copies = {}
        for path in venv_files:
            file = top / path.lstrip("/")
            if file.is_symlink() or not file.is_file():
                continue
            origins = prints.get(hashlib.sha256(file.read_bytes()).hexdigest(), set())
            allowed = (
                f"guardian/{file.relative_to(site / 'guardian')}"
                if file.is_relative_to(site / "guardian")
                else None
            )
            if origins - {allowed}:
                copies[path] = sorted(origins)
        assert copies == {}, "checkout files copied into the image"
    finally:
        podman("image", "unmount", image, timeout=60, check=False)


# ---- the image, running as compose runs it -----------------------------------------------------------


def compose_guardian() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]["guardian"]
    return service


def stop_grace_s(service: dict[str, Any]) -> int:
    match = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert match, service["stop_grace_period"]
    return int(match[1])


def hardening(service: dict[str, Any]) -> list[str]:
    """compose.yaml's settings for the guardian container, as podman run flags."""
    flags = ["--init"] if service.get("init") else []
    flags += ["--read-only"] if service.get("read_only") else []
    flags += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    flags += [f"--security-opt={opt}" for opt in service.get("security_opt", [])]
    flags += [f"--tmpfs={path}" for path in service.get("tmpfs", [])]
    return flags


def write_config(directory: Path, sim_url: str) -> Path:
    """compose's config.toml, listening on the host's loopback and trading with the test's simulator."""
    text = COMPOSE_CONFIG.read_text()
    assert text.count('listen = "0.0.0.0:8787"') == 1 and text.count('name = "main"\n') == 1
    text = text.replace('listen = "0.0.0.0:8787"', f'listen = "{LISTEN}"')
    text = text.replace('name = "main"\n', f'name = "main"\nbase_url = "{sim_url}"\n')
    config = directory / "config.toml"
    config.write_text(text)
    config.chmod(0o644)
    return config


def write_secrets(directory: Path, names: Sequence[str]) -> dict[str, Path]:
    """Each secret in its own file, readable by the container's group only (as docs/docker.md has it)."""
    values = {
        "admin_token": secrets.token_urlsafe(32),
        "main_api_key": TRADE_KEY,
        "main_api_secret": TRADE_SECRET,
        "grid_bot_api_secret": base64.b64encode(os.urandom(64)).decode(),
    }
    assert set(names) == set(values), names
    directory.mkdir(mode=0o700)
    files = {}
    for name in names:
        files[name] = directory / name
        files[name].write_text(values[name] + "\n")
        os.chown(files[name], 0, UID)
        files[name].chmod(0o440)
    return files


def events(logs: str) -> list[dict[str, Any]]:
    found = []
    for line in logs.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


async def container_logs(podman: Podman, name: str) -> str:
    """guardian logs on stderr; `podman logs` keeps the container's stdout and stderr apart."""
    done = await podman.run_async("logs", name, timeout=30)
    return done.stdout + done.stderr


def port_taken(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def journal_on_volume(volume: Path, config: Path) -> None:
    """The volume belongs to the container's user (podman filled it from the image's VOLUME directory, as
    Docker does for compose's named volume) and holds the journal, with the bot's order in it."""
    assert (volume.stat().st_uid, volume.stat().st_mode & 0o777) == (UID, 0o700)
    journal = volume / Path(tomllib.loads(config.read_text())["journal"]["path"]).name
    assert journal.stat().st_size > 0 and journal.read_bytes()[:16] == b"SQLite format 3\x00"
    rows = read_journal(journal)
    orders = [
        (row["bot"], row["verdict"])
        for row in rows
        if row["type"] == "request" and row["endpoint"] == "sendorder"
    ]
    assert orders == [("grid-bot", "forwarded")], rows
    assert any(row["type"] == "event" and row["kind"] == "switch_state" for row in rows), rows


async def test_the_image_runs_as_compose_runs_it_serves_and_stops_in_order(
    podman: Podman, image: str, sim: Simulator, tmp_path: Path
) -> None:
    assert not port_taken(LISTEN), f"something already listens on {LISTEN}, where the HEALTHCHECK probes"
    service = compose_guardian()
    config = write_config(tmp_path, sim.url)
    secret_files = write_secrets(tmp_path / "secrets", service["secrets"])
    grid_secret = secret_files["grid_bot_api_secret"].read_text().strip()
    name = f"guardian-test-{uuid.uuid4().hex[:12]}"
    volume = f"{name}-journal"
    (config_mount,) = [v for v in service["volumes"] if v.startswith("./config.toml:")]
    (journal_mount,) = [v for v in service["volumes"] if v.startswith("journal:")]
    argv = [
        "run", "--detach", "--name", name,
        "--ulimit", "host", "--network", "host", "--log-driver", "k8s-file",
        *hardening(service),
        "--volume", config_mount.replace("./config.toml", str(config), 1),
        "--volume", journal_mount.replace("journal", volume, 1),
        *[f"--volume={path}:/run/secrets/{secret}:ro" for secret, path in secret_files.items()],
        image,
    ]  # fmt: skip
    try:
        await podman.run_async(*argv, timeout=120)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # Ready: every switch armed with the simulator, through the mounted config and secrets.
            deadline = time.monotonic() + 60
            ready: Any = None
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"http://{LISTEN}/readyz") as response:
                        ready = (response.status, await response.json())
                        if ready == (200, {"status": "ready"}):
                            break
                state = await podman.run_async("inspect", "--format", "{{.State.Status}}", name, timeout=30)
                if state.stdout.strip() != "running":
                    break
                await asyncio.sleep(0.5)
            logs = await container_logs(podman, name)
            assert ready == (200, {"status": "ready"}), f"/readyz: {ready}\n{logs}"
            assert sim.switch_remaining("main") is not None, "the switch is not armed on the simulator"

            # The grid bot's order goes through: its secret came from its file, the account's too.
            body = "orderType=lmt&symbol=PF_XBTUSD&side=buy&size=0.1&limitPrice=59000"
            status, _, answer = await signed_post(
                http, f"http://{LISTEN}", GRID_BOT_KEY, grid_secret, "/derivatives/api/v3/sendorder", body
            )
            assert (status, answer.get("result"), answer.get("sendStatus", {}).get("status")) == (
                200,
                "success",
                "placed",
            ), answer
            assert len(sim.requests_for("sendorder")) == 1

        # Not root: the process, and what `exec` runs.
        said = (await podman.run_async("exec", name, "id", timeout=30)).stdout.strip()
        assert said.startswith(f"uid={UID}(guardian) gid={UID}(guardian)"), said
        top = (await podman.run_async("top", name, "huser", "args", timeout=30)).stdout.splitlines()[1:]
        assert top and all(line.split()[0] == str(UID) for line in top), top
        assert any(
            "/opt/guardian/bin/guardian run --config /etc/guardian/config.toml" in line for line in top
        )

        # The image's HEALTHCHECK, run once by podman (it logs an error about systemd timers: harmless).
        check = await podman.run_async("healthcheck", "run", name, timeout=60, check=False)
        assert check.returncode == 0, f"healthcheck: {check.stdout}{check.stderr}"
        health = await podman.run_async("inspect", "--format", "{{.State.Health.Status}}", name, timeout=30)
        assert health.stdout.strip() == "healthy"

        # Stop as compose would: SIGTERM, then SIGKILL after stop_grace_period. guardian is out in order
        # well before, keeping the switch armed (on_shutdown = "keep").
        started = time.monotonic()
        await podman.run_async("stop", "-t", str(stop_grace_s(service)), name, timeout=60)
        took = time.monotonic() - started
        logs = await container_logs(podman, name)
        exit_code = (
            await podman.run_async("inspect", "--format", "{{.State.ExitCode}}", name, timeout=30)
        ).stdout
        assert took < 10, f"podman stop took {took:.1f} s"
        print(f"podman stop -t {stop_grace_s(service)}: guardian was out in {took:.2f} s")
        assert exit_code.strip() == "0", logs
        said = [e["event"] for e in events(logs)]
        ends = [e for e in said if e in ("guardian_stopping", "shutdown_switch_kept", "guardian_stopped")]
        assert ends == ["guardian_stopping", "shutdown_switch_kept", "guardian_stopped"], logs
        remaining = sim.switch_remaining("main")
        assert remaining is not None and remaining > 30, remaining

        # The journal is on the volume, owned by the container's user, with the bot's order in it.
        mountpoint = await podman.run_async(
            "volume", "inspect", "--format", "{{.Mountpoint}}", volume, timeout=30
        )
        journal_on_volume(Path(mountpoint.stdout.strip()), config)
    except BaseException:
        said = podman("logs", name, timeout=30, check=False)
        print(f"---- the container's logs ----\n{said.stdout}{said.stderr}")
        raise
    finally:
        podman("rm", "--force", "--time", "0", name, timeout=60, check=False)
        podman("volume", "rm", "--force", volume, timeout=60, check=False)


# ---- compose ------------------------------------------------------------------------------------------


def compose_commands() -> list[tuple[list[str], list[str]]]:
    """The compose programs here, each with the command that tells whether it can `config`: Docker's
    plugin, then podman-compose (the virtualenv's first: PyPI's has `config` since 1.1, Debian bookworm's
    1.0.3 has not)."""
    found = []
    docker = shutil.which("docker")
    if docker is not None:
        found.append(([docker, "compose"], [docker, "compose", "version"]))
    podman_compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "podman-compose"
    )
    if podman_compose is not None:
        found.append(([podman_compose], [podman_compose, "config", "--help"]))
    return found


def test_the_compose_file_passes_compose_config(tmp_path: Path) -> None:
    """Run on a copy of deploy/ with placeholder secrets (compose may insist that they exist)."""
    copy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", copy, ignore=shutil.ignore_patterns("secrets"))
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    doc = yaml.safe_load(COMPOSE.read_text())
    (copy / "compose" / "secrets").mkdir(mode=0o700)
    for secret in doc["secrets"].values():
        (copy / "compose" / secret["file"]).write_text("placeholder\n")
    unable = []
    for command, probe in compose_commands():
        can = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
        if can.returncode != 0:
            said = " ".join([Path(probe[0]).name, *probe[1:]])
            unable.append(f"`{said}`: {reason(can)}")
            continue
        done = subprocess.run(
            [*command, "-f", "compose.yaml", "config"],
            cwd=copy / "compose",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"`{' '.join(command)} config`:\n{done.stdout}{done.stderr}"
        normalized = yaml.safe_load(done.stdout)
        assert normalized["name"] == doc["name"]
        assert set(normalized["services"]) == set(doc["services"])
        assert set(normalized["secrets"]) == set(doc["secrets"])
        return
    if not any(Path(probe[0]).name == "podman-compose" for _, probe in compose_commands()):
        unable.append("podman-compose is not installed (PyPI's, 1.1 or later, has `config`)")
    if not any(Path(probe[0]).name == "docker" for _, probe in compose_commands()):
        unable.append("docker is not installed")
    pytest.skip("no compose here validates a file: " + "; ".join(unable))
