"""ccxt's krakenfutures and python-kraken-sdk pointed at guardian (on the simulator) with a local key,
by base URL alone: they place, list, edit, cancel and batch orders, guardian's refusals surface in
them, and the simulator sees every request signed with the account's key only."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import ccxt.async_support as ccxt
import pytest
from kraken.futures import Trade, User

from guardian.config import ClientConfig, GuardConfig, SwitchConfig
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY
from tests.daemon import account_config, serving, wait_for

pytestmark = pytest.mark.compat

BOT_KEY = "ccxt-and-sdk-bot-key-1"
BOT_SECRET = base64.b64encode(b"a bot secret that only guardian knows").decode()
BTC = "BTC/USD:USD"
AWKWARD_CLIENT_ID = "a&b%41+c d"
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
# Generous limits, so that only the refusal tests meet them.
GUARD = GuardConfig(max_order_size=1, price_band_pct=10, mark_poll_s=0.1)
T = TypeVar("T")


@pytest.fixture
def exchange(sim: Simulator) -> Simulator:
    """The simulator guardian stands in front of (tests/conftest.py's)."""
    return sim


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    bot = ClientConfig("bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE}))
    account = account_config(exchange.url, switch=SWITCH, guard=GUARD, clients=(bot,))
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(
            lambda: main.switch.state is SwitchState.ARMED and main.marks.mark("PF_XBTUSD") is not None,
            what="ready",
        )
        yield service


@pytest.fixture
async def ex(guardian: Service) -> AsyncIterator[ccxt.krakenfutures]:
    exchange = ccxt.krakenfutures(
        {"apiKey": BOT_KEY, "secret": BOT_SECRET, "enableRateLimit": False, "timeout_on_exit": 0}
    )
    exchange.urls["api"] = {
        "public": guardian.url + "/derivatives/api/",
        "private": guardian.url + "/derivatives/api/",
        "history": guardian.url + "/api/history/",
        "charts": guardian.url + "/api/charts/",
        "feeschedules": guardian.url + "/api/feeschedules/",
    }
    try:
        yield exchange
    finally:
        await exchange.close()


@contextmanager
def sdk(guardian: Service) -> Iterator[tuple[Trade, User]]:
    trade = Trade(key=BOT_KEY, secret=BOT_SECRET, url=guardian.url)
    user = User(key=BOT_KEY, secret=BOT_SECRET, url=guardian.url)
    try:
        yield trade, user
    finally:
        for client in (trade, user):
            client._FuturesClient__session.close()


async def in_thread(call: Callable[..., T], /, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, **kwargs)


def signed_requests(exchange: Simulator) -> list[dict[str, Any]]:
    return [r for r in exchange.requests if r["api_key"] is not None]


def assert_only_the_account_key(exchange: Simulator) -> None:
    keys = {r["api_key"] for r in signed_requests(exchange)}
    assert keys == {TRADE_KEY}, keys


# ---- ccxt ---------------------------------------------------------------------------------------------


async def test_ccxt_places_lists_edits_cancels_through_guardian(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
    ticker = await ex.fetch_ticker(BTC)
    assert ticker["symbol"] == BTC
    order = await ex.create_order(BTC, "limit", "buy", 0.01, 59000, {"clientOrderId": "ccxt-1"})
    assert order["status"] == "open"
    listed = await ex.fetch_open_orders(BTC)
    assert [o["id"] for o in listed] == [order["id"]]
    edited = await ex.edit_order(order["id"], BTC, "limit", "buy", 0.02, 58500)
    assert edited["id"] == order["id"]
    held = exchange.exchange.accounts["main"].orders[order["id"]]
    assert (held.size, held.limit_price) == (Decimal("0.02"), Decimal(58500))
    await ex.cancel_order(order["id"], BTC)
    assert held.state == "cancelled"
    await ex.create_order(BTC, "limit", "sell", 0.01, 61000)
    await ex.cancel_all_orders(BTC)
    assert exchange.exchange.accounts["main"].open_orders() == []
    balance = await ex.fetch_balance()
    assert balance is not None
    assert_only_the_account_key(exchange)


async def test_ccxt_batches_with_raw_json_through_guardian(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
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
    assert exchange.exchange.accounts["main"].find(None, AWKWARD_CLIENT_ID) is not None
    cancelled = await ex.cancel_orders([placed[0]["id"], placed[1]["id"]])
    assert [o["status"] for o in cancelled] == ["canceled", "canceled"]
    assert_only_the_account_key(exchange)


async def test_a_refusal_surfaces_in_ccxt_with_guardians_code(
    ex: ccxt.krakenfutures, exchange: Simulator
) -> None:
    await ex.load_markets()
    with pytest.raises(ccxt.BaseError) as caught:
        await ex.create_order(BTC, "limit", "buy", 2, 59000)  # max_order_size 1
    assert "orderSizeTooLarge" in str(caught.value)
    assert exchange.requests_for("sendorder") == []


# ---- python-kraken-sdk ------------------------------------------------------------------------------


async def test_sdk_places_edits_queries_batches_and_cancels_through_guardian(
    guardian: Service, exchange: Simulator
) -> None:
    with sdk(guardian) as (trade, user):
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
        first = sent["sendStatus"]["order_id"]
        edited = await in_thread(trade.edit_order, orderId=first, size=0.02, limitPrice=58500)
        assert edited["editStatus"]["status"] == "edited"
        status = await in_thread(trade.get_orders_status, orderIds=[first])
        assert [o["order"]["orderId"] for o in status["orders"]] == [first]
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
                {"order": "edit", "order_id": first, "size": 0.03, "limitPrice": 58800},
            ],
        )
        assert [s["status"] for s in batch["batchStatus"]] == ["placed", "edited"]
        listed = await in_thread(user.get_open_orders)
        assert len(listed["openOrders"]) == 2
        cancelled = await in_thread(trade.cancel_order, cliOrdId="sdk-order-1")
        assert cancelled["cancelStatus"]["status"] == "cancelled"
        everything = await in_thread(trade.cancel_all_orders)
        assert everything["cancelStatus"]["status"] == "cancelled"
    assert exchange.exchange.accounts["main"].open_orders() == []
    assert_only_the_account_key(exchange)


async def test_a_refusal_surfaces_in_the_sdk_with_guardians_code(
    guardian: Service, exchange: Simulator
) -> None:
    with sdk(guardian) as (trade, _user), pytest.raises(Exception, match="priceOutsideBand"):
        await in_thread(
            trade.create_order, orderType="lmt", size=0.01, symbol="PF_XBTUSD", side="buy", limitPrice=40000
        )
    assert exchange.requests_for("sendorder") == []
