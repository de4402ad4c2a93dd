"""Properties of order parsing (guardian.gateway.orders), with hypothesis.

- A valid order of each type, as form strings or as a batch item with JSON numbers, parses with every
  value kept exactly: Decimal to the digit and the exponent, never through a float.
- Numbers: what is accepted is exactly a plain ASCII decimal (exponent allowed) that Decimal reads as
  finite, within range, above 0 where it must be; NaN, Infinity, `+1`, whitespace, `_`, unicode digits
  and huge exponents are refused as invalidArgument, and nothing else is ever raised.
- Fail closed: an unknown field, a missing required one, a bad value: a Refusal naming the field.
- A batch is refused iff one of its items is refused on its own, and the refusal names the first.

Deterministic: every test uses this module's settings (derandomize, no example database).
"""

from __future__ import annotations

import json
import string
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian.gateway.orders import (
    LIMIT_PRICED,
    MAX_BATCH_ITEMS,
    MAX_EXPONENT,
    MAX_NUMBER_CHARS,
    ORDER_TYPES,
    SEND_FIELDS,
    STOP_PRICED,
    TRIGGER_SIGNALS,
    TRIGGER_TYPES,
    OrderIntent,
    parse_batch,
    parse_decimal,
    parse_edit,
    parse_send,
    parse_time,
)
from guardian.gateway.refusal import Refusal
from guardian.kraken import wire

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
MANY = settings(SETTINGS, max_examples=500)
NUMBER_CHARS = set("0123456789.eE+-")


def refusal_of(parse: Any, *args: Any, **kwargs: Any) -> Refusal | None:
    """The Refusal `parse(*args, **kwargs)` raises, or None. Any other exception fails the test."""
    try:
        parse(*args, **kwargs)
    except Refusal as exc:
        return exc
    return None


# ---- numbers --------------------------------------------------------------------------------------------


@st.composite
def number_texts(draw: st.DrawFn, *, json_only: bool = False) -> str:
    """A positive number within range, written one of the ways clients write numbers: plain, with an
    exponent (`1e-05`, python-kraken-sdk's str(float)), with trailing zeros, `.5`, `5.`, `007`."""
    digits = draw(st.integers(min_value=1, max_value=14))
    coefficient = draw(st.integers(min_value=10 ** (digits - 1), max_value=10**digits - 1))
    adjusted = draw(st.integers(min_value=-MAX_EXPONENT, max_value=MAX_EXPONENT))
    exponent = adjusted - digits + 1
    value = Decimal(coefficient).scaleb(exponent)
    plain = format(value, "f")
    styles = [
        plain,
        f"{coefficient}e{exponent}",
        f"{coefficient}E{'+' if exponent >= 0 else ''}{exponent}",
        f"{plain}{'' if '.' in plain else '.'}{'0' * draw(st.integers(1, 3))}",  # 1.50, 2.0
    ]
    if not json_only:
        styles += [f"00{plain}", plain + "." if "." not in plain else plain]
        if plain.startswith("0."):
            styles.append(plain[1:])  # .5
    return draw(st.sampled_from([s for s in styles if len(s) <= MAX_NUMBER_CHARS] or [str(coefficient)]))


def is_json_number(text: str) -> bool:
    try:
        return isinstance(json.loads(text), int | float)
    except ValueError:
        return False


def exactly(text: str) -> Decimal:
    """The number a text means, as Decimal reads it: digits and exponent as written."""
    return Decimal(text)


@MANY
@given(text=number_texts())
@example(text="1e-05")  # python-kraken-sdk's str(0.00001)
@example(text="1e-20")
@example(text="1e20")
@example(text="99999999999999999999.99999999999")  # 32 characters
def test_a_number_in_any_client_spelling_parses_to_exactly_its_digits(text: str) -> None:
    value = parse_decimal("size", text)
    assert value == exactly(text)
    assert value.as_tuple() == exactly(text).as_tuple()  # the same digits and exponent, not just equal


HOSTILE = st.text(st.sampled_from("0123456789.eE+-_ \t\n١１²NaInfity"), max_size=12)


