"""`json.loads` that hands the event loop back while it reads a large document.

A REST reconciliation of 5,000 orders, or a WebSocket snapshot after a reconnect, is a JSON document of
well over a megabyte, and one `json.loads` call on it holds the loop for 10-20 ms. A thread does not help:
the C decoder holds the GIL for the whole parse. So a large document is read here in slices: the top-level
container and the containers directly inside it (`{"openOrders": [...]}`, `{"orders": [...]}`) are walked
element by element, each element is decoded whole by the stdlib's C scanner (`JSONDecoder.raw_decode`),
and between elements, once `slice_s` has passed since the loop last had a turn, the walk awaits
`asyncio.sleep(0)`. Deeper containers (an order, a few hundred bytes) are decoded in one piece, so the
longest hold is a slice plus one element (plus, for bytes, decoding them first: negligible for ASCII, about
2 ms per MB of other UTF-8). The price is CPU: about twice json.loads' (a Python step per element, and
each element's keys are new strings where one json.loads call would share them).

The result, and the error for a document that is not JSON, are those of `json.loads`: the walk follows
the C scanner's own steps and raises its messages at its positions (`JSONDecodeError`, a ValueError).
Pure: nothing here knows about HTTP, WebSockets or Kraken.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from time import perf_counter
from typing import Any

# _reject_constant is private to wire; imported so that both readers refuse NaN with the same words.
from guardian.kraken.wire import JsonNumber, _reject_constant

# Hold the loop for at most this long between turns (plus one element).
SLICE_S = 0.002
# A document shorter than this (characters, or bytes for bytes) is read in one json.loads call: 64 KB of
# orders take about 0.4 ms, well inside a slice, and walking them would only cost more.
THRESHOLD = 65536
# The levels walked element by element: the document (0) and the containers directly inside it (1).
WALKED_LEVELS = 2

# JSON's whitespace is these four characters, nothing else (not \v, \f or Unicode spaces): json.loads'.
_NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")
_WHITESPACE = (" ", "\t", "\n", "\r")
_OPENERS = ("{", "[")


def _skip_whitespace(doc: str, idx: int) -> int:
    """The index of the first character at or after `idx` that is not JSON whitespace (or the end)."""
    if not doc.startswith(_WHITESPACE, idx):
        return idx  # the common case, compact JSON: no search
    found = _NOT_WHITESPACE.search(doc, idx)
    return len(doc) if found is None else found.start()


class _Walk:
    """One document being read: the text, the C decoder for its elements, and when the loop is due."""

    __slots__ = ("decode", "doc", "due", "slice_s")

    def __init__(self, doc: str, decoder: json.JSONDecoder, slice_s: float, started: float) -> None:
        self.doc = doc
        self.decode = decoder.raw_decode
        self.slice_s = slice_s
        self.due = started + slice_s

    async def hand_back(self) -> None:
        await asyncio.sleep(0)
        self.due = perf_counter() + self.slice_s

    async def value(self, idx: int, level: int) -> tuple[Any, int]:
        """The value at `idx` (no whitespace before it) on a walked `level`, and the index just after it."""
        if self.doc.startswith("{", idx):
            return await self.object(idx, level)
        if self.doc.startswith("[", idx):
            return await self.array(idx, level)
        return self.decode(self.doc, idx)  # a scalar, or "Expecting value" where json.loads says it

    async def array(self, idx: int, level: int) -> tuple[list[Any], int]:
        doc, inner = self.doc, level + 1
        items: list[Any] = []
        idx = _skip_whitespace(doc, idx + 1)
        if doc.startswith("]", idx):
            return items, idx + 1
        while True:
            if inner < WALKED_LEVELS and doc.startswith(_OPENERS, idx):
                item, idx = await self.value(idx, inner)  # a coroutine only for what is walked
            else:
                item, idx = self.decode(doc, idx)
            items.append(item)
            idx = _skip_whitespace(doc, idx)
            if doc.startswith("]", idx):
                return items, idx + 1
            if not doc.startswith(",", idx):
                raise json.JSONDecodeError("Expecting ',' delimiter", doc, idx)
            idx = _skip_whitespace(doc, idx + 1)
            if perf_counter() >= self.due:
                await self.hand_back()

    async def object(self, idx: int, level: int) -> tuple[dict[str, Any], int]:
        doc, inner = self.doc, level + 1
        members: dict[str, Any] = {}
        idx = _skip_whitespace(doc, idx + 1)
        if doc.startswith("}", idx):
            return members, idx + 1
        while True:
            if not doc.startswith('"', idx):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", doc, idx)
            key, idx = self.decode(doc, idx)  # a string, read by the C scanner as a key is
            idx = _skip_whitespace(doc, idx)
            if not doc.startswith(":", idx):
                raise json.JSONDecodeError("Expecting ':' delimiter", doc, idx)
            idx = _skip_whitespace(doc, idx + 1)
            if inner < WALKED_LEVELS and doc.startswith(_OPENERS, idx):
                value, idx = await self.value(idx, inner)
            else:
                value, idx = self.decode(doc, idx)
            members[key] = value  # a repeated key: the last one wins, in the first one's place
            idx = _skip_whitespace(doc, idx)
            if doc.startswith("}", idx):
                return members, idx + 1
            if not doc.startswith(",", idx):
                raise json.JSONDecodeError("Expecting ',' delimiter", doc, idx)
            idx = _skip_whitespace(doc, idx + 1)
            if perf_counter() >= self.due:
                await self.hand_back()


async def loads(
    text: str | bytes | bytearray,
    *,
    slice_s: float = SLICE_S,
    threshold: int = THRESHOLD,
    parse_float: Callable[[str], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """What `json.loads(text, parse_float=..., parse_constant=...)` returns or raises, read in slices of
    about `slice_s` seconds with a turn of the event loop between them. Documents shorter than `threshold`
    are read in one call."""
    started = perf_counter()
    if len(text) < threshold:
        return json.loads(text, parse_float=parse_float, parse_constant=parse_constant)
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        doc = text
    else:
        doc = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads decodes bytes
    decoder = json.JSONDecoder(parse_float=parse_float, parse_constant=parse_constant)
    walk = _Walk(doc, decoder, slice_s, started)
    value, end = await walk.value(_skip_whitespace(doc, 0), level=0)
    end = _skip_whitespace(doc, end)
    if end != len(doc):
        raise json.JSONDecodeError("Extra data", doc, end)
    return value


async def loads_strict(
    text: str | bytes | bytearray,
    *,
    exact_numbers: bool = False,
    slice_s: float = SLICE_S,
    threshold: int = THRESHOLD,
) -> Any:
    """`guardian.kraken.wire.loads_strict`, read in slices: refuses NaN and Infinity, fails with ValueError
    (never RecursionError) on a document nested too deeply, and with `exact_numbers` gives numbers with a
    fraction or exponent as `JsonNumber`."""
    try:
        return await loads(
            text,
            slice_s=slice_s,
            threshold=threshold,
            parse_constant=_reject_constant,
            parse_float=JsonNumber if exact_numbers else None,
        )
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
