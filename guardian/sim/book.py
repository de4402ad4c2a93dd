"""Running figures over the simulator's resting orders, so that an order costs the same whether 5 or
5,000 rest.

The exchange (`guardian.sim.exchange`) is the one owner: after every change to an order it holds (the
order rests, fills, is edited, fires, leaves the book) it calls `OrderBook.sync(account, order)`, and
nothing else writes here. The book remembers what each resting order contributed when it was last
synced, takes exactly that back and adds what the order holds now, so no figure drifts. It keeps (the
index from cliOrdId to the latest order is the account's own, `Account.by_cli`):

- per account and symbol, what the margin of the open orders is computed from (`Exposure`): the sum of
  unfilled size times limit price (a linear contract's value), the sum of unfilled size over limit price
  (an inverse contract's, for inverse contracts only), and the unfilled size of orders without a limit price (margined at the
  mark); reduce-only orders hold no margin. The sums are exact (the quotients to 100 digits); the
  contract size and the leverage are applied when read;
- per account, symbol and side, the account's own resting limit prices in order: the self-fill check
  reads the best one;
- per symbol and side, every account's resting limit orders in price order, so that a price move visits
  only those that now cross; per symbol, price watched and direction, the stop and take-profit orders in
  the order of their trigger level, so that only those whose level was reached are visited; the trailing
  stops, whose level follows the price, in a small set per symbol that every move visits.

Each resting order has a `Key`: its account's place among the accounts, then its place in the sequence
of orders that rested. Visiting orders in key order is visiting them as a walk over every account's open
orders would.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardian.sim.exchange import Account, Order
    from guardian.sim.market import Quote

Key = tuple[int, int]  # (the account's place among the accounts, the order's place in the rest sequence)
Row = tuple[Decimal, int, int]  # (price, *key): a ladder's entry
ZERO = Decimal(0)
# The margin sums are kept exactly: this is wide enough that adding and taking back the figures of any
# order the exchange accepts never rounds, so a sum always equals the one computed afresh.
EXACT = Context(prec=100)
# The price a trigger order watches, by its triggerSignal (spot is python-kraken-sdk's name for index).
WATCHED = {"mark": "mark", "index": "index", "spot": "index", "last": "last"}
RISE, FALL = "rise", "fall"  # fires when the price reaches its level from below / from above


def trigger_direction(order: Order) -> str:
    """A stop fires as the price moves against the order (a buy stop as it rises), a take-profit as it
    moves in its favour."""
    if order.order_type == "stp":
        return RISE if order.side == "buy" else FALL
    return FALL if order.side == "buy" else RISE


def _price(row: Row) -> Decimal:
    return row[0]


class Ladder:
    """Rows sorted by price, then key; adding and removing one is a bisection and a memmove."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        insort(self.rows, row)

    def remove(self, row: Row) -> None:
        at = bisect_left(self.rows, row)
        if at == len(self.rows) or self.rows[at] != row:
            raise KeyError(row)
        del self.rows[at]

    def from_price(self, price: Decimal) -> list[Row]:
        """Rows at `price` or above."""
        return self.rows[bisect_left(self.rows, price, key=_price) :]

    def to_price(self, price: Decimal) -> list[Row]:
        """Rows at `price` or below."""
        return self.rows[: bisect_right(self.rows, price, key=_price)]

    def above_to(self, low: Decimal, high: Decimal) -> list[Row]:
        """Rows above `low`, up to `high` included."""
        return self.rows[bisect_right(self.rows, low, key=_price) : bisect_right(self.rows, high, key=_price)]

    def from_below(self, low: Decimal, high: Decimal) -> list[Row]:
        """Rows from `low` included, below `high`."""
        return self.rows[bisect_left(self.rows, low, key=_price) : bisect_left(self.rows, high, key=_price)]

    def lowest(self) -> Decimal | None:
        return self.rows[0][0] if self.rows else None

    def highest(self) -> Decimal | None:
        return self.rows[-1][0] if self.rows else None


