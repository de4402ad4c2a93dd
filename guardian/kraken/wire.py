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


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """json.loads that refuses NaN and Infinity, which are not JSON and not prices."""
    return json.loads(text, parse_constant=_reject_constant)


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
        doc = loads_strict(raw)
    except ValueError:
        # Some clients double-encode; accept one more round of percent-decoding, nothing looser.
        try:
            doc = loads_strict(unquote_to_bytes(raw))
        except ValueError:
            raise WireError("Json Parse Error", "the 'json' field is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("batchOrder"), list):
        raise WireError("invalidArgument", "the 'json' field must be an object with a 'batchOrder' list")
    items: list[dict[str, Any]] = doc["batchOrder"]
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("order"), str):
            raise WireError("invalidArgument", f"batchOrder[{index}] must be an object with an 'order'")
    return items, doc
