"""Issue 6, faults of the daemon's own process, with `guardian run` as a real subprocess against the
simulator on loopback: kill -9 in the middle of forwarding orders (then a restart on the same journal),
SIGSTOP past the exchange timeout with an order waiting, a redundant pair of daemons on one exchange key,
and a journal the operating system refuses to write (RLIMIT_FSIZE lowered on the running daemon).

Already proven elsewhere, and not repeated here: kill -9 leaves the exchange timer armed and it cancels
the orders (tests/test_daemon.py), SIGSTOP past the timeout is reported expired, refuses a send, lets a
cancel out and re-arms (tests/test_daemon.py), a full journal refuses new risk but not a cancel or a batch
of cancels and recovers (tests/test_gateway.py, in-process).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.faults import Fault
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import get_json, metric, scrape, wait_for
from tests.test_daemon import Daemon, clean_env

pytestmark = pytest.mark.slow

ORDER_KEY = "sim-order-key-0003"  # a second trade key on "main": the test's own resting orders
LMT: dict[str, str | int] = {
    "orderType": "lmt",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": 1,
    "limitPrice": 50000,
}
REFRESH_MIN_S, REFRESH_MAX_S = 0.3, 0.5


def bot_secret(i: int) -> str:
    return base64.b64encode(f"fault bot {i:02d}: local secret, 32b".encode()[:32]).decode()


def bot_key(i: int) -> str:
    return f"fault-bot-key-{i:04d}"


def write_config(
    directory: Path,
    base_url: str,
    *,
    timeout_s: int = 3,
    bots: int = 1,
    nonce: str = "milliseconds",
    upstream_timeout_s: float = 10,
    guard: str = "allow_unlimited = true  # these drills are about the process, not the exposure limits",
) -> Path:
    """A configuration with the FAST beat (0.3-0.5 s), `timeout_s`, `bots` local keys (their secrets in
    the environment, see config_env) and `on_shutdown = "keep"`; the journal beside it. `guard`: more
    lines for the account's guard table (the exposure limits)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.secret").write_text(TRADE_SECRET + "\n")
    clients = "".join(
        f"""
[[accounts.clients]]
name = "bot-{i}"
api_key = "{bot_key(i)}"
api_secret_env = "GUARDIAN_TEST_BOT{i}_SECRET"
permissions = ["read", "trade"]
"""
        for i in range(bots)
    )
    path = directory / "guardian.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
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
nonce = "{nonce}"
[accounts.guard]
rate_budget = 100000  # the FAST beat alone would take Kraken's whole 500 per 10 s
upstream_timeout_s = {upstream_timeout_s}
{guard}
[accounts.switch]
refresh_min_s = {REFRESH_MIN_S}
refresh_max_s = {REFRESH_MAX_S}
timeout_s = {timeout_s}
min_remaining_s = 1
on_shutdown = "keep"
{clients}"""
    )
    return path


def config_env(bots: int = 1) -> dict[str, str]:
    return clean_env(
        GUARDIAN_TEST_API_KEY=TRADE_KEY,
        **{f"GUARDIAN_TEST_BOT{i}_SECRET": bot_secret(i) for i in range(bots)},
    )


async def start(daemons: list[Daemon], config: Path, env: dict[str, str], *prelude: str) -> Daemon:
    """`guardian run --config` in `config`'s directory, once it says it is ready. `prelude` is Python run
    before guardian (e.g. to set the process's clock back)."""
    if prelude:
        code = "\n".join((*prelude, "import runpy", "runpy.run_module('guardian', run_name='__main__')"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=config.parent,
        )
        daemon = Daemon(proc)
    else:
        daemon = await Daemon.start("run", "--config", str(config), env=env, cwd=config.parent)
    daemons.append(daemon)
    await daemon.wait_event("guardian_listening")
    return daemon


def bot(url: str, i: int = 0, timeout_s: float = 10) -> KrakenClient:
    return KrakenClient(url, Credentials(bot_key(i), ApiSecret(bot_secret(i))), timeout_s=timeout_s)


async def state_of(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    status, doc = await get_json(http, url + "/guardian/state")
    assert status == 200
    return dict(doc)


def in_flight(sim: Simulator) -> list[dict[str, Any]]:
    """The orders guardian sent that the exchange has received and not yet answered."""
    return [r for r in sim.requests_for("sendorder") if "http_status" not in r and r["api_key"] == TRADE_KEY]


def assert_no_secret(daemons: list[Daemon], bots: int = 1) -> None:
    """Nothing any daemon wrote, on the error paths these faults take too, holds a secret or the exchange
    key (it may show its first four characters)."""
    written = "".join(daemon.output() for daemon in daemons)
    for value in (TRADE_SECRET, TRADE_KEY, *(bot_secret(i) for i in range(bots))):
        assert value not in written, "a secret reached the output"


def refreshes_after(sim: Simulator, seq: int) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["seq"] > seq and r["endpoint"] == "cancelallordersafter"]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with running_sim(budget_capacity=1_000_000) as simulator:
        simulator.add_key(SimKey(ORDER_KEY, ApiSecret(TRADE_SECRET), account="main"))
        yield simulator


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def orders(sim: Simulator) -> AsyncIterator[KrakenClient]:
    """The test's own client straight to the exchange, for resting orders guardian must keep alive."""
    async with KrakenClient(sim.url, Credentials(ORDER_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


# ---- kill -9 in the middle of forwarding ---------------------------------------------------------------


async def test_kill_9_mid_forwarding_leaves_a_whole_journal_and_the_restart_takes_over_at_once(
    sim: Simulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    """Four bots, twelve orders at a slowed exchange, then SIGKILL. The journal file is whole, holds an
    intent for every order the exchange received, and shows exactly the twelve unanswered ones as outcome
    unknown; the daemon restarted on it refreshes the exchange's timer at once, before it ran out."""
    bots, each = 4, 3
    # A timer long enough that the restart comes well inside it: the takeover leaves no gap at all.
    config = write_config(tmp_path, sim.url, timeout_s=8, bots=bots, upstream_timeout_s=3)
    env = config_env(bots)
    first = await start(daemons, config, env)
    await first.wait_event("guardian_ready")
    url = await first.url()
    clients = [bot(url, i) for i in range(bots)]
    for client in clients:
        await client.start()
    try:
        answered = await asyncio.gather(
            *(
                client.send_order(**LMT, cliOrdId=f"done-{i}-{n}")
                for i, client in enumerate(clients)
                for n in range(each)
            )
        )
        assert {a["sendStatus"]["status"] for a in answered} == {"placed"}
        # The exchange slows down: every bot has orders in flight when the daemon is killed.
        sim.faults.add(Fault("sendorder", "latency", latency_s=2.0))
        flying = [
            asyncio.create_task(client.send_order(**LMT, cliOrdId=f"flight-{i}-{n}"))
            for i, client in enumerate(clients)
            for n in range(each)
        ]
        await wait_for(
            lambda: len(in_flight(sim)) == bots * each, what="every second-round order at the exchange"
        )
        before_kill = sim.requests[-1]["seq"]
        code, _ = await first.signal_and_wait(signal.SIGKILL)
        killed_at = time.time()
        assert code == -signal.SIGKILL
        for result in await asyncio.gather(*flying, return_exceptions=True):
            assert isinstance(result, ExchangeError)  # the bots never learn what became of these
    finally:
        for client in clients:
            await client.close()

    # The journal as the crash left it, read the way an operator would (read-only, the daemon down).
    journal = tmp_path / "journal.sqlite3"
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "journal", "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shown.communicate(), 30)
    assert shown.returncode == 0, err.decode()
    rows = [json.loads(line) for line in out.decode().splitlines()]
    with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        unfinished = conn.execute(
            "SELECT count(*) FROM requests WHERE verdict = 'forwarded' AND outcome IS NULL"
        ).fetchone()[0]
    sends = {
        r["params"]["cliOrdId"]: r for r in rows if r["type"] == "request" and r["endpoint"] == "sendorder"
    }
    assert set(sends) == {
        f"{stage}-{i}-{n}" for stage in ("done", "flight") for i in range(bots) for n in range(each)
    }
    for cli_ord_id, row in sends.items():
        assert (
            row["verdict"] == "forwarded"
            and row["bot"] is not None
            and row["params"]["symbol"] == "PF_XBTUSD"
        )
        assert row["outcome"] == ("success" if cli_ord_id.startswith("done") else "unknown"), row
    assert unfinished == bots * each  # no outcome was half-recorded: exactly the ones in flight have none

    # Restarted on the same journal: it marks those outcomes unknown, and refreshes at once.
    second = await start(daemons, config, env)
    listening = parse_iso((await second.wait_event("guardian_listening"))["timestamp"])
    await second.wait_event("guardian_ready")
    marked = second.event("journal_outcomes_unknown")
    assert marked is not None and marked["count"] == bots * each
    [takeover, *_] = refreshes_after(sim, before_kill)
    assert parse_iso(takeover["time"]) - listening <= REFRESH_MAX_S
    assert parse_iso(takeover["time"]) > killed_at
    assert sim.exchange.accounts["main"].switch_fired == 0  # the timer never ran out: no gap
    placed_first = {o.cli_ord_id for o in sim.exchange.accounts["main"].open_orders()}
    assert {f"done-{i}-{n}" for i in range(bots) for n in range(each)} <= placed_first

    # The slow exchange acted on every order it had received: each has its intent in the journal.
    await wait_for(lambda: not in_flight(sim), timeout_s=5, what="the slow exchange to answer")
    sim.faults.clear()
    at_exchange = {
        r["fields"]["cliOrdId"] for r in sim.requests_for("sendorder") if r["api_key"] == TRADE_KEY
    }
    assert at_exchange == set(sends)
    # Once the upstream timeout has passed since the restart, each unknown outcome is asked of the
    # exchange: every one of them was placed after all.
    await wait_for(
        lambda: len([e for e in second.events() if e.get("event") == "intent_settled"]) == bots * each,
        timeout_s=10,
        what="the settlements",
    )
    settled = {
        e["orders"][0]["cliOrdId"]: e["result"] for e in second.events() if e.get("event") == "intent_settled"
    }
    assert settled == {k: "open" for k in sends if k.startswith("flight")}
    # A bot retrying one of them after the restart does not get a second order.
    async with bot(await second.url()) as retry:
        again = await retry.send_order(**LMT, cliOrdId="flight-0-0")
    assert again["sendStatus"]["status"] == "clientOrderIdAlreadyExist"
    assert [o.cli_ord_id for o in sim.exchange.accounts["main"].open_orders()].count("flight-0-0") == 1
    await second.signal_and_wait(signal.SIGTERM)
    assert_no_secret(daemons, bots)
    after = read_journal(journal, limit=10_000)
    unknown = sorted(
        r["params"]["cliOrdId"]
        for r in after
        if r.get("endpoint") == "sendorder" and r["outcome"] == "settled:open"
    )
    assert unknown == sorted(k for k in sends if k.startswith("flight"))
    events = [r for r in after if r.get("type") == "event" and r["kind"] == "intent_settled"]
    assert sorted(e["detail"]["results"][0]["cliOrdId"] for e in events) == unknown
    with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = conn.execute("SELECT count(*) FROM requests WHERE outcome = 'settled:open'").fetchone()[0]
    assert stored == bots * each  # written into the file, not only shown so


# ---- two daemons on one account --------------------------------------------------------------------------


async def successes(http: aiohttp.ClientSession, daemon: Daemon) -> float:
    found = await scrape(http, await daemon.url())
    return metric(found, "guardian_switch_refreshes_total", account="main", outcome="success")


async def only_one_left(
    sim: Simulator, http: aiohttp.ClientSession, orders: KrakenClient, survivor: Daemon, timeout_s: int
) -> None:
    """For longer than the exchange timer, with one daemon: it keeps refreshing, the exchange's timer is
    running at every look, and the resting order stays."""
    before = await successes(http, survivor)
    until = time.monotonic() + timeout_s + 1.0
    while time.monotonic() < until:
        assert sim.switch_remaining("main") is not None
        await asyncio.sleep(0.05)
    assert sim.exchange.accounts["main"].switch_fired == 0
    assert [o["cliOrdId"] for o in await orders.open_orders()] == ["resting"]
    assert await successes(http, survivor) >= before + timeout_s / REFRESH_MAX_S
    switch = (await state_of(http, await survivor.url()))["accounts"][0]["switch"]
    assert (switch["state"], switch["consecutive_failures"]) == ("armed", 0)


async def test_a_redundant_pair_on_one_key_keeps_the_switch_armed_when_either_dies(
    sim: Simulator, daemons: list[Daemon], http: aiohttp.ClientSession, orders: KrakenClient, tmp_path: Path
) -> None:
    """Two daemons signing with one exchange key: with `nonce = "off"` their requests cannot refuse each
    other's nonces (see the next test for what the default does)."""
    configs = [write_config(tmp_path / name, sim.url, nonce="off") for name in ("a", "b")]
    a, b = await asyncio.gather(*(start(daemons, config, config_env()) for config in configs))
    await asyncio.gather(a.wait_event("guardian_ready"), b.wait_event("guardian_ready"))
    await orders.send_order(**LMT, cliOrdId="resting")
    # Both refresh: each one's own count of successful refreshes goes up, and the exchange accepts all.
    counts = [await successes(http, d) for d in (a, b)]
    await asyncio.sleep(3 * REFRESH_MAX_S)
    for daemon, count in zip((a, b), counts, strict=True):
        assert await successes(http, daemon) >= count + 2
    refreshes = sim.requests_for("cancelallordersafter")
    assert {(r["fields"]["timeout"], r["outcome"]) for r in refreshes} == {("3", "success")}

    await a.signal_and_wait(signal.SIGKILL)
    await only_one_left(sim, http, orders, b, 3)
    a = await start(daemons, configs[0], config_env())  # back; then the other one dies
    await a.wait_event("guardian_ready")
    await b.signal_and_wait(signal.SIGKILL)
    await only_one_left(sim, http, orders, a, 3)
    await a.signal_and_wait(signal.SIGTERM)
    assert_no_secret(daemons)


async def test_a_pair_on_one_key_with_millisecond_nonces_and_clocks_apart_cannot_both_refresh(
    sim: Simulator, daemons: list[Daemon], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The default (`nonce = "milliseconds"`) on two hosts whose clocks are 5 s apart (the second daemon's
    clock set back in its own process): the exchange refuses a nonce more than its tolerance (the
    simulator's: 3 s) below the highest the key has sent, so while the first daemon runs the second never
    arms. It must say so rather than pass for a standby: never ready, the exchange's code in its state,
    and no order let out. (On one host, sharing the clock, the simulator saw no refusal in 100 refreshes:
    the hazard is clocks apart, or an exchange stricter than the simulator.)"""
    configs = [write_config(tmp_path / name, sim.url) for name in ("ahead", "behind")]
    ahead = await start(daemons, configs[0], config_env())
    await ahead.wait_event("guardian_ready")
    behind = await start(
        daemons,
        configs[1],
        config_env(),
        "import time",
        "_now = time.time_ns",
        "time.time_ns = lambda: _now() - 5_000_000_000",
    )
    url = await behind.url()
    await wait_for(lambda: behind.event("switch_refresh_failed"), what="a refused refresh")
    await asyncio.sleep(3 * REFRESH_MAX_S)
    switch = (await state_of(http, url))["accounts"][0]["switch"]
    assert switch["state"] == "starting" and switch["refreshes"] == 0
    assert "nonceBelowThreshold" in switch["last_error"]
    status, _ = await get_json(http, url + "/readyz")
    assert status == 503 and behind.event("guardian_ready") is None
    async with bot(url) as client:
        with pytest.raises(ExchangeError) as caught:
            await client.send_order(**LMT)
    assert caught.value.code == "switchNotArmed"
    refused = [r for r in sim.requests_for("cancelallordersafter") if r.get("error") == "nonceBelowThreshold"]
    assert len(refused) >= 3
    assert_no_secret(daemons)


# ---- SIGSTOP past the exchange timeout, with an order waiting --------------------------------------------


async def test_an_order_sent_while_stopped_past_the_timeout_is_refused_and_all_of_it_is_recorded(
    sim: Simulator, daemons: list[Daemon], http: aiohttp.ClientSession, orders: KrakenClient, tmp_path: Path
) -> None:
    """The order a bot sent while the daemon was frozen reaches it after SIGCONT, when the timer has run out
    at the exchange: it is refused, never forwarded, and the expiry is in the state, /readyz, /metrics and
    the journal until the daemon has re-armed (three failed refreshes hold that moment open)."""
    config = write_config(tmp_path, sim.url)
    daemon = await start(daemons, config, config_env())
    await daemon.wait_event("guardian_ready")
    url = await daemon.url()
    await orders.send_order(**LMT, cliOrdId="resting")
    async with bot(url) as client:
        await client.open_orders()  # a kept-alive connection the next order goes out on
        daemon.proc.send_signal(signal.SIGSTOP)
        stopped_seq = sim.requests[-1]["seq"]
        waiting = asyncio.create_task(client.send_order(**LMT, cliOrdId="sent-while-stopped"))
        await wait_for(lambda: sim.exchange.accounts["main"].switch_fired == 1, what="the exchange timer")
        assert await orders.open_orders() == []  # the exchange cancelled everything
        assert not waiting.done()
        sim.faults.add(Fault("cancelallordersafter", "status", status=503, times=3))
        daemon.proc.send_signal(signal.SIGCONT)
        with pytest.raises(ExchangeError) as caught:
            await waiting
        assert (caught.value.code, caught.value.http_status) == ("switchNotArmed", 409)
        switch = (await state_of(http, url))["accounts"][0]["switch"]
        status, ready = await get_json(http, url + "/readyz")
        found = await scrape(http, url)
        assert switch["state"] == "expired"
        assert status == 503 and ready["reasons"][0].startswith("main: switch expired")
        assert metric(found, "guardian_switch_state", account="main", state="expired") == 1
        await wait_for(lambda: daemon.event("switch_rearmed_after_expiry"), what="re-armed")
        placed = await client.send_order(**LMT, cliOrdId="after-rearm")
        assert placed["sendStatus"]["status"] == "placed"
    sent = [r["fields"]["cliOrdId"] for r in sim.requests_for("sendorder") if r["seq"] > stopped_seq]
    assert sent == ["after-rearm"]
    await daemon.signal_and_wait(signal.SIGTERM)
    assert_no_secret(daemons)
    rows = read_journal(tmp_path / "journal.sqlite3", limit=10_000)
    changes = [r["detail"]["state"] for r in rows if r["type"] == "event" and r["kind"] == "switch_state"]
    assert changes == ["starting", "armed", "expired", "armed"]
    [refused] = [r for r in rows if r["type"] == "request" and r["verdict"] == "refused"]
    assert (refused["params"]["cliOrdId"], refused["reason"], refused["http_status"]) == (
        "sent-while-stopped",
        "switchNotArmed",
        409,
    )


# ---- the journal cannot be written ---------------------------------------------------------------------


async def test_an_unwritable_journal_refuses_new_risk_keeps_the_switch_and_says_so_everywhere(
    sim: Simulator, daemons: list[Daemon], http: aiohttp.ClientSession, orders: KrakenClient, tmp_path: Path
) -> None:
    """The operating system refuses every write past the first byte of any file (RLIMIT_FSIZE lowered on
    the running daemon: what a full or failing disk looks like to SQLite). New risk is refused and never
    reaches the exchange; cancels go out; the switch stays armed past the exchange timer; the state,
    /readyz, /metrics and an error log line say the journal cannot be written. Once writes work again,
    the next order goes out and is journaled."""
    config = write_config(tmp_path, sim.url)
    daemon = await start(daemons, config, config_env())
    await daemon.wait_event("guardian_ready")
    url = await daemon.url()
    await orders.send_order(**LMT, cliOrdId="resting")
    pid = daemon.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    async with bot(url) as client:
        ids = [(await client.send_order(**LMT))["sendStatus"]["order_id"] for _ in range(2)]
        mark = sim.requests[-1]["seq"]
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            with pytest.raises(ExchangeError) as caught:
                await client.send_order(**LMT, cliOrdId="no-audit-trail")
            assert (caught.value.code, caught.value.http_status) == ("journalUnavailable", 503)
            with pytest.raises(ExchangeError) as caught:
                await client.batch_order([{"order": "send", "order_tag": "t", **LMT}])
            assert caught.value.code == "journalUnavailable"
            assert (await client.cancel_order(order_id=ids[0]))["cancelStatus"]["status"] == "cancelled"
            batch = await client.batch_order([{"order": "cancel", "order_id": ids[1]}])
            assert batch["batchStatus"][0]["status"] == "cancelled"
            assert (await client.cancel_all_orders())["cancelStatus"]["status"] == "cancelled"
            signed = [r["endpoint"] for r in sim.requests if r["seq"] > mark and r["api_key"] == TRADE_KEY]
            assert [name for name in signed if name != "cancelallordersafter"] == [
                "cancelorder",
                "batchorder",
                "cancelallorders",
            ]  # and no send: the two refused never left
            state = await state_of(http, url)
            assert state["journal"]["healthy"] is False
            assert ": write failed: " in state["journal"]["last_error"]  # disk I/O error, or disk full
            status, ready = await get_json(http, url + "/readyz")
            assert status == 503 and ready["reasons"] == [
                f"journal: cannot write ({state['journal']['last_error']}); no new risk goes out"
            ]
            assert metric(await scrape(http, url), "guardian_journal_healthy") == 0
            logged = daemon.event("journal_write_failed")
            assert logged is not None and logged["level"] == "error"
            # The switch does not depend on the journal: armed at every look, past the exchange timer.
            await orders.send_order(**LMT, cliOrdId="resting-2")
            until = time.monotonic() + 3.5
            while time.monotonic() < until:
                switch = (await state_of(http, url))["accounts"][0]["switch"]
                assert switch["state"] == "armed" and sim.switch_remaining("main") is not None
                await asyncio.sleep(0.1)
            assert sim.exchange.accounts["main"].switch_fired == 0
            assert {o["cliOrdId"] for o in await orders.open_orders()} == {"resting-2"}
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
        placed = await client.send_order(**LMT, cliOrdId="audited-again")
        assert placed["sendStatus"]["status"] == "placed"
        assert (await state_of(http, url))["journal"]["healthy"] is True
        assert (await get_json(http, url + "/readyz"))[0] == 200
        assert metric(await scrape(http, url), "guardian_journal_healthy") == 1
    await daemon.signal_and_wait(signal.SIGTERM)
    assert_no_secret(daemons)
    journal = tmp_path / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    sends = [r for r in read_journal(journal, limit=10_000) if r.get("endpoint") == "sendorder"]
    assert [(r["params"].get("cliOrdId"), r["outcome"]) for r in sends][-1] == ("audited-again", "success")
    assert "no-audit-trail" not in json.dumps(sends)  # refused without a trail: it never went out either
