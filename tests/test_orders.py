"""Reading bots' order requests (guardian.gateway.orders) and the refusal envelope: pure units, no network.

The last part drives the real ccxt and python-kraken-sdk clients offline (their transport replaced by a
recorder) and feeds exactly what they would put on the wire through `wire.request_fields` and the
parsers: the validator must never refuse what they legitimately send.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest

from guardian.gateway import orders
from guardian.gateway.orders import (
    MAX_BATCH_ITEMS,
    CancelAllIntent,
    CancelIntent,
    OrderIntent,
    parse_batch,
    parse_batch_envelope,
    parse_cancel,
    parse_cancel_all,
    parse_edit,
    parse_send,
)
from guardian.gateway.refusal import CODES, Refusal
from guardian.kraken import wire

LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1.5", "limitPrice": "50000"}
# One valid request per order type, as form strings.
VALID: dict[str, dict[str, str]] = {
    "lmt": LMT,
    "post": {**LMT, "orderType": "post"},
    "ioc": {**LMT, "orderType": "ioc"},
    "fok": {**LMT, "orderType": "fok"},
    "mkt": {"orderType": "mkt", "symbol": "PF_XBTUSD", "side": "sell", "size": "2"},
    "stp": {"orderType": "stp", "symbol": "PF_XBTUSD", "side": "sell", "size": "1", "stopPrice": "48000"},
    "take_profit": {
        "orderType": "take_profit",
        "symbol": "PF_XBTUSD",
        "side": "sell",
        "size": "1",
        "stopPrice": "52000",
    },
    "trailing_stop": {
        "orderType": "trailing_stop",
        "symbol": "PF_XBTUSD",
        "side": "sell",
        "size": "1",
        "trailingStopMaxDeviation": "5",
        "trailingStopDeviationUnit": "PERCENT",
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "lmt": ("limitPrice",),
    "post": ("limitPrice",),
    "ioc": ("limitPrice",),
    "fok": ("limitPrice",),
    "mkt": (),
    "stp": ("stopPrice",),
    "take_profit": ("stopPrice",),
    "trailing_stop": ("trailingStopMaxDeviation", "trailingStopDeviationUnit"),
}


def refused(code: str, parse: Callable[..., Any], *args: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse(*args)
    assert caught.value.code == code, caught.value.message
    return caught.value


def without(fields: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k != name}


def as_json(fields: dict[str, str]) -> dict[str, Any]:
    """The same request as a batch item would carry it: numbers as JSON numbers."""
    numeric = {"size", "limitPrice", "stopPrice", "trailingStopMaxDeviation", "limitPriceOffsetValue"}
    return {k: json.loads(v) if k in numeric else v for k, v in fields.items()}


# ---- sendorder: types and required fields ------------------------------------------------------------
@pytest.mark.parametrize("order_type", list(VALID))
def test_every_order_type_is_read_from_form_strings(order_type: str) -> None:
    intent = parse_send(VALID[order_type])

    assert (intent.kind, intent.order_type, intent.symbol, intent.reduce_only) == (
        "send",
        order_type,
        "PF_XBTUSD",
        False,
    )
    assert intent.size == Decimal(VALID[order_type]["size"])


@pytest.mark.parametrize("order_type", list(VALID))
def test_every_order_type_is_read_from_json_values(order_type: str) -> None:
    assert parse_send(as_json(VALID[order_type])) == parse_send(VALID[order_type])


@pytest.mark.parametrize(
    ("order_type", "field"),
    [(t, f) for t in VALID for f in ("orderType", "symbol", "side", "size", *REQUIRED[t])],
)
def test_each_required_field_missing_is_named(order_type: str, field: str) -> None:
    error = refused("requiredArgumentMissing", parse_send, without(VALID[order_type], field))
    assert field in error.message


def test_a_stop_may_leave_out_its_limit_price_or_give_one() -> None:
    assert parse_send(VALID["stp"]).limit_price is None
    assert parse_send({**VALID["stp"], "limitPrice": "47900"}).limit_price == Decimal(47900)
    assert parse_send({**VALID["take_profit"], "limitPrice": "52100"}).limit_price == Decimal(52100)


def test_optional_fields_are_read_and_normalised() -> None:
    intent = parse_send(
        {
            **VALID["stp"],
            "symbol": "pf_xbtusd",
            "reduceOnly": "true",
            "triggerSignal": "last",
            "cliOrdId": "a&b%41+c d",
            "processBefore": "2026-11-21T10:00:00.000Z",
        }
    )
    assert (
        intent.symbol,
        intent.reduce_only,
        intent.trigger_signal,
        intent.cli_ord_id,
        intent.process_before,
    ) == (
        "PF_XBTUSD",
        True,
        "last",
        "a&b%41+c d",
        "2026-11-21T10:00:00.000Z",
    )


@pytest.mark.parametrize(
    ("sent", "meaning"), [("mark", "mark"), ("index", "index"), ("last", "last"), ("spot", "index")]
)
def test_trigger_signals_as_kraken_spells_them_and_spot_as_index(sent: str, meaning: str) -> None:
    assert parse_send({**VALID["stp"], "triggerSignal": sent}).trigger_signal == meaning


def test_trigger_signal_on_an_order_without_a_trigger_is_accepted() -> None:
    assert parse_send({**LMT, "triggerSignal": "mark"}).trigger_signal == "mark"


# ---- values: numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1.5", Decimal("1.5")),
        ("1e-05", Decimal("0.00001")),  # python-kraken-sdk sends str(float)
        ("1E+3", Decimal(1000)),
        ("2.5e2", Decimal(250)),
        (".5", Decimal("0.5")),
        ("7.", Decimal(7)),
        ("0.000100", Decimal("0.0001")),
        (3, Decimal(3)),  # JSON numbers
        (0.25, Decimal("0.25")),
        (1e-05, Decimal("0.00001")),
        ("0." + "0" * 19 + "1", Decimal("1e-20")),
    ],
)
def test_numbers_in_every_notation_clients_use(raw: Any, value: Decimal) -> None:
    assert parse_send({**LMT, "size": raw}).size == value


@pytest.mark.parametrize(
    "raw",
    [
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        float("nan"),
        float("inf"),
        "0",
        "0.0",
        "0e7",
        "-0",
        "-1",
        "-1e-05",
        -2,
        0,
        True,  # a JSON boolean is not a number
        False,
        "true",
        " 1",
        "1 ",
        "+1",
        "1_000",
        "1,5",
        "0x10",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: Decimal would take it
        "1e",
        "e5",
        "..1",
        "1" * 33,
        "1e21",  # out of range
        "1e-21",
        10**40,
        ["1"],
        {"v": 1},
        "",
    ],
)
def test_malformed_numbers_are_refused_naming_the_field(raw: Any) -> None:
    for field in ("size", "limitPrice"):
        error = refused("invalidArgument", parse_send, {**LMT, field: raw})
        assert error.message.startswith(field)


def test_an_absurdly_long_number_is_refused_before_it_is_read() -> None:
    error = refused("invalidArgument", parse_send, {**LMT, "limitPrice": "5" + "0" * 40})
    assert "41 characters" in error.message


def test_json_null_is_absent_but_an_empty_string_is_malformed() -> None:
    assert parse_send({**VALID["stp"], "limitPrice": None}).limit_price is None
    error = refused("invalidArgument", parse_send, {**VALID["stp"], "limitPrice": ""})
    assert error.message == "limitPrice is empty: expected a number above 0 such as 1.5"
    refused("requiredArgumentMissing", parse_send, {**LMT, "limitPrice": None})


# ---- values: flags, enums, identifiers, times ---------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("True", True), (True, True), ("false", False), ("False", False), (False, False)],
)
def test_reduce_only_as_ccxt_the_sdk_and_json_send_it(raw: Any, value: bool) -> None:
    assert parse_send({**LMT, "reduceOnly": raw}).reduce_only is value


@pytest.mark.parametrize("raw", ["1", "0", 1, 0, "TRUE", "yes", "", "true "])
def test_other_spellings_of_reduce_only_are_refused(raw: Any) -> None:
    refused("invalidArgument", parse_send, {**LMT, "reduceOnly": raw})


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("orderType", "LMT"),
        ("orderType", "limit"),
        ("orderType", "stop"),
        ("side", "Buy"),
        ("side", "long"),
        ("triggerSignal", "MARK"),
        ("triggerSignal", "mark_price"),
        ("symbol", "PF XBTUSD"),
        ("symbol", "PF/XBT"),
        ("symbol", "X" * 65),
        ("symbol", 5),
        ("orderType", 1),
        ("side", ""),
    ],
)
def test_enums_and_symbols_must_be_spelled_as_kraken_spells_them(field: str, raw: Any) -> None:
    error = refused("invalidArgument", parse_send, {**VALID["stp"], field: raw})
    assert error.message.startswith(field)


def test_trailing_units_are_exact_and_a_percent_deviation_in_range() -> None:
    trailing = VALID["trailing_stop"]
    refused("invalidArgument", parse_send, {**trailing, "trailingStopDeviationUnit": "percent"})
    for ok in ("0.1", "50", "25"):
        assert parse_send({**trailing, "trailingStopMaxDeviation": ok}).trailing_deviation == Decimal(ok)
    for bad in ("0.09", "50.01", "0"):
        refused("invalidArgument", parse_send, {**trailing, "trailingStopMaxDeviation": bad})
    quote = {**trailing, "trailingStopDeviationUnit": "QUOTE_CURRENCY", "trailingStopMaxDeviation": "750"}
    assert parse_send(quote).trailing_unit == "QUOTE_CURRENCY"


@pytest.mark.parametrize("length", [1, 36, 100])
def test_cli_ord_id_of_1_to_100_printable_characters(length: int) -> None:
    cli_ord_id = ("~ a!" * 30)[:length]
    assert parse_send({**LMT, "cliOrdId": cli_ord_id}).cli_ord_id == cli_ord_id


@pytest.mark.parametrize("raw", ["x" * 101, "", "caf\u00e9", "tab\there", "new\nline", "nul\x00", 42])
def test_cli_ord_id_outside_its_bounds_is_refused(raw: Any) -> None:
    error = refused("invalidArgument", parse_send, {**LMT, "cliOrdId": raw})
    assert error.message.startswith("cliOrdId")


@pytest.mark.parametrize(
    "raw", ["2026-11-21T10:00:00Z", "2026-11-21T10:00:00.123Z", "2026-11-21T10:00:00+01:00"]
)
def test_process_before_takes_iso_8601(raw: str) -> None:
    assert parse_send({**LMT, "processBefore": raw}).process_before == raw


@pytest.mark.parametrize(
    "raw", ["tomorrow", "1700000000", "2026-13-01T00:00:00Z", "2026-11-21T10:00:00Z" + " " * 50, 1700000000]
)
def test_process_before_that_is_not_a_time_is_refused(raw: Any) -> None:
    error = refused("invalidArgument", parse_send, {**LMT, "processBefore": raw})
    assert "ISO 8601" in error.message


# ---- fields that do not belong --------------------------------------------------------------------------
def test_an_unknown_field_is_refused_listing_the_allowed_ones() -> None:
    error = refused("invalidArgument", parse_send, {**LMT, "leverage": "50"})
    assert "'leverage'" in error.message
    assert all(name in error.message for name in orders.SEND_FIELDS)


@pytest.mark.parametrize(
    ("order_type", "extra"),
    [
        ("lmt", {"stopPrice": "49000"}),
        ("post", {"stopPrice": "1"}),  # far from any mark: not judged, the exchange ignores it
        ("ioc", {"stopPrice": "49000"}),
        ("fok", {"stopPrice": "49000"}),
        ("mkt", {"stopPrice": "49000"}),
        ("stp", {"trailingStopMaxDeviation": "5"}),
        ("take_profit", {"trailingStopMaxDeviation": "99", "trailingStopDeviationUnit": "PERCENT"}),
        ("lmt", {"trailingStopDeviationUnit": "PERCENT"}),
        ("lmt", {"limitPriceOffsetValue": "1", "limitPriceOffsetUnit": "PERCENT"}),
        ("ioc", {"limitPriceOffsetValue": "-1"}),  # its unit missing: nothing reads it on an ioc
        ("mkt", {"limitPriceOffsetUnit": "QUOTE_CURRENCY"}),
    ],
)
def test_a_field_that_does_not_apply_to_the_order_type_is_accepted_and_the_order_judged_as_its_type_says(
    order_type: str, extra: dict[str, str]
) -> None:
    """Forwarded as sent (the gateway forwards the bot's bytes), but the intent the guard judges is the
    order without it: the same as if it had not been sent."""
    assert parse_send({**VALID[order_type], **extra}) == parse_send(VALID[order_type])
    item = {"order": "send", "order_tag": "1", **as_json({**VALID[order_type], **extra})}
    assert parse_batch([item]) == parse_batch(
        [{"order": "send", "order_tag": "1", **as_json(VALID[order_type])}]
    )


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({**LMT, "stopPrice": "abc"}, "stopPrice"),
        ({**LMT, "stopPrice": "-49000"}, "stopPrice"),
        ({**VALID["mkt"], "stopPrice": ""}, "stopPrice"),
        ({**LMT, "trailingStopMaxDeviation": "NaN"}, "trailingStopMaxDeviation"),
        ({**LMT, "trailingStopDeviationUnit": "percent"}, "trailingStopDeviationUnit"),
        ({**LMT, "limitPriceOffsetValue": "1%"}, "limitPriceOffsetValue"),
        ({**LMT, "limitPriceOffsetUnit": "BPS"}, "limitPriceOffsetUnit"),
    ],
)
def test_a_field_that_does_not_apply_is_still_refused_when_its_value_cannot_be_read(
    fields: dict[str, str], named: str
) -> None:
    error = refused("invalidArgument", parse_send, fields)
    assert named in error.message


def test_a_limit_price_on_mkt_is_judged_not_ignored() -> None:
    """Whether the exchange takes it as the order's protection is not documented: the rules judge the order
    at the higher of it and the mark, and band-check it."""
    assert parse_send({**VALID["mkt"], "limitPrice": "50000"}).limit_price == Decimal(50000)


def test_a_trigger_order_with_a_limit_price_and_an_offset_is_still_refused() -> None:
    """Which limit price the triggered order gets is not something guardian will guess."""
    fields = {
        **VALID["stp"],
        "limitPrice": "47000",
        "limitPriceOffsetValue": "-1",
        "limitPriceOffsetUnit": "PERCENT",
    }
    error = refused("invalidArgument", parse_send, fields)
    assert "limitPriceOffsetValue" in error.message


def test_a_limit_price_offset_needs_both_its_value_and_its_unit() -> None:
    stop = VALID["stp"]
    refused("requiredArgumentMissing", parse_send, {**stop, "limitPriceOffsetValue": "-0.5"})
    refused("requiredArgumentMissing", parse_send, {**stop, "limitPriceOffsetUnit": "PERCENT"})
    intent = parse_send({**stop, "limitPriceOffsetValue": "-0.5", "limitPriceOffsetUnit": "PERCENT"})
    assert (intent.limit_offset, intent.limit_offset_unit) == (Decimal("-0.5"), "PERCENT")
    zero = parse_send({**stop, "limitPriceOffsetValue": "0", "limitPriceOffsetUnit": "QUOTE_CURRENCY"})
    assert zero.limit_offset == 0


# ---- editorder, cancelorder, cancelallorders ------------------------------------------------------------
def test_an_edit_names_the_order_by_order_id_in_camel_case_or_cli_ord_id() -> None:
    edit = parse_edit({"orderId": "abc", "size": "2", "limitPrice": "49000", "qtyMode": "ABSOLUTE"})
    assert (edit.kind, edit.order_id, edit.size, edit.limit_price, edit.qty_mode) == (
        "edit",
        "abc",
        Decimal(2),
        Decimal(49000),
        "ABSOLUTE",
    )
    assert (edit.symbol, edit.reduce_only, edit.merged) == (None, None, False)
    assert parse_edit({"cliOrdId": "mine", "stopPrice": "3"}).cli_ord_id == "mine"
    trailing = parse_edit(
        {"orderId": "t", "trailingStopMaxDeviation": "3", "trailingStopDeviationUnit": "PERCENT"}
    )
    assert (trailing.trailing_deviation, trailing.trailing_unit) == (Decimal(3), "PERCENT")


def test_an_edit_with_neither_or_both_ids_is_refused() -> None:
    refused("requiredArgumentMissing", parse_edit, {"size": "2"})
    refused("invalidArgument", parse_edit, {"orderId": "a", "cliOrdId": "b", "size": "2"})


def test_an_edit_with_the_cancel_spelling_of_the_id_says_which_one_it_takes() -> None:
    error = refused("invalidArgument", parse_edit, {"order_id": "abc", "size": "2"})
    assert "did you mean orderId?" in error.message


@pytest.mark.parametrize(
    "fields",
    [
        {"orderId": "a", "qtyMode": "relative"},
        {"orderId": "a", "qtyMode": "DELTA"},
        {"orderId": "a", "size": "-1"},
        {"orderId": "a", "limitPrice": "NaN"},
        {"orderId": "a", "trailingStopMaxDeviation": "60", "trailingStopDeviationUnit": "PERCENT"},
        {"orderId": "a", "symbol": "PF_XBTUSD"},
        {"orderId": "a", "side": "sell"},
        {"orderId": "a", "reduceOnly": "false"},
        {"orderId": "x" * 101},
    ],
)
def test_malformed_or_unknown_edit_fields_are_refused(fields: dict[str, str]) -> None:
    refused("invalidArgument", parse_edit, fields)


def test_a_cancel_names_the_order_by_order_id_in_snake_case_or_cli_ord_id() -> None:
    assert parse_cancel({"order_id": "abc"}) == CancelIntent("abc", None)
    assert parse_cancel({"cliOrdId": "mine", "processBefore": "2026-11-21T10:00:00Z"}) == CancelIntent(
        None, "mine", "2026-11-21T10:00:00Z"
    )
    refused("requiredArgumentMissing", parse_cancel, {})
    refused("invalidArgument", parse_cancel, {"order_id": "a", "cliOrdId": "b"})
    assert "did you mean order_id?" in refused("invalidArgument", parse_cancel, {"orderId": "abc"}).message


def test_cancel_all_takes_an_optional_symbol_and_nothing_else() -> None:
    assert parse_cancel_all({}) == CancelAllIntent(None)
    assert parse_cancel_all({"symbol": "pf_ethusd"}) == CancelAllIntent("PF_ETHUSD")
    refused("invalidArgument", parse_cancel_all, {"symbol": "PF ETHUSD"})
    refused(
        "invalidArgument", parse_cancel_all, {"symbol": "PF_ETHUSD", "processBefore": "2026-11-21T10:00:00Z"}
    )


# ---- batchorder ---------------------------------------------------------------------------------------
def test_a_batch_of_every_item_kind_is_read_in_order() -> None:
    items = [
        {"order": "send", "order_tag": "1", **as_json(LMT)},
        {"order": "send", "order_tag": 2, **as_json(VALID["stp"]), "reduceOnly": True},
        {"order": "edit", "order_id": "1", "size": 3, "qtyMode": "RELATIVE"},
        {"order": "edit", "cliOrdId": "mine", "limitPrice": "49000"},
        {"order": "cancel", "order_id": "e35d61dd-8a30-4d5f-a574-b5593ef0c050"},
        {"order": "cancel", "cliOrdId": "my_client_id"},
    ]

    parsed = parse_batch(items)

    assert [type(p).__name__ for p in parsed] == ["OrderIntent"] * 4 + ["CancelIntent"] * 2
    first, second, edit, by_cli = (p for p in parsed if isinstance(p, OrderIntent))
    assert (first.order_tag, second.order_tag, second.reduce_only) == ("1", "2", True)
    assert (edit.kind, edit.order_id, edit.size, edit.qty_mode) == ("edit", "1", Decimal(3), "RELATIVE")
    assert (by_cli.cli_ord_id, by_cli.limit_price) == ("mine", Decimal(49000))


def test_an_empty_batch_is_read_as_no_items() -> None:
    assert parse_batch([]) == []


@pytest.mark.parametrize(
    ("items", "index", "tag", "code", "named"),
    [
        (
            [
                {"order": "send", "order_tag": "a", **LMT},
                {"order": "send", "order_tag": "b", **without(LMT, "side")},
            ],
            1,
            "b",
            "requiredArgumentMissing",
            "side",
        ),
        ([{"order": "send", "order_tag": 0, **LMT, "size": True}], 0, "0", "invalidArgument", "size"),
        (
            [{"order": "cancel", "order_id": "x"}, {"order": "edit", "orderId": "x", "size": 1}],
            1,
            None,
            "invalidArgument",
            "order_id",
        ),
        (
            [{"order": "send", "order_tag": "t", **LMT, "processBefore": "2026-11-21T10:00:00Z"}],
            0,
            "t",
            "invalidArgument",
            "processBefore",
        ),
        ([{"order": "cancel"}], 0, None, "requiredArgumentMissing", "order_id"),
        ([{"order": "replace", "order_id": "x"}], 0, None, "invalidArgument", "send, edit, cancel"),
        ([{"order_id": "x"}], 0, None, "requiredArgumentMissing", "order"),
        ([{"order": "send", **LMT}, "not an object"], 1, None, "invalidArgument", "object"),
        ([{"order": "send", "order_tag": ["bad"], **LMT}], 0, None, "invalidArgument", "order_tag"),
        ([{"order": "cancel", "order_id": "x", "order_tag": "c"}], 0, "c", "invalidArgument", "order_tag"),
    ],
)
def test_a_faulty_batch_item_is_named_by_index_and_tag(
    items: list[Any], index: int, tag: str | None, code: str, named: str
) -> None:
    error = refused(code, parse_batch, items)

    assert (error.item, error.order_tag) == (index, tag)
    assert error.message.startswith(f"batchOrder[{index}]")
    if tag is not None:
        assert f"(order_tag {tag!r})" in error.message
    assert named in error.message


def test_a_batch_of_at_most_max_items_is_read_and_one_more_is_refused() -> None:
    cancel = {"order": "cancel", "order_id": "x"}
    assert len(parse_batch([cancel] * MAX_BATCH_ITEMS)) == MAX_BATCH_ITEMS
    error = refused("requestTooLarge", parse_batch, [cancel] * (MAX_BATCH_ITEMS + 1))
    assert error.http_status == 413


def test_the_batch_envelope_takes_process_before_in_either_spelling_and_place() -> None:
    doc = {"batchOrder": [{"order": "cancel", "order_id": "x"}]}
    when = "2026-11-21T10:00:00Z"
    assert parse_batch_envelope({"json": "{}"}, doc) is None
    assert parse_batch_envelope({"json": "{}", "processBefore": when}, doc) == when  # python-kraken-sdk
    assert parse_batch_envelope({"json": "{}"}, {**doc, "ProcessBefore": when}) == when  # Kraken's docs
    refused(
        "invalidArgument",
        parse_batch_envelope,
        {"json": "{}", "processBefore": when},
        {**doc, "ProcessBefore": when},
    )
    refused("invalidArgument", parse_batch_envelope, {"json": "{}", "ProcessBefore": "soon"}, doc)


def test_the_batch_envelope_takes_what_ccxt_copies_into_it_and_nothing_else() -> None:
    cancels = {"batchOrder": [{"order": "cancel", "cliOrdId": "c1"}], "clientOrderIds": ["c1"]}
    assert parse_batch_envelope({"json": "{}"}, cancels) is None
    common = {
        "batchOrder": [{"order": "send", "reduceOnly": True}, {"order": "send", "reduceOnly": True}],
        "reduceOnly": True,
    }
    assert parse_batch_envelope({"json": "{}"}, common) is None

    mismatch = {"batchOrder": [{"order": "send", "reduceOnly": False}], "reduceOnly": True}
    refused("invalidArgument", parse_batch_envelope, {"json": "{}"}, mismatch)
    refused("invalidArgument", parse_batch_envelope, {"json": "{}"}, {"batchOrder": [], "leverage": 5})
    refused(
        "invalidArgument", parse_batch_envelope, {"json": "{}", "symbol": "PF_XBTUSD"}, {"batchOrder": []}
    )


# ---- the refusal --------------------------------------------------------------------------------------
def test_a_refusal_takes_its_status_from_the_table() -> None:
    assert CODES["reduceOnlyMode"] == 403 and CODES["markPriceUnavailable"] == 503
    assert {CODES[c] for c in ("requestTooLarge", "apiLimitExceeded", "switchNotArmed")} == {413, 429, 409}
    refusal = Refusal("priceOutsideBand", "limitPrice 60000 is outside the band")
    assert (refusal.code, refusal.message, refusal.http_status, str(refusal)) == (
        "priceOutsideBand",
        "limitPrice 60000 is outside the band",
        403,
        "limitPrice 60000 is outside the band",
    )
    with pytest.raises(ValueError, match="unknown refusal code"):
        Refusal("notACode", "x")


def test_the_envelope_has_krakens_error_shape_and_locates_a_batch_item() -> None:
    plain = Refusal("tradingHalted", "trading is halted").envelope("2026-11-21T10:00:00.000Z")
    assert plain == {
        "result": "error",
        "serverTime": "2026-11-21T10:00:00.000Z",
        "error": "tradingHalted",
        "message": "trading is halted",
    }
    located = Refusal("invalidArgument", "size is empty").for_item(3, "t-3")
    assert located.envelope("now") == {
        "result": "error",
        "serverTime": "now",
        "error": "invalidArgument",
        "message": "batchOrder[3] (order_tag 't-3'): size is empty",
        "item": 3,
        "order_tag": "t-3",
    }
    assert Refusal("invalidArgument", "x").for_item(0, None).envelope("now")["item"] == 0


# ---- what the real clients send -----------------------------------------------------------------------
ccxt = pytest.importorskip("ccxt")
kraken_futures = pytest.importorskip("kraken.futures")

BTC = "BTC/USD:USD"
MARKET = {
    "id": "PF_XBTUSD",
    "symbol": BTC,
    "base": "BTC",
    "quote": "USD",
    "settle": "USD",
    "baseId": "XBT",
    "quoteId": "USD",
    "settleId": "USD",
    "type": "swap",
    "spot": False,
    "margin": False,
    "swap": True,
    "future": False,
    "option": False,
    "active": True,
    "contract": True,
    "linear": True,
    "inverse": False,
    "contractSize": 1,
    "precision": {"amount": 0.00001, "price": 0.5},
    "limits": {k: {"min": None, "max": None} for k in ("amount", "price", "cost", "leverage")},
    "info": {},
}
ANSWER = {
    "result": "success",
    "sendStatus": {"status": "placed", "order_id": "x", "orderEvents": []},
    "editStatus": {"status": "edited", "orderId": "x", "orderEvents": []},
    "cancelStatus": {"status": "cancelled", "orderEvents": []},
    "batchStatus": [],
}


def endpoint_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def read(endpoint: str, query: str, body: str) -> list[Any]:
    """What guardian's local API would make of a request: the fields, then the intents."""
    fields = wire.request_fields(query, body)
    if endpoint == "sendorder":
        return [parse_send(fields)]
    if endpoint == "editorder":
        return [parse_edit(fields)]
    if endpoint == "cancelorder":
        return [parse_cancel(fields)]
    if endpoint == "cancelallorders":
        return [parse_cancel_all(fields)]
    assert endpoint == "batchorder"
    items, document = wire.parse_batch(fields)
    parse_batch_envelope(fields, document)
    return list(parse_batch(items))


@pytest.fixture
def ccxt_sent() -> tuple[Any, list[tuple[str, str, str]]]:
    """A sync ccxt krakenfutures whose transport records (endpoint, query, body) instead of sending."""
    exchange = ccxt.krakenfutures(
        {"apiKey": "key", "secret": base64.b64encode(bytes(64)).decode(), "enableRateLimit": False}
    )
    exchange.set_markets([MARKET])
    sent: list[tuple[str, str, str]] = []

    def record(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> dict[str, Any]:
        parts = urlsplit(url)
        sent.append((endpoint_of(parts.path), parts.query, body or ""))
        return ANSWER

    exchange.fetch = record
    return exchange, sent


def test_every_order_request_ccxt_makes_is_read(ccxt_sent: tuple[Any, list[tuple[str, str, str]]]) -> None:
    ex, sent = ccxt_sent
    ex.create_order(BTC, "limit", "buy", 0.01, 59000)
    ex.create_order(BTC, "limit", "buy", 0.01, 59000, {"postOnly": True, "clientOrderId": "a&b%41+c d"})
    ex.create_order(BTC, "limit", "buy", 0.01, 59000, {"timeInForce": "ioc", "reduceOnly": True})
    ex.create_order(BTC, "market", "buy", 0.00001)
    ex.create_order(BTC, "market", "sell", 0.01, None, {"triggerPrice": 50000})
    ex.create_order(BTC, "limit", "sell", 0.01, 49900, {"triggerPrice": 50000, "triggerSignal": "mark"})
    ex.create_order(BTC, "market", "sell", 0.02, None, {"stopLossPrice": 55000, "triggerSignal": "index"})
    ex.create_order(BTC, "market", "sell", 0.02, None, {"takeProfitPrice": 65000})
    ex.edit_order("abc", BTC, "limit", "buy", 0.00001, 58000.5)
    ex.edit_order("abc", BTC, "limit", "sell", None, None, {"stopPrice": 51000})
    ex.cancel_order("abc")
    ex.cancel_all_orders(BTC)
    ex.cancel_all_orders()
    ex.create_orders(
        [
            {"symbol": BTC, "type": "limit", "side": "buy", "amount": 0.01, "price": 57000},
            {
                "symbol": BTC,
                "type": "limit",
                "side": "sell",
                "amount": 0.01,
                "price": 61000,
                "params": {"clientOrderId": "c"},
            },
        ]
    )
    ex.create_orders(
        [{"symbol": BTC, "type": "limit", "side": "buy", "amount": 1, "price": 5}], {"reduceOnly": True}
    )
    ex.cancel_orders(["a", "b"])
    ex.cancel_orders([], params={"clientOrderIds": ["c1", "c2"]})

    intents = [intent for call in sent for intent in read(*call)]

    assert len(sent) == 17
    sends = [i for i in intents if isinstance(i, OrderIntent) and i.kind == "send"]
    assert [(i.order_type, i.reduce_only) for i in sends[:8]] == [
        ("lmt", False),
        ("post", False),
        ("ioc", True),
        ("mkt", False),
        ("stp", False),
        ("stp", False),
        ("stp", True),
        ("take_profit", True),
    ]
    assert sends[3].size == Decimal("0.00001") and sends[6].trigger_signal == "index"
    edits = [i for i in intents if isinstance(i, OrderIntent) and i.kind == "edit"]
    assert [(e.order_id, e.size, e.limit_price, e.stop_price) for e in edits] == [
        ("abc", Decimal("0.00001"), Decimal("58000.5"), None),  # ccxt sends the float: size=1e-05
        ("abc", None, None, Decimal(51000)),
    ]
    assert [i.order_tag for i in sends[8:]] == ["0", "1", "0"]  # ccxt's tags are JSON integers
    assert intents.count(CancelAllIntent(None)) == 1
    assert [i for i in intents if isinstance(i, CancelIntent)] == [
        CancelIntent("abc", None),
        CancelIntent("a", None),
        CancelIntent("b", None),
        CancelIntent(None, "c1"),
        CancelIntent(None, "c2"),
    ]


def test_every_order_request_python_kraken_sdk_makes_is_read() -> None:
    trade = kraken_futures.Trade(key="key", secret=base64.b64encode(bytes(64)).decode())
    sent: list[tuple[str, str, str]] = []

    def record(
        method: str, uri: str, post_params: Any = None, query_params: Any = None, timeout: int = 10, **kw: Any
    ) -> dict[str, Any]:
        _, _, _, body, query = trade._prepare_request(
            method=method,
            uri=uri,
            post_params=post_params,
            query_params=query_params,
            extra_params=kw.get("extra_params"),
            auth=kw.get("auth", True),
        )
        sent.append((endpoint_of(uri), query, body))
        return {}

    trade.request = record
    when = "2026-11-21T10:00:00Z"
    trade.create_order(
        orderType="lmt",
        size=0.00001,
        symbol="PF_XBTUSD",
        side="buy",
        limitPrice=50000.5,
        reduceOnly=True,
        cliOrdId="x y",
        processBefore=when,
    )
    trade.create_order(
        orderType="take_profit",
        size=10,
        symbol="PF_XBTUSD",
        side="buy",
        limitPrice=2500.0,
        triggerSignal="spot",
        stopPrice=2498.4,
    )
    trade.create_order(
        orderType="trailing_stop",
        size=1,
        symbol="PF_XBTUSD",
        side="sell",
        trailingStopDeviationUnit="PERCENT",
        trailingStopMaxDeviation="5",
        reduceOnly=False,
    )
    trade.create_order(orderType="mkt", size=5, symbol="PI_ETHUSD", side="buy")
    trade.edit_order(orderId="abc", size=2.5, limitPrice=1e-05, stopPrice=3, processBefore=when)
    trade.edit_order(cliOrdId="mine", size=100)
    trade.cancel_order(order_id="abc")
    trade.cancel_order(cliOrdId="mine")
    trade.cancel_all_orders()
    trade.cancel_all_orders(symbol="PF_XBTUSD")
    trade.create_batch_order(
        [
            {
                "order": "send",
                "order_tag": "1",
                "orderType": "lmt",
                "symbol": "PI_XBTUSD",
                "side": "buy",
                "size": 5,
                "limitPrice": 1.00,
                "cliOrdId": "another",
            },
            {
                "order": "send",
                "order_tag": "2",
                "orderType": "stp",
                "symbol": "PI_XBTUSD",
                "side": "buy",
                "size": 1,
                "limitPrice": 2.00,
                "stopPrice": 3.00,
            },
            {"order": "cancel", "order_id": "e35d61dd-8a30-4d5f-a574-b5593ef0c050"},
            {"order": "cancel", "cliOrdId": "my_client_id"},
        ],
        processBefore=when,
    )

    intents = [intent for call in sent for intent in read(*call)]

    assert "reduceOnly=True" in sent[0][2] and "size=1e-05" in sent[0][2]  # the SDK's own encoding
    first, take_profit, trailing, market = intents[:4]
    assert (first.size, first.reduce_only, first.cli_ord_id, first.process_before) == (
        Decimal("0.00001"),
        True,
        "x y",
        when,
    )
    assert (take_profit.trigger_signal, take_profit.stop_price) == ("index", Decimal("2498.4"))
    assert (trailing.trailing_deviation, trailing.reduce_only) == (Decimal(5), False)
    assert market.symbol == "PI_ETHUSD"
    assert [(i.order_id, i.cli_ord_id, i.size) for i in intents[4:6]] == [
        ("abc", None, Decimal("2.5")),
        (None, "mine", Decimal(100)),
    ]
    assert intents[6:10] == [
        CancelIntent("abc", None),
        CancelIntent(None, "mine"),
        CancelAllIntent(None),
        CancelAllIntent("PF_XBTUSD"),
    ]
    assert [type(i).__name__ for i in intents[10:]] == [
        "OrderIntent",
        "OrderIntent",
        "CancelIntent",
        "CancelIntent",
    ]


def test_every_code_in_the_table_is_an_error_status() -> None:
    assert all(400 <= status <= 599 for status in CODES.values())
    assert {"nonceBelowThreshold", "nonceDuplicate", "notFound"} <= set(
        CODES
    )  # Kraken's own, used by auth/app
