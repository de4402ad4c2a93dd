"""Properties of the form and batch readers (guardian.kraken.wire, and the batch checks of
guardian.gateway.orders), with hypothesis.

- URL-encoded forms round-trip through `urllib.parse.urlencode` for any keys and values, in both of
  its spellings (`%20` and `+`).
- Query and body merge: every field once, query first; a field given twice is refused unless it is a
  list field, whose values are joined in order.
- Both batch encodings real clients use (ccxt: raw JSON after `json=`; python-kraken-sdk: URL-encoded),
  and the double-encoded one, give the same items, numbers kept to the digit.
- Arbitrary text never raises anything but WireError or Refusal: anything else is a 500 at the gateway.

Deterministic: every test uses this module's settings (derandomize, no example database).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian.gateway import orders
from guardian.gateway.refusal import Refusal
from guardian.kraken.signing import encode_params
from guardian.kraken.wire import (
    LIST_FIELDS,
    MAX_BATCH_DEPTH,
    JsonNumber,
    WireError,
    parse_batch,
    parse_form,
    request_fields,
)

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)
MANY = settings(SETTINGS, max_examples=400)
WIRE_CODES = {"invalidArgument", "requiredArgumentMissing", "Json Parse Error"}
# What reading a request may refuse with: nothing about limits, modes or the switch is decided here.
READ_CODES = {"invalidArgument", "requiredArgumentMissing", "requestTooLarge"}

# ---- strategies ---------------------------------------------------------------------------------------
UNICODE = st.text(st.characters(codec="utf-8"), max_size=30)
FORMISH = st.text(st.sampled_from("&=%+ ab1-_.~:/?#{}[]\"'\\é€😀\x00\n;"), max_size=30)
TEXT = UNICODE | FORMISH
# Field names: the ones the gateway reads, and anything else.
NAMES = (
    st.sampled_from(sorted(orders.SEND_FIELDS | orders.EDIT_FIELDS | LIST_FIELDS | {"json", "order"})) | TEXT
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT | NAMES, inner, max_size=3),
    max_leaves=8,
)
ITEM_VALUES = JSON_SCALARS | st.sampled_from(
    ["lmt", "buy", "PF_XBTUSD", "1.5", "true", "send", "edit", "cancel"]
)
ITEMS = st.lists(
    st.fixed_dictionaries(
        {"order": st.sampled_from(["send", "edit", "cancel"]) | TEXT},
        optional={"order_tag": st.integers(0, 99) | TEXT},
    ).flatmap(
        lambda base: st.dictionaries(NAMES, ITEM_VALUES, max_size=6).map(lambda extra: {**extra, **base})
    ),
    max_size=5,
)


@st.composite
def batch_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"batchOrder": draw(ITEMS)}
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["processBefore", "ProcessBefore"]))] = "2030-01-01T00:00:00.000Z"
    return doc


# The ways a batch arrives: (query, body) from the JSON text of the document.
ENCODINGS: dict[str, Callable[[str], tuple[str, str]]] = {
    "ccxt raw JSON body": lambda text: ("", "json=" + text),
    "python-kraken-sdk URL-encoded body": lambda text: ("", urlencode({"json": text})),
    "URL-encoded with %20": lambda text: ("", encode_params({"json": text})),
    "URL-encoded query": lambda text: (encode_params({"json": text}), ""),
    "double-encoded body": lambda text: ("", urlencode({"json": quote(text, safe="")})),
}
DUMPS: dict[str, Callable[[Any], str]] = {
    "compact": lambda doc: json.dumps(doc, separators=(",", ":")),  # ccxt
    "spaced": json.dumps,  # python-kraken-sdk
    "utf-8": lambda doc: json.dumps(doc, ensure_ascii=False),
}


def rejection(call: Callable[..., object], *args: Any) -> str | None:
    """The code of the WireError or Refusal that `call(*args)` raises, None if it returns. Any other
    exception propagates and fails the test: at the gateway it would be a 500."""
    try:
        call(*args)
    except (WireError, Refusal) as exc:
        return exc.code
    return None


def floats_in(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return []


# ---- forms ----------------------------------------------------------------------------------------------


@SETTINGS
@given(pairs=st.lists(st.tuples(TEXT, TEXT), max_size=6), plus=st.booleans())
@example(pairs=[("", "")], plus=False)
@example(pairs=[("a", "b=c&d"), ("e f", "1+1%")], plus=True)
def test_a_form_round_trips_through_urlencode_in_both_spellings(
    pairs: list[tuple[str, str]], plus: bool
) -> None:
    text = urlencode(pairs) if plus else urlencode(pairs, quote_via=quote)
    assert parse_form(text) == pairs


@MANY
@given(text=TEXT | st.text(st.sampled_from("%0123456789abcdefABCDEFgG&=+"), max_size=20))
@example(text="a=%ff")  # not UTF-8 once decoded
@example(text="%C3%28=1")
def test_arbitrary_form_text_reads_as_fields_or_is_refused_as_invalid_argument(text: str) -> None:
    code = rejection(parse_form, text)
    assert code in (None, "invalidArgument")
    if code is not None:
        return
    fields = parse_form(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields)
    if "&" not in text and "=" in text:
        assert len(fields) == 1


NAMED = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "orderIds", "cliOrdIds"]), TEXT), max_size=5)


@SETTINGS
@given(query=NAMED, body=NAMED)
def test_query_and_body_merge_each_field_once_query_first_and_list_fields_joined(
    query: list[tuple[str, str]], body: list[tuple[str, str]]
) -> None:
    every = query + body
    names = [name for name, _ in every]
    repeated = {name for name in names if names.count(name) > 1}
    code = rejection(request_fields, encode_params(query), encode_params(body), LIST_FIELDS)
    assert code == ("invalidArgument" if repeated - LIST_FIELDS else None)
    if code is not None:
        return
    fields = request_fields(encode_params(query), encode_params(body), LIST_FIELDS)
    assert fields == {name: ",".join(v for n, v in every if n == name) for name in names}
    assert list(fields) == list(dict.fromkeys(names))  # in order of first appearance, query first


@SETTINGS
@given(query=NAMED, body=NAMED)
def test_without_list_fields_any_field_given_twice_is_refused(
    query: list[tuple[str, str]], body: list[tuple[str, str]]
) -> None:
    names = [name for name, _ in query + body]
    code = rejection(request_fields, encode_params(query), encode_params(body))
    assert code == ("invalidArgument" if len(set(names)) < len(names) else None)


# ---- batch encodings ------------------------------------------------------------------------------------


@SETTINGS
@given(doc=batch_documents(), dumps=st.sampled_from(sorted(DUMPS)))
@example(doc={"batchOrder": [{"order": "send", "cliOrdId": "a&b=%41+c d", "size": 1e-05}]}, dumps="compact")
@example(doc={"batchOrder": [{"order": "send", "cliOrdId": "100%25 \u00e9"}]}, dumps="utf-8")
def test_every_batch_encoding_gives_the_same_items(doc: dict[str, Any], dumps: str) -> None:
    text = DUMPS[dumps](doc)
    for name, encode in ENCODINGS.items():
        query, body = encode(text)
        items, parsed = parse_batch(request_fields(query, body, LIST_FIELDS))
        assert items == doc["batchOrder"], name
        assert parsed == doc, name
        for number in floats_in(items):
            assert isinstance(number, JsonNumber)  # the digits as sent travel with it
            assert float(number.text) == number


@pytest.mark.parametrize(
    "text",
    [
        "10.0000000000000001",  # the nearest double is 10
        "0.10000000000000001",
        "1.50",
        "1E+2",
        "1e400",  # a double would be inf
        "-0.0",
        "12345678901234567890.123456789",
    ],
)
def test_a_batch_json_number_keeps_the_digits_it_was_sent_with(text: str) -> None:
    raw = '{"batchOrder":[{"order":"send","size":' + text + "}]}"
    for name, encode in ENCODINGS.items():
        [item], _ = parse_batch(request_fields(*encode(raw), LIST_FIELDS))
        assert isinstance(item["size"], JsonNumber), name
        assert item["size"].text == text, name


# ---- hostile input ----------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    """A batch document whose containers reach `depth` (`{"batchOrder": [{...}]}` is 3)."""
    inner = "1"
    for _ in range(depth - 3):
        inner = "[" + inner + "]"
    return '{"batchOrder":[{"order":"send","size":' + inner + "}]}"


@MANY
@given(text=TEXT | st.text(st.sampled_from('{}[]":,json=batchOrder0.5e-tfnul\\%7B'), max_size=60))
@example(text="[" * 5000)  # was RecursionError (a 500)
@example(text="%5B" * 5000)  # the same, after the double-decoding fallback
@example(text='{"batchOrder":' + "[" * 3000)
@example(text=nested(900))  # parses, then repr/== on it could exhaust the stack
@example(text='{"batchOrder":[{"order":"send","size":NaN}]}')
@example(text='{"batchOrder":[{"order":"send","size":Infinity}]}')
@example(text='{"batchOrder":[{"order":"send","size":' + "1" * 5000 + "}]}")  # over int's digit limit
def test_any_json_field_is_a_batch_or_a_wire_error(text: str) -> None:
    code = rejection(parse_batch, {"json": text})
    assert code in {None} | WIRE_CODES
    if code is not None:
        return
    items, doc = parse_batch({"json": text})
    assert isinstance(doc, dict) and doc["batchOrder"] is items
    assert all(isinstance(item, dict) and isinstance(item["order"], str) for item in items)


def test_a_batch_document_may_nest_up_to_the_limit_and_not_one_level_more() -> None:
    items, _ = parse_batch({"json": nested(MAX_BATCH_DEPTH)})
    assert items[0]["order"] == "send"
    with pytest.raises(WireError) as caught:
        parse_batch({"json": nested(MAX_BATCH_DEPTH + 1)})
    assert caught.value.code == "invalidArgument"
    assert f"more than {MAX_BATCH_DEPTH} deep" in str(caught.value)


def read_order_request(query: str, body: str, endpoint: str) -> object:
    """What the gateway does with an order request's text after authentication (app.py `_guard`)."""
    fields = request_fields(query, body, LIST_FIELDS)
    if endpoint == "batchorder":
        items, doc = parse_batch(fields)
        orders.parse_batch_envelope(fields, doc)
        return orders.parse_batch(items)
    parse: dict[str, Callable[[dict[str, str]], object]] = {
        "sendorder": orders.parse_send,
        "editorder": orders.parse_edit,
        "cancelorder": orders.parse_cancel,
        "cancelallorders": orders.parse_cancel_all,
    }
    return parse[endpoint](fields)


