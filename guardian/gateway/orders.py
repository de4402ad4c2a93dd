"""Bots' order requests, read and checked: Kraken-dialect fields in, frozen intents out, or a `Refusal`.

Fields arrive as form strings (ccxt sends `true`, python-kraken-sdk `True` and `str(float)`, e.g.
`1e-05`) or, inside a batch, as JSON numbers, strings and booleans. They leave as an `OrderIntent`,
`CancelIntent` or `CancelAllIntent` with Decimal numbers and checked enums, for the guard's rules
(`guardian.gateway.rules`) to judge. A JSON number is read from the digits sent (`wire.JsonNumber`), never
from the nearest double: the exchange reads the digits. Nothing here does I/O.

Fail closed: a field guardian does not check could change what an order does, so a field outside the
endpoint's allow-list is refused (`invalidArgument`, listing the allowed ones). Each allow-list is
Kraken's documented parameters, which covers every field ccxt 4.5 and python-kraken-sdk 3.5 send:

- sendorder: ccxt `createOrder` sends orderType symbol side size limitPrice stopPrice cliOrdId
  reduceOnly triggerSignal; python-kraken-sdk `Trade.create_order` also trailingStopMaxDeviation
  trailingStopDeviationUnit processBefore. limitPriceOffsetValue/Unit: Kraken's docs only.
- editorder: ccxt `editOrder` sends orderId size limitPrice; the SDK's `edit_order` orderId|cliOrdId
  size limitPrice stopPrice processBefore. Trailing fields and qtyMode: Kraken's docs only.
- cancelorder: ccxt `cancelOrder` order_id; the SDK's `cancel_order` order_id|cliOrdId processBefore.
- cancelallorders: both send symbol (optional).
- batchorder: ccxt `createOrders` items are its sendorder fields plus order, order_tag (a JSON integer,
  0, 1, ...); `cancelOrders` items are order + order_id|cliOrdId, and it copies its params (e.g.
  `clientOrderIds`) into the document. The SDK's `create_batch_order` sends the caller's items as given
  and `processBefore` as a form field beside `json`.

Decisions where Kraken's behaviour is unverified:
- `triggerSignal=spot` is read as `index`: python-kraken-sdk only lets callers choose mark, spot or last,
  and the simulator accepts it; Kraken's docs name mark, index, last.
- Booleans are `true`/`false` (ccxt, JSON) or `True`/`False` (the SDK); `1`/`0` and other spellings are
  refused, although the simulator accepts them. Enums are matched exactly as Kraken spells them, where
  the simulator is case-insensitive for triggerSignal and trailingStopDeviationUnit.
- An empty value (`limitPrice=`) is refused as malformed (invalidArgument); JSON null counts as absent.
- guardian refuses only what changes the risk it judges, or what it cannot read unambiguously. A field
  that does not apply to the order type is read like any other (a value that is not well-formed is
  refused) and forwarded unchanged, and the order is judged as its type says: the exchange ignores such a
  field or judges it itself (python-kraken-sdk's own tests send a `lmt` with a `stopPrice`). None of
  these changes the size, side, price or reduce-only that guardian judges:
  - stopPrice, limitPriceOffsetValue and limitPriceOffsetUnit on a type that does not trigger (lmt,
    post, ioc, fok, mkt): Kraken's docs give them to stp, take_profit and trailing_stop. A limit-priced
    order fills at its limit price or better, which is what guardian judges, whatever a trigger did; a
    mkt order is an ioc within 1% of the mark.
  - trailingStopMaxDeviation and trailingStopDeviationUnit on a type other than trailing_stop: they only
    move a trailing stop's trigger. Their PERCENT range (0.1 to 50, as the simulator has it) is checked
    on trailing_stop orders only.
  - triggerSignal on any type: without a trigger there is nothing for it to change.
  limitPrice on mkt is not ignored: whether the exchange takes it as the order's protection is not
  documented, so the order is judged at the higher of it and the mark, and it must be inside the price
  band (`guardian.gateway.rules`). Still refused, because which price the triggered order would get is
  not something guardian will guess: limitPrice together with a limit-price offset on a trigger order,
  and an offset's value without its unit (or the reverse) on one.
- editorder and cancelorder take exactly one of their id fields and cliOrdId: if both were sent, which
  one Kraken acts on is not something to guess (the guard must judge the order that will change).
- Symbols are read case-insensitively and carried upper-case (the simulator upper-cases them too), so
  `pf_xbtusd` cannot slip past a limit set for `PF_XBTUSD`.
- A batch item's order_tag may be a JSON string or integer (ccxt sends integers) and is carried as text.
- At most `MAX_BATCH_ITEMS` items per batch: the Kraken docs available name no maximum (unverified).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, TypeVar

from guardian.gateway.refusal import Refusal
from guardian.kraken.times import parse_iso
from guardian.kraken.wire import JsonNumber

ORDER_TYPES: Final = ("lmt", "post", "ioc", "mkt", "stp", "take_profit", "trailing_stop", "fok")
LIMIT_PRICED: Final = ("lmt", "post", "ioc", "fok")
STOP_PRICED: Final = ("stp", "take_profit")
TRIGGER_TYPES: Final = ("stp", "take_profit", "trailing_stop")
SIDES: Final = ("buy", "sell")
# What a trigger signal means; `spot` is python-kraken-sdk's (and Kraken's answers') name for index.
TRIGGER_SIGNALS: Final = {"mark": "mark", "index": "index", "last": "last", "spot": "index"}
PRICE_UNITS: Final = ("PERCENT", "QUOTE_CURRENCY")  # trailingStopDeviationUnit, limitPriceOffsetUnit
QTY_MODES: Final = ("ABSOLUTE", "RELATIVE")
TRAILING_PERCENT_RANGE: Final = (Decimal("0.1"), Decimal(50))
MAX_NUMBER_CHARS: Final = 32
MAX_EXPONENT: Final = 20  # |adjusted exponent| of any number: no price or size is near 1e20 or 1e-20
MAX_ID_CHARS: Final = 100  # cliOrdId (Kraken's docs), order ids, order tags
MAX_SYMBOL_CHARS: Final = 64
MAX_TIME_CHARS: Final = 64
MAX_BATCH_ITEMS: Final = 100  # no documented maximum found; 100 items cost 109 of the 500 budget units
ZERO: Final = Decimal(0)

_SEND_COMMON = frozenset(
    {
        "orderType",
        "symbol",
        "side",
        "size",
        "limitPrice",
        "stopPrice",
        "cliOrdId",
        "reduceOnly",
        "triggerSignal",
        "trailingStopMaxDeviation",
        "trailingStopDeviationUnit",
        "limitPriceOffsetValue",
        "limitPriceOffsetUnit",
    }
)
_EDIT_COMMON = frozenset(
    {"size", "limitPrice", "stopPrice", "trailingStopMaxDeviation", "trailingStopDeviationUnit", "qtyMode"}
)
SEND_FIELDS: Final = _SEND_COMMON | {"processBefore"}
EDIT_FIELDS: Final = _EDIT_COMMON | {"orderId", "cliOrdId", "processBefore"}
CANCEL_FIELDS: Final = frozenset({"order_id", "cliOrdId", "processBefore"})
CANCEL_ALL_FIELDS: Final = frozenset({"symbol"})
BATCH_SEND_FIELDS: Final = _SEND_COMMON | {"order", "order_tag"}
BATCH_EDIT_FIELDS: Final = _EDIT_COMMON | {"order", "order_id", "cliOrdId"}
BATCH_CANCEL_FIELDS: Final = frozenset({"order", "order_id", "cliOrdId"})
# batchorder's form: `json`, and processBefore (python-kraken-sdk) or ProcessBefore (Kraken's docs).
BATCH_FORM_FIELDS: Final = frozenset({"json", "processBefore", "ProcessBefore"})
BATCH_DOCUMENT_FIELDS: Final = frozenset({"batchOrder", "processBefore", "ProcessBefore"})

_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SYMBOL = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_SYMBOL_CHARS}}}")
_PRINTABLE = re.compile(rf"[\x20-\x7e]{{1,{MAX_ID_CHARS}}}")
# Python 3.11's datetime.fromisoformat accepts one trailing NUL (`2026-01-31T12:00:00\x00`): printable only.
_TIME_TEXT = re.compile(rf"[\x20-\x7e]{{1,{MAX_TIME_CHARS}}}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """A new order (`send`), an edit as sent (`edit`: only what it changes), or an order as it will be.

    An edit's `symbol`, `side`, `order_type` and `reduce_only` are None until `rules.merge_edit` has
    combined it with the order it changes. `size` is the whole order, fills included; `filled` is what an
    open order has already filled (0 for anything new), so an edit's new size can be worked out.
    """

    kind: Literal["send", "edit"]
    order_type: str | None = None
    symbol: str | None = None
    side: str | None = None
    size: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool | None = None
    trigger_signal: str | None = None  # mark | index | last; None: the exchange's default
    cli_ord_id: str | None = None
    order_id: str | None = None  # edit: the order it changes (an earlier item's order_tag, in a batch)
    qty_mode: str | None = None  # edit: ABSOLUTE | RELATIVE; None: not sent
    trailing_deviation: Decimal | None = None
    trailing_unit: str | None = None
    limit_offset: Decimal | None = None  # limitPriceOffsetValue, signed
    limit_offset_unit: str | None = None
    process_before: str | None = None
    order_tag: str | None = None  # batch send items
    filled: Decimal = ZERO

    @property
    def merged(self) -> bool:
        """A whole order (a send, or an edit combined with its original): the limits can judge it."""
        return self.symbol is not None and self.size is not None and self.order_type is not None


@dataclass(frozen=True, slots=True)
class CancelIntent:
    order_id: str | None
    cli_ord_id: str | None
    process_before: str | None = None
    kind: Literal["cancel"] = "cancel"


@dataclass(frozen=True, slots=True)
class CancelAllIntent:
    symbol: str | None  # None: every symbol
    kind: Literal["cancel_all"] = "cancel_all"


Intent = OrderIntent | CancelIntent | CancelAllIntent


# ---- reading fields -----------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value as a message may quote it: short, printable."""
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _invalid(name: str, value: Any, expected: str) -> Refusal:
    if value == "":
        return Refusal("invalidArgument", f"{name} is empty: expected {expected}")
    return Refusal("invalidArgument", f"{name} {_shown(value)} is not valid: expected {expected}")


