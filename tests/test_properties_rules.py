"""Properties of the guard's rules (guardian.gateway.rules), with hypothesis.

The limits are judged against an oracle in exact fractions that follows the rules as documented in
rules.py: size in contracts; notional = size x the highest price the order may trade at (its limit
price, the prices its limit-price offset may give, and the mark for mkt, trailing_stop and orders
without a limit price, and then also the stop price when no offset gives one); every limit, stop and offset price within `price_band_pct` of the mark.

**The edges are inside**: a size, notional or price exactly at its limit passes (rules.py: "A value
exactly at its limit passes"); the band runs from mark x (1 - pct/100) to mark x (1 + pct/100), both
ends included.

Orders are built so that every quantity the oracle needs is a short decimal: prices are the mark moved
by k percent, offsets j percent. Limits are floats, as in the configuration, chosen exactly at, above or
below what the order needs, so "inside every limit passes" and "outside one fails with that limit's
code" are both tested at the edge itself.

Deterministic: every test uses this module's settings (derandomize, no example database).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from guardian.account import Mode
from guardian.config import GuardConfig, SymbolLimits
from guardian.gateway.orders import (
    LIMIT_PRICED,
    STOP_PRICED,
    CancelAllIntent,
    CancelIntent,
    Intent,
    OrderIntent,
    parse_cancel,
    parse_cancel_all,
    parse_edit,
    parse_send,
)
from guardian.gateway.refusal import Refusal
from guardian.gateway.rules import check_batch, check_intent, check_limits, check_mode, merge_edit

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
FEW = settings(SETTINGS, max_examples=120)
LIMITS = ("max_order_size", "max_notional", "price_band_pct")  # in the order check_limits applies them
CODE = {
    "max_order_size": "orderSizeTooLarge",
    "max_notional": "notionalTooLarge",
    "price_band_pct": "priceOutsideBand",
}
# Each example probes one limit: exactly at what the order needs, a hair below it (a rule that
# understates what it measures lets that through), well below it, or well above it. The other two are
# off, well above, exactly at, or now and then well below too (then the first one checked speaks).
PROBES = ("edge", "just broken", "broken", "slack")
OTHERS = ("off", "slack", "edge", "off", "slack", "edge", "broken")
ORDER_TYPES = ("lmt", "post", "ioc", "fok", "mkt", "stp", "take_profit", "trailing_stop")
TRIGGERED = ("stp", "take_profit", "trailing_stop")
SYMBOLS = ("PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD")
ANY_SYMBOL = st.sampled_from(SYMBOLS)


def refusal_of(check: Any, *args: Any) -> Refusal | None:
    """The Refusal `check(*args)` raises, or None. Any other exception fails the test."""
    try:
        check(*args)
    except Refusal as exc:
        return exc
    return None


def outcome(check: Any, *args: Any) -> str | None:
    """The refusal code `check(*args)` answers with, or None."""
    refused = refusal_of(check, *args)
    return None if refused is None else refused.code


def as_decimal(value: Fraction) -> Decimal:
    """A fraction the generators keep to a short decimal, as that decimal (exact: checked)."""
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    assert Fraction(decimal) == value, f"{value} is not a short decimal: fix the generator"
    return decimal


def as_float(value: Fraction | Decimal) -> float:
    """A limit as the configuration holds it. The generators keep every limit to a short decimal, so
    the float means exactly that decimal to the guard (`Decimal(str(x))`); checked, not assumed."""
    decimal = as_decimal(value) if isinstance(value, Fraction) else value
    limit = float(decimal)
    assert Decimal(str(limit)) == decimal, f"{decimal} is not a short decimal: fix the generator"
    return limit


# ---- orders whose every quantity is a short decimal -----------------------------------------------------
def short_decimals(min_exponent: int, max_exponent: int, digits: int = 4) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda c, e: Decimal(c).scaleb(e),
        st.integers(min_value=1, max_value=10**digits - 1),
        st.integers(min_value=min_exponent, max_value=max_exponent),
    )


MARKS = short_decimals(-3, 3)
SIZES = short_decimals(-4, 2)
# How far from the mark a price is, in percent: -99.9 .. 99.9, one decimal place.
PERCENTS = st.integers(min_value=-999, max_value=999).map(lambda n: Decimal(n).scaleb(-1))


@dataclasses.dataclass(frozen=True)
class Case:
    """An order, the mark it is judged at, and what the oracle needs to know about it."""

    intent: OrderIntent
    mark: Decimal
    band_deviation: Fraction | None  # the largest |price - mark| / mark x 100 over the priced fields
    valuation: Fraction  # the price its notional is worked out at


def text(value: Decimal) -> str:
    return format(value, "f")


@st.composite
def cases(
    draw: st.DrawFn,
    symbol: st.SearchStrategy[str] = ANY_SYMBOL,
    order_types: tuple[str, ...] = ORDER_TYPES,
    offset_chance: float = 0.5,
) -> Case:
    mark = draw(MARKS)
    m = Fraction(mark)
    order_type = draw(st.sampled_from(order_types))
    fields: dict[str, str] = {
        "orderType": order_type,
        "symbol": draw(symbol),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "size": text(draw(SIZES)),
    }

    def at(k: Decimal) -> Decimal:
        return mark * (1 + k / 100)

    deviations: list[Fraction] = []
    prices: list[Fraction] = []  # what the notional may be valued at, besides the mark
    limit = None
    if order_type in LIMIT_PRICED or (order_type in TRIGGERED and draw(st.booleans())):
        k = draw(PERCENTS)
        limit = at(k)
        fields["limitPrice"] = text(limit)
        deviations.append(abs(Fraction(k)))
        prices.append(Fraction(limit))
    stop_k = None
    if order_type in STOP_PRICED or (order_type == "trailing_stop" and draw(st.booleans())):
        stop_k = draw(PERCENTS)
        fields["stopPrice"] = text(at(stop_k))
        deviations.append(abs(Fraction(stop_k)))
    if order_type == "trailing_stop":
        fields |= {"trailingStopMaxDeviation": "5", "trailingStopDeviationUnit": "PERCENT"}
    if stop_k is not None and limit is None and draw(st.floats(0, 1)) < offset_chance:
        j = abs(draw(PERCENTS))
        unit = draw(st.sampled_from(["PERCENT", "QUOTE_CURRENCY"]))
        offset = j if unit == "PERCENT" else mark * j / 100
        fields |= {
            "limitPriceOffsetValue": text(offset * draw(st.sampled_from([1, -1]))),
            "limitPriceOffsetUnit": unit,
        }
        stop = m * (1 + Fraction(stop_k) / 100)
        width = stop * Fraction(j) / 100 if unit == "PERCENT" else m * Fraction(j) / 100
        for offset_price in (stop - width, stop + width):
            deviations.append(abs(offset_price - m) / m * 100)
            prices.append(offset_price)
    if order_type in ("mkt", "trailing_stop") or limit is None:
        prices.append(m)
        if stop_k is not None and "limitPriceOffsetValue" not in fields:
            prices.append(m * (1 + Fraction(stop_k) / 100))  # triggered, it trades at about its stop
    intent = parse_send(fields)
    return Case(intent, mark, max(deviations) if deviations else None, max(prices))


def guard_with(limits: dict[str, float | None]) -> GuardConfig:
    """A guard with the limits named in `limits` (the others off)."""
    return GuardConfig(
        max_order_size=limits.get("max_order_size"),
        max_notional=limits.get("max_notional"),
        price_band_pct=limits.get("price_band_pct"),
    )


def needs_of(case: Case) -> dict[str, Fraction | None]:
    """What each limit must be at least for `case` to pass it (None: the limit has nothing to judge)."""
    assert case.intent.size is not None
    return {
        "max_order_size": Fraction(case.intent.size),
        "max_notional": Fraction(case.intent.size) * case.valuation,
        "price_band_pct": case.band_deviation,
    }


def just_below(need: Fraction) -> float:
    exact = as_decimal(need)
    return as_float(exact - Decimal(1).scaleb(exact.adjusted() - 12))


@st.composite
def configured(draw: st.DrawFn, case: Case) -> tuple[GuardConfig, str | None]:
    """A guard whose each limit is off, slack, exactly at what `case` needs, or broken by it (see
    PROBES); and the code the oracle expects: that of the first broken limit in the order check_limits
    applies them."""
    needs = needs_of(case)
    limits: dict[str, float | None] = {}
    expected = None
    probed = draw(st.sampled_from(LIMITS))
    for name in LIMITS:
        verdict = draw(st.sampled_from(PROBES if name == probed else OTHERS))
        need = needs[name]
        if need is None or need == 0:
            need = Fraction(0)  # nothing priced, or all at the mark: nothing can break the band
            verdict = "slack" if verdict in ("edge", "just broken", "broken") else verdict
        if verdict == "off":
            limits[name] = None
        elif verdict == "slack":
            limits[name] = as_float(need * 2 + 1)
        elif verdict == "edge":
            limits[name] = as_float(need)
        elif verdict == "just broken":
            limits[name] = just_below(need)
            expected = expected or CODE[name]
        else:
            limits[name] = as_float(need / 2)
            expected = expected or CODE[name]
    return guard_with(limits), expected


@SETTINGS
@given(data=st.data(), case=cases())
def test_an_order_inside_every_limit_passes_and_one_outside_a_limit_is_refused_with_its_code(
    data: st.DataObject, case: Case
) -> None:
    guard, expected = data.draw(configured(case))
    event(f"expected: {expected}")  # --hypothesis-show-statistics shows that every code is reached
    assert outcome(check_limits, case.intent, guard, case.mark) == expected


def assert_each_limit_has_its_edge_exactly_where_the_order_needs_it(case: Case) -> None:
    for name, need in needs_of(case).items():
        if not need:  # nothing to judge, or every price at the mark: the tightest limit passes
            tightest = guard_with({name: 1e-9})
            assert outcome(check_limits, case.intent, tightest, case.mark) is None, name
            continue
        at_edge = guard_with({name: as_float(need)})
        beyond = guard_with({name: just_below(need)})
        assert outcome(check_limits, case.intent, at_edge, case.mark) is None, name
        assert outcome(check_limits, case.intent, beyond, case.mark) == CODE[name], name


@SETTINGS
@given(case=cases())
def test_each_limit_alone_passes_an_order_exactly_at_it_and_refuses_one_a_hair_beyond(case: Case) -> None:
    assert_each_limit_has_its_edge_exactly_where_the_order_needs_it(case)


@FEW
@given(case=cases(order_types=TRIGGERED, offset_chance=0.8))
def test_a_triggered_order_is_judged_at_every_price_it_may_trade_at(case: Case) -> None:
    """The same, on stops, take-profits and trailing stops, most with a limit-price offset: both prices
    the offset may give count, for the band and for the notional."""
    assert_each_limit_has_its_edge_exactly_where_the_order_needs_it(case)


@SETTINGS
@given(
    mark=MARKS,
    pct=st.integers(min_value=1, max_value=500).map(lambda n: Decimal(n).scaleb(-1)),
    field=st.sampled_from(["limitPrice", "stopPrice"]),
)
def test_the_band_holds_on_both_sides_and_its_edges_are_inside(
    mark: Decimal, pct: Decimal, field: str
) -> None:
    """A price exactly at mark x (1 +/- pct/100) passes; the least step beyond either edge is refused."""
    guard = GuardConfig(price_band_pct=as_float(pct))
    order_type = "lmt" if field == "limitPrice" else "stp"
    step = Decimal(1).scaleb(mark.adjusted() - 12)
    for edge, beyond in ((mark * (1 - pct / 100), -step), (mark * (1 + pct / 100), step)):
        fields = {
            "orderType": order_type,
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": "1",
            field: text(edge),
        }
        assert outcome(check_limits, parse_send(fields), guard, mark) is None, edge
        fields[field] = text(edge + beyond)
        assert outcome(check_limits, parse_send(fields), guard, mark) == "priceOutsideBand", edge + beyond


@SETTINGS
@given(
    data=st.data(),
    case=cases(symbol=st.sampled_from(["PF_XBTUSD", "pf_xbtusd", "Pf_XbtUsd"])),
    key=st.sampled_from(["PF_XBTUSD", "pf_xbtusd"]),
    override=st.sets(st.sampled_from(LIMITS)),
)
def test_a_per_symbol_limit_wins_over_the_account_limit_and_only_for_its_symbol(
    data: st.DataObject, case: Case, key: str, override: set[str]
) -> None:
    """Judging with account limits A and a per-symbol override B (keyed in any case) is judging with the
    flat limits "B where set, else A"; another symbol is judged by A alone."""
    own, _ = data.draw(configured(case))
    account, _ = data.draw(configured(case))
    per_symbol = SymbolLimits(**{name: getattr(own, name) if name in override else None for name in LIMITS})
    guard = dataclasses.replace(account, per_symbol=MappingProxyType({key: per_symbol}))
    effective = dataclasses.replace(
        account, **{name: getattr(own, name) for name in override if getattr(own, name) is not None}
    )
    assert outcome(check_limits, case.intent, guard, case.mark) == outcome(
        check_limits, case.intent, effective, case.mark
    )
    other = dataclasses.replace(case.intent, symbol="PF_ETHUSD")
    assert outcome(check_limits, other, guard, case.mark) == outcome(check_limits, other, account, case.mark)


@SETTINGS
@given(
    case=cases(),
    listed=st.lists(st.sampled_from(["PF_XBTUSD", "pf_ethusd", "PF_SOLUSD", "PI_XBTUSD"]), max_size=3),
)
def test_only_listed_symbols_pass_whatever_their_case(case: Case, listed: list[str]) -> None:
    assert case.intent.symbol is not None
    allowed = case.intent.symbol.upper() in {s.upper() for s in listed}
    guard = GuardConfig(symbols=tuple(listed), max_order_size=1.0)  # the symbol is judged before the size
    code = outcome(check_limits, case.intent, guard, case.mark)
    assert (code != "symbolNotAllowed") == allowed


UNUSABLE_MARKS = st.sampled_from(
    [
        None,
        Decimal(0),
        Decimal("-0"),
        Decimal(-1),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("sNaN"),
    ]
)


@SETTINGS
@given(data=st.data(), case=cases(), mark=UNUSABLE_MARKS)
def test_without_a_usable_mark_only_the_rules_that_need_one_refuse(
    data: st.DataObject, case: Case, mark: Decimal | None
) -> None:
    """With every limit that is on slack (the order passes with its mark), taking the mark away refuses
    with markPriceUnavailable exactly when max_notional is on and the order has no limit price to value
    it at (or is mkt/trailing_stop), or price_band_pct is on and the order has a price to judge. A mark
    that is not a price (0, negative, NaN, infinite) is no mark."""
    on = data.draw(st.sets(st.sampled_from(LIMITS)))
    needs = needs_of(case)
    guard = guard_with({name: as_float((needs[name] or Fraction(0)) * 2 + 1) for name in on})
    assert outcome(check_limits, case.intent, guard, case.mark) is None
    notional_needs_mark = (
        case.intent.order_type in ("mkt", "trailing_stop") or case.intent.limit_price is None
    )
    needs_mark = ("max_notional" in on and notional_needs_mark) or (
        "price_band_pct" in on and case.band_deviation is not None
    )
    assert outcome(check_limits, case.intent, guard, mark) == ("markPriceUnavailable" if needs_mark else None)


@SETTINGS
@given(data=st.data(), case=cases(), mark=UNUSABLE_MARKS)
def test_an_unusable_mark_is_judged_exactly_as_no_mark(
    data: st.DataObject, case: Case, mark: Decimal | None
) -> None:
    guard, _ = data.draw(configured(case))
    assert outcome(check_limits, case.intent, guard, mark) == outcome(check_limits, case.intent, guard, None)


# ---- modes ----------------------------------------------------------------------------------------------
@st.composite
def intents(draw: st.DrawFn) -> Intent:
    """Any intent a request can carry: a send (reduce-only or not), an edit merged with its order or
    not yet merged, a cancel, a cancel-all."""
    kind = draw(st.sampled_from(["send", "merged edit", "edit", "cancel", "cancel all"]))
    if kind == "cancel":
        return parse_cancel({"order_id": "o-1"})
    if kind == "cancel all":
        return parse_cancel_all(draw(st.sampled_from([{}, {"symbol": "PF_XBTUSD"}])))
    send = dataclasses.replace(draw(cases()).intent, reduce_only=draw(st.booleans()))
    if kind == "send":
        return send
    edit = parse_edit({"orderId": "o-1", "size": text(draw(SIZES))})
    return merge_edit(send, edit) if kind == "merged edit" else edit


@SETTINGS
@given(intent=intents(), mode=st.sampled_from(list(Mode)))
def test_halted_lets_only_cancels_through_and_reduce_only_only_reduce_only_orders_and_cancels(
    intent: Intent, mode: Mode
) -> None:
    is_cancel = isinstance(intent, CancelIntent | CancelAllIntent)
    if mode is Mode.ACTIVE or is_cancel:
        expected = None
    elif mode is Mode.HALTED:
        expected = "tradingHalted"
    else:
        assert isinstance(intent, OrderIntent)
        expected = None if intent.reduce_only is True else "reduceOnlyMode"
    assert outcome(check_mode, mode, intent) == expected
    assert outcome(check_mode, mode.value, intent) == expected  # the contract's string means the same


@SETTINGS
@given(data=st.data(), intent=intents(), mark=st.none() | MARKS)
def test_the_mode_is_judged_before_the_limits_and_cancels_pass_any_limits(
    data: st.DataObject, intent: Intent, mark: Decimal | None
) -> None:
    """Halted refuses every send and edit as tradingHalted, even one that breaks every limit or has no
    mark; a cancel passes whatever the limits and the mark."""
    strict = GuardConfig(symbols=("PI_NONE",), max_order_size=1e-9, max_notional=1e-9, price_band_pct=1e-9)
    if isinstance(intent, CancelIntent | CancelAllIntent):
        assert outcome(check_intent, intent, data.draw(st.sampled_from(list(Mode))), strict, mark) is None
    else:
        assert outcome(check_intent, intent, Mode.HALTED, strict, mark) == "tradingHalted"


# ---- batches ----------------------------------------------------------------------------------------------
@st.composite
def batches(
    draw: st.DrawFn,
) -> tuple[list[Intent], dict[str, OrderIntent], GuardConfig, dict[str, Decimal | None]]:
    """Sends, cancels and edits of distinct open orders (some unknown to guardian), a guard that some of
    them break, and marks (some missing) keyed in any case."""
    anchor = draw(cases(symbol=st.just("PF_XBTUSD")))
    guard, _ = draw(configured(anchor))
    marks: dict[str, Decimal | None] = {
        draw(st.sampled_from([s, s.lower()])): draw(st.none() | st.just(anchor.mark) | MARKS) for s in SYMBOLS
    }
    items: list[Intent] = []
    originals: dict[str, OrderIntent] = {}
    for index in range(draw(st.integers(min_value=0, max_value=8))):
        kind = draw(st.sampled_from(["send", "edit", "unknown edit", "cancel"]))
        if kind == "cancel":
            items.append(parse_cancel({"cliOrdId": f"c-{index}"}))
            continue
        order = dataclasses.replace(
            draw(cases()).intent, reduce_only=draw(st.booleans()), order_tag=str(index), cli_ord_id=None
        )
        if kind == "send":
            items.append(order)
            continue
        order_id = f"o-{index}"
        if kind == "edit":
            originals[order_id] = dataclasses.replace(order, order_tag=None, order_id=order_id)
        items.append(
            parse_edit({"orderId": order_id, **draw(st.sampled_from([{}, {"size": text(draw(SIZES))}]))})
        )
    return items, originals, guard, marks


def mark_of(marks: dict[str, Decimal | None], intent: OrderIntent) -> Decimal | None:
    assert intent.symbol is not None
    return {symbol.upper(): mark for symbol, mark in marks.items()}.get(intent.symbol.upper())


@SETTINGS
@given(batch=batches(), mode=st.sampled_from(list(Mode)))
def test_a_batch_is_refused_iff_an_item_breaks_a_rule_on_its_own_and_the_refusal_names_the_first(
    batch: tuple[list[Intent], dict[str, OrderIntent], GuardConfig, dict[str, Decimal | None]], mode: Mode
) -> None:
    items, originals, guard, marks = batch

    def alone(intent: Intent) -> str | None:
        if isinstance(intent, OrderIntent) and intent.kind == "edit":
            original = originals.get(intent.order_id or "")
            if original is None:
                return "tradingHalted" if mode is Mode.HALTED else "invalidArgument"
            intent = merge_edit(original, intent)
        mark = mark_of(marks, intent) if isinstance(intent, OrderIntent) else None
        return outcome(check_intent, intent, mode, guard, mark)

    codes = [alone(item) for item in items]
    first = next((index for index, code in enumerate(codes) if code is not None), None)
    refused = refusal_of(check_batch, items, mode, guard, marks, originals)
    if first is None:
        assert refused is None, refused
        return
    assert refused is not None, (first, codes)
    assert (refused.code, refused.item) == (codes[first], first)
    item = items[first]
    assert refused.order_tag == (item.order_tag if isinstance(item, OrderIntent) else None)
    assert refused.message.startswith(f"batchOrder[{first}]")


@FEW
@given(batch=batches())
def test_a_halted_batch_passes_only_when_it_holds_nothing_but_cancels(
    batch: tuple[list[Intent], dict[str, OrderIntent], GuardConfig, dict[str, Decimal | None]],
) -> None:
    items, originals, guard, marks = batch
    cancels = [item for item in items if isinstance(item, CancelIntent)]
    code = outcome(check_batch, items, Mode.HALTED, guard, marks, originals)
    assert code == (None if len(cancels) == len(items) else "tradingHalted")
