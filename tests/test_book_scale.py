"""A market maker's book end to end (issue 20): thousands of orders resting at the simulator, followed by
guardian over the real WebSocket link and REST, served to bots through the relay and the local API.

- A snapshot after a reconnect, and a REST reconciliation, that change thousands of orders at once are
  taken in slices: while the running figures are between two pictures the event loop keeps turning (a
  task sees it settling, several times), and at the end every figure equals the simulator's own book.
- A relay subscriber gets the fresh snapshot after the reconnect, then the deltas, in order.
- A bot's read of thousands of open orders is answered whole; the journal keeps its size, not its body.
- `/guardian/state` shows counts and totals, and a list only when asked (`?orders=N`).
No timing is asserted: the loop's longest stall is printed (bench/ measures it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.config import StreamConfig
from guardian.journal import read_journal
from guardian.service import Service
from guardian.sim.app import Simulator
from tests.daemon import get_json, scrape, wait_for
from tests.relay_helpers import exchange_and_guardian, rest, ws_bot

pytestmark = pytest.mark.slow

N = 3000
SYMBOLS = ("PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service]]:
    # A link silent for 2 s (the relay tests' setting) can be a busy machine applying thousands of orders,
    # and a reconnect sends every subscriber a new snapshot: these tests are about the book, not the link.
    patient = StreamConfig(link_timeout_s=15.0, reconcile_s=30.0, state_max_age_s=10.0)
    async with exchange_and_guardian(tmp_path, account_stream=patient) as (exchange, service):
        exchange.exchange.max_open_orders = 10 * N
        yield exchange, service


def place(exchange: Simulator, count: int, prefix: str) -> None:
    """`count` resting limit buys spread over the symbols, straight into the simulator's book (its stream
    tells guardian of each)."""
    acct = exchange.exchange.accounts["main"]
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        instrument = exchange.exchange.market.instrument(symbol)
        assert instrument is not None
        mark = exchange.exchange.market.quotes[symbol].mark
        price = instrument.round_price(mark * (Decimal("0.9") - Decimal(i % 500) / 10_000))
        size = str(Decimal(1).scaleb(-instrument.size_precision))  # a minimal lot
        fields = {"orderType": "lmt", "symbol": symbol, "side": "buy", "size": size, "limitPrice": str(price)}
        answer = exchange.exchange.send_order(acct, {**fields, "cliOrdId": f"{prefix}-{i}"})
        assert answer["status"] == "placed", answer


async def rest_book(exchange: Simulator, service: Service, prefix: str) -> None:
    """N orders resting at the simulator, and guardian's picture and figures come to equal them."""
    place(exchange, N, prefix)
    await wait_for(lambda: agrees(exchange, service), 20, "guardian following the simulator's book")


def book(exchange: Simulator) -> dict[str, Any]:
    """The simulator's own book, counted plainly."""
    orders = exchange.exchange.accounts["main"].open_orders()
    by_symbol: dict[str, int] = {}
    buys: dict[str, Decimal] = {}
    for o in orders:
        by_symbol[o.symbol] = by_symbol.get(o.symbol, 0) + 1
        if o.side == "buy" and not o.reduce_only:
            buys[o.symbol] = buys.get(o.symbol, Decimal(0)) + o.unfilled
    return {"ids": {o.order_id for o in orders}, "by_symbol": by_symbol, "buys": buys}


def agrees(exchange: Simulator, service: Service) -> bool:
    """guardian's state and running figures equal the simulator's book."""
    ledger = service.accounts[0].exposure.ledger
    plain = book(exchange)
    return (
        set(service.streams[0].view().orders) == plain["ids"]
        and ledger.settling == 0
        and ledger.total == len(plain["ids"])
        and all(ledger.count(s) == plain["by_symbol"].get(s, 0) for s in SYMBOLS)
        and all(ledger.side_size(s, "buy") == plain["buys"].get(s, Decimal(0)) for s in SYMBOLS)
    )


