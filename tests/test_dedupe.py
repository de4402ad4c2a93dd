"""The retried-order memory (guardian.gateway.dedupe), as a unit: claims, waits, the window, the bound."""

from __future__ import annotations

import asyncio

from guardian.gateway.dedupe import Outcome, RecentOrders
from guardian.kraken.client import RawAnswer

ANSWER = RawAnswer(200, b'{"result":"success"}', "application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_retry_waits_for_the_attempt_in_flight_and_gets_its_answer() -> None:
    recent = RecentOrders(300)
    assert recent.claim("a") is None
    earlier = recent.claim("a")
    assert earlier is not None and earlier.outcome is Outcome.PENDING
    waiter = asyncio.create_task(earlier.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    recent.answered("a", ANSWER)
    await asyncio.wait_for(waiter, 1)
    assert (earlier.outcome, earlier.answer) == (Outcome.ANSWERED, ANSWER)
    await asyncio.wait_for(earlier.wait(), 1)  # settled: no wait at all


async def test_forgetting_wakes_the_waiters_and_the_next_claim_is_a_first_attempt() -> None:
    recent = RecentOrders(300)
    recent.claim("a")
    earlier = recent.claim("a")
    assert earlier is not None
    waiter = asyncio.create_task(earlier.wait())
    await asyncio.sleep(0)
    recent.forget("a")
    await asyncio.wait_for(waiter, 1)
    assert earlier.outcome is Outcome.UNKNOWN
    assert recent.claim("a") is None


def test_a_settled_attempt_keeps_no_event() -> None:
    # Thousands of orders are remembered for the window; only one a retry waited on ever had an Event.
    recent = RecentOrders(300)
    recent.claim("a")
    recent.answered("a", ANSWER)
    attempt = recent.claim("a")
    assert attempt is not None and attempt._settled is None


def test_answered_attempts_are_forgotten_after_the_window_but_never_one_in_flight() -> None:
    clock = Clock()
    recent = RecentOrders(300, clock=clock)
    recent.claim("answered")
    recent.answered("answered", ANSWER)
    recent.claim("in-flight")
    clock.now += 301
    recent.claim("new")
    assert recent.claim("answered") is None  # forgotten: a first attempt again
    in_flight = recent.claim("in-flight")
    assert in_flight is not None and in_flight.outcome is Outcome.PENDING


def test_the_oldest_settled_attempts_go_beyond_max_entries() -> None:
    recent = RecentOrders(300, max_entries=3)
    for name in "abcde":
        recent.claim(name)
        recent.answered(name, ANSWER)
    assert len(recent) <= 4  # at most max_entries kept, plus the one just claimed
    assert recent.claim("a") is None
