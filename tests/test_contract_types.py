"""Every contract kind through guardian against the simulator (issue 24): orders placed through the gateway,
the mark moved, and guardian's `max_notional`, `max_gross_notional` and `max_daily_loss` figures held to the
simulator's own (`guardian.sim.figures`, an independent implementation of the arithmetic) within 0.01 %;
the loss limit trips at its USD figure for an inverse position and not before; random fills on random
contracts realise the same PnL in guardian and in the simulator; an expiring contract gets no new risk
and its settlement shows in the state and the journal; an unknown contract type is refused and says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.config import LossAction
from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.contracts import INVERSE, LINEAR
from guardian.sim.figures import account_figures
from guardian.sim.market import Instrument, Market, default_instruments, fixed_maturity
from guardian.sim.ws import StreamSettings
from tests.conftest import TRADE_KEY, TRADE_SECRET, sim_keys
from tests.daemon import wait_for
from tests.test_exposure import bot, guarded, refused
from tests.test_trips import events

D = Decimal
LIMITS: dict[str, Any] = {"max_position": 10**9}


def instruments(now: float | None = None) -> dict[str, str]:
    """Kind name -> the default set's symbol of that kind."""
    found = {}
    for i in default_instruments(now):
        prefix = i.symbol[:3]
        if prefix in ("PF_", "PI_", "FI_", "FF_") and prefix not in found:
            found[prefix] = i.symbol
    return found


SYMBOLS = instruments()
KINDS = [SYMBOLS["PF_"], SYMBOLS["FF_"], SYMBOLS["PI_"], SYMBOLS["FI_"]]
INVERSES = [SYMBOLS["PI_"], SYMBOLS["FI_"]]


def size_of(symbol: str) -> Decimal:
    """A position worth about 30,000 USD."""
    return D(30_000) if symbol.startswith(("PI_", "FI_")) else D("0.5")


def sim(market: Market | None = None) -> Simulator:
    return Simulator(
        sim_keys(),
        market=market or Market(seed=7),
        tick_s=None,
        budget_capacity=100_000,
        stream=StreamSettings(heartbeat_s=0.5, ticker_s=0.2),
    )


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    simulator = sim()
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.close()


def figures(exchange: Simulator) -> dict[str, Any]:
    return account_figures(exchange.exchange, exchange.exchange.accounts["main"])


def mark(exchange: Simulator, symbol: str) -> Decimal:
    return exchange.exchange.market.quotes[symbol].mark


def move(exchange: Simulator, symbol: str, price: Decimal) -> Decimal:
    quote = exchange.exchange.market.set_mark(symbol, price)
    exchange.exchange.on_prices()
    return quote.mark


def close(a: float | Decimal, b: float | Decimal, rel: float = 1e-4) -> bool:
    a, b = float(a), float(b)
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-9)


def usage(service: Service, name: str) -> float | None:
    found = [u for u in service.limits(service.accounts[0]) if u.name == name]
    return float(found[0].used) if found else None


def sim_daily_pnl(exchange: Simulator) -> float:
    """The simulator's own day, valued as guardian's loss limit values it: each margin currency's realised
    PnL and fees at that currency's mark now, plus unrealised PnL at the mark."""
    f = figures(exchange)
    rates = {"USD": 1.0}
    for row in f["position_figures"].values():
        rates.setdefault(row["currency"], row["mark_price"])
    for i in exchange.exchange.market.instruments:  # a currency without a position: its perpetual's mark
        if i.inverse and i.perpetual:
            rates.setdefault(i.margin_currency, float(mark(exchange, i.symbol)))
    realised = sum(v * rates[c] for c, v in f["realized_pnl_today"].items())
    fees = sum(v * rates[c] for c, v in f["fees_today"].items())
    return float(realised - fees + float(f["unrealized_pnl_usd"]))


async def seen(service: Service, exchange: Simulator, symbol: str, price: Decimal) -> None:
    """guardian's marks and positions feed both at `price` for `symbol`."""
    state = service.streams[0].state
    account = service.accounts[0]
    await wait_for(
        lambda: (
            account.marks.mark(symbol) == price
            and all(p.mark_price == price for p in state.view().positions.values() if p.symbol == symbol)
        ),
        5.0,
        f"guardian sees {symbol} at {price}",
    )


async def settle_position(service: Service, exchange: Simulator, symbol: str) -> None:
    held = exchange.exchange.accounts["main"].positions.get(symbol)
    want = D(0) if held is None else held.size
    await wait_for(
        lambda: service.streams[0].state.position_readings(symbol) == (want, want),
        5.0,
        f"guardian's two readings of {symbol} at {want}",
    )


