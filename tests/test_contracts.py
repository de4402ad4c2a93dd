"""Each contract kind's arithmetic (`guardian.contracts`), the instruments list that picks it, and the
account state's PnL valued with it: hand-worked examples, then properties against a plain recomputation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.contracts import (
    Contract,
    Kind,
    inverse_entry,
    inverse_notional,
    inverse_pnl,
    inverse_value,
    linear_entry,
    linear_notional,
    linear_pnl,
    parse,
)
from guardian.gateway.instruments import Instruments
from guardian.gateway.ledger import Ledger
from guardian.stream.state import AccountState, Fill, Settlement

D = Decimal
DAY = 1_780_000_000.0
MS = int(DAY * 1000)

PI = Contract("PI_XBTUSD", "futures_inverse", Kind.INVERSE, D(1), "XBT", "USD", D("0.5"), 0)
PF = Contract("PF_XBTUSD", "flexible_futures", Kind.LINEAR, D(1), "XBT", "USD", D(1), 4)
FI = Contract("FI_XBTUSD_260925", "futures_inverse", Kind.INVERSE, D(1), "XBT", "USD", last_trading=DAY - 60)
BIG = Contract("PF_BIGUSD", "flexible_futures", Kind.LINEAR, D(10), "BIG", "USD")


# ---- hand-worked ---------------------------------------------------------------------------------------
def test_an_inverse_long_from_50000_to_55000_makes_its_face_value_over_the_two_prices() -> None:
    # 10,000 USD of contracts: 0.2 XBT at 50,000, 0.181818... XBT at 55,000; the difference is the profit.
    pnl = inverse_pnl(D(10_000), D(1), D(50_000), D(55_000))
    assert round(pnl, 12) == round(D(10_000) / 50_000 - D(10_000) / 55_000, 12)
    assert round(pnl * 55_000, 6) == D(1000)  # worth 1,000 USD at the exit price
    assert inverse_pnl(D(-10_000), D(1), D(50_000), D(55_000)) == -pnl  # a short loses the same
    assert inverse_notional(D(10_000), D(1)) == D(10_000)  # whatever the price
    assert inverse_value(D(10_000), D(1), D(50_000)) == D("0.2")


def test_a_linear_long_from_50000_to_55000_makes_size_times_the_move() -> None:
    assert linear_pnl(D("0.2"), D(1), D(50_000), D(55_000)) == D(1000)
    assert linear_pnl(D("-0.2"), D(1), D(50_000), D(55_000)) == D(-1000)
    assert linear_notional(D("0.2"), D(1), D(50_000)) == D(10_000)
    assert BIG.notional(D(2), D(3)) == D(60)  # contractSize 10: 20 units at 3


def test_average_entries_are_arithmetic_for_linear_and_harmonic_for_inverse() -> None:
    assert linear_entry(D(1), D(100), D(1), D(200)) == D(150)
    # 100 USD at 100 (1 unit) and 100 USD at 200 (0.5 unit): 200 USD for 1.5 units -> 133.33...
    assert round(inverse_entry(D(100), D(100), D(100), D(200)), 10) == round(D(200) / D("1.5"), 10)


def test_contract_methods_pick_the_kinds_arithmetic() -> None:
    assert PI.margin_currency == "XBT" and PF.margin_currency == "USD"
    assert PI.unit_value(None) == D(1) and PF.unit_value(None) is None and PF.unit_value(D(7)) == D(7)
    assert PI.to_usd(D("0.01"), D(60_000)) == D(600) and PI.to_usd(D(1), None) is None
    assert PF.to_usd(D(5), None) == D(5)
    assert FI.expired(DAY) and not PI.expired(DAY) and not FI.expired(DAY - 120)
    assert FI.expired(DAY - 120, margin_s=61)


# ---- the instruments list ------------------------------------------------------------------------------
ROWS: list[dict[str, Any]] = [
    {
        "symbol": "PI_XBTUSD",
        "type": "futures_inverse",
        "base": "XBT",
        "quote": "USD",
        "tickSize": 0.5,
        "contractSize": 1,
        "contractValueTradePrecision": 0,
        "tradeable": True,
    },
    {
        "symbol": "FI_XBTUSD_220930",
        "type": "futures_inverse",
        "pair": "XBT:USD",
        "tickSize": 0.5,
        "contractSize": 1,
        "lastTradingTime": "2022-09-30T15:00:00.000Z",
    },
    {
        "symbol": "PF_ETHUSD",
        "type": "flexible_futures",
        "base": "ETH",
        "quote": "USD",
        "tickSize": 0.1,
        "contractSize": 1,
        "contractValueTradePrecision": 3,
    },
    {
        "symbol": "FF_XBTUSD_260925",
        "type": "flexible_futures",
        "contractSize": 1,
        "lastTradingTime": "2026-09-25T16:00:00Z",
        "extraField": {"ignored": True},
    },
    {"symbol": "PV_XRPXBT", "type": "futures_vanilla", "contractSize": 1},
    {"symbol": "PF_NEWUSD", "type": "some_new_type", "contractSize": 1},
    {"symbol": "PF_BADUSD", "type": "flexible_futures", "contractSize": "abc"},
    {"symbol": "PF_EURUSDT", "type": "flexible_futures", "base": "EUR", "quote": "USDT", "contractSize": 1},
    {"symbol": "in_xbtusd", "type": "spot index", "tradeable": False},
    "not a row",
]


def test_the_list_judges_known_types_and_names_every_other_with_why() -> None:
    got: list[str] = []
    found = Instruments(None, clock=lambda: DAY)
    found.listeners.append(got.append)
    assert found.judge("PI_XBTUSD") is not None  # not read yet: refused, and says so
    assert "not read the exchange's instruments yet" in str(found.judge("PI_XBTUSD"))
    found.update(ROWS)
    assert set(found.contracts) == {"PI_XBTUSD", "FI_XBTUSD_220930", "PF_ETHUSD", "FF_XBTUSD_260925"}
    assert found.contract("pi_xbtusd") == Contract(
        "PI_XBTUSD", "futures_inverse", Kind.INVERSE, D(1), "XBT", "USD", D("0.5"), 0, None, True
    )
    fi = found.contract("FI_XBTUSD_220930")
    assert fi is not None and fi.base == "XBT" and fi.last_trading == 1664550000.0
    ff = found.contract("FF_XBTUSD_260925")
    assert ff is not None and ff.kind is Kind.LINEAR and (ff.base, ff.quote) == ("XBT", "USD")
    assert set(found.unjudged) == {"PV_XRPXBT", "PF_NEWUSD", "PF_BADUSD", "PF_EURUSDT"}  # not the index
    assert found.judge("PI_XBTUSD") is None
    for symbol, words in [
        ("PV_XRPXBT", "type 'futures_vanilla' is not one guardian judges"),
        ("PF_NEWUSD", "some_new_type"),
        ("PF_BADUSD", "contractSize"),
        ("PF_EURUSDT", "USDT"),
        ("PF_NOPEUSD", "do not list it"),
    ]:
        refusal = found.judge(symbol)
        assert refusal is not None and refusal.code == "instrumentUnknown" and words in refusal.message
    expired = found.judge("FI_XBTUSD_220930")
    assert expired is not None and expired.code == "instrumentExpired" and "2022-09-30" in expired.message
    assert sorted(got) == sorted(found.contracts)  # each new contract told once
    got.clear()
    found.update([r for r in ROWS if isinstance(r, dict) and r["symbol"] != "PF_ETHUSD"])
    assert got == ["PF_ETHUSD"]  # gone: told
    snapshot = found.snapshot()
    assert snapshot["contracts"] == 3 and snapshot["expired"] == ["FI_XBTUSD_220930"]
    assert snapshot["unjudged_count"] == 4


def test_a_row_parses_to_none_with_why_rather_than_a_guess() -> None:
    assert parse({"type": "futures_inverse"}) == (None, "no symbol")
    contract, why = parse(
        {"symbol": "FI_XUSD", "type": "futures_inverse", "contractSize": 1, "lastTradingTime": "x"}
    )
    assert contract is None and why is not None and "lastTradingTime" in why
    contract, why = parse({"symbol": "PI_XBTUSD", "type": "futures_inverse", "contractSize": 0})
    assert contract is None and why is not None and "positive" in why
    contract, _ = parse({"symbol": "PI_ETHUSD", "type": "futures_inverse", "contractSize": True})
    assert contract is None  # a bool is no number


# ---- the account state, valued per contract ------------------------------------------------------------
def fill(fill_id: str, symbol: str, *, buy: bool, qty: Any, price: Any, fee: Any = 0) -> dict[str, Any]:
    return {
        "instrument": symbol,
        "time": MS,
        "price": price,
        "seq": 1,
        "buy": buy,
        "qty": qty,
        "order_id": f"o-{fill_id}",
        "fill_id": fill_id,
        "fill_type": "maker",
        "fee_paid": fee,
        "fee_currency": "BTC" if symbol.startswith(("PI_", "FI_")) else "USD",
    }


CONTRACTS = {c.symbol: c for c in (PI, PF, FI, BIG)}


def make(rates: dict[str, Decimal] | None = None, *, clock: float = DAY) -> AccountState:
    rates = rates if rates is not None else {"PI_XBTUSD": D(60_000), "FI_XBTUSD_260925": D(60_000)}
    s = AccountState(clock=lambda: clock, contracts=CONTRACTS.get, rate=rates.get)
    s.apply({"feed": "fills_snapshot", "fills": []})
    return s


def test_an_inverse_round_trip_realises_bitcoin_and_the_day_values_it_at_the_mark() -> None:
    rates = {"PI_XBTUSD": D(55_000)}
    s = make(rates)
    s.apply(
        {"feed": "fills", "fills": [fill("a", "PI_XBTUSD", buy=True, qty=10_000, price=50_000, fee="0.0001")]}
    )
    assert s.daily_pnl() == D("-0.0001") * 55_000  # the fee alone (read: the next fill must count)
    [closed] = s.apply(
        {"feed": "fills", "fills": [fill("b", "PI_XBTUSD", buy=False, qty=10_000, price=55_000)]}
    )
    assert isinstance(closed, Fill)
    expected = D(10_000) / 50_000 - D(10_000) / 55_000
    assert round(closed.realized_pnl, 15) == round(expected, 15)
    pnl = s.daily_pnl()
    assert pnl is not None and round(pnl, 6) == round((expected - D("0.0001")) * 55_000, 6)
    rates["PI_XBTUSD"] = D(60_000)  # bitcoin worth more: so is the bitcoin made
    pnl = s.daily_pnl()
    assert pnl is not None and round(pnl, 6) == round((expected - D("0.0001")) * 60_000, 6)
    view = s.view()
    assert view.realized_by == {"PI_XBTUSD": closed.realized_pnl} and view.fees_by == {
        "PI_XBTUSD": D("0.0001")
    }
    del rates["PI_XBTUSD"]  # no mark: the day's PnL cannot be valued, and says why
    assert s.daily_pnl() is None
    gap = s.pnl_gap()
    assert gap is not None and gap[0] == "markPriceUnavailable" and "XBT" in gap[1]


def test_inverse_positions_pnl_is_in_bitcoin_and_linear_ones_in_usd() -> None:
    s = make()
    s.apply(
        {
            "feed": "open_positions",
            "positions": [
                {
                    "instrument": "PI_XBTUSD",
                    "balance": 6000,
                    "entry_price": 50_000,
                    "mark_price": 60_000,
                    "pnl": "0.02",
                },
                {
                    "instrument": "PF_XBTUSD",
                    "balance": "0.1",
                    "entry_price": 50_000,
                    "mark_price": 60_000,
                    "pnl": 1000,
                },
            ],
        }
    )
    assert s.daily_pnl() == D(1000) + D("0.02") * 60_000
    # without the feed's figure, worked out from entry and mark
    s.apply(
        {
            "feed": "open_positions",
            "positions": [
                {"instrument": "PI_XBTUSD", "balance": 6000, "entry_price": 50_000, "mark_price": 60_000},
            ],
        }
    )
    pnl = s.daily_pnl()
    assert pnl is not None and round(pnl, 6) == round(
        D(1000) + inverse_pnl(D(6000), D(1), D(50_000), D(60_000)) * 60_000, 6
    )


def test_a_symbol_of_unknown_contract_leaves_the_day_unvalued_and_says_so() -> None:
    s = make()
    s.apply({"feed": "fills", "fills": [fill("a", "PX_ODDUSD", buy=True, qty=1, price=10)]})
    s.apply({"feed": "fills", "fills": [fill("b", "PX_ODDUSD", buy=False, qty=1, price=12)]})
    assert s.daily_pnl() is None
    gap = s.pnl_gap()
    assert gap is not None and gap[0] == "instrumentUnknown" and "PX_ODDUSD" in gap[1]
    s2 = make()
    s2.apply({"feed": "open_positions", "positions": [{"instrument": "PX_ODDUSD", "balance": 1, "pnl": 5}]})
    gap = s2.pnl_gap()
    assert s2.daily_pnl() is None and gap is not None and gap[0] == "instrumentUnknown"


def test_a_fixed_maturity_gone_after_expiry_is_settled_at_the_last_mark_and_journaled() -> None:
    s = make({"FI_XBTUSD_260925": D(70_000)})
    s.apply(
        {
            "feed": "open_positions",
            "positions": [
                {
                    "instrument": "FI_XBTUSD_260925",
                    "balance": -7000,
                    "entry_price": 70_000,
                    "mark_price": 65_000,
                },
            ],
        }
    )
    events = s.apply(
        {"feed": "open_positions", "positions": [{"instrument": "FI_XBTUSD_260925", "balance": 0}]}
    )
    [settled] = events
    assert isinstance(settled, Settlement) and settled.price == D(65_000) and settled.currency == "XBT"
    assert settled.realized_pnl == inverse_pnl(D(-7000), D(1), D(70_000), D(65_000))
    assert settled.realized_pnl > 0  # a short, and the price fell
    assert (
        s.view().settlements == (settled,)
        and s.view().realized_by["FI_XBTUSD_260925"] == settled.realized_pnl
    )


def test_a_perpetual_or_a_live_maturity_going_to_zero_is_no_settlement() -> None:
    s = make(clock=DAY - 3600)  # before FI's last trading time
    for symbol in ("FI_XBTUSD_260925", "PI_XBTUSD"):
        s.apply(
            {"feed": "open_positions", "positions": [{"instrument": symbol, "balance": 5, "entry_price": 1}]}
        )
        assert s.apply({"feed": "open_positions", "positions": [{"instrument": symbol, "balance": 0}]}) == []


def test_reconciliation_settles_a_maturity_rest_no_longer_lists() -> None:
    s = make()
    s.reconcile(None, [{"symbol": "FI_XBTUSD_260925", "side": "long", "size": 100, "price": 50_000}], None)
    s.reconcile(None, [], None)
    [settled] = s.take_settlements()
    assert isinstance(settled, Settlement) and settled.size == 100 and settled.price == D(60_000)


# ---- properties: realised PnL against the cash flows ------------------------------------------------------
@st.composite
def flat_paths(draw: st.DrawFn) -> list[tuple[bool, Decimal, Decimal]]:
    """Fills (buy, size, price) that end flat: every position opened is closed by the last fill."""
    fills: list[tuple[bool, Decimal, Decimal]] = []
    position = D(0)
    for _ in range(draw(st.integers(1, 12))):
        buy = draw(st.booleans())
        size = D(draw(st.integers(1, 5000)))
        fills.append((buy, size, D(draw(st.integers(100, 200_000))) / 2))
        position += size if buy else -size
    if position:
        fills.append((position < 0, abs(position), D(draw(st.integers(100, 200_000))) / 2))
    return fills


@settings(max_examples=150, deadline=None)
@given(path=flat_paths(), inverse=st.booleans(), size=st.sampled_from([D(1), D(10), D("0.001")]))
def test_realised_pnl_over_a_path_that_ends_flat_equals_its_cash_flows(
    path: list[tuple[bool, Decimal, Decimal]], inverse: bool, size: Decimal
) -> None:
    """Whatever the order of opens, adds, reduces and flips: with the right average entry, what a path
    realises is what its fills paid and got (a wrong average, arithmetic for inverse, breaks this)."""
    kind = Kind.INVERSE if inverse else Kind.LINEAR
    contract = Contract("X_TEST", "t", kind, size, "XBT", "USD")
    s = AccountState(clock=lambda: DAY, contracts={"X_TEST": contract}.get, rate=lambda _: D(1))
    s.apply({"feed": "fills_snapshot", "fills": []})
    for index, (buy, qty, price) in enumerate(path):
        s.apply(
            {"feed": "fills", "fills": [fill(f"f{index}", "X_TEST", buy=buy, qty=str(qty), price=str(price))]}
        )
    if inverse:  # long pays qty/price in value at entry, gets it back at exit
        flows = sum((qty / price * (1 if buy else -1) for buy, qty, price in path), D(0)) * size
    else:
        flows = sum((qty * price * (-1 if buy else 1) for buy, qty, price in path), D(0)) * size
    realised = s.view().realized_by.get("X_TEST", D(0))
    assert abs(realised - flows) <= abs(flows) * D("1e-20") + D("1e-18")


# ---- the ledger's gross notional, per contract ------------------------------------------------------------
class Marks:
    def __init__(self, marks: dict[str, Decimal]) -> None:
        self.marks = marks

    def quote(self, symbol: str) -> tuple[Decimal, float] | None:
        found = self.marks.get(symbol)
        return None if found is None else (found, 1e12)

    def now(self) -> float:
        return 0.0


def test_the_gross_notional_counts_inverse_orders_and_positions_at_face_value_and_linear_at_the_mark() -> (
    None
):
    from guardian.stream.state import OpenOrder

    marks = Marks({"PF_BIGUSD": D(3)})
    known = dict(CONTRACTS)
    ledger = Ledger(marks, contracts=known.get)
    ledger.order_changed("a", OpenOrder("a", "PI_XBTUSD", "buy", D(1000), limit_price=D(50_000)))
    ledger.order_changed("b", OpenOrder("b", "PI_XBTUSD", "sell", D(500)))  # no price: face value anyway
    ledger.position_changed("PI_XBTUSD", D(-2000), D(-2500))
    ledger.order_changed("c", OpenOrder("c", "PF_BIGUSD", "buy", D(2), limit_price=D(4)))
    assert ledger.gross() == (D(1000 + 500 + 2500) + D(2) * 4 * 10, None)
    assert ledger.value("PI_XBTUSD", D(7), None) == D(7) and ledger.value("PF_BIGUSD", D(1), D(1)) == D(30)
    ledger.order_changed("d", OpenOrder("d", "PI_XBTUSD", "buy", D(250)))  # O(1) into a priced part
    assert ledger.gross() == (D(4250) + 80, None)
    marks.marks.clear()
    ledger.mark_changed("PF_BIGUSD")
    assert ledger.gross() == (D(4250) + 80, None)  # c has its own price; inverse needs none
    ledger.order_changed("e", OpenOrder("e", "PF_BIGUSD", "buy", D(1)))  # needs the mark: blind
    assert ledger.gross()[1] == "PF_BIGUSD"
    del known["PI_XBTUSD"]
    ledger.contract_changed("PI_XBTUSD")
    assert ledger.gross()[1] == "PF_BIGUSD"  # (the lowest named: both are blind now)
    ledger.order_changed("e", None)
    assert ledger.gross()[1] == "PI_XBTUSD" and ledger.value("PI_XBTUSD", D(1), D(1)) is None
    known["PI_XBTUSD"] = PI
    ledger.contract_changed("PI_XBTUSD")
    assert ledger.gross() == (D(4250) + 80, None)


@pytest.mark.parametrize("contract", [PI, PF, BIG])
def test_notional_is_linear_in_size(contract: Contract) -> None:
    assert contract.notional(D(4), D(100)) == 4 * contract.notional(D(1), D(100))


async def test_a_failed_read_is_retried_soon_and_backs_off_no_further_than_its_cap() -> None:
    """The exchange down at start: every new order is refused until the list is read, so the retries
    must not grow to the refresh interval (pure unit: a client that fails five times)."""
    import asyncio
    import time

    from guardian.errors import ExchangeError

    class Failing:
        def __init__(self) -> None:
            self.calls: list[float] = []

        async def instruments(self) -> list[Any]:
            self.calls.append(time.monotonic())
            if len(self.calls) <= 5:
                raise ExchangeError("exchange down")
            return ROWS

    client = Failing()
    found = Instruments(client, refresh_s=3600.0, clock=lambda: DAY)  # type: ignore[arg-type]
    task = asyncio.create_task(found.run(first_s=0.05, max_s=0.08))
    try:
        assert await found.wait_loaded(5.0)
    finally:
        task.cancel()
    gaps = [b - a for a, b in zip(client.calls, client.calls[1:], strict=False)]
    assert len(client.calls) == 6 and found.failures == 5 and found.last_error is None
    assert gaps[0] >= 0.04 and all(g < 0.3 for g in gaps)  # doubling would reach 0.8 s: capped
    assert found.judge("PI_XBTUSD") is None
