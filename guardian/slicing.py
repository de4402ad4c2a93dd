"""Work that must touch everything (a reconciliation of thousands of orders, a snapshot after a reconnect)
done in slices that hand the event loop back every few milliseconds, so that the switch, the gateway and
every other account keep their turn.

The work is written once, as a generator that yields after each small step (an order parsed, an order
counted); `run_now` does it all at once (tests, small inputs), `sliced` does it with a hand-back whenever
`slice_s` has passed since the last one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Final, TypeVar

SLICE_S: Final = 0.002  # well under the 5 ms the issue allows one hold of the event loop

T = TypeVar("T")


def run_now(steps: Generator[None, None, T]) -> T:
    """Every step at once; the generator's return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def sliced(steps: Generator[None, None, T], slice_s: float = SLICE_S) -> T:
    """Every step, handing the event loop back whenever `slice_s` has passed; the return value."""
    started = time.perf_counter()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if time.perf_counter() - started >= slice_s:
            await asyncio.sleep(0)
            started = time.perf_counter()
