"""TLS and mutual TLS on the local server (issue 23), against real things: a CA made here with the
`openssl` command, a real daemon on loopback in front of the simulator, and real clients (ccxt over
`https://`, ccxt.pro over `wss://`, aiohttp, raw `ssl` sockets).

- ccxt trades and ccxt.pro streams through guardian over TLS when given the CA; without it they refuse.
- With `tls_client_ca_file`, a connection without a client certificate, or with one from another CA, is
  refused at the handshake: no HTTP byte comes back and nothing reaches the gateway.
- With `tls_client_subject`, a bot's key on a connection whose certificate names another bot is refused
  `authenticationError` (REST) or `Failed to subscribe` (ws/v1), never forwarded, and counted.
- A key file its group or others can read makes `guardian run` and `check-config` exit 78; check-config
  reports the certificate's subject, expiry and days left; the expiry is a metric; reload_tls serves a new
  certificate to new handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest

from guardian import tls
from guardian.config import ClientConfig, Config, JournalConfig, ServerConfig, parse_config
from guardian.errors import ConfigError
from guardian.kraken.endpoints import Permission
from guardian.notify import Notifier
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, metric, wait_for
from tests.relay_helpers import AUTH_FAILED, GUARD, STREAM, SWITCH, WsBot, _secret

ROOT = Path(__file__).resolve().parent.parent
GUARDIAN = Path(sys.executable).with_name("guardian")
BTC = "BTC/USD:USD"
RW = frozenset({Permission.READ, Permission.TRADE})
A_KEY, A_SECRET = "tls-bot-a-key-0001", _secret("tls bot a secret")
B_KEY, B_SECRET = "tls-bot-b-key-0001", _secret("tls bot b secret")
BOT_A = ClientConfig("bot-a", A_KEY, ApiSecret(A_SECRET), RW, tls_client_subject="bot-a")
BOT_B = ClientConfig("bot-b", B_KEY, ApiSecret(B_SECRET), RW, tls_client_subject="bot-b")
UNBOUND_A = ClientConfig("bot-a", A_KEY, ApiSecret(A_SECRET), RW)


# ---- a CA, the server's certificate, the bots' ----------------------------------------------------------
def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=cwd)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # subject CN -> (certificate, key)
    stranger: tuple[Path, Path]  # a client certificate from another CA, CN bot-a
    days: int


def _leaf(where: Path, ca: str, name: str, days: int, extensions: str) -> tuple[Path, Path]:
    (where / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=where)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", str(days), "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=where)  # fmt: skip
    os.chmod(where / f"{name}.key", 0o600)
    return where / f"{name}.pem", where / f"{name}.key"


def _ca(where: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            cwd=where)  # fmt: skip
    return where / f"{name}.pem"


SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


def make_pki(where: Path, server_cn: str = "guardian.test", days: int = 30) -> Pki:
    ca = _ca(where, "ca")
    server_cert, server_key = _leaf(where, "ca", server_cn, days, SERVER_EXT)
    clients = {name: _leaf(where, "ca", name, days, CLIENT_EXT) for name in ("bot-a", "bot-b")}
    stranger_dir = where / "stranger"
    stranger_dir.mkdir()
    _ca(stranger_dir, "other-ca")
    stranger = _leaf(stranger_dir, "other-ca", "bot-a", days, CLIENT_EXT)
    return Pki(ca, server_cert, server_key, clients, stranger, days)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None, *, trust: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca if trust else None)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def server_config(pki: Pki, *, mutual: bool) -> ServerConfig:
    return ServerConfig(
        "127.0.0.1",
        0,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca if mutual else None,
    )


@contextlib.asynccontextmanager
async def guarded(
    tmp_path: Path, server: ServerConfig, clients: tuple[ClientConfig, ...]
) -> AsyncIterator[tuple[Simulator, Service]]:
    """The simulator, and guardian in front of it with this server table, its stream on."""
    from guardian.sim.ws import StreamSettings

    async with running_sim(budget_capacity=1_000_000, stream=StreamSettings(heartbeat_s=0.5)) as exchange:
        account = account_config(exchange.url, switch=SWITCH, guard=GUARD, clients=clients, stream=STREAM)
        journal = JournalConfig(tmp_path / "journal.sqlite3", commit_on_loop=True)
        service = Service(Config(accounts=(account,), server=server, journal=journal), notifier=Notifier({}))
        await service.start()
        try:
            await wait_for(
                lambda: (
                    service.accounts[0].switch.state is SwitchState.ARMED
                    and service.streams[0].link.up
                    and "PF_XBTUSD" in service.accounts[0].marks.known
                ),
                timeout_s=10,
                what="switch armed, stream up, markets known",
            )
            yield exchange, service
        finally:
            await service.stop()


def bot(service: Service, key: str, secret: str, context: ssl.SSLContext | None, *, pro: bool = False) -> Any:
    """ccxt (or ccxt.pro) aimed at guardian by URL; `context` is what it trusts and presents."""
    make = ccxtpro.krakenfutures if pro else ccxt.krakenfutures
    exchange = make({"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout_on_exit": 0})
    if context is not None:
        exchange.ssl_context = context
    exchange.urls["api"] = {
        **exchange.urls["api"],
        "public": service.url + "/derivatives/api/",
        "private": service.url + "/derivatives/api/",
        "history": service.url + "/api/history/",
        "charts": service.url + "/api/charts/",
        "ws": service.url.replace("https://", "wss://") + "/ws/v1",
    }
    return exchange


async def scrape_tls(service: Service, context: ssl.SSLContext) -> dict[Any, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.get(service.url + "/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def handshake_failures(found: dict[Any, float]) -> dict[str, float]:
    """guardian_tls_handshake_failures_total of a scrape, by reason."""
    name = "guardian_tls_handshake_failures_total"
    return {dict(labels)["reason"]: v for (metric, labels), v in found.items() if metric == name}


async def http_get(port: int, context: ssl.SSLContext) -> bytes:
    """A raw GET /readyz over TLS on a socket of its own: the answer's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: guardian\r\nConnection: close\r\n\r\n")
        return await reader.read(1024)
    finally:
        writer.close()


