"""Real third-party Kraken Futures clients against the simulator, pointed at it by base URL alone.

ccxt's async `krakenfutures` and python-kraken-sdk's futures clients are used unmodified: if one of them
cannot do against the simulator what it does against Kraken, the simulator is wrong. Every order action
is checked twice: what the client returns, and what the simulated exchange now holds.

The SDK's clients are synchronous (requests); they run in a worker thread so that the simulator, which
serves on the test's event loop, keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import ccxt.async_support as ccxt
import kraken.exceptions as kraken_errors
import pytest
from kraken.futures import FuturesAsyncClient, Trade, User
from kraken.futures import Market as KrakenMarket

from guardian.kraken.signing import sign
from guardian.sim.app import Simulator
from guardian.sim.exchange import Account, Order
from guardian.sim.faults import Fault
from tests.conftest import READ_KEY, READ_SECRET, TRADE_KEY, TRADE_SECRET

pytestmark = pytest.mark.compat

BTC = "BTC/USD:USD"
ETH = "ETH/USD:USD"
SOL = "SOL/USD:USD"
WRONG_SECRET = base64.b64encode(bytes(range(128, 192))).decode()
# Every character here means something in a URL-encoded form: `&` splits fields, `%` escapes, `+` and
# a space both mean space. ccxt puts batch JSON on the wire raw, so they must all survive verbatim.
AWKWARD_CLIENT_ID = "a&b%41+c d"

T = TypeVar("T")


# ---- helpers ----------------------------------------------------------------------------------------
def main_account(sim: Simulator) -> Account:
    return sim.exchange.accounts["main"]


def open_orders(sim: Simulator) -> list[Order]:
    return main_account(sim).open_orders()


def order_by_client_id(sim: Simulator, cli_ord_id: str) -> Order:
    found = main_account(sim).find(None, cli_ord_id)
    assert found is not None, f"the simulator has no order with cliOrdId {cli_ord_id!r}"
    return found


def last_request(sim: Simulator, endpoint: str) -> dict[str, Any]:
    seen = sim.requests_for(endpoint)
    assert seen, f"the simulator saw no {endpoint} request"
    return seen[-1]


def new_ccxt(sim: Simulator, key: str = TRADE_KEY, secret: str = TRADE_SECRET) -> ccxt.krakenfutures:
    """ccxt's krakenfutures aimed at the simulator: only the base URLs change."""
    # No client-side throttle (the simulator's budget is under test), and no grace period on close: that
    # wait is for TLS shutdown, and the simulator speaks plain HTTP on loopback.
    exchange = ccxt.krakenfutures(
        {"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout_on_exit": 0}
    )
    exchange.urls["api"] = {
        "public": sim.url + "/derivatives/api/",
        "private": sim.url + "/derivatives/api/",
        "history": sim.url + "/api/history/",
        "charts": sim.url + "/api/charts/",
        "feeschedules": sim.url + "/api/feeschedules/",
    }
    return exchange


@pytest.fixture
async def ex(sim: Simulator) -> AsyncIterator[ccxt.krakenfutures]:
    exchange = new_ccxt(sim)
    try:
        yield exchange
    finally:
        await exchange.close()


@contextmanager
def sdk_clients(
    sim: Simulator, key: str = TRADE_KEY, secret: str = TRADE_SECRET
) -> Iterator[tuple[Trade, User]]:
    """python-kraken-sdk's Trade and User aimed at the simulator (host root, as the SDK requires).

    The sync clients have no close(); their requests sessions are closed here rather than left to the
    garbage collector.
    """
    trade = Trade(key=key, secret=secret, url=sim.url)
    user = User(key=key, secret=secret, url=sim.url)
    try:
        yield trade, user
    finally:
        for client in (trade, user):
            client._FuturesClient__session.close()


async def in_thread(call: Callable[..., T], /, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, **kwargs)


