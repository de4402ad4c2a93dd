"""Reading Kraken-dialect requests as they arrive: form fields from the query and/or the body, and the
`batchorder` payload in both encodings real clients send.

Used by the simulator (standing in for the exchange) and by guardian's local API (standing in for it
towards bots). Pure functions; nothing here knows about HTTP servers.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes


class WireError(ValueError):
    """A request that cannot be read. `code` is the Kraken error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


BATCH_FIELD = "json"


# A batch document is three containers deep ({"batchOrder": [{...}]}), four with a list in an item.
MAX_BATCH_DEPTH = 8


class JsonNumber(float):
    """A JSON number with a fraction or an exponent: a float to whoever computes with it, and `text`, the
    digits as sent. The exchange reads the digits, so the guard judges them (`10.0000000000000001` is above
    10) rather than the nearest double (which is 10)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes, *, exact_numbers: bool = False) -> Any:
    """json.loads that refuses NaN and Infinity, which are not JSON and not prices, and fails with
    ValueError (never RecursionError) on a document nested deeper than Python can follow. With
    `exact_numbers`, numbers with a fraction or exponent come back as `JsonNumber`."""
    try:
        return json.loads(
            text, parse_constant=_reject_constant, parse_float=JsonNumber if exact_numbers else None
        )
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def dumps_exact(doc: Any) -> str:
    """JSON text of a document read with `exact_numbers`: each `JsonNumber` written with the digits it was
    read from (json.dumps would write the nearest double's), everything else as json.dumps writes it.
    For documents already bounded in depth (a parsed batch, an exchange answer)."""
    if isinstance(doc, JsonNumber):
        return doc.text
    if isinstance(doc, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps_exact(v)}" for k, v in doc.items()) + "}"
    if isinstance(doc, list):
        return "[" + ",".join(dumps_exact(v) for v in doc) + "]"
    return json.dumps(doc, allow_nan=False)


def _nested_deeper_than(doc: Any, limit: int) -> bool:
    """Whether `doc` has containers more than `limit` deep. A loop, not recursion: its point is to stop a
    document that would exhaust the recursion limit of whatever reads it next (repr, ==, json.dumps)."""
    level = [doc] if isinstance(doc, dict | list) else []
    for _ in range(limit):
        children = (c for node in level for c in (node.values() if isinstance(node, dict) else node))
        level = [c for c in children if isinstance(c, dict | list)]
        if not level:
            return False
    return True


def parse_form(text: str) -> list[tuple[str, str]]:
    """Fields of a URL-encoded string, in order, blanks kept. Undecodable text -> invalidArgument."""
    if not text:
        return []
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("invalidArgument", "the parameters are not valid URL-encoded UTF-8") from exc


# Parameters that are lists, sent as the same name repeated (`orders/status`).
LIST_FIELDS = frozenset({"orderIds", "cliOrdIds"})


def split_batch_body(body: str) -> tuple[str, str | None]:
    """Separate a raw-JSON batch field from the rest of a form body.

    ccxt sends `json={"batchOrder": [...]}` with the JSON not URL-encoded (so it may hold `&` or `%`);
    python-kraken-sdk URL-encodes it. Returns (rest of the form, raw JSON text or None).
    """
    if body.startswith(BATCH_FIELD + "={"):
        return "", body[len(BATCH_FIELD) + 1 :]
    return body, None


def request_fields(query: str, body: str, repeatable: frozenset[str] = frozenset()) -> dict[str, str]:
    """All parameters of a request, query first then body.

    A field given twice is refused (invalidArgument): which of the two the exchange would act on is not
    something to guess. Fields named in `repeatable` (lists such as `orderIds`) are joined with commas.
    """
    form_body, raw_json = split_batch_body(body)
    fields: dict[str, str] = {}
    for key, value in [*parse_form(query), *parse_form(form_body)]:
        if key in fields:
            if key not in repeatable:
                raise WireError("invalidArgument", f"parameter {key!r} is given more than once")
            value = f"{fields[key]},{value}"
        fields[key] = value
    if raw_json is not None:
        if BATCH_FIELD in fields:
            raise WireError("invalidArgument", "parameter 'json' is given more than once")
        fields[BATCH_FIELD] = raw_json
    return fields


def batch_items(fields: dict[str, str]) -> list[dict[str, Any]]:
    """The `batchOrder` list of a batchorder request, each item a JSON object with an `order` kind."""
    return parse_batch(fields)[0]


def parse_batch(fields: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items of a batchorder request and the whole JSON document they came in (which may also hold
    `ProcessBefore` and keys some clients copy there). Each item is an object with an `order` kind."""
    raw = fields.get(BATCH_FIELD)
    if raw is None:
        raise WireError("requiredArgumentMissing", "batchorder needs the form field 'json'")
    try:
        doc = loads_strict(raw, exact_numbers=True)
    except ValueError:
        # Some clients double-encode; accept one more round of percent-decoding, nothing looser.
        try:
            doc = loads_strict(unquote_to_bytes(raw), exact_numbers=True)
        except ValueError:
            raise WireError("Json Parse Error", "the 'json' field is not valid JSON") from None
    if _nested_deeper_than(doc, MAX_BATCH_DEPTH):
        raise WireError("invalidArgument", f"the 'json' field is nested more than {MAX_BATCH_DEPTH} deep")
    if not isinstance(doc, dict) or not isinstance(doc.get("batchOrder"), list):
        raise WireError("invalidArgument", "the 'json' field must be an object with a 'batchOrder' list")
    items: list[dict[str, Any]] = doc["batchOrder"]
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("order"), str):
            raise WireError("invalidArgument", f"batchOrder[{index}] must be an object with an 'order'")
    return items, doc
