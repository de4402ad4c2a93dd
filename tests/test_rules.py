"""The guard's rules (guardian.gateway.rules): modes, limits, edits merged with their orders, batches.

Pure units. hypothesis is not installed, so the "anything inside every limit passes, anything outside
one fails with that limit's code" properties are table-driven: grids of values at, just inside and just
outside each bound, judged against an independent oracle in exact rational arithmetic (fractions).
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import pytest

from guardian.account import Mode
from guardian.config import GuardConfig, SymbolLimits
from guardian.gateway.orders import (
    CancelIntent,
    OrderIntent,
    parse_batch,
    parse_cancel,
    parse_cancel_all,
    parse_edit,
    parse_send,
)
from guardian.gateway.refusal import Refusal
from guardian.gateway.rules import (
    MAX_BATCH_ITEMS,
    check_batch,
    check_intent,
    check_limits,
    check_mode,
    limits_for,
    merge_edit,
)

MARK = Decimal(50000)
LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1", "limitPrice": "50000"}


def order(**fields: Any) -> OrderIntent:
    """A sendorder intent: LMT with `fields` changed (None removes a field)."""
    merged = {**LMT, **fields}
    return parse_send({k: v for k, v in merged.items() if v is not None})


def mkt(size: str = "1") -> OrderIntent:
    return order(**{"orderType": "mkt", "limitPrice": None, "size": size})


def stop(stop_price: str = "50000", **fields: Any) -> OrderIntent:
    return order(
        **{"orderType": "stp", "side": "sell", "limitPrice": None, "stopPrice": stop_price, **fields}
    )


def trailing(**fields: Any) -> OrderIntent:
    return order(
        **{
            "orderType": "trailing_stop",
            "side": "sell",
            "limitPrice": None,
            "trailingStopMaxDeviation": "5",
            "trailingStopDeviationUnit": "PERCENT",
            **fields,
        }
    )


def guard(**settings: Any) -> GuardConfig:
    per_symbol = settings.pop("per_symbol", {})
    return GuardConfig(**settings, per_symbol=MappingProxyType(per_symbol))


def outcome(intent: OrderIntent, config: GuardConfig, mark: Decimal | None) -> str | None:
    """The refusal code check_limits answers with, or None if the order passes."""
    try:
        check_limits(intent, config, mark)
    except Refusal as exc:
        return exc.code
    return None


def refused(code: str, check: Any, *args: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        check(*args)
    assert caught.value.code == code, caught.value.message
    return caught.value


# ---- modes --------------------------------------------------------------------------------------------
SEND = order()
SEND_REDUCE_ONLY = order(reduceOnly="true", side="sell")
EDIT = parse_edit({"orderId": "o-1", "limitPrice": "49000"})
INTENTS: dict[str, Any] = {
    "send": SEND,
    "send reduce-only": SEND_REDUCE_ONLY,
    "edit of a reduce-only order": merge_edit(SEND_REDUCE_ONLY, EDIT),
    "edit of an ordinary order": merge_edit(SEND, EDIT),
    "edit not yet merged": EDIT,
    "cancel": parse_cancel({"order_id": "o-1"}),
    "cancel all": parse_cancel_all({}),
}
LET_THROUGH: dict[Mode, set[str]] = {
    Mode.ACTIVE: set(INTENTS),
    Mode.REDUCE_ONLY: {"send reduce-only", "edit of a reduce-only order", "cancel", "cancel all"},
    Mode.HALTED: {"cancel", "cancel all"},
}
MODE_CODE = {Mode.REDUCE_ONLY: "reduceOnlyMode", Mode.HALTED: "tradingHalted"}


@pytest.mark.parametrize(("mode", "name"), list(itertools.product(Mode, INTENTS)))
def test_each_mode_lets_through_exactly_what_it_should(mode: Mode, name: str) -> None:
    if name in LET_THROUGH[mode]:
        check_mode(mode, INTENTS[name])
        check_mode(mode.value, INTENTS[name])  # the contract's string value means the same
    else:
        error = refused(MODE_CODE[mode], check_mode, mode, INTENTS[name])
        assert error.http_status == 403
        assert mode.value in error.message


def test_reduce_only_mode_says_why_an_edit_is_refused() -> None:
    unknown = refused("reduceOnlyMode", check_mode, Mode.REDUCE_ONLY, EDIT)
    assert "cannot tell whether the order being edited is reduce-only" in unknown.message
    plain = refused("reduceOnlyMode", check_mode, Mode.REDUCE_ONLY, merge_edit(SEND, EDIT))
    assert "not reduce-only" in plain.message
    send = refused("reduceOnlyMode", check_mode, Mode.REDUCE_ONLY, SEND)
    assert "reduceOnly=true" in send.message


def test_an_unknown_mode_is_a_bug_not_a_pass() -> None:
    with pytest.raises(ValueError, match="paused"):
        check_mode("paused", SEND)


# ---- the symbol list and per-symbol limits -----------------------------------------------------------
def test_only_listed_symbols_pass_matched_without_regard_to_case() -> None:
    listed = guard(symbols=("PF_XBTUSD", "pf_ethusd"))
    check_limits(order(symbol="pf_xbtusd"), listed, MARK)
    check_limits(order(symbol="PF_ETHUSD"), listed, MARK)
    error = refused("symbolNotAllowed", check_limits, order(symbol="PF_SOLUSD"), listed, MARK)
    assert "PF_SOLUSD" in error.message and "PF_XBTUSD" in error.message
    check_limits(order(symbol="PF_SOLUSD"), guard(), MARK)  # no list: any symbol


def test_per_symbol_overrides_apply_to_their_symbol_only() -> None:
    config = guard(
        max_order_size=10.0,
        max_notional=1e9,
        per_symbol={
            "PF_ETHUSD": SymbolLimits(max_order_size=100.0),
            "pf_solusd": SymbolLimits(max_notional=1000.0),
        },
    )
    check_limits(order(symbol="PF_ETHUSD", size="100"), config, MARK)
    refused("orderSizeTooLarge", check_limits, order(symbol="PF_ETHUSD", size="100.1"), config, MARK)
    refused("orderSizeTooLarge", check_limits, order(symbol="PF_XBTUSD", size="11"), config, MARK)
    # The override's own key may be spelled in any case; unset fields fall back to the account's.
    assert limits_for(config, "PF_SOLUSD") == SymbolLimits(10.0, 1000.0, None)
    refused(
        "notionalTooLarge", check_limits, order(symbol="PF_SOLUSD", limitPrice="101", size="10"), config, MARK
    )
    refused(
        "orderSizeTooLarge", check_limits, order(symbol="PF_SOLUSD", limitPrice="1", size="11"), config, MARK
    )


# ---- max_order_size -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cap", "size", "passes"),
    [
        (10.0, "10", True),
        (10.0, "9.99999999", True),
        (10.0, "10.00000001", False),
        (10.0, "1e1", True),
        (10.0, "1.0000000000000000001e1", False),
        (0.3, "0.3", True),  # a float limit means its decimal text, not 0.299999999999999988898
        (0.3, "0.30000000000000004", False),
        (0.1 + 0.2, "0.30000000000000004", True),  # 0.1 + 0.2 written in the config is what it prints as
        (0.1 + 0.2, "0.30000000000000005", False),
        (1e-05, "0.00001", True),
        (1e-05, "1.1e-05", False),
    ],
)
def test_max_order_size_at_under_and_over_its_bound(cap: float, size: str, passes: bool) -> None:
    config = guard(max_order_size=cap)
    if passes:
        check_limits(order(size=size), config, MARK)
    else:
        refused("orderSizeTooLarge", check_limits, order(size=size), config, MARK)


def test_a_size_refusal_states_the_value_and_the_limit() -> None:
    error = refused("orderSizeTooLarge", check_limits, order(size="12"), guard(max_order_size=10.0), MARK)
    assert error.message.startswith("size 12 is above max_order_size 10 for PF_XBTUSD")


# ---- max_notional -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cap", "size", "price", "passes"),
    [
        (500000.0, "10", "50000", True),
        (500000.0, "9.99999999", "50000", True),
        (500000.0, "10", "50000.00000001", False),
        (500000.0, "10.00000001", "50000", False),
        (0.3, "0.1", "3", True),  # 0.1 x 3 is 0.3 exactly in Decimal (0.30000000000000004 in floats)
        (0.3, "3", "0.1", True),
        (0.3, "0.1", "3.0000000000000001", False),
        (1e6, "1e-05", "1e11", True),
        (1e6, "1.00001e-05", "1e11", False),
    ],
)
def test_max_notional_is_size_times_the_limit_price(cap: float, size: str, price: str, passes: bool) -> None:
    config = guard(max_notional=cap)
    intent = order(size=size, limitPrice=price)
    if passes:
        check_limits(intent, config, None)  # a limit order needs no mark for this rule
    else:
        refused("notionalTooLarge", check_limits, intent, config, None)


def test_a_notional_refusal_states_how_it_was_worked_out() -> None:
    error = refused(
        "notionalTooLarge",
        check_limits,
        order(size="12", limitPrice="50000"),
        guard(max_notional=500000.0),
        MARK,
    )
    assert error.message.startswith(
        "notional 600000 (size 12 x limitPrice 50000) is above max_notional 500000 for PF_XBTUSD"
    )


@pytest.mark.parametrize(
    "make", [mkt, stop, trailing], ids=["mkt", "stp without limitPrice", "trailing_stop"]
)
def test_an_order_without_a_limit_price_is_valued_at_the_mark(make: Any) -> None:
    config = guard(max_notional=500000.0)
    check_limits(make(size="10"), config, MARK)
    error = refused("notionalTooLarge", check_limits, make(size="10"), config, MARK + Decimal("0.01"))
    assert "x the mark 50000.01" in error.message
    missing = refused("markPriceUnavailable", check_limits, make(size="1"), config, None)
    assert missing.http_status == 503 and "max_notional" in missing.message


def test_a_stop_without_a_limit_price_is_valued_at_the_larger_of_its_stop_price_and_the_mark() -> None:
    config = guard(max_notional=190000.0)
    buy = {"side": "buy", "size": "1.9", "limitPrice": None}
    check_limits(order(orderType="stp", stopPrice="100000", **buy), config, MARK)  # 1.9 x 100000
    error = refused(
        "notionalTooLarge", check_limits, order(orderType="stp", stopPrice="100001", **buy), config, MARK
    )
    assert "x stopPrice 100001" in error.message
    refused(
        "notionalTooLarge",
        check_limits,
        order(orderType="stp", stopPrice="1", **buy),
        config,
        Decimal(100001),
    )


def test_a_stop_with_a_limit_price_is_valued_at_it_without_the_mark() -> None:
    config = guard(max_notional=500000.0)
    check_limits(stop(size="10", limitPrice="50000"), config, None)
    refused("notionalTooLarge", check_limits, stop(size="10", limitPrice="50000.01"), config, None)


def test_a_trailing_stop_with_a_limit_price_is_valued_at_the_larger_of_it_and_the_mark() -> None:
    config = guard(max_notional=500000.0)
    check_limits(trailing(size="10", limitPrice="49000"), config, MARK)
    refused("notionalTooLarge", check_limits, trailing(size="10", limitPrice="50001"), config, MARK)
    refused("notionalTooLarge", check_limits, trailing(size="10", limitPrice="49000"), config, Decimal(50001))


def test_a_stop_with_a_limit_price_offset_is_valued_at_the_highest_price_it_may_get() -> None:
    config = guard(max_notional=505000.0)
    offset = {"limitPriceOffsetValue": "-1", "limitPriceOffsetUnit": "PERCENT"}
    check_limits(stop("50000", size="10", **offset), config, MARK)  # up to 50500 x 10
    refused(
        "notionalTooLarge",
        check_limits,
        stop("50000", size="10", **offset),
        guard(max_notional=504999.0),
        MARK,
    )


# ---- price_band_pct -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("side", "field", "price", "passes"),
    [
        (side, field, price, passes)
        for side in ("buy", "sell")
        for field in ("limitPrice", "stopPrice")
        for price, passes in (
            ("45000", True),
            ("44999.99", False),
            ("55000", True),
            ("55000.01", False),
            ("50000", True),
            ("1", False),
            ("1e6", False),
        )
    ],
)
def test_limit_and_stop_prices_stay_within_the_band_on_both_sides(
    side: str, field: str, price: str, passes: bool
) -> None:
    config = guard(price_band_pct=10.0)
    if field == "limitPrice":
        intent = order(side=side, limitPrice=price)
    else:
        intent = order(orderType="stp", side=side, limitPrice=None, stopPrice=price)
    if passes:
        check_limits(intent, config, MARK)
    else:
        error = refused("priceOutsideBand", check_limits, intent, config, MARK)
        assert error.message.startswith(f"{field} ")
        assert "price_band_pct 10 of the mark 50000 for PF_XBTUSD" in error.message
        assert "from 45000 to 55000" in error.message


def test_a_stop_limit_needs_both_its_prices_inside_the_band() -> None:
    config = guard(price_band_pct=1.0)
    check_limits(stop("49600", limitPrice="49500"), config, MARK)
    refused("priceOutsideBand", check_limits, stop("49600", limitPrice="49499"), config, MARK)
    refused("priceOutsideBand", check_limits, stop("49499", limitPrice="49600"), config, MARK)


def test_the_limit_price_an_offset_gives_is_inside_the_band_either_way_it_is_read() -> None:
    config = guard(price_band_pct=10.0)
    for unit, fits, too_far in (("PERCENT", "10", "10.01"), ("QUOTE_CURRENCY", "5000", "5000.5")):
        fields = {"limitPriceOffsetUnit": unit}
        check_limits(stop("50000", limitPriceOffsetValue=fits, **fields), config, MARK)
        check_limits(stop("50000", limitPriceOffsetValue="-" + fits, **fields), config, MARK)
        error = refused(
            "priceOutsideBand",
            check_limits,
            stop("50000", limitPriceOffsetValue=too_far, **fields),
            config,
            MARK,
        )
        assert "the limit price after limitPriceOffsetValue" in error.message


def test_the_band_needs_the_mark_only_for_an_order_with_a_price() -> None:
    config = guard(price_band_pct=5.0)
    refused("markPriceUnavailable", check_limits, order(), config, None)
    refused("markPriceUnavailable", check_limits, stop(), config, None)
    check_limits(mkt(), config, None)
    check_limits(trailing(), config, None)


@pytest.mark.parametrize("mark", [Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity")])
def test_a_mark_that_is_not_a_price_counts_as_no_mark(mark: Decimal) -> None:
    refused("markPriceUnavailable", check_limits, order(), guard(price_band_pct=5.0), mark)
    refused("markPriceUnavailable", check_limits, mkt(), guard(max_notional=1e9), mark)


# ---- properties, table-driven (hypothesis is not installed) -------------------------------------------
def oracle(
    order_type: str, size: str, price: str, mark: str, cap_size: str, cap_notional: str, band: str
) -> str | None:
    """What the limits must say, worked out independently in exact fractions."""
    s, p, m = Fraction(size), Fraction(price), Fraction(mark)
    if s > Fraction(cap_size):
        return "orderSizeTooLarge"
    valued_at = max(m, p) if order_type == "stp" else p  # the stop has no limit price: mark or stop
    if s * valued_at > Fraction(cap_notional):
        return "notionalTooLarge"
    width = m * Fraction(band) / 100
    if not m - width <= p <= m + width:
        return "priceOutsideBand"
    return None


def test_anything_inside_every_limit_passes_and_anything_outside_one_fails_with_its_code() -> None:
    cap_size, cap_notional, band, mark = "10", "500000", "10", "50000"
    config = guard(
        max_order_size=float(cap_size), max_notional=float(cap_notional), price_band_pct=float(band)
    )
    sizes = ["0.00001", "1", "9.99999999", "10", "10.00000001", "1e2"]
    prices = ["1", "44999.99", "45000", "49999.99999", "50000", "50000.01", "55000", "55000.01"]
    seen: set[str | None] = set()
    for order_type, side, size, price in itertools.product(("lmt", "stp"), ("buy", "sell"), sizes, prices):
        if order_type == "lmt":
            intent = order(side=side, size=size, limitPrice=price)
        else:
            intent = order(orderType="stp", side=side, size=size, limitPrice=None, stopPrice=price)
        expected = oracle(order_type, size, price, mark, cap_size, cap_notional, band)
        seen.add(expected)
        assert outcome(intent, config, Decimal(mark)) == expected, (order_type, side, size, price)
    assert seen == {None, "orderSizeTooLarge", "notionalTooLarge", "priceOutsideBand"}


NEEDS_MARK = {
    # (order, does max_notional need the mark, does price_band_pct)
    "lmt": (order(), False, True),
    "mkt": (mkt(), True, False),
    "stp": (stop(), True, True),
    "stp with limitPrice": (stop(limitPrice="49900"), False, True),
    "trailing_stop": (trailing(), True, False),
}


@pytest.mark.parametrize("name", list(NEEDS_MARK))
def test_without_a_mark_only_the_rules_that_need_it_refuse(name: str) -> None:
    intent, notional_needs, band_needs = NEEDS_MARK[name]
    for size_on, notional_on, band_on in itertools.product((False, True), repeat=3):
        config = guard(
            max_order_size=100.0 if size_on else None,
            max_notional=1e12 if notional_on else None,
            price_band_pct=50.0 if band_on else None,
        )
        check_limits(intent, config, MARK)  # with the mark, everything is inside
        if (notional_on and notional_needs) or (band_on and band_needs):
            refused("markPriceUnavailable", check_limits, intent, config, None)
        else:
            check_limits(intent, config, None)


# ---- edits ----------------------------------------------------------------------------------------------
def test_an_edit_keeps_what_it_does_not_change_and_replaces_what_it_sends() -> None:
    original = order(cliOrdId="mine", reduceOnly="true", side="sell", size="4")
    edit = parse_edit({"orderId": "o-1", "limitPrice": "49000"})

    merged = merge_edit(original, edit)

    assert (merged.kind, merged.symbol, merged.side, merged.order_type, merged.reduce_only) == (
        "edit",
        "PF_XBTUSD",
        "sell",
        "lmt",
        True,
    )
    assert (merged.size, merged.limit_price, merged.order_id, merged.cli_ord_id) == (
        Decimal(4),
        Decimal(49000),
        "o-1",
        "mine",
    )
    assert merged.merged


def test_an_edit_can_move_a_stop_and_its_trailing_distance() -> None:
    moved = merge_edit(
        stop("48000"), parse_edit({"orderId": "s", "stopPrice": "47000", "limitPrice": "46900"})
    )
    assert (moved.stop_price, moved.limit_price) == (Decimal(47000), Decimal(46900))
    trail = merge_edit(trailing(), parse_edit({"orderId": "t", "trailingStopMaxDeviation": "2"}))
    assert (trail.trailing_deviation, trail.trailing_unit) == (Decimal(2), "PERCENT")


@pytest.mark.parametrize(
    ("qty_mode", "filled", "size", "new_size"),
    [
        ("ABSOLUTE", "0", "6", "6"),
        ("ABSOLUTE", "4", "6", "6"),  # the whole order, fills included
        ("RELATIVE", "0", "6", "6"),
        ("RELATIVE", "4", "6", "10"),  # what is left to fill: 4 filled + 6 more
        (None, "4", "6", "10"),  # not sent: read as RELATIVE, the larger reading
        ("RELATIVE", "4", None, "8"),  # no size: unchanged
    ],
)
def test_an_edits_size_per_qty_mode(
    qty_mode: str | None, filled: str, size: str | None, new_size: str
) -> None:
    original = OrderIntent(**{**_fields(order(size="8")), "filled": Decimal(filled)})
    fields = {"orderId": "o", "qtyMode": qty_mode, "size": size}
    edit = parse_edit({k: v for k, v in fields.items() if v is not None})

    assert merge_edit(original, edit).size == Decimal(new_size)


def _fields(intent: OrderIntent) -> dict[str, Any]:
    return {name: getattr(intent, name) for name in OrderIntent.__dataclass_fields__}


def test_limits_judge_an_edited_order_by_its_new_whole_size() -> None:
    config = guard(max_order_size=10.0)
    half_filled = OrderIntent(**{**_fields(order(size="10")), "filled": Decimal(4)})
    check_limits(merge_edit(half_filled, parse_edit({"orderId": "o", "size": "6"})), config, MARK)
    refused(
        "orderSizeTooLarge",
        check_limits,
        merge_edit(half_filled, parse_edit({"orderId": "o", "size": "6.1"})),
        config,
        MARK,
    )
    absolute = parse_edit({"orderId": "o", "size": "10", "qtyMode": "ABSOLUTE"})
    check_limits(merge_edit(half_filled, absolute), config, MARK)


def test_an_edit_that_moves_a_price_out_of_the_band_is_refused() -> None:
    merged = merge_edit(order(), parse_edit({"orderId": "o", "limitPrice": "60000"}))
    refused("priceOutsideBand", check_limits, merged, guard(price_band_pct=10.0), MARK)


def test_merging_needs_a_whole_original_and_limits_need_a_merged_edit() -> None:
    with pytest.raises(ValueError, match="whole original"):
        merge_edit(EDIT, EDIT)
    with pytest.raises(ValueError, match="merges an edit"):
        merge_edit(SEND, SEND)
    with pytest.raises(ValueError, match="merge an edit"):
        check_limits(EDIT, guard(), MARK)


def test_check_intent_applies_the_mode_then_the_limits() -> None:
    check_intent(parse_cancel({"order_id": "x"}), Mode.HALTED, guard(max_order_size=1.0), None)
    refused("tradingHalted", check_intent, order(size="5"), Mode.HALTED, guard(max_order_size=1.0), MARK)
    refused("orderSizeTooLarge", check_intent, order(size="5"), Mode.ACTIVE, guard(max_order_size=1.0), MARK)


# ---- batches --------------------------------------------------------------------------------------------
LIMITED = guard(
    symbols=("PF_XBTUSD", "PF_ETHUSD"), max_order_size=10.0, max_notional=1e6, price_band_pct=10.0
)
MARKS = {"PF_XBTUSD": MARK, "PF_ETHUSD": Decimal(3000)}


def batch(*items: dict[str, Any]) -> list[OrderIntent | CancelIntent]:
    return parse_batch(list(items))


def send_item(tag: str, **fields: Any) -> dict[str, Any]:
    merged = {"order": "send", "order_tag": tag, **LMT, **fields}
    return {k: v for k, v in merged.items() if v is not None}


def test_a_batch_inside_every_rule_passes() -> None:
    check_batch(
        batch(
            send_item("1"),
            send_item("2", symbol="PF_ETHUSD", limitPrice="3100", size="10"),
            {"order": "edit", "order_id": "1", "limitPrice": "49500"},
            {"order": "cancel", "order_id": "open-1"},
        ),
        Mode.ACTIVE,
        LIMITED,
        MARKS,
        {},
    )


def test_the_first_failing_item_refuses_the_batch_with_its_index_and_tag() -> None:
    intents = batch(
        send_item("a"),
        {"order": "cancel", "order_id": "x"},
        send_item("b"),
        send_item("t3", size="12"),
        send_item("t4", size="13"),
    )

    error = refused("orderSizeTooLarge", check_batch, intents, Mode.ACTIVE, LIMITED, MARKS, {})

    assert (error.item, error.order_tag) == (3, "t3")
    assert error.message.startswith(
        "batchOrder[3] (order_tag 't3'): size 12 is above max_order_size 10 for PF_XBTUSD"
    )
    assert error.envelope("now")["item"] == 3


@pytest.mark.parametrize("shared", [{}, {"cliOrdId": "same"}], ids=["order_tag", "cliOrdId"])
def test_two_sends_sharing_a_name_refuse_the_batch(shared: dict[str, str]) -> None:
    # An edit of "dup" could be judged against the second send and applied to the first.
    second_tag = "dup" if not shared else "other"
    intents = batch(
        send_item("dup", **shared),
        send_item(second_tag, symbol="PF_ETHUSD", limitPrice="3100", **shared),
        {"order": "edit", "order_id": "dup", "size": "1"},
    )
    error = refused("invalidArgument", check_batch, intents, Mode.ACTIVE, LIMITED, MARKS, {})
    assert error.item == 1 and "share" in error.message
    check_batch(batch(send_item("dup"), send_item("other")), Mode.ACTIVE, LIMITED, MARKS, {})


def test_a_halted_account_lets_a_batch_of_cancels_through_and_nothing_else() -> None:
    cancels = batch({"order": "cancel", "order_id": "x"}, {"order": "cancel", "cliOrdId": "y"})
    check_batch(cancels, Mode.HALTED, LIMITED, MARKS, {})
    mixed = [*cancels, *batch(send_item("s", reduceOnly=True))]
    error = refused("tradingHalted", check_batch, mixed, Mode.HALTED, LIMITED, MARKS, {})
    assert (error.item, error.order_tag) == (2, "s")
    edit = batch({"order": "edit", "order_id": "unknown", "size": 1})
    assert refused("tradingHalted", check_batch, edit, Mode.HALTED, LIMITED, MARKS, {}).item == 0


def test_a_reduce_only_account_takes_reduce_only_sends_and_edits_of_reduce_only_orders() -> None:
    originals = {"open-ro": order(reduceOnly="true", side="sell"), "open-plain": order()}
    ok = batch(
        send_item("1", reduceOnly=True, side="sell"),
        {"order": "edit", "order_id": "open-ro", "limitPrice": "49000"},
        {"order": "cancel", "order_id": "open-plain"},
    )
    check_batch(ok, Mode.REDUCE_ONLY, LIMITED, MARKS, originals)
    not_ok = [*ok, *batch({"order": "edit", "order_id": "open-plain", "limitPrice": "49000"})]
    assert (
        refused("reduceOnlyMode", check_batch, not_ok, Mode.REDUCE_ONLY, LIMITED, MARKS, originals).item == 3
    )


def test_each_item_is_judged_against_its_own_symbols_mark() -> None:
    intents = batch(
        send_item("btc", orderType="mkt", limitPrice=None),
        send_item("eth", symbol="PF_ETHUSD", orderType="mkt", limitPrice=None),
    )
    check_batch(intents, Mode.ACTIVE, LIMITED, MARKS, {})
    error = refused(
        "markPriceUnavailable", check_batch, intents, Mode.ACTIVE, LIMITED, {"PF_XBTUSD": MARK}, {}
    )
    assert (error.item, error.order_tag) == (1, "eth")
    refused(
        "symbolNotAllowed",
        check_batch,
        batch(send_item("sol", symbol="PF_SOLUSD")),
        Mode.ACTIVE,
        LIMITED,
        MARKS,
        {},
    )


def test_an_edit_may_name_an_earlier_send_by_its_order_tag() -> None:
    intents = batch(
        send_item("a", size="5"), {"order": "edit", "order_id": "a", "size": "11", "qtyMode": "ABSOLUTE"}
    )
    error = refused("orderSizeTooLarge", check_batch, intents, Mode.ACTIVE, LIMITED, MARKS, {})
    assert (error.item, error.order_tag) == (1, None)
    assert error.message.startswith("batchOrder[1]: size 11")


def test_an_edit_may_name_an_open_order_by_id_or_by_cli_ord_id() -> None:
    originals = {"open-1": order(cliOrdId="mine", size="8")}
    check_batch(
        batch({"order": "edit", "cliOrdId": "mine", "limitPrice": "49000"}),
        Mode.ACTIVE,
        LIMITED,
        MARKS,
        originals,
    )
    too_far = batch({"order": "edit", "cliOrdId": "mine", "limitPrice": "60000"})
    refused("priceOutsideBand", check_batch, too_far, Mode.ACTIVE, LIMITED, MARKS, originals)
    refused(
        "priceOutsideBand",
        check_batch,
        batch({"order": "edit", "order_id": "open-1", "limitPrice": "60000"}),
        Mode.ACTIVE,
        LIMITED,
        MARKS,
        originals,
    )


def test_later_edits_of_an_order_build_on_earlier_ones() -> None:
    originals = {"open-1": order(size="8")}
    grown = batch(
        {"order": "edit", "order_id": "open-1", "size": "10", "qtyMode": "ABSOLUTE"},
        {"order": "edit", "order_id": "open-1", "limitPrice": "49000"},
    )
    check_batch(grown, Mode.ACTIVE, LIMITED, MARKS, originals)
    moved = batch(
        {"order": "edit", "order_id": "open-1", "limitPrice": "56000"},
        {"order": "edit", "order_id": "open-1", "size": "9", "qtyMode": "ABSOLUTE"},
    )
    assert refused("priceOutsideBand", check_batch, moved, Mode.ACTIVE, LIMITED, MARKS, originals).item == 0
    moved_back = batch(
        {"order": "edit", "order_id": "open-1", "limitPrice": "54000"},
        {"order": "edit", "order_id": "open-1", "size": "11", "qtyMode": "ABSOLUTE"},
    )
    assert (
        refused("orderSizeTooLarge", check_batch, moved_back, Mode.ACTIVE, LIMITED, MARKS, originals).item
        == 1
    )


def test_an_edit_whose_id_is_both_a_tag_and_an_open_order_must_pass_both_readings() -> None:
    originals = {"x": OrderIntent(**{**_fields(order(size="10")), "filled": Decimal(6)})}
    intents = batch(send_item("x", size="2"), {"order": "edit", "order_id": "x", "size": "5"})
    error = refused("orderSizeTooLarge", check_batch, intents, Mode.ACTIVE, LIMITED, MARKS, originals)
    assert error.item == 1 and "size 11" in error.message  # 6 filled + 5 on the open order's reading


def test_an_edit_of_an_order_guardian_does_not_know_is_refused() -> None:
    intents = batch(
        {"order": "cancel", "order_id": "x"}, {"order": "edit", "order_id": "nobody", "size": "1"}
    )
    error = refused("invalidArgument", check_batch, intents, Mode.ACTIVE, LIMITED, MARKS, {})
    assert error.item == 1 and "'nobody'" in error.message


def test_a_batch_over_the_item_bound_is_refused_whole() -> None:
    cancels = [CancelIntent("x", None)] * (MAX_BATCH_ITEMS + 1)
    error = refused("requestTooLarge", check_batch, cancels, Mode.ACTIVE, LIMITED, MARKS, {})
    assert error.item is None
    check_batch(cancels[:MAX_BATCH_ITEMS], Mode.ACTIVE, LIMITED, MARKS, {})


def test_a_batch_finds_marks_and_originals_as_the_exchange_reports_them() -> None:
    # orders/status may report a symbol in lower case; the gateway may key an original by its cliOrdId.
    reported = OrderIntent(**{**_fields(order(size="8")), "symbol": "pf_xbtusd"})
    originals = {"mine": reported}
    marks = {"pf_xbtusd": MARK, "PF_ETHUSD": None}
    edit = batch({"order": "edit", "cliOrdId": "mine", "limitPrice": "49000"})
    check_batch(edit, Mode.ACTIVE, LIMITED, marks, originals)
    moved = batch({"order": "edit", "cliOrdId": "mine", "limitPrice": "56000"})
    error = refused("priceOutsideBand", check_batch, moved, Mode.ACTIVE, LIMITED, marks, originals)
    assert "for PF_XBTUSD" in error.message
    assert merge_edit(reported, EDIT).symbol == "PF_XBTUSD"


def test_a_batch_may_hold_any_intent_and_cancels_of_every_kind_pass() -> None:
    check_batch([parse_cancel_all({}), CancelIntent(None, "c")], Mode.HALTED, LIMITED, {}, {})
