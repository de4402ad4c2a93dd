"""The exposure guard's running figures: what one account holds and has working, kept up to date as each
change arrives, so that judging an order costs the same with 5,000 orders resting as with 5.

What counts is the worst case (docs/exposure.md):
- every open order the stream shows, at its remaining size, and every order let out that the stream has
  not shown yet (a *hold*); an order both shown and held counts once, at the larger of the two sizes;
- each position as read twice, from the positions feed and from the fills applied: the rules take the
  lower or the higher reading, whichever is worse for them.

`Ledger` is the one owner of those figures (the event loop's). It is told of every change: the account
state of each open order and position that changed (`order_changed`, `position_changed`), the exposure
book of each hold taken, changed or ended (`hold`, `held_changed`, `release`), the stream of each order
whose bot became known (`learned`), the marks of each mark that moved (`mark_changed`). A change takes
one entry's old contribution out of the figures and puts its new one in: O(1), but for a new price level
(a bisection) and a mark that moves (the walk crosses only the price levels between the two marks). The
rules read the figures; nothing on an order's way walks the orders.

`tests/test_ledger.py` holds every figure equal to the plain computation from the whole book after random
sequences of changes.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Protocol, TypeVar

from guardian.contracts import PLAIN, Contract
from guardian.stream.state import OpenOrder

ZERO: Final = Decimal(0)
K = TypeVar("K")


class MarkSource(Protocol):
    """The marks the ledger prices notional with (`guardian.gateway.marks.Marks`)."""

    def quote(self, symbol: str) -> tuple[Decimal, float] | None: ...
    def now(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Working:
    """What one order (open at the exchange, held, or both) adds to the account's exposure."""

    symbol: str
    side: str  # buy | sell
    remaining: Decimal
    reduce_only: bool
    price: Decimal | None  # its limit or stop price; None: it trades at about the mark
    bot: str | None
    key: str | None  # order id (or cliOrdId) when known: how an edit names it


@dataclass(slots=True, eq=False)
class Held:
    """One order let out whose effect the stream may not show yet."""

    order: Working
    cli_ord_id: str | None
    order_id: str | None = None
    tag: str | None = None  # a batch send item's order_tag, to find its status in the answer
    edit: bool = False  # an edit of the open order `order_id`
    answered: bool = False
    settle_at: int | None = None  # released once the stream has completed this many reconciliations
    seq: int = 0  # taken in this order (an open order's holds are kept in it)

    @property
    def keys(self) -> tuple[str, ...]:
        """Its order id, cliOrdId and the key it was sent under, those it has (a repeat is harmless: the
        indexes are sets)."""
        return tuple(filter(None, (self.order_id, self.cli_ord_id, self.order.key)))


@dataclass(slots=True, eq=False)
class Entry:
    """One order as it counts: open at the exchange (`order`), held (`holds`), or both. Three objects
    per resting order (this, its OpenOrder and what it counts as): the garbage collector walks every one."""

    order: OpenOrder | None
    holds: list[Held] | None = None  # oldest first; None while there are none
    owner: str | None = None  # the bot that placed it, once known
    counted: Working | None = None  # what it adds to the figures now