@MANY
@given(text=HOSTILE | number_texts() | st.text(max_size=8), signed=st.booleans())
@example(text="NaN", signed=True)
@example(text="Infinity", signed=True)
@example(text="-Infinity", signed=True)
@example(text="inf", signed=True)
@example(text="+1", signed=True)
@example(text=" 1", signed=False)
@example(text="1\n", signed=False)
@example(text="1_000", signed=False)
@example(text="\u0661", signed=False)  # Arabic-Indic 1: Decimal reads it, guardian must not
@example(text="\uff11", signed=False)  # fullwidth 1
@example(text="-0", signed=True)
@example(text="-0", signed=False)
@example(text="0e5", signed=False)
@example(text="1e999999999999999999999", signed=False)  # was decimal.InvalidOperation (a 500)
@example(text="-1E+99999999999999999999999999999", signed=True)
@example(text="0e-99999999999999999999", signed=True)
@example(text="1e21", signed=False)
@example(text="1e-21", signed=False)
@example(text="1" * (MAX_NUMBER_CHARS + 1), signed=False)
def test_a_number_is_accepted_exactly_when_it_is_a_plain_finite_decimal_in_range(
    text: str, signed: bool
) -> None:
    """The oracle is Decimal itself, narrowed to what guardian promises: ASCII digits, `.`, an exponent,
    an optional leading `-`; finite; at most 32 characters; |exponent| up to 20; above 0 unless signed."""
    try:
        meant: Decimal | None = Decimal(text)
    except InvalidOperation:
        meant = None
    acceptable = (
        meant is not None
        and set(text) <= NUMBER_CHARS
        and not text.startswith("+")
        and meant.is_finite()
        and len(text) <= MAX_NUMBER_CHARS
        and (meant == 0 or abs(meant.adjusted()) <= MAX_EXPONENT)
        and (signed or meant > 0)
    )
    refused = refusal_of(parse_decimal, "size", text, signed=signed)
    if acceptable:
        assert refused is None, refused
        assert meant is not None
        assert parse_decimal("size", text, signed=signed).as_tuple() == meant.as_tuple()
    else:
        assert refused is not None and refused.code == "invalidArgument"
        assert refused.message.startswith("size")


@SETTINGS
@given(value=st.integers(min_value=-(10**40), max_value=10**40) | st.floats() | st.booleans())
def test_a_json_number_or_boolean_parses_as_its_own_value_or_is_refused(value: int | float | bool) -> None:
    refused = refusal_of(parse_decimal, "size", value)
    if isinstance(value, bool) or refused is not None:
        assert refused is not None and refused.code == "invalidArgument"
        return
    assert parse_decimal("size", value) == Decimal(repr(value)) > 0


# ---- whole orders ---------------------------------------------------------------------------------------
SYMBOLS = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
IDS = st.text(st.sampled_from(string.printable[:95]), min_size=1, max_size=100)
# As Kraken writes times (`2026-01-31T12:00:00.000Z`), over a span of years wider than any order's.
TIMES = st.datetimes(datetime(1970, 1, 2), datetime(2999, 12, 31)).map(
    lambda t: t.isoformat(timespec="milliseconds") + "Z"
)
PERCENT = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(50), places=3).map(lambda d: format(d, "f"))


@st.composite
def valid_sends(draw: st.DrawFn, *, json_only: bool = False) -> tuple[dict[str, str], dict[str, Any]]:
    """(sendorder fields as form strings, the OrderIntent fields they must give)."""
    number = number_texts(json_only=json_only)
    order_type = draw(st.sampled_from(ORDER_TYPES))
    symbol = draw(SYMBOLS)
    side = draw(st.sampled_from(["buy", "sell"]))
    size = draw(number)
    fields = {"orderType": order_type, "symbol": symbol, "side": side, "size": size}
    want: dict[str, Any] = {
        "order_type": order_type,
        "symbol": symbol.upper(),
        "side": side,
        "size": exactly(size),
        "reduce_only": False,
    }
    limit_wanted = order_type in LIMIT_PRICED or (order_type in TRIGGER_TYPES and draw(st.booleans()))
    if limit_wanted:
        fields["limitPrice"] = draw(number)
        want["limit_price"] = exactly(fields["limitPrice"])
    if order_type in STOP_PRICED or (order_type == "trailing_stop" and draw(st.booleans())):
        fields["stopPrice"] = draw(number)
        want["stop_price"] = exactly(fields["stopPrice"])
    if order_type == "trailing_stop":
        unit = draw(st.sampled_from(["PERCENT", "QUOTE_CURRENCY"]))
        deviation = draw(PERCENT if unit == "PERCENT" else number)
        fields |= {"trailingStopMaxDeviation": deviation, "trailingStopDeviationUnit": unit}
        want |= {"trailing_deviation": exactly(deviation), "trailing_unit": unit}
    if order_type in TRIGGER_TYPES and not limit_wanted and draw(st.booleans()):
        offset = draw(number)
        offset = "-" + offset if draw(st.booleans()) else offset
        offset_unit = draw(st.sampled_from(["PERCENT", "QUOTE_CURRENCY"]))
        fields |= {"limitPriceOffsetValue": offset, "limitPriceOffsetUnit": offset_unit}
        want |= {"limit_offset": exactly(offset), "limit_offset_unit": offset_unit}
    if draw(st.booleans()):
        flag = draw(st.sampled_from(["true", "True", "false", "False"]))
        fields["reduceOnly"] = flag
        want["reduce_only"] = flag.lower() == "true"
    if draw(st.booleans()):
        fields["triggerSignal"] = draw(st.sampled_from(sorted(TRIGGER_SIGNALS)))
        want["trigger_signal"] = TRIGGER_SIGNALS[fields["triggerSignal"]]
    if draw(st.booleans()):
        fields["cliOrdId"] = want["cli_ord_id"] = draw(IDS)
    return fields, want


