"""The retried-order memory (guardian.gateway.dedupe), as a unit: claims, retries and reuses, waits, the
window, the bound."""

from __future__ import annotations

import asyncio

import pytest

from guardian.gateway.dedupe import Outcome, RecentOrders
from guardian.gateway.refusal import Refusal
from guardian.kraken.client import RawAnswer

ANSWER = RawAnswer(200, b'{"result":"success"}', "application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def first(recent: RecentOrders, key: str, bot: str = "a", content: object = "x") -> object:
    attempt, is_first = recent.claim(key, bot, content)
    assert is_first
    return attempt


async def test_a_retry_waits_for_the_attempt_in_flight_and_gets_its_answer() -> None:
    recent = RecentOrders(300)
    attempt = first(recent, "a")
    earlier, is_first = recent.claim("a", "a", "x")
    assert not is_first and earlier is attempt and earlier.outcome is Outcome.PENDING
    waiter = asyncio.create_task(earlier.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    recent.answered(earlier, ANSWER)
    await asyncio.wait_for(waiter, 1)
    assert (earlier.outcome, earlier.answer) == (Outcome.ANSWERED, ANSWER)
    await asyncio.wait_for(earlier.wait(), 1)  # settled: no wait at all


async def test_forgetting_wakes_the_waiters_and_the_next_claim_is_a_first_attempt() -> None:
    recent = RecentOrders(300)
    first(recent, "a")
    earlier, _ = recent.claim("a", "a", "x")
    waiter = asyncio.create_task(earlier.wait())
    await asyncio.sleep(0)
    recent.forget(earlier)
    await asyncio.wait_for(waiter, 1)
    assert earlier.outcome is Outcome.UNKNOWN
    assert recent.claim("a", "a", "x")[1] is True


def test_another_bot_or_other_content_under_the_same_id_is_refused_naming_who_and_when_only() -> None:
    recent = RecentOrders(300)
    first(recent, "same-id", "bot-a", ("buy", 1, "PF_XBTUSD"))
    for bot, content in (("bot-b", ("buy", 1, "PF_XBTUSD")), ("bot-a", ("sell", 5, "PF_XBTUSD"))):
        with pytest.raises(Refusal) as caught:
            recent.claim("same-id", bot, content)
        refusal = caught.value
        assert (refusal.code, refusal.http_status) == ("clientOrderIdAlreadyExist", 409)
        assert "bot 'bot-a'" in refusal.message and "same-id" in refusal.message
        assert "buy" not in refusal.message and "PF_XBTUSD" not in refusal.message
    # The refusals did not disturb the first attempt: its own retry is still a retry.
    assert recent.claim("same-id", "bot-a", ("buy", 1, "PF_XBTUSD"))[1] is False


def test_a_batch_claims_every_key_and_only_the_same_batch_is_a_retry() -> None:
    recent = RecentOrders(300)
    batch = recent.claim(("k1", "k2"), "bot", "batch-1", items=(0, 2))[0]
    assert recent.claim(("k1", "k2"), "bot", "batch-1", items=(0, 2)) == (batch, False)
    with pytest.raises(Refusal) as caught:  # a single order reusing one of the batch's ids
        recent.claim("k2", "bot", "single")
    assert caught.value.item is None
    with pytest.raises(Refusal) as caught:  # another batch reusing k2, at its item 3
        recent.claim(("k9", "k2"), "bot", "batch-2", items=(1, 3))
    assert caught.value.item == 3 and "batchOrder[3]" in caught.value.message
    assert recent.get("k9") is None  # a refused claim registers nothing
    recent.forget(batch)
    assert recent.get("k1") is None and recent.get("k2") is None


def test_a_settled_attempt_keeps_no_event() -> None:
    # Thousands of orders are remembered for the window; only one a retry waited on ever had an Event.
    recent = RecentOrders(300)
    attempt, _ = recent.claim("a")
    recent.answered(attempt, ANSWER)
    again, is_first = recent.claim("a")
    assert not is_first and again._settled is None


def test_answered_attempts_are_forgotten_after_the_window_but_never_one_in_flight() -> None:
    clock = Clock()
    recent = RecentOrders(300, clock=clock)
    answered, _ = recent.claim("answered")
    recent.answered(answered, ANSWER)
    recent.claim("in-flight")
    clock.now += 301
    recent.claim("new")
    assert recent.claim("answered", "another bot", "other content")[1] is True  # forgotten
    in_flight, is_first = recent.claim("in-flight")
    assert not is_first and in_flight.outcome is Outcome.PENDING


def test_the_oldest_settled_attempts_go_beyond_max_entries() -> None:
    recent = RecentOrders(300, max_entries=3)
    for name in "abcde":
        attempt, _ = recent.claim(name)
        recent.answered(attempt, ANSWER)
    assert len(recent) <= 4  # at most max_entries kept, plus the one just claimed
    assert recent.claim("a")[1] is True