ENDPOINT_NAMES = st.sampled_from(["sendorder", "editorder", "cancelorder", "cancelallorders", "batchorder"])


@MANY
@given(query=TEXT, body=TEXT, endpoint=ENDPOINT_NAMES)
@example(query="", body="json={", endpoint="batchorder")
@example(query="json=%7B%7D", body='json={"batchOrder":[]}', endpoint="batchorder")
def test_arbitrary_request_text_is_read_or_refused_never_a_crash(
    query: str, body: str, endpoint: str
) -> None:
    assert rejection(read_order_request, query, body, endpoint) in {None} | WIRE_CODES | READ_CODES


@SETTINGS
@given(
    doc=batch_documents() | JSON,
    extra=st.dictionaries(NAMES, TEXT, max_size=2),
    dumps=st.sampled_from(sorted(DUMPS)),
)
@example(doc={"batchOrder": [{"order": "send", "size": 1e400}]}, extra={}, dumps="compact")
@example(doc={"batchOrder": [{"order": "send", "order_tag": 10**40}]}, extra={}, dumps="compact")
@example(doc={"batchOrder": [], "x": []}, extra={}, dumps="compact")
def test_arbitrary_batch_documents_are_read_or_refused_never_a_crash(
    doc: Any, extra: dict[str, str], dumps: str
) -> None:
    for encode in ENCODINGS.values():
        query, body = encode(DUMPS[dumps](doc))
        if extra and body.startswith("json={"):
            continue  # a raw-JSON body is the whole body: nothing can follow it
        body = "&".join(filter(None, [body, urlencode(extra)]))
        assert rejection(read_order_request, query, body, "batchorder") in {None} | WIRE_CODES | READ_CODES


@SETTINGS
@given(fields=st.dictionaries(NAMES, JSON, max_size=6), endpoint=ENDPOINT_NAMES)
def test_arbitrary_field_mappings_only_ever_raise_a_refusal(fields: dict[str, Any], endpoint: str) -> None:
    """The parsers also take JSON values (batch items): anything JSON can hold is read or refused."""
    parse: Callable[[dict[str, Any]], object] = {
        "sendorder": orders.parse_send,
        "editorder": orders.parse_edit,
        "cancelorder": orders.parse_cancel,
        "cancelallorders": orders.parse_cancel_all,
        "batchorder": lambda f: orders.parse_batch([f]),
    }[endpoint]
    assert rejection(parse, fields) in {None} | READ_CODES
