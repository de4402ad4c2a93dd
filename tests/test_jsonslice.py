"""guardian.jsonslice: json.loads in slices that hand the event loop back.

- For any JSON value, in any layout json.dumps writes (separators, indents made of JSON's four whitespace
  characters, ensure_ascii both ways) and any encoding json.loads reads from bytes, the sliced reader
  returns what json.loads returns, float for float, key order included.
- For documents broken on purpose (truncated, a stray character, a comma dropped, garbage appended, bytes
  that are not UTF-8) it fails exactly when json.loads fails, with the same error and message.
- A 5,000-order `openorders` answer is read equal to json.loads while another task keeps running.
- loads_strict agrees with guardian.kraken.wire.loads_strict: NaN and Infinity refused, exact numbers
  kept, deep nesting a ValueError.

Deterministic: the property tests use derandomize and no example database.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian import jsonslice
from guardian.kraken import wire
from guardian.kraken.wire import JsonNumber

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
FEWER = settings(SETTINGS, max_examples=100)

# ---- comparing outcomes ---------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal as json.loads' results must be: same types, floats to the bit (NaN equal to NaN, -0.0 not
    0.0), JsonNumber digits, key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        bits_equal = math.isnan(b) if math.isnan(a) else a.hex() == b.hex()
        return bits_equal and getattr(a, "text", None) == getattr(b, "text", None)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    return bool(a == b)


Outcome = tuple[str, Any]


def outcome(parse: Callable[[], Any]) -> Outcome:
    try:
        return ("value", parse())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return (type(exc).__name__, str(exc))


async def outcome_async(parse: Callable[[], Awaitable[Any]]) -> Outcome:
    try:
        return ("value", await parse())
    except ValueError as exc:
        return (type(exc).__name__, str(exc))


def assert_same_outcome(expected: Outcome, got: Outcome) -> None:
    if expected[0] == "value" == got[0]:
        assert same(expected[1], got[1]), (expected, got)
    else:
        assert expected == got


# ---- strategies ---------------------------------------------------------------------------------------
# Surrogates included: a str may hold them, and json.loads decodes bytes with 'surrogatepass'.
UNICODE = st.text(st.characters(exclude_categories=()), max_size=12)
ESCAPES = st.text(st.sampled_from('"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\ufeffé€😀 a{}[],:'), max_size=12)
TEXT = UNICODE | ESCAPES
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and the infinities too: json.dumps writes them, json.loads reads them
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)
# Documents whose top two levels are containers, which is where the walk (not the C scanner) reads.
DOCUMENTS = (
    VALUES
    | st.lists(VALUES, max_size=8)
    | st.dictionaries(TEXT, st.lists(VALUES, max_size=6) | st.dictionaries(TEXT, VALUES, max_size=6) | VALUES)
)
# JSON's whitespace, and only it, in every place json.dumps can put whitespace.
BLANK = st.text(st.sampled_from(" \t\n\r"), max_size=3)
LAYOUTS = st.fixed_dictionaries(
    {
        "ensure_ascii": st.booleans(),
        "indent": st.none() | st.integers(0, 3) | BLANK,
        "separators": st.none()
        | st.tuples(BLANK, BLANK).map(lambda b: (b[0] + "," + b[1], b[1] + ":" + b[0])),
    }
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A valid JSON document in some layout, with JSON whitespace around it."""
    layout: dict[str, Any] = draw(LAYOUTS)
    text = json.dumps(draw(DOCUMENTS), **layout)
    return draw(BLANK) + text + draw(BLANK)