@dataclass(slots=True)
class Exposure:
    """What the margin of one account's open orders in one symbol is computed from."""

    notional: Decimal = ZERO  # sum of unfilled size x limit price
    unpriced: Decimal = ZERO  # sum of unfilled size of the orders without a limit price (at the mark)
    orders: int = 0
    reciprocal: Decimal = ZERO  # sum of unfilled size / limit price (what an inverse contract's is from)


@dataclass(slots=True)
class Resting:
    """A resting order and what it contributed to the figures when it was last synced."""

    key: Key
    account: Account
    order: Order
    margin: (
        tuple[Decimal, Decimal, Decimal] | None
    )  # (notional, unpriced, reciprocal) added; None: reduce-only
    limit: Decimal | None  # its price on the limit ladders (a resting limit order)
    trigger: tuple[str, str, Decimal] | None  # (price watched, direction, level): a stop or take-profit
    trailing: bool  # a trailing stop that has not fired


@dataclass(slots=True)
class _AccountFigures:
    exposure: dict[str, Exposure] = field(default_factory=dict)  # symbol ->
    limits: dict[tuple[str, str], Ladder] = field(default_factory=dict)  # (symbol, side) -> own limits


@dataclass(slots=True)
class _SymbolBook:
    limits: dict[str, Ladder] = field(default_factory=lambda: {"buy": Ladder(), "sell": Ladder()})
    triggers: dict[tuple[str, str], Ladder] = field(default_factory=dict)  # (watched, direction) ->
    trailing: dict[Key, None] = field(default_factory=dict)  # an insertion-ordered set


def _ladder(ladders: dict[tuple[str, str], Ladder], name: tuple[str, str]) -> Ladder:
    ladder = ladders.get(name)
    if ladder is None:
        ladder = ladders[name] = Ladder()
    return ladder


def _contribution(acct: Account, order: Order, key: Key) -> Resting:
    margin: tuple[Decimal, Decimal, Decimal] | None = None
    if not order.reduce_only:  # priced as the margin is: at the limit price, or the mark without one
        if order.limit_price:
            margin = (
                EXACT.multiply(order.unfilled, order.limit_price),
                ZERO,
                EXACT.divide(order.unfilled, order.limit_price) if order.inverse else ZERO,
            )
        else:
            margin = (ZERO, order.unfilled, ZERO)
    limit = trigger = None
    trailing = False
    if not order.is_trigger:
        limit = order.limit_price
    elif order.order_type == "trailing_stop":
        trailing = True
    else:
        assert order.stop_price is not None
        trigger = (WATCHED[order.trigger_signal], trigger_direction(order), order.stop_price)
    return Resting(key, acct, order, margin, limit, trigger, trailing)