def assert_intent(intent: OrderIntent, want: dict[str, Any]) -> None:
    """Every field as wanted, numbers to the digit (as_tuple), and nothing else set."""
    for name in OrderIntent.__slots__:
        got, expected = getattr(intent, name), want.get(name, OrderIntent.__dataclass_fields__[name].default)
        assert got == expected, name
        if isinstance(expected, Decimal):
            assert got.as_tuple() == expected.as_tuple(), name


@SETTINGS
@given(order=valid_sends(), before=st.none() | TIMES)
def test_a_valid_order_of_each_type_parses_with_every_value_kept_exactly(
    order: tuple[dict[str, str], dict[str, Any]], before: str | None
) -> None:
    fields, want = order
    if before is not None:
        fields, want = fields | {"processBefore": before}, want | {"process_before": before}
    assert_intent(parse_send(fields), {"kind": "send", **want})


@SETTINGS
@given(order=valid_sends(json_only=True), tag=st.integers(0, 10**6) | IDS, strings=st.booleans())
@example(
    order=(
        {
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": "10.0000000000000001",
            "limitPrice": "1",
        },
        {
            "order_type": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": Decimal("10.0000000000000001"),
            "limit_price": Decimal(1),
            "reduce_only": False,
        },
    ),
    tag=0,
    strings=False,
)  # a double would make the size 10: the guard must judge the digits the exchange reads
def test_a_valid_batch_item_with_json_numbers_parses_with_every_value_kept_exactly(
    order: tuple[dict[str, str], dict[str, Any]], tag: int | str, strings: bool
) -> None:
    """The item goes through the real wire reader as ccxt sends it: numbers as JSON numbers (or, as
    some clients do, as strings), reduceOnly as a JSON boolean."""
    fields, want = order
    numeric = {"size", "limitPrice", "stopPrice", "trailingStopMaxDeviation", "limitPriceOffsetValue"}
    parts = ['"order":"send"', f'"order_tag":{json.dumps(tag)}']
    for name, value in fields.items():
        if name in numeric and not strings:
            assert is_json_number(value), value
            parts.append(f'"{name}":{value}')
        elif name == "reduceOnly":
            parts.append(f'"{name}":{value.lower()}')
        else:
            parts.append(f"{json.dumps(name)}:{json.dumps(value)}")
    raw = '{"batchOrder":[{' + ",".join(parts) + "}]}"
    items, _ = wire.parse_batch(wire.request_fields("", "json=" + raw))

    [intent] = parse_batch(items)

    assert isinstance(intent, OrderIntent)
    assert_intent(intent, {"kind": "send", "order_tag": str(tag), **want})


@SETTINGS
@given(
    order=valid_sends(),
    field=st.sampled_from(sorted(SEND_FIELDS)),
    value=st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.lists(st.integers(), max_size=2),
)
def test_any_one_field_changed_to_anything_parses_or_is_refused_naming_a_field(
    order: tuple[dict[str, str], dict[str, Any]], field: str, value: Any
) -> None:
    fields = order[0] | {field: value}
    refused = refusal_of(parse_send, fields)
    if refused is not None:
        assert refused.code in ("invalidArgument", "requiredArgumentMissing")
        assert any(name in refused.message for name in SEND_FIELDS)


@SETTINGS
@given(order=valid_sends(), name=st.text(min_size=1, max_size=20), value=st.text(max_size=5))
@example(
    order=({"orderType": "mkt", "symbol": "X", "side": "buy", "size": "1"}, {}), name="leverage", value="50"
)
@example(
    order=({"orderType": "mkt", "symbol": "X", "side": "buy", "size": "1"}, {}),
    name="reduce_only",
    value="true",
)
def test_a_field_guardian_does_not_check_is_refused_by_name(
    order: tuple[dict[str, str], dict[str, Any]], name: str, value: str
) -> None:
    if name in SEND_FIELDS:
        return
    refused = refusal_of(parse_send, order[0] | {name: value})
    assert refused is not None and refused.code == "invalidArgument"
    assert repr(name)[:21] in refused.message