# ---- ccxt: markets and order lifecycle --------------------------------------------------------------
async def test_ccxt_loads_the_three_perpetuals_with_instrument_precisions(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    markets = await ex.load_markets()

    expected = {
        BTC: ("PF_XBTUSD", 0.0001, 0.5),
        ETH: ("PF_ETHUSD", 0.001, 0.1),
        SOL: ("PF_SOLUSD", 0.01, 0.01),
    }
    for symbol, (market_id, amount_step, tick) in expected.items():
        market = markets[symbol]
        assert market["id"] == market_id
        assert market["swap"] and market["linear"] and market["settle"] == "USD"
        assert market["active"] is True
        assert market["precision"]["amount"] == pytest.approx(amount_step)
        assert market["precision"]["price"] == pytest.approx(tick)
    assert [r["method"] for r in sim.requests] == ["GET"]  # markets come from `instruments` alone
    assert sim.requests_for("instruments")


async def test_ccxt_reads_public_ticker_and_order_book(sim: Simulator, ex: ccxt.krakenfutures) -> None:
    ticker = await ex.fetch_ticker(BTC)
    book = await ex.fetch_order_book(BTC)

    quote = sim.exchange.market.quotes["PF_XBTUSD"]
    assert ticker["last"] == float(quote.last)
    assert ticker["bid"] == float(quote.bid) and ticker["ask"] == float(quote.ask)
    assert ticker["markPrice"] == float(quote.mark)
    assert book["bids"][0][0] == float(quote.bid) and book["asks"][0][0] == float(quote.ask)
    assert sim.requests_for("tickers/{symbol}") and sim.requests_for("orderbook")


async def test_ccxt_limit_order_rests_is_listed_edited_fetched_and_cancelled(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    placed = await ex.create_order(BTC, "limit", "buy", 0.01, 59000)

    assert placed["status"] == "open" and placed["id"]
    assert last_request(sim, "sendorder")["api_key"] == TRADE_KEY
    assert list(main_account(sim).open_ids) == [placed["id"]]
    resting = main_account(sim).orders[placed["id"]]
    assert (resting.order_type, resting.side, resting.size, resting.limit_price) == (
        "lmt",
        "buy",
        Decimal("0.01"),
        Decimal(59000),
    )

    listed = await ex.fetch_open_orders()
    # ccxt never reports `price` from limitPrice (ccxt issue 27996), so the limit is read from `info`.
    assert [(o["id"], o["symbol"], o["status"], o["amount"], o["info"]["limitPrice"]) for o in listed] == [
        (placed["id"], BTC, "open", 0.01, 59000)
    ]

    edited = await ex.edit_order(placed["id"], BTC, "limit", "buy", 0.02, 58000)
    assert edited["status"] == "open" and edited["amount"] == 0.02
    assert (resting.size, resting.limit_price) == (Decimal("0.02"), Decimal(58000))
    assert last_request(sim, "editorder")["api_key"] == TRADE_KEY

    fetched = await ex.fetch_order(placed["id"])
    assert (fetched["id"], fetched["status"], fetched["amount"]) == (placed["id"], "open", 0.02)
    assert last_request(sim, "orders/status")["method"] == "GET"  # ccxt reads orders/status by GET

    cancelled = await ex.cancel_order(placed["id"])
    assert cancelled["status"] == "canceled"
    assert resting.state == "cancelled" and not main_account(sim).open_ids


async def test_ccxt_post_only_order_rests_as_a_post_order(sim: Simulator, ex: ccxt.krakenfutures) -> None:
    placed = await ex.create_order(ETH, "limit", "sell", 0.5, 3100, {"postOnly": True})

    assert placed["status"] == "open"
    order = main_account(sim).orders[placed["id"]]
    assert (order.order_type, order.state, order.symbol) == ("post", "open", "PF_ETHUSD")


async def test_ccxt_ioc_order_that_crosses_fills_at_the_touch(sim: Simulator, ex: ccxt.krakenfutures) -> None:
    ask = sim.exchange.market.quotes["PF_XBTUSD"].ask

    filled = await ex.create_order(BTC, "limit", "buy", 0.01, 60100, {"timeInForce": "ioc"})

    assert filled["status"] == "closed" and filled["filled"] == 0.01 and filled["average"] == float(ask)
    order = main_account(sim).orders[filled["id"]]
    assert (order.order_type, order.state) == ("ioc", "filled")
    assert main_account(sim).positions["PF_XBTUSD"].size == Decimal("0.01")
    assert not main_account(sim).open_ids


async def test_ccxt_market_fill_shows_in_positions_balance_and_trades(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    bought = await ex.create_order(BTC, "market", "buy", 0.01)

    assert bought["status"] == "closed" and bought["filled"] == 0.01 and bought["average"] == 60000
    order = main_account(sim).orders[bought["id"]]
    assert (order.order_type, order.state) == ("mkt", "filled")
    position = main_account(sim).positions["PF_XBTUSD"]
    assert (position.size, position.price) == (Decimal("0.01"), Decimal(60000))

    positions = await ex.fetch_positions()
    assert [(p["symbol"], p["side"], p["contracts"], p["entryPrice"]) for p in positions] == [
        (BTC, "long", 0.01, 60000)
    ]

    balance = await ex.fetch_balance()
    assert balance["USD"]["total"] == 100_000
    assert balance["USD"]["free"] == float(sim.exchange.available_margin(main_account(sim)))
    assert balance["USD"]["free"] == 100_000 - 0.01 * 60000 / 50

    fetched = await ex.fetch_order(bought["id"])  # orders/status still reports it: it closed just now
    assert (fetched["status"], fetched["filled"]) == ("closed", 0.01)

    trades = await ex.fetch_my_trades()
    assert [(t["order"], t["symbol"], t["side"], t["amount"], t["price"]) for t in trades] == [
        (bought["id"], BTC, "buy", 0.01, 60000)
    ]
    assert trades[0]["id"] == main_account(sim).fills[-1]["fill_id"]
    assert trades[0]["takerOrMaker"] == "taker"


async def test_ccxt_stop_and_take_profit_orders_rest_as_trigger_orders(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    await ex.create_order(BTC, "market", "buy", 0.02)  # a position for the reduce-only exits to close

    stop_market = await ex.create_order(BTC, "market", "sell", 0.01, None, {"triggerPrice": 50000})
    stop_limit = await ex.create_order(
        BTC, "limit", "sell", 0.01, 49900, {"triggerPrice": 50000, "triggerSignal": "mark"}
    )
    stop_loss = await ex.create_order(BTC, "market", "sell", 0.02, None, {"stopLossPrice": 55000})
    take_profit = await ex.create_order(BTC, "market", "sell", 0.02, None, {"takeProfitPrice": 65000})

    for placed, trigger in (
        (stop_market, 50000),
        (stop_limit, 50000),
        (stop_loss, 55000),
        (take_profit, 65000),
    ):
        assert placed["status"] == "open" and placed["triggerPrice"] == trigger
    held = main_account(sim).orders
    assert list(main_account(sim).open_ids) == [
        stop_market["id"],
        stop_limit["id"],
        stop_loss["id"],
        take_profit["id"],
    ]
    shapes = [
        (o.order_type, o.stop_price, o.limit_price, o.trigger_signal, o.reduce_only, o.is_trigger)
        for o in (held[x["id"]] for x in (stop_market, stop_limit, stop_loss, take_profit))
    ]
    assert shapes == [
        ("stp", Decimal(50000), None, "last", False, True),
        ("stp", Decimal(50000), Decimal(49900), "mark", False, True),
        ("stp", Decimal(55000), None, "last", True, True),
        ("take_profit", Decimal(65000), None, "last", True, True),
    ]

    listed = {o["id"]: o for o in await ex.fetch_open_orders()}
    assert {i: o["triggerPrice"] for i, o in listed.items()} == {
        stop_market["id"]: 50000,
        stop_limit["id"]: 50000,
        stop_loss["id"]: 55000,
        take_profit["id"]: 65000,
    }

    moved = await ex.edit_order(stop_limit["id"], BTC, "limit", "sell", None, None, {"stopPrice": 51000})
    assert moved["status"] == "open"
    assert last_request(sim, "editorder")["fields"] == {"orderId": stop_limit["id"], "stopPrice": "51000"}
    assert (held[stop_limit["id"]].stop_price, held[stop_limit["id"]].limit_price) == (
        Decimal(51000),
        Decimal(49900),
    )


async def test_ccxt_cancelling_a_stop_reports_it_as_the_trigger_order_it_was(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    stop = await ex.create_order(
        BTC, "limit", "sell", 0.01, 49900, {"triggerPrice": 50000, "clientOrderId": "stop-1"}
    )

    cancelled = await ex.cancel_order(stop["id"])

    # Kraken shows a trigger order's CANCEL event as `orderTrigger`, so ccxt can report what was cancelled.
    assert (cancelled["id"], cancelled["status"], cancelled["triggerPrice"], cancelled["clientOrderId"]) == (
        stop["id"],
        "canceled",
        50000,
        "stop-1",
    )
    assert main_account(sim).orders[stop["id"]].state == "cancelled" and not main_account(sim).open_ids


async def test_ccxt_cancel_all_orders_for_one_symbol_leaves_the_others(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    btc = await ex.create_order(BTC, "limit", "buy", 0.01, 59000)
    eth_a = await ex.create_order(ETH, "limit", "buy", 0.1, 2900)
    eth_b = await ex.create_order(ETH, "limit", "sell", 0.1, 3100)

    cancelled = await ex.cancel_all_orders(ETH)

    assert len(cancelled) == 2  # (ccxt parses the first event for each entry: only the count is telling)
    assert last_request(sim, "cancelallorders")["fields"] == {"symbol": "PF_ETHUSD"}
    assert list(main_account(sim).open_ids) == [btc["id"]]
    assert {main_account(sim).orders[i].state for i in (eth_a["id"], eth_b["id"])} == {"cancelled"}

    everything = await ex.cancel_all_orders()
    assert len(everything) == 1 and not main_account(sim).open_ids


async def test_ccxt_create_orders_batch_keeps_an_awkward_client_order_id_verbatim(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    placed = await ex.create_orders(
        [
            {"symbol": BTC, "type": "limit", "side": "buy", "amount": 0.01, "price": 57000},
            {
                "symbol": BTC,
                "type": "limit",
                "side": "sell",
                "amount": 0.01,
                "price": 61000,
                "params": {"clientOrderId": AWKWARD_CLIENT_ID},
            },
        ]
    )

    assert [o["status"] for o in placed] == ["open", "open"]
    assert all(o["id"] for o in placed)
    assert placed[1]["clientOrderId"] == AWKWARD_CLIENT_ID
    request = last_request(sim, "batchorder")
    assert request["api_key"] == TRADE_KEY
    assert f'"cliOrdId":"{AWKWARD_CLIENT_ID}"' in request["fields"]["json"]  # arrived raw, not URL-encoded
    order = order_by_client_id(sim, AWKWARD_CLIENT_ID)
    assert (order.order_id, order.side, order.limit_price, order.state) == (
        placed[1]["id"],
        "sell",
        Decimal(61000),
        "open",
    )
    assert list(main_account(sim).open_ids) == [placed[0]["id"], placed[1]["id"]]


async def test_ccxt_cancel_orders_cancels_each_id_through_the_batch_endpoint(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    keep = await ex.create_order(SOL, "limit", "buy", 1, 140)
    first = await ex.create_order(SOL, "limit", "buy", 1, 141)
    second = await ex.create_order(SOL, "limit", "sell", 1, 160, {"clientOrderId": AWKWARD_CLIENT_ID})

    cancelled = await ex.cancel_orders([first["id"], second["id"]])

    assert [(o["id"], o["status"]) for o in cancelled] == [
        (first["id"], "canceled"),
        (second["id"], "canceled"),
    ]
    assert last_request(sim, "batchorder")["api_key"] == TRADE_KEY
    assert list(main_account(sim).open_ids) == [keep["id"]]
    assert order_by_client_id(sim, AWKWARD_CLIENT_ID).state == "cancelled"


async def test_ccxt_cancel_all_orders_after_arms_then_disarms_the_switch(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    armed = await ex.cancel_all_orders_after(60_000)

    remaining = sim.switch_remaining("main")
    assert remaining is not None and 55 <= remaining <= 60
    assert last_request(sim, "cancelallordersafter")["fields"] == {"timeout": "60"}
    assert armed["status"]["triggerTime"] != "0"
    assert main_account(sim).switch_trigger_at is not None

    disarmed = await ex.cancel_all_orders_after(0)

    assert sim.switch_remaining("main") is None
    assert disarmed["status"]["triggerTime"] == "0"
    assert main_account(sim).switch_trigger_at is None


# ---- ccxt: error mapping ----------------------------------------------------------------------------
async def test_ccxt_wrong_secret_raises_authentication_error(sim: Simulator) -> None:
    exchange = new_ccxt(sim, secret=WRONG_SECRET)
    try:
        with pytest.raises(ccxt.AuthenticationError):
            await exchange.fetch_balance()
        with pytest.raises(ccxt.AuthenticationError):
            await exchange.create_order(BTC, "limit", "buy", 0.01, 59000)
    finally:
        await exchange.close()
    assert [r["outcome"] for r in sim.requests_for("accounts") + sim.requests_for("sendorder")] == [
        "error",
        "error",
    ]
    assert not main_account(sim).orders


async def test_ccxt_read_only_key_cannot_place_orders(sim: Simulator) -> None:
    exchange = new_ccxt(sim, key=READ_KEY, secret=READ_SECRET)
    try:
        assert (await exchange.fetch_balance())["USD"]["total"] == 100_000
        with pytest.raises(ccxt.AuthenticationError):
            await exchange.create_order(BTC, "limit", "buy", 0.01, 59000)
    finally:
        await exchange.close()
    assert last_request(sim, "sendorder")["api_key"] == READ_KEY
    assert not main_account(sim).orders


async def test_ccxt_post_only_that_would_cross_raises_order_immediately_fillable(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        await ex.create_order(BTC, "limit", "buy", 0.01, 60100, {"postOnly": True})
    assert last_request(sim, "sendorder")["outcome"] == "success"  # a sendStatus, not an envelope error
    assert not main_account(sim).orders and not main_account(sim).positions


async def test_ccxt_ioc_that_cannot_fill_raises_order_not_fillable(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    with pytest.raises(ccxt.OrderNotFillable):
        await ex.create_order(BTC, "limit", "buy", 0.01, 59000, {"timeInForce": "ioc"})
    assert not main_account(sim).open_ids and not main_account(sim).positions


async def test_ccxt_cancel_of_an_unknown_id_raises_order_not_found(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(ccxt.OrderNotFound):
        await ex.cancel_order(unknown)
    assert last_request(sim, "cancelorder")["fields"] == {"order_id": unknown}


async def test_ccxt_exhausted_budget_raises_rate_limit_exceeded(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    sim.budget_capacity = 15  # before the first private request: one sendorder (10) fits, two do not

    placed = await ex.create_order(BTC, "limit", "buy", 0.01, 59000)
    with pytest.raises(ccxt.RateLimitExceeded):
        await ex.create_order(BTC, "limit", "buy", 0.01, 58000)

    assert [r["outcome"] for r in sim.requests_for("sendorder")] == ["success", "error"]
    assert list(main_account(sim).open_ids) == [placed["id"]]


async def test_ccxt_injected_api_limit_fault_raises_rate_limit_exceeded(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    sim.faults.add(Fault(endpoint="sendorder", kind="error", code="apiLimitExceeded", times=1))

    with pytest.raises(ccxt.RateLimitExceeded):
        await ex.create_order(BTC, "limit", "buy", 0.01, 59000)
    assert not main_account(sim).orders
    retried = await ex.create_order(BTC, "limit", "buy", 0.01, 59000)
    assert list(main_account(sim).open_ids) == [retried["id"]]


async def test_ccxt_client_order_id_in_use_raises_duplicate_order_id(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    first = await ex.create_order(BTC, "limit", "buy", 0.01, 59000, {"clientOrderId": "only-once"})
    with pytest.raises(ccxt.DuplicateOrderId):
        await ex.create_order(BTC, "limit", "buy", 0.01, 58000, {"clientOrderId": "only-once"})
    assert list(main_account(sim).open_ids) == [first["id"]]


async def test_ccxt_order_beyond_available_margin_raises_insufficient_funds(
    sim: Simulator, ex: ccxt.krakenfutures
) -> None:
    # 100 BTC at 59000 needs 118000 USD of margin at 50x; the account holds 100000.
    with pytest.raises(ccxt.InsufficientFunds):
        await ex.create_order(BTC, "limit", "buy", 100, 59000)
    assert not main_account(sim).orders


# ---- python-kraken-sdk ------------------------------------------------------------------------------
async def test_sdk_reads_public_market_data(sim: Simulator) -> None:
    market = KrakenMarket(url=sim.url)
    try:
        instruments = await in_thread(market.get_instruments)
        tickers = await in_thread(market.get_tickers)
        book = await in_thread(market.get_orderbook, symbol="PF_SOLUSD")
    finally:
        market._FuturesClient__session.close()

    listed = {i.symbol for i in sim.exchange.market.instruments}
    assert {i["symbol"] for i in instruments["instruments"]} == listed
    assert {t["symbol"] for t in tickers["tickers"]} == listed
    assert book["orderBook"]["bids"][0][0] == float(sim.exchange.market.quotes["PF_SOLUSD"].bid)


async def test_sdk_limit_order_is_placed_with_its_18_digit_nonce_edited_queried_and_cancelled(
    sim: Simulator,
) -> None:
    with sdk_clients(sim) as (trade, user):
        sent = await in_thread(
            trade.create_order,
            orderType="lmt",
            size=0.01,
            symbol="PF_XBTUSD",
            side="buy",
            limitPrice=59000,
            cliOrdId="sdk-order-1",
            reduceOnly=False,
        )
        assert sent["sendStatus"]["status"] == "placed"
        first_id = sent["sendStatus"]["order_id"]
        request = last_request(sim, "sendorder")
        assert (request["api_key"], request["outcome"]) == (TRADE_KEY, "success")
        assert request["fields"]["reduceOnly"] == "False"  # the SDK capitalises booleans
        # The SDK always signs an 18-digit nonce (1e-8 s units); the simulator accepted and recorded it.
        assert len(str(sim._nonces[TRADE_KEY].highest)) == 18
        order = main_account(sim).orders[first_id]
        assert (order.cli_ord_id, order.reduce_only, order.limit_price, order.state) == (
            "sdk-order-1",
            False,
            Decimal(59000),
            "open",
        )

        edited = await in_thread(trade.edit_order, orderId=first_id, size=0.02, limitPrice=58500)
        assert edited["editStatus"]["status"] == "edited"
        assert (order.size, order.limit_price) == (Decimal("0.02"), Decimal(58500))

        second = await in_thread(
            trade.create_order, orderType="lmt", size=0.01, symbol="PF_XBTUSD", side="sell", limitPrice=61000
        )
        second_id = second["sendStatus"]["order_id"]
        status = await in_thread(trade.get_orders_status, orderIds=[first_id, second_id])
        assert [(o["order"]["orderId"], o["status"]) for o in status["orders"]] == [
            (first_id, "ENTERED_BOOK"),
            (second_id, "ENTERED_BOOK"),
        ]
        request = last_request(sim, "orders/status")
        assert (request["method"], request["fields"]) == ("POST", {"orderIds": f"{first_id},{second_id}"})
        by_client_id = await in_thread(trade.get_orders_status, cliOrdIds=["sdk-order-1"])
        assert [o["order"]["orderId"] for o in by_client_id["orders"]] == [first_id]

        cancelled = await in_thread(trade.cancel_order, cliOrdId="sdk-order-1")
        assert cancelled["cancelStatus"]["status"] == "cancelled"
        assert order.state == "cancelled"

        listed = await in_thread(user.get_open_orders)
        assert [o["order_id"] for o in listed["openOrders"]] == [second_id]
        assert list(main_account(sim).open_ids) == [second_id]

        cancel_all = await in_thread(trade.cancel_all_orders)
        assert cancel_all["cancelStatus"]["status"] == "cancelled"
        assert cancel_all["cancelStatus"]["cancelledOrders"] == [{"order_id": second_id}]
        assert not main_account(sim).open_ids
    assert {r["outcome"] for r in sim.requests} == {"success"}


async def test_sdk_stop_on_mark_and_percent_trailing_stop_rest_as_trigger_orders(sim: Simulator) -> None:
    with sdk_clients(sim) as (trade, user):
        stop = await in_thread(
            trade.create_order,
            orderType="stp",
            size=0.01,
            symbol="PF_XBTUSD",
            side="sell",
            stopPrice=55000,
            triggerSignal="mark",
        )
        trailing = await in_thread(
            trade.create_order,
            orderType="trailing_stop",
            size=0.01,
            symbol="PF_XBTUSD",
            side="sell",
            trailingStopMaxDeviation="1",
            trailingStopDeviationUnit="PERCENT",
        )
        listed = await in_thread(user.get_open_orders)

    assert stop["sendStatus"]["status"] == trailing["sendStatus"]["status"] == "placed"
    assert stop["sendStatus"]["orderEvents"][0]["orderTrigger"]["triggerSignal"] == "mark_price"
    held = main_account(sim).orders
    stop_order = held[stop["sendStatus"]["order_id"]]
    trailing_order = held[trailing["sendStatus"]["order_id"]]
    assert (stop_order.order_type, stop_order.stop_price, stop_order.trigger_signal) == (
        "stp",
        Decimal(55000),
        "mark",
    )
    assert (trailing_order.order_type, trailing_order.trailing_unit, trailing_order.trailing_deviation) == (
        "trailing_stop",
        "PERCENT",
        Decimal(1),
    )
    assert trailing_order.stop_price == Decimal(59400)  # 1% below the 60000 mark
    assert {o["orderType"] for o in listed["openOrders"]} == {"stop", "trailing_stop"}


async def test_sdk_batch_places_edits_and_cancels_in_one_request(sim: Simulator) -> None:
    with sdk_clients(sim) as (trade, _user):
        old = await in_thread(
            trade.create_order, orderType="lmt", size=0.01, symbol="PF_XBTUSD", side="buy", limitPrice=59000
        )
        old_id = old["sendStatus"]["order_id"]
        kept = await in_thread(
            trade.create_order, orderType="lmt", size=0.01, symbol="PF_XBTUSD", side="sell", limitPrice=61000
        )
        kept_id = kept["sendStatus"]["order_id"]
        batch = await in_thread(
            trade.create_batch_order,
            batchorder_list=[
                {
                    "order": "send",
                    "order_tag": "1",
                    "orderType": "lmt",
                    "symbol": "PF_XBTUSD",
                    "side": "buy",
                    "size": 0.01,
                    "limitPrice": 58000,
                    "cliOrdId": "sdk batch 1",
                },
                {"order": "edit", "order_id": kept_id, "size": 0.02, "limitPrice": 61500},
                {"order": "cancel", "order_id": old_id},
            ],
        )

    assert [s["status"] for s in batch["batchStatus"]] == ["placed", "edited", "cancelled"]
    new_id = batch["batchStatus"][0]["order_id"]
    assert last_request(sim, "batchorder")["api_key"] == TRADE_KEY
    assert order_by_client_id(sim, "sdk batch 1").order_id == new_id  # `+` in the form body is a space
    assert list(main_account(sim).open_ids) == [kept_id, new_id]
    held = main_account(sim).orders
    assert (held[kept_id].size, held[kept_id].limit_price) == (Decimal("0.02"), Decimal(61500))
    assert held[old_id].state == "cancelled"


async def test_sdk_dead_mans_switch_arms_then_disarms(sim: Simulator) -> None:
    with sdk_clients(sim) as (trade, _user):
        armed = await in_thread(trade.dead_mans_switch, timeout=60)
        remaining = sim.switch_remaining("main")
        disarmed = await in_thread(trade.dead_mans_switch, timeout=0)

    assert remaining is not None and 55 <= remaining <= 60
    assert armed["status"]["triggerTime"] != "0"
    assert disarmed["status"]["triggerTime"] == "0"
    assert sim.switch_remaining("main") is None
    assert [r["fields"] for r in sim.requests_for("cancelallordersafter")] == [
        {"timeout": "60"},
        {"timeout": "0"},
    ]


async def test_sdk_market_fill_shows_in_positions_wallets_and_fills(sim: Simulator) -> None:
    with sdk_clients(sim) as (trade, user):
        sent = await in_thread(trade.create_order, orderType="mkt", size=0.01, symbol="PF_XBTUSD", side="buy")
        positions = await in_thread(user.get_open_positions)
        wallets = await in_thread(user.get_wallets)
        fills = await in_thread(trade.get_fills)
        fill_time = fills["fills"][0]["fillTime"]
        up_to_fill = await in_thread(trade.get_fills, lastFillTime=fill_time)
        before_fill = await in_thread(trade.get_fills, lastFillTime="2020-07-21T12:41:52.790Z")

    order_id = sent["sendStatus"]["order_id"]
    assert [e["type"] for e in sent["sendStatus"]["orderEvents"]] == ["EXECUTION"]
    assert main_account(sim).orders[order_id].state == "filled"
    assert [(p["symbol"], p["side"], p["size"], p["price"]) for p in positions["openPositions"]] == [
        ("PF_XBTUSD", "long", 0.01, 60000)
    ]
    usd = wallets["accounts"]["flex"]["currencies"]["USD"]
    assert usd["quantity"] == 100_000
    assert usd["available"] == float(sim.exchange.available_margin(main_account(sim)))
    assert [(f["order_id"], f["size"], f["price"]) for f in fills["fills"]] == [(order_id, 0.01, 60000)]
    assert up_to_fill["fills"] == fills["fills"] and before_fill["fills"] == []
    assert last_request(sim, "fills")["fields"] == {"lastFillTime": "2020-07-21T12:41:52.790Z"}


async def test_sdk_wrong_secret_raises_kraken_authentication_error(sim: Simulator) -> None:
    with sdk_clients(sim, secret=WRONG_SECRET) as (trade, user):
        with pytest.raises(kraken_errors.KrakenAuthenticationError):
            await in_thread(user.get_wallets)
        with pytest.raises(kraken_errors.KrakenAuthenticationError):
            await in_thread(
                trade.create_order,
                orderType="lmt",
                size=0.01,
                symbol="PF_XBTUSD",
                side="buy",
                limitPrice=59000,
            )
    assert not main_account(sim).orders


async def test_sdk_order_beyond_available_margin_raises_insufficient_funds(sim: Simulator) -> None:
    with (
        sdk_clients(sim) as (trade, _user),
        pytest.raises(kraken_errors.KrakenInsufficientAvailableFundsError),
    ):
        await in_thread(
            trade.create_order, orderType="lmt", size=100, symbol="PF_XBTUSD", side="buy", limitPrice=59000
        )
    assert not main_account(sim).orders


async def test_sdk_exhausted_budget_raises_api_limit_exceeded(sim: Simulator) -> None:
    sim.budget_capacity = 15
    with sdk_clients(sim) as (trade, _user):
        await in_thread(
            trade.create_order, orderType="lmt", size=0.01, symbol="PF_XBTUSD", side="buy", limitPrice=59000
        )
        with pytest.raises(kraken_errors.KrakenApiLimitExceededError):
            await in_thread(
                trade.create_order,
                orderType="lmt",
                size=0.01,
                symbol="PF_XBTUSD",
                side="buy",
                limitPrice=58000,
            )
    assert len(main_account(sim).open_ids) == 1


async def test_replayed_signed_request_is_answered_nonce_duplicate(sim: Simulator) -> None:
    """The exact bytes of a signed sendorder, sent twice: the second is refused and places nothing."""
    path = "/derivatives/api/v3/sendorder"
    body = urlencode(
        {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "0.01", "limitPrice": "59000"}
    )
    nonce = "178000000000000001"  # the SDK's 18-digit scale
    headers = {
        "APIKey": TRADE_KEY,
        "Nonce": nonce,
        "Authent": sign(base64.b64decode(TRADE_SECRET), body, nonce, path),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with aiohttp.ClientSession() as session:
        answers = []
        for _ in range(2):
            async with session.post(sim.url + path, data=body, headers=headers) as response:
                assert response.status == 200
                answers.append(json.loads(await response.text()))

    assert answers[0]["result"] == "success" and answers[0]["sendStatus"]["status"] == "placed"
    assert (answers[1]["result"], answers[1]["error"]) == ("error", "nonceDuplicate")
    assert len(main_account(sim).orders) == 1


async def test_sdk_async_client_generic_request_places_an_order(sim: Simulator) -> None:
    async with FuturesAsyncClient(key=TRADE_KEY, secret=TRADE_SECRET, url=sim.url) as client:
        sent = await client.request(
            "POST",
            "/derivatives/api/v3/sendorder",
            post_params={
                "orderType": "post",
                "symbol": "PF_ETHUSD",
                "side": "buy",
                "size": 0.1,
                "limitPrice": 2900,
                "cliOrdId": "async 1",
            },
        )
        listed = await client.request("GET", "/derivatives/api/v3/openorders")

    assert sent["sendStatus"]["status"] == "placed"
    order = order_by_client_id(sim, "async 1")
    assert (order.order_id, order.order_type, order.state) == (sent["sendStatus"]["order_id"], "post", "open")
    assert [o["order_id"] for o in listed["openOrders"]] == [order.order_id]
    assert last_request(sim, "sendorder")["api_key"] == TRADE_KEY