# ---- the certificate reader -----------------------------------------------------------------------------
def test_the_certificate_reader_agrees_with_openssl(pki: Pki) -> None:
    for path in (pki.server_cert, pki.ca, *(cert for cert, _ in pki.clients.values())):
        ours = tls.read_certificate(path)
        theirs = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
        assert ours.not_after == ssl.cert_time_to_seconds(theirs["notAfter"])
        cn = [value for rdn in theirs["subject"] for name, value in rdn if name == "commonName"]
        assert ours.subject == f"CN={cn[0]}"
        alt = tuple(
            f"{kind}:{value}".replace("IP Address", "IP") for kind, value in theirs.get("subjectAltName", ())
        )
        assert ours.names == alt
    server = tls.read_certificate(pki.server_cert)
    assert server.names == ("IP:127.0.0.1", "DNS:localhost") and server.issuer == "CN=ca"
    assert server.days_left() in (pki.days - 1, pki.days)


def test_a_file_that_is_not_a_certificate_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"server.tls_cert_file: .* holds no readable PEM certificate"):
        tls.read_certificate(path)


# ---- the configuration ----------------------------------------------------------------------------------
CONFIG = """
[server]
listen = "127.0.0.1:0"
{server}

[[accounts]]
name = "main"
api_key = "exchange-key-for-tls-tests"
api_secret = "{secret}"
[accounts.guard]
symbols = ["PF_XBTUSD"]
max_order_size = 1
max_notional = 100000
price_band_pct = 5
allow_unlimited = true
[[accounts.clients]]
name = "bot-a"
api_key = "{a_key}"
api_secret = "{a_secret}"
permissions = ["read", "trade"]
{client}
"""


def config_text(pki: Pki, server: str, client: str = "") -> str:
    return CONFIG.format(server=server, client=client, secret=A_SECRET, a_key=A_KEY, a_secret=A_SECRET)


