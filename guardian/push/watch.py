"""What the daemon sees, turned into notes for the notifiers. The service calls in from where each thing is
noticed: the reporter's pass (switch states, the accounts' pictures, maintenance), a trip as it takes
effect, a person's admin request once it is answered. Nothing here waits, and nothing reaches into the
parts: it reads what they show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from guardian.account import Account, Mode
from guardian.config import LossAction
from guardian.gateway.trips import FILLS
from guardian.push import messages as notes
from guardian.push.hub import Pushes
from guardian.switch import SwitchState

# After these the switch is armed again: worth telling whoever heard the alarm.
_TROUBLE = (SwitchState.EXPIRED, SwitchState.DEGRADED, SwitchState.STARTING)


class Watch:
    """One daemon's watch. `url()` is where its local API answers (for the command a message points at)."""

    def __init__(self, pushes: Pushes, accounts: Sequence[Account], url: Callable[[], str]) -> None:
        self.pushes = pushes
        self.accounts = accounts
        self._url = url
        self._degraded_since: dict[str, float] = {}  # account -> monotonic start of its degraded episode
        self._fresh: dict[str, bool] = {}  # account -> its picture's freshness at the last pass
        self._notices_told: dict[str, set[str]] = {}  # account -> the maintenance notices told

    @property
    def look(self) -> str:
        """The one command a message points at: this daemon's state, from a shell on its host."""
        return f"guardian status --url {self._url()}"

    # ---- the daemon ------------------------------------------------------------------------------------
    def started(self, version: str) -> None:
        modes = [(account.name, account.mode.value) for account in self.accounts]
        self.pushes.push(notes.daemon_started(version, modes, look=self.look))

    def stopping(self, policies: str) -> None:
        self.pushes.push(notes.daemon_stopping(policies, look=notes.STOPPED_LOOK))

    # ---- the reporter's pass ---------------------------------------------------------------------------
    def switch_changed(self, account: Account, previous: SwitchState | None, state: SwitchState) -> None:
        switch = account.switch
        if state is SwitchState.EXPIRED:
            self.pushes.push(notes.switch_expired(account.name, last_error=switch.last_error, look=self.look))
        elif state is SwitchState.ARMED and previous in _TROUBLE:
            # After a degraded episode (or a start that kept failing) only whoever heard of it is told.
            after = "expired" if previous is SwitchState.EXPIRED else "degraded"
            remaining = switch.remaining()
            self.pushes.push(
                notes.switch_rearmed(account.name, after=after, remaining_s=remaining, look=self.look)
            )

    def each_pass(self, observed: Mapping[str, SwitchState]) -> None:
        """On every pass of the reporter, with the switch states it saw."""
        if not self.pushes.channels:
            return
        self._degraded(observed)
        self._pictures()

    def _degraded(self, observed: Mapping[str, SwitchState]) -> None:
        """A switch failing to refresh (or to arm at all since the start): each notifier is told once the
        episode has lasted its `degraded_for_s`, which it judges from the episode's `since`."""
        now = time.monotonic()
        for account in self.accounts:
            switch, state = account.switch, observed[account.name]
            starting = state is SwitchState.STARTING and switch.consecutive_failures > 0
            if state is not SwitchState.DEGRADED and not starting:
                self._degraded_since.pop(account.name, None)
                continue
            since = self._degraded_since.setdefault(account.name, now)
            self.pushes.push(
                notes.switch_degraded(
                    account.name,
                    for_s=now - since,
                    remaining_s=switch.remaining(),
                    last_error=switch.last_error,
                    since=since,
                    never_armed=starting,
                    look=self.look,
                )
            )

    def _pictures(self) -> None:
        """An account's picture going stale, and maintenance newly announced (each notice once)."""
        now = time.time()
        for account in self.accounts:
            stream = account.stream
            if stream is None or not stream.enabled:
                continue
            fresh = stream.fresh()
            if self._fresh.get(account.name) and not fresh:
                link, max_age = stream.link.status.state.value, stream.settings.state_max_age_s
                self.pushes.push(
                    notes.account_state_stale(account.name, link=link, max_age_s=max_age, look=self.look)
                )
            self._fresh[account.name] = fresh
            notice = stream.state.next_maintenance(now)
            told = self._notices_told.setdefault(account.name, set())
            if notice is not None and notice.key not in told:
                told.add(notice.key)
                self.pushes.push(
                    notes.maintenance_notice(
                        account.name,
                        starts=notice.effective_time,
                        downtime_min=notice.expected_downtime_minutes,
                        text=notice.note,
                        lead_s=account.config.guard.maintenance_reduce_only_s,
                        look=self.look,
                    )
                )

    def maintenance_moved(self, account: Account, before: Mode) -> None:
        """The maintenance policy changed the account's mode (ahead of a window, or after it)."""
        reason = (
            "the exchange's announced maintenance is near"
            if account.mode is Mode.REDUCE_ONLY
            else "the announced maintenance window is over"
        )
        mode, previous = account.mode.value, before.value
        self.pushes.push(
            notes.mode_changed(
                account.name,
                None,
                mode=mode,
                previous=previous,
                by="maintenance",
                reason=reason,
                look=self.look,
            )
        )

    # ---- the ws/v1 relay ---------------------------------------------------------------------------------
    def relay_dropped(self, account: str | None, bot: str | None, reason: str, detail: str) -> None:
        """The relay closed a bot's connection (a slow consumer, one over its connection limit)."""
        if reason in notes.RELAY_DROPS:
            look = f"curl -s {self._url()}/guardian/state (its relay part), then docs/relay.md#robustness"
            self.pushes.push(notes.relay_dropped(account, bot, reason=reason, detail=detail, look=look))

    # ---- the guard and the people ----------------------------------------------------------------------
    def tripped(self, account: Account) -> None:
        """A trip took effect (its mode and latch are set)."""
        trip = account.trip
        if trip is None:
            return
        cancels = trip.limit == FILLS or account.config.guard.on_loss_limit is LossAction.HALTED_AND_CANCEL
        self.pushes.push(
            notes.trip(
                account.name,
                limit=trip.limit,
                reason=trip.reason,
                mode=trip.mode.value,
                cancels=cancels,
                look=self.look,
            )
        )

    def admin_acted(
        self, action: str, status: int, doc: Mapping[str, Any], answer: Mapping[str, Any]
    ) -> None:
        """A person's admin request was answered: a kill (`action` "kill"), or a mode set, which may lift a
        trip. `doc` is the request, `answer` the admin API's answer (contract fields)."""
        name, bot = str(answer.get("account")), answer.get("bot")
        if action == "kill":
            self.pushes.push(notes.kill(name, bot, answer, ok=status < 300, look=self.look))
            return
        reason = str(doc.get("reason") or "admin request")[:200]
        lifted = answer.get("lifted")
        if isinstance(lifted, Mapping):
            reason += f"; lifts the {lifted.get('limit')} trip"
        mode, previous = str(answer.get("mode")), str(answer.get("previous"))
        self.pushes.push(
            notes.mode_changed(
                name, bot, mode=mode, previous=previous, by="admin", reason=reason, look=self.look
            )
        )
