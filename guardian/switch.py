"""The switch keeper: keeps one account's `cancelallordersafter` armed, and knows how long it has left.

Each refresh is scheduled on the monotonic clock at a random point of the configured window after the
previous *scheduled* one (the work's duration is subtracted, so the beat never drifts). It uses its own
client, so no bot traffic shares its connection pool. The exchange's deadline is computed from the
answer (`triggerTime - currentTime`) counted from when the request was sent, never from comparing
clocks. A failed refresh is retried with a short backoff while the exchange timer still has time.

States (contract): `starting` (no refresh has succeeded yet), `armed`, `degraded` (the last refresh
failed but the exchange timer still runs), `expired` (the timer has presumably run out: assume the
exchange cancelled every order), `disarmed` (on purpose). The state is derived from the deadline at
the moment it is read, so `expired` is reported the instant the deadline passes.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from guardian.errors import AuthenticationFailed, ExchangeError, ExchangeUnavailable, RateLimited
from guardian.kraken.client import KrakenClient, SwitchStatus
from guardian.kraken.times import to_iso

log = structlog.get_logger("guardian.switch")

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
# After `apiLimitExceeded` the exchange is up and counting: quick retries would only spend more of the
# budget it says is gone (and may count refused calls too). Wait at least this long, or for the next beat.
RATE_LIMITED_BACKOFF_S = 5.0


class SwitchSettings(Protocol):
    """What the keeper reads from `[accounts.switch]`."""

    @property
    def refresh_min_s(self) -> float: ...
    @property
    def refresh_max_s(self) -> float: ...
    @property
    def timeout_s(self) -> int: ...
    @property
    def min_remaining_s(self) -> float: ...


class SwitchState(enum.Enum):
    STARTING = "starting"
    ARMED = "armed"
    DEGRADED = "degraded"
    EXPIRED = "expired"
    DISARMED = "disarmed"


def failure_kind(exc: BaseException) -> str:
    """A small fixed vocabulary for metrics and logs."""
    if isinstance(exc, AuthenticationFailed):
        return "authentication"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ExchangeUnavailable):
        return "unavailable"
    return "error"


@dataclass(frozen=True, slots=True)
class SwitchSnapshot:
    """The keeper's state at one moment, in the shape `/guardian/state` reports."""

    state: SwitchState
    timeout_s: int
    remaining_s: float | None
    trigger_time: str | None
    last_success: str | None
    consecutive_failures: int
    last_error: str | None
    refreshes: int
    clock_skew_s: float | None
    rearms_after_expiry: int

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "timeout_s": self.timeout_s,
            "remaining_s": None if self.remaining_s is None else round(self.remaining_s, 3),
            "trigger_time": self.trigger_time,
            "last_success": self.last_success,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "refreshes": self.refreshes,
            "clock_skew_s": self.clock_skew_s,
            "rearms_after_expiry": self.rearms_after_expiry,
        }