def tls_lines(pki: Pki, *, key: Path | None = None, mutual: bool = False) -> str:
    lines = f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{key or pki.server_key}"\n'
    return lines + (f'tls_client_ca_file = "{pki.ca}"\n' if mutual else "")


def test_the_configuration_reads_the_tls_keys_and_the_bound_subject(pki: Pki) -> None:
    text = config_text(pki, tls_lines(pki, mutual=True), 'tls_client_subject = "bot-a"')
    config = parse_config(text, base_dir=pki.ca.parent)
    assert (config.server.tls_cert_file, config.server.tls_client_ca_file) == (pki.server_cert, pki.ca)
    assert config.accounts[0].clients[0].tls_client_subject == "bot-a"


@pytest.mark.parametrize(
    ("server", "client", "message"),
    [
        ('tls_cert_file = "{cert}"', "", "server.tls_cert_file is set without server.tls_key_file"),
        ('tls_client_ca_file = "{ca}"', "", "server.tls_client_ca_file is set without server.tls_cert_file"),
        ("{tls}", 'tls_client_subject = "bot-a"', r"tls_client_subject needs server.tls_client_ca_file"),
        ('tls_cert_file = "{cert}"\ntls_key_file = "{ca_key}"', "", "cannot load .* with"),
        ('tls_cert_file = "{cert}"\ntls_key_file = "missing.key"', "", "cannot read .*missing.key"),
    ],
    ids=["cert-without-key", "ca-without-cert", "subject-without-ca", "key-not-the-certificates", "missing"],
)
def test_an_incomplete_or_mismatched_tls_setup_is_refused_naming_the_key(
    pki: Pki, server: str, client: str, message: str
) -> None:
    ca_key = pki.ca.with_suffix(".key")
    os.chmod(ca_key, 0o600)
    lines = server.format(cert=pki.server_cert, ca=pki.ca, tls=tls_lines(pki), ca_key=ca_key)
    with pytest.raises(ConfigError, match=message):
        parse_config(config_text(pki, lines, client), base_dir=pki.ca.parent)