def _number_text(name: str, raw: Any, expected: str) -> str:
    if isinstance(raw, bool):  # JSON true is not 1
        raise _invalid(name, raw, expected)
    if isinstance(raw, JsonNumber):
        text = raw.text  # the digits the exchange will read, not the nearest double
    elif isinstance(raw, int | float):
        text = repr(raw)  # JSON numbers; float repr of nan/inf fails the pattern below
    elif isinstance(raw, str):
        text = raw
    else:
        raise _invalid(name, raw, expected)
    if len(text) > MAX_NUMBER_CHARS:
        raise Refusal(
            "invalidArgument",
            f"{name} is {len(text)} characters long: expected {expected}, at most {MAX_NUMBER_CHARS} characters",
        )
    return text


def parse_decimal(name: str, raw: Any, *, signed: bool = False) -> Decimal:
    """A finite decimal number, above 0 unless `signed`. Exponent notation is fine (`1e-05`)."""
    expected = "a number such as -0.5" if signed else "a number above 0 such as 1.5"
    text = _number_text(name, raw, expected)
    if not _NUMBER.fullmatch(text):  # no NaN, Infinity, spaces, `+`, `_` or non-ASCII digits
        raise _invalid(name, raw, expected)
    try:
        value: Decimal | None = Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal holds: `1e999999999999999999999`
        value = None
    if value is None or (value != 0 and abs(value.adjusted()) > MAX_EXPONENT):
        raise Refusal("invalidArgument", f"{name} {_shown(raw)} is out of range: expected {expected}")
    if not signed and value <= 0:
        raise Refusal("invalidArgument", f"{name} {_shown(raw)} must be above 0")
    return value


