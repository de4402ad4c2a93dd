"""Retried orders: a `sendorder` whose `cliOrdId` was already forwarded gets the first answer again
instead of becoming a second order.

Bots retry on timeouts. The exchange refuses a `cliOrdId` only while an order with it is still open
(`clientOrderIdAlreadyExist`); once the first order filled, a retry would fill again. So guardian
remembers, per account, every `cliOrdId` it forwarded within a window:
- while the first attempt is in flight, a retry waits for it and gets the same answer;
- once answered, a retry gets that answer (marked with the `X-Guardian-Replayed` header);
- if the first attempt's outcome is unknown (no answer in time), the caller must ask the exchange
  (`orders/status`) before deciding; `Outcome.UNKNOWN` says so.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from guardian.kraken.client import RawAnswer


class Outcome(enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Attempt:
    at: float
    outcome: Outcome = Outcome.PENDING
    answer: RawAnswer | None = None
    # Made only when a retry has to wait for the attempt in flight, and dropped once it is settled: most
    # attempts are never waited on, and an Event is half of what each remembered order would cost.
    _settled: asyncio.Event | None = None

    async def wait(self) -> None:
        """Until the attempt is answered, found unknown or forgotten (at once if it already is)."""
        if self.outcome is Outcome.PENDING:
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()

    def settle(self, outcome: Outcome, answer: RawAnswer | None = None) -> None:
        self.outcome = outcome
        self.answer = answer
        if self._settled is not None:
            self._settled.set()
            self._settled = None


class RecentOrders:
    """One account's forwarded `cliOrdId`s within `window_s` (bounded to `max_entries`)."""

    def __init__(
        self, window_s: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._attempts: OrderedDict[str, Attempt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def _expire(self) -> None:
        """Forget answered attempts older than the window (and the oldest beyond `max_entries`); an
        attempt still in flight is never forgotten, because its retries wait on it."""
        horizon = self._clock() - self.window_s
        stale: list[str] = []
        for cli_ord_id, attempt in self._attempts.items():  # oldest first
            if attempt.at > horizon and len(self._attempts) - len(stale) <= self.max_entries:
                break
            if attempt.outcome is not Outcome.PENDING:
                stale.append(cli_ord_id)
        for cli_ord_id in stale:
            del self._attempts[cli_ord_id]

    def claim(self, cli_ord_id: str) -> Attempt | None:
        """None: this is the first attempt, now registered as in flight; the caller must `answered()` or
        `unknown()` it. Otherwise: the earlier attempt (possibly still in flight)."""
        self._expire()
        earlier = self._attempts.get(cli_ord_id)
        if earlier is not None:
            return earlier
        self._attempts[cli_ord_id] = Attempt(self._clock())
        return None

    def answered(self, cli_ord_id: str, answer: RawAnswer) -> None:
        attempt = self._attempts.get(cli_ord_id)
        if attempt is not None:
            attempt.settle(Outcome.ANSWERED, answer)

    def unknown(self, cli_ord_id: str) -> None:
        attempt = self._attempts.get(cli_ord_id)
        if attempt is not None:
            attempt.settle(Outcome.UNKNOWN)

    def forget(self, cli_ord_id: str) -> None:
        """The attempt never reached the exchange (refused locally, or the exchange says it has no such
        order): a retry is a first attempt again."""
        attempt = self._attempts.pop(cli_ord_id, None)
        if attempt is not None:
            attempt.settle(Outcome.UNKNOWN)