def test_a_key_with_a_passphrase_is_refused_without_asking_for_it(pki: Pki, tmp_path: Path) -> None:
    locked = tmp_path / "locked.key"
    openssl("pkey", "-in", pki.server_key, "-aes256", "-passout", "pass:hunter2-passphrase", "-out", locked,
            cwd=tmp_path)  # fmt: skip
    os.chmod(locked, 0o600)
    with pytest.raises(ConfigError, match="encrypted with a passphrase") as refused:
        parse_config(config_text(pki, tls_lines(pki, key=locked)), base_dir=tmp_path)
    assert "hunter2" not in str(refused.value) and "PRIVATE KEY" not in str(refused.value)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDIAN_")}
    return subprocess.run(
        [str(GUARDIAN), *map(str, args)], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_a_key_file_others_can_read_makes_run_and_check_config_exit_78(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o644)
    config = tmp_path / "config.toml"
    config.write_text(config_text(pki, tls_lines(pki, key=key)))
    for command in ("run", "check-config"):
        done = run_cli(command, "--config", config)
        said = done.stdout + done.stderr
        assert done.returncode == 78, said
        assert f"server.tls_key_file: {key} is readable by its group or by others (mode 0644)" in said
        assert f"chmod 600 {key}" in said
        assert key.read_text().splitlines()[1] not in said  # no byte of the key
    os.chmod(key, 0o600)
    done = run_cli("check-config", "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_config_reports_the_subject_the_expiry_and_the_days_left(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text(pki, tls_lines(pki, mutual=True), 'tls_client_subject = "bot-a"'))
    done = run_cli("check-config", "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    info = tls.read_certificate(pki.server_cert)
    expires = time.strftime("%Y-%m-%d", time.gmtime(info.not_after))
    assert f"tls: on, TLS 1.2+, mutual TLS, client certificates signed by {pki.ca}" in done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("tls certificate:"))
    assert "subject CN=guardian.test" in line and f"expires {expires}" in line
    assert f"({info.days_left()} days left)" in line
    assert "names IP:127.0.0.1, DNS:localhost" in line


def test_check_config_warns_of_a_certificate_about_to_expire(tmp_path: Path) -> None:
    soon = make_pki(tmp_path, days=5)
    assert tls.describe(server_config(soon, mutual=False))[-1] == (
        "warning: server.tls_cert_file expires in 4 days: renew it"
    )


def test_plain_http_beyond_loopback_is_said_in_the_warnings_and_the_state(pki: Pki) -> None:
    def warned(server: str) -> list[str]:
        text = config_text(pki, server).replace('listen = "127.0.0.1:0"', 'listen = "192.0.2.10:8787"')
        return [
            w for w in parse_config(text, base_dir=pki.ca.parent).warnings() if "loopback" in w or "tls" in w
        ]

    [plain] = warned("")
    assert plain.endswith("reachable from other machines, in plain HTTP (no server.tls_cert_file)")
    assert warned(tls_lines(pki)) == [
        "server.tls_client_ca_file is not set: any machine that reaches guardian may connect (over TLS)"
    ]
    assert warned(tls_lines(pki, mutual=True)) == []
    beyond = ServerConfig("192.0.2.10", 8787)
    assert tls.state_json(beyond, None)["plaintext_beyond_loopback"] is True
    assert tls.state_json(ServerConfig(), None)["plaintext_beyond_loopback"] is False
    assert tls.describe(beyond) == [
        "tls: off (plain HTTP and ws://; BEYOND LOOPBACK: bots' traffic travels in clear)"
    ]


# ---- the daemon over TLS --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.compat
async def test_ccxt_trades_and_ccxt_pro_streams_over_tls_and_refuse_without_the_ca(
    pki: Pki, tmp_path: Path
) -> None:
    async with guarded(tmp_path, server_config(pki, mutual=False), (UNBOUND_A,)) as (exchange, service):
        assert service.url.startswith("https://127.0.0.1:")
        untrusting = bot(service, A_KEY, A_SECRET, None)  # ccxt's own CA list (certifi): not this CA
        try:
            with pytest.raises(ccxt.NetworkError) as refused:
                await untrusting.create_order(BTC, "limit", "buy", 1, 59000)
            assert isinstance(refused.value.__cause__, aiohttp.ClientConnectorCertificateError)
            assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__cause__)
        finally:
            await untrusting.close()
        assert exchange.requests_for("sendorder") == []

        pro = bot(service, A_KEY, A_SECRET, client_context(pki), pro=True)
        seen: list[Any] = []

        async def watch() -> None:
            while True:
                seen.extend(await pro.watch_orders(BTC))

        try:
            await pro.load_markets()
            watcher = asyncio.create_task(watch())
            await wait_for(lambda: len(service.relay.connections) == 1, 5.0, "ccxt.pro on wss://")
            await asyncio.sleep(0.2)  # its subscription acknowledged
            order = await pro.create_order(BTC, "limit", "buy", 1, 59000)  # REST over https://
            await wait_for(lambda: any(o["id"] == order["id"] for o in seen), 5.0, "the order on wss://")
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        finally:
            await pro.close()
        assert len(exchange.requests_for("sendorder")) == 1
        state = service.state_json()["server"]
        assert state == {
            "listen": "127.0.0.1:0",
            "tls": True,
            "mutual_tls": False,
            "plaintext_beyond_loopback": False,
            "certificate": service.tls.state_json() if service.tls else None,
        }
        assert state["certificate"]["subject"] == "CN=guardian.test"  # type: ignore[index]


@pytest.mark.slow
async def test_mutual_tls_refuses_a_client_without_a_certificate_at_the_handshake(
    pki: Pki, tmp_path: Path
) -> None:
    async with guarded(tmp_path, server_config(pki, mutual=True), (BOT_A, BOT_B)) as (exchange, service):
        port = int(service.url.rsplit(":", 1)[1])
        # None at all, or one signed by another CA: the server ends the handshake (asyncio closes the
        # connection without an alert). Under TLS 1.2 the client sees its handshake fail; under TLS 1.3 its
        # side of the handshake ends before the server has judged the certificate, and the request gets
        # no byte back. With bot-a's certificate, the same request is answered.
        for presented in (None, pki.stranger):
            old = client_context(pki, presented)
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=old)
            assert await http_get(port, client_context(pki, presented)) == b""
        assert (await http_get(port, client_context(pki, pki.clients["bot-a"]))).startswith(b"HTTP/1.1 200 ")
        # The server ended each: counted by why (asyncio itself says nothing of them).
        found = await scrape_tls(service, client_context(pki, pki.clients["bot-a"]))
        failures = handshake_failures(found)
        assert failures == {kind: 0.0 for kind in tls.HANDSHAKE_FAILURES} | {
            "no_client_certificate": 2.0,
            "client_certificate_refused": 2.0,
        }
        certless = bot(service, A_KEY, A_SECRET, client_context(pki))
        try:
            with pytest.raises(ccxt.NetworkError):
                await certless.create_order(BTC, "limit", "buy", 1, 59000)
        finally:
            await certless.close()
        found = await scrape_tls(service, client_context(pki, pki.clients["bot-a"]))
        requests = {labels: v for (name, labels), v in found.items() if name == "guardian_requests_total"}
        assert requests == {} and exchange.requests_for("sendorder") == []  # nothing reached the gateway


