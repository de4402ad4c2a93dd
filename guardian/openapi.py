"""The OpenAPI 3.0 description of guardian's local API, served at `GET /openapi.json` (contract path).

It is built from the code's own tables, so that it cannot drift from what the daemon does without a
test noticing: the Kraken-compatible operations are the endpoint table (`guardian.kraken.endpoints`,
which the gateway routes as a whole), their fields the guard's allow-lists, enums and bounds
(`guardian.gateway.orders`), the refusal statuses `guardian.gateway.refusal.CODES`, the modes
`guardian.account.Mode`. What no table holds (guardian's own endpoints, the shapes of the answers) is
written here. `tests/test_fuzz.py` compares the document's paths with the routes the daemon serves and
runs schemathesis against a live daemon from it.

The document describes the canonical request; the descriptions name what else is read. Kraken's
parameters may come in the query (ccxt) or the form body (python-kraken-sdk); batchorder's `json` field
may be URL-encoded (the SDK) or raw JSON (ccxt). The schemas are no stricter than the guard, so a
request the document calls invalid is one guardian refuses, except where the document names the
canonical form of something guardian also reads in others: times are RFC 3339 date-times (guardian
reads every ISO 8601 form Python reads), batch items carry numbers and booleans as JSON numbers and
booleans (guardian also reads them as text, as in a form), and the batch document holds only its own
keys (guardian tolerates the copies ccxt adds). The schemas are looser where the outcome depends on the
configuration (which symbols, sizes and prices an account allows) or on the exchange.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from guardian import __version__, statuspage
from guardian.account import Mode
from guardian.gateway import orders
from guardian.gateway.app import MAX_BODY, ORDER_ENDPOINTS, REPLAYED_HEADER
from guardian.gateway.refusal import CODES
from guardian.kraken import endpoints as ep
from guardian.kraken.wire import BATCH_FIELD, LIST_FIELDS
from guardian.relay import server as relay
from guardian.server import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE

PATH: Final = "/openapi.json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: Iterable[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


# ---- field values, from the guard's own bounds --------------------------------------------------------

_TINY = 10.0**-orders.MAX_EXPONENT  # the smallest magnitude orders.parse_decimal accepts
_HUGE = 10.0 ** (orders.MAX_EXPONENT + 1)  # every magnitude it accepts is below this
_POSITIVE: Final[Schema] = {"type": "number", "minimum": _TINY, "maximum": _HUGE, "exclusiveMaximum": True}
_NEGATIVE: Final[Schema] = {"type": "number", "minimum": -_HUGE, "exclusiveMinimum": True, "maximum": -_TINY}

# Named once under components/schemas and referred to from every field that takes them. The character
# classes are orders' `_SYMBOL` and `_PRINTABLE` (private there); the lengths are its public limits.
VALUES: Final[Mapping[str, Schema]] = {
    "Positive": {
        **_POSITIVE,
        "description": f"A decimal number above 0, as text on the wire (at most {orders.MAX_NUMBER_CHARS} "
        "characters; exponent notation such as 1e-05 is read).",
    },
    "Signed": {
        "anyOf": [_POSITIVE, {"type": "number", "minimum": 0, "maximum": 0}, _NEGATIVE],
        "description": f"A decimal number: 0, or a magnitude from 1e-{orders.MAX_EXPONENT} to below "
        f"1e{orders.MAX_EXPONENT + 1}, either sign.",
    },
    "Symbol": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_.-]+$",
        "minLength": 1,
        "maxLength": orders.MAX_SYMBOL_CHARS,
        "description": "A contract such as PF_XBTUSD, read case-insensitively. Which ones an account may "
        "trade is its configuration (guard.symbols): the others are refused (symbolNotAllowed).",
    },
    "Identifier": {
        "type": "string",
        "pattern": "^[ -~]+$",
        "minLength": 1,
        "maxLength": orders.MAX_ID_CHARS,
        "description": "Printable ASCII.",
    },
    "Time": {
        "type": "string",
        "format": "date-time",
        "maxLength": orders.MAX_TIME_CHARS,
        "description": "An ISO 8601 time such as 2026-01-31T12:00:00.000Z, passed on as sent.",
    },
}

# Every field an allow-list names. A name added to an allow-list without an entry here fails the build of
# the document (a KeyError), which every test that starts the daemon runs.
FIELDS: Final[Mapping[str, Schema]] = {
    "orderType": _enum(orders.ORDER_TYPES),
    "symbol": _ref("Symbol"),
    "side": _enum(orders.SIDES),
    "size": _ref("Positive"),
    "limitPrice": _ref("Positive"),
    "stopPrice": _ref("Positive"),
    "cliOrdId": _ref("Identifier"),
    "reduceOnly": {"type": "boolean", "description": "true/false (ccxt) or True/False (python-kraken-sdk)."},
    "triggerSignal": _enum(orders.TRIGGER_SIGNALS),
    "trailingStopMaxDeviation": _ref("Positive"),
    "trailingStopDeviationUnit": _enum(orders.PRICE_UNITS),
    "limitPriceOffsetValue": _ref("Signed"),
    "limitPriceOffsetUnit": _enum(orders.PRICE_UNITS),
    "processBefore": _ref("Time"),
    "ProcessBefore": _ref("Time"),
    "orderId": _ref("Identifier"),
    "order_id": _ref("Identifier"),
    "qtyMode": _enum(orders.QTY_MODES),
    "order_tag": {"oneOf": [_ref("Identifier"), {"type": "integer"}]},
}

# ---- request shapes: one variant per combination of fields the guard accepts --------------------------

_DEVIATION, _UNIT = "trailingStopMaxDeviation", "trailingStopDeviationUnit"
_OFFSETS = frozenset({"limitPriceOffsetValue", "limitPriceOffsetUnit"})
_PERCENT_LOW, _PERCENT_HIGH = orders.TRAILING_PERCENT_RANGE


def _object(fields: Iterable[str], required: Iterable[str] = (), **overrides: Schema) -> Schema:
    """A closed object of `fields` (the guard refuses any other field), some with a narrower schema."""
    properties = {name: overrides[name] if name in overrides else FIELDS[name] for name in sorted(fields)}
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = sorted(set(required))
    return schema


def _unit_variants(fields: set[str], required: set[str], **overrides: Schema) -> list[Schema]:
    """A trailing deviation in PERCENT must be within TRAILING_PERCENT_RANGE: a variant per unit (and one
    without the unit where it is optional)."""
    if _UNIT not in fields:
        return [_object(fields, required, **overrides)]
    percent = {"type": "number", "minimum": float(_PERCENT_LOW), "maximum": float(_PERCENT_HIGH)}
    variants = [
        _object(fields, required | {_UNIT}, **overrides, **{_UNIT: _enum(["QUOTE_CURRENCY"])}),
        _object(fields, required | {_UNIT}, **overrides, **{_UNIT: _enum(["PERCENT"]), _DEVIATION: percent}),
    ]
    if _UNIT not in required:
        variants.insert(0, _object(fields - {_UNIT}, required, **overrides))
    return variants


def _send_variants(allowed: frozenset[str], kind: Mapping[str, Schema] | None = None) -> list[Schema]:
    """sendorder's fields as `orders._send` checks them: a variant per order type (and per choice the type
    leaves open). Every type takes every field (one that does not apply to the type is forwarded, not
    judged); what a type requires, and the choices it leaves open, differ. `kind` is a batch item's
    `order`."""
    variants: list[Schema] = []
    for order_type in orders.ORDER_TYPES:
        fields = set(allowed)
        required = {"orderType", "symbol", "side", "size", *(kind or {})}
        if order_type in orders.LIMIT_PRICED:
            required.add("limitPrice")
        if order_type in orders.STOP_PRICED:
            required.add("stopPrice")
        if order_type == "trailing_stop":
            required |= {_DEVIATION, _UNIT}
        shapes = [(fields, required)]
        if order_type in orders.TRIGGER_TYPES:  # limitPrice or an offset from the stop price, not both
            shapes = [(fields - _OFFSETS, required), (fields - {"limitPrice"}, required | _OFFSETS)]
        overrides = {"orderType": _enum([order_type]), **(kind or {})}
        for shape_fields, shape_required in shapes:
            if order_type == "trailing_stop":  # the PERCENT range is checked on trailing stops only
                variants += _unit_variants(shape_fields, shape_required, **overrides)
            else:
                variants.append(_object(shape_fields, shape_required, **overrides))
    return variants


def _named_variants(
    allowed: frozenset[str], ids: tuple[str, str], kind: Mapping[str, Schema] | None = None
) -> list[Schema]:
    """An edit or a cancel: exactly one of its two id fields (guardian does not guess which one counts)."""
    variants: list[Schema] = []
    for chosen, other in (ids, ids[::-1]):
        variants += _unit_variants(set(allowed) - {other}, {chosen, *(kind or {})}, **(kind or {}))
    return variants


def _batch_document() -> Schema:
    items = [
        *_send_variants(orders.BATCH_SEND_FIELDS, {"order": _enum(["send"])}),
        *_named_variants(orders.BATCH_EDIT_FIELDS, ("order_id", "cliOrdId"), {"order": _enum(["edit"])}),
        *_named_variants(orders.BATCH_CANCEL_FIELDS, ("order_id", "cliOrdId"), {"order": _enum(["cancel"])}),
    ]
    properties: dict[str, Schema] = {
        "batchOrder": {"type": "array", "maxItems": orders.MAX_BATCH_ITEMS, "items": {"oneOf": items}},
        "clientOrderIds": {"type": "array", "items": {"type": "string"}},
    }
    properties |= {name: FIELDS[name] for name in sorted(orders.BATCH_DOCUMENT_FIELDS - {"batchOrder"})}
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "required": ["batchOrder"],
        "description": "Items: send (sendorder's fields and an order_tag), edit (order_id, which may be an "
        "earlier item's order_tag, or cliOrdId) and cancel. processBefore (either spelling) belongs to the "
        "whole batch, here or beside `json` in the form, once. guardian also tolerates keys that every item "
        "repeats with the same value (ccxt copies its params there).",
    }


def _order_status() -> Schema:
    listed = {name: {"type": "array", "items": _ref("Identifier")} for name in sorted(LIST_FIELDS)}
    return {"type": "object", "properties": listed, "additionalProperties": False}


BODIES: Final[Mapping[str, Schema]] = {
    "SendOrder": {"oneOf": _send_variants(orders.SEND_FIELDS)},
    "EditOrder": {"oneOf": _named_variants(orders.EDIT_FIELDS, ("orderId", "cliOrdId"))},
    "CancelOrder": {"oneOf": _named_variants(orders.CANCEL_FIELDS, ("order_id", "cliOrdId"))},
    "CancelAllOrders": _object(orders.CANCEL_ALL_FIELDS),
    "BatchOrder": _object(orders.BATCH_FORM_FIELDS, [BATCH_FIELD], **{BATCH_FIELD: _batch_document()}),
    "OrderStatus": _order_status(),
    "SwitchTimeout": {
        "type": "object",
        "properties": {
            "timeout": {
                "type": "integer",
                "minimum": 0,
                "maximum": 9_999_999_999,
                "description": "Whole seconds. Any positive value is answered from guardian's own switch, "
                "which keeps its configured timeout; 0 (switch it off) is refused (endpointNotAllowed).",
            }
        },
        "required": ["timeout"],
    },
}
_BODY_OF: Final = {
    "sendorder": "SendOrder",
    "editorder": "EditOrder",
    "cancelorder": "CancelOrder",
    "cancelallorders": "CancelAllOrders",
    "batchorder": "BatchOrder",
    "orders/status": "OrderStatus",
    "cancelallordersafter": "SwitchTimeout",
}
_OPTIONAL_BODY: Final = frozenset({"cancelallorders", "orders/status"})


def _request_body(row: ep.Endpoint) -> Schema | None:
    if row.risk is ep.Risk.FUNDS:  # whatever it carries, it is refused
        schema: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
    elif row.name in _BODY_OF:
        schema = _ref(_BODY_OF[row.name])
    else:
        return None
    media: Schema = {"schema": schema}
    if row.name == "batchorder":
        media["encoding"] = {BATCH_FIELD: {"contentType": "application/json"}}
    required = row.name not in _OPTIONAL_BODY and row.risk is not ep.Risk.FUNDS
    return {"required": required, "content": {"application/x-www-form-urlencoded": media}}


_BOOL: Final[Schema] = {"type": "boolean"}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 1, "maximum": 1000}
_MILLIS: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": 10**14}
_HISTORY_QUERY: Final = (
    ("since", _MILLIS, False),
    ("before", _MILLIS, False),
    ("sort", _enum(["asc", "desc"]), False),
    ("count", _COUNT, False),
    ("tradeable", _ref("Symbol"), False),
    ("continuation_token", {"type": "string", "maxLength": 200}, False),
)
# The query parameters of the endpoints beyond orders (name, schema, required), as Kraken documents them.
# Settings go in the query as ccxt and python-kraken-sdk send them (a form or JSON body is read as well).
QUERY: Final[Mapping[str, tuple[tuple[str, Schema, bool], ...]]] = {
    "leveragepreferences:put": (("symbol", _ref("Symbol"), True), ("maxLeverage", _ref("Positive"), False)),
    "pnlpreferences:put": (
        ("symbol", _ref("Symbol"), True),
        ("pnlPreference", {"type": "string", "pattern": "^[A-Za-z]{1,10}$"}, True),
    ),
    "self-trade-strategy:put": (
        (
            "strategy",
            _enum(["REJECT_TAKER", "CANCEL_MAKER_SELF", "CANCEL_MAKER_CHILD", "CANCEL_MAKER_ANY"]),
            True,
        ),
    ),
    "rfq-assignment/max-leverage:put": (("maxLeverage", _ref("Positive"), True),),
    "subaccount/{uid}/trading-enabled:put": (("tradingEnabled", _BOOL, True),),
    "assignmentprogram/add": (
        ("contractType", {"type": "string", "pattern": "^[a-z_]{1,20}$"}, True),
        ("contract", _ref("Symbol"), False),
        ("maxSize", _ref("Positive"), False),
        ("maxPosition", _ref("Positive"), False),
        ("acceptLong", _BOOL, True),
        ("acceptShort", _BOOL, True),
        ("timeFrame", _enum(["all", "weekdays", "weekends"]), True),
        ("enabled", _BOOL, True),
    ),
    "assignmentprogram/delete": (("id", {"type": "integer", "minimum": 0, "maximum": 2**53}, True),),
    "rfqs/{rfqUid}/place-offer": (("bid", _ref("Positive"), False), ("ask", _ref("Positive"), False)),
    "rfqs/{rfqUid}/replace-offer": (("bid", _ref("Positive"), False), ("ask", _ref("Positive"), False)),
    "historicalfundingrates": (("symbol", _ref("Symbol"), True),),
    "v4/historicalfundingrates": (("symbol", _ref("Symbol"), True),),
    "history": (("symbol", _ref("Symbol"), True), ("lastTime", _ref("Time"), False)),
    "charts/{tick_type}/{symbol}/{resolution}": (("from", _MILLIS, False), ("to", _MILLIS, False)),
    "initialmargin": (
        ("orderType", _enum(orders.ORDER_TYPES), True),
        ("symbol", _ref("Symbol"), True),
        ("side", _enum(orders.SIDES), True),
        ("size", _ref("Positive"), True),
        ("limitPrice", _ref("Positive"), False),
    ),
    "initialmargin/maxordersize": (
        ("orderType", _enum(orders.ORDER_TYPES), True),
        ("symbol", _ref("Symbol"), True),
        ("limitPrice", _ref("Positive"), False),
    ),
    "history/v2/account-log": (
        ("since", _MILLIS, False),
        ("before", _MILLIS, False),
        ("count", _COUNT, False),
        ("info", {"type": "string", "maxLength": 60}, False),
    ),
    "history/v3/account-log": (
        ("since", _MILLIS, False),
        ("before", _MILLIS, False),
        ("count", _COUNT, False),
        ("info", {"type": "string", "maxLength": 60}, False),
    ),
}


def _query(row: ep.Endpoint) -> tuple[tuple[str, Schema, bool], ...]:
    if row.name in QUERY:
        return QUERY[row.name]
    if row.pool is ep.Pool.HISTORY or row.name.startswith("history/"):
        return _HISTORY_QUERY
    return ()


def _parameters(row: ep.Endpoint, method: str) -> list[Schema]:
    params: list[Schema] = []
    for name in re.findall(r"\{(\w+)\}", row.path):
        schema = {"type": "string", "pattern": f"^{ep.PATH_PART}$"}  # endpoints' template character class
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if row.name == "orderbook":
        params.append({"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}})
    for name, schema, required in _query(row):
        params.append({"name": name, "in": "query", "required": required, "schema": schema})
    if row.cost_if_param is not None:
        name, cost = row.cost_if_param
        description = f"The exchange checks it; with it the call costs {cost} budget units."
        params.append({"name": name, "in": "query", "description": description, "schema": _ref("Time")})
    if row.name == "orders/status" and method == "GET":
        listed = {"type": "array", "items": _ref("Identifier")}
        params += [
            {"name": name, "in": "query", "style": "form", "explode": True, "schema": listed}
            for name in sorted(LIST_FIELDS)
        ]
    return params


# ---- answers -------------------------------------------------------------------------------------------

ANSWERS: Final[Mapping[str, Schema]] = {
    "ExchangeAnswer": {
        "type": "object",
        "properties": {"result": _enum(["success", "error"]), "serverTime": {"type": "string"}},
        "required": ["result"],
        "description": "Kraken's envelope; the rest is the endpoint's payload, passed on unchanged.",
    },
    "Refusal": {
        "type": "object",
        "properties": {
            "result": _enum(["error"]),
            "serverTime": {"type": "string"},
            "error": _enum(sorted(CODES)),
            "message": {"type": "string", "description": "what is wrong and how to fix it"},
            "item": {"type": "integer", "minimum": 0, "description": "the batch item at fault"},
            "order_tag": {"type": "string", "description": "that item's order_tag"},
        },
        "required": ["result", "serverTime", "error", "message"],
        "description": "guardian refused the request: nothing was sent to the exchange.",
    },
    "Unavailable": {
        "type": "object",
        "properties": {
            "result": _enum(["error"]),
            "serverTime": {"type": "string"},
            "error": {"type": "string"},
            "message": {"type": "string"},
        },
        "required": ["result", "error"],
        "description": "guardian's word on an exchange it could not reach (with a message), or the "
        "exchange's own error answer.",
    },
}


# guardian.gateway.exposure's refusals: sends, edits and batches judged against the account's exposure.
EXPOSURE_CODES: Final = (
    "positionLimitExceeded",
    "openOrdersLimitExceeded",
    "exposureLimitExceeded",
    "dailyLossLimitReached",
    "orderRateExceeded",
    "accountStateUnavailable",
    "duplicateOrder",
)


def _codes_for(row: ep.Endpoint) -> set[str]:
    """The refusal codes guardian itself can answer for `row`, in the order guardian.gateway.app checks."""
    codes = {"invalidArgument", "requestTooLarge"}  # a body that is not UTF-8, or over MAX_BODY
    if "{" in row.path:
        codes.add("notFound")  # a path parameter outside the template's characters: no such endpoint
    if row.pool is ep.Pool.HISTORY:
        codes.add("apiLimitExceeded")
    if row.permission is ep.Permission.PUBLIC:
        return codes | {"apiLimitExceeded"}  # the public budget
    codes |= {"authenticationError", "nonceBelowThreshold", "nonceDuplicate", "permissionDenied"}
    if row.risk is ep.Risk.FUNDS:
        return codes | {"endpointNotAllowed"}
    if row.risk is ep.Risk.SWITCH:
        return codes | {"endpointNotAllowed", "switchNotArmed"}
    codes.add("apiLimitExceeded")
    if row.name in ORDER_ENDPOINTS:
        codes.add("requiredArgumentMissing")
    if row.name not in ORDER_ENDPOINTS and row.risk is not ep.Risk.NONE:  # guardian.gateway.settings
        codes |= {"requiredArgumentMissing", "journalUnavailable"}
        if row.risk is not ep.Risk.REDUCES:
            codes |= {"tradingHalted", "reduceOnlyMode", "switchNotArmed", "symbolNotAllowed"}
            codes |= {"leverageTooHigh", "orderSizeTooLarge"}
        if row.name.startswith("rfqs/{rfqUid}/") and row.risk is ep.Risk.OPENS:
            codes |= {"notionalTooLarge", "priceOutsideBand", "markPriceUnavailable", "upstreamUnavailable"}
        return codes
    if row.risk in (ep.Risk.OPENS, ep.Risk.PER_ITEM):
        codes |= {
            "symbolNotAllowed",
            "orderSizeTooLarge",
            "notionalTooLarge",
            "priceOutsideBand",
            "markPriceUnavailable",
            "reduceOnlyMode",
            "tradingHalted",
            "switchNotArmed",
            "journalUnavailable",
            "upstreamUnavailable",  # an edited order's lookup, a retried cliOrdId's outcome
            "clientOrderIdAlreadyExist",  # a cliOrdId an earlier, different request used
            "instrumentUnknown",  # a contract guardian cannot judge (guardian.gateway.instruments)
            "instrumentExpired",  # a fixed maturity past its last trading time
            *EXPOSURE_CODES,
        }
    return codes


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _kraken_responses(row: ep.Endpoint) -> Schema:
    ok = _json(
        _ref("ExchangeAnswer"),
        "The exchange's answer, status and body unchanged: Kraken answers most errors with 200 and "
        "result=error, and an order's own outcome is in sendStatus/editStatus/cancelStatus/batchStatus."
        + (" guardian answers this one itself, from its own switch." if row.risk is ep.Risk.SWITCH else "")
        + (
            " An edit of an order the exchange does not have is answered by guardian itself, in the "
            "exchange's shape (status orderForEditNotFound), and not forwarded."
            if row.name in ("editorder", "batchorder")
            else ""
        ),
    )
    if row.name.startswith(("charts", "history/")):  # Kraken answers these without its envelope
        ok = _json({}, "The exchange's answer, unchanged: JSON without Kraken's result/serverTime envelope.")
    if row.name.endswith("accountlogcsv"):
        ok["content"]["text/csv"] = {"schema": {"type": "string"}}
    if row.name == "sendorder":
        ok["headers"] = {
            REPLAYED_HEADER: {
                "description": "true: a retry of a cliOrdId guardian already forwarded, answered with the "
                "first attempt's answer; recovered: answered from the exchange's record of the order.",
                "schema": _enum(["true", "recovered"]),
            }
        }
    responses: Schema = {"200": ok}
    by_status: dict[int, set[str]] = {}
    for code in _codes_for(row):
        by_status.setdefault(CODES[code], set()).add(code)
    for status, codes in sorted(by_status.items()):
        refused = "guardian refused the request: " + ", ".join(sorted(codes))
        own = status in (400, 404) and row.name not in ORDER_ENDPOINTS and row.risk is not ep.Risk.SWITCH
        if status in (429, 503) or own:  # the exchange may answer these itself, in its own shape
            responses[str(status)] = _json(
                {"anyOf": [_ref("Refusal"), _ref("Unavailable")]},
                refused + "; or the exchange's own answer with this status.",
            )
        else:
            responses[str(status)] = _json(_ref("Refusal"), refused + ".")
    responses["502"] = _json(_ref("Unavailable"), "The exchange could not be reached, or answered 502.")
    responses.setdefault("503", _json(_ref("Unavailable"), "The exchange answered 503 (maintenance)."))
    responses["504"] = _json(_ref("Unavailable"), "No answer from the exchange in time: outcome unknown.")
    return responses


def _kraken_operation(row: ep.Endpoint, method: str) -> Schema:
    where = "query" if method == "GET" else "form body (or the query, as ccxt sends it)"
    per_item = f" + {row.cost_per_item} per item" if row.cost_per_item else ""
    description = [
        f"Kraken Futures `{row.name}`, parameters in the {where} as at the exchange. Costs {row.cost}"
        f"{per_item} units of the {row.pool.value} rate budget; needs the `{row.permission.value}` permission."
    ]
    if row.risk is ep.Risk.FUNDS:
        description.append("Moves funds: guardian never forwards it (endpointNotAllowed).")
    if row.name == "batchorder":
        description.append(
            "The `json` field is the JSON text of the batch document, URL-encoded (python-kraken-sdk) or, "
            f"when the body starts with `{BATCH_FIELD}={{`, raw (ccxt)."
        )
    operation: Schema = {
        "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', row.name).strip('_')}",
        "tags": ["kraken"],
        "summary": f"Kraken Futures {row.name}",
        "description": " ".join(description),
        "responses": _kraken_responses(row),
    }
    if row.permission is not ep.Permission.PUBLIC:
        operation["security"] = [{"APIKey": [], "Authent": [], "Nonce": []}, {"APIKey": [], "Authent": []}]
    params = _parameters(row, method)
    if params:
        operation["parameters"] = params
    body = _request_body(row) if method != "GET" else None
    if body is not None:
        operation["requestBody"] = body
    return operation


# ---- guardian's own endpoints --------------------------------------------------------------------------

_MODES: Final[Schema] = _enum(mode.value for mode in Mode)
_STATUS: Final[Schema] = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "reasons": {"type": "array", "items": {"type": "string"}}},
    "required": ["status"],
}
_SWITCH: Final[Schema] = {
    "type": "object",
    "properties": {
        "state": _enum(["starting", "armed", "degraded", "expired", "disarmed"]),
        "timeout_s": {"type": "integer"},
        "remaining_s": {"type": "number", "nullable": True},
        "trigger_time": {"type": "string", "nullable": True},
        "last_success": {"type": "string", "nullable": True},
        "consecutive_failures": {"type": "integer"},
        "last_error": {"type": "string", "nullable": True},
        "refreshes": {"type": "integer"},
        "clock_skew_s": {"type": "number", "nullable": True},
        "rearms_after_expiry": {"type": "integer"},
    },
    "required": ["state", "timeout_s", "remaining_s", "consecutive_failures"],
}
_LIMIT: Final[Schema] = {
    "type": "object",
    "description": "an exposure limit's usage, worst case (symbol absent for account-wide limits)",
    "properties": {
        "name": {"type": "string"},
        "symbol": {"type": "string"},
        "used": {"type": "number"},
        "limit": {"type": "number"},
        "ratio": {"type": "number"},
    },
    "required": ["name", "used", "limit", "ratio"],
}
_REFUSED: Final[Schema] = {
    "type": "object",
    "description": "a request guardian refused (guardian.recent): the code and message the bot was answered",
    "properties": {
        "at": {"type": "string"},
        "bot": {"type": "string", "nullable": True},
        "endpoint": {"type": "string"},
        "symbol": {"type": "string", "nullable": True},
        "code": {"type": "string"},
        "message": {"type": "string"},
    },
    "required": ["at", "bot", "endpoint", "code", "message"],
}
_STOPPED: Final[Schema] = {
    "type": "object",
    "description": "a limit trip (kind trip, limit says which) or a person's kill (kind kill, of bot or all)",
    "properties": {
        "at": {"type": "string"},
        "kind": _enum(["trip", "kill"]),
        "limit": {"type": "string", "nullable": True},
        "bot": {"type": "string", "nullable": True},
        "mode": _MODES,
        "reason": {"type": "string"},
    },
    "required": ["at", "kind", "mode", "reason"],
}
_STATE: Final[Schema] = {
    "type": "object",
    "properties": {
        "version": {"type": "string"},
        "started_at": {"type": "string", "nullable": True},
        "ready": {"type": "boolean"},
        "stopping": {"type": "boolean"},
        "journal": {"type": "object"},
        "config": {
            "type": "object",
            "description": "the configuration in force: its file's SHA-256, when it was loaded (start or the last "
            "reload that took effect), and the last reload asked for (null: none yet)",
            "properties": {
                "path": {"type": "string", "nullable": True},
                "hash": {"type": "string", "nullable": True},
                "loaded_at": {"type": "string"},
                "last_reload": {"type": "object", "nullable": True},
            },
        },
        "server": {
            "type": "object",
            "description": "how bots reach guardian: TLS, mutual TLS, or plain HTTP beyond loopback",
            "properties": {
                "listen": {"type": "string"},
                "tls": {"type": "boolean"},
                "mutual_tls": {"type": "boolean"},
                "plaintext_beyond_loopback": {"type": "boolean"},
                "certificate": {"type": "object", "nullable": True},
            },
        },
        "accounts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "mode": _MODES,
                    "switch": _SWITCH,
                    "limits": {"type": "array", "items": _LIMIT},
                    "daily_pnl": {
                        "type": "number",
                        "nullable": True,
                        "description": "realised since 00:00 UTC plus unrealised, net of fees; null while stale",
                    },
                    "trip": {
                        "type": "object",
                        "nullable": True,
                        "description": "the latched trip, lifted only by POST /guardian/mode",
                        "properties": {
                            "limit": {"type": "string"},
                            "reason": {"type": "string"},
                            "at": {"type": "string"},
                            "mode": _MODES,
                        },
                    },
                    "bots": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "mode": _MODES,
                                "limits": {"type": "array", "items": _LIMIT},
                                "orders_last_minute": {
                                    "type": "integer",
                                    "description": "new orders and edits in the last 60 s, as the guard counts them",
                                },
                                "open_orders": {"type": "integer", "description": "open orders it placed"},
                                "last_refusal": {**_REFUSED, "nullable": True},
                            },
                            "required": ["name", "mode"],
                        },
                    },
                    "refusals": {
                        "type": "array",
                        "items": _REFUSED,
                        "description": "the last 20 refusals, newest first (since the daemon started)",
                    },
                    "trips": {
                        "type": "array",
                        "items": _STOPPED,
                        "description": "the last 20 trips and kills, newest first (since the daemon started)",
                    },
                },
                "required": ["name", "mode", "switch"],
            },
        },
    },
    "required": ["version", "ready", "stopping", "accounts"],
}
_ADMIN_ERROR: Final[Schema] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error", "message"],
}


def _read(summary: str, responses: Mapping[str, Schema], parameters: Sequence[Schema] = ()) -> Schema:
    """A read-only operation: GET, and HEAD (aiohttp answers HEAD on every GET route) without bodies."""
    get: Schema = {"tags": ["operations"], "summary": summary, "security": [], "responses": dict(responses)}
    if parameters:
        get["parameters"] = list(parameters)
    bare = {status: {"description": answer["description"]} for status, answer in responses.items()}
    return {"get": get, "head": {**get, "summary": summary + " (status only)", "responses": bare}}


def _admin(summary: str, body: Schema, answer: Schema, failed: tuple[str, Schema]) -> Schema:
    responses = {
        "200": _json(answer, "Done."),
        "400": _json(_ADMIN_ERROR, "invalidArgument: not a JSON object, or an unknown account or mode."),
        "401": _json(_ADMIN_ERROR, "authenticationError: send Authorization: Bearer <server.admin_token>."),
        "413": _json(_ADMIN_ERROR, "requestTooLarge: the body is over the admin limit."),
        failed[0]: failed[1],
    }
    return {
        "post": {
            "tags": ["admin"],
            "summary": summary,
            "description": "Exists only when server.admin_token is configured.",
            "security": [{"adminToken": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        }
    }


def _own_paths() -> dict[str, Schema]:
    account = {"type": "string", "description": "an account's configured name"}
    bot = {
        "type": "string",
        "description": "one of the account's bots ([[accounts.clients]] name): that bot only; absent or null: "
        "the whole account. The stricter of the account's and the bot's mode applies",
        "nullable": True,
    }
    trip = {
        "type": "object",
        "description": "a latched trip (max_daily_loss, max_fills_per_minute)",
        "properties": {"limit": {"type": "string"}, "reason": {"type": "string"}},
    }
    changed: Schema = {
        "type": "object",
        "properties": {
            "account": {"type": "string"},
            "bot": {"type": "string"},
            "mode": _MODES,
            "previous": _MODES,
            "lifted": {**trip, "description": "the latched trip this change lifted"},
        },
        "required": ["account", "mode", "previous"],
    }
    order_ids = {"type": "array", "items": {"type": "string"}}
    in_flight = {
        "type": "integer",
        "minimum": 0,
        "description": "new-risk requests already forwarded when the halt took effect: each is watched to its "
        "end and whatever it left open is cancelled (journal events kill_follow_up)",
    }
    killed = {
        **changed,
        "properties": {
            **changed["properties"],
            "exchange": {},
            "error": {"type": "string"},
            "in_flight": in_flight,
            "cancelled": {**order_ids, "description": "a bot's kill: the orders it placed, cancelled"},
            "failed": {**order_ids, "description": "a bot's kill: its orders whose cancel failed"},
            "others_left": {
                "type": "integer",
                "description": "a bot's kill: other bots' open orders, untouched",
            },
        },
        "required": ["account", "mode", "previous", "in_flight"],
    }
    mode_body = {
        "type": "object",
        "properties": {"account": account, "bot": bot, "mode": _MODES, "reason": {"type": "string"}},
        "required": ["account", "mode"],
    }
    kill_body = {"type": "object", "properties": {"account": account, "bot": bot}, "required": ["account"]}
    not_changed = _json(_ADMIN_ERROR, "journalUnavailable: the mode was not changed.")
    not_cancelled = _json(
        {**killed, "required": ["account", "mode", "previous", "in_flight", "error"]},
        "Halted, but the cancel-all at the exchange failed: `error` says why.",
    )
    reloaded = {
        "type": "object",
        "properties": {
            "result": {"type": "string", "enum": ["success"]},
            "hash": {"type": "string", "description": "the SHA-256 of the file now in force"},
            "changed": {"type": "array", "items": {"type": "string"}, "description": "keys changed in place"},
            "via": {"type": "string"},
        },
        "required": ["result", "hash", "changed"],
    }
    reload_refused = {
        "type": "object",
        "properties": {
            "result": {"type": "string", "enum": ["error"]},
            "error": {"type": "string", "enum": ["configRefused"]},
            "message": {"type": "string"},
            "restart_only": {"type": "array", "items": {"type": "string"}},
            "hash": {"type": "string", "nullable": True, "description": "the hash still in force"},
            "via": {"type": "string"},
        },
        "required": ["result", "error", "message", "restart_only"],
    }
    metrics = {
        "description": "Prometheus text format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    page = {
        "description": "The status page: one self-contained HTML page that reads /guardian/state every second.",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    return {
        statuspage.PATH: _read("The status page, for a person", {"200": page}),
        relay.PATH: _read(
            "Kraken Futures' WebSocket v1 for bots, on their local keys (docs/relay.md)",
            {
                "101": {"description": "Switching Protocols: the WebSocket relay (Kraken's ws/v1 dialect)."},
                "400": _json(
                    _ref("Refusal"), "invalidArgument: a plain HTTP request, not a WebSocket upgrade."
                ),
            },
        ),
        "/healthz": _read(
            "Liveness",
            {
                "200": _json(_STATUS, "The event loop answers and every switch task runs."),
                "503": _json(_STATUS, "A switch task has stopped; `reasons` says which."),
            },
        ),
        "/readyz": _read(
            "Readiness",
            {
                "200": _json(_STATUS, "Every account's switch is armed."),
                "503": _json(_STATUS, "Not ready; `reasons` names each account."),
            },
        ),
        "/guardian/state": _read(
            "Every account's mode, switch, budget and marks; open orders as counts (a list with ?orders=N)",
            {
                "200": _json(_STATE, "The state, times in ISO 8601 UTC."),
                "400": _json(_ADMIN_ERROR, "invalidArgument: orders is not a whole number from 0 to 1000."),
            },
            [
                {
                    "name": "orders",
                    "in": "query",
                    "required": False,
                    "description": "list this many open orders per account (the first guardian knows)",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
                }
            ],
        ),
        "/metrics": _read("Prometheus metrics", {"200": metrics}),
        "/guardian/mode": _admin(
            "Set an account's or one bot's trading mode (persisted in the journal); lifts a latched trip",
            mode_body,
            changed,
            ("503", not_changed),
        ),
        "/guardian/kill": _admin(
            "Halt an account, cancel all its orders at the exchange, then cancel whatever the requests in "
            "flight at the halt leave open; with `bot`, halt that bot and cancel exactly the orders it placed",
            kill_body,
            killed,
            ("502", not_cancelled),
        ),
        "/guardian/reload": _admin(
            "Read the configuration file again and apply it in place (as SIGHUP does): limits, bots and their "
            "keys, budgets, notifiers; refused whole if it is invalid or changes what needs a restart",
            {"type": "object", "maxProperties": 0, "description": "no parameters: {} or no body"},
            reloaded,
            (
                "422",
                _json(
                    reload_refused,
                    "configRefused: the configuration in force is unchanged; `message` "
                    "says why, `restart_only` names the keys that need a restart.",
                ),
            ),
        ),
        PATH: _read("This document", {"200": _json({"type": "object"}, "The OpenAPI 3.0 document.")}),
    }


_UNREADABLE: Final[Mapping[str, str]] = {
    "400": "invalidArgument: the HTTP request itself could not be read (not well-formed HTTP/1.1).",
    "413": f"requestTooLarge: the request line (method, path and query) is over {MAX_REQUEST_LINE // 1024} KiB.",
    "431": f"headersTooLarge: a header is over {MAX_HEADER_FIELD} bytes, or there are more than "
    f"{MAX_HEADERS} headers.",
}


def _unreadable(responses: Schema, *, with_body: bool) -> None:
    """Any operation can get the refusals of guardian.server, sent before any handler sees the request."""
    for status, text in _UNREADABLE.items():
        answer = responses.setdefault(status, {"description": text})
        if text not in answer["description"]:
            answer["description"] += " Or: " + text
        if with_body:  # an operation's own 4xx schema is looser than the envelope, or is the envelope
            answer.setdefault("content", {}).setdefault("application/json", {"schema": _ref("Refusal")})


# ---- the document --------------------------------------------------------------------------------------

_SECURITY_SCHEMES: Final[Mapping[str, Schema]] = {
    "APIKey": {"type": "apiKey", "in": "header", "name": "APIKey", "description": "The bot's local key."},
    "Authent": {
        "type": "apiKey",
        "in": "header",
        "name": "Authent",
        "description": "base64(HMAC-SHA-512(base64decode(local secret), SHA-256(postData + Nonce + path "
        "without /derivatives))), postData being the query and/or the body exactly as sent.",
    },
    "Nonce": {
        "type": "apiKey",
        "in": "header",
        "name": "Nonce",
        "description": "Optional. When sent: at most 20 digits, increasing for the key.",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "server.admin_token"},
}


@functools.cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document, built once (callers must not change it)."""
    paths: dict[str, Schema] = {}
    for row in ep.ENDPOINTS:
        item = paths.setdefault(row.path, {})
        item |= {method.lower(): _kraken_operation(row, method) for method in row.methods}
    paths |= _own_paths()
    for item in paths.values():
        for method, operation in item.items():
            _unreadable(operation["responses"], with_body=method != "head")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "guardian local API",
            "version": __version__,
            "description": "Kraken Futures' REST API for bots, guarded (`/derivatives/api/v3/...`: sign with "
            "the bot's local key exactly as for Kraken), and guardian's own operations endpoints. A refused "
            "request is answered in Kraken's error envelope with guardian's `message` and a 4xx status, and "
            f"is never sent to the exchange. Request bodies are at most {MAX_BODY // 1024} KiB.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "kraken", "description": "Kraken-compatible: authenticated, guarded, forwarded."},
            {
                "name": "operations",
                "description": "Read-only, unauthenticated (guardian listens on loopback).",
            },
            {"name": "admin", "description": "Behind server.admin_token."},
        ],
        "paths": paths,
        "components": {
            "schemas": {**VALUES, **BODIES, **ANSWERS},
            "securitySchemes": dict(_SECURITY_SCHEMES),
        },
    }


@functools.cache
def _serialized() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


async def serve(request: web.Request) -> web.Response:
    """`GET /openapi.json`: the document, serialized once."""
    return web.Response(
        body=_serialized(), content_type="application/json", headers={"Cache-Control": "no-store"}
    )
