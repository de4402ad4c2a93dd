"""The inverse perpetual `PI_XBTUSD` through guardian, with the clients bots use (issue 24): ccxt's
krakenfutures and python-kraken-sdk place, list, edit and cancel orders on it, fill it and read the
position and the fills back; ccxt.pro follows its order, fill and position on guardian's relay; and
guardian's `max_notional` judges it by its face value (size x contractSize USD), whatever the price.

The fixtures and helpers are tests/test_gateway_compat.py's and tests/test_relay_clients.py's, with
guardian's guard set for this module: `max_notional` 10,000 USD and no size limit or price band, so that
the trades here meet only the limit the refusal test is about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import ccxt.pro as ccxtpro
import pytest

from guardian.config import ClientConfig, GuardConfig
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.daemon import account_config, serving, wait_for
from tests.relay_helpers import READER_KEY, READER_SECRET, ws_url
from tests.test_gateway_compat import (
    BOT_KEY,
    BOT_SECRET,
    SWITCH,
    assert_only_the_account_key,
    ex,
    exchange,
    in_thread,
    sdk,
)
from tests.test_relay_clients import _collect, only_the_account_key_reached_the_exchange, pair

pytestmark = pytest.mark.compat

__all__ = ["ex", "exchange", "pair"]  # the fixtures

INVERSE = "BTC/USD:BTC"  # ccxt's unified symbol for PI_XBTUSD
MAX_NOTIONAL = 10_000  # USD: 10,000 PI_XBTUSD contracts of 1 USD each
FEEDS = {"open_orders", "fills", "open_positions"}  # what ccxt.pro's three watches subscribe to
GUARD = GuardConfig(max_notional=MAX_NOTIONAL, mark_poll_s=0.1)


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    """test_gateway_compat's guardian with this module's guard, ready once it has the inverse mark."""
    bot = ClientConfig("bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE}))
    account = account_config(exchange.url, switch=SWITCH, guard=GUARD, clients=(bot,))
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(
            lambda: main.switch.state is SwitchState.ARMED and main.marks.mark("PI_XBTUSD") is not None,
            what="ready",
        )
        yield service


def held_position(exchange: Simulator) -> tuple[Decimal, Decimal]:
    """The simulator's own PI_XBTUSD position: (signed size, average entry)."""
    position = exchange.exchange.accounts["main"].positions["PI_XBTUSD"]
    return position.size, position.price


def fill_row(trade: dict[str, Any]) -> tuple[str, str, str, float]:
    """A ccxt trade's order, symbol, side and size in contracts. ccxt leaves `amount` None for an inverse
    contract (krakenfutures.py parse_trade: `'amount': amount if (linear is True) else None`): the
    contracts are in the fill's `info`."""
    return trade["order"], trade["symbol"], trade["side"], trade["info"]["size"]


# ---- ccxt ---------------------------------------------------------------------------------------------


async def test_ccxt_knows_pi_xbtusd_as_an_inverse_swap_settled_in_btc(ex: ccxt.krakenfutures) -> None:
    await ex.load_markets()
    [market] = [m for m in ex.markets.values() if m["id"] == "PI_XBTUSD"]
    assert market["symbol"] == INVERSE
    assert (market["type"], market["inverse"], market["linear"]) == ("swap", True, False)
    assert (market["base"], market["quote"], market["settle"]) == ("BTC", "USD", "BTC")
    assert market["contractSize"] == 1
    assert market["precision"]["amount"] == 1  # whole contracts