@contextlib.contextmanager
def settling_watch(service: Service) -> Iterator[list[int]]:
    """Every turn the event loop gives this task, whether the running figures were settling then."""
    seen: list[int] = []

    async def watch() -> None:
        ledger = service.accounts[0].exposure.ledger
        while True:
            seen.append(ledger.settling)
            await asyncio.sleep(0)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()


async def test_a_reconnect_snapshot_changing_thousands_of_orders_is_taken_in_slices_and_relayed_in_order(
    world: tuple[Simulator, Service],
) -> None:
    exchange, service = world
    await rest_book(exchange, service, "old")
    async with ws_bot(service) as reader:
        assert (await reader.subscribe("open_orders"))["event"] == "subscribed"
        first = await reader.expect(lambda m: m.get("feed") == "open_orders_snapshot", 10)
        assert len(first["orders"]) == N
        with settling_watch(service) as seen:
            # The link goes; before guardian is back, the whole book changes: every old order cancelled,
            # as many new ones placed. The reconnect's snapshot brings both at once.
            exchange.stream.drop_all()
            acct = exchange.exchange.accounts["main"]
            exchange.exchange.cancel_all(acct, None)
            place(exchange, N, "new")
            await wait_for(lambda: agrees(exchange, service), 30, "the reconnect's snapshot taken in")
        settling_turns = sum(1 for s in seen if s)
        assert settling_turns >= 2, f"the loop turned {settling_turns} times while the figures settled"
        print(
            f"turns while settling {settling_turns}, longest stall {service.loop_watch.longest_s * 1000:.1f} ms"
        )
        # The relay's subscriber gets the fresh snapshot (rendered in slices), then the deltas after it.
        fresh = await reader.expect(
            lambda m: (
                m.get("feed") == "open_orders_snapshot"
                and len(m["orders"]) == N
                and m["orders"][0]["cli_ord_id"].startswith("new")
            ),
            20,
        )
        start = next(i for i, (_, m) in enumerate(reader.messages) if m is fresh)
        place(exchange, 1, "after")
        delta = await reader.expect(
            lambda m: m.get("feed") == "open_orders" and "order" in m, 10, start=start
        )
        assert delta["order"]["cli_ord_id"] == "after-0"
        assert {o["order_id"] for o in fresh["orders"]} == book(exchange)["ids"] - {
            delta["order"]["order_id"]
        }


async def test_a_rest_reconciliation_changing_thousands_of_orders_is_taken_in_slices(
    world: tuple[Simulator, Service],
) -> None:
    exchange, service = world
    await rest_book(exchange, service, "old")
    stream = service.streams[0]
    exchange.stream.stall()  # the stream says nothing more: REST alone brings the change
    try:
        changes = -1
        while changes != stream._changes:  # what was already on its way has arrived
            changes = stream._changes
            await asyncio.sleep(0.3)
        acct = exchange.exchange.accounts["main"]
        exchange.exchange.cancel_all(acct, None)
        place(exchange, N, "new")
        with settling_watch(service) as seen:
            assert await stream.reconcile()
        assert stream._changes == changes  # nothing came by the stream: REST's picture it is
        assert agrees(exchange, service)
        settling_turns = sum(1 for s in seen if s)
        assert settling_turns >= 2, f"the loop turned {settling_turns} times while the figures settled"
        assert stream.drift_total.get("open_orders", 0) >= 1
    finally:
        exchange.stream.stalled = False


async def test_a_read_of_thousands_of_orders_is_answered_whole_and_journaled_by_its_size(
    world: tuple[Simulator, Service],
) -> None:
    exchange, service = world
    await rest_book(exchange, service, "mm")
    async with rest(service) as bot:
        orders = await bot.open_orders()
    assert {o["order_id"] for o in orders} == book(exchange)["ids"]
    await service.journal.flush()
    rows = [
        r
        for r in read_journal(service.config.journal.path, limit=1000)
        if r.get("type") == "request" and r.get("endpoint") == "openorders"
    ]
    assert rows and rows[-1]["outcome"] == "success"
    assert rows[-1]["answer"]["omitted"].endswith("bytes, not kept"), rows[-1]["answer"]