# ---- the three limits' figures, per contract kind ---------------------------------------------------------


@pytest.mark.parametrize("symbol", KINDS)
async def test_gross_notional_and_the_days_pnl_are_the_simulators_own_figures(
    exchange: Simulator, tmp_path: Path, symbol: str
) -> None:
    limits = {**LIMITS, "max_gross_notional": 10.0**9, "max_daily_loss": 10.0**9}
    async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
        size = size_of(symbol)
        await wait_for(lambda: service.accounts[0].marks.mark(symbol) is not None, 5.0, "a mark")
        await b.send_order(orderType="mkt", symbol=symbol, side="buy", size=str(size))
        above = exchange.exchange.instrument(symbol).round_price(mark(exchange, symbol) * D("1.05"))
        await b.send_order(
            orderType="lmt", symbol=symbol, side="sell", size=str(size / 2), limitPrice=str(above)
        )
        await settle_position(service, exchange, symbol)
        await wait_for(lambda: service.streams[0].state.order_count() == 1, 5.0, "the resting order shown")
        for step in (D(0), D("-0.03"), D("0.045")):
            price = move(exchange, symbol, mark(exchange, symbol) * (1 + step))
            await seen(service, exchange, symbol, price)
            f = figures(exchange)
            own = f["gross_notional_usd"] + f["orders_notional_usd"][symbol]["sell"]
            gross = usage(service, "max_gross_notional")
            assert gross is not None and close(gross, own), (step, gross, own)
            pnl = service.streams[0].state.daily_pnl()
            assert pnl is not None and close(pnl, sim_daily_pnl(exchange)), (
                step,
                pnl,
                sim_daily_pnl(exchange),
            )
            assert abs(float(pnl)) > 1 or step == 0  # a figure worth comparing
        # Part closed: realised PnL (in XBT for an inverse contract), valued at the mark as it moves.
        await b.send_order(orderType="mkt", symbol=symbol, side="sell", size=str(size / 4), reduceOnly="true")
        await settle_position(service, exchange, symbol)
        assert any(figures(exchange)["realized_pnl_today"].values())
        for step in (D("0.02"), D("-0.05")):
            price = move(exchange, symbol, mark(exchange, symbol) * (1 + step))
            await seen(service, exchange, symbol, price)
            pnl = service.streams[0].state.daily_pnl()
            assert pnl is not None and close(pnl, sim_daily_pnl(exchange)), (
                step,
                pnl,
                sim_daily_pnl(exchange),
            )
        state = service.state_json()["accounts"][0]  # type: ignore[index]
        [position] = state["positions"]
        kind = "inverse" if symbol in INVERSES else "linear"
        assert (position["contract"], position["pnl_currency"]) == (
            kind,
            "XBT" if kind == "inverse" else "USD",
        )


@pytest.mark.parametrize("symbol", KINDS)
async def test_max_notional_refuses_exactly_above_the_simulators_notional(
    exchange: Simulator, tmp_path: Path, symbol: str
) -> None:
    instrument = exchange.exchange.instrument(symbol)
    price = instrument.round_price(mark(exchange, symbol) * D("0.97"))
    size = size_of(symbol)
    lot = D(1).scaleb(-instrument.size_precision)
    cap = instrument.math.notional_usd(size, instrument.contract_size, price)  # the simulator's figure
    async with guarded(exchange, tmp_path, **LIMITS, max_notional=float(cap)) as service, bot(service) as b:
        await wait_for(lambda: service.accounts[0].marks.mark(symbol) is not None, 5.0, "a mark")
        order = {"orderType": "lmt", "symbol": symbol, "side": "buy", "limitPrice": str(price)}
        message = await refused(exchange, b, {**order, "size": str(size + lot)}, "notionalTooLarge")
        assert "max_notional" in message
        placed = await b.send_order(**order, size=str(size))  # exactly at the limit: passes
        assert placed["sendStatus"]["status"] == "placed", placed


# ---- the loss limit of an inverse position -------------------------------------------------------------------


