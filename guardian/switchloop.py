"""The switches' own event loop, on a thread of its own: every account's beat and its refreshes run there,
so that no amount of work on the daemon's main loop (bots' orders, their streams, a garbage collection's
aftermath) can delay or starve a refresh. With one loop for everything, 50 accounts' bots at 500 requests a
second left beats 50-100 ms late at p99 on two cores (bench/many_accounts.py).

What crosses between the two loops is small, and each side only ever asks the other:
- the main loop starts the beats, stops them and has the shutdown's calls made through `submit()` and
  `run()` (`asyncio.run_coroutine_threadsafe`);
- the switches hand each refresh's and beat's news to the main loop through `to_main()`
  (`call_soon_threadsafe`): the rate budget, the metrics and the reporter are the main loop's alone;
- the main loop reads a switch's state: plain attributes, each read whole.

Failing closed: a switch refreshes only while the main loop still turns (`main_stalled()`: it has not woken
for `main_silent_s`). A daemon whose main loop is wedged cannot guard orders, so its switch lets the
exchange's timer run out, as it would if the whole process were stuck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import structlog

log = structlog.get_logger("guardian.switch")

T = TypeVar("T")

MAIN_SILENT_S: Final = 5.0  # the main loop not woken this long: it is wedged, and refreshes stop
STOP_WAIT_S: Final = 5.0


class SwitchLoop:
    """A thread running the switches' event loop. `start()` from the main loop; `stop()` at the end."""

    def __init__(self, *, main_silent_s: float = MAIN_SILENT_S) -> None:
        self.main_silent_s = main_silent_s
        # When the main loop last turned (monotonic): its loop watch says so every few milliseconds.
        self.main_turned: Callable[[], float] = time.monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and its loop (called in the main loop, which it remembers)."""
        if self.running:
            return
        self._main = asyncio.get_running_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="guardian-switch", daemon=True
        )
        self._thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the switches' loop; its future (cancelling it cancels the task)."""
        assert self._loop is not None, "the switch loop is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the switches' loop and wait for it from the main loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def to_main(self, callback: Callable[..., None], *args: Any) -> None:
        """Have the main loop call `callback(*args)` (from the switches' thread)."""
        main = self._main
        if main is None:  # never started: there is one loop, and this is it
            callback(*args)
        elif not main.is_closed():
            main.call_soon_threadsafe(callback, *args)

    def main_stalled(self) -> str | None:
        """Why refreshes must not go out (the main loop has stopped turning), or None."""
        silent = time.monotonic() - self.main_turned()
        if silent < self.main_silent_s:
            return None
        return f"the daemon's main loop has not turned in {silent:.1f} s: it cannot guard orders"

    async def stop(self) -> None:
        """Stop the loop (its tasks cancelled) and wait for the thread, from the main loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, STOP_WAIT_S)
        if thread.is_alive():
            log.error("switch_loop_stop_overran", waited_s=STOP_WAIT_S)
        self._loop = self._thread = None