async def test_the_state_at_thousands_of_orders_gives_counts_and_lists_only_when_asked(
    world: tuple[Simulator, Service],
) -> None:
    exchange, service = world
    await rest_book(exchange, service, "mm")
    async with aiohttp.ClientSession() as http:
        status, state = await get_json(http, service.url + "/guardian/state")
        assert status == 200
        [account] = state["accounts"]
        assert account["open_orders"]["count"] == N and "orders" not in account["open_orders"]
        assert sum(account["open_orders"]["by_symbol"].values()) == N
        totals = {u["name"] for u in account["limits"]}
        assert "max_open_orders_total" in totals or account["limits"] == [] or totals
        status, listed = await get_json(http, service.url + "/guardian/state?orders=5")
        rows = listed["accounts"][0]["open_orders"]["orders"]
        assert status == 200 and len(rows) == 5
        assert {r["order_id"] for r in rows} <= book(exchange)["ids"]
        assert set(rows[0]) >= {"order_id", "cli_ord_id", "bot", "symbol", "side", "remaining", "limit_price"}
        for bad in ("abc", "1001", "-1"):
            status, refused = await get_json(http, service.url + f"/guardian/state?orders={bad}")
            assert (status, refused["error"]) == (400, "invalidArgument")
        found = await scrape(http, service.url)
    assert found[("guardian_event_loop_lag_seconds_count", frozenset())] > 0
    assert ("guardian_event_loop_stall_seconds_max", frozenset()) in found


async def test_a_subscriber_gets_its_large_snapshot_first_and_the_deltas_that_came_meanwhile_after_it(
    world: tuple[Simulator, Service],
) -> None:
    """The snapshot of thousands of orders is rendered in slices; orders placed while it is rendered reach
    the subscriber after it, in order, and snapshot plus deltas give the simulator's book."""
    exchange, service = world
    await rest_book(exchange, service, "mm")
    async with ws_bot(service) as reader:
        await reader.authenticate()
        start = len(reader.messages)
        await reader.ws.send_json({"event": "subscribe", "feed": "open_orders", **reader.auth()})
        for n in range(40):  # while the snapshot is being rendered: new orders, one a turn
            place_one(exchange, f"during-{n}")
            await asyncio.sleep(0)
        await wait_for(lambda: agrees(exchange, service), 20, "guardian following the new orders")
        await reader.expect(
            lambda m: m.get("feed") == "open_orders" and m.get("order", {}).get("cli_ord_id") == "during-39",
            10,
            start=start,
        )
    orders = [
        m
        for _, m in reader.messages[start:]
        if str(m.get("feed", "")).startswith("open_orders") and "event" not in m
    ]
    assert orders[0]["feed"] == "open_orders_snapshot", [m["feed"] for m in orders[:3]]
    shown = {o["order_id"] for o in orders[0]["orders"]}
    for delta in orders[1:]:
        assert delta["feed"] == "open_orders" and not delta.get("is_cancel")
        shown.add(delta["order"]["order_id"])
    assert shown == book(exchange)["ids"]
    assert len(orders[0]["orders"]) < N + 40  # some came while it was rendered, as deltas after it


def place_one(exchange: Simulator, cli: str) -> None:
    acct = exchange.exchange.accounts["main"]
    mark = exchange.exchange.market.quotes["PF_XBTUSD"].mark
    price = exchange.exchange.market.instrument("PF_XBTUSD").round_price(mark * Decimal("0.85"))  # type: ignore[union-attr]
    fields = {
        "orderType": "lmt",
        "symbol": "PF_XBTUSD",
        "side": "buy",
        "size": "0.0001",
        "limitPrice": str(price),
    }
    assert exchange.exchange.send_order(acct, {**fields, "cliOrdId": cli})["status"] == "placed"
