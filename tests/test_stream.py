"""The account state against the simulator's ws/v1 and REST on loopback (issue 11): guardian's private link
and shared ticker link, what it shows (state, metrics, `guardian status`), what it journals (fills and
closed orders with the bot that placed them, `dead_man_switch` when the switch fires), and the stream's
faults (a drop, a stall, refused auth, changes made while the link is down), and the maintenance policy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.config import ClientConfig, GuardConfig, StreamConfig, SwitchConfig
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.sim.ws import StreamSettings
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import account_config, scrape, serving, wait_for

BOT_KEY = "stream-bot-local-key-01"
BOT_SECRET = base64.b64encode(b"stream bot local secret 32 bytes").decode()
ADMIN = "admin-token-for-the-stream-tests"
BOT = ClientConfig("grid-bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE}))
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
STREAM = StreamConfig(link_timeout_s=2.0, reconcile_s=30.0, state_max_age_s=2.0)
# A budget larger than Kraken's: the tests' fast beats and reconciliations would not fit in 500 per 10 s.
GUARD = GuardConfig(mark_poll_s=0.2, rate_budget=20_000, upstream_timeout_s=2.0)
LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 59000}


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    async with running_sim(
        budget_capacity=100_000, stream=StreamSettings(heartbeat_s=0.5, ticker_s=0.2)
    ) as sim:
        yield sim


@contextlib.asynccontextmanager
async def guarded(
    exchange: Simulator,
    tmp_path: Path,
    *,
    stream: StreamConfig = STREAM,
    guard: GuardConfig = GUARD,
    switch: SwitchConfig = SWITCH,
) -> AsyncIterator[Service]:
    account = account_config(exchange.url, switch=switch, guard=guard, clients=(BOT,), stream=stream)
    async with serving(account, journal=tmp_path / "journal.sqlite3", admin_token=ADMIN) as service:
        await wait_for(
            lambda: service.accounts[0].switch.state is SwitchState.ARMED and service.streams[0].link.up,
            timeout_s=10,
            what="switch armed and link up",
        )
        yield service


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    async with guarded(exchange, tmp_path) as service:
        yield service


@contextlib.asynccontextmanager
async def bot(service: Service) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(service.url, Credentials(BOT_KEY, ApiSecret(BOT_SECRET)), timeout_s=5) as client:
        yield client


def account_state(service: Service) -> dict[str, Any]:
    state = service.state_json()["accounts"]
    assert isinstance(state, list)
    found: dict[str, Any] = state[0]
    return found


def exchange_orders(exchange: Simulator) -> set[str]:
    return {o.order_id for o in exchange.exchange.accounts["main"].open_orders()}


def exchange_positions(exchange: Simulator) -> dict[str, float]:
    return {s: float(p.size) for s, p in exchange.exchange.accounts["main"].positions.items() if p.size}


def shown_positions(service: Service) -> dict[str, float]:
    return {p["symbol"]: p["size"] for p in account_state(service)["positions"]}


async def journal_events(service: Service, kind: str) -> list[dict[str, Any]]:
    for stream in service.streams:  # what the stream has applied is journaled in the background: let it land
        await stream.settle()
    await service.journal.flush()
    rows = read_journal(service.config.journal.path, limit=100_000)
    return [r["detail"] for r in rows if r.get("type") == "event" and r["kind"] == kind]


# ---- the picture -------------------------------------------------------------------------------------


async def test_orders_fills_and_positions_reach_the_state_and_the_journal_names_the_bot(
    guardian: Service, exchange: Simulator
) -> None:
    async with bot(guardian) as b:
        resting = await b.send_order(**LMT, cliOrdId="rest-1")
        order_id = resting["sendStatus"]["order_id"]
        await wait_for(lambda: account_state(guardian)["open_orders"]["count"] == 1, 3.0, "the order shown")
        await b.send_order(orderType="mkt", symbol="PF_XBTUSD", side="buy", size=2)
        await wait_for(lambda: shown_positions(guardian) == {"PF_XBTUSD": 2.0}, 3.0, "the position shown")
        await b.cancel_order(order_id=order_id)
        await wait_for(lambda: account_state(guardian)["open_orders"]["count"] == 0, 3.0, "the cancel shown")
    state = account_state(guardian)
    assert state["fresh"] is True and state["link"]["state"] == "connected"
    assert state["fills_today"]["count"] == 1
    assert state["balances"]["available_margin"] is not None
    fills = await journal_events(guardian, "fill")
    assert [(f["bot"], f["symbol"], f["side"], f["size"]) for f in fills] == [
        ("grid-bot", "PF_XBTUSD", "buy", "2")
    ]
    closed = await journal_events(guardian, "order_closed")
    assert [(c["order_id"], c["reason"], c["bot"]) for c in closed] == [
        (order_id, "cancelled_by_user", "grid-bot")
    ]


async def test_the_switch_firing_journals_every_order_it_cancelled_with_reason_dead_man_switch(
    guardian: Service, exchange: Simulator
) -> None:
    async with bot(guardian) as b:
        placed = [await b.send_order(**{**LMT, "limitPrice": 59000 - i}) for i in range(3)]
    ids = {p["sendStatus"]["order_id"] for p in placed}
    await wait_for(lambda: account_state(guardian)["open_orders"]["count"] == 3, 2.0, "three orders shown")
    exchange.faults.add(Fault("cancelallordersafter", "hang"))  # refreshes stop: the 5 s timer runs out
    await wait_for(lambda: not exchange_orders(exchange), 10.0, "the exchange's switch to fire")
    exchange.faults.clear()
    exchange.release_hangs()
    await wait_for(lambda: account_state(guardian)["open_orders"]["count"] == 0, 2.0, "the cancels shown")
    closed = await journal_events(guardian, "order_closed")
    assert {c["order_id"] for c in closed if c["reason"] == "dead_man_switch"} == ids
    assert all(c["bot"] == "grid-bot" for c in closed)


async def test_metrics_and_status_of_a_fresh_account(guardian: Service, exchange: Simulator) -> None:
    async with bot(guardian) as b:
        await b.send_order(**LMT)
        await b.send_order(orderType="mkt", symbol="PF_XBTUSD", side="sell", size=1)
    await wait_for(lambda: shown_positions(guardian) == {"PF_XBTUSD": -1.0}, 3.0, "the short shown")
    async with aiohttp.ClientSession() as http:
        found = await scrape(http, guardian.url)
    assert found[("guardian_exchange_link_up", frozenset({("account", "main")}))] == 1
    assert found[("guardian_account_state_fresh", frozenset({("account", "main")}))] == 1
    assert (
        found[("guardian_position_contracts", frozenset({("account", "main"), ("symbol", "PF_XBTUSD")}))]
        == -1
    )
    assert found[("guardian_open_orders", frozenset({("account", "main"), ("symbol", "PF_XBTUSD")}))] == 1
    labels = frozenset({("account", "main"), ("symbol", "PF_XBTUSD"), ("side", "sell")})
    assert found[("guardian_fills_total", labels)] == 1
    assert found[("guardian_account_available_margin", frozenset({("account", "main")}))] > 0
    assert found[("guardian_account_portfolio_value", frozenset({("account", "main")}))] > 0
    assert found[("guardian_exchange_link_reconnects_total", frozenset({("account", "main")}))] == 0
    assert ("guardian_exchange_maintenance_seconds", frozenset({("account", "main")})) not in found
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "status", "--url", guardian.url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    text = out.decode()
    assert "account main: OK" in text and "PF_XBTUSD: -1 @ 60,000" in text and "orders  1 open" in text


# ---- stream faults -----------------------------------------------------------------------------------


async def test_a_dropped_stream_is_made_again_with_fresh_snapshots(
    guardian: Service, exchange: Simulator
) -> None:
    link = guardian.streams[0].link
    exchange.stream.drop_all()
    await wait_for(lambda: not link.up, 2.0, "the drop noticed")
    started = time.monotonic()
    await wait_for(lambda: link.up, STREAM.link_timeout_s + 2.0, "the link made again")
    assert time.monotonic() - started < STREAM.link_timeout_s + 2.0
    assert link.status.reconnects == 1
    async with bot(guardian) as b:
        await b.send_order(**LMT)
    await wait_for(lambda: account_state(guardian)["open_orders"]["count"] == 1, 3.0, "the new link's delta")


async def test_a_stalled_stream_is_noticed_within_the_link_timeout(
    guardian: Service, exchange: Simulator
) -> None:
    link = guardian.streams[0].link
    stalled_at = time.monotonic()
    exchange.stream.stall()
    await wait_for(lambda: not link.up, STREAM.link_timeout_s + 1.0, "the stall noticed")
    assert time.monotonic() - stalled_at <= STREAM.link_timeout_s + 1.0
    assert "stalled" in (link.status.last_error or "")
    exchange.stream.resume()
    await wait_for(lambda: link.up, 10.0, "the link back")


async def test_changes_made_while_the_link_is_down_come_from_reconciliation_as_drift(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path) as service:
        # The drift's journal entries are held until the picture has been checked: a reader must see REST's
        # picture and all of its drift counted together, however slow the journal (CI once saw the
        # positions adopted with only the open orders' drift counted, the rest waiting on the first write).
        journal_open = asyncio.Event()
        record = service.journal.event

        async def held(kind: str, account: str, detail: dict[str, Any]) -> None:
            if kind == "account_state_drift":
                await journal_open.wait()
            await record(kind, account, detail)

        service.journal.event = held  # type: ignore[method-assign]
        exchange.stream.refuse("Failed to subscribe to authenticated feed")
        exchange.stream.drop_all()
        stream = service.streams[0]
        await wait_for(lambda: not stream.link.up, 2.0, "the link down")
        # Both changes reach one reconciliation: none adopts the first alone (positions unreadable meanwhile).
        exchange.faults.add(Fault("openpositions", "error", code="Unavailable", status=503))
        failures = stream.reconcile_failures
        await wait_for(
            lambda: stream.reconcile_failures > failures, STREAM.state_max_age_s, "a reconcile failed"
        )
        # Changed at the exchange directly (another program, a person on the website).
        async with KrakenClient(exchange.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET))) as direct:
            await direct.send_order(**LMT)
            await direct.send_order(orderType="mkt", symbol="PF_ETHUSD", side="buy", size=3)
        exchange.faults.clear("openpositions")
        await wait_for(
            lambda: (
                shown_positions(service) == {"PF_ETHUSD": 3.0}
                and account_state(service)["open_orders"]["count"] == 1
            ),
            STREAM.state_max_age_s + 2.0,
            "REST's picture adopted",
        )
        state = account_state(service)
        assert state["link"]["state"] in ("down", "reconnecting")
        assert state["fresh"] is True  # reconciled within state_max_age_s, link or not
        assert state["reconcile"]["drift"] == {"open_orders": 1, "positions": 1}
        assert "Failed to subscribe to authenticated feed" in (state["link"]["last_error"] or "")
        assert await journal_events(service, "account_state_drift") == []
        journal_open.set()
        kinds: set[str] = set()

        async def journaled() -> bool:
            kinds.update(d["kind"] for d in await journal_events(service, "account_state_drift"))
            return kinds == {"open_orders", "positions"}

        await wait_for(journaled, 5.0, "both drifts journaled")
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
        assert (
            found[("guardian_account_drift_total", frozenset({("account", "main"), ("kind", "positions")}))]
            == 1
        )
        exchange.stream.accept()  # refused auth is retried: the link comes back by itself
        await wait_for(lambda: service.streams[0].link.up, 35.0, "the link back after auth is accepted")


async def test_a_stale_state_says_so_everywhere(exchange: Simulator, tmp_path: Path) -> None:
    async with guarded(exchange, tmp_path) as service:
        exchange.stream.stall()
        exchange.faults.add(Fault("openorders", "error", code="Unavailable", status=503))
        await wait_for(
            lambda: not service.streams[0].fresh(),
            STREAM.link_timeout_s + STREAM.state_max_age_s + 3,
            "stale",
        )
        assert account_state(service)["fresh"] is False
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
        assert found[("guardian_account_state_fresh", frozenset({("account", "main")}))] == 0
        exchange.faults.clear()
        exchange.stream.resume()
        await wait_for(lambda: service.streams[0].fresh(), 10.0, "fresh again")


# ---- maintenance ---------------------------------------------------------------------------------------


async def post_notice(exchange: Simulator, in_s: float, **extra: Any) -> None:
    exchange.exchange.post_notice(
        note="database upgrade",
        notice_type="maintenance",
        priority="high",
        effective_time_ms=int((time.time() + in_s) * 1000),
        **extra,
    )


async def test_the_maintenance_policy_moves_to_reduce_only_in_time_and_back_after(
    exchange: Simulator, tmp_path: Path
) -> None:
    guard = GuardConfig(mark_poll_s=0.2, rate_budget=20_000, maintenance_reduce_only_s=2.0)
    async with guarded(exchange, tmp_path, guard=guard) as service:
        account = service.accounts[0]
        await post_notice(exchange, 4.0)
        await wait_for(lambda: account_state(service)["notices"], 2.0, "the notice shown")
        assert account.mode.value == "active"  # 4 s ahead: not yet
        [notice] = account_state(service)["notices"]
        assert (notice["type"], notice["priority"], notice["note"]) == (
            "maintenance",
            "high",
            "database upgrade",
        )
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
        assert 2.0 < found[("guardian_exchange_maintenance_seconds", frozenset({("account", "main")}))] <= 4.0
        assert found[("guardian_exchange_last_message_age_seconds", frozenset({("account", "main")}))] < 1.0
        await wait_for(lambda: account.mode.value == "reduce_only", 4.0, "reduce_only ahead of it")
        moved_at = time.time()
        await wait_for(lambda: account.mode.value == "active", 5.0, "active after the window")
        assert time.time() - moved_at >= 1.5
        events = [e for e in await journal_events(service, "mode_changed") if e["by"] == "maintenance"]
        assert [e["mode"] for e in events] == ["reduce_only", "active"]


async def test_an_operators_mode_change_during_maintenance_is_never_overridden(
    exchange: Simulator, tmp_path: Path
) -> None:
    guard = GuardConfig(mark_poll_s=0.2, rate_budget=20_000, maintenance_reduce_only_s=2.0)
    async with guarded(exchange, tmp_path, guard=guard) as service, aiohttp.ClientSession() as http:
        account = service.accounts[0]
        await post_notice(exchange, 2.5)
        await wait_for(lambda: account.mode.value == "reduce_only", 4.0, "reduce_only ahead of it")
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(
            service.url + "/guardian/mode", json={"account": "main", "mode": "halted"}, headers=headers
        ) as response:
            assert response.status == 200
        await asyncio.sleep(2.0)  # the window is over
        assert account.mode.value == "halted"
        events = [e for e in await journal_events(service, "mode_changed") if e["by"] == "maintenance"]
        assert [e["mode"] for e in events] == ["reduce_only"]


async def test_marks_come_from_the_ticker_feed_while_it_is_up(guardian: Service, exchange: Simulator) -> None:
    marks = guardian.accounts[0].marks
    async with bot(guardian) as b:
        await b.send_order(**LMT)  # PF_XBTUSD comes into use
    await wait_for(lambda: marks.pushed > 0, 3.0, "a ticker message")
    polls = marks.polls
    exchange.exchange.market.set_mark("PF_XBTUSD", Decimal("60500"))
    await wait_for(lambda: str(marks.mark("PF_XBTUSD")) == "60500", 2.0, "the new mark pushed")
    await asyncio.sleep(1.0)
    assert marks.polls - polls <= 1  # the feed covers the symbols in use: the REST poll rests
    assert json.dumps(marks.snapshot())


async def test_after_a_restart_fills_of_orders_placed_before_it_are_still_the_bots(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path) as first, bot(first) as b:
        resting = await b.send_order(**LMT)
    async with guarded(exchange, tmp_path) as second:  # the same journal
        exchange.exchange.market.set_mark("PF_XBTUSD", Decimal("58900"))
        exchange.exchange.on_prices()  # the resting buy at 59000 fills
        await wait_for(lambda: shown_positions(second) == {"PF_XBTUSD": 1.0}, 2.0, "the fill shown")
        await asyncio.sleep(0.2)  # the fill's journal write
        fills = await journal_events(second, "fill")
    assert [(f["order_id"], f["bot"]) for f in fills] == [(resting["sendStatus"]["order_id"], "grid-bot")]


async def test_a_ticker_symbol_the_exchange_refuses_does_not_bring_the_link_down(exchange: Simulator) -> None:
    from guardian.stream.link import TickerLink

    pushed: list[str] = []
    link = TickerLink(
        "t",
        exchange.url.replace("http", "ws") + "/ws/v1",
        lambda: {"PF_XBTUSD", "PF_NOSUCH", "PF_ETHUSD"},
        link_timeout_s=2.0,
        on_message=lambda m: pushed.append(str(m.get("product_id"))) if m.get("feed") == "ticker" else None,
    )
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(link.run(session))
        try:
            await wait_for(lambda: link.refused == {("ticker", "PF_NOSUCH")}, 3.0, "the bad symbol refused")
            await wait_for(lambda: {"PF_XBTUSD", "PF_ETHUSD"} <= set(pushed), 3.0, "the good ones streamed")
            await asyncio.sleep(0.5)
            assert link.up and link.status.connections == 1  # never reconnected over it
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