async def test_ccxt_places_lists_edits_and_cancels_a_pi_xbtusd_order_through_guardian(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
    order = await ex.create_order(INVERSE, "limit", "buy", 100, 59000, {"clientOrderId": "ccxt-pi-1"})
    assert (order["symbol"], order["status"]) == (INVERSE, "open")
    listed = await ex.fetch_open_orders(INVERSE)
    # ccxt leaves `price` None on purpose (krakenfutures.py parse_order: "limitPrice is returning
    # inaccurate values"); the price is in the order's `info`.
    assert [(o["id"], o["symbol"], o["side"], o["amount"], o["info"]["limitPrice"]) for o in listed] == [
        (order["id"], INVERSE, "buy", 100, 59000)
    ]
    edited = await ex.edit_order(order["id"], INVERSE, "limit", "buy", 250, 58500)
    assert edited["id"] == order["id"]
    held = exchange.exchange.accounts["main"].orders[order["id"]]
    assert (held.symbol, held.size, held.limit_price) == ("PI_XBTUSD", Decimal(250), Decimal(58500))
    listed = await ex.fetch_open_orders(INVERSE)
    assert [(o["id"], o["amount"], o["info"]["limitPrice"]) for o in listed] == [(order["id"], 250, 58500)]
    cancelled = await ex.cancel_order(order["id"], INVERSE)
    assert (cancelled["id"], cancelled["status"]) == (order["id"], "canceled")
    assert held.state == "cancelled"
    assert await ex.fetch_open_orders(INVERSE) == []
    assert_only_the_account_key(exchange)


async def test_ccxt_fills_pi_xbtusd_and_reads_the_position_and_the_fill_through_guardian(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
    taken = await ex.create_order(INVERSE, "market", "buy", 300)
    assert held_position(exchange)[0] == 300
    [position] = await ex.fetch_positions([INVERSE])
    assert (position["symbol"], position["side"], position["contracts"]) == (INVERSE, "long", 300)
    assert position["contractSize"] == 1
    assert position["entryPrice"] == float(held_position(exchange)[1])
    [trade] = await ex.fetch_my_trades(INVERSE)
    assert fill_row(trade) == (taken["id"], INVERSE, "buy", 300)
    assert trade["cost"] == pytest.approx(300 / trade["price"])  # ccxt's cost of an inverse fill: BTC
    flipped = await ex.create_order(INVERSE, "market", "sell", 500)
    assert held_position(exchange)[0] == -200
    [position] = await ex.fetch_positions([INVERSE])
    assert (position["symbol"], position["side"], position["contracts"]) == (INVERSE, "short", 200)
    trades = await ex.fetch_my_trades(INVERSE)
    assert sorted(fill_row(t) for t in trades) == sorted(
        [(taken["id"], INVERSE, "buy", 300), (flipped["id"], INVERSE, "sell", 500)]
    )
    assert_only_the_account_key(exchange)


async def test_max_notional_judges_pi_xbtusd_by_face_value_whatever_the_price_in_ccxt(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
    # By size x price, 10,001 contracts at 0.5 would be 5,000.5 USD; by face value they are 10,001.
    for side, price in (("buy", 0.5), ("buy", 30000), ("sell", 60000), ("sell", 120000)):
        with pytest.raises(ccxt.BaseError) as caught:
            await ex.create_order(INVERSE, "limit", side, MAX_NOTIONAL + 1, price)
        assert "notionalTooLarge" in str(caught.value), (side, price)
    assert exchange.requests_for("sendorder") == []
    # By size x price, 10,000 contracts at 30,000 would be 300 million USD; by face value they are 10,000.
    # Both rest, far from the mark of 60,000.
    bid = await ex.create_order(INVERSE, "limit", "buy", MAX_NOTIONAL, 30000)
    ask = await ex.create_order(INVERSE, "limit", "sell", MAX_NOTIONAL, 120000)
    assert [bid["status"], ask["status"]] == ["open", "open"]
    account = exchange.exchange.accounts["main"]
    assert [(o.order_id, o.symbol, o.side, o.size, o.limit_price) for o in account.open_orders()] == [
        (bid["id"], "PI_XBTUSD", "buy", MAX_NOTIONAL, 30000),
        (ask["id"], "PI_XBTUSD", "sell", MAX_NOTIONAL, 120000),
    ]
    assert "PI_XBTUSD" not in account.positions
    assert len(exchange.requests_for("sendorder")) == 2


# ---- python-kraken-sdk ------------------------------------------------------------------------------


async def test_sdk_places_edits_cancels_and_fills_pi_xbtusd_through_guardian(
    guardian: Service, exchange: Simulator
) -> None:
    account = exchange.exchange.accounts["main"]
    with sdk(guardian) as (trade, user):
        sent = await in_thread(
            trade.create_order,
            orderType="lmt",
            size=100,
            symbol="PI_XBTUSD",
            side="buy",
            limitPrice=59000,
            cliOrdId="sdk-pi-1",
        )
        assert sent["sendStatus"]["status"] == "placed"
        order_id = sent["sendStatus"]["order_id"]
        listed = await in_thread(user.get_open_orders)
        assert [
            (o["order_id"], o["symbol"], o["side"], o["orderType"], o["unfilledSize"], o["limitPrice"])
            for o in listed["openOrders"]
        ] == [(order_id, "PI_XBTUSD", "buy", "lmt", 100, 59000)]
        edited = await in_thread(trade.edit_order, orderId=order_id, size=250, limitPrice=58500)
        assert edited["editStatus"]["status"] == "edited"
        held = account.orders[order_id]
        assert (held.symbol, held.size, held.limit_price) == ("PI_XBTUSD", Decimal(250), Decimal(58500))
        cancelled = await in_thread(trade.cancel_order, order_id=order_id)
        assert cancelled["cancelStatus"]["status"] == "cancelled"
        assert held.state == "cancelled"
        assert (await in_thread(user.get_open_orders))["openOrders"] == []

        taken = await in_thread(
            trade.create_order, orderType="mkt", size=700, symbol="PI_XBTUSD", side="sell"
        )
        assert taken["sendStatus"]["status"] == "placed"
        taken_id = taken["sendStatus"]["order_id"]
        assert held_position(exchange)[0] == -700
        positions = await in_thread(user.get_open_positions)
        assert [(p["symbol"], p["side"], p["size"]) for p in positions["openPositions"]] == [
            ("PI_XBTUSD", "short", 700)
        ]
        assert positions["openPositions"][0]["price"] == float(held_position(exchange)[1])
        fills = await in_thread(trade.get_fills)  # Trade.get_fills in the SDK (trade.py), not User
        assert [(f["order_id"], f["symbol"], f["side"], f["size"]) for f in fills["fills"]] == [
            (taken_id, "PI_XBTUSD", "sell", 700)
        ]
    assert account.open_orders() == []
    assert_only_the_account_key(exchange)


# ---- ccxt.pro on guardian's relay ---------------------------------------------------------------------


async def test_ccxt_pro_follows_a_pi_xbtusd_order_its_cancel_a_fill_and_the_position_through_the_relay(
    pair: tuple[Simulator, Service],
) -> None:
    exchange, service = pair
    ex = ccxtpro.krakenfutures(
        {"apiKey": READER_KEY, "secret": READER_SECRET, "enableRateLimit": False, "timeout_on_exit": 0}
    )
    ex.urls["api"] = {
        **ex.urls["api"],
        "public": service.url + "/derivatives/api/",
        "private": service.url + "/derivatives/api/",
        "history": service.url + "/api/history/",
        "ws": ws_url(service),
    }
    orders: list[Any] = []
    trades: list[Any] = []
    positions: list[Any] = []

    def seen(order_id: str, status: str | None) -> bool:
        return any(o["id"] == order_id and o["status"] == status for o in orders)

    try:
        await ex.load_markets()
        async with asyncio.TaskGroup() as group:
            watchers = [
                group.create_task(_collect(lambda: ex.watch_orders(INVERSE), orders)),
                group.create_task(_collect(lambda: ex.watch_my_trades(INVERSE), trades)),
                group.create_task(_collect(lambda: ex.watch_positions([INVERSE]), positions)),
            ]
            await wait_for(
                lambda: [c.private for c in service.relay.connections] == [FEEDS], 5.0, "ccxt subscribed"
            )
            resting = await ex.create_order(INVERSE, "limit", "buy", 100, 59000)
            await wait_for(lambda: seen(resting["id"], None), 5.0, "the order on watch_orders")
            await ex.cancel_order(resting["id"], INVERSE)
            await wait_for(lambda: seen(resting["id"], "canceled"), 5.0, "its cancel on watch_orders")
            taken = await ex.create_order(INVERSE, "market", "sell", 400)
            await wait_for(
                lambda: any(t["order"] == taken["id"] for t in trades), 5.0, "the fill on watch_my_trades"
            )
            await wait_for(
                lambda: any(p["symbol"] == INVERSE and p["contracts"] == 400 for p in positions),
                5.0,
                "the position on watch_positions",
            )
            for task in watchers:
                task.cancel()
    finally:
        await ex.close()
    order = next(o for o in orders if o["id"] == resting["id"])
    assert (order["symbol"], order["side"]) == (INVERSE, "buy")
    assert (order["price"], order["remaining"]) == (59000, 100)  # ccxt.pro puts the open size in remaining
    fill = next(t for t in trades if t["order"] == taken["id"])
    assert (fill["symbol"], fill["side"], fill["amount"]) == (INVERSE, "sell", 400)
    assert fill["fee"]["currency"] == "BTC"  # an inverse contract's fee is in its base currency
    position = next(p for p in positions if p["symbol"] == INVERSE and p["contracts"] == 400)
    assert position["side"] == "short"
    assert held_position(exchange)[0] == -400
    only_the_account_key_reached_the_exchange(exchange)