@pytest.mark.slow
@pytest.mark.compat
async def test_a_bot_key_with_another_bots_certificate_is_refused_and_counted(
    pki: Pki, tmp_path: Path
) -> None:
    async with guarded(tmp_path, server_config(pki, mutual=True), (BOT_A, BOT_B)) as (exchange, service):
        thief = bot(service, A_KEY, A_SECRET, client_context(pki, pki.clients["bot-b"]))
        owner = bot(service, A_KEY, A_SECRET, client_context(pki, pki.clients["bot-a"]))
        try:
            with pytest.raises(ccxt.AuthenticationError, match="tls_client_subject"):
                await thief.create_order(BTC, "limit", "buy", 1, 59000)
            assert exchange.requests_for("sendorder") == []
            placed = await owner.create_order(BTC, "limit", "buy", 1, 59000)
            assert placed["id"] and len(exchange.requests_for("sendorder")) == 1
        finally:
            await thief.close()
            await owner.close()
        # ws/v1: the same key, logged in on bot-b's certificate, is refused too.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(pki, pki.clients["bot-b"]))
        ) as http:
            ws = await http.ws_connect(service.url.replace("https://", "wss://") + "/ws/v1", heartbeat=None)
            relay_bot = WsBot(ws, A_KEY, A_SECRET)
            try:
                assert (await relay_bot.subscribe("open_orders"))["message"] == AUTH_FAILED
            finally:
                await relay_bot.close()
        found = await scrape_tls(service, client_context(pki, pki.clients["bot-a"]))
        assert metric(found, "guardian_tls_subject_mismatch_total", account="main", bot="bot-a") == 2
        assert metric(found, "guardian_tls_subject_mismatch_total", account="main", bot="bot-b") == 0
        assert metric(found, "guardian_rejections_total", account="main", reason="authenticationError") == 1