STRAYS = st.sampled_from(
    [
        *',:[]{}"\\ \t\n\r\x0b\x0c\xa0\u2028\ufeff-+.eE0x',
        "true",
        "nul",
        "NaN",
        "-Infinity",
        '"a"',
        "]]",
        "}}",
        "[{",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid document broken (usually) in one of the ways a cut connection or a bad server breaks it."""
    text = draw(documents())
    at = draw(st.integers(0, len(text)))
    match draw(st.sampled_from(["truncate", "insert", "delete", "drop a comma", "append"])):
        case "truncate":
            return text[:at]
        case "insert":
            stray: str = draw(STRAYS)
            return text[:at] + stray + text[at:]
        case "delete":
            return text[:at] + text[at + 1 :]
        case "drop a comma":
            commas = [i for i, char in enumerate(text) if char == ","]
            cut: int = draw(st.sampled_from(commas)) if commas else at
            return text[:cut] + text[cut + 1 :]
        case _:
            garbage: str = draw(STRAYS)
            return text + garbage


ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])


# ---- valid documents ----------------------------------------------------------------------------------


@SETTINGS
@given(text=documents(), slice_s=st.sampled_from([0.0, jsonslice.SLICE_S]))
@example(text='{"a": 1, "b": [{"x": 1, "x": 2}, 3], "a": [1, 2]}', slice_s=0.0)
@example(text='[[1, 2], {}, [], {"k": [[]]}]', slice_s=0.0)
async def test_any_document_reads_as_json_loads_reads_it(text: str, slice_s: float) -> None:
    assert same(json.loads(text), await jsonslice.loads(text, threshold=0, slice_s=slice_s))


@SETTINGS
@given(text=documents(), encoding=ENCODINGS)
async def test_bytes_are_decoded_as_json_loads_decodes_them(text: str, encoding: str) -> None:
    data = text.encode(encoding, "surrogatepass")
    assert_same_outcome(
        outcome(lambda: json.loads(data)),
        await outcome_async(lambda: jsonslice.loads(data, threshold=0, slice_s=0)),
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',  # the document's own keys
        '{"orders": [1], "other": {"k": 1, "k": [2], "j": 3}, "orders": [2]}',  # walked level
        '{"orders": [{"id": 1, "id": 2, "qty": 3}]}',  # inside an element
    ],
)
async def test_a_repeated_key_keeps_the_last_value_in_the_first_place(text: str) -> None:
    assert same(json.loads(text), await jsonslice.loads(text, threshold=0, slice_s=0))


# ---- invalid documents --------------------------------------------------------------------------------


@SETTINGS
@given(text=mutated())
@example(text='{"a": [1 2]}')
@example(text='{"a": [1, 2,]}')
@example(text='{"a": 1,}')
@example(text='{"a" 1}')
@example(text='{"a": [1, {"b": 2}')
@example(text="[1]\x0c")
@example(text="\ufeff[1]")
@example(text="")
async def test_a_broken_document_fails_exactly_as_json_loads_fails(text: str) -> None:
    assert_same_outcome(
        outcome(lambda: json.loads(text)),
        await outcome_async(lambda: jsonslice.loads(text, threshold=0, slice_s=0)),
    )


@SETTINGS
@given(
    text=documents(),
    junk=st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\x80\x80"]),
    data=st.data(),
)
async def test_bytes_that_are_not_utf8_fail_as_json_loads_fails(
    text: str, junk: bytes, data: st.DataObject
) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    at = data.draw(st.integers(0, len(raw)))
    broken = raw[:at] + junk + raw[at:]
    assert_same_outcome(
        outcome(lambda: json.loads(broken)),
        await outcome_async(lambda: jsonslice.loads(broken, threshold=0, slice_s=0)),
    )


# ---- handing the loop back ----------------------------------------------------------------------------


def kraken_open_orders(count: int) -> str:
    """An `openorders` answer as Kraken Futures writes it: compact, newest first, one object per order."""
    orders = [
        {
            "order_id": f"{i:08x}-5e6f-4a7b-8c9d-{i:012x}",
            "symbol": ("PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD")[i % 3],
            "side": "buy" if i % 2 else "sell",
            "orderType": "lmt",
            "unfilledSize": 0.001 * (i % 97 + 1),
            "filledSize": 0,
            "receivedTime": "2024-05-01T12:00:00.123Z",
            "lastUpdateTime": "2024-05-01T12:00:01.456Z",
            "status": "untouched",
            "reduceOnly": i % 5 == 0,
            "limitPrice": 61234.5 + i,
            "cliOrdId": f"bot-{i % 7}-{i}",
        }
        for i in range(count)
    ]
    answer = {"result": "success", "openOrders": orders, "serverTime": "2024-05-01T12:00:02.000Z"}
    return json.dumps(answer, separators=(",", ":"))


async def parse_watched(parse: Awaitable[Any]) -> tuple[Any, list[float]]:
    """The result of `parse` and the gaps between the wake-ups another task got while it ran."""
    parsing = False
    gaps: list[float] = []

    async def watch() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if parsing:
                gaps.append(now - last)
            last = now

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # the watcher is waiting for its next turn
    parsing = True
    try:
        result = await parse
    finally:
        parsing = False
        watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    return result, gaps


ORDERS = 5000


async def test_a_5000_order_answer_reads_equal_while_other_tasks_keep_running() -> None:
    text = kraken_open_orders(ORDERS)
    assert len(text) > 1_000_000
    result, gaps = await parse_watched(jsonslice.loads(text))
    assert same(json.loads(text), result)
    assert len(result["openOrders"]) == ORDERS
    # No bound on the gaps here (a shared machine stalls when it likes): bench/jsonslice_bench.py measures.
    print(f"{len(gaps)} wake-ups of another task during the parse, the longest gap {max(gaps) * 1e3:.2f} ms")
    # Handed back several times, but in slices of many orders, not after each one.
    assert 3 < len(gaps) < ORDERS // 10


async def test_with_no_slice_the_loop_gets_a_turn_after_every_element() -> None:
    text = kraken_open_orders(ORDERS)
    result, gaps = await parse_watched(jsonslice.loads(text.encode(), slice_s=0))
    assert same(json.loads(text), result)
    # One turn after each of the 4,999 commas of the list and the 2 of the answer itself.
    assert len(gaps) == ORDERS - 1 + 2


async def test_a_document_below_the_threshold_is_read_in_one_call() -> None:
    text = kraken_open_orders(100)
    _, below = await parse_watched(jsonslice.loads(text, threshold=len(text) + 1, slice_s=0))
    _, at = await parse_watched(jsonslice.loads(text, threshold=len(text), slice_s=0))
    assert below == []
    assert len(at) == 100 - 1 + 2


async def test_a_parse_can_be_cancelled_between_slices() -> None:
    parse = asyncio.create_task(jsonslice.loads(kraken_open_orders(ORDERS), slice_s=0))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not parse.done()
    parse.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parse


# ---- loads_strict -------------------------------------------------------------------------------------

STRICT_CASES = [
    "NaN",
    "[NaN]",
    '{"orders": [1, Infinity]}',
    '{"orders": [{"limitPrice": -Infinity}]}',
    '{"orders": [{"limitPrice": 10.0000000000000001, "size": 1e-7, "n": 3}]}',
    '[{"price": 1.50}, 2.0E+3, -0.0]',
    '{"a": [1, 2]',
    "[" * 100_000 + "]" * 100_000,  # deeper than Python follows
    '{"batch": [' + "[" * 100_000 + "]" * 100_000 + "]}",
]


@pytest.mark.parametrize("text", STRICT_CASES, ids=lambda text: text[:40])
@pytest.mark.parametrize("exact_numbers", [False, True])
async def test_loads_strict_answers_as_wire_loads_strict(text: str, exact_numbers: bool) -> None:
    expected = outcome(lambda: wire.loads_strict(text, exact_numbers=exact_numbers))
    got = await outcome_async(lambda: jsonslice.loads_strict(text, exact_numbers=exact_numbers, threshold=0))
    assert_same_outcome(expected, got)


@FEWER
@given(text=documents(), exact_numbers=st.booleans())
async def test_loads_strict_agrees_with_wire_loads_strict_on_any_document(
    text: str, exact_numbers: bool
) -> None:
    assert_same_outcome(
        outcome(lambda: wire.loads_strict(text, exact_numbers=exact_numbers)),
        await outcome_async(
            lambda: jsonslice.loads_strict(text, exact_numbers=exact_numbers, threshold=0, slice_s=0)
        ),
    )


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("threshold", [0, jsonslice.THRESHOLD])
async def test_loads_strict_refuses_nan_and_infinity_at_every_level(constant: str, threshold: int) -> None:
    for text in (constant, f"[{constant}]", f'{{"orders": [{constant}]}}', f'{{"o": [{{"p": {constant}}}]}}'):
        with pytest.raises(ValueError, match="is not valid JSON"):
            await jsonslice.loads_strict(text, threshold=threshold)


async def test_loads_strict_keeps_the_digits_of_a_large_answer() -> None:
    text = kraken_open_orders(ORDERS).replace('"limitPrice":61234.5,', '"limitPrice":10.0000000000000001,')
    answer = await jsonslice.loads_strict(text, exact_numbers=True)
    price = answer["openOrders"][0]["limitPrice"]
    assert isinstance(price, JsonNumber)
    assert price.text == "10.0000000000000001"
    assert same(wire.loads_strict(text, exact_numbers=True), answer)
