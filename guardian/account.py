"""One configured account at run time: its switch keeper, the keeper's own exchange client, its trading
mode, and what a deliberate stop does to the exchange's timer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from guardian.config import AccountConfig, OnShutdown
from guardian.contracts import Kind
from guardian.errors import ExchangeError
from guardian.gateway.dedupe import RecentOrders
from guardian.gateway.exposure import Book
from guardian.gateway.inflight import InFlight
from guardian.gateway.instruments import Instruments
from guardian.gateway.marks import Marks
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import endpoint
from guardian.kraken.times import to_iso
from guardian.ratelimit import CostBudget
from guardian.switch import Switch
from guardian.switchloop import SwitchLoop

if TYPE_CHECKING:
    from guardian.stream.account import AccountStream

log = structlog.get_logger("guardian.account")

T = TypeVar("T")

# The switch's client has a small pool of its own: no bot traffic ever waits in front of a refresh.
SWITCH_POOL_SIZE = 2
SWITCH_CLIENT_TIMEOUT_S = 10.0
GATEWAY_POOL_SIZE = 32
RATE_WINDOW_MARGIN_S = 1.0


class Mode(enum.StrEnum):
    """What the account lets through (contract values). The gateway enforces them."""

    ACTIVE = "active"
    REDUCE_ONLY = "reduce_only"
    HALTED = "halted"


def exchange_client(
    config: AccountConfig, purpose: str, *, pool_size: int = 16, timeout_s: float = SWITCH_CLIENT_TIMEOUT_S
) -> KrakenClient:
    """A client signing with the account's exchange key and its nonce setting (`check-config --online`
    makes one before any Account exists)."""
    nonce = config.nonce
    return KrakenClient(
        config.base_url,
        Credentials(config.api_key, config.api_secret),
        timeout_s=timeout_s,
        use_nonce=nonce != "off",
        nonce_unit="milliseconds" if nonce == "off" else nonce,
        pool_size=pool_size,
        name=f"{config.name}-{purpose}",
    )


def bot_mode_key(account: str, bot: str) -> str:
    """Where a bot's own mode is persisted in the journal's modes (account names never hold a '/')."""
    return f"{account}/{bot}"


_STRICTNESS = {Mode.ACTIVE: 0, Mode.REDUCE_ONLY: 1, Mode.HALTED: 2}


def stricter(a: Mode, b: Mode) -> Mode:
    """The stricter of two modes."""
    return a if _STRICTNESS[a] >= _STRICTNESS[b] else b


@dataclass(frozen=True, slots=True)
class Trip:
    """A latched limit trip: which limit (`max_fills_per_minute`, `max_daily_loss`), why, when (epoch s),
    and the mode it moved the account to. Only POST /guardian/mode lifts it."""

    limit: str
    reason: str
    at: float
    mode: Mode

    def as_json(self) -> dict[str, object]:
        return {"limit": self.limit, "reason": self.reason, "at": to_iso(self.at), "mode": self.mode.value}


class Account:
    """An account's moving parts. `start()` begins the switch's beat; `stop_switch()` ends it."""

    def __init__(
        self,
        config: AccountConfig,
        *,
        on_refresh: Callable[[Switch, str, float], None] | None = None,
        on_beat: Callable[[Switch, float], None] | None = None,
        switch_loop: SwitchLoop | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.mode = Mode.ACTIVE
        self.mode_by = "start"  # who set the mode last: admin, kill, maintenance (whose choice it is)
        self.trip: Trip | None = None  # a latched limit trip (fill burst, daily loss), until lifted
        self.bot_modes: dict[str, Mode] = {}  # each bot's own mode (POST /guardian/mode with "bot")
        self._on_refresh = on_refresh
        self._on_beat = on_beat
        # The switch runs on the switches' own loop and thread when there is one (the daemon's): its news
        # comes back to this loop, which alone keeps the budget and the metrics.
        self.switch_loop = switch_loop
        self.switch_client = self.client("switch", pool_size=SWITCH_POOL_SIZE)
        self.switch = Switch(
            self.name,
            self.switch_client,
            config.switch,
            on_refresh=self._refreshed if switch_loop is None else self._refreshed_elsewhere,
            on_beat=on_beat if switch_loop is None else self._beat_elsewhere,
            held_back=None if switch_loop is None else switch_loop.main_stalled,
        )
        self.task: asyncio.Task[None] | concurrent.futures.Future[None] | None = None
        # The gateway's side: its own client, the marks, the local model of the exchange's budget, and
        # the cliOrdIds forwarded lately.
        guard = config.guard
        self.gateway_client = self.client(
            "gateway", pool_size=GATEWAY_POOL_SIZE, timeout_s=guard.upstream_timeout_s
        )
        self.marks = Marks(self.gateway_client, interval_s=guard.mark_poll_s, max_age_s=guard.mark_max_age_s)
        self.marks_task: asyncio.Task[None] | None = None
        # A spend counts here from when guardian decides to send; at the exchange, from when the request
        # arrives, which can be later (a queue for a connection, the network). Counting each spend for a
        # little longer than the exchange does keeps the model on the safe side of that difference.
        self.budget = CostBudget(guard.rate_budget, guard.rate_window_s + RATE_WINDOW_MARGIN_S)
        self.recent = RecentOrders(guard.dedupe_window_s)
        self.in_flight = InFlight()  # new-risk requests forwarded and not yet settled, for a halt to watch
        # The exposure guard's running figures, the orders let out that the stream has not shown yet, and
        # the bots' rates. Its figures price notional at these marks, told of each one that moves.
        # The contracts the exchange lists: how each symbol's sizes and prices make USD.
        self.instruments = Instruments(
            self.gateway_client,
            refresh_s=guard.instruments_refresh_s,
            expiry_margin_s=guard.expiry_margin_s,
        )
        self.instruments_task: asyncio.Task[None] | None = None
        self.exposure = Book(marks=self.marks, contracts=self.instruments.contract)
        self.marks.listeners.append(self.exposure.ledger.mark_changed)
        self.instruments.listeners.append(self.exposure.ledger.contract_changed)
        self.stream: AccountStream | None = None  # the account's picture of itself (set by the service)
        refresh = endpoint("cancelallordersafter").cost
        # What the switch may spend in any one window: every refresh that fits, plus one retry. Its spends
        # are counted in `budget` like everyone's, and in `_switch_spent` alone, so the reserve kept from
        # bots is only what it may still need in the current window.
        self._switch_need = refresh * (math.ceil(guard.rate_window_s / config.switch.refresh_min_s) + 1)
        self._switch_spent = CostBudget(self._switch_need, guard.rate_window_s)
        # Kept from everything but cancels: a bot can always cancel everything once more.
        self.bot_reserve = float(endpoint("cancelallorders").cost)

    def __repr__(self) -> str:
        return f"Account({self.name!r}, {self.config.base_url!r})"

    def client(
        self, purpose: str, *, pool_size: int = 16, timeout_s: float = SWITCH_CLIENT_TIMEOUT_S
    ) -> KrakenClient:
        """A client signing with this account's exchange key and its nonce setting."""
        return exchange_client(self.config, purpose, pool_size=pool_size, timeout_s=timeout_s)

    @property
    def switch_reserve(self) -> float:
        """Budget units the switch may still need in the current window: no bot request may use them."""
        return max(0.0, self._switch_spent.available())

    def _refreshed_elsewhere(self, switch: Switch, outcome: str, duration_s: float) -> None:
        assert self.switch_loop is not None
        self.switch_loop.to_main(self._refreshed, switch, outcome, duration_s)

    def _beat_elsewhere(self, switch: Switch, late_s: float) -> None:
        if self.switch_loop is not None and self._on_beat is not None:
            self.switch_loop.to_main(self._on_beat, switch, late_s)

    async def _on_switch_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """`coro` (a call with the switch's client) where the switch runs."""
        if self.switch_loop is None or not self.switch_loop.running:
            return await coro  # (never started there: a start that failed early, a test's account)
        return await self.switch_loop.run(coro)

    def _refreshed(self, switch: Switch, outcome: str, duration_s: float) -> None:
        cost = endpoint("cancelallordersafter").cost
        self.budget.spend(cost)  # the switch goes out regardless
        self._switch_spent.spend(cost)
        if self._on_refresh is not None:
            self._on_refresh(switch, outcome, duration_s)

    async def start(self) -> None:
        await self._on_switch_loop(self.switch_client.start())
        await self.gateway_client.start()
        if self.switch_loop is None or not self.switch_loop.running:
            self.task = asyncio.create_task(self._beat(), name=f"switch-{self.name}")
        else:
            self.task = self.switch_loop.submit(self._beat())
        self.marks_task = asyncio.create_task(self._poll_marks(), name=f"marks-{self.name}")
        self.instruments_task = asyncio.create_task(self._read_instruments(), name=f"instruments-{self.name}")

    async def _poll_marks(self) -> None:
        with structlog.contextvars.bound_contextvars(account=self.name):
            await self.marks.run()

    async def _read_instruments(self) -> None:
        with structlog.contextvars.bound_contextvars(account=self.name):
            await self.instruments.run()

    def rate(self, symbol: str) -> Decimal | None:
        """The USD price of `symbol`'s margin currency: its contract's mark (fresh, else the positions
        feed's), else, for an inverse contract, the mark of another listed on the same base currency (a
        settled fixed maturity has no mark of its own any more)."""
        found = self.exposure.ledger.mark(symbol)
        if found is not None:
            return found
        contract = self.instruments.contract(symbol)
        if contract is None or contract.kind is not Kind.INVERSE:
            return None
        for other in sorted(self.instruments.contracts.values(), key=lambda c: c.last_trading or 0.0):
            if other.kind is Kind.INVERSE and other.base == contract.base and other.symbol != contract.symbol:
                found = self.exposure.ledger.mark(other.symbol)
                if found is not None:
                    return found
        return None

    async def stop_marks(self) -> None:
        for task in (self.marks_task, self.instruments_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close(self) -> None:
        await self.stop_marks()
        await self._on_switch_loop(self.switch_client.close())
        await self.gateway_client.close()

    async def _beat(self) -> None:
        with structlog.contextvars.bound_contextvars(account=self.name):
            await self.switch.run()

    @property
    def alive(self) -> bool:
        """The switch's task is running (it ends only when cancelled, or by a bug)."""
        return self.task is not None and not self.task.done()

    def death(self) -> str | None:
        """Why the switch's task ended, if it did."""
        if self.task is None or not self.task.done():
            return None
        if self.task.cancelled():
            return "cancelled"
        exc = self.task.exception()
        return "returned" if exc is None else type(exc).__name__

    async def stop_switch(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, concurrent.futures.CancelledError, Exception):
                await (asyncio.wrap_future(task) if isinstance(task, concurrent.futures.Future) else task)

    async def apply_shutdown(self, policy: OnShutdown, limit_s: float) -> bool:
        """Do what `on_shutdown` says, within `limit_s`. True if it was done.

        `cancel` cancels every open order and only then disarms: if the cancel fails, the timer is left
        armed, so the exchange still cancels the orders when it runs out (never orders left unprotected).
        """
        remaining = self.switch.remaining()
        if policy is OnShutdown.KEEP:
            log.info(
                "shutdown_switch_kept",
                account=self.name,
                remaining_s=None if remaining is None else round(remaining, 1),
                note="the exchange cancels every open order when this runs out, unless guardian is back",
            )
            return True
        try:
            await self._on_switch_loop(self._shutdown_calls(policy, limit_s))
        except (ExchangeError, TimeoutError) as exc:
            log.error(
                "shutdown_policy_failed",
                account=self.name,
                policy=policy.value,
                error=str(exc) or type(exc).__name__,
                switch=self.switch.state.value,
                remaining_s=None if remaining is None else round(remaining, 1),
                note="the exchange timer is still armed: it cancels every open order when it runs out",
            )
            return False
        return True

    async def _shutdown_calls(self, policy: OnShutdown, limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            if policy is OnShutdown.CANCEL:
                answer = await self.switch_client.request("cancelallorders", timeout_s=limit_s)
                status = answer.get("cancelStatus", {})
                log.info(
                    "shutdown_orders_cancelled",
                    account=self.name,
                    status=status.get("status") if isinstance(status, dict) else None,
                    cancelled=len(status.get("cancelledOrders", [])) if isinstance(status, dict) else None,
                )
            await self.switch.disarm(deadline_s=limit_s)

    def mode_for(self, bot: str | None) -> Mode:
        """The mode a bot's request is judged by: the stricter of the account's and the bot's own."""
        own = self.bot_modes.get(bot) if bot is not None else None
        return self.mode if own is None else stricter(self.mode, own)

    @property
    def mode_value(self) -> str:
        return self.mode.value

    @property
    def budget_capacity(self) -> float:
        return self.budget.capacity

    def budget_available(self) -> float:
        return self.budget.available()

    def instrument_counts(self) -> dict[str, int] | None:
        """For the metrics: the contracts judged, not judged and expired; None until the first read."""
        found = self.instruments
        if found.loaded_at is None:
            return None
        expired = len(found.expired())
        return {"judged": len(found.contracts) - expired, "unjudged": len(found.unjudged), "expired": expired}

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "trip": None if self.trip is None else self.trip.as_json(),
            "bots": [
                {"name": c.name, "mode": self.bot_modes.get(c.name, Mode.ACTIVE).value}
                for c in self.config.clients
            ],
            "switch": self.switch.snapshot().as_json(),
            "rate_budget_available": round(self.budget.available(), 1),
            "rate_budget_kept_for_switch": round(self.switch_reserve, 1),
            "marks": self.marks.snapshot(),
            "marks_last_error": self.marks.last_error,
            "instruments": self.instruments.snapshot(),
        }