@pytest.mark.slow
async def test_the_expiry_metric_and_a_reload_serve_the_new_certificate(pki: Pki, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o600)
    server = ServerConfig("127.0.0.1", 0, tls_cert_file=cert, tls_key_file=key)
    async with guarded(tmp_path, server, (UNBOUND_A,)) as (_, service):
        port = int(service.url.rsplit(":", 1)[1])

        async def served_subject() -> str:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(pki))
            peer = writer.get_extra_info("peercert")
            writer.close()
            return str(peer["subject"][0][0][1])

        found = await scrape_tls(service, client_context(pki))
        left = metric(found, "guardian_tls_cert_expiry_seconds")
        assert abs(left - tls.read_certificate(cert).seconds_left()) < 60
        assert await served_subject() == "guardian.test"

        (tmp_path / "renewed").mkdir()
        renewed = make_pki(tmp_path / "renewed", server_cn="guardian.renewed", days=90)  # and a new CA
        shutil.copy(renewed.server_cert, cert)
        shutil.copy(renewed.server_key, key)
        os.chmod(key, 0o644)
        # Through the daemon's reload (SIGHUP, POST /guardian/reload): the same paths, new files.
        refused = await service.reload("test", (service.config, "sha256:renewed"))
        assert not refused.ok and "readable by its group or by others" in (refused.error or "")
        assert service.tls is not None and service.tls.info.subject == "CN=guardian.test"  # unchanged
        os.chmod(key, 0o600)
        done = await service.reload("test", (service.config, "sha256:renewed"))
        assert done.ok and [c.rsplit(",", 1)[0] for c in done.changed] == [
            "server TLS certificate: CN=guardian.renewed"
        ]
        assert service.reload_tls() == tls.read_certificate(cert)

        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(renewed))
        assert writer.get_extra_info("peercert")["subject"][0][0][1] == "guardian.renewed"
        writer.close()
        found = await scrape_tls(service, client_context(renewed))
        assert metric(found, "guardian_tls_cert_expiry_seconds") > 89 * 86400
        assert service.state_json()["server"]["certificate"]["subject"] == "CN=guardian.renewed"  # type: ignore[index]


async def test_tls_older_than_1_2_is_refused(pki: Pki, tmp_path: Path) -> None:
    context = tls.server_context(server_config(pki, mutual=False))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki.ca)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL would refuse TLS 1.1 itself, before guardian could
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is: that is the point
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    tls12 = client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # asyncio closes without an alert
            await asyncio.open_connection("127.0.0.1", port, ssl=old)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls12)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


# ---- guardian status and healthcheck over TLS ------------------------------------------------------
async def healthcheck(*args: str) -> tuple[int, str, str]:
    from tests.test_status_cli import guardian

    return await guardian("healthcheck", *args)


def status_config(tmp_path: Path, service: Service, cert: Path, *, mutual: Path | None = None) -> Path:
    """What `guardian status --config` reads of a configuration: the listen address and the TLS keys."""
    port = int(service.url.rsplit(":", 1)[1])
    ca = "" if mutual is None else f'tls_client_ca_file = "{mutual}"\n'
    path = tmp_path / f"status-{cert.stem}.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ntls_cert_file = "{cert}"\ntls_key_file = "unread.key"\n{ca}'
        '[[accounts]]\nname = "x"\napi_key_env = "UNSET"\n'
    )
    return path


@pytest.mark.slow
async def test_guardian_status_speaks_tls_and_trusts_only_the_configured_certificate(
    pki: Pki, tmp_path: Path
) -> None:
    from tests.test_status_cli import status

    async with guarded(tmp_path, server_config(pki, mutual=False), (UNBOUND_A,)) as (_, service):
        # From the configuration: https, and the daemon's own certificate is what is trusted (no CA
        # needed, and its names need not include the address asked).
        config = str(status_config(tmp_path, service, pki.server_cert))
        code, out, err = await status("--config", config)
        assert "account main" in out and "switch  armed" in out, (code, err)
        code, out, err = await healthcheck("--config", config)  # the image's HEALTHCHECK, over TLS
        assert code == 0 and f"{service.url}/healthz: HTTP 200" in out, (code, err)
        # Another certificate from the same CA is not the daemon's: refused, said, exit 1.
        other = status_config(tmp_path, service, pki.clients["bot-b"][0])
        code, out, err = await status("--config", str(other))
        assert (code, out) == (1, "") and "certificate" in err and service.url in err
        # By URL: the system's CAs by default (refused), or the one given.
        code, out, err = await status("--url", service.url)
        assert (code, out) == (1, "") and "--cacert" in err
        code, out, _ = await status("--url", service.url, "--cacert", str(pki.ca))
        assert "account main" in out


