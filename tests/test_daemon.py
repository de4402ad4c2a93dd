"""`guardian run` as a real subprocess receiving real signals, against the simulator on loopback: every
shutdown policy on SIGTERM and SIGINT, kill -9 leaving the exchange timer armed, the notify protocol
on a real datagram socket, `run --sim`, exit codes, and no secret in anything the process writes."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.cli import EX_CONFIG, EX_FAILED
from guardian.errors import ExchangeError
from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.faults import Fault
from guardian.stream.account import RECONCILE_READS
from tests.conftest import TRADE_KEY, TRADE_SECRET
from tests.daemon import wait_for

ROOT = Path(__file__).resolve().parent.parent
ORDER_KEY = "sim-order-key-0002"
BOT_KEY = "local-bot-key-000001"
BOT_SECRET = base64.b64encode(b"the local bot's own secret, 32 b").decode()
ADMIN_TOKEN = "admin-token-never-to-be-printed-0001"
# Nothing the daemon writes may contain these (the exchange api_key only as its first four characters).
SECRETS = (TRADE_SECRET, TRADE_KEY, BOT_SECRET, ADMIN_TOKEN)
ORDER = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 50000}
STOP_LIMIT_S = 10.0


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("GUARDIAN_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def write_config(tmp_path: Path, base_url: str, policy: str = "keep") -> Path:
    (tmp_path / "main.secret").write_text(TRADE_SECRET + "\n")
    path = tmp_path / "guardian.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
admin_token_env = "GUARDIAN_TEST_ADMIN_TOKEN"
[journal]
path = "journal.sqlite3"
[log]
level = "debug"
format = "json"
[[accounts]]
name = "main"
base_url = "{base_url}"
api_key_env = "GUARDIAN_TEST_API_KEY"
api_secret_file = "main.secret"
[accounts.guard]
# These tests are about the daemon, not the exposure limits: off, by choice.
allow_unlimited = true
# The 0.3-0.5 s beat alone would take the whole of Kraken's 500 per 10 s: bots' budget is raised so
# that the tests' few bot requests are judged by everything else.
rate_budget = 5000
[accounts.switch]
refresh_min_s = 0.3
refresh_max_s = 0.5
timeout_s = 3
min_remaining_s = 1
on_shutdown = "{policy}"
[[accounts.clients]]
name = "bot"
api_key = "{BOT_KEY}"
api_secret_env = "GUARDIAN_TEST_BOT_SECRET"
permissions = ["read", "trade"]
"""
    )
    return path


CONFIG_ENV = {
    "GUARDIAN_TEST_ADMIN_TOKEN": ADMIN_TOKEN,
    "GUARDIAN_TEST_API_KEY": TRADE_KEY,
    "GUARDIAN_TEST_BOT_SECRET": BOT_SECRET,
}


