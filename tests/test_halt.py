"""What a forwarded request left open, read from its answer (guardian.gateway.halt.left_open), as a unit:
the kill cancels these by id, and sweeps with cancelallorders when an answer cannot say."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from guardian.gateway.halt import left_open
from guardian.gateway.inflight import Flight, InFlight
from guardian.gateway.orders import OrderIntent
from guardian.kraken.client import RawAnswer

EDIT = OrderIntent(kind="edit", order_id="edited-id", size=Decimal(2))


def answer(doc: Any, status: int = 200) -> RawAnswer:
    return RawAnswer(status, json.dumps(doc).encode(), "application/json")


def flight(endpoint: str, *intents: Any) -> Flight:
    return Flight("bot", endpoint, intents)


@pytest.mark.parametrize(
    ("endpoint", "doc", "status", "expected"),
    [
        (
            "sendorder",
            {"result": "success", "sendStatus": {"status": "placed", "order_id": "o1"}},
            200,
            [("order_id", "o1")],
        ),
        (
            "sendorder",
            {"result": "success", "sendStatus": {"status": "partiallyFilled", "order_id": "o1"}},
            200,
            [("order_id", "o1")],
        ),
        ("sendorder", {"result": "success", "sendStatus": {"status": "filled", "order_id": "o1"}}, 200, []),
        ("sendorder", {"result": "success", "sendStatus": {"status": "insufficientAvailableFunds"}}, 200, []),
        # An unknown status is never taken for a harmless one: cancelled by id.
        (
            "sendorder",
            {"result": "success", "sendStatus": {"status": "brandNew", "order_id": "o1"}},
            200,
            [("order_id", "o1")],
        ),
        (
            "sendorder",
            {"result": "success", "sendStatus": {"status": "placed", "cliOrdId": "c1"}},
            200,
            [("cliOrdId", "c1")],
        ),
        ("sendorder", {"result": "success", "sendStatus": {"status": "placed"}}, 200, None),  # no id: sweep
        ("sendorder", {"result": "error", "error": "apiLimitExceeded"}, 429, []),
        ("sendorder", {"result": "error", "error": "Unavailable"}, 503, None),
        ("sendorder", {"result": "success"}, 200, None),
        ("sendorder", ["not", "an", "object"], 200, None),
        (
            "editorder",
            {"result": "success", "editStatus": {"status": "edited", "orderId": "e1"}},
            200,
            [("order_id", "e1")],
        ),
        (
            "editorder",
            {"result": "success", "editStatus": {"status": "edited"}},
            200,
            [("order_id", "edited-id")],
        ),
        ("editorder", {"result": "success", "editStatus": {"status": "orderForEditNotFound"}}, 200, []),
        (
            "batchorder",
            {
                "result": "success",
                "batchStatus": [
                    {"status": "placed", "order_id": "b1", "order_tag": "1"},
                    {"status": "cancelled", "order_id": "old"},
                    {"status": "edited", "order_id": "b1"},
                    {"status": "placed", "order_id": "b2"},
                ],
            },
            200,
            [("order_id", "b1"), ("order_id", "b2")],
        ),
        ("batchorder", {"result": "success", "batchStatus": ["junk"]}, 200, None),
    ],
)
def test_what_an_answer_left_open(endpoint: str, doc: Any, status: int, expected: Any) -> None:
    assert left_open(flight(endpoint, EDIT), answer(doc, status)) == expected


def test_a_body_that_is_not_json_is_an_unknown_outcome() -> None:
    assert left_open(flight("sendorder"), RawAnswer(502, b"<html>bad gateway</html>", "text/html")) is None


async def test_in_flight_snapshots_by_bot_and_settles_its_waiters() -> None:
    registry = InFlight()
    a = registry.begin("a", "sendorder", ())
    b = registry.begin("b", "batchorder", ())
    assert registry.snapshot() == [a, b] and registry.snapshot("b") == [b]
    registry.end(a, None)
    assert len(registry) == 1 and await a.wait() is None
    done = answer({"result": "success"})
    registry.end(b, done)
    assert await b.wait() is done and registry.snapshot() == []