@pytest.mark.parametrize("symbol", INVERSES)
async def test_the_loss_limit_trips_at_its_usd_figure_for_an_inverse_position_and_not_before(
    exchange: Simulator, tmp_path: Path, symbol: str
) -> None:
    loss = 300.0
    limits = {**LIMITS, "max_daily_loss": loss, "on_loss_limit": LossAction.REDUCE_ONLY}
    async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
        account = service.accounts[0]
        await wait_for(lambda: account.marks.mark(symbol) is not None, 5.0, "a mark")
        await b.send_order(orderType="mkt", symbol=symbol, side="buy", size="30000")
        await settle_position(service, exchange, symbol)
        # The simulator's day is linear in the mark m: size x (m / entry - 1) - fee x m (in XBT, at m).
        f = figures(exchange)
        row = f["position_figures"][symbol]
        entry, fee = D(str(row["entry_price"])), D(str(f["fees_today"].get("XBT", 0)))
        tick = exchange.exchange.instrument(symbol).tick_size

        def mark_at(target: float) -> Decimal:
            m = (D(str(target)) + D(30_000)) / (D(30_000) / entry - fee)
            return (m / tick).to_integral_value() * tick

        price = move(exchange, symbol, mark_at(-loss * 0.98))
        await seen(service, exchange, symbol, price)
        assert -loss < sim_daily_pnl(exchange) < -loss * 0.97
        await asyncio.sleep(0.8)  # several of the daemon's loss checks
        assert account.trip is None
        price = move(exchange, symbol, mark_at(-loss * 1.02))
        await seen(service, exchange, symbol, price)
        assert sim_daily_pnl(exchange) < -loss
        await wait_for(lambda: account.trip is not None, 3.0, "the loss trip")
        trip = service.accounts[0].trip  # (read again: the daemon set it meanwhile)
        assert trip is not None and trip.limit == "max_daily_loss"
        await refused(
            exchange, b, {"orderType": "mkt", "symbol": symbol, "side": "buy", "size": "1"}, "reduceOnlyMode"
        )
        await b.send_order(orderType="mkt", symbol=symbol, side="sell", size="30000", reduceOnly="true")


# ---- realised PnL over random fills on random contracts ---------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fills=st.lists(
        st.tuples(
            st.sampled_from(["PF_", "PI_", "FI_", "FF_"]),
            st.booleans(),
            st.integers(1, 6),
            st.sampled_from([D("-0.02"), D(0), D("0.015"), D("0.04")]),
        ),
        min_size=3,
        max_size=8,
    )
)
def test_realised_pnl_of_random_fills_on_random_contracts_is_the_simulators(
    tmp_path_factory: pytest.TempPathFactory, fills: list[tuple[str, bool, int, Decimal]]
) -> None:
    """(A plain function that runs its own loop: hypothesis calls it once per example.)"""
    asyncio.run(_random_fills(tmp_path_factory.mktemp("random-fills"), fills))


async def _random_fills(path: Path, fills: list[tuple[str, bool, int, Decimal]]) -> None:
    exchange = sim()
    await exchange.start("127.0.0.1", 0)
    try:
        async with guarded(exchange, path, **LIMITS) as service, bot(service) as b:
            for prefix, buy, lots, step in fills:
                symbol = SYMBOLS[prefix]
                move(exchange, symbol, mark(exchange, symbol) * (1 + step))
                size = D(lots * 5000) if symbol in INVERSES else D(lots) / 10
                await b.send_order(
                    orderType="mkt", symbol=symbol, side="buy" if buy else "sell", size=str(size)
                )
            for symbol, held in list(exchange.exchange.accounts["main"].positions.items()):  # flat at last
                move(exchange, symbol, mark(exchange, symbol) * D("1.01"))
                side = "sell" if held.size > 0 else "buy"
                await b.send_order(orderType="mkt", symbol=symbol, side=side, size=str(abs(held.size)))
            state = service.streams[0].state
            for prefix in SYMBOLS:
                await settle_position(service, exchange, SYMBOLS[prefix])
            await wait_for(
                lambda: state.view().fills_today == len(exchange.exchange.accounts["main"].fills),
                5.0,
                "every fill",
            )
            own = figures(exchange)["realized_pnl_today"]
            mine: dict[str, Decimal] = {}
            for symbol, amount in state.view().realized_by.items():
                currency = "XBT" if symbol in INVERSES else "USD"
                mine[currency] = mine.get(currency, D(0)) + amount
            assert any(own.values())  # every position was closed: something was realised
            for currency in {*own, *mine}:
                assert close(mine.get(currency, 0), own.get(currency, 0), 1e-9), (currency, mine, own)
    finally:
        await exchange.close()


# ---- a fixed maturity's expiry --------------------------------------------------------------------------