class Levels:
    """One symbol's orders that count for notional (not reduce-only), each at the higher of its price and
    the mark: the size and number of orders at each price level, the levels sorted, those without a price,
    and a cursor at the last mark with the running sums of the levels below it. Adding an order is a dict
    update (and a bisection for a new level); pricing at a new mark walks the levels between the two marks.
    (Sizes and counts are kept in dicts of plain numbers: the garbage collector does not walk those.)"""

    __slots__ = (
        "below",
        "below_size",
        "below_value",
        "counts",
        "mark",
        "n",
        "prices",
        "sizes",
        "total",
        "unpriced",
        "unpriced_n",
        "value",
    )

    def __init__(self) -> None:
        self.sizes: dict[Decimal, Decimal] = {}  # price -> the size of the orders at it
        self.counts: dict[Decimal, int] = {}  # price -> how many orders
        self.prices: list[Decimal] = []  # the keys of `sizes`, sorted
        self.unpriced = ZERO  # the size of the orders without a price
        self.unpriced_n = 0
        self.value = ZERO  # sum of price x size over the priced ones
        self.mark: Decimal | None = None
        self.below = 0  # prices[:below] are below `mark`
        self.below_size = ZERO
        self.below_value = ZERO
        self.n = 0  # orders
        self.total = ZERO  # the size of them all (an inverse contract's notional is its size)

    def add(self, price: Decimal | None, size: Decimal) -> None:
        self.n += 1
        self.total += size
        if price is None:
            self.unpriced += size
            self.unpriced_n += 1
            return
        count = self.counts.get(price)
        if count is None:
            bisect.insort(self.prices, price)
            self.sizes[price] = size
            self.counts[price] = 1
            if self.mark is not None and price < self.mark:
                self.below += 1
        else:
            self.sizes[price] += size
            self.counts[price] = count + 1
        self.value += price * size
        if self.mark is not None and price < self.mark:
            self.below_size += size
            self.below_value += price * size

    def remove(self, price: Decimal | None, size: Decimal) -> None:
        self.n -= 1
        self.total -= size
        if price is None:
            self.unpriced -= size
            self.unpriced_n -= 1
            return
        self.sizes[price] -= size
        count = self.counts[price] - 1
        self.value -= price * size
        lower = self.mark is not None and price < self.mark
        if lower:
            self.below_size -= size
            self.below_value -= price * size
        if count == 0:
            del self.sizes[price], self.counts[price]
            del self.prices[bisect.bisect_left(self.prices, price)]
            if lower:
                self.below -= 1
        else:
            self.counts[price] = count

    @property
    def needs_mark(self) -> bool:
        """Some order here has no price: without a mark the notional cannot be worked out."""
        return self.unpriced_n > 0

    def at(self, mark: Decimal) -> Decimal:
        """The notional with the mark at `mark`: sum of size x max(price, mark), the unpriced at the mark."""
        if mark != self.mark:
            self._move(mark)
        return self.value - self.below_value + mark * (self.below_size + self.unpriced)

    def _move(self, mark: Decimal) -> None:
        to = bisect.bisect_left(self.prices, mark)
        prices, sizes = self.prices, self.sizes
        while self.below < to:
            price = prices[self.below]
            size = sizes[price]
            self.below_size += size
            self.below_value += price * size
            self.below += 1
        while self.below > to:
            self.below -= 1
            price = prices[self.below]
            size = sizes[price]
            self.below_size -= size
            self.below_value -= price * size
        self.mark = mark


