"""One account's stream: the owner of its `AccountState`. It runs the private link, applies its messages in
order, reconciles with REST (at start, after every reconnect, every `reconcile_s`, and more often while
the link is down, so that the state stays fresh from REST alone), journals what happened after an order
left (fills, closed orders, drift), and says whether the state is fresh.

Reconciliation is the same owner applying REST truth. REST's three answers take a moment to arrive; a
stream message applied meanwhile would make the older REST picture look like drift. So a reconciliation
whose reads overlapped a stream change is read again (up to `RECONCILE_TRIES` times) and, if the account
is that busy, deferred: while the link is up and busy, the stream is the newer truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final, Protocol

import aiohttp
import structlog

from guardian.config import AccountConfig
from guardian.contracts import Contract
from guardian.errors import ExchangeError
from guardian.journal import Journal, JournalError
from guardian.kraken.client import KrakenClient
from guardian.kraken.endpoints import endpoint
from guardian.kraken.times import to_iso
from guardian.ratelimit import CostBudget
from guardian.stream.link import LinkState, PrivateLink
from guardian.stream.state import (
    AccountState,
    Drift,
    Event,
    Fill,
    OpenOrder,
    Settlement,
    StateObserver,
    StateView,
)

log = structlog.get_logger("guardian.stream")

RECONCILE_TRIES: Final = 3
RECONCILE_RETRY_S: Final = 0.2
MAX_OWNERS: Final = 50_000  # order ids whose bot is remembered (the journal keeps every one)
RECONCILE_READS: Final = ("openorders", "openpositions", "accounts", "notifications")
PLACING: Final = ("sendorder", "editorder", "batchorder")
OWNERS_LOOKBACK_S: Final = 7 * 86_400.0  # a restart remembers who placed the orders of the last week


def placed_ids(answer: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """The order ids (and cliOrdIds) a forwarded order request's answer names: the orders that request's
    bot placed, for the account state to attribute fills and closes to."""
    statuses: list[Any] = [answer.get("sendStatus"), answer.get("editStatus")]
    batch = answer.get("batchStatus")
    if isinstance(batch, list):
        statuses.extend(batch)
    ids = [
        str(s.get(key))
        for s in statuses
        if isinstance(s, Mapping)
        for key in ("order_id", "orderId", "cliOrdId")
        if isinstance(s.get(key), str) and s.get(key)
    ]
    if isinstance(params.get("cliOrdId"), str):
        ids.append(params["cliOrdId"])
    return ids


class StreamListener(Protocol):
    """A reader of the stream as it happens (the ws/v1 relay): called in the owner's loop, in order, after
    the state has applied the message; it must not block or raise."""

    def on_stream_message(self, message: Mapping[str, Any]) -> None: ...
    def on_link_changed(self, previous: LinkState, state: LinkState) -> None: ...
    def on_placed(self) -> None: ...


class AccountStream:
    """The account's picture and what keeps it true. `run()` until cancelled."""

    def __init__(
        self,
        config: AccountConfig,
        client: KrakenClient,
        journal: Journal,
        *,
        budget: CostBudget,
        reserve: Callable[[], float],
        on_drift: Callable[[str, str], None] | None = None,
        on_fill: Callable[[Fill], None] | None = None,
        on_link: Callable[[LinkState, LinkState], None] | None = None,
        on_events: Callable[[list[Event]], None] | None = None,
        observer: StateObserver | None = None,
        on_learned: Callable[[Iterable[str]], None] | None = None,
        contracts: Callable[[str], Contract | None] | None = None,
        rate: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.settings = config.stream
        self.state = AccountState(observer=observer, contracts=contracts, rate=rate)
        self._client = client
        self._journal = journal
        self._budget = budget
        self._reserve = reserve
        self._on_drift = on_drift
        self._on_fill = on_fill
        self._on_link = on_link
        self._on_events = on_events
        self._on_learned = on_learned
        self.link = PrivateLink(
            self.name,
            config.ws_url,
            config.api_key,
            config.api_secret,
            link_timeout_s=self.settings.link_timeout_s,
            liveness_timeout_s=self.settings.liveness_timeout_s,
            on_message=self._apply,
            on_connected=self.reconcile_soon,
            on_state=self._link_changed,
        )
        if not self.settings.enabled:
            self.link.status.state = LinkState.DISABLED
        self.last_reconcile_at: float | None = None  # monotonic, of the last successful one
        self.reconciles = 0
        self.reconcile_failures = 0
        self.last_reconcile_error: str | None = None
        self.drift_total: dict[str, int] = {}
        self._changes = 0  # stream messages applied: a reconciliation overlapping one is read again
        self._wake = asyncio.Event()
        self._owners: OrderedDict[str, str] = OrderedDict()  # order id or cliOrdId -> bot
        self._pending: set[asyncio.Task[None]] = set()
        self.listeners: list[StreamListener] = []

    def __repr__(self) -> str:
        return f"AccountStream({self.name!r})"

    # ---- readers --------------------------------------------------------------------------------------
    def view(self) -> StateView:
        return self.state.view()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def age_s(self, now: float | None = None) -> float | None:
        """How old the picture is: 0 while the link is up; else since the last successful reconcile."""
        now = time.monotonic() if now is None else now
        if self.link.up:
            return 0.0
        if self.last_reconcile_at is None:
            return None
        return now - self.last_reconcile_at

    def fresh(self, now: float | None = None) -> bool:
        """Fresh while the link is up, or the last successful reconciliation is younger than
        state_max_age_s; otherwise stale."""
        if not self.enabled:
            return False
        age = self.age_s(now)
        return age is not None and age <= self.settings.state_max_age_s

    # ---- who placed what ------------------------------------------------------------------------------
    def placed(self, bot: str | None, ids: Iterable[str]) -> None:
        """The gateway forwarded `bot`'s request and the exchange answered with these order ids (or
        cliOrdIds): fills and closes of them are journaled as that bot's."""
        if bot is None:
            return
        ids = list(ids)
        for key in ids:
            self._owners[key] = bot
            self._owners.move_to_end(key)
        while len(self._owners) > MAX_OWNERS:
            self._owners.popitem(last=False)
        if self._on_learned is not None:
            self._on_learned(ids)
        for listener in self.listeners:
            listener.on_placed()

    def owner(self, order_id: str | None, cli_ord_id: str | None = None) -> str | None:
        for key in (order_id, cli_ord_id):
            if key and key in self._owners:
                return self._owners[key]
        return None

    # ---- the loop -------------------------------------------------------------------------------------
    async def run(self, session: aiohttp.ClientSession) -> None:
        if not self.enabled:
            return
        with structlog.contextvars.bound_contextvars(account=self.name):
            async with asyncio.TaskGroup() as group:
                group.create_task(self.link.run(session), name=f"stream-link-{self.name}")
                group.create_task(self._reconcile_loop(), name=f"stream-reconcile-{self.name}")

    def reconcile_soon(self) -> None:
        self._wake.set()

    def _link_changed(self, previous: LinkState, state: LinkState) -> None:
        if state is LinkState.DOWN and previous is LinkState.CONNECTED:
            self._wake.set()
        if self._on_link is not None:
            self._on_link(previous, state)
        for listener in self.listeners:
            listener.on_link_changed(previous, state)

    async def _reconcile_loop(self) -> None:
        while True:
            await self.reconcile()
            # While the link is down, REST alone keeps the state fresh: read it within state_max_age_s.
            # Up, every reconcile_s give or take a tenth: accounts started together (all their links come up
            # at once) drift apart, rather than reading thousands of orders in the same instant each time.
            interval = self.settings.reconcile_s * random.uniform(0.9, 1.1)
            if not self.link.up:
                interval = min(interval, max(0.5, self.settings.state_max_age_s / 2))
            # Woken early when the link comes up (a reconnect) or goes down (the faster beat starts).
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see Service._report
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

    async def reconcile(self) -> bool:
        """Read REST and adopt it; True if done. Budget-aware: the reads come out of the bots' share,
        never the switch's (skipped, and tried at the next beat, when they do not fit)."""
        for _ in range(RECONCILE_TRIES):
            cost = sum(endpoint(name).cost for name in RECONCILE_READS)
            if not self._budget.try_spend(cost, reserve=self._reserve()):
                self._failed("no rate budget left for the reads (the switch's share is never used)")
                return False
            before = self._changes
            try:
                orders, positions, accounts, notices = await asyncio.gather(
                    self._client.open_orders(),
                    self._client.open_positions(),
                    self._client.accounts(),
                    self._notifications(),
                )
            except ExchangeError as exc:
                self._failed(str(exc))
                return False
            if self._changes != before and self.link.up:
                await asyncio.sleep(RECONCILE_RETRY_S)
                continue
            # Adopted in slices (thousands of orders must not hold the event loop), and only if no stream
            # message came while REST's orders were parsed: then the stream is the newer truth.
            found = await self.state.reconcile_sliced(
                orders,
                positions,
                accounts,
                notices,
                current=functools.partial(self._current, before),
            )
            if found is None:
                await asyncio.sleep(RECONCILE_RETRY_S)
                continue
            drifts = found
            self.last_reconcile_at = time.monotonic()
            self.reconciles += 1
            self.last_reconcile_error = None
            # Counted with the picture they describe, before any await: a reader between the journal's
            # writes must never see REST's picture adopted with only part of its drift counted.
            for drift in drifts:
                self._count_drift(drift)
            settled = self.state.take_settlements()
            if settled:
                self._events(settled)
            for drift in drifts:
                await self._event("account_state_drift", {"kind": drift.kind, "detail": drift.detail})
            return True
        log.info("account_state_reconcile_deferred", note="the stream kept changing while REST was read")
        return False

    def _current(self, before: int) -> bool:
        """REST's answers are the newest truth: no stream message came since `before`, or the link is
        down (then no stream message can come)."""
        return self._changes == before or not self.link.up

    async def _notifications(self) -> list[dict[str, Any]] | None:
        """REST notifications; None (not read) if that one read fails: it is not worth a stale state."""
        try:
            doc = await self._client.request("notifications")
        except ExchangeError as exc:
            log.info("notifications_read_failed", error=str(exc))
            return None
        found = doc.get("notifications")
        return [n for n in found if isinstance(n, dict)] if isinstance(found, list) else None

    def _failed(self, error: str) -> None:
        self.reconcile_failures += 1
        self.last_reconcile_error = error
        log.warning("account_state_reconcile_failed", error=error, failures=self.reconcile_failures)

    def _count_drift(self, drift: Drift) -> None:
        self.drift_total[drift.kind] = self.drift_total.get(drift.kind, 0) + 1
        log.warning(
            "account_state_drift", kind=drift.kind, detail=drift.detail, link=self.link.status.state.value
        )
        if self._on_drift is not None:
            self._on_drift(drift.kind, drift.detail)

    # ---- the stream's messages ------------------------------------------------------------------------
    def _apply(self, message: Mapping[str, Any]) -> Awaitable[None] | None:
        """Apply in order (synchronously, in the link's loop; a snapshot of many orders in slices, which
        the link awaits before it reads on); journal the events in the background, each journal write
        owned and collected."""
        if AccountState.large(message):
            return self._apply_large(message)
        self._applied(message, self.state.apply(message))
        return None

    async def _apply_large(self, message: Mapping[str, Any]) -> None:
        self._changes += 1  # from the start: a reconciliation whose reads overlap it is read again
        self._applied(message, await self.state.apply_sliced(message))

    def _applied(self, message: Mapping[str, Any], events: list[Event]) -> None:
        self._changes += 1
        if events:
            self._events(events)
        for listener in self.listeners:
            listener.on_stream_message(message)

    def _events(self, events: list[Event]) -> None:
        """Told on, then journaled in the background (each journal write owned and collected)."""
        for event in events:
            if isinstance(event, Fill) and self._on_fill is not None:
                self._on_fill(event)
        if self._on_events is not None:
            self._on_events(events)
        task = asyncio.create_task(self._journal_events(events), name=f"stream-journal-{self.name}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _journal_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Settlement):
                await self._event(
                    "settlement",
                    {
                        "symbol": event.symbol,
                        "size": _dec(event.size),
                        "entry_price": None if event.entry_price is None else _dec(event.entry_price),
                        "price": None if event.price is None else _dec(event.price),
                        "realized_pnl": _dec(event.realized_pnl),
                        "currency": event.currency,
                        "time": event.time,
                    },
                )
            elif isinstance(event, Fill):
                await self._event(
                    "fill",
                    {
                        "fill_id": event.fill_id,
                        "order_id": event.order_id,
                        "cliOrdId": event.cli_ord_id,
                        "bot": self.owner(event.order_id, event.cli_ord_id),
                        "symbol": event.symbol,
                        "side": event.side,
                        "size": _dec(event.size),
                        "price": _dec(event.price),
                        "fee": _dec(event.fee),
                        "fill_type": event.fill_type,
                        "realized_pnl": _dec(event.realized_pnl),
                        "fee_currency": event.fee_currency,
                        "fill_time": event.time,
                    },
                )
            else:
                order = event.order
                await self._event(
                    "order_closed",
                    {
                        "order_id": event.order_id,
                        "cliOrdId": event.cli_ord_id,
                        "bot": self.owner(event.order_id, event.cli_ord_id),
                        "reason": event.reason,
                        "symbol": None if order is None else order.symbol,
                        "side": None if order is None else order.side,
                        "remaining": None if order is None else _dec(order.remaining),
                    },
                )

    async def _event(self, kind: str, detail: dict[str, Any]) -> None:
        try:
            await self._journal.event(kind, self.name, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind=kind, error=str(exc))

    async def settle(self) -> None:
        """Let the journal writes in flight finish (the ordered shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=2.0)


def _dec(value: Decimal) -> str:
    return format(value, "f")


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _contract_json(contract: Contract | None) -> dict[str, Any]:
    """How a symbol's amounts are counted: its contract kind and margin (PnL) currency; null: unknown."""
    if contract is None:
        return {"contract": None, "pnl_currency": None}
    return {"contract": contract.kind.value, "pnl_currency": contract.margin_currency}


def _order_json(stream: AccountStream, order: OpenOrder) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "cli_ord_id": order.cli_ord_id,
        "bot": stream.owner(order.order_id, order.cli_ord_id),
        "symbol": order.symbol,
        "side": order.side,
        "type": order.order_type,
        "remaining": float(order.remaining),
        "limit_price": _float(order.limit_price),
        "stop_price": _float(order.stop_price),
        "reduce_only": order.reduce_only,
    }


def state_json(
    stream: AccountStream, now: float | None = None, wall: float | None = None, *, orders: int = 0
) -> dict[str, Any]:
    """The account-state fields of `/guardian/state` (contract names). Open orders as a count and per
    symbol; with `orders` > 0, the first that many too (oldest first), each with the bot that placed it."""
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    view = stream.view()
    age = stream.age_s(now)
    balances = view.balances
    return {
        "link": stream.link.status.as_json(now),
        "fresh": stream.fresh(now),
        "state_age_s": None if age is None else round(age, 3),
        "positions": [
            {
                "symbol": p.symbol,
                "size": float(p.size),
                "entry_price": _float(p.entry_price),
                "mark_price": _float(p.mark_price),
                "unrealized_pnl": _float(p.unrealized_pnl),
                **_contract_json(stream.state.contract(p.symbol)),
            }
            for p in sorted(view.positions.values(), key=lambda p: p.symbol)
        ],
        "open_orders": {
            "count": stream.state.order_count(),
            "by_symbol": dict(sorted(stream.state.orders_by_symbol().items())),
            **(
                {"orders": [_order_json(stream, o) for o in stream.state.first_orders(orders)]}
                if orders
                else {}
            ),
        },
        "balances": {
            "portfolio_value": _float(balances.portfolio_value),
            "available_margin": _float(balances.available_margin),
            "initial_margin": _float(balances.initial_margin),
            "maintenance_margin": _float(balances.maintenance_margin),
            "unrealized_pnl": _float(balances.unrealized_pnl),
        },
        "fills_today": {
            "count": view.fills_today,
            "realized_pnl": float(view.realized_today),
            "fees": float(view.fees_today),
            # Per symbol in its margin currency (the two figures above are their USD worth).
            "by_symbol": {
                symbol: {
                    "realized_pnl": float(view.realized_by.get(symbol, 0)),
                    "fees": float(view.fees_by.get(symbol, 0)),
                    **_contract_json(stream.state.contract(symbol)),
                }
                for symbol in sorted({*view.realized_by, *view.fees_by})
            },
        },
        "settlements": [
            {
                "symbol": s.symbol,
                "size": float(s.size),
                "entry_price": _float(s.entry_price),
                "price": _float(s.price),
                "realized_pnl": float(s.realized_pnl),
                "currency": s.currency,
                "at": to_iso(s.time),
            }
            for s in view.settlements
        ],
        "notices": [
            {
                "type": n.type,
                "priority": n.priority,
                "note": n.note,
                "effective_time": None if n.effective_time is None else to_iso(n.effective_time),
                "expected_downtime_minutes": n.expected_downtime_minutes,
            }
            for n in view.notices
        ],
        "reconcile": {
            "count": stream.reconciles,
            "failures": stream.reconcile_failures,
            "last_error": stream.last_reconcile_error,
            "drift": dict(stream.drift_total),
        },
    }