@pytest.mark.slow
async def test_guardian_status_presents_a_client_certificate_to_a_mutual_tls_daemon(
    pki: Pki, tmp_path: Path
) -> None:
    from tests.test_status_cli import status

    async with guarded(tmp_path, server_config(pki, mutual=True), (BOT_A,)) as (_, service):
        config = str(status_config(tmp_path, service, pki.server_cert, mutual=pki.ca))
        code, out, err = await status("--config", config)
        assert (code, out) == (1, "") and "--cert" in err and "tls_client_ca_file" in err
        code, out, err = await healthcheck("--config", config)
        assert (code, out) == (1, "") and "--cert" in err
        cert, key = pki.clients["bot-a"]
        code, out, err = await status("--config", config, "--cert", str(cert), "--key", str(key))
        assert "account main" in out and "switch  armed" in out, (code, err)
        code, out, err = await healthcheck("--config", config, "--cert", str(cert), "--key", str(key))
        assert code == 0 and "/healthz: HTTP 200" in out, (code, err)
        code, out, err = await status("--url", service.url, "--cacert", str(pki.ca), "--cert", str(cert))
        assert (code, out) == (1, "") and "--key" in err  # the key is not in the certificate's file


# ---- failed handshakes, counted and said ------------------------------------------------------------
@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate"),
        ("CERTIFICATE_VERIFY_FAILED", "client_certificate_refused"),
        ("TLSV1_ALERT_UNKNOWN_CA", "server_certificate_refused"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "server_certificate_refused"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "server_certificate_refused"),
        ("UNSUPPORTED_PROTOCOL", "protocol_version"),
        ("WRONG_VERSION_NUMBER", "protocol_version"),
        ("HTTP_REQUEST", "plain_http"),
        ("NO_SHARED_CIPHER", "other"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "other"),
        (None, "other"),
    ],
)
def test_a_failed_handshake_is_named_by_openssls_reason(reason: str | None, kind: str) -> None:
    assert tls.handshake_failure(reason) == kind and kind in tls.HANDSHAKE_FAILURES


@pytest.mark.slow
async def test_handshakes_the_server_ends_are_counted_by_kind_and_logged_once_a_window(
    pki: Pki, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    def tallied(logged: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        return [
            (line["kind"], line["openssl_reason"], line["count"])
            for line in logged
            if line["event"] == "tls_handshake_failed"
        ]

    with capture_logs() as logged:
        async with guarded(tmp_path, server_config(pki, mutual=False), (UNBOUND_A,)) as (_, service):
            port = int(service.url.rsplit(":", 1)[1])
            for _ in range(3):  # http:// to the TLS port: no answer; three counted, one line for now
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: guardian\r\n\r\n")
                assert await reader.read(100) == b""
                writer.close()
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.load_verify_locations(pki.ca)
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=old)
            # A client that does not trust guardian's certificate and says so with an alert (openssl, as
            # curl does; Python's asyncio client closes without one, and is not seen).
            other_ca = tmp_path / "other-ca"
            other_ca.mkdir()
            refusing = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(_ca(other_ca, "x")),
                "-verify_return_error", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert await asyncio.wait_for(refusing.wait(), 10) != 0
            found = await scrape_tls(service, client_context(pki))
            live = tallied(logged)
    failures = handshake_failures(found)
    assert failures == {kind: 0.0 for kind in tls.HANDSHAKE_FAILURES} | {
        "plain_http": 3.0,
        "protocol_version": 1.0,
        "server_certificate_refused": 1.0,
    }
    assert live == [
        ("plain_http", "HTTP_REQUEST", 1),
        ("protocol_version", "UNSUPPORTED_PROTOCOL", 1),
        ("server_certificate_refused", "TLSV1_ALERT_UNKNOWN_CA", 1),
    ]
    assert tallied(logged) == [*live, ("plain_http", "HTTP_REQUEST", 2)]  # the rest of the window, at stop
