"""New risk in flight: every forwarded request that may open or change an order (a send, an edit, a batch
with either), from the moment it leaves for the exchange until its answer, or the loss of its answer, is
known.

A halt takes effect between two requests: what was already forwarded is beyond its reach at the
exchange. So a halt (`guardian.gateway.halt`) takes a snapshot of what is in flight at the instant it
takes effect and watches each of those to its end. The gateway registers a request here in the same
step in which it checks the mode one last time, with no wait between the two, so every new-risk request
is either refused by the halt or seen by it, never neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from guardian.kraken.client import RawAnswer


@dataclass(slots=True, eq=False)
class Flight:
    """One new-risk request on its way to the exchange."""

    bot: str | None
    endpoint: str
    intents: tuple[Any, ...]  # the guard's intents (OrderIntent, CancelIntent...), as judged
    path: str | None = None  # the real path of a templated endpoint (an RFQ offer's rfqs/<uid>/...)
    started: float = field(default_factory=time.monotonic)
    settled: bool = False
    answer: RawAnswer | None = None  # None once settled: the outcome is unknown (timeout, lost connection)
    # Made only when a halt watches this flight: most requests are never watched.
    _done: asyncio.Event | None = field(default=None, repr=False)

    async def wait(self) -> RawAnswer | None:
        """The exchange's answer, or None when the outcome is unknown (at once if already settled)."""
        if not self.settled:
            if self._done is None:
                self._done = asyncio.Event()
            await self._done.wait()
        return self.answer

    def settle(self, answer: RawAnswer | None) -> None:
        self.settled = True
        self.answer = answer
        if self._done is not None:
            self._done.set()


class InFlight:
    """One account's new-risk requests in flight."""

    def __init__(self) -> None:
        self._flights: set[Flight] = set()

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self._flights))

    def begin(
        self, bot: str | None, endpoint: str, intents: tuple[Any, ...], path: str | None = None
    ) -> Flight:
        flight = Flight(bot, endpoint, intents, path)
        self._flights.add(flight)
        return flight

    def end(self, flight: Flight, answer: RawAnswer | None) -> None:
        """The request is answered (`answer`), or its outcome is unknown (None)."""
        self._flights.discard(flight)
        flight.settle(answer)

    def snapshot(self, bot: str | None = None) -> list[Flight]:
        """What is in flight now (only `bot`'s, if given), oldest first."""
        flights = [f for f in self._flights if bot is None or f.bot == bot]
        return sorted(flights, key=lambda f: f.started)
