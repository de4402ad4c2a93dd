"""The simulator's contract kinds (issue 24): linear multi-collateral perpetuals (PF_) and fixed
maturities (FF_), inverse perpetuals (PI_XBTUSD, PI_ETHUSD) and fixed maturities (FI_), each with
Kraken's arithmetic and Kraken's shapes, over real HTTP and WebSocket on a loopback port; the arithmetic
itself by hypothesis against a brute-force recomputation.

The simulator here runs on a frozen clock at T0 (Tuesday 2023-11-14 22:13:20 UTC), so its fixed
maturities are dated 2024-01-26, the last Friday of the month after next, and trade until 16:00 UTC.
Marks are set through the control API and `mkt` orders fill at the mark (the book is unlimited).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import endpoint
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.sim import contracts
from guardian.sim.app import Simulator
from guardian.sim.contracts import INVERSE_MATH, LINEAR_MATH, Arithmetic
from guardian.sim.exchange import Exchange
from guardian.sim.market import (
    DEFAULT_INSTRUMENTS,
    Market,
    default_instruments,
    last_trading_time,
)
from tests.conftest import TRADE_KEY, TRADE_SECRET, sim_keys
from tests.test_sim_stream import Stream, connect

T0 = 1_700_000_000.0
EXPIRY = "2024-01-26T16:00:00.000Z"
FI = "FI_XBTUSD_240126"
FF = "FF_XBTUSD_240126"
PI = "PI_XBTUSD"
SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
TOLERANCE = Decimal("1e-18")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def started(**settings: Any) -> Simulator:
    simulator = Simulator(sim_keys(), market=None, tick_s=None, clock=lambda: T0, **settings)
    await simulator.start("127.0.0.1", 0)
    return simulator


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = await started()
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def kraken(sim: Simulator) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


async def control(http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, **doc: Any) -> Any:
    async with http.request(method, f"{sim.url}/_sim{path}", json=doc) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def at_mark(
    http: aiohttp.ClientSession,
    sim: Simulator,
    kraken: KrakenClient,
    symbol: str,
    mark: str,
    side: str,
    size: str,
) -> dict[str, Any]:
    """Set `symbol`'s mark, then trade `size` at it with a mkt order; the sendStatus."""
    await control(http, sim, "POST", "/mark", symbol=symbol, price=mark)
    params = {"orderType": "mkt", "symbol": symbol, "side": side, "size": size}
    status: dict[str, Any] = (await kraken.request("sendorder", params))["sendStatus"]
    assert status["status"] == "placed", status
    return status


async def state(http: aiohttp.ClientSession, sim: Simulator) -> dict[str, Any]:
    main: dict[str, Any] = (await control(http, sim, "GET", "/state"))["accounts"]["main"]
    return main


