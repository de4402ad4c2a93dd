"""The maintenance policy (`[accounts.guard] maintenance_reduce_only_s`, 0 = off): that many seconds before
an announced high-priority maintenance the account moves to `reduce_only`, and back to the mode it had
once the announced window is over, unless an operator changed the mode meanwhile (an operator's choice
is never overridden). Journaled (`mode_changed`, by "maintenance") and logged both ways.

Only an `active` account is moved: a halted or already reduce-only account has a person's choice on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from guardian.account import Account, Mode
from guardian.journal import Journal, JournalError

log = structlog.get_logger("guardian.maintenance")

BY = "maintenance"


@dataclass(slots=True)
class _Moved:
    previous: Mode
    until: float  # wall clock: the end of the announced window
    note: str


class MaintenancePolicy:
    """One account's policy; `check()` is called on the service's reporting beat."""

    def __init__(self, account: Account, journal: Journal) -> None:
        self.account = account
        self.journal = journal
        self.lead_s = account.config.guard.maintenance_reduce_only_s
        self._moved: _Moved | None = None

    @property
    def active(self) -> bool:
        return self._moved is not None

    async def check(self, now: float | None = None) -> None:
        stream = self.account.stream
        if self.lead_s <= 0 or stream is None:
            return
        now = time.time() if now is None else now
        if self._moved is not None:
            await self._maybe_restore(now)
            return
        notice = stream.state.next_maintenance(now)
        if notice is None or notice.effective_time is None:
            return
        ends = notice.ends_at() or notice.effective_time
        if notice.effective_time - self.lead_s <= now < ends and self.account.mode is Mode.ACTIVE:
            self._moved = _Moved(Mode.ACTIVE, ends, notice.note[:120])
            await self._set(
                Mode.REDUCE_ONLY,
                f"maintenance announced for {notice.effective_time:.0f} (in {notice.effective_time - now:.0f} s): "
                f"{notice.note[:120]}",
            )

    async def _maybe_restore(self, now: float) -> None:
        moved = self._moved
        assert moved is not None
        if self.account.mode_by != BY:
            log.info(
                "maintenance_mode_left_alone",
                account=self.account.name,
                mode=self.account.mode.value,
                note="an operator changed the mode during the maintenance window: it is theirs",
            )
            self._moved = None
            return
        if now < moved.until:
            return
        self._moved = None
        await self._set(moved.previous, f"the announced maintenance window is over: {moved.note}")

    async def _set(self, mode: Mode, reason: str) -> None:
        account = self.account
        previous = account.mode
        account.mode = mode
        account.mode_by = BY
        log.warning(
            "mode_changed",
            account=account.name,
            mode=mode.value,
            previous=previous.value,
            reason=reason,
            by=BY,
        )
        try:
            await self.journal.set_mode(account.name, mode.value, by=BY, reason=reason)
        except JournalError as exc:
            log.error("mode_not_persisted", account=account.name, mode=mode.value, error=str(exc))