class Daemon:
    """A `guardian` subprocess whose output is drained continuously (a full pipe would block it)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._drain(proc.stdout, self.stdout)),
            asyncio.create_task(self._drain(proc.stderr, self.stderr)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str], cwd: Path) -> Daemon:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guardian",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        return cls(proc)

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode(errors="replace"))

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e.get("event") == name), None)

    async def wait_event(self, name: str, timeout_s: float = 15.0) -> dict[str, Any]:
        found: dict[str, Any] = await wait_for(lambda: self.event(name), timeout_s, what=f"log event {name}")
        return found

    async def url(self) -> str:
        return str((await self.wait_event("guardian_listening"))["url"])

    async def signal_and_wait(self, signum: int) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = await asyncio.wait_for(self.proc.wait(), timeout=STOP_LIMIT_S + 5)
        elapsed = time.monotonic() - started
        await asyncio.gather(*self._readers)
        return code, elapsed

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(*self._readers)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def assert_no_secret(text: str) -> None:
    for value in SECRETS:
        assert value not in text, "a secret reached the output"


@pytest.fixture
async def orders(sim: Simulator) -> AsyncIterator[KrakenClient]:
    sim.add_key(SimKey(ORDER_KEY, ApiSecret(TRADE_SECRET), account="main"))
    async with KrakenClient(sim.url, Credentials(ORDER_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()


async def run_daemon(
    daemons: list[Daemon], tmp_path: Path, sim: Simulator, policy: str, **env: str
) -> Daemon:
    config = write_config(tmp_path, sim.url, policy)
    daemon = await Daemon.start(
        "run", "--config", str(config), env=clean_env(**CONFIG_ENV, **env), cwd=tmp_path
    )
    daemons.append(daemon)
    await daemon.wait_event("guardian_ready")
    return daemon


def guardian_calls(sim: Simulator) -> list[tuple[str, str | None]]:
    """What guardian sent with the account key, but the account state's reads (its reconciliation runs
    on its own beat, in between)."""
    return [
        (r["endpoint"], r.get("fields", {}).get("timeout"))
        for r in sim.requests
        if r["api_key"] == TRADE_KEY and r["endpoint"] not in RECONCILE_READS
    ]


# ---- the shutdown policies --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_keep_exits_0_and_leaves_the_timer_to_cancel_the_orders(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path, signum: signal.Signals
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "keep")
    code, elapsed = await daemon.signal_and_wait(signum)
    assert code == 0
    assert elapsed < STOP_LIMIT_S
    received = daemon.event("signal_received")
    assert received is not None and received["signal"] == signum.name
    assert daemon.event("shutdown_switch_kept") is not None
    remaining = sim.switch_remaining("main")
    assert remaining is not None and remaining > 1.0
    assert guardian_calls(sim)[-1] == ("cancelallordersafter", "3")
    assert len(await orders.open_orders()) == 1
    await asyncio.sleep(remaining + 0.3)
    assert await orders.open_orders() == []
    assert_no_secret(daemon.output())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_disarm_exits_0_with_timeout_zero_as_the_last_call(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path, signum: signal.Signals
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "disarm")
    code, elapsed = await daemon.signal_and_wait(signum)
    assert (code, elapsed < STOP_LIMIT_S) == (0, True)
    assert guardian_calls(sim)[-1] == ("cancelallordersafter", "0")
    assert sim.switch_remaining("main") is None
    assert len(await orders.open_orders()) == 1
    assert_no_secret(daemon.output())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_cancel_exits_0_after_cancelling_every_order_then_disarming(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path, signum: signal.Signals
) -> None:
    await orders.send_order(**ORDER)
    await orders.send_order(**{**ORDER, "side": "sell", "limitPrice": 70000})
    daemon = await run_daemon(daemons, tmp_path, sim, "cancel")
    code, elapsed = await daemon.signal_and_wait(signum)
    assert (code, elapsed < STOP_LIMIT_S) == (0, True)
    assert guardian_calls(sim)[-2:] == [("cancelallorders", None), ("cancelallordersafter", "0")]
    assert sim.switch_remaining("main") is None
    assert await orders.open_orders() == []
    assert_no_secret(daemon.output())


async def test_a_policy_that_cannot_be_carried_out_exits_1_in_time_and_says_why(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "cancel")
    sim.faults.add(Fault("cancelallorders", "hang"))
    code, elapsed = await daemon.signal_and_wait(signal.SIGTERM)
    sim.release_hangs()
    assert code == EX_FAILED
    assert elapsed < STOP_LIMIT_S
    failure = daemon.event("shutdown_policy_failed")
    assert failure is not None and failure["level"] == "error" and failure["policy"] == "cancel"
    assert guardian_calls(sim)[-1][0] == "cancelallorders"  # never disarmed after a failed cancel
    # The hang outlasted the 3 s timer, which guardian left armed: the exchange cancelled the order.
    await wait_for(lambda: sim.switch_remaining("main") is None, what="the exchange timer firing")
    assert await orders.open_orders() == []


async def test_kill_9_leaves_the_exchange_timer_armed_and_it_cancels_the_orders(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "disarm")  # even a disarm policy cannot act
    code, _ = await daemon.signal_and_wait(signal.SIGKILL)
    assert code == -signal.SIGKILL
    remaining = sim.switch_remaining("main")
    assert remaining is not None and remaining > 0
    assert ("cancelallordersafter", "0") not in guardian_calls(sim)
    assert len(await orders.open_orders()) == 1
    await asyncio.sleep(remaining + 0.3)
    assert sim.switch_remaining("main") is None
    assert await orders.open_orders() == []
    assert_no_secret(daemon.output())


async def test_a_second_signal_during_shutdown_is_ignored(
    sim: Simulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    daemon = await run_daemon(daemons, tmp_path, sim, "disarm")
    sim.faults.add(Fault("cancelallordersafter", "latency", latency_s=1.0))
    daemon.proc.send_signal(signal.SIGTERM)
    await daemon.wait_event("guardian_stopping")
    code, elapsed = await daemon.signal_and_wait(signal.SIGINT)
    assert (code, elapsed < STOP_LIMIT_S) == (0, True)
    ignored = daemon.event("signal_ignored")
    assert ignored is not None and ignored["signal"] == "SIGINT"
    assert guardian_calls(sim)[-1] == ("cancelallordersafter", "0")


async def test_a_halted_account_is_still_halted_after_kill_9_and_a_restart(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "keep")
    url = await daemon.url()
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.post(url + "/guardian/kill", json={"account": "main"}, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["mode"] == "halted"
    assert await orders.open_orders() == []  # kill cancelled at the exchange at once
    await daemon.signal_and_wait(signal.SIGKILL)

    again = await run_daemon(daemons, tmp_path, sim, "keep")
    restored = again.event("mode_restored")
    assert restored is not None and restored["mode"] == "halted"
    url = await again.url()
    bot = Credentials(BOT_KEY, ApiSecret(BOT_SECRET))
    async with KrakenClient(url, bot, timeout_s=5) as client, aiohttp.ClientSession() as http:
        with pytest.raises(ExchangeError) as caught:
            await client.send_order(**ORDER)
        assert caught.value.code == "tradingHalted"
        async with http.get(url + "/guardian/state") as response:
            assert (await response.json())["accounts"][0]["mode"] == "halted"
    assert sim.requests_for("sendorder")[-1]["api_key"] == ORDER_KEY  # guardian forwarded none
    await again.signal_and_wait(signal.SIGTERM)
    assert_no_secret(again.output() + daemon.output())


async def test_stopped_past_the_timeout_it_says_expired_refuses_new_risk_then_rearms(
    sim: Simulator, orders: KrakenClient, daemons: list[Daemon], tmp_path: Path
) -> None:
    await orders.send_order(**ORDER)
    daemon = await run_daemon(daemons, tmp_path, sim, "keep")
    url = await daemon.url()
    daemon.proc.send_signal(signal.SIGSTOP)
    await asyncio.sleep(3.5)  # past the 3 s timer: the exchange cancels everything
    assert sim.switch_remaining("main") is None
    assert await orders.open_orders() == []
    sim.faults.add(Fault("cancelallordersafter", "status", status=503, times=3))  # re-arming takes a while
    daemon.proc.send_signal(signal.SIGCONT)
    bot = Credentials(BOT_KEY, ApiSecret(BOT_SECRET))
    async with KrakenClient(url, bot, timeout_s=5) as client, aiohttp.ClientSession() as http:
        async with http.get(url + "/guardian/state") as response:
            switch = (await response.json())["accounts"][0]["switch"]
        assert switch["state"] == "expired"
        with pytest.raises(ExchangeError) as caught:
            await client.send_order(**ORDER)
        assert caught.value.code == "switchNotArmed"
        assert await client.cancel_all_orders()  # cancels pass meanwhile
        await wait_for(lambda: sim.switch_remaining("main") is not None, timeout_s=10, what="re-armed")

        async def rearmed() -> dict[str, Any]:
            async with http.get(url + "/guardian/state") as response:
                return dict((await response.json())["accounts"][0]["switch"])

        state = await rearmed()
        while state["state"] != "armed":
            await asyncio.sleep(0.05)
            state = await rearmed()
        assert state["rearms_after_expiry"] == 1
    assert daemon.event("switch_expired") is not None
    assert daemon.event("switch_rearmed_after_expiry") is not None
    await daemon.signal_and_wait(signal.SIGTERM)


# ---- what the process says ------------------------------------------------------------------------


async def test_the_local_endpoints_answer_from_the_subprocess(
    sim: Simulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    daemon = await run_daemon(daemons, tmp_path, sim, "keep")
    url = await daemon.url()
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/readyz") as response:
            assert response.status == 200
        async with http.get(url + "/guardian/state") as response:
            state = await response.json()
        async with http.get(url + "/metrics") as response:
            metrics = await response.text()
    assert state["accounts"][0]["switch"]["state"] == "armed"
    assert 'guardian_switch_armed{account="main"} 1.0' in metrics
    await daemon.signal_and_wait(signal.SIGTERM)
    for event in daemon.events():
        assert "timestamp" in event and "level" in event
    switch_events = [e for e in daemon.events() if str(e.get("event", "")).startswith("switch_")]
    assert switch_events and all(e.get("account") == "main" and "state" in e for e in switch_events)
    assert_no_secret(daemon.output())


async def test_a_bad_configuration_exits_78_before_touching_the_exchange(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sim.url, "sometimes")
    daemon = await Daemon.start("run", "--config", str(config), env=clean_env(**CONFIG_ENV), cwd=tmp_path)
    code = await asyncio.wait_for(daemon.proc.wait(), 30)
    await daemon.kill()
    assert code == EX_CONFIG
    assert "accounts[0].switch.on_shutdown must be one of keep, disarm, cancel" in daemon.output()
    assert list(sim.requests) == []
    assert_no_secret(daemon.output())


async def test_run_refuses_an_account_with_bots_and_no_limits_with_exit_78(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, sim.url)
    config.write_text(config.read_text().replace("allow_unlimited = true\n", ""))
    daemon = await Daemon.start("run", "--config", str(config), env=clean_env(**CONFIG_ENV), cwd=tmp_path)
    code = await asyncio.wait_for(daemon.proc.wait(), 30)
    await daemon.kill()
    assert code == EX_CONFIG
    assert "account main has bots but no accounts[0].guard.max_position and" in daemon.output()
    assert list(sim.requests) == []
    assert_no_secret(daemon.output())


async def test_a_busy_port_exits_1_before_touching_the_exchange(sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, sim.url)
        daemon = await Daemon.start(
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            env=clean_env(**CONFIG_ENV),
            cwd=tmp_path,
        )
        code = await asyncio.wait_for(daemon.proc.wait(), 30)
        await daemon.kill()
    assert code == 1
    assert "address already in use" in daemon.output()
    assert list(sim.requests) == []


# ---- systemd's notify protocol from the real process ------------------------------------------------


async def test_notify_ready_status_watchdog_and_stopping_on_an_abstract_socket(
    sim: Simulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    name = f"guardian-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.setblocking(False)
        received: list[tuple[float, str]] = []

        async def collect() -> None:
            loop = asyncio.get_running_loop()
            while True:
                data = await loop.sock_recv(listener, 4096)
                received.append((time.monotonic(), data.decode()))

        collector = asyncio.create_task(collect())
        try:
            daemon = await run_daemon(
                daemons, tmp_path, sim, "keep", NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="400000"
            )
            await wait_for(lambda: sum("WATCHDOG=1" in m for _, m in received) >= 4, what="watchdog pings")
            code, _ = await daemon.signal_and_wait(signal.SIGTERM)
            await wait_for(lambda: any("STOPPING=1" in m for _, m in received), what="STOPPING=1")
        finally:
            collector.cancel()
    assert code == 0
    messages = [m for _, m in received]
    ready = [m for m in messages if "READY=1" in m]
    assert ready == ["READY=1\nSTATUS=switch: main armed"]
    first_status = next(i for i, m in enumerate(messages) if "STATUS=" in m)
    assert messages[first_status] == "STATUS=switch: main starting"  # before READY, then READY
    stopping = [m for m in messages if "STOPPING=1" in m]
    assert stopping == ["STOPPING=1\nSTATUS=stopping: finishing requests, then main: keep"]
    pings = [at for at, m in received if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.1 < gap < 0.6 for gap in gaps), gaps  # every 0.2 s: half of WATCHDOG_USEC
    assert messages.index(stopping[0]) > messages.index(ready[0])


# ---- run --sim ------------------------------------------------------------------------------------------

BASE64_SECRET = re.compile(r"[A-Za-z0-9+/]{86}==")  # a 64-byte secret, as SimKey.generate makes them


async def test_run_sim_prints_the_demo_bot_key_and_a_how_to_and_stops_on_sigint(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    daemon = await Daemon.start(
        "run", "--sim", "--listen", "127.0.0.1:0", "--log-format", "json", env=clean_env(), cwd=tmp_path
    )
    daemons.append(daemon)
    await daemon.wait_event("guardian_ready")
    await wait_for(lambda: any("Stop with Ctrl-C." in line for line in daemon.stdout), what="how-to")
    demo = [line for line in daemon.stdout if line.startswith("demo bot ")]
    assert len(demo) == 1
    match = re.fullmatch(r"demo bot api_key=(\S+) api_secret=(\S+)\n", demo[0])
    assert match is not None
    assert len(base64.b64decode(match.group(2), validate=True)) >= 16
    url = await daemon.url()
    assert f"curl -s {url}/guardian/state\n" in "".join(daemon.stdout)
    assert f"  page:     {url}/ " in "".join(daemon.stdout)
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/guardian/state") as response:
            state = await response.json()
        async with http.get(url + "/") as response:
            assert response.status == 200 and "<title>guardian</title>" in await response.text()
    assert [(a["name"], a["switch"]["state"]) for a in state["accounts"]] == [("demo", "armed")]
    assert state["accounts"][0]["switch"]["timeout_s"] == 60
    code, elapsed = await daemon.signal_and_wait(signal.SIGINT)
    assert (code, elapsed < STOP_LIMIT_S) == (0, True)
    assert BASE64_SECRET.search(daemon.output()) is None  # the demo exchange secret never shows
    assert match.group(2) not in "".join(daemon.stderr)  # the bot secret only in its own line