async def until(stream: Stream, feed: str, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next message of `feed` that is `wanted` (the ones before it are skipped)."""
    while True:
        message = await stream.next(feed)
        if wanted(message):
            return message


def close(value: float, expected: Decimal | float | str) -> bool:
    return abs(Decimal(str(value)) - Decimal(str(expected))) <= Decimal("1e-12")


# ---- the instrument set ---------------------------------------------------------------------------------
def test_the_fixed_maturities_expire_at_16_utc_on_the_last_friday_of_the_month_after_next() -> None:
    cases = {
        T0: "2024-01-26T16:00:00+00:00",  # November -> January
        parse_iso("2026-12-07T19:28:02Z"): "2027-02-26T16:00:00+00:00",  # across the year's end
        parse_iso("2027-10-31T23:59:59Z"): "2027-12-31T16:00:00+00:00",  # the last day is a Friday
        parse_iso("2024-01-01T00:00:00Z"): "2024-03-29T16:00:00+00:00",
    }
    for now, expected in cases.items():
        assert last_trading_time(now) == parse_iso(expected), expected
    symbols = [i.symbol for i in default_instruments(T0)]
    assert symbols == ["PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", "PI_XBTUSD", "PI_ETHUSD", FI, FF]
    assert [i.symbol for i in DEFAULT_INSTRUMENTS][:5] == symbols[:5]  # the module's set: today's dates


async def test_each_kind_of_contract_is_listed_in_krakens_instrument_shape(sim: Simulator) -> None:
    async with KrakenClient(sim.url, None, timeout_s=5) as public:
        rows = {row["symbol"]: row for row in await public.instruments()}
        tickers = {row["symbol"]: row for row in await public.tickers()}
    assert set(rows) == {"PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", PI, "PI_ETHUSD", FI, FF}

    linear = rows["PF_XBTUSD"]
    assert (linear["type"], linear["contractSize"], linear["tickSize"]) == ("flexible_futures", 1, 0.5)
    assert "underlying" not in linear and "lastTradingTime" not in linear
    assert set(linear["marginLevels"][0]) == {"numNonContractUnits", "initialMargin", "maintenanceMargin"}
    assert linear["fundingRateCoefficient"] == 8  # a perpetual's funding fields

    for symbol, tick, underlying in ((PI, 0.5, "rr_xbtusd"), ("PI_ETHUSD", 0.05, "rr_ethusd")):
        row = rows[symbol]
        assert row["type"] == "futures_inverse" and row["underlying"] == underlying
        assert (row["contractSize"], row["contractValueTradePrecision"], row["tickSize"]) == (1, 0, tick)
        assert "lastTradingTime" not in row and row["tradeable"] is True
        assert set(row["marginLevels"][0]) == {"contracts", "initialMargin", "maintenanceMargin"}
        assert tickers[symbol]["tag"] == "perpetual" and "fundingRate" in tickers[symbol]

    inverse = rows[FI]
    assert (inverse["type"], inverse["underlying"], inverse["lastTradingTime"]) == (
        "futures_inverse",
        "rr_xbtusd",
        EXPIRY,
    )
    assert (inverse["contractSize"], inverse["contractValueTradePrecision"], inverse["tradeable"]) == (
        1,
        0,
        True,
    )
    assert "fundingRateCoefficient" not in inverse  # a fixed maturity pays no funding
    fixed = rows[FF]
    assert (fixed["type"], fixed["lastTradingTime"], fixed["tradeable"]) == ("flexible_futures", EXPIRY, True)
    assert "underlying" not in fixed
    assert set(fixed["marginLevels"][0]) == {"numNonContractUnits", "initialMargin", "maintenanceMargin"}
    for symbol in (FI, FF):
        assert tickers[symbol]["tag"] == "month" and "fundingRate" not in tickers[symbol]


async def test_the_demo_lets_its_bot_trade_pi_xbtusd() -> None:
    from guardian.demo import start_demo

    demo = await start_demo("127.0.0.1", 0)
    try:
        symbols = demo.config.accounts[0].guard.symbols
        assert symbols is not None and "PI_XBTUSD" in symbols and "PF_XBTUSD" in symbols
    finally:
        await demo.close()


# ---- inverse arithmetic through the exchange ------------------------------------------------------------
async def test_an_inverse_position_grows_at_the_harmonic_entry_and_realises_xbt_worked_by_hand(
    sim: Simulator, kraken: KrakenClient, http: aiohttp.ClientSession
) -> None:
    """10000 PI_XBTUSD bought at 50000, 10000 more at 40000: entry 20000 / (10000/50000 + 10000/40000)
    = 44444.44..., so 1/entry = 0.0000225. Sell 5000 at 50000: 5000 x (0.0000225 - 0.00002) = 0.0125
    XBT. Sell 25000 at 60000: the 15000 left close for 15000 x (0.0000225 - 1/60000) = 0.0875 XBT and
    10000 open short at 60000. Buy them back at 50000: 10000 x (1/50000 - 1/60000) = 0.0333... XBT."""
    await at_mark(http, sim, kraken, PI, "50000", "buy", "10000")
    await at_mark(http, sim, kraken, PI, "40000", "buy", "10000")
    [row] = await kraken.open_positions()
    assert (row["symbol"], row["side"], row["size"]) == (PI, "long", 20000)
    assert close(row["price"], Decimal(400_000_000) / 9000)  # 44444.44...
    assert close(row["unrealizedPnl"], "-0.05")  # 20000 x (0.0000225 - 0.000025) XBT at mark 40000
    assert "pnlCurrency" not in row and row["unrealizedFunding"] == 0

    await at_mark(http, sim, kraken, PI, "50000", "sell", "5000")
    mine = await state(http, sim)
    assert close(mine["margin_accounts"]["fi_xbtusd"]["realized_pnl"], "0.0125")
    [row] = await kraken.open_positions()
    assert row["size"] == 15000 and close(row["price"], Decimal(400_000_000) / 9000)  # a reduce keeps it

    await at_mark(http, sim, kraken, PI, "60000", "sell", "25000")
    [row] = await kraken.open_positions()
    assert (row["side"], row["size"], row["price"]) == ("short", 10000, 60000)
    mine = await state(http, sim)
    xbt = mine["margin_accounts"]["fi_xbtusd"]
    assert close(xbt["realized_pnl"], "0.1") and close(xbt["balance"], "1.1")
    assert mine["realized_pnl_today"] == {"XBT": pytest.approx(0.1)}
    assert close(mine["realized_pnl_today_usd"], 0.0125 * 50000 + 0.0875 * 60000)  # each at its mark
    assert close(mine["realized_pnl_today_usd_now"], 0.1 * 60000)  # all at PI_XBTUSD's mark now
    assert mine["balance"] == 100_000 and mine["realized_pnl"] == 0  # the flex account is untouched

    await at_mark(http, sim, kraken, PI, "50000", "buy", "10000")
    assert await kraken.open_positions() == []
    xbt = (await state(http, sim))["margin_accounts"]["fi_xbtusd"]
    assert close(
        xbt["realized_pnl"], Decimal("0.1") + Decimal(10000) * (Decimal(1) / 50000 - Decimal(1) / 60000)
    )
    accounts = (await kraken.accounts())["fi_xbtusd"]
    assert close(accounts["balances"]["xbt"], xbt["balance"]) and PI not in accounts["balances"]


async def test_the_control_state_gives_each_positions_value_notional_and_pnl_in_its_currency_and_usd(
    sim: Simulator, kraken: KrakenClient, http: aiohttp.ClientSession
) -> None:
    await at_mark(http, sim, kraken, PI, "50000", "buy", "30000")
    await at_mark(http, sim, kraken, "PF_XBTUSD", "50000", "sell", "0.5")
    await control(http, sim, "POST", "/mark", symbol=PI, price="60000")
    await control(http, sim, "POST", "/mark", symbol="PF_XBTUSD", price="60000")
    mine = await state(http, sim)
    inverse = mine["position_figures"][PI]
    assert (inverse["kind"], inverse["type"], inverse["currency"], inverse["margin_account"]) == (
        "inverse",
        "futures_inverse",
        "XBT",
        "fi_xbtusd",
    )
    assert close(inverse["value"], "0.5") and inverse["value_usd"] == inverse["notional_usd"] == 30000
    assert close(inverse["unrealized_pnl"], "0.1")  # 30000 x (1/50000 - 1/60000)
    assert close(inverse["unrealized_pnl_usd"], 6000)  # at the mark, 60000
    assert close(inverse["initial_margin"], "0.01")  # 0.5 XBT / 50
    linear = mine["position_figures"]["PF_XBTUSD"]
    assert (linear["kind"], linear["currency"], linear["margin_account"], linear["size"]) == (
        "linear",
        "USD",
        "flex",
        -0.5,
    )
    assert linear["value"] == linear["value_usd"] == linear["notional_usd"] == 30000
    assert linear["unrealized_pnl"] == linear["unrealized_pnl_usd"] == -5000
    assert mine["gross_notional_usd"] == 60000 and close(mine["unrealized_pnl_usd"], 1000)
    instruments = (await control(http, sim, "GET", "/state"))["instruments"]
    assert instruments[FI] == {
        "kind": "inverse",
        "type": "futures_inverse",
        "contract_size": 1.0,
        "margin_account": "fi_xbtusd",
        "currency": "XBT",
        "last_trading_time": EXPIRY,
        "tradeable": True,
        "settlement_price": None,
    }


async def test_inverse_orders_are_margined_in_xbt_against_the_margin_account(
    http: aiohttp.ClientSession,
) -> None:
    """0.01 XBT at 50x: 20000 contracts bid at 50000 hold 20000/50000/50 = 0.008 XBT; 10000 more would
    need 0.004 with 0.002 left. The flex account's USD does not count, and does not shrink."""
    simulator = await started(margin_balances={"fi_xbtusd": Decimal("0.01"), "fi_ethusd": Decimal(1)})
    try:
        async with KrakenClient(
            simulator.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5
        ) as kraken:
            bid = {"orderType": "lmt", "symbol": PI, "side": "buy", "limitPrice": "50000"}
            first = (await kraken.request("sendorder", {**bid, "size": "20000"}))["sendStatus"]
            assert first["status"] == "placed"
            refused = (await kraken.request("sendorder", {**bid, "size": "10000"}))["sendStatus"]
            assert refused["status"] == "insufficientAvailableFunds"
            assert (await kraken.request("sendorder", {**bid, "size": "5000"}))["sendStatus"][
                "status"
            ] == "placed"
            account = (await kraken.accounts())["fi_xbtusd"]
            assert close(account["auxiliary"]["af"], "0")  # 0.01 - 0.008 - 0.002
            flex = (await kraken.accounts())["flex"]
            assert flex["availableMargin"] == 100_000
            pf = {
                "orderType": "lmt",
                "symbol": "PF_XBTUSD",
                "side": "buy",
                "size": "1",
                "limitPrice": "50000",
            }
            assert (await kraken.request("sendorder", pf))["sendStatus"]["status"] == "placed"
            eth = {
                "orderType": "lmt",
                "symbol": "PI_ETHUSD",
                "side": "sell",
                "size": "10000",
                "limitPrice": "3500",
            }
            assert (await kraken.request("sendorder", eth))["sendStatus"]["status"] == "placed"
            # A reduce-only order holds no margin, so it is not refused for want of it.
            reduce = {**bid, "side": "sell", "limitPrice": "70000", "size": "100000", "reduceOnly": "true"}
            assert (await kraken.request("sendorder", reduce))["sendStatus"][
                "status"
            ] == "wouldNotReducePosition"
            figures = (await state(http, simulator))["margin_accounts"]["fi_xbtusd"]
            assert close(figures["orders_margin"], "0.01") and close(figures["available"], "0")
    finally:
        await simulator.close()


# ---- accounts and streams -------------------------------------------------------------------------------
async def test_accounts_show_each_margin_account_in_krakens_shape(
    sim: Simulator, kraken: KrakenClient, http: aiohttp.ClientSession
) -> None:
    accounts = await kraken.accounts()
    assert list(accounts) == ["cash", "flex", "fi_xbtusd", "fi_ethusd"]
    assert accounts["fi_ethusd"] == {
        "type": "marginAccount",
        "currency": "eth",
        "balances": {"eth": 10},
        "auxiliary": {"usd": 30000, "pv": 10, "pnl": 0, "af": 10, "funding": 0},
        "marginRequirements": {"im": 0, "mm": 0, "lt": 0, "tt": 0},
        "triggerEstimates": {"im": 0, "mm": 0, "lt": 0, "tt": 0},
    }
    await at_mark(http, sim, kraken, PI, "50000", "buy", "50000")
    await control(http, sim, "POST", "/mark", symbol=PI, price="40000")
    xbt = (await kraken.accounts())["fi_xbtusd"]
    assert (xbt["type"], xbt["currency"], xbt["balances"]) == ("marginAccount", "xbt", {"xbt": 1, PI: 50000})
    assert close(xbt["auxiliary"]["pnl"], "-0.25")  # 50000 x (1/50000 - 1/40000)
    assert close(xbt["auxiliary"]["pv"], "0.75") and close(xbt["auxiliary"]["usd"], 30000)
    assert close(xbt["marginRequirements"]["im"], "0.025")  # 50000 / 40000 / 50
    assert close(xbt["marginRequirements"]["mm"], "0.0125") and close(xbt["auxiliary"]["af"], "0.725")
    # Liquidation when 1 + 50000/50000 - 50000/P = 50000/P x 0.01: P = 50500 / 2 = 25250.
    assert xbt["triggerEstimates"]["mm"] == 25250
    [row] = await kraken.open_positions()
    assert close(row["unrealizedPnl"], "-0.25") and "pnlCurrency" not in row


async def test_inverse_fills_positions_and_balances_stream_in_the_base_currency(
    http: aiohttp.ClientSession,
) -> None:
    simulator = await started(taker_fee=Decimal("0.0005"))
    try:
        stream: Stream = await connect(simulator, http)
        balances = await stream.subscribe("balances")
        assert balances["futures"]["F-XBT:USD"] == {
            "name": "F-XBT:USD",
            "pair": "XBT/USD",
            "unit": "XBT",
            "portfolio_value": 1,
            "balance": 1,
            "maintenance_margin": 0,
            "initial_margin": 0,
            "available": 1,
            "unrealized_funding": 0,
            "pnl": 0,
        }
        assert set(balances["futures"]) == {"F-XBT:USD", "F-ETH:USD"}
        assert balances["flex_futures"]["balance_value"] == 100_000
        assert (await stream.subscribe("fills"))["fills"] == []
        assert (await stream.subscribe("open_positions"))["positions"] == []
        async with KrakenClient(
            simulator.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5
        ) as kraken:
            await at_mark(http, simulator, kraken, PI, "50000", "buy", "10000")
        fill = (await stream.next("fills"))["fills"][0]
        assert (fill["instrument"], fill["qty"], fill["price"], fill["fee_currency"]) == (
            PI,
            10000,
            50000,
            "BTC",
        )
        assert close(fill["fee_paid"], "0.0001")  # 10000 / 50000 x 0.0005 XBT
        positions = await stream.next("open_positions")
        [row] = positions["positions"]
        assert (row["instrument"], row["balance"], row["entry_price"], row["pnl"]) == (PI, 10000, 50000, 0)
        assert "pnl_currency" not in row and close(row["initial_margin"], "0.004")  # 0.2 XBT / 50
        update = await stream.next("balances")
        xbt = update["futures"]["F-XBT:USD"]
        assert close(xbt["balance"], "0.9999") and close(xbt["initial_margin"], "0.004")
        assert close(xbt["available"], "0.9959")
        assert update["flex_futures"]["balance_value"] == 100_000  # as every update has carried it
        await stream.ws.close()
    finally:
        await simulator.close()


async def test_linear_positions_keep_their_shapes(
    sim: Simulator, kraken: KrakenClient, http: aiohttp.ClientSession
) -> None:
    await at_mark(http, sim, kraken, "PF_XBTUSD", "60000", "buy", "0.5")
    await at_mark(http, sim, kraken, FF, "60000", "buy", "0.5")
    await control(http, sim, "POST", "/mark", symbol=FF, price="61000")
    rows = {row["symbol"]: row for row in await kraken.open_positions()}
    assert set(rows["PF_XBTUSD"]) == {
        "side",
        "symbol",
        "price",
        "fillTime",
        "size",
        "unrealizedPnl",
        "unrealizedFunding",
        "pnlCurrency",
    }
    assert (rows["PF_XBTUSD"]["unrealizedFunding"], rows["PF_XBTUSD"]["pnlCurrency"]) == (0, "USD")
    assert rows[FF]["unrealizedPnl"] == 500 and rows[FF]["pnlCurrency"] == "USD"
    assert rows[FF]["unrealizedFunding"] is None  # a fixed maturity: none (Kraken's example leaves it out)
    assert list((await kraken.accounts())["fi_xbtusd"]["balances"]) == ["xbt"]


# ---- fixed maturities -----------------------------------------------------------------------------------
async def test_a_fixed_maturity_past_its_last_trading_time_takes_no_orders_and_settles(
    sim: Simulator, kraken: KrakenClient, http: aiohttp.ClientSession
) -> None:
    stream: Stream = await connect(sim, http)
    await stream.subscribe("open_orders")
    await stream.subscribe("open_positions")
    await at_mark(http, sim, kraken, FI, "60000", "buy", "10000")
    await at_mark(http, sim, kraken, FF, "60000", "sell", "0.5")
    resting = {"orderType": "lmt", "symbol": FI, "side": "buy", "size": "100", "limitPrice": "55000"}
    order_id = (await kraken.request("sendorder", resting))["sendStatus"]["order_id"]
    await control(http, sim, "POST", "/mark", symbol=FI, price="66000")
    await control(http, sim, "POST", "/mark", symbol=FF, price="61000")

    one_second_before = parse_iso(EXPIRY) - T0 - 1
    await control(http, sim, "POST", "/clock", offset_s=one_second_before)
    assert len(await kraken.open_positions()) == 2  # not yet
    await control(http, sim, "POST", "/clock", offset_s=one_second_before + 1)

    assert await kraken.open_positions() == []
    assert await kraken.open_orders() == []
    cancelled = await until(stream, "open_orders", lambda m: bool(m.get("is_cancel")))
    assert (cancelled["order_id"], cancelled["is_cancel"], cancelled["reason"]) == (
        order_id,
        True,
        "market_inactive",
    )
    [status] = (await kraken.request("orders/status", {"orderIds": order_id}))["orders"]
    assert (status["status"], status["updateReason"]) == ("CANCELLED", "MARKET_INACTIVE")
    flat = await until(stream, "open_positions", lambda m: all(r["balance"] == 0 for r in m["positions"]))
    closed = {row["instrument"]: row for row in flat["positions"]}
    assert closed[FI]["balance"] == 0 and closed[FF]["balance"] == 0 and "pnl_currency" not in closed[FI]

    mine = await state(http, sim)
    fi_pnl = Decimal(10000) * (Decimal(1) / 60000 - Decimal(1) / 66000)  # 0.01515... XBT
    assert close(mine["margin_accounts"]["fi_xbtusd"]["realized_pnl"], fi_pnl)
    assert mine["realized_pnl"] == -500 and mine["balance"] == 99_500  # (60000 - 61000) x 0.5, in flex
    assert [(s["symbol"], s["price"], s["size"], s["currency"]) for s in mine["settlements"]] == [
        (FI, 66000, 10000, "XBT"),
        (FF, 61000, -0.5, "USD"),
    ]
    assert close(mine["settlements"][0]["realized_pnl"], fi_pnl)

    async with KrakenClient(sim.url, None, timeout_s=5) as public:
        rows = {row["symbol"]: row for row in await public.instruments()}
    assert rows[FI]["tradeable"] is False and rows[FF]["tradeable"] is False and rows[PI]["tradeable"] is True
    refused = (await kraken.request("sendorder", resting))["sendStatus"]
    assert refused["status"] == "marketInactive" and "order_id" not in refused
    batch = await kraken.batch_order([{"order": "send", "order_tag": "1", **resting}])
    assert batch["batchStatus"][0]["status"] == "marketInactive"

    answer = await kraken.send(endpoint("history/v3/account-log"), "info=settlement")
    log = json.loads(answer.body)["logs"]  # the history endpoints answer without Kraken's envelope
    cash = {row["contract"]: row for row in log if row["asset"] in ("xbt", "usd")}
    assert cash[FI.lower()]["margin_account"] == "f-xbt:usd" and cash[FF.lower()]["margin_account"] == "flex"
    assert close(cash[FI.lower()]["new_balance"] - cash[FI.lower()]["old_balance"], fi_pnl)
    assert cash[FF.lower()]["realized_pnl"] == -500 and cash[FF.lower()]["trade_price"] == 61000
    legs = {row["asset"]: row for row in log if row["asset"] not in ("xbt", "usd")}
    assert (legs[FI.lower()]["old_balance"], legs[FI.lower()]["new_balance"]) == (10000, 0)

    sim.step(3)  # the walk leaves a settled contract at its settlement price
    assert sim.exchange.market.quotes[FI].mark == 66000
    settled = (await control(http, sim, "GET", "/state"))["settlements"]
    assert [(s["symbol"], s["price"], s["positions"]) for s in settled] == [(FI, 66000, 1), (FF, 61000, 1)]
    await stream.ws.close()


async def test_the_clock_passing_a_last_trading_time_settles_without_any_request() -> None:
    now = [T0]
    simulator = Simulator(sim_keys(), market=None, tick_s=0.05, clock=lambda: now[0])
    await simulator.start("127.0.0.1", 0)
    try:
        acct = simulator.exchange.accounts["main"]
        answer = simulator.exchange.send_order(
            acct, {"orderType": "mkt", "symbol": FI, "side": "sell", "size": "1000"}
        )
        assert answer["status"] == "placed"
        now[0] = parse_iso(EXPIRY)
        for _ in range(100):  # the ticker's next step settles it
            if FI not in acct.positions:
                break
            await asyncio.sleep(0.02)
        assert FI not in acct.positions and acct.settlements[0]["symbol"] == FI
    finally:
        await simulator.close()


# ---- the arithmetic, by hypothesis ----------------------------------------------------------------------
PRICES = st.integers(min_value=2, max_value=400_000).map(lambda ticks: Decimal(ticks) / 2)  # 1 to 200000
SIZES = st.integers(min_value=1, max_value=100_000).map(Decimal)
KIND = st.sampled_from([LINEAR_MATH, INVERSE_MATH])
CONTRACT = st.sampled_from([Decimal(1), Decimal("0.001"), Decimal(10)])


def near(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= TOLERANCE * max(Decimal(1), abs(a), abs(b))


@SETTINGS
@given(size=SIZES, entry=PRICES, exit_price=PRICES, long=st.booleans(), contract=CONTRACT)
@example(size=Decimal(10000), entry=Decimal(50000), exit_price=Decimal(60000), long=True, contract=Decimal(1))
def test_opening_then_closing_realises_each_kinds_pnl(
    size: Decimal, entry: Decimal, exit_price: Decimal, long: bool, contract: Decimal
) -> None:
    signed = size if long else -size
    for math, expected in (
        (INVERSE_MATH, signed * contract * (Decimal(1) / entry - Decimal(1) / exit_price)),
        (LINEAR_MATH, (exit_price - entry) * signed * contract),
    ):
        held, at, realized = math.apply_fill(Decimal(0), Decimal(0), signed, entry, contract)
        assert (held, at, realized) == (signed, entry, Decimal(0))
        held, at, realized = math.apply_fill(held, at, -signed, exit_price, contract)
        assert held == 0 and at == 0
        assert near(realized, expected)
    assert near(
        INVERSE_MATH.to_usd(INVERSE_MATH.value(size, contract, exit_price), exit_price), size * contract
    )
    assert INVERSE_MATH.notional_usd(-size, contract, exit_price) == size * contract
    assert LINEAR_MATH.value(size, contract, exit_price) == LINEAR_MATH.notional_usd(
        -size, contract, exit_price
    )


@SETTINGS
@given(fills=st.lists(st.tuples(SIZES, PRICES), min_size=1, max_size=8), contract=CONTRACT)
def test_growing_moves_the_entry_to_the_harmonic_mean_for_inverse_and_the_arithmetic_mean_for_linear(
    fills: list[tuple[Decimal, Decimal]], contract: Decimal
) -> None:
    for math in (INVERSE_MATH, LINEAR_MATH):
        held, entry = Decimal(0), Decimal(0)
        for size, price in fills:
            held, entry, realized = math.apply_fill(held, entry, size, price, contract)
            assert realized == 0
        total = sum((s for s, _ in fills), Decimal(0))
        if math is INVERSE_MATH:  # size / entry is additive
            assert near(total / entry, sum((s / p for s, p in fills), Decimal(0)))
        else:
            assert near(entry, sum((s * p for s, p in fills), Decimal(0)) / total)
        assert held == total


def brute_force(
    math: Arithmetic, fills: list[tuple[Decimal, Decimal]], contract: Decimal, mark: Decimal
) -> Decimal:
    """Realised plus unrealised PnL at `mark` after `fills` (signed size, price), from the cash flows alone:
    linear, what was paid and received in USD plus the position's value at the mark; inverse, the base
    currency each contract's USD was worth at its fill, less what the position's is worth at the mark."""
    position = sum((s for s, _ in fills), Decimal(0))
    if math.inverse:
        return sum((s * contract / p for s, p in fills), Decimal(0)) - position * contract / mark
    return -sum((s * contract * p for s, p in fills), Decimal(0)) + position * contract * mark


@SETTINGS
@given(
    fills=st.lists(st.tuples(st.integers(-50_000, 50_000).filter(bool).map(Decimal), PRICES), max_size=12),
    contract=CONTRACT,
    kind=KIND,
    mark=PRICES,
)
def test_realised_pnl_over_any_fills_equals_the_brute_force_recomputation(
    fills: list[tuple[Decimal, Decimal]], contract: Decimal, kind: Arithmetic, mark: Decimal
) -> None:
    held, entry, realized = Decimal(0), Decimal(0), Decimal(0)
    for signed, price in fills:
        held, entry, booked = kind.apply_fill(held, entry, signed, price, contract)
        realized += booked
        assert (held == 0) == (entry == 0)
    unrealized = kind.pnl(held, contract, entry, mark) if held else Decimal(0)
    assert near(realized + unrealized, brute_force(kind, fills, contract, mark))
    if held == 0:  # flat: everything is realised
        assert near(realized, brute_force(kind, fills, contract, mark))


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(
    trades=st.lists(
        st.tuples(
            st.sampled_from([PI, FI, "PF_XBTUSD", FF]),
            st.integers(-2_000, 2_000).filter(bool),
            st.integers(80_000, 160_000).map(lambda ticks: Decimal(ticks) / 2),
        ),
        min_size=1,
        max_size=15,
    )
)
def test_the_exchanges_realised_pnl_per_account_equals_the_brute_force_over_its_fills(
    trades: list[tuple[str, int, Decimal]],
) -> None:
    """Random fills in every kind of contract through the exchange (mkt orders at set marks): each margin
    account's realised PnL, and today's in USD, equal the recomputation from the fills alone."""
    exchange = Exchange(
        Market(instruments=default_instruments(T0)),
        clock=lambda: T0,
        margin_balances={"fi_xbtusd": Decimal(10**6)},
    )
    acct = exchange.account("t")
    acct.balance = Decimal(10**12)
    fills: dict[str, list[tuple[Decimal, Decimal]]] = {}
    usd = Decimal(0)
    for symbol, size, price in trades:
        instrument = exchange.instrument(symbol)
        amount = Decimal(size) if instrument.inverse else Decimal(size) / 1000  # PI: contracts; PF: XBT
        price = exchange.market.set_mark(symbol, price).mark  # on the contract's tick
        exchange.on_prices()
        before = exchange.wallet(acct, "fi_xbtusd").realized_pnl + acct.realized_pnl
        side = "buy" if amount > 0 else "sell"
        answer = exchange.send_order(
            acct, {"orderType": "mkt", "symbol": symbol, "side": side, "size": str(abs(amount))}
        )
        assert answer["status"] == "placed", answer
        booked = exchange.wallet(acct, "fi_xbtusd").realized_pnl + acct.realized_pnl - before
        usd += booked * price if instrument.inverse else booked  # the fill's mark is its price here
        fills.setdefault(symbol, []).append((amount, price))
    expected = {"XBT": Decimal(0), "USD": Decimal(0)}
    for symbol, rows in fills.items():
        instrument = exchange.instrument(symbol)
        mark = exchange.market.quotes[symbol].mark
        position = acct.positions.get(symbol)
        unrealized = (
            instrument.math.pnl(position.size, Decimal(1), position.price, mark) if position else Decimal(0)
        )
        total = brute_force(instrument.math, rows, instrument.contract_size, mark)
        expected[instrument.margin_currency] += total - unrealized
    assert near(exchange.wallet(acct, "fi_xbtusd").realized_pnl, expected["XBT"])
    assert near(acct.realized_pnl, expected["USD"])
    day = exchange.today(acct)
    assert near(day.pnl.get("XBT", Decimal(0)), expected["XBT"]) and near(
        day.pnl.get("USD", Decimal(0)), expected["USD"]
    )
    assert near(day.pnl_usd, usd)


def test_margin_accounts_are_named_as_kraken_names_them() -> None:
    assert contracts.margin_account(contracts.LINEAR, "XBT") == "flex"
    assert contracts.margin_account(contracts.INVERSE, "XBT") == "fi_xbtusd"
    assert contracts.margin_account(contracts.INVERSE, "ETH") == "fi_ethusd"
    assert (contracts.fee_currency("XBT"), contracts.fee_currency("ETH")) == ("BTC", "ETH")
    with pytest.raises(ValueError, match="fi_<base>usd"):
        Exchange(Market(), margin_balances={"xbt": Decimal(1)})
