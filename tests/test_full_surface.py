"""The whole Kraken Futures REST surface through guardian (issue 16): ccxt's krakenfutures with every API
URL pointed at guardian, and python-kraken-sdk's Futures User, Trade, Market and Funding clients, each
running every method it has against guardian on the simulator with a local key only. Funds are refused
(`endpointNotAllowed`); everything else answers as Kraken would, and the exchange sees only the account's
key."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import ccxt.async_support as ccxt
import pytest
from kraken.futures import Funding, Market, Trade, User

from guardian.config import ClientConfig, GuardConfig, SwitchConfig
from guardian.demo import point_ccxt_at
from guardian.kraken.endpoints import Permission
from guardian.ratelimit import TokenBucket
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.preferences import SUBACCOUNT_UID
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY
from tests.daemon import account_config, serving, wait_for

pytestmark = pytest.mark.compat

BOT_KEY = "full-surface-bot-key-1"
BOT_SECRET = base64.b64encode(b"the full-surface bot secret, 32b").decode()
BTC = "BTC/USD:USD"
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
GUARD = GuardConfig(max_order_size=1, price_band_pct=10, max_leverage=10, mark_poll_s=0.1)
FUNDS = {"transfer", "transfer/subaccount", "withdrawal"}
# `has` entries that say what the exchange is, not a method to call.
NOT_METHODS = {"future", "swap", "publicAPI", "privateAPI", "sandbox"}
T = TypeVar("T")


@pytest.fixture
async def guardian(sim: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    everything = frozenset({Permission.READ, Permission.TRADE, Permission.SETTINGS})
    bot = ClientConfig("bot", BOT_KEY, ApiSecret(BOT_SECRET), everything, public_rate_limit=200)
    account = account_config(sim.url, switch=SWITCH, guard=GUARD, clients=(bot,))
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        # The test is about coverage, not the public budget (tests/test_public.py is).
        public = service.gateway.public
        public.total, public.unlabelled = TokenBucket(200, 200), TokenBucket(200, 200)
        main = service.accounts[0]
        await wait_for(
            lambda: main.switch.state is SwitchState.ARMED and main.marks.mark("PF_XBTUSD") is not None,
            what="ready",
        )
        yield service


def signed_by_others(sim: Simulator) -> set[str]:
    return {r["api_key"] for r in sim.requests if r["api_key"] is not None} - {TRADE_KEY}


async def test_ccxt_runs_every_method_its_has_table_lists_through_guardian(
    guardian: Service, sim: Simulator
) -> None:
    ex = ccxt.krakenfutures(
        {"apiKey": BOT_KEY, "secret": BOT_SECRET, "enableRateLimit": False, "timeout_on_exit": 0}
    )
    point_ccxt_at(ex, guardian.url)
    assert set(ex.urls["api"].values()) <= {
        guardian.url + p for p in ("/derivatives/api/", "/api/history/", "/api/charts/", "/api/feeschedules/")
    }
    state: dict[str, Any] = {}

    async def placed() -> Any:
        state["order"] = await ex.create_order(BTC, "limit", "buy", 0.01, 59000)
        return state["order"]

    async def position_then_reduce() -> Any:
        await ex.create_market_order(BTC, "buy", 0.02)
        return await ex.create_reduce_only_order(BTC, "market", "sell", 0.01)

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "fetchMarkets": lambda: ex.fetch_markets(),
        "fetchTicker": lambda: ex.fetch_ticker(BTC),
        "fetchTickers": lambda: ex.fetch_tickers(),
        "fetchOrderBook": lambda: ex.fetch_order_book(BTC),
        "fetchL2OrderBook": lambda: ex.fetch_l2_order_book(BTC),
        "fetchOHLCV": lambda: ex.fetch_ohlcv(BTC, "1m"),
        "fetchMarkOHLCV": lambda: ex.fetch_mark_ohlcv(BTC, "1m"),
        "fetchIndexOHLCV": lambda: ex.fetch_index_ohlcv(BTC, "1h"),
        "fetchTrades": lambda: ex.fetch_trades(BTC),
        "fetchFundingRates": lambda: ex.fetch_funding_rates(),
        "fetchFundingRateHistory": lambda: ex.fetch_funding_rate_history(BTC),
        "fetchLeverageTiers": lambda: ex.fetch_leverage_tiers(),
        "fetchTradingFees": lambda: ex.fetch_trading_fees(),
        "fetchBalance": lambda: ex.fetch_balance(),
        "createOrder": placed,
        "createLimitOrder": lambda: ex.create_limit_order(BTC, "sell", 0.01, 61000),
        "createMarketOrder": lambda: ex.create_market_order(BTC, "buy", 0.01),
        "createReduceOnlyOrder": position_then_reduce,
        "createPostOnlyOrder": lambda: ex.create_post_only_order(BTC, "limit", "buy", 0.01, 58000),
        "createStopLimitOrder": lambda: ex.create_stop_limit_order(BTC, "sell", 0.01, 56900, 57000),
        "createStopMarketOrder": lambda: ex.create_stop_market_order(BTC, "sell", 0.01, 57000),
        "createStopOrder": lambda: ex.create_stop_order(BTC, "limit", "sell", 0.01, 56900, 57000),
        "createTriggerOrder": lambda: ex.create_trigger_order(BTC, "market", "sell", 0.01, None, 57000),
        "createOrders": lambda: ex.create_orders(
            [{"symbol": BTC, "type": "limit", "side": "buy", "amount": 0.01, "price": 57500}]
        ),
        "editOrder": lambda: ex.edit_order(state["order"]["id"], BTC, "limit", "buy", 0.02, 58500),
        "fetchOrder": lambda: ex.fetch_order(state["order"]["id"]),
        "fetchOrders": lambda: ex.fetch_orders(),
        "fetchOpenOrders": lambda: ex.fetch_open_orders(),
        "cancelOrder": lambda: ex.cancel_order(state["order"]["id"]),
        "cancelOrders": lambda: ex.cancel_orders([o["id"] for o in state["open"]]),
        "cancelAllOrders": lambda: ex.cancel_all_orders(),
        "cancelAllOrdersAfter": lambda: ex.cancel_all_orders_after(60_000),
        "fetchClosedOrders": lambda: ex.fetch_closed_orders(),
        "fetchCanceledOrders": lambda: ex.fetch_canceled_orders(),
        "fetchMyTrades": lambda: ex.fetch_my_trades(),
        "fetchPositions": lambda: ex.fetch_positions(),
        "fetchPositionsHistory": lambda: ex.fetch_positions_history(),
        "fetchLedger": lambda: ex.fetch_ledger(),
        "fetchFundingHistory": lambda: ex.fetch_funding_history(),
        "setLeverage": lambda: ex.set_leverage(5, BTC),
        "fetchLeverage": lambda: ex.fetch_leverage(BTC),
        "fetchLeverages": lambda: ex.fetch_leverages(),
    }
    listed = {name for name, value in ex.has.items() if value is True} - NOT_METHODS
    assert listed - {"transfer"} == set(calls), "ccxt's has table changed: cover the new methods"
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    try:
        for name, call in calls.items():
            if name == "cancelOrders":
                state["open"] = await ex.fetch_open_orders()
            try:
                results[name] = await call()
            except ccxt.BaseError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        for source, target in (("flex", "cash"), ("cash", "spot")):  # transfer, then withdrawal
            with pytest.raises(ccxt.BaseError, match="endpointNotAllowed"):
                await ex.transfer("USD", 1, source, target)
    finally:
        await ex.close()
    assert not failures, failures
    assert len(results["fetchOHLCV"]) >= 1 and results["fetchOHLCV"][-1][4] > 0
    assert results["fetchLeverage"]["longLeverage"] == 5
    assert sim.exchange.accounts["main"].leverage == {"PF_XBTUSD": Decimal(5)}
    assert results["fetchMyTrades"] and results["fetchClosedOrders"] and results["fetchCanceledOrders"]
    assert results["fetchLedger"] and results["fetchPositionsHistory"]
    assert not {r["endpoint"] for r in sim.requests} & FUNDS
    assert not signed_by_others(sim)


async def in_thread(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, *args, **kwargs)


@pytest.mark.filterwarnings("ignore:The 'get_fee_schedules:DeprecationWarning")
async def test_python_kraken_sdk_runs_every_method_of_user_trade_market_and_funding_through_guardian(
    guardian: Service, sim: Simulator
) -> None:
    clients = [
        cls(key=BOT_KEY, secret=BOT_SECRET, url=guardian.url) for cls in (User, Trade, Market, Funding)
    ]
    user, trade, market, funding = clients  # type: ignore[misc]
    order = {"orderType": "lmt", "size": 0.01, "symbol": "PF_XBTUSD", "side": "buy", "limitPrice": 59000}
    calls: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
        "User.get_wallets": (user.get_wallets, (), {}),
        "User.get_subaccounts": (user.get_subaccounts, (), {}),
        "User.get_unwind_queue": (user.get_unwind_queue, (), {}),
        "User.get_notifications": (user.get_notifications, (), {}),
        "User.get_account_log": (user.get_account_log, (), {"count": 10}),
        "User.get_account_log_csv": (user.get_account_log_csv, (), {}),
        "User.get_execution_events": (user.get_execution_events, (), {"sort": "asc"}),
        "User.get_order_events": (user.get_order_events, (), {"tradeable": "PF_XBTUSD"}),
        "User.get_trigger_events": (user.get_trigger_events, (), {}),
        "User.get_open_positions": (user.get_open_positions, (), {}),
        "User.get_open_orders": (user.get_open_orders, (), {}),
        "User.check_trading_enabled_on_subaccount": (
            user.check_trading_enabled_on_subaccount,
            (SUBACCOUNT_UID,),
            {},
        ),
        "User.set_trading_on_subaccount": (
            user.set_trading_on_subaccount,
            (SUBACCOUNT_UID,),
            {"trading_enabled": False},
        ),
        "Trade.create_order": (trade.create_order, (), {**order, "cliOrdId": "sdk-1"}),
        "Trade.edit_order": (trade.edit_order, (), {"cliOrdId": "sdk-1", "size": 0.02}),
        "Trade.get_orders_status": (trade.get_orders_status, (), {"cliOrdIds": ["sdk-1"]}),
        "Trade.cancel_order": (trade.cancel_order, (), {"cliOrdId": "sdk-1"}),
        "Trade.create_batch_order": (
            trade.create_batch_order,
            ([{"order": "send", "order_tag": "1", **order}],),
            {},
        ),
        "Trade.cancel_all_orders": (trade.cancel_all_orders, (), {}),
        "Trade.dead_mans_switch": (trade.dead_mans_switch, (), {"timeout": 60}),
        "Trade.get_fills": (trade.get_fills, (), {}),
        "Market.get_ohlc": (market.get_ohlc, ("trade", "PF_XBTUSD", "1m"), {}),
        "Market.get_tick_types": (market.get_tick_types, (), {}),
        "Market.get_tradeable_products": (market.get_tradeable_products, ("mark",), {}),
        "Market.get_resolutions": (market.get_resolutions, ("mark", "PF_XBTUSD"), {}),
        "Market.get_fee_schedules": (market.get_fee_schedules, (), {}),
        "Market.get_fee_schedules_vol": (market.get_fee_schedules_vol, (), {}),
        "Market.get_orderbook": (market.get_orderbook, ("PF_XBTUSD",), {}),
        "Market.get_tickers": (market.get_tickers, (), {}),
        "Market.get_instruments": (market.get_instruments, (), {}),
        "Market.get_instruments_status": (market.get_instruments_status, ("PF_XBTUSD",), {}),
        "Market.get_trade_history": (market.get_trade_history, ("PF_XBTUSD",), {}),
        "Market.get_historical_funding_rates": (market.get_historical_funding_rates, ("PF_XBTUSD",), {}),
        "Market.get_leverage_preference": (market.get_leverage_preference, (), {}),
        "Market.set_leverage_preference": (market.set_leverage_preference, ("PF_XBTUSD", 3), {}),
        "Market.get_pnl_preference": (market.get_pnl_preference, (), {}),
        "Market.set_pnl_preference": (market.set_pnl_preference, ("PF_XBTUSD", "USD"), {}),
        "Market.get_public_execution_events": (market.get_public_execution_events, ("PF_XBTUSD",), {}),
        "Market.get_public_order_events": (market.get_public_order_events, ("PF_XBTUSD",), {}),
        "Market.get_public_mark_price_events": (market.get_public_mark_price_events, ("PF_XBTUSD",), {}),
        "Funding.get_historical_funding_rates": (funding.get_historical_funding_rates, ("PF_XBTUSD",), {}),
    }
    refused = {
        "Funding.initiate_wallet_transfer": (
            funding.initiate_wallet_transfer,
            (1, "flex", "spot", "USD"),
            {},
        ),
        "Funding.initiate_subaccount_transfer": (
            funding.initiate_subaccount_transfer,
            (1, "flex", "me", "flex", "them", "USD"),
            {},
        ),
        "Funding.initiate_withdrawal_to_spot_wallet": (
            funding.initiate_withdrawal_to_spot_wallet,
            (1, "USD"),
            {},
        ),
    }
    methods = {
        f"{type(c).__name__}.{n}"
        for c in clients
        for n, f in vars(type(c)).items()
        if callable(f) and not n.startswith("_")
    }
    assert methods == set(calls) | set(refused), "the SDK's clients changed: cover the new methods"
    failures: dict[str, str] = {}
    try:
        for name, (call, args, kwargs) in calls.items():
            try:
                answer = await in_thread(call, *args, **kwargs)
            except Exception as exc:  # every SDK error: reported by name, all at once
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            if name == "User.get_account_log_csv":
                assert answer.status_code == 200 and answer.text.startswith("id,date,asset")
        for name, (call, args, kwargs) in refused.items():
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the SDK has no common base class
                await in_thread(call, *args, **kwargs)
            assert "endpointNotAllowed" in str(caught.value), (name, caught.value)
    finally:
        for client in clients:
            client._FuturesClient__session.close()  # type: ignore[attr-defined]
    assert not failures, failures
    assert sim.exchange.accounts["main"].leverage == {"PF_XBTUSD": Decimal(3)}
    assert sim.preferences.of(sim.exchange.accounts["main"]).subaccount_trading[SUBACCOUNT_UID] is False
    assert not {r["endpoint"] for r in sim.requests} & FUNDS
    assert not signed_by_others(sim)