@SETTINGS
@given(order=valid_sends(), drop=st.sampled_from(["orderType", "symbol", "side", "size"]))
def test_a_missing_required_field_is_refused_by_name(
    order: tuple[dict[str, str], dict[str, Any]], drop: str
) -> None:
    fields = {k: v for k, v in order[0].items() if k != drop}
    refused = refusal_of(parse_send, fields)
    assert refused is not None and refused.code == "requiredArgumentMissing"
    assert refused.message.startswith(drop)


@SETTINGS
@given(
    order_id=st.none() | IDS,
    cli_ord_id=st.none() | IDS,
    size=st.none() | number_texts(),
    limit=st.none() | number_texts(),
    mode=st.none() | st.sampled_from(["ABSOLUTE", "RELATIVE"]),
)
def test_an_edit_names_exactly_one_order_and_keeps_its_values_exactly(
    order_id: str | None, cli_ord_id: str | None, size: str | None, limit: str | None, mode: str | None
) -> None:
    given_fields = {
        "orderId": order_id,
        "cliOrdId": cli_ord_id,
        "size": size,
        "limitPrice": limit,
        "qtyMode": mode,
    }
    fields = {k: v for k, v in given_fields.items() if v is not None}
    refused = refusal_of(parse_edit, fields)
    if order_id is None and cli_ord_id is None:
        assert refused is not None and refused.code == "requiredArgumentMissing"
    elif order_id is not None and cli_ord_id is not None:
        assert refused is not None and refused.code == "invalidArgument"
    else:
        assert refused is None
        want = {
            "kind": "edit",
            "order_id": order_id,
            "cli_ord_id": cli_ord_id,
            "size": None if size is None else exactly(size),
            "limit_price": None if limit is None else exactly(limit),
            "qty_mode": mode,
        }
        assert_intent(parse_edit(fields), want)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00\x00",  # was accepted: fromisoformat reads past one trailing NUL
        "2026-01-31T12:00:00Z\x00",
        "2026-01-31T12:00:00\u00a0",
        "２０２６-01-31T12:00:00Z",
    ],
)
def test_a_process_before_time_with_a_control_or_non_ascii_character_is_refused(text: str) -> None:
    refused = refusal_of(parse_time, "processBefore", text)
    assert refused is not None and refused.code == "invalidArgument"


@SETTINGS
@given(moment=TIMES)
def test_a_process_before_time_as_kraken_writes_it_is_kept_as_sent(moment: str) -> None:
    assert parse_time("processBefore", moment) == moment


# ---- batches --------------------------------------------------------------------------------------------
BAD_CHANGES: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [
        {"size": "-1"},
        {"size": "NaN"},
        {"orderType": "market"},
        {"leverage": "10"},
        {"side": None},
        {"order": "replace"},
        {"cliOrdId": ""},
        {"size": True},
    ]
)


@st.composite
def batch_items(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 8 items: sends, edits and cancels, some spoilt by one bad change."""
    items: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["send", "edit", "cancel"]))
        if kind == "send":
            item: dict[str, Any] = {"order": "send", "order_tag": str(index), **draw(valid_sends())[0]}
        elif kind == "edit":
            item = {"order": "edit", "order_id": f"o-{index}", "size": draw(number_texts())}
        else:
            item = {"order": "cancel", "cliOrdId": f"c-{index}"}
        if draw(st.integers(0, 4)) == 0:
            item = {k: v for k, v in (item | draw(BAD_CHANGES)).items() if v is not None}
        items.append(item)
    return items


@SETTINGS
@given(items=batch_items())
def test_a_batch_is_refused_iff_an_item_is_refused_alone_and_the_refusal_names_the_first(
    items: list[dict[str, Any]],
) -> None:
    alone = [refusal_of(parse_batch, [item]) for item in items]
    first = next((index for index, refused in enumerate(alone) if refused is not None), None)

    refused = refusal_of(parse_batch, items)

    if first is None:
        assert refused is None
        assert len(parse_batch(items)) == len(items)
        return
    expected = alone[first]
    assert refused is not None and expected is not None
    assert (refused.code, refused.item) == (expected.code, first)
    assert refused.message.startswith(f"batchOrder[{first}]")
    tag = items[first].get("order_tag")
    assert refused.order_tag == (tag if isinstance(tag, str) and tag else None)


def test_a_batch_over_the_item_limit_is_refused_as_too_large() -> None:
    item = {"order": "cancel", "order_id": "o-1"}
    assert len(parse_batch([item] * MAX_BATCH_ITEMS)) == MAX_BATCH_ITEMS
    refused = refusal_of(parse_batch, [item] * (MAX_BATCH_ITEMS + 1))
    assert refused is not None and refused.code == "requestTooLarge"
