"""One account's state as the exchange knows it, and the rules that change it.

`AccountState` has one owner (the account's stream task, `guardian.stream.link`), which applies the
exchange's messages in the order they arrive and, on reconciliation, REST's answers. Readers (the state
endpoint, metrics, `guardian status`, later the guard and the relay) get `view()`, an immutable snapshot.

Shapes are Kraken Futures WebSocket v1's (`../shared/kraken-futures-ws.md`). Where the facts are
unconfirmed the reading is tolerant, and chosen to fail safe:
- `open_positions` messages are applied as upserts (a position at 0 is removed), not as the whole list:
  whether a message lists every position is unconfirmed, and a position left over errs towards more
  exposure, never less. Reconciliation removes what REST does not have, and counts it as drift.
- an order delta's `qty` is the remaining size (live traffic, ccxt); `is_cancel` removes the order.
- unknown feeds, fields, reasons and enum values are kept or logged, never a crash.

Realised PnL is worked out here from the fills, since no feed of the five carries it: each fill that
reduces a position realises what its contract's arithmetic says (`guardian.contracts`: (price - entry) x
closed size x contractSize in USD for a linear contract; closed size x contractSize x (1/entry - 1/price)
in the base currency for an inverse one), from the position's average entry (arithmetic for linear,
harmonic for inverse, as Kraken keeps them). REST's positions reseed the entries at every reconciliation.
Amounts are kept per symbol in its margin currency and valued in USD when read (`daily_pnl`), at the
contract's mark: an inverse contract's realised bitcoin is worth what bitcoin is worth now. A fixed
maturity's position that goes after its last trading time was settled: it realises at the last mark
known, and is a `Settlement` event (journaled).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final, Protocol

import structlog

from guardian.contracts import PLAIN, Contract, Kind
from guardian.kraken.times import parse_iso
from guardian.slicing import run_now, sliced

log = structlog.get_logger("guardian.stream")

ZERO: Final = Decimal(0)
MAX_FILLS_KEPT: Final = 1000  # in memory, for the relay's snapshots; the journal keeps every fill
MAX_FILL_IDS: Final = 20_000  # fills already counted, so a re-sent snapshot is not counted twice
# A change of more orders than this at once (a snapshot, a reconciliation) is told to the observer in
# slices, with the observer settling meanwhile (the guard waits for it).
SETTLE_IN_SLICES: Final = 200
SNAPSHOT_FEEDS: Final = ("open_orders_snapshot", "open_orders_verbose_snapshot")


def number(value: Any) -> Decimal | None:
    """A number as Kraken sends it (JSON number or text), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        found = Decimal(str(value))
    except InvalidOperation:
        return None
    return found if found.is_finite() else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _seconds(ms: Any) -> float | None:
    found = number(ms)
    return None if found is None else float(found) / 1000


@dataclass(frozen=True, slots=True)
class OpenOrder:
    order_id: str
    symbol: str
    side: str  # buy | sell
    remaining: Decimal
    filled: Decimal = ZERO
    order_type: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    cli_ord_id: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    size: Decimal  # signed contracts: + long, - short
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None
    unrealized_pnl: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Balances:
    portfolio_value: Decimal | None = None
    available_margin: Decimal | None = None
    initial_margin: Decimal | None = None
    maintenance_margin: Decimal | None = None
    unrealized_pnl: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    order_id: str | None
    cli_ord_id: str | None
    symbol: str
    side: str
    size: Decimal
    price: Decimal
    fee: Decimal
    fill_type: str | None
    time: float  # epoch seconds
    realized_pnl: Decimal = ZERO  # in the contract's margin currency
    fee_currency: str | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A fixed maturity's position closed at expiry by the exchange (seen as the position going after the
    contract's last trading time), realised at the last mark guardian knew."""

    symbol: str
    size: Decimal  # signed, as it was
    entry_price: Decimal | None
    price: Decimal | None  # the settlement price guardian assumed (the last mark known); None: none known
    realized_pnl: Decimal  # in the contract's margin currency (0 when it could not be worked out)
    currency: str
    time: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Notice:
    key: str  # type, time and text: REST's notices carry no id, so the feed's id is not used
    type: str
    priority: str
    note: str
    effective_time: float | None  # epoch seconds
    expected_downtime_minutes: float | None = None

    @property
    def is_maintenance(self) -> bool:
        """An announced downtime: high priority, type maintenance (Kraken's docs)."""
        return self.priority == "high" and self.type == "maintenance"

    def ends_at(self) -> float | None:
        if self.effective_time is None:
            return None
        return self.effective_time + 60 * (self.expected_downtime_minutes or 0)


@dataclass(frozen=True, slots=True)
class OrderClosed:
    """An order left the book: filled, cancelled (by a user, guardian, the switch...) or rejected."""

    order_id: str
    reason: str
    order: OpenOrder | None  # as guardian last knew it
    cli_ord_id: str | None = None


@dataclass(frozen=True, slots=True)
class Drift:
    """A difference between the stream's picture and REST's (REST wins)."""

    kind: str  # open_orders | positions | balances
    detail: str