def parse_flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "True"):
        return True
    if raw in ("false", "False"):
        return False
    raise _invalid(name, raw, "true or false")


def _text(name: str, raw: Any, expected: str) -> str:
    if not isinstance(raw, str):
        raise _invalid(name, raw, expected)
    return raw


def _choice(choices: Sequence[str]) -> Callable[[str, Any], str]:
    expected = "one of " + ", ".join(choices)

    def parse(name: str, raw: Any) -> str:
        value = _text(name, raw, expected)
        if value not in choices:
            raise _invalid(name, raw, expected)
        return value

    return parse


def parse_identifier(name: str, raw: Any) -> str:
    """cliOrdId, an order id, an order tag: 1 to 100 printable ASCII characters."""
    expected = f"1 to {MAX_ID_CHARS} printable ASCII characters"
    value = _text(name, raw, expected)
    if not _PRINTABLE.fullmatch(value):
        if len(value) > MAX_ID_CHARS:
            raise Refusal("invalidArgument", f"{name} is {len(value)} characters long: expected {expected}")
        raise _invalid(name, raw, expected)
    return value


def parse_symbol(name: str, raw: Any) -> str:
    """A contract symbol (`PF_XBTUSD`), upper-cased: Kraken reads symbols case-insensitively."""
    value = _text(name, raw, 'a symbol such as "PF_XBTUSD"')
    if not _SYMBOL.fullmatch(value):
        raise _invalid(name, raw, 'a symbol such as "PF_XBTUSD"')
    return value.upper()