class OrderBook:
    """The running figures over every account's resting orders; `sync` is the only way in."""

    def __init__(self) -> None:
        self._sequence = itertools.count()
        self._resting: dict[str, Resting] = {}  # order_id ->
        self._by_key: dict[Key, Resting] = {}
        self._accounts: dict[str, _AccountFigures] = {}
        self._symbols: dict[str, _SymbolBook] = {}

    def __len__(self) -> int:
        return len(self._resting)

    # ---- the one writer -------------------------------------------------------------------------------
    def sync(self, acct: Account, order: Order) -> None:
        """`order` changed (or rested, or left): hold what it holds now, if it still rests."""
        old = self._resting.pop(order.order_id, None)
        if old is not None:
            self._take_back(old)
        if order.state == "open" and order.order_id in acct.open_ids:
            key = old.key if old is not None else (acct.index, next(self._sequence))
            self._add(_contribution(acct, order, key))

    def _add(self, item: Resting) -> None:
        order = item.order
        self._resting[order.order_id] = item
        self._by_key[item.key] = item
        mine = self._accounts.get(item.account.name)
        if mine is None:
            mine = self._accounts[item.account.name] = _AccountFigures()
        book = self._symbols.get(order.symbol)
        if book is None:
            book = self._symbols[order.symbol] = _SymbolBook()
        if item.margin is not None:
            exposure = mine.exposure.get(order.symbol)
            if exposure is None:
                exposure = mine.exposure[order.symbol] = Exposure()
            exposure.notional = EXACT.add(exposure.notional, item.margin[0])
            exposure.unpriced = EXACT.add(exposure.unpriced, item.margin[1])
            exposure.reciprocal = EXACT.add(exposure.reciprocal, item.margin[2])
            exposure.orders += 1
        if item.limit is not None:
            row = (item.limit, *item.key)
            book.limits[order.side].add(row)
            _ladder(mine.limits, (order.symbol, order.side)).add(row)
        if item.trigger is not None:
            watched, direction, level = item.trigger
            _ladder(book.triggers, (watched, direction)).add((level, *item.key))
        if item.trailing:
            book.trailing[item.key] = None

    def _take_back(self, item: Resting) -> None:
        order = item.order
        del self._by_key[item.key]
        mine = self._accounts[item.account.name]
        book = self._symbols[order.symbol]
        if item.margin is not None:
            exposure = mine.exposure[order.symbol]
            exposure.orders -= 1
            if exposure.orders == 0:
                del mine.exposure[order.symbol]
            else:
                exposure.notional = EXACT.subtract(exposure.notional, item.margin[0])
                exposure.unpriced = EXACT.subtract(exposure.unpriced, item.margin[1])
                exposure.reciprocal = EXACT.subtract(exposure.reciprocal, item.margin[2])
        if item.limit is not None:
            row = (item.limit, *item.key)
            book.limits[order.side].remove(row)
            mine.limits[(order.symbol, order.side)].remove(row)
        if item.trigger is not None:
            watched, direction, level = item.trigger
            book.triggers[(watched, direction)].remove((level, *item.key))
        if item.trailing:
            del book.trailing[item.key]

    # ---- reads ----------------------------------------------------------------------------------------
    def exposure(self, acct: Account) -> Mapping[str, Exposure]:
        """Per symbol, what the margin of `acct`'s open orders is computed from (symbols without any
        margined order are left out)."""
        mine = self._accounts.get(acct.name)
        return mine.exposure if mine is not None else {}

    def best_limit(self, acct: Account, symbol: str, side: str) -> Decimal | None:
        """The best price among `acct`'s resting limit orders on `side` of `symbol`: the highest bid, the
        lowest offer (None when there is none)."""
        mine = self._accounts.get(acct.name)
        ladder = mine.limits.get((symbol, side)) if mine is not None else None
        if ladder is None:
            return None
        return ladder.highest() if side == "buy" else ladder.lowest()

    def due(self, quotes: Mapping[str, Quote]) -> list[tuple[Key, Resting]]:
        """The resting orders a visit may act on at these prices: limits that cross, stops and
        take-profits whose level was reached, and every trailing stop (its level follows the price)."""
        rows: list[Row] = []
        for symbol, book in self._symbols.items():
            quote = quotes[symbol]
            rows += book.limits["buy"].from_price(quote.ask)
            rows += book.limits["sell"].to_price(quote.bid)
            for (watched, direction), ladder in book.triggers.items():
                if ladder.rows:
                    price = quote.signal(watched)
                    rows += ladder.to_price(price) if direction == RISE else ladder.from_price(price)
        found = self._items(rows)
        for book in self._symbols.values():
            found += ((key, self._by_key[key]) for key in book.trailing)
        return found

    def reached_by_last(self, symbol: str, was: Decimal, now: Decimal) -> list[tuple[Key, Resting]]:
        """Stops and take-profits on the last price of `symbol` whose level it passed on its way from
        `was` to `now` (reaching it included)."""
        book = self._symbols.get(symbol)
        if book is None:
            return []
        if now > was:
            rising = book.triggers.get(("last", RISE))
            return self._items(rising.above_to(was, now)) if rising is not None else []
        falling = book.triggers.get(("last", FALL))
        return self._items(falling.from_below(now, was)) if falling is not None else []

    def _items(self, rows: Iterable[Row]) -> list[tuple[Key, Resting]]:
        items = []
        for _, account, sequence in rows:
            key = (account, sequence)
            items.append((key, self._by_key[key]))
        return items