Event = Fill | OrderClosed | Settlement


class StateObserver(Protocol):
    """Told of every change as it is applied (the exposure guard's running figures,
    `guardian.gateway.ledger.Ledger`): in order, synchronously, from the owner's loop."""

    def order_changed(self, order_id: str, order: OpenOrder | None) -> None: ...
    def position_changed(
        self, symbol: str, feed: Decimal, fills: Decimal, feed_mark: Decimal | None = None
    ) -> None: ...
    def begin_settling(self) -> None: ...
    def end_settling(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StateView:
    """An immutable snapshot of the account state, for readers."""

    orders: Mapping[str, OpenOrder] = field(default_factory=lambda: MappingProxyType({}))
    positions: Mapping[str, Position] = field(default_factory=lambda: MappingProxyType({}))
    balances: Balances = Balances()
    fills_today: int = 0
    realized_today: Decimal = ZERO  # in USD, at the marks when the view was made
    fees_today: Decimal = ZERO  # likewise
    fills_by_side: Mapping[tuple[str, str], int] = field(default_factory=lambda: MappingProxyType({}))
    notices: tuple[Notice, ...] = ()
    recent_fills: tuple[Fill, ...] = ()
    # Signed net positions as the fills applied so far make them (reseeded from REST at each
    # reconciliation): a fill moves these at once, while the positions feed may follow a moment later.
    fill_positions: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    changed_at: float = 0.0  # monotonic: the last change applied
    day: str = ""
    # Per symbol, in its margin currency (USD for linear contracts, the base currency for inverse ones).
    realized_by: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    fees_by: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    settlements: tuple[Settlement, ...] = ()

    def orders_by_symbol(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for order in self.orders.values():
            counts[order.symbol] = counts.get(order.symbol, 0) + 1
        return counts

    def next_maintenance(self, now: float) -> Notice | None:
        """The next announced downtime that has not ended yet."""
        upcoming = [
            n
            for n in self.notices
            if n.is_maintenance and n.effective_time is not None and (n.ends_at() or 0) > now
        ]
        return min(upcoming, key=lambda n: n.effective_time or 0, default=None)


def _day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")


# The day's amounts sorted for valuing (AccountState._sort): the sum in USD, the realised amounts in a base
# currency, the inverse positions, and why the day cannot be valued (or None).
_Sorted = tuple[
    Decimal,
    tuple[tuple[str, Contract, Decimal], ...],
    tuple[tuple["Position", Contract], ...],
    tuple[str, str] | None,
]


class AccountState:
    """The owner's side: `apply()` a message, `reconcile()` REST truth, `view()` for readers.

    Applying a message costs what the message changes, not what the account holds: the snapshot readers
    get (`view()`) is made when one is asked for after a change, not at every change, and the `observer`
    is told of each order and position that changed. A snapshot or a reconciliation that changes many
    orders at once can be applied in slices (`apply_sliced`, `reconcile_sliced`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        observer: StateObserver | None = None,
        contracts: Callable[[str], Contract | None] | None = None,
        rate: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self._clock = clock
        self.observer = observer
        # Each symbol's contract (None: unknown, and its PnL cannot be valued), and the USD price of its
        # margin currency (an inverse contract's mark). Without them (unit tests): linear, size 1.
        self._contracts = contracts
        self._rate = rate or (lambda symbol: None)
        self._orders: dict[str, OpenOrder] = {}
        self._by_symbol: dict[str, int] = {}  # open orders per symbol, kept with _orders
        self._positions: dict[str, Position] = {}
        self._entries: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (size, entry) from fills
        self._balances = Balances()
        self._notices: dict[str, Notice] = {}
        self._fills: deque[Fill] = deque(maxlen=MAX_FILLS_KEPT)
        self._fill_ids: set[str] = set()
        self._fill_order: deque[str] = deque()
        self._day = _day(clock())
        self._fills_today = 0
        self._realized: dict[str, Decimal] = {}  # symbol -> realised today, in its margin currency
        self._fees: dict[str, Decimal] = {}  # symbol -> fees today, likewise
        self._unvalued: dict[str, str] = {}  # symbol -> why today's realised PnL in it is not known
        self._settlements: list[Settlement] = []  # today's
        self._pending: list[Event] = []  # settlements seen by a reconciliation, for the journal
        self._by_side: dict[tuple[str, str], int] = {}
        self._view: StateView | None = StateView(day=self._day)
        self._sorted: _Sorted | None = None  # the day's amounts sorted for valuing, until they change
        self._changed_at = 0.0
        self.unknown_feeds: set[str] = set()

    # ---- readers --------------------------------------------------------------------------------------
    def view(self) -> StateView:
        """An immutable snapshot, made once per change that a reader asks after (O(n) then)."""
        if self._view is None:
            realized, fees = self._valued(self._realized), self._valued(self._fees)
            self._view = StateView(
                orders=MappingProxyType(dict(self._orders)),
                positions=MappingProxyType(dict(self._positions)),
                balances=self._balances,
                fills_today=self._fills_today,
                realized_today=realized,
                fees_today=fees,
                fills_by_side=MappingProxyType(dict(self._by_side)),
                notices=tuple(sorted(self._notices.values(), key=lambda n: (n.effective_time or 0, n.key))),
                recent_fills=tuple(self._fills),
                fill_positions=MappingProxyType({s: size for s, (size, _) in self._entries.items()}),
                changed_at=self._changed_at,
                day=self._day,
                realized_by=MappingProxyType(dict(self._realized)),
                fees_by=MappingProxyType(dict(self._fees)),
                settlements=tuple(self._settlements),
            )
        return self._view

    def _valued(self, amounts: Mapping[str, Decimal]) -> Decimal:
        """Per-symbol amounts in USD (those that cannot be valued now left out: `pnl_gap` says which)."""
        total = ZERO
        for symbol, amount in amounts.items():
            usd = self._usd(symbol, amount)
            if usd is not None:
                total += usd
        return total

    def _changed(self) -> None:
        self._view = None
        self._changed_at = time.monotonic()

    # Cheap readers for the hot path and the frequent ones (no snapshot made): O(1) or O(positions).
    def order_count(self) -> int:
        return len(self._orders)

    def orders_by_symbol(self) -> dict[str, int]:
        return dict(self._by_symbol)

    def first_orders(self, count: int) -> list[OpenOrder]:
        """The first `count` open orders in guardian's order (oldest first): O(count), whatever the book."""
        return list(itertools.islice(self._orders.values(), max(0, count)))

    def position_symbols(self) -> set[str]:
        return set(self._positions)

    def position_readings(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The position's size as the positions feed and as the fills applied say (signed)."""
        feed = self._positions[symbol].size if symbol in self._positions else ZERO
        return feed, self._entries.get(symbol, (ZERO, ZERO))[0]

    def next_maintenance(self, now: float) -> Notice | None:
        """The next announced downtime that has not ended yet."""
        return StateView(notices=tuple(self._notices.values())).next_maintenance(now)

    def daily_pnl(self) -> Decimal | None:
        """Realised PnL since 00:00 UTC, plus unrealised, net of fees, in USD; None when some part of it
        cannot be valued now (`pnl_gap` says why)."""
        return self._pnl()[0]

    def pnl_gap(self) -> tuple[str, str] | None:
        """Why `daily_pnl` is None: a refusal code (`instrumentUnknown`, `markPriceUnavailable`) and what."""
        return self._pnl()[1]

    def _contract(self, symbol: str) -> Contract | None:
        return PLAIN if self._contracts is None else self._contracts(symbol)

    contract = _contract

    def _usd(self, symbol: str, amount: Decimal) -> Decimal | None:
        contract = self._contract(symbol)
        if contract is None:
            return None
        if contract.kind is Kind.LINEAR or not amount:
            return amount
        return contract.to_usd(amount, self._rate(symbol))

    def _pnl(self) -> tuple[Decimal | None, tuple[str, str] | None]:
        """What is in USD is summed once per change of it (a fill, a position, the balances, the
        contracts); only the amounts in a base currency are valued at each call, at the marks of now."""
        if self._sorted is None:
            self._sorted = self._sort()
        usd, realised, positions, gap = self._sorted
        if gap is not None:
            return None, gap
        total = usd
        # The multi-collateral account's figure covers its linear positions; inverse ones margin apart.
        flex = self._balances.unrealized_pnl
        if flex is not None:
            total += flex
        for symbol, contract, amount in realised:
            found = contract.to_usd(amount, self._rate(symbol))
            if found is None:
                return None, self._gap(symbol, "today's realised PnL and fees")
            total += found
        for position, contract in positions:
            rate = position.mark_price or self._rate(position.symbol)
            pnl = position.unrealized_pnl
            if pnl is None and rate is not None and position.entry_price:
                pnl = contract.pnl(position.size, position.entry_price, rate)
            if pnl is None or rate is None:
                return None, self._gap(position.symbol, "the position's PnL")
            total += pnl * rate
        return total, None

    def _sort(self) -> _Sorted:
        """The day's amounts sorted by how they are valued: the sum of those in USD (the linear positions'
        PnL only if the multi-collateral account has no figure of its own), those in a base currency, and
        the first that cannot be valued at all."""
        for symbol, why in self._unvalued.items():
            return (
                ZERO,
                (),
                (),
                ("instrumentUnknown", f"today's realised PnL in {symbol} is not known: {why}"),
            )
        usd = ZERO
        realised: list[tuple[str, Contract, Decimal]] = []
        for symbol in {*self._realized, *self._fees}:
            contract = self._contract(symbol)
            if contract is None:
                return ZERO, (), (), self._gap(symbol, "today's realised PnL and fees")
            amount = self._realized.get(symbol, ZERO) - self._fees.get(symbol, ZERO)
            if contract.kind is Kind.LINEAR:
                usd += amount
            elif amount:
                realised.append((symbol, contract, amount))
        positions: list[tuple[Position, Contract]] = []
        for position in self._positions.values():
            contract = self._contract(position.symbol)
            if contract is None:
                return ZERO, (), (), self._gap(position.symbol, "the position's PnL")
            if contract.kind is not Kind.LINEAR:
                positions.append((position, contract))
            elif self._balances.unrealized_pnl is None:
                usd += position.unrealized_pnl or ZERO
        return usd, tuple(realised), tuple(positions), None

    def contracts_changed(self, symbol: str | None = None) -> None:
        """The contracts list changed: the day's amounts are sorted again when next read."""
        self._sorted = None

    def _gap(self, symbol: str, what: str) -> tuple[str, str]:
        if self._contract(symbol) is None:
            return "instrumentUnknown", f"{what} in {symbol} cannot be valued: its contract is not known"
        return (
            "markPriceUnavailable",
            f"{what} in {symbol} is in {self._contract(symbol).margin_currency} "  # type: ignore[union-attr]
            "and no mark values it in USD now",
        )

    # ---- the observer ---------------------------------------------------------------------------------
    def _set_order(self, order_id: str, order: OpenOrder | None) -> None:
        """One open order changed (None: it is not open any more)."""
        known = self._orders.pop(order_id, None) if order is None else self._orders.get(order_id)
        if order is not None:
            self._orders[order_id] = order
        self._counted(known, order)
        if self.observer is not None and known is not order:
            self.observer.order_changed(order_id, order)

    def _counted(self, before: OpenOrder | None, after: OpenOrder | None) -> None:
        if before is not None and (after is None or after.symbol != before.symbol):
            left = self._by_symbol[before.symbol] - 1
            if left:
                self._by_symbol[before.symbol] = left
            else:
                del self._by_symbol[before.symbol]
        if after is not None and (before is None or after.symbol != before.symbol):
            self._by_symbol[after.symbol] = self._by_symbol.get(after.symbol, 0) + 1

    def _position_changed(self, symbol: str) -> None:
        self._sorted = None
        if self.observer is not None:
            feed, fills = self.position_readings(symbol)
            position = self._positions.get(symbol)
            self.observer.position_changed(
                symbol, feed, fills, None if position is None else position.mark_price
            )

    def _parse_orders(
        self, rows: Iterable[Any], parse: Callable[[Any], OpenOrder | None]
    ) -> Generator[None, None, dict[str, OpenOrder]]:
        """The open orders `rows` list, one step per row; an order equal to the one held is the one held
        (so a snapshot that changes nothing changes nothing)."""
        found: dict[str, OpenOrder] = {}
        for raw in rows:
            order = parse(raw)
            if order is not None:
                known = self._orders.get(order.order_id)
                found[order.order_id] = known if known == order else order
            yield
        return found

    def _swap_orders(self, orders: dict[str, OpenOrder]) -> list[str]:
        """`orders` are the open orders now (one synchronous step); the ids whose order changed."""
        before, self._orders = self._orders, orders
        changed = [i for i, order in orders.items() if before.get(i) is not order]
        changed.extend(before.keys() - orders.keys())
        for order_id in changed:
            self._counted(before.get(order_id), orders.get(order_id))
        return changed

    def _notify(self, order_ids: Sequence[str]) -> Generator[None, None, None]:
        observer = self.observer
        if observer is None:
            return
        for order_id in order_ids:
            observer.order_changed(order_id, self._orders.get(order_id))
            yield

    async def _notify_sliced(self, order_ids: Sequence[str]) -> None:
        """Tell the observer of many changed orders in slices; it is settling until the last."""
        observer = self.observer
        if observer is None or len(order_ids) <= SETTLE_IN_SLICES:
            run_now(self._notify(order_ids))
            return
        steps = self._notify(order_ids)
        try:
            await sliced(steps)
        except asyncio.CancelledError:
            run_now(steps)  # the figures are never left between two pictures
            raise
        finally:
            observer.end_settling()

    def _swap_settling(self, orders: dict[str, OpenOrder]) -> list[str]:
        """`_swap_orders`, and, for a change to be told in slices, the observer settling from this same
        step: nothing judges against figures between two pictures."""
        changed = self._swap_orders(orders)
        if self.observer is not None and len(changed) > SETTLE_IN_SLICES:
            self.observer.begin_settling()
        return changed

    # ---- the day's totals -----------------------------------------------------------------------------
    def restore_day(self, fills: Iterable[Mapping[str, Any]]) -> None:
        """Today's fills from the journal (after a restart): counted once, never again from a snapshot."""
        for row in fills:
            fill_id = _text(row.get("fill_id"))
            if fill_id is None or fill_id in self._fill_ids:
                continue
            self._remember(fill_id)
            self._fills_today += 1
            symbol = str(row.get("symbol")).upper()
            _add(self._realized, symbol, number(row.get("realized_pnl")) or ZERO)
            _add(self._fees, symbol, number(row.get("fee")) or ZERO)
            self._sorted = None
            key = (symbol, str(row.get("side")))
            self._by_side[key] = self._by_side.get(key, 0) + 1
        self._changed()

    def restore_settlements(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Today's settlements from the journal (after a restart)."""
        for row in rows:
            symbol = _text(row.get("symbol"))
            size, at = number(row.get("size")), number(row.get("time"))
            if symbol is None or size is None or at is None:
                continue
            realized = number(row.get("realized_pnl")) or ZERO
            settled = Settlement(
                symbol.upper(),
                size,
                number(row.get("entry_price")),
                number(row.get("price")),
                realized,
                str(row.get("currency") or ""),
                float(at),
            )
            self._settlements.append(settled)
            _add(self._realized, settled.symbol, realized)
            self._sorted = None
        self._changed()

    def roll_day(self) -> None:
        """At 00:00 UTC today's counts start again, whether or not a fill arrives to show it."""
        if self._roll_day():
            self._changed()

    def _roll_day(self) -> bool:
        today = _day(self._clock())
        if today == self._day:
            return False
        self._day, self._fills_today, self._realized, self._fees = today, 0, {}, {}
        self._sorted = None
        self._unvalued, self._settlements = {}, []
        return True

    def _remember(self, fill_id: str) -> None:
        self._fill_ids.add(fill_id)
        self._fill_order.append(fill_id)
        while len(self._fill_order) > MAX_FILL_IDS:
            self._fill_ids.discard(self._fill_order.popleft())

    # ---- the exchange's messages ----------------------------------------------------------------------
    def apply(self, message: Mapping[str, Any]) -> list[Event]:
        """Apply one feed message; return what happened that the journal keeps (fills, closed orders)."""
        feed = message.get("feed")
        events: list[Event] = []
        if feed in SNAPSHOT_FEEDS:
            changed = self._swap_orders(run_now(self._parse_orders(message.get("orders") or (), _order)))
            run_now(self._notify(changed))
        elif feed in ("open_orders", "open_orders_verbose"):
            events.extend(self._order_delta(message))
        elif feed == "open_positions":
            for raw in message.get("positions") or ():
                self._position(raw)
            events.extend(self.take_settlements())
        elif feed in ("fills_snapshot", "fills"):
            events.extend(self._fills_message(message, snapshot=feed == "fills_snapshot"))
        elif feed in ("balances_snapshot", "balances"):
            self._balances_message(message)
        elif feed == "notifications_auth":
            for raw in message.get("notifications") or ():
                notice = _notice(raw)
                if notice is not None:
                    self._add_notice(notice)
            self._prune_notices()
        else:
            if isinstance(feed, str) and feed not in self.unknown_feeds and feed != "heartbeat":
                self.unknown_feeds.add(feed)
                log.warning("stream_unknown_feed", feed=feed[:64])
            return events
        self._changed()
        return events

    @staticmethod
    def large(message: Mapping[str, Any]) -> bool:
        """A snapshot of more open orders than one step should apply: `apply_sliced` it."""
        orders = message.get("orders")
        return (
            message.get("feed") in SNAPSHOT_FEEDS
            and isinstance(orders, list)
            and len(orders) > SETTLE_IN_SLICES
        )

    async def apply_sliced(self, message: Mapping[str, Any]) -> list[Event]:
        """`apply` an open orders snapshot in slices: parsed a slice at a time, swapped in at once, told to
        the observer a slice at a time (settling meanwhile). Other messages are applied at once."""
        if message.get("feed") not in SNAPSHOT_FEEDS:
            return self.apply(message)
        orders = await sliced(self._parse_orders(message.get("orders") or (), _order))
        changed = self._swap_settling(orders)
        self._changed()
        await self._notify_sliced(changed)
        return []

    def _order_delta(self, message: Mapping[str, Any]) -> list[Event]:
        raw = message.get("order")
        order = _order(raw) if isinstance(raw, Mapping) else None
        order_id = order.order_id if order is not None else _text(message.get("order_id"))
        if order_id is None:
            log.warning("stream_order_without_id", reason=str(message.get("reason"))[:64])
            return []
        if message.get("is_cancel") is True:
            known = self._orders.get(order_id)
            self._set_order(order_id, None)
            reason = str(message.get("reason") or "unknown")
            cli = _text(message.get("cli_ord_id")) or (known.cli_ord_id if known else None)
            return [
                OrderClosed(order_id, reason, order or known, cli or (order.cli_ord_id if order else None))
            ]
        if order is not None:
            known = self._orders.get(order_id)
            if order.cli_ord_id is None and known is not None and known.cli_ord_id is not None:
                order = replace(order, cli_ord_id=known.cli_ord_id)
            self._set_order(order_id, known if known == order else order)
        return []

    def _position(self, raw: Any) -> None:
        if not isinstance(raw, Mapping):
            return
        symbol = _text(raw.get("instrument"))
        size = number(raw.get("balance"))
        if symbol is None or size is None:
            return
        symbol = symbol.upper()
        if size == 0:
            gone = self._positions.pop(symbol, None)
            if gone is not None:
                self._settled(gone)
        else:
            self._positions[symbol] = Position(
                symbol,
                size,
                number(raw.get("entry_price")),
                number(raw.get("mark_price")),
                number(raw.get("pnl")),
            )
        self._position_changed(symbol)

    def _settled(self, gone: Position) -> None:
        """`gone` left: if its contract is a fixed maturity past its last trading time, the exchange
        settled it. It realises at the last mark known (the exchange's settlement price is not on any
        feed: the next reconciliation's balances show the exact amount)."""
        contract = self._contract(gone.symbol)
        now = self._clock()
        if contract is None or contract.last_trading is None or now < contract.last_trading:
            return
        entry = self._entries.get(gone.symbol, (ZERO, gone.entry_price))[1] or gone.entry_price
        price = gone.mark_price or self._rate(gone.symbol)
        realized = ZERO
        if entry and price:
            realized = contract.pnl(gone.size, entry, price)
        settled = Settlement(gone.symbol, gone.size, entry, price, realized, contract.margin_currency, now)
        self._roll_day()
        self._entries.pop(gone.symbol, None)
        self._settlements.append(settled)
        _add(self._realized, gone.symbol, realized)
        self._sorted = None
        self._pending.append(settled)
        log.info(
            "position_settled",
            symbol=gone.symbol,
            size=str(gone.size),
            price=None if price is None else str(price),
            realized_pnl=str(realized),
            currency=contract.margin_currency,
        )

    def take_settlements(self) -> list[Event]:
        """The settlements seen since the last call (for the journal)."""
        found, self._pending = self._pending, []
        return found

    def _fills_message(self, message: Mapping[str, Any], *, snapshot: bool) -> list[Event]:
        self._roll_day()
        events: list[Event] = []
        rows = [r for r in message.get("fills") or () if isinstance(r, Mapping)]
        rows.sort(key=lambda r: float(number(r.get("time")) or 0))
        midnight = dt.datetime.strptime(self._day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
        for raw in rows:
            fill = _fill(raw)
            if fill is None or fill.fill_id in self._fill_ids:
                continue
            if snapshot and fill.time < midnight:
                self._remember(fill.fill_id)  # an older day's: known, not counted
                continue
            # A snapshot's fill (made while guardian was away) cannot be priced against an entry it did
            # not see: it is counted and journaled, its realised PnL left at 0.
            if not snapshot:
                fill = replace(fill, realized_pnl=self._realize(fill))
            self._remember(fill.fill_id)
            self._fills.append(fill)
            self._fills_today += 1
            _add(self._realized, fill.symbol, fill.realized_pnl)
            _add(self._fees, fill.symbol, fill.fee)
            self._sorted = None
            key = (fill.symbol, fill.side)
            self._by_side[key] = self._by_side.get(key, 0) + 1
            events.append(fill)
        return events

    def _realize(self, fill: Fill) -> Decimal:
        """The fill's realised PnL (its contract's margin currency), the position's entry moved with it."""
        contract = self._contract(fill.symbol)
        if contract is None:  # worked out as linear, and not trusted: the day's PnL is not known
            contract = PLAIN
            if fill.symbol not in self._unvalued:
                log.warning("fill_contract_unknown", symbol=fill.symbol, fill_id=fill.fill_id)
            self._unvalued[fill.symbol] = "its contract was not known when it filled"
        size, entry = self._entries.get(fill.symbol, (ZERO, ZERO))
        signed = fill.size if fill.side == "buy" else -fill.size
        realized = ZERO
        if size and (size > 0) != (signed > 0) and entry:  # reduces (or flips) the position
            closed = min(abs(size), abs(signed))
            realized = contract.pnl(closed if size > 0 else -closed, entry, fill.price)
        new_size = size + signed
        if new_size == 0:
            self._entries.pop(fill.symbol, None)
        elif size == 0 or (size > 0) != (new_size > 0):  # opened, or flipped: the rest at the fill price
            self._entries[fill.symbol] = (new_size, fill.price)
        elif (size > 0) == (signed > 0):  # grew: the average entry moves
            moved = contract.entry_after(size, entry, signed, fill.price) if entry else fill.price
            self._entries[fill.symbol] = (new_size, moved)
        else:  # reduced: the entry stays
            self._entries[fill.symbol] = (new_size, entry)
        self._position_changed(fill.symbol)
        return realized

    def _balances_message(self, message: Mapping[str, Any]) -> None:
        flex = message.get("flex_futures")
        if isinstance(flex, Mapping) and flex:
            self._balances = Balances(
                portfolio_value=number(flex.get("portfolio_value")),
                available_margin=number(flex.get("available_margin")),
                initial_margin=number(flex.get("initial_margin")),
                maintenance_margin=number(flex.get("maintenance_margin")),
                unrealized_pnl=number(flex.get("total_unrealized", flex.get("pnl"))),
            )
            self._sorted = None

    def _add_notice(self, notice: Notice) -> None:
        if notice.key not in self._notices and notice.is_maintenance:
            log.warning(
                "maintenance_announced",
                effective_time=notice.effective_time,
                expected_downtime_minutes=notice.expected_downtime_minutes,
                note=notice.note[:200],
            )
        self._notices[notice.key] = notice

    def _prune_notices(self) -> None:
        now = self._clock()
        for key, notice in list(self._notices.items()):
            ends = notice.ends_at()
            if ends is not None and ends < now - 86_400:  # a day after it ended
                del self._notices[key]

    # ---- REST truth ------------------------------------------------------------------------------------
    def reconcile(
        self,
        open_orders: Sequence[Mapping[str, Any]] | None,
        positions: Sequence[Mapping[str, Any]] | None,
        accounts: Mapping[str, Any] | None,
        notifications: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Drift]:
        """Compare REST's answers with the picture, adopt REST's, return what differed. A part that is
        None was not read (its request failed) and is left as it is."""
        rest = None if open_orders is None else run_now(self._parse_orders(open_orders, _rest_order))
        drifts, changed = self._adopt(rest, positions, accounts, notifications)
        run_now(self._notify(changed))
        return drifts

    async def reconcile_sliced(
        self,
        open_orders: Sequence[Mapping[str, Any]] | None,
        positions: Sequence[Mapping[str, Any]] | None,
        accounts: Mapping[str, Any] | None,
        notifications: Sequence[Mapping[str, Any]] | None = None,
        *,
        current: Callable[[], bool] = lambda: True,
    ) -> list[Drift] | None:
        """`reconcile` in slices: REST's orders parsed a slice at a time; then, if `current()` still says
        the answers are the newest truth (no stream change came meanwhile), adopted at once; then told to
        the observer a slice at a time. None: not adopted (`current()` said no)."""
        rest = None if open_orders is None else await sliced(self._parse_orders(open_orders, _rest_order))
        if not current():
            return None
        drifts, changed = self._adopt(rest, positions, accounts, notifications, settling=True)
        await self._notify_sliced(changed)
        return drifts

    def _adopt(
        self,
        rest: dict[str, OpenOrder] | None,
        positions: Sequence[Mapping[str, Any]] | None,
        accounts: Mapping[str, Any] | None,
        notifications: Sequence[Mapping[str, Any]] | None,
        *,
        settling: bool = False,
    ) -> tuple[list[Drift], list[str]]:
        """REST's picture adopted in one synchronous step: the drifts, and the orders the observer is yet
        to be told of (positions are told here: there are few)."""
        drifts: list[Drift] = []
        changed: list[str] = []
        if rest is not None:
            drifts.extend(_order_drift(self._orders, rest))
            changed = self._swap_settling(rest) if settling else self._swap_orders(rest)
        if positions is not None:
            rest_positions = {p.symbol: p for p in (_rest_position(r) for r in positions) if p is not None}
            for symbol, position in rest_positions.items():  # the feed's marks and PnL are newer detail
                mine = self._positions.get(symbol)
                if mine is not None and mine.size == position.size:
                    rest_positions[symbol] = replace(
                        position,
                        mark_price=mine.mark_price,
                        unrealized_pnl=position.unrealized_pnl or mine.unrealized_pnl,
                    )
            drifts.extend(_position_drift(self._positions, rest_positions))
            for symbol in self._positions.keys() - rest_positions.keys():
                self._settled(self._positions[symbol])
            touched = {*self._positions, *self._entries, *rest_positions}
            self._positions = rest_positions
            self._entries = {
                s: (p.size, p.entry_price) for s, p in rest_positions.items() if p.entry_price is not None
            }
            for symbol in sorted(touched):
                self._position_changed(symbol)
        if accounts is not None:
            flex = accounts.get("flex")
            if isinstance(flex, Mapping):
                rest_balances = Balances(
                    portfolio_value=number(flex.get("portfolioValue")),
                    available_margin=number(flex.get("availableMargin")),
                    initial_margin=number(flex.get("initialMargin")),
                    maintenance_margin=number(flex.get("maintenanceMargin")),
                    unrealized_pnl=number(flex.get("totalUnrealized", flex.get("pnl"))),
                )
                self._balances = rest_balances
                self._sorted = None
        if notifications is not None:
            for notice in (_rest_notice(r) for r in notifications):
                if notice is not None and notice.key not in self._notices:
                    self._add_notice(notice)
            self._prune_notices()
        self._changed()
        return drifts, changed


def _add(table: dict[str, Decimal], symbol: str, amount: Decimal) -> None:
    if amount or symbol in table:
        table[symbol] = table.get(symbol, ZERO) + amount


def _order_drift(mine: Mapping[str, OpenOrder], rest: Mapping[str, OpenOrder]) -> list[Drift]:
    drifts: list[Drift] = []
    missing = rest.keys() - mine.keys()
    extra = mine.keys() - rest.keys()
    if missing:
        drifts.append(Drift("open_orders", f"{len(missing)} open at the exchange the stream had not shown"))
    if extra:
        drifts.append(Drift("open_orders", f"{len(extra)} shown open that the exchange no longer has"))
    changed = [i for i in mine.keys() & rest.keys() if mine[i].remaining != rest[i].remaining]
    if changed:
        drifts.append(Drift("open_orders", f"{len(changed)} with another remaining size at the exchange"))
    return drifts


def _position_drift(mine: Mapping[str, Position], rest: Mapping[str, Position]) -> list[Drift]:
    differing = sorted(
        s
        for s in set(mine) | set(rest)
        if (mine[s].size if s in mine else ZERO) != (rest[s].size if s in rest else ZERO)
    )
    if not differing:
        return []
    shown = ", ".join(
        f"{s} {mine[s].size if s in mine else 0} -> {rest[s].size if s in rest else 0}" for s in differing[:5]
    )
    return [Drift("positions", shown)]


# ---- reading Kraken's shapes ------------------------------------------------------------------------------


def _order(raw: Any) -> OpenOrder | None:
    """An order of the open_orders feed; None (logged) when it lacks what the picture needs."""
    if not isinstance(raw, Mapping):
        return None
    order_id, symbol = _text(raw.get("order_id")), _text(raw.get("instrument"))
    remaining = number(raw.get("qty"))
    direction = raw.get("direction")
    if order_id is None or symbol is None or remaining is None or direction not in (0, 1):
        log.warning("stream_order_unreadable", order_id=order_id, fields=sorted(str(k) for k in raw)[:20])
        return None
    stop = number(raw.get("stop_price"))
    limit = number(raw.get("limit_price"))  # a stop without a limit price comes as limit_price 0
    return OpenOrder(
        order_id=order_id,
        symbol=symbol.upper(),
        side="buy" if direction == 0 else "sell",
        remaining=remaining,
        filled=number(raw.get("filled")) or ZERO,
        order_type=_text(raw.get("type")),
        limit_price=limit if limit else None,
        stop_price=stop if stop else None,
        reduce_only=raw.get("reduce_only") is True,
        cli_ord_id=_text(raw.get("cli_ord_id")),
    )


def _rest_order(raw: Any) -> OpenOrder | None:
    """An order of REST openorders."""
    if not isinstance(raw, Mapping):
        return None
    order_id, symbol = _text(raw.get("order_id")), _text(raw.get("symbol"))
    remaining = number(raw.get("unfilledSize"))
    side = raw.get("side")
    if order_id is None or symbol is None or remaining is None or side not in ("buy", "sell"):
        return None
    return OpenOrder(
        order_id=order_id,
        symbol=symbol.upper(),
        side=str(side),
        remaining=remaining,
        filled=number(raw.get("filledSize")) or ZERO,
        order_type=_text(raw.get("orderType")),
        limit_price=number(raw.get("limitPrice")),
        stop_price=number(raw.get("stopPrice")),
        reduce_only=raw.get("reduceOnly") is True,
        cli_ord_id=_text(raw.get("cliOrdId")),
    )


def _rest_position(raw: Any) -> Position | None:
    if not isinstance(raw, Mapping):
        return None
    symbol, size = _text(raw.get("symbol")), number(raw.get("size"))
    if symbol is None or size is None or raw.get("side") not in ("long", "short") or size == 0:
        return None
    signed = size if raw.get("side") == "long" else -size
    return Position(symbol.upper(), signed, number(raw.get("price")), None, number(raw.get("unrealizedPnl")))


def _fill(raw: Mapping[str, Any]) -> Fill | None:
    fill_id, symbol = _text(raw.get("fill_id")), _text(raw.get("instrument"))
    size, price, at = number(raw.get("qty")), number(raw.get("price")), _seconds(raw.get("time"))
    if (
        fill_id is None
        or symbol is None
        or size is None
        or price is None
        or at is None
        or not isinstance(raw.get("buy"), bool)
    ):
        log.warning("stream_fill_unreadable", fill_id=fill_id)
        return None
    return Fill(
        fill_id=fill_id,
        order_id=_text(raw.get("order_id")),
        cli_ord_id=_text(raw.get("cli_ord_id")),
        symbol=symbol.upper(),
        side="buy" if raw["buy"] else "sell",
        size=size,
        price=price,
        fee=number(raw.get("fee_paid")) or ZERO,
        fill_type=_text(raw.get("fill_type")),
        time=at,
        fee_currency=_text(raw.get("fee_currency")),
    )


def _notice(raw: Any) -> Notice | None:
    if not isinstance(raw, Mapping):
        return None
    note = str(raw.get("note") or "")[:500]
    effective = _seconds(raw.get("effective_time"))
    key = f"{raw.get('type')}|{effective}|{note}"  # REST's notices have no id: one key for both
    downtime = number(raw.get("expected_downtime_minutes"))
    return Notice(
        key=key,
        type=str(raw.get("type") or "general")[:32],
        priority=str(raw.get("priority") or "low")[:16],
        note=note,
        effective_time=effective,
        expected_downtime_minutes=None if downtime is None else float(downtime),
    )


def _rest_notice(raw: Any) -> Notice | None:
    """REST notifications: camelCase, ISO effectiveTime, no id."""
    if not isinstance(raw, Mapping):
        return None
    effective: float | None
    try:
        effective = parse_iso(str(raw.get("effectiveTime")))
    except ValueError:
        effective = None
    note = str(raw.get("note") or "")[:500]
    downtime = number(raw.get("expectedDowntimeMinutes"))
    return Notice(
        key=f"{raw.get('type')}|{effective}|{note}",
        type=str(raw.get("type") or "general")[:32],
        priority=str(raw.get("priority") or "low")[:16],
        note=note,
        effective_time=effective,
        expected_downtime_minutes=None if downtime is None else float(downtime),
    )