def parse_time(name: str, raw: Any) -> str:
    """An ISO 8601 time (kept as sent: the exchange reads it)."""
    expected = "an ISO 8601 time such as 2026-01-31T12:00:00.000Z"
    value = _text(name, raw, expected)
    if not _TIME_TEXT.fullmatch(value):
        raise _invalid(name, raw, expected)
    try:
        parse_iso(value)
    except (ValueError, OverflowError):
        raise _invalid(name, raw, expected) from None
    return value


def parse_order_tag(name: str, raw: Any) -> str:
    """A batch item's tag: text, or a JSON integer (ccxt numbers its items 0, 1, ...), carried as text."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    return parse_identifier(name, raw)


_parse_order_type = _choice(ORDER_TYPES)
_parse_side = _choice(SIDES)
_parse_unit = _choice(PRICE_UNITS)
_parse_qty_mode = _choice(QTY_MODES)
_parse_signal_name = _choice(tuple(TRIGGER_SIGNALS))


def _parse_signal(name: str, raw: Any) -> str:
    return TRIGGER_SIGNALS[_parse_signal_name(name, raw)]


def _positive(name: str, raw: Any) -> Decimal:
    return parse_decimal(name, raw)


def _signed(name: str, raw: Any) -> Decimal:
    return parse_decimal(name, raw, signed=True)


def _folded(name: str) -> str:
    return name.replace("_", "").lower()


class _Fields:
    """One request's (or batch item's) fields, after refusing any field outside `allowed`."""

    def __init__(self, fields: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
        unknown = sorted(str(key) for key in fields if key not in allowed)
        if unknown:
            name = unknown[0]
            near = [a for a in allowed if _folded(a) == _folded(name)]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise Refusal(
                "invalidArgument",
                f"{what} does not take {_shown(name)}{hint}: guardian forwards only the fields it checks, "
                f"which are {', '.join(sorted(allowed))}",
            )
        self.fields = fields

    def get(self, name: str, parse: Callable[[str, Any], T]) -> T | None:
        raw = self.fields.get(name)
        return None if raw is None else parse(name, raw)  # None: absent, or JSON null

    def need(self, name: str, parse: Callable[[str, Any], T]) -> T:
        value = self.get(name, parse)
        if value is None:
            raise Refusal("requiredArgumentMissing", f"{name} is required")
        return value

    def one_of(self, first: str, second: str) -> tuple[str | None, str | None]:
        """Exactly one of two identifier fields."""
        a, b = self.get(first, parse_identifier), self.get(second, parse_identifier)
        if a is None and b is None:
            raise Refusal("requiredArgumentMissing", f"{first} or {second} is required: name the order")
        if a is not None and b is not None:
            raise Refusal(
                "invalidArgument",
                f"give {first} or {second}, not both: which one the exchange would act on is not something "
                "guardian will guess",
            )
        return a, b


# ---- sendorder, editorder, cancelorder, cancelallorders ------------------------------------------------


def parse_send(fields: Mapping[str, Any]) -> OrderIntent:
    """A sendorder request. Raises Refusal (requiredArgumentMissing, invalidArgument) naming the field."""
    return _send(_Fields(fields, SEND_FIELDS, "sendorder"), process_before=True)


def _send(f: _Fields, *, process_before: bool, order_tag: str | None = None) -> OrderIntent:
    order_type = f.need("orderType", _parse_order_type)
    symbol = f.need("symbol", parse_symbol)
    side = f.need("side", _parse_side)
    size = f.need("size", _positive)
    limit_price = f.get("limitPrice", _positive)
    stop_price = f.get("stopPrice", _positive)
    deviation = f.get("trailingStopMaxDeviation", _positive)
    unit = f.get("trailingStopDeviationUnit", _parse_unit)
    offset = f.get("limitPriceOffsetValue", _signed)
    offset_unit = f.get("limitPriceOffsetUnit", _parse_unit)
    reduce_only = f.get("reduceOnly", parse_flag)
    signal = f.get("triggerSignal", _parse_signal)
    cli_ord_id = f.get("cliOrdId", parse_identifier)
    before = f.get("processBefore", parse_time) if process_before else None

    if order_type in LIMIT_PRICED and limit_price is None:
        raise Refusal("requiredArgumentMissing", f"limitPrice is required for {order_type} orders")
    if order_type in STOP_PRICED and stop_price is None:
        raise Refusal("requiredArgumentMissing", f"stopPrice is required for {order_type} orders")
    if order_type == "trailing_stop":
        if deviation is None:
            raise Refusal(
                "requiredArgumentMissing", "trailingStopMaxDeviation is required for trailing_stop orders"
            )
        if unit is None:
            raise Refusal(
                "requiredArgumentMissing", "trailingStopDeviationUnit is required for trailing_stop orders"
            )
        _check_deviation(deviation, unit)
    else:
        deviation = unit = None  # forwarded as sent, not judged: they move a trailing stop's trigger only
    if order_type not in TRIGGER_TYPES:
        stop_price = offset = offset_unit = None  # forwarded as sent, not judged: nothing triggers
    elif offset is not None or offset_unit is not None:
        if offset is None:
            raise Refusal(
                "requiredArgumentMissing", "limitPriceOffsetValue is required with limitPriceOffsetUnit"
            )
        if offset_unit is None:
            raise Refusal(
                "requiredArgumentMissing", "limitPriceOffsetUnit is required with limitPriceOffsetValue"
            )
        if limit_price is not None:
            raise Refusal(
                "invalidArgument",
                "give limitPrice or limitPriceOffsetValue, not both: which one the exchange would use is "
                "not something guardian will guess",
            )
    return OrderIntent(
        kind="send",
        order_type=order_type,
        symbol=symbol,
        side=side,
        size=size,
        limit_price=limit_price,
        stop_price=stop_price,
        reduce_only=bool(reduce_only),
        trigger_signal=signal,
        cli_ord_id=cli_ord_id,
        trailing_deviation=deviation,
        trailing_unit=unit,
        limit_offset=offset,
        limit_offset_unit=offset_unit,
        process_before=before,
        order_tag=order_tag,
    )


def _check_deviation(deviation: Decimal | None, unit: str | None) -> None:
    low, high = TRAILING_PERCENT_RANGE
    if deviation is not None and unit == "PERCENT" and not low <= deviation <= high:
        raise Refusal(
            "invalidArgument",
            f"trailingStopMaxDeviation {deviation} PERCENT is out of range: expected {low} to {high}",
        )


def parse_edit(fields: Mapping[str, Any]) -> OrderIntent:
    """An editorder request: `orderId` (camelCase on this endpoint) or `cliOrdId`, and what changes."""
    f = _Fields(fields, EDIT_FIELDS, "editorder")
    order_id, cli_ord_id = f.one_of("orderId", "cliOrdId")
    return _edit(f, order_id, cli_ord_id, f.get("processBefore", parse_time))


def _edit(f: _Fields, order_id: str | None, cli_ord_id: str | None, before: str | None) -> OrderIntent:
    deviation = f.get("trailingStopMaxDeviation", _positive)
    unit = f.get("trailingStopDeviationUnit", _parse_unit)
    _check_deviation(deviation, unit)
    return OrderIntent(
        kind="edit",
        order_id=order_id,
        cli_ord_id=cli_ord_id,
        size=f.get("size", _positive),
        limit_price=f.get("limitPrice", _positive),
        stop_price=f.get("stopPrice", _positive),
        trailing_deviation=deviation,
        trailing_unit=unit,
        qty_mode=f.get("qtyMode", _parse_qty_mode),
        process_before=before,
    )


def parse_cancel(fields: Mapping[str, Any]) -> CancelIntent:
    """A cancelorder request: `order_id` (snake_case on this endpoint) or `cliOrdId`."""
    f = _Fields(fields, CANCEL_FIELDS, "cancelorder")
    order_id, cli_ord_id = f.one_of("order_id", "cliOrdId")
    return CancelIntent(order_id, cli_ord_id, f.get("processBefore", parse_time))


def parse_cancel_all(fields: Mapping[str, Any]) -> CancelAllIntent:
    """A cancelallorders request; without `symbol` it cancels every order of the account."""
    f = _Fields(fields, CANCEL_ALL_FIELDS, "cancelallorders")
    return CancelAllIntent(f.get("symbol", parse_symbol))


# ---- batchorder ----------------------------------------------------------------------------------------


def parse_batch(items: Sequence[Mapping[str, Any]]) -> list[OrderIntent | CancelIntent]:
    """The items of a batchorder request, in order. A fault in item i raises its Refusal with `item=i`
    and the item's order_tag; the whole batch is refused.

    Items: `{"order": "send", "order_tag", ...sendorder fields}`, `{"order": "edit", "order_id" |
    "cliOrdId", ...}` (order_id may be an earlier send item's order_tag), `{"order": "cancel", "order_id"
    | "cliOrdId"}`. processBefore belongs to the whole batch (`parse_batch_envelope`), not to items.
    """
    if len(items) > MAX_BATCH_ITEMS:
        raise Refusal(
            "requestTooLarge",
            f"batchOrder has {len(items)} items; guardian takes at most {MAX_BATCH_ITEMS}: split the batch",
        )
    parsed: list[OrderIntent | CancelIntent] = []
    for index, item in enumerate(items):
        tag = _loose_tag(item)
        try:
            parsed.append(_batch_item(item, tag))
        except Refusal as exc:
            raise exc.for_item(index, tag) from None
    return parsed


def _loose_tag(item: Any) -> str | None:
    """An item's order_tag for locating an error, if it is a usable one (never raises)."""
    if not isinstance(item, Mapping):
        return None
    try:
        return parse_order_tag("order_tag", item["order_tag"]) if item.get("order_tag") is not None else None
    except Refusal:
        return None


def _batch_item(item: Any, tag: str | None) -> OrderIntent | CancelIntent:
    if not isinstance(item, Mapping):
        raise Refusal("invalidArgument", "each batch item must be an object with an 'order' kind")
    kind = item.get("order")
    if kind is None:
        raise Refusal("requiredArgumentMissing", "order is required: send, edit or cancel")
    if kind == "send":
        f = _Fields(item, BATCH_SEND_FIELDS, "a batch send item")
        return _send(f, process_before=False, order_tag=f.get("order_tag", parse_order_tag))
    if kind == "edit":
        f = _Fields(item, BATCH_EDIT_FIELDS, "a batch edit item")
        order_id, cli_ord_id = f.one_of("order_id", "cliOrdId")
        return _edit(f, order_id, cli_ord_id, None)
    if kind == "cancel":
        f = _Fields(item, BATCH_CANCEL_FIELDS, "a batch cancel item")
        order_id, cli_ord_id = f.one_of("order_id", "cliOrdId")
        return CancelIntent(order_id, cli_ord_id)
    raise _invalid("order", kind, "one of send, edit, cancel")


def parse_batch_envelope(form: Mapping[str, Any], document: Mapping[str, Any]) -> str | None:
    """Check what surrounds a batch's items; return its processBefore, if any.

    `form` is the request's fields (`json` and perhaps processBefore), `document` the parsed JSON (see
    `guardian.kraken.wire.parse_batch`). Besides batchOrder and processBefore (either spelling, in either
    place, at most once), the document may hold what ccxt copies there from its params: `clientOrderIds`
    (cancelOrders; the items carry the ids), and any key that every item repeats with the same value
    (createOrders extends each item and the document with the same params, and the items are checked).
    Anything else is refused: what Kraken would do with it is unknown.
    """
    _Fields(form, BATCH_FORM_FIELDS, "batchorder")
    items = document.get("batchOrder")
    items = items if isinstance(items, list) else []
    for key, value in document.items():
        if key in BATCH_DOCUMENT_FIELDS:
            continue
        if key == "clientOrderIds" and _all_text(value):
            continue
        if items and all(isinstance(i, Mapping) and key in i and i[key] == value for i in items):
            continue
        raise Refusal(
            "invalidArgument",
            f"the batch document does not take {_shown(key)}: it holds batchOrder and optionally "
            "processBefore; put order fields in the items",
        )
    found = [
        (name, raw)
        for where in (form, document)
        for name in ("processBefore", "ProcessBefore")
        if (raw := where.get(name)) is not None
    ]
    if len(found) > 1:
        raise Refusal("invalidArgument", "processBefore is given more than once: give it once")
    return parse_time(*found[0]) if found else None


def _all_text(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