async def test_an_expiring_contract_gets_no_new_risk_and_its_settlement_shows_in_state_and_journal(
    tmp_path: Path,
) -> None:
    expiry = time.time() + 6
    soon = fixed_maturity(INVERSE, "XBT", "0.5", 0, "60000", expiry)
    later = fixed_maturity(LINEAR, "XBT", "1", 4, "60000", expiry + 3600)
    exchange = sim(Market(instruments=(*default_instruments()[:4], soon, later), seed=7))
    await exchange.start("127.0.0.1", 0)
    try:
        async with guarded(exchange, tmp_path, **LIMITS) as service, bot(service) as b:
            await wait_for(lambda: service.accounts[0].marks.mark(soon.symbol) is not None, 5.0, "a mark")
            await b.send_order(orderType="mkt", symbol=soon.symbol, side="sell", size="20000")
            await settle_position(service, exchange, soon.symbol)
            await asyncio.sleep(max(0.0, expiry - time.time()) + 0.2)
            # Past lastTradingTime: guardian refuses new risk itself; a reduce-only order passes it.
            order = {"orderType": "mkt", "symbol": soon.symbol, "side": "sell", "size": "1"}
            message = await refused(exchange, b, order, "instrumentExpired")
            assert soon.symbol in message and "lastTradingTime" in message
            await wait_for(
                lambda: exchange.exchange.market.settled.get(soon.symbol) is not None, 10.0, "settled"
            )
            state = service.streams[0].state
            await wait_for(lambda: state.view().settlements, 10.0, "guardian sees the settlement")
            [settled] = state.view().settlements
            [own] = figures(exchange)["settlements"]
            assert settled.symbol == own["symbol"] and settled.size == D(-20000)
            assert close(settled.realized_pnl, own["realized_pnl"]) and settled.currency == own["currency"]
            shown = service.state_json()["accounts"][0]["settlements"]  # type: ignore[index]
            assert [s["symbol"] for s in shown] == [soon.symbol]
            await wait_for(lambda: service.streams[0]._pending == set(), 3.0, "the journal writes")
            [journaled] = await events(service, "settlement")
            assert journaled["symbol"] == soon.symbol and journaled["currency"] == "XBT"
            # The later maturity still trades.
            await b.send_order(orderType="mkt", symbol=later.symbol, side="buy", size="0.1")
    finally:
        await exchange.close()


# ---- a contract of a type guardian does not know --------------------------------------------------------

ODD = Instrument(
    "PV_XRPUSD", "XRP", "USD", D("0.0001"), 0, D("0.6"), kind=LINEAR, listed_type="futures_vanilla"
)


async def test_an_unknown_contract_type_is_refused_and_says_so_while_cancels_and_reduce_only_pass(
    tmp_path: Path,
) -> None:
    exchange = sim(Market(instruments=(*default_instruments(), ODD), seed=7))
    await exchange.start("127.0.0.1", 0)
    try:
        # Another program of the account holds a position and a resting order in it.
        async with KrakenClient(exchange.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET))) as direct:
            await direct.send_order(orderType="mkt", symbol=ODD.symbol, side="buy", size="100")
            resting = await direct.send_order(
                orderType="lmt", symbol=ODD.symbol, side="buy", size="100", limitPrice="0.5"
            )
        limits = {**LIMITS, "max_gross_notional": 10.0**9}
        async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
            account = service.accounts[0]
            await settle_position(service, exchange, ODD.symbol)
            shown = service.state_json()["accounts"][0]["instruments"]  # type: ignore[index]
            assert "futures_vanilla" in shown["unjudged"][ODD.symbol] and shown["unjudged_count"] == 1
            order = {
                "orderType": "lmt",
                "symbol": ODD.symbol,
                "side": "buy",
                "size": "10",
                "limitPrice": "0.55",
            }
            message = await refused(exchange, b, order, "instrumentUnknown")
            assert ODD.symbol in message and "futures_vanilla" in message and "reduce-only" in message
            # Its position counts in the gross notional, which cannot be worked out: new risk anywhere is
            # refused, naming it.
            message = await refused(
                exchange,
                b,
                {"orderType": "mkt", "symbol": "PF_XBTUSD", "side": "buy", "size": "0.1"},
                "instrumentUnknown",
            )
            assert ODD.symbol in message and "max_gross_notional" in message
            # A cancel passes.
            cancelled = await b.cancel_order(order_id=resting["sendStatus"]["order_id"])
            assert cancelled["cancelStatus"]["status"] == "cancelled", cancelled
            # A reduce-only order passes, and closes the position.
            closed = await b.send_order(
                orderType="mkt", symbol=ODD.symbol, side="sell", size="100", reduceOnly="true"
            )
            assert closed["sendStatus"]["status"] == "placed", closed
            assert ODD.symbol not in exchange.exchange.accounts["main"].positions
            await settle_position(service, exchange, ODD.symbol)
            await wait_for(lambda: account.exposure.ledger.count(ODD.symbol) == 0, 5.0, "the order gone")
            # Nothing of it counts any more: new risk elsewhere passes again.
            await b.send_order(orderType="mkt", symbol="PF_XBTUSD", side="buy", size="0.1")
    finally:
        await exchange.close()