class Ledger:
    """One account's running figures. Single-threaded: the event loop's."""

    def __init__(
        self,
        marks: MarkSource | None = None,
        owner: Callable[[str | None, str | None], str | None] | None = None,
        contracts: Callable[[str], Contract | None] | None = None,
    ) -> None:
        self.marks = marks
        # Each symbol's contract (`guardian.contracts`): how a size and a price make USD. None: unknown,
        # and the gross notional cannot be worked out while the symbol counts. Without a list (the rules'
        # unit tests), every contract is linear of size 1.
        self.contract: Callable[[str], Contract | None] = contracts or _plain
        self.owner: Callable[[str | None, str | None], str | None] = owner or _nobody
        # The entries, and how they are found.
        self._shown: dict[str, Entry] = {}  # order id -> the entry of an open order
        self._cli: dict[str, str] = {}  # cliOrdId -> order id, of the open orders
        self._entry_of: dict[Held, Entry] = {}  # every hold -> the entry it counts in
        self._holds_by_key: dict[str, set[Held]] = {}  # order id / cliOrdId -> the holds with it
        # The figures.
        self.total = 0  # entries counted: open orders and holds not shown
        self._count: dict[str, int] = {}  # symbol -> entries
        self._bots: dict[str | None, int] = {}  # bot -> entries it placed
        self._side: dict[tuple[str, str], list[Decimal | int]] = {}  # (symbol, side) -> [size, entries]
        self._levels: dict[str, Levels] = {}  # symbol -> notional of its orders
        self._positions: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (lowest, highest) reading
        self._feed_marks: dict[str, Decimal] = {}  # the positions feed's marks, when no other is fresh
        # The gross notional: each symbol's part priced at the mark it was last worked out with.
        self._parts: dict[str, Decimal] = {}
        self._part_marks: dict[str, Decimal | None] = {}
        self._gross = ZERO
        self._dirty: set[str] = set()  # symbols whose part is to be worked out again
        self._blind: set[str] = set()  # symbols whose part needs a mark there is none of
        self._expiry: list[tuple[float, int, str]] = []  # heap: when each mark a part used goes stale
        self._versions: dict[str, int] = {}  # symbol -> the version of its entry in the heap that counts
        self._watched: dict[str, float] = {}  # symbol -> the staleness time its heap entry watches
        # While a large change (a snapshot, a reconciliation) is applied in slices, the figures are
        # between two pictures: the guard waits for `settled` before it judges.
        self.settling = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._seq = 0
        self.released: Callable[[Held], None] | None = None  # told of each hold that ends, however it ends

    # ---- readers: the figures ------------------------------------------------------------------------
    def count(self, symbol: str) -> int:
        return self._count.get(symbol, 0)

    def bot_count(self, bot: str | None) -> int:
        return self._bots.get(bot, 0)

    def side_size(self, symbol: str, side: str) -> Decimal:
        """The remaining size of the non-reduce-only orders on one side of one symbol."""
        found = self._side.get((symbol, side))
        return ZERO if found is None else Decimal(found[0])

    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The lowest and the highest reading of the signed position (0 when there is none)."""
        return self._positions.get(symbol, (ZERO, ZERO))

    def positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        return dict(self._positions)

    def symbols(self) -> set[str]:
        """Every symbol with an order counted or a position."""
        return {*self._count, *self._positions}

    def named(self, key: str, *, by: str | None = None) -> list[Entry]:
        """The entries an edit naming `key` (an order id or a cliOrdId) replaces: the open order with that
        id or cliOrdId, and the holds with it that the stream shows no order of yet. `by` ("order_id" or
        "cli_ord_id"): only what has `key` as that (a bot's cliOrdId may spell another order's id)."""
        found: list[Entry] = []
        if by == "order_id":
            order_id = key if key in self._shown else None
        elif by == "cli_ord_id":
            order_id = self._cli.get(key)
        else:
            order_id = key if key in self._shown else self._cli.get(key)
        if order_id is not None:
            found.append(self._shown[order_id])
        for held in self._holds_by_key.get(key, ()):
            if by is not None and getattr(held, by) != key:
                continue
            entry = self._entry_of.get(held)
            if entry is not None and entry.order is None:
                found.append(entry)
        return found

    def gross(self) -> tuple[Decimal, str | None]:
        """The gross notional in USD: every position at the mark, every order counted that is not
        reduce-only at the higher of its price and the mark, each as its contract counts it. With it, a
        symbol that needs a mark and has none, or whose contract is unknown (then the figure cannot be
        used), else None."""
        self._expire()
        if self._dirty:
            for symbol in self._dirty:
                self._reprice(symbol)
            self._dirty.clear()
        return self._gross, (min(self._blind) if self._blind else None)

    def mark(self, symbol: str) -> Decimal | None:
        """The mark notional is priced at: the fresh mark, else the positions feed's, else None."""
        found = self.marks.quote(symbol) if self.marks is not None else None
        return found[0] if found is not None else self._feed_marks.get(symbol)

    def price(self, symbol: str, price: Decimal | None) -> Decimal | None:
        """The higher of an order's own price and the mark (the worse for notional); None: neither."""
        mark = self.mark(symbol)
        if price is None:
            return mark
        return price if mark is None or price > mark else mark

    def value(self, symbol: str, size: Decimal, price: Decimal | None) -> Decimal | None:
        """USD notional of `size` contracts of an order at `price` (at the higher of it and the mark; an
        inverse contract's needs neither). None: the contract is unknown, or a price it needs is missing."""
        contract = self.contract(symbol)
        if contract is None:
            return None
        unit = contract.unit_value(None if contract.price_free else self.price(symbol, price))
        return None if unit is None else size * unit

    def working(self) -> list[Working]:
        """Every entry as it counts (a reader's copy: the tests, a snapshot; O(n))."""
        return [e.counted for e in self._entries() if e.counted is not None]

    def holds(self) -> list[Held]:
        return list(self._entry_of)

    def __len__(self) -> int:
        """Holds (orders let out that the stream has not shown, or shown smaller)."""
        return len(self._entry_of)

    # ---- settling: a large change applied in slices ---------------------------------------------------
    def begin_settling(self) -> None:
        self.settling += 1
        self._settled.clear()

    def end_settling(self) -> None:
        self.settling = max(0, self.settling - 1)
        if self.settling == 0:
            self._settled.set()

    async def settled(self) -> None:
        """Until no large change is half applied (at once, usually)."""
        while self.settling:
            await self._settled.wait()

    # ---- the account state's changes ------------------------------------------------------------------
    def order_changed(self, order_id: str, order: OpenOrder | None) -> None:
        """The stream (or REST) shows `order` open now; None: it is not open any more."""
        entry = self._shown.get(order_id)
        if order is None:
            if entry is None:
                return
            self._uncount(entry)
            del self._shown[order_id]
            assert entry.order is not None
            self._forget_cli(entry.order.cli_ord_id, order_id)
            holds, entry.holds = entry.holds or [], None
            for held in holds:  # not shown any more: each counts alone again (or with another order)
                del self._entry_of[held]
                self._place(held)
            return
        if entry is None:
            entry = self._shown[order_id] = Entry(order, owner=self.owner(order_id, order.cli_ord_id))
        else:
            self._uncount(entry)
            assert entry.order is not None
            if entry.order.cli_ord_id != order.cli_ord_id:
                self._forget_cli(entry.order.cli_ord_id, order_id)
                entry.owner = self.owner(order_id, order.cli_ord_id) or entry.owner
            entry.order = order
        if order.cli_ord_id:
            self._cli[order.cli_ord_id] = order_id
        for held in list(entry.holds or ()):  # its own holds, if its keys changed, and those that name it
            self._place(held)
        for key in (order_id, order.cli_ord_id):
            for held in list(self._holds_by_key.get(key, ()) if key else ()):
                self._place(held)
        self._recount(entry)

    def position_changed(
        self, symbol: str, feed: Decimal, fills: Decimal, feed_mark: Decimal | None = None
    ) -> None:
        """A position's two readings (the feed's and the fills'), and the feed's mark."""
        if feed == 0 and fills == 0:
            self._positions.pop(symbol, None)
        else:
            self._positions[symbol] = (min(feed, fills), max(feed, fills))
        if feed_mark is None:
            self._feed_marks.pop(symbol, None)
        else:
            self._feed_marks[symbol] = feed_mark
        self._dirty.add(symbol)

    def learned(self, keys: Iterable[str]) -> None:
        """The stream learned who placed these orders (order ids or cliOrdIds)."""
        for key in keys:
            for entry in self.named(key):
                if entry.order is None:
                    continue
                found = self.owner(entry.order.order_id, entry.order.cli_ord_id)
                if found is not None and found != entry.owner:
                    entry.owner = found
                    self._recount(entry)

    def mark_changed(self, symbol: str) -> None:
        """A mark moved, appeared or went: the symbol's part is priced again when next read."""
        if symbol in self._levels or symbol in self._positions:
            self._dirty.add(symbol)

    contract_changed = mark_changed  # a contract listed, changed or gone: likewise

    # ---- holds ----------------------------------------------------------------------------------------
    def hold(self, held: Held) -> None:
        self._seq += 1
        held.seq = self._seq
        for key in held.keys:
            self._holds_by_key.setdefault(key, set()).add(held)
        self._place(held)

    def held_changed(self, held: Held, keys_before: tuple[str, ...]) -> None:
        """`held` changed: its size (a fill), or its keys (the answer named its order id)."""
        if held not in self._entry_of:
            return
        keys = held.keys
        if keys != keys_before:
            for key in keys_before:
                self._unkey_hold(key, held)
            for key in keys:
                self._holds_by_key.setdefault(key, set()).add(held)
        self._place(held)
        entry = self._entry_of.get(held)
        if entry is not None:  # (placing it may have ended it: the stream shows it as large)
            self._recount(entry)

    def release(self, held: Held) -> None:
        """The hold ends (its effect is shown, or it never reached the exchange)."""
        entry = self._entry_of.get(held)
        if entry is None:
            return
        for key in held.keys:
            self._unkey_hold(key, held)
        self._detach(held, entry)
        if self.released is not None:
            self.released(held)

    def holding(self, held: Held) -> bool:
        return held in self._entry_of

    def holds_named(self, key: str) -> list[Held]:
        return list(self._holds_by_key.get(key, ()))

    # ---- the machinery --------------------------------------------------------------------------------
    def _entries(self) -> Iterator[Entry]:
        yield from self._shown.values()
        for entry in self._entry_of.values():
            if entry.order is None:
                yield entry

    def _target(self, held: Held) -> str | None:
        """The order id of the open order `held` is of, if the stream shows it."""
        for key in held.keys:
            if key in self._shown:
                return key
            found = self._cli.get(key)
            if found is not None:
                return found
        return None

    def _place(self, held: Held) -> None:
        """Count `held` with the open order it is of, or alone while the stream shows none."""
        target = self._target(held)
        entry = self._entry_of.get(held)
        if entry is not None:
            where = entry.order.order_id if entry.order is not None else None
            if where == target:
                return
            self._detach(held, entry)
        if target is None:
            alone = Entry(None, [held])
            self._entry_of[held] = alone
            self._recount(alone)
        else:
            shown = self._shown[target]
            if shown.holds is None:
                shown.holds = []
            bisect.insort(shown.holds, held, key=_seq)  # oldest first: whose bot counts is not chance
            self._entry_of[held] = shown
            self._recount(shown)

    def _detach(self, held: Held, entry: Entry) -> None:
        assert entry.holds is not None
        entry.holds.remove(held)
        del self._entry_of[held]
        if entry.order is None:
            self._uncount(entry)
            return
        if not entry.holds:
            entry.holds = None
        self._recount(entry)

    def _unkey_hold(self, key: str, held: Held) -> None:
        found = self._holds_by_key.get(key)
        if found is not None:
            found.discard(held)
            if not found:
                del self._holds_by_key[key]

    def _forget_cli(self, cli: str | None, order_id: str) -> None:
        if cli and self._cli.get(cli) == order_id:
            del self._cli[cli]

    def _recount(self, entry: Entry) -> None:
        """Take the entry's old contribution out and put its new one in."""
        self._uncount(entry)
        order = entry.order
        if order is None:
            assert entry.holds
            entry.counted = entry.holds[0].order
        else:
            remaining, bot = order.remaining, entry.owner
            for held in list(entry.holds or ()):
                if held.answered and order.remaining >= held.order.remaining:
                    # The stream shows it at least as large: the open order counts it from now on.
                    entry.owner = entry.owner or held.order.bot
                    bot = bot or held.order.bot
                    for key in held.keys:
                        self._unkey_hold(key, held)
                    assert entry.holds is not None
                    entry.holds.remove(held)
                    del self._entry_of[held]
                    if self.released is not None:
                        self.released(held)
                    continue
                remaining = max(remaining, held.order.remaining)
                bot = bot or held.order.bot
            if not entry.holds:
                entry.holds = None
            price = order.limit_price if order.limit_price is not None else order.stop_price
            entry.counted = Working(
                order.symbol, order.side, remaining, order.reduce_only, price, bot, order.order_id
            )
        self._add(entry.counted)

    def _uncount(self, entry: Entry) -> None:
        if entry.counted is not None:
            self._subtract(entry.counted)
            entry.counted = None

    def _add(self, w: Working) -> None:
        self.total += 1
        self._count[w.symbol] = self._count.get(w.symbol, 0) + 1
        self._bots[w.bot] = self._bots.get(w.bot, 0) + 1
        if w.reduce_only:
            return
        side = self._side.get((w.symbol, w.side))
        if side is None:
            self._side[(w.symbol, w.side)] = [w.remaining, 1]
        else:
            side[0] += w.remaining
            side[1] += 1
        levels = self._levels.get(w.symbol)
        if levels is None:
            levels = self._levels[w.symbol] = Levels()
        levels.add(w.price, w.remaining)
        self._priced(w, 1)

    def _subtract(self, w: Working) -> None:
        self.total -= 1
        _decrement(self._count, w.symbol)
        _decrement(self._bots, w.bot)
        if w.reduce_only:
            return
        side = self._side[(w.symbol, w.side)]
        side[0] -= w.remaining
        side[1] -= 1
        if side[1] == 0:
            del self._side[(w.symbol, w.side)]
        levels = self._levels[w.symbol]
        levels.remove(w.price, w.remaining)
        if levels.n == 0:
            del self._levels[w.symbol]
        self._priced(w, -1)

    def _priced(self, w: Working, sign: int) -> None:
        """An order in or out of its symbol's part of the gross notional: at the mark the part was priced
        with, added or taken away at once (O(1)); priced again from its levels where that cannot be (no
        part yet, a missing mark, a part already to be priced again)."""
        symbol = w.symbol
        if symbol in self._dirty or symbol not in self._parts:
            self._dirty.add(symbol)
            return
        contract = self.contract(symbol)
        if contract is None:  # (gone since the part was priced: the list's change reprices it)
            self._dirty.add(symbol)
            return
        if contract.price_free:
            value = w.remaining * contract.contract_size
        else:
            mark = self._part_marks[symbol]
            if mark is None:
                if w.price is None:  # needs a mark there is none of
                    self._dirty.add(symbol)
                    return
                value = w.remaining * w.price * contract.contract_size
            else:
                value = w.remaining * (mark if w.price is None or w.price < mark else w.price)
                value *= contract.contract_size
        if sign < 0:
            value = -value
        self._parts[symbol] += value
        self._gross += value

    def _expire(self) -> None:
        """Symbols whose part was priced at a mark that has gone stale since are priced again."""
        if not self._expiry or self.marks is None:
            return
        now = self.marks.now()
        while self._expiry and self._expiry[0][0] < now:
            _, version, symbol = heapq.heappop(self._expiry)
            if self._versions.get(symbol) == version:
                self._watched.pop(symbol, None)
                self._dirty.add(symbol)

    def _reprice(self, symbol: str) -> None:
        self._gross -= self._parts.pop(symbol, ZERO)
        self._part_marks.pop(symbol, None)
        self._blind.discard(symbol)
        levels = self._levels.get(symbol)
        low, high = self._positions.get(symbol, (ZERO, ZERO))
        size = max(abs(low), abs(high))
        if levels is None and not size:
            self._versions.pop(symbol, None)
            self._watched.pop(symbol, None)
            return
        contract = self.contract(symbol)
        if contract is None:
            self._blind.add(symbol)
            return
        if contract.price_free:  # face value: no mark needed
            part = ((levels.total if levels is not None else ZERO) + size) * contract.contract_size
            self._parts[symbol] = part
            self._part_marks[symbol] = None
            self._gross += part
            return
        found = self.marks.quote(symbol) if self.marks is not None else None
        if found is not None:
            mark: Decimal | None = found[0]
            if self._watched.get(symbol) != found[1]:  # a mark not watched yet: when it goes stale
                version = self._versions[symbol] = self._versions.get(symbol, 0) + 1
                self._watched[symbol] = found[1]
                heapq.heappush(self._expiry, (found[1], version, symbol))
        else:
            mark = self._feed_marks.get(symbol)
        if mark is None:
            if size or (levels is not None and levels.needs_mark):
                self._blind.add(symbol)
                return
            part = levels.value if levels is not None else ZERO
        else:
            part = (levels.at(mark) if levels is not None else ZERO) + size * mark
        if contract.contract_size != 1:
            part *= contract.contract_size
        self._parts[symbol] = part
        self._part_marks[symbol] = mark
        self._gross += part


def _decrement(table: dict[K, int], key: K) -> None:
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]


def _seq(held: Held) -> int:
    return held.seq


def _plain(symbol: str) -> Contract:
    return PLAIN


def _nobody(order_id: str | None, cli_ord_id: str | None) -> str | None:
    return None