class Switch:
    """Keeps one account's dead man's switch armed. `run()` until cancelled; `disarm()` on purpose."""

    def __init__(
        self,
        account: str,
        client: KrakenClient,
        settings: SwitchSettings,
        *,
        rng: random.Random | None = None,
        on_refresh: Callable[[Switch, str, float], None] | None = None,
        on_beat: Callable[[Switch, float], None] | None = None,
        held_back: Callable[[], str | None] | None = None,
    ) -> None:
        self.account = account
        # Why a refresh must not go out now (the daemon around it has stopped working), or None.
        self._held_back = held_back
        self._holding_back = False
        self._client = client
        self.settings = settings
        self._rng = rng or random.Random()
        self._on_refresh = on_refresh
        self._on_beat = on_beat
        self._deadline: float | None = None  # monotonic moment the exchange timer runs out
        self._ever_armed = False
        self._disarmed = False
        self._last_attempt_failed = False
        self.last_status: SwitchStatus | None = None
        self.last_success_wall: float | None = None
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_failure_kind: str | None = None  # failure_kind() of the last attempt, if it failed
        self.refreshes = 0
        self.rearms_after_expiry = 0
        self._expired_logged = False

    # ---- what everyone else reads -------------------------------------------------------------------
    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left on the exchange timer by our conservative count; None if it is not running."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - (time.monotonic() if now is None else now))

    @property
    def state(self) -> SwitchState:
        if self._disarmed:
            return SwitchState.DISARMED
        remaining = self.remaining()
        if remaining is None:
            return SwitchState.EXPIRED if self._ever_armed else SwitchState.STARTING
        if remaining <= 0:
            return SwitchState.EXPIRED
        return SwitchState.DEGRADED if self._last_attempt_failed else SwitchState.ARMED

    def allows_new_risk(self) -> bool:
        """The gate: armed, with at least `min_remaining_s` left on the exchange timer."""
        remaining = self.remaining()
        return (
            self.state is SwitchState.ARMED
            and remaining is not None
            and remaining >= self.settings.min_remaining_s
        )

    def snapshot(self) -> SwitchSnapshot:
        status = self.last_status
        trigger = None
        if status is not None and status.trigger_time is not None and self._deadline is not None:
            trigger = to_iso(status.trigger_time)
        return SwitchSnapshot(
            state=self.state,
            timeout_s=self.settings.timeout_s,
            remaining_s=self.remaining(),
            trigger_time=trigger,
            last_success=None if self.last_success_wall is None else to_iso(self.last_success_wall),
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
            refreshes=self.refreshes,
            clock_skew_s=None if status is None else status.clock_skew_s,
            rearms_after_expiry=self.rearms_after_expiry,
        )

    # ---- the beat -----------------------------------------------------------------------------------
    def _next_interval(self) -> float:
        return self._rng.uniform(self.settings.refresh_min_s, self.settings.refresh_max_s)

    def _call_deadline(self) -> float:
        """How long one refresh may take: well inside the time left, and never more than a beat."""
        remaining = self.remaining()
        cap = self.settings.refresh_min_s
        if remaining is None or remaining <= 0:
            return max(1.0, cap)
        return max(0.5, min(cap, remaining / 2))

    async def refresh_once(self) -> bool:
        """One `cancelallordersafter(timeout_s)`; updates the state; True on success."""
        reason = self._held_back() if self._held_back is not None else None
        if reason is not None:  # fail closed: the exchange's timer runs out, and cancels every order
            if not self._holding_back:
                self._holding_back = True
                log.error("switch_refresh_held_back", account=self.account, reason=reason)
            return self._failed(ExchangeError(f"held back: {reason}", endpoint="cancelallordersafter"), 0.0)
        if self._holding_back:
            self._holding_back = False
            log.warning("switch_refresh_resumed", account=self.account)
        was_expired = self.state is SwitchState.EXPIRED
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            status = await self._client.cancelallordersafter(
                self.settings.timeout_s, deadline_s=self._call_deadline()
            )
        except ExchangeError as exc:
            return self._failed(exc, loop.time() - started)
        except Exception as exc:  # a bug must not end the beat: count it as a failure and go on
            log.exception("switch_refresh_crashed", account=self.account, error=type(exc).__name__)
            crashed = ExchangeError(
                f"cancelallordersafter: {type(exc).__name__}", endpoint="cancelallordersafter"
            )
            return self._failed(crashed, loop.time() - started)
        if status.deadline is None:
            off = ExchangeError(
                "cancelallordersafter: the exchange reports the switch off", endpoint="cancelallordersafter"
            )
            return self._failed(off, loop.time() - started)
        duration = loop.time() - started
        # Run out while the refresh was on its way (our count said expired, and said so in the log): the
        # exchange may have cancelled everything before it took the refresh, so this is a re-arm too.
        was_expired = was_expired or self.state is SwitchState.EXPIRED
        self.last_status = status
        self._deadline = status.deadline
        self._ever_armed = True
        self._disarmed = False
        self._last_attempt_failed = False
        self._expired_logged = False
        self.consecutive_failures = 0
        self.last_error = None
        self.last_failure_kind = None
        self.refreshes += 1
        self.last_success_wall = time.time()
        if was_expired:
            self.rearms_after_expiry += 1
            log.warning(
                "switch_rearmed_after_expiry",
                account=self.account,
                state=self.state.value,
                count=self.rearms_after_expiry,
                note="guardian had counted the timer expired: assume the exchange cancelled every order",
            )
        if status.timeout_granted_s + 1 < self.settings.timeout_s:
            log.warning(
                "switch_timeout_shortened",
                account=self.account,
                asked_s=self.settings.timeout_s,
                granted_s=round(status.timeout_granted_s, 3),
            )
        log.debug(
            "switch_refreshed",
            account=self.account,
            state=self.state.value,
            remaining_s=round(self.remaining() or 0.0, 3),
            duration_s=round(duration, 4),
        )
        if self._on_refresh is not None:
            self._on_refresh(self, "success", duration)
        return True

    def _failed(self, exc: ExchangeError, duration: float) -> bool:
        self._last_attempt_failed = True
        self.consecutive_failures += 1
        kind = self.last_failure_kind = failure_kind(exc)
        self.last_error = f"{kind}: {exc}"
        level = log.error if isinstance(exc, AuthenticationFailed) else log.warning
        level(
            "switch_refresh_failed",
            account=self.account,
            kind=kind,
            code=exc.code,
            consecutive=self.consecutive_failures,
            remaining_s=self.remaining(),
            state=self.state.value,
        )
        if self._on_refresh is not None:
            self._on_refresh(self, kind, duration)
        return False

    async def run(self) -> None:
        """Refresh until cancelled. The next beat is fixed before the work starts, so slow answers and
        retries never push the schedule back; failures retry quickly while the timer still runs."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        expiry_watch: asyncio.TimerHandle | None = None
        try:
            while True:
                now = loop.time()
                if next_beat > now:
                    await asyncio.sleep(next_beat - now)
                self._beat_started(loop.time() - next_beat)
                next_beat += self._next_interval()
                ok = await self.refresh_once()
                attempt = 0
                while not ok and loop.time() < next_beat:
                    backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                    if self.last_failure_kind == "rate_limited":
                        backoff = max(backoff, RATE_LIMITED_BACKOFF_S)
                    attempt += 1
                    await asyncio.sleep(min(backoff, max(0.0, next_beat - loop.time())))
                    if loop.time() >= next_beat:
                        break
                    ok = await self.refresh_once()
                if expiry_watch is not None:
                    expiry_watch.cancel()
                if self._deadline is not None:  # the loop's clock is time.monotonic, like the deadline
                    expiry_watch = loop.call_at(self._deadline, self._note_expiry)
                if loop.time() > next_beat:  # the work overran a whole beat: start the next one now
                    next_beat = loop.time()
        finally:
            if expiry_watch is not None:
                expiry_watch.cancel()

    def _beat_started(self, late_s: float) -> None:
        """How late this beat started against its schedule: a starved event loop shows here first."""
        log.debug("switch_beat", account=self.account, state=self.state.value, late_s=round(late_s, 6))
        if self._on_beat is not None:
            self._on_beat(self, late_s)

    def _note_expiry(self) -> None:
        if self.state is SwitchState.EXPIRED and not self._expired_logged:
            self._expired_logged = True
            log.error(
                "switch_expired",
                account=self.account,
                state=self.state.value,
                consecutive_failures=self.consecutive_failures,
                last_error=self.last_error,
                note="assume the exchange cancelled every open order; no new risk goes out until re-armed",
            )

    async def disarm(self, deadline_s: float = 5.0) -> SwitchStatus:
        """Switch the exchange timer off (`timeout=0`). Raises on failure: the caller decides."""
        status = await self._client.cancelallordersafter(0, deadline_s=deadline_s)
        self._disarmed = True
        self._deadline = None
        self.last_status = status
        log.info("switch_disarmed", account=self.account, state=self.state.value)
        return status
