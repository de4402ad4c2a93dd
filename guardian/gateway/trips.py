"""Latched trips: the two limits that act on the account rather than refuse one order.

- `max_fills_per_minute`: at that many fills within a minute (by the exchange's fill times, so a snapshot
  of fills made while the link was down counts as it happened), the account halts and its open orders
  are cancelled: the kill's own mechanism (`Halts`: halted first, the requests already in flight watched
  to their end, then `cancelallorders`).
- `max_daily_loss`: when the day's PnL (realised since 00:00 UTC plus unrealised, net of fees) reaches
  -max_daily_loss, the account moves to `on_loss_limit`: `reduce_only`, `halted`, or `halted_and_cancel`
  (as a fill burst does). Judged only from a fresh account state.

A trip takes effect at once (synchronously, before any other request is judged), is persisted with the
mode (the journal's modes table, `by` = the limit), so a restart comes back tripped, and is lifted only by
POST /guardian/mode. A new day does not lift it. After a lift, the fill count starts again from the lift,
and the loss limit trips again only once the PnL has been back above the limit (or a new day began).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import structlog

from guardian.account import Account, Mode, Trip, stricter
from guardian.config import LossAction
from guardian.gateway.halt import Halts
from guardian.journal import Journal, JournalError
from guardian.stream.state import Event, Fill

log = structlog.get_logger("guardian.trips")

FILLS: Final = "max_fills_per_minute"
LOSS: Final = "max_daily_loss"
LIMITS: Final = (FILLS, LOSS)
WINDOW_S: Final = 60.0


def _day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")


class Trips:
    """Watches every account for the two trips and acts; owns the tasks that persist and cancel."""

    def __init__(
        self,
        journal: Journal,
        halts: Halts,
        *,
        on_trip: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._halts = halts
        self._on_trip = on_trip
        self._clock = clock
        self._fills: dict[str, deque[float]] = {}  # account -> fill times (epoch s) in the window
        self._counted_from: dict[str, float] = {}  # account -> fills before this (a lift) do not count
        self._loss_rearm: dict[str, str] = {}  # account -> the day of a lift, while the loss is still past
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- restart ---------------------------------------------------------------------------------------
    def restore(self, account: Account, row: Mapping[str, Any] | None) -> None:
        """The trip a persisted mode says is latched (its `by` is a limit's name)."""
        if row is None or row.get("by") not in LIMITS:
            return
        account.trip = Trip(
            str(row["by"]), str(row.get("reason") or ""), float(row["changed_at"]), account.mode
        )
        account.mode_by = str(row["by"])
        log.warning("limit_trip_restored", account=account.name, limit=row["by"], mode=account.mode.value)

    def restore_lift(self, account: Account, limit: str, at: float) -> None:
        """A lift journaled today (`trip_lifted`): a loss still past the limit does not trip again."""
        if limit == LOSS and _day(at) == _day(self._clock()):
            self._loss_rearm[account.name] = _day(at)

    # ---- the fill burst --------------------------------------------------------------------------------
    def on_events(self, account: Account, events: Iterable[Event]) -> None:
        limit = account.config.guard.max_fills_per_minute
        fills = [e for e in events if isinstance(e, Fill)]
        if limit is None or not fills:
            return
        now = self._clock()
        since = max(now - WINDOW_S, self._counted_from.get(account.name, 0.0))
        window = self._fills.setdefault(account.name, deque())
        window.extend(sorted(f.time for f in fills if f.time >= since))
        while window and window[0] < since:
            window.popleft()
        if len(window) >= limit and account.trip is None:
            reason = f"{len(window)} fills within {WINDOW_S:g} s (max_fills_per_minute {limit})"
            self._trip(account, FILLS, reason, Mode.HALTED, cancel=True)

    def fills_in_window(self, account: Account) -> int:
        now = self._clock()
        since = max(now - WINDOW_S, self._counted_from.get(account.name, 0.0))
        return sum(1 for at in self._fills.get(account.name, ()) if at >= since)

    # ---- the daily loss --------------------------------------------------------------------------------
    def check_loss(self, account: Account) -> None:
        """Trip the loss limit if the day's PnL is at it (from a fresh state only)."""
        guard = account.config.guard
        stream = account.stream
        if guard.max_daily_loss is None or stream is None or not stream.fresh():
            return
        pnl = stream.state.daily_pnl()
        if pnl is None:  # some part cannot be valued now: the guard refuses new risk meanwhile
            return
        at_limit = pnl <= -guard.max_daily_loss
        rearm_day = self._loss_rearm.get(account.name)
        if rearm_day is not None and (not at_limit or rearm_day != _day(self._clock())):
            log.info("loss_limit_rearmed", account=account.name, pnl=str(pnl))
            del self._loss_rearm[account.name]  # back above the limit, or a new day: armed again
            rearm_day = None
        if not at_limit or rearm_day is not None or account.trip is not None:
            return
        action = guard.on_loss_limit
        mode = Mode.REDUCE_ONLY if action is LossAction.REDUCE_ONLY else Mode.HALTED
        reason = f"today's PnL {pnl:f} reached -{guard.max_daily_loss:g} (max_daily_loss); {action.value}"
        self._trip(account, LOSS, reason, mode, cancel=action is LossAction.HALTED_AND_CANCEL)

    # ---- acting ----------------------------------------------------------------------------------------
    def _trip(self, account: Account, limit: str, reason: str, mode: Mode, *, cancel: bool) -> None:
        """At once: the mode (halted with its in-flight snapshot, if it cancels) and the latch; then, in
        the background, the journal and the cancel."""
        flights = self._halts.halt(account) if cancel else []
        account.mode = stricter(account.mode, mode)
        account.mode_by = limit
        account.trip = Trip(limit, reason, self._clock(), account.mode)
        log.error("limit_tripped", account=account.name, limit=limit, reason=reason, mode=account.mode.value)
        if self._on_trip is not None:
            self._on_trip(account.name, limit)
        if cancel:
            self._halts.follow(account, flights, why=limit)
        task = asyncio.create_task(
            self._act(account, limit, reason, cancel, len(flights)), name=f"trip-{limit}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._collect)

    async def _act(self, account: Account, limit: str, reason: str, cancel: bool, in_flight: int) -> None:
        try:
            await self._journal.set_mode(account.name, account.mode.value, by=limit, reason=reason)
        except JournalError as exc:  # the trip holds in memory; a restart would not know of it: loudly
            log.error("trip_not_persisted", account=account.name, limit=limit, error=str(exc))
        detail: dict[str, Any] = {"limit": limit, "reason": reason, "mode": account.mode.value}
        if cancel:
            exchange, error = await self._halts.cancel_everything(account)
            detail.update(cancel="failed" if error else "done", exchange=exchange, in_flight=in_flight)
            if error:
                detail["error"] = error
                log.error("trip_cancel_failed", account=account.name, limit=limit, error=error)
        try:
            await self._journal.event("limit_trip", account.name, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind="limit_trip", error=str(exc))

    def lift(self, account: Account) -> Trip | None:
        """A person set the mode (POST /guardian/mode): the trip is lifted. Returns what was lifted."""
        trip, account.trip = account.trip, None
        if trip is None:
            return None
        now = self._clock()
        self._counted_from[account.name] = now
        self._fills.pop(account.name, None)
        if trip.limit == LOSS:
            self._loss_rearm[account.name] = _day(now)
        return trip

    def _collect(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("trip_action_failed", error=repr(task.exception()))

    async def drain(self, limit_s: float) -> None:
        """Let the trips' journal writes and cancels finish (the ordered shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=limit_s)
