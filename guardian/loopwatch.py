"""How long the event loop goes without giving a task its turn.

One event loop serves every account: its switches, its gateway, its streams. A piece of work that holds
the loop (a large document parsed at once, a copy of every order) delays all of them. `LoopWatch` asks to
be woken every `interval_s` and measures how late it is woken: the lateness is the time the loop was busy
with something else when the timer fell due. Each lateness is reported (`guardian_event_loop_lag_seconds`),
the longest since start is kept (`guardian_event_loop_stall_seconds_max`), and a stall longer than
`warn_s` is logged (`event_loop_stalled`), at most once per `warn_every_s`.

A stall that falls between two wake-ups shows as a lateness of up to its length, depending on where it
falls; with a 10 ms interval the longest lateness is within 10 ms of the longest stall.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger("guardian.loop")

INTERVAL_S: Final = 0.01
WARN_S: Final = 0.1
WARN_EVERY_S: Final = 60.0


class LoopWatch:
    """`run()` until cancelled; `longest_s` is the longest lateness seen."""

    def __init__(
        self,
        *,
        interval_s: float = INTERVAL_S,
        warn_s: float = WARN_S,
        warn_every_s: float = WARN_EVERY_S,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self._on_lag = on_lag
        self.longest_s = 0.0
        self.wakes = 0
        self.last_wake = time.monotonic()  # when the loop last gave this watch its turn
        self._warned_at: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_wake = time.monotonic()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, loop.time() - due))

    def observe(self, late_s: float) -> None:
        self.wakes += 1
        self.last_wake = time.monotonic()
        if late_s > self.longest_s:
            self.longest_s = late_s
        if self._on_lag is not None:
            self._on_lag(late_s)
        if late_s >= self.warn_s:
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= self.warn_every_s:
                self._warned_at = now
                log.warning("event_loop_stalled", late_s=round(late_s, 4), longest_s=round(self.longest_s, 4))
