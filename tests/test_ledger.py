"""The exposure guard's running figures (`guardian.gateway.ledger.Ledger`, issue 20) against their
brute-force twin: the plain computation from the whole book.

Hypothesis drives an `AccountState` (Kraken-shaped stream messages, snapshots, REST reconciliations) and
an exposure `Book` (holds taken, answered, shrunk by fills, ended by closes and reconciliations) through
random sequences, with marks that move and go stale, owners learned late, edits naming orders by id or
cliOrdId. After every step every figure the rules read equals what `Twin` counts from everything at
once: orders per symbol, per bot and in all; each side's size; each position's two readings; the gross
notional (or the symbol whose missing mark makes it unknown); and the figures an edit or a batch sees
(what it replaces left out)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.config import GuardConfig
from guardian.gateway import exposure
from guardian.gateway.ledger import Held, Ledger, Levels, Working
from guardian.gateway.marks import Marks
from guardian.gateway.refusal import Refusal
from guardian.stream.state import SETTLE_IN_SLICES, AccountState, Fill, OpenOrder, OrderClosed

ZERO = Decimal(0)
SYMBOLS = ("PF_AUSD", "PF_BUSD", "PF_CUSD")
BOTS = ("bot-a", "bot-b")
PRICES = [Decimal(p) for p in ("95", "99.5", "100", "100.5", "105")]
SIZES = ["0.5", "1", "2", "3.25"]
MAX_AGE_S = 10.0


@dataclass
class TwinHold:
    """A hold as the plain model keeps it."""

    held: Held  # the Book's own object, so that the steps can name it; only its identity is used
    working: Working
    cli: str | None
    order_id: str | None
    edit: bool
    answered: bool = False
    settle_at: int | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for k in (self.order_id, self.cli, self.working.key) if k))


@dataclass
class Twin:
    """The plain model: the holds' lives as docs/exposure.md tells them, and every figure counted from
    the whole book at once."""

    holds: list[TwinHold] = field(default_factory=list)
    owner_of: dict[str, str] = field(default_factory=dict)  # open order id -> its bot, once looked up
    sticky: dict[str, str] = field(default_factory=dict)  # open order id -> the bot of a hold it absorbed

    def shown_for(self, orders: dict[str, OpenOrder], hold: TwinHold) -> str | None:
        for key in hold.keys:
            if key in orders:
                return key
            for order_id, order in orders.items():
                if order.cli_ord_id == key:
                    return order_id
        return None

    def settle(self, orders: dict[str, OpenOrder], owners: dict[str, str]) -> None:
        """After every step: who placed each open order, as far as known (an order keeps the bot it was
        found to have while it stays open); then the answered holds the stream shows at least as large
        end: the open order counts them (and remembers their bot, while it is open, until the stream
        learns who placed it)."""
        for table in (self.owner_of, self.sticky):
            for order_id in [i for i in table if i not in orders]:
                del table[order_id]
        for order_id, order in orders.items():
            found = _owner(owners, order)
            if found is not None:
                self.owner_of[order_id] = found
        for hold in list(self.holds):
            found = self.shown_for(orders, hold)
            if found is not None and hold.answered and orders[found].remaining >= hold.working.remaining:
                self.holds.remove(hold)
                if found not in self.owner_of and found not in self.sticky and hold.working.bot:
                    self.sticky[found] = hold.working.bot

    def working(
        self, orders: dict[str, OpenOrder], owners: dict[str, str]
    ) -> list[tuple[Working, tuple[str, ...]]]:
        """Every order as it counts, with the keys an edit may name it by."""
        matched: dict[str, list[TwinHold]] = {}
        found: list[tuple[Working, tuple[str, ...]]] = []
        for hold in self.holds:
            target = self.shown_for(orders, hold)
            if target is None:
                found.append((hold.working, hold.keys))
            else:
                matched.setdefault(target, []).append(hold)
        for order_id, order in orders.items():
            remaining = order.remaining
            bot = self.owner_of.get(order_id) or self.sticky.get(order_id)
            for hold in matched.get(order_id, ()):
                remaining = max(remaining, hold.working.remaining)
                bot = bot or hold.working.bot
            price = order.limit_price if order.limit_price is not None else order.stop_price
            keys = tuple(dict.fromkeys(k for k in (order_id, order.cli_ord_id) if k))
            found.append(
                (Working(order.symbol, order.side, remaining, order.reduce_only, price, bot, order_id), keys)
            )
        return found


def _owner(owners: dict[str, str], order: OpenOrder) -> str | None:
    return owners.get(order.order_id) or (owners.get(order.cli_ord_id) if order.cli_ord_id else None)


def plain_gross(
    working: list[Working], positions: dict[str, tuple[Decimal, Decimal]], mark: Any
) -> tuple[Decimal, str | None]:
    total, blind = ZERO, set()
    for symbol, (low, high) in positions.items():
        size = max(abs(low), abs(high))
        if size:
            found = mark(symbol)
            if found is None:
                blind.add(symbol)
            else:
                total += size * found
    for w in working:
        if w.reduce_only:
            continue
        found = mark(w.symbol)
        if w.price is None and found is None:
            blind.add(w.symbol)
            continue
        total += w.remaining * max(p for p in (w.price, found) if p is not None)
    return total, (min(blind) if blind else None)


ORDER = st.tuples(
    st.just("order"),
    st.integers(0, 5),  # which order: a new one, or a change of one open
    st.sampled_from(SYMBOLS),
    st.integers(0, 1),  # direction
    st.sampled_from(SIZES),
    st.one_of(st.none(), st.sampled_from(PRICES)),
    st.booleans(),  # reduce-only
    st.booleans(),  # with a cliOrdId
)
STEP = st.one_of(
    ORDER,
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("snapshot"), st.lists(ORDER, max_size=6)),
    st.tuples(
        st.just("reconcile"),
        st.lists(ORDER, max_size=6),
        st.sampled_from(SYMBOLS),
        st.sampled_from(["0", "2", "-1.5"]),
    ),
    st.tuples(
        st.just("position"), st.sampled_from(SYMBOLS), st.sampled_from(["0", "-2", "1.5", "4"]), st.booleans()
    ),
    st.tuples(st.just("fill"), st.integers(0, 5), st.sampled_from(["0.5", "1"]), st.integers(0, 1)),
    st.tuples(st.just("owner"), st.integers(0, 5), st.sampled_from(BOTS), st.booleans()),
    st.tuples(
        st.just("hold"),
        st.sampled_from(BOTS),
        st.sampled_from(SYMBOLS),
        st.integers(0, 1),
        st.sampled_from(SIZES),
        st.one_of(st.none(), st.sampled_from(PRICES)),
        st.booleans(),  # reduce-only
        st.one_of(st.none(), st.integers(0, 5)),  # an edit of this order (by id, or by cliOrdId below)
        st.booleans(),  # the edit names the order by cliOrdId
        st.integers(0, 5),  # the cliOrdId of a send
    ),
    st.tuples(
        st.just("answer"),
        st.integers(0, 20),
        st.sampled_from(["placed", "rejected", "unknown"]),
        st.integers(0, 5),
    ),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("settle")),
    st.tuples(st.just("mark"), st.sampled_from(SYMBOLS), st.one_of(st.none(), st.sampled_from(PRICES))),
    st.tuples(st.just("time"), st.sampled_from([1.0, 4.0, 11.0])),
)


def order_message(step: tuple[Any, ...]) -> dict[str, Any]:
    _, n, symbol, direction, qty, price, reduce_only, cli = step
    raw: dict[str, Any] = {
        "instrument": symbol,
        "order_id": f"o{n}",
        "qty": qty,
        "filled": 0,
        "direction": direction,
        "limit_price": None if price is None else float(price),
        "stop_price": 0.0,
        "type": "limit" if price is not None else "stop",
        "reduce_only": reduce_only,
    }
    if cli:
        raw["cli_ord_id"] = f"c{n}"
    return raw


def rest_order(step: tuple[Any, ...]) -> dict[str, Any]:
    _, n, symbol, direction, qty, price, reduce_only, cli = step
    raw: dict[str, Any] = {
        "order_id": f"o{n}",
        "symbol": symbol,
        "side": "buy" if direction == 0 else "sell",
        "unfilledSize": qty,
        "limitPrice": None if price is None else float(price),
        "reduceOnly": reduce_only,
        "orderType": "lmt",
    }
    if cli:
        raw["cliOrdId"] = f"c{n}"
    return raw


class World:
    """The state, the book and the twin, driven by the same steps."""

    def __init__(self) -> None:
        self.now = [0.0]
        self.marks = Marks(None, interval_s=1.0, max_age_s=MAX_AGE_S, clock=lambda: self.now[0])  # type: ignore[arg-type]
        self.book = exposure.Book(clock=lambda: self.now[0], marks=self.marks)
        self.ledger = self.book.ledger
        self.owners: dict[str, str] = {}
        self.ledger.owner = lambda o, c: self.owners.get(o or "") or self.owners.get(c or "")
        self.marks.listeners.append(self.ledger.mark_changed)
        self.state = AccountState(observer=self.ledger)
        self.state.apply({"feed": "open_orders_snapshot", "orders": []})
        self.twin = Twin()
        self.reconciles = 0
        self.hold_log: list[TwinHold] = []  # every hold ever taken, for the steps that name one
        self.fills = 0

    def open_id(self, n: int) -> str:
        """The n-th open order's id (modulo), so that steps mostly name orders that are open; o<n> when
        none is."""
        ids = sorted(self.state.view().orders)
        return ids[n % len(ids)] if ids else f"o{n}"

    def events(self, events: list[Fill | OrderClosed]) -> None:
        self.book.observe(events)
        for event in events:
            keys = {k for k in (event.order_id, event.cli_ord_id) if k}
            for hold in list(self.twin.holds):
                if keys & set(hold.keys):
                    if isinstance(event, OrderClosed):
                        self.twin.holds.remove(hold)
                    else:
                        self.shrink(hold, event.size)

    def shrink(self, hold: TwinHold, size: Decimal) -> None:
        left = hold.working.remaining - size
        if left <= 0:
            self.twin.holds.remove(hold)
        else:
            hold.working = replace(hold.working, remaining=left)

    def step(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "order":
            self.events(
                self.state.apply({"feed": "open_orders", "order": order_message(step), "is_cancel": False})
            )
        elif kind == "cancel":
            message = {
                "feed": "open_orders",
                "order_id": self.open_id(step[1]),
                "is_cancel": True,
                "reason": "x",
            }
            self.events(self.state.apply(message))
        elif kind == "snapshot":
            self.state.apply({"feed": "open_orders_snapshot", "orders": [order_message(o) for o in step[1]]})
        elif kind == "reconcile":
            _, orders, symbol, size = step
            positions = (
                []
                if size == "0"
                else [
                    {
                        "symbol": symbol,
                        "side": "long" if Decimal(size) > 0 else "short",
                        "size": abs(float(size)),
                        "price": 100.0,
                    }
                ]
            )
            self.state.reconcile([rest_order(o) for o in orders], positions, None)
            self.reconciles += 1
            self.book.prune(self.reconciles)
            for hold in list(self.twin.holds):
                if hold.settle_at is not None and self.reconciles >= hold.settle_at:
                    self.twin.holds.remove(hold)
        elif kind == "position":
            _, symbol, size, with_mark = step
            raw: dict[str, Any] = {"instrument": symbol, "balance": float(size)}
            if with_mark:
                raw["mark_price"] = 101.0
            self.state.apply({"feed": "open_positions", "positions": [raw]})
        elif kind == "fill":
            _, n, size, buy = step
            order_id = self.open_id(n)
            order = self.state.view().orders.get(order_id)
            self.fills += 1
            fill = {
                "fill_id": f"f{self.fills}",
                "order_id": order_id,
                "instrument": order.symbol if order else SYMBOLS[0],
                "qty": float(size),
                "price": 100.0,
                "buy": bool(buy),
                "time": 1_700_000_000_000 + self.fills,
                "fee_paid": 0.0,
            }
            if order is not None and order.cli_ord_id:
                fill["cli_ord_id"] = order.cli_ord_id
            self.events(self.state.apply({"feed": "fills", "fills": [fill]}))
        elif kind == "owner":
            _, n, bot, by_cli = step
            key = f"c{n}" if by_cli else f"o{n}"
            self.owners[key] = bot
            self.ledger.learned([key])
        elif kind == "hold":
            self.take(step)
        elif kind == "answer":
            self.answer(step)
        elif kind == "release":
            if self.hold_log:
                hold = self.hold_log[-1 - step[1] % len(self.hold_log)]
                self.book.release(exposure.Hold([hold.held]))
                if hold in self.twin.holds:
                    self.twin.holds.remove(hold)
        elif kind == "settle":
            self.reconciles += 1
            self.book.prune(self.reconciles)
            for hold in list(self.twin.holds):
                if hold.settle_at is not None and self.reconciles >= hold.settle_at:
                    self.twin.holds.remove(hold)
        elif kind == "mark":
            _, symbol, price = step
            self.marks.push({"product_id": symbol, "markPrice": None if price is None else float(price)})
        elif kind == "time":
            self.now[0] += step[1]
        self.twin.settle(dict(self.state.view().orders), self.owners)

    def take(self, step: tuple[Any, ...]) -> None:
        _, bot, symbol, direction, size, price, reduce_only, edits, by_cli, cli = step
        replaces = None if edits is None else (f"c{edits}" if by_cli else f"o{edits}")
        candidate = exposure.Candidate(
            symbol,
            "buy" if direction == 0 else "sell",
            Decimal(size),
            reduce_only,
            price,
            bot,
            replaces=replaces,
            cli_ord_id=None if replaces is not None else f"c{cli}",
        )
        trial = self.book.trial(bot, reconciles=self.reconciles)
        self.check_trial(trial, candidate)
        [held] = self.book.judge(trial, [(0, candidate)], exposure.Limits(GuardConfig()), fresh=True).items
        hold = TwinHold(held, candidate.working(), candidate.cli_ord_id, replaces, replaces is not None)
        self.twin.holds.append(hold)
        self.hold_log.append(hold)

    def answer(self, step: tuple[Any, ...]) -> None:
        _, which, outcome, n = step
        if not self.hold_log:
            return
        hold = self.hold_log[-1 - which % len(self.hold_log)]  # the latest ones, mostly
        if hold.answered or not self.ledger.holding(hold.held):
            return
        placed: list[tuple[str | None, bool] | None] | None
        order_id = self.open_id(n) if n % 2 == 0 else f"o{n}"  # mostly an order the stream shows
        placed = None if outcome == "unknown" else [(order_id, outcome == "placed")]
        self.book.answered(exposure.Hold([hold.held]), placed, self.reconciles)
        if hold not in self.twin.holds:
            return
        hold.answered, hold.settle_at = True, self.reconciles + exposure.RECONCILES_TO_SETTLE
        if placed is None:
            return
        if outcome == "rejected":
            self.twin.holds.remove(hold)
            return
        hold.order_id = order_id
        if hold.edit:
            for other in list(self.twin.holds):
                if other is not hold and hold.order_id in other.keys:
                    self.twin.holds.remove(other)
        self.twin.settle(dict(self.state.view().orders), self.owners)  # bound: the stream may show it
        if hold not in self.twin.holds:
            return
        if hold.order_id in self.book._closed:
            self.twin.holds.remove(hold)
        elif hold.order_id in self.book._filled:
            self.shrink(hold, self.book._filled[hold.order_id])

    def mark(self, symbol: str) -> Decimal | None:
        found = self.marks.mark(symbol)
        if found is not None:
            return found
        position = self.state.view().positions.get(symbol)
        return None if position is None else position.mark_price

    def positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        view = self.state.view()
        found = {}
        for symbol in {*view.positions, *view.fill_positions}:
            feed = view.positions[symbol].size if symbol in view.positions else ZERO
            fills = view.fill_positions.get(symbol, ZERO)
            if feed or fills:
                found[symbol] = (min(feed, fills), max(feed, fills))
        return found

    def check(self) -> None:
        orders = dict(self.state.view().orders)
        working = [w for w, _ in self.twin.working(orders, self.owners)]
        ledger = self.ledger
        assert len(ledger) == len(self.twin.holds), (ledger.holds(), self.twin.holds)
        assert {id(h) for h in ledger.holds()} == {id(h.held) for h in self.twin.holds}
        # A hold that ended keeps no place in the reconciliations' sets (nothing ended stays in memory).
        assert all(ledger.holding(h) for held in self.book._settling.values() for h in held)
        assert sorted(map(repr, ledger.working())) == sorted(map(repr, working))
        assert ledger.total == len(working)
        for symbol in SYMBOLS:
            assert ledger.count(symbol) == sum(1 for w in working if w.symbol == symbol), symbol
            for side in ("buy", "sell"):
                plain = sum(
                    (
                        w.remaining
                        for w in working
                        if (w.symbol, w.side) == (symbol, side) and not w.reduce_only
                    ),
                    ZERO,
                )
                assert ledger.side_size(symbol, side) == plain, (symbol, side)
        for bot in (*BOTS, None):
            assert ledger.bot_count(bot) == sum(1 for w in working if w.bot == bot), bot
        assert ledger.positions() == self.positions()
        gross, missing = ledger.gross()
        plain, plain_missing = plain_gross(working, self.positions(), self.mark)
        assert missing == plain_missing
        if missing is None:  # (with a mark missing the figure is not used: guardian refuses)
            assert gross == plain

    def check_trial(self, trial: exposure.Trial, c: exposure.Candidate) -> None:
        """What an edit sees: every order it names (by order id or cliOrdId) left out."""
        orders = dict(self.state.view().orders)
        kept = [
            w
            for w, keys in self.twin.working(orders, self.owners)
            if c.replaces is None or c.replaces not in keys
        ]
        same = sum(
            (w.remaining for w in kept if (w.symbol, w.side) == (c.symbol, c.side) and not w.reduce_only),
            ZERO,
        )
        assert trial.same_side(c) == same
        assert trial.count(c, lambda w: True, self.ledger.total) == len(kept)
        assert trial.count(c, lambda w: w.bot == c.bot, self.ledger.bot_count(c.bot)) == sum(
            1 for w in kept if w.bot == c.bot
        )
        # A missing mark refuses even where only the order being replaced needs it (fail closed).
        everything = [w for w, _ in self.twin.working(orders, self.owners)]
        gross, missing = (
            plain_gross(kept, self.positions(), self.mark)[0],
            plain_gross(everything, self.positions(), self.mark)[1],
        )
        if missing is not None:
            with pytest.raises(Refusal):
                trial.gross(c)
        else:
            assert trial.gross(c) == gross


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(steps=st.lists(STEP, min_size=10, max_size=80))
def test_every_running_figure_equals_the_plain_count_after_every_step(steps: list[tuple[Any, ...]]) -> None:
    world = World()
    for n, step in enumerate(steps):
        world.step(step)
        try:
            world.check()
        except AssertionError:
            print("steps:", *steps[: n + 1], sep="\n  ")
            raise


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    levels=st.lists(
        st.tuples(st.sampled_from([*PRICES, None]), st.sampled_from(SIZES), st.booleans()), max_size=30
    ),
    marks=st.lists(st.sampled_from([Decimal("90"), *PRICES, Decimal("110")]), min_size=1, max_size=8),
)
def test_the_price_levels_price_every_order_at_the_higher_of_its_price_and_the_mark(
    levels: list[tuple[Decimal | None, str, bool]], marks: list[Decimal]
) -> None:
    found = Levels()
    kept: list[tuple[Decimal | None, Decimal]] = []
    for price, size, remove_one in levels:
        found.add(price, Decimal(size))
        kept.append((price, Decimal(size)))
        if remove_one and len(kept) > 1:
            gone = kept.pop(0)
            found.remove(*gone)
        for mark in marks:
            plain = sum((s * (mark if p is None else max(p, mark)) for p, s in kept), ZERO)
            assert found.at(mark) == plain


def test_a_snapshot_of_thousands_is_told_in_slices_with_the_guard_waiting_and_a_delta_meanwhile_lands() -> (
    None
):
    async def run() -> None:
        ledger = Ledger()
        state = AccountState(observer=ledger)
        many = SETTLE_IN_SLICES * 10
        orders = [
            order_message(("order", n, SYMBOLS[n % 3], n % 2, "1", PRICES[n % 5], False, True))
            for n in range(many)
        ]
        for n, raw in enumerate(orders):
            raw["order_id"], raw["cli_ord_id"] = f"o{n}", f"c{n}"
        seen_settling: list[int] = []

        async def watcher() -> None:
            while True:
                seen_settling.append(ledger.settling)
                if ledger.settling:  # a delta in the middle: it lands, and the rest does not undo it
                    state.apply({"feed": "open_orders", "order_id": "o0", "is_cancel": True, "reason": "x"})
                    return
                await asyncio.sleep(0)

        task = asyncio.create_task(watcher())
        await state.apply_sliced({"feed": "open_orders_snapshot", "orders": orders})
        await task
        assert 1 in seen_settling  # the guard would have waited
        assert ledger.settling == 0
        await asyncio.wait_for(ledger.settled(), 1)
        assert ledger.total == many - 1 == state.order_count()
        assert sum(ledger.count(s) for s in SYMBOLS) == many - 1

    asyncio.run(run())


def test_the_duplicate_memory_is_kept_only_while_the_rule_is_on_and_readers_do_not_wipe_it() -> None:
    now = [100.0]
    book = exposure.Book(clock=lambda: now[0])
    limits = exposure.Limits(GuardConfig(duplicate_window_s=2.0))

    def send(window_s: float, cli: str) -> None:
        trial = book.trial("b", reconciles=0, window_s=window_s)
        order = exposure.Candidate(
            SYMBOLS[0], "buy", Decimal(1), False, Decimal(1), "b", content=(1,), cli_ord_id=cli
        )
        book.answered(book.judge(trial, [(0, order)], limits, fresh=True), [(None, False)], 0)

    for n in range(1_000):  # the rule off (window 0): nothing remembered, however many orders
        send(0.0, f"off-{n}")
    assert sum(len(r.items) for r in book._recent.values()) == 0
    send(2.0, "on-1")
    book.trial("b", reconciles=0)  # a reader
    with pytest.raises(Refusal) as refused:
        send(2.0, "on-2")
    assert refused.value.code == "duplicateOrder"
    send(2.0, "on-1")  # the same cliOrdId again is a retry, not a duplicate (the dedupe answers it)
    now[0] += 2.5  # past the window: forgotten
    send(2.0, "on-3")
    assert len(book._recent["b"].items) == 1
    assert dict(book._recent["b"].by_content) == {(1,): 1}


def test_a_batch_item_is_judged_with_the_earlier_items_out_and_an_edit_of_an_open_order_replaces_it() -> None:
    ledger_book = exposure.Book()
    state = AccountState(observer=ledger_book.ledger)
    state.apply(
        {
            "feed": "open_orders_snapshot",
            "orders": [order_message(("order", 1, SYMBOLS[0], 0, "2", PRICES[0], False, True))],
        }
    )
    limits = exposure.Limits(GuardConfig(max_position=5, max_open_orders_total=3))
    trial = ledger_book.trial("b", reconciles=0)
    send = exposure.Candidate(SYMBOLS[0], "buy", Decimal(2), False, PRICES[0], "b", cli_ord_id="x1")
    edit = exposure.Candidate(SYMBOLS[0], "buy", Decimal(3), False, PRICES[0], "b", replaces="o1")
    # 2 open + 2 sent + 3 (the edit of the open order, whose 2 no longer count) = 5: within max_position.
    hold = ledger_book.judge(trial, [(0, send), (1, edit)], limits, fresh=True)
    # Held, worst case: the edit counts with its open order at the larger size (3), the send beside it.
    assert len(hold.items) == 2 and ledger_book.ledger.side_size(SYMBOLS[0], "buy") == 5
    more = exposure.Candidate(SYMBOLS[0], "buy", Decimal(1), False, PRICES[0], "b", cli_ord_id="x2")
    with pytest.raises(Refusal) as refused:  # open 2 (edited to 3) + the send's 2 + 1: above 5
        ledger_book.judge(ledger_book.trial("b", reconciles=0), [(0, more)], limits, fresh=True)
    assert refused.value.code == "positionLimitExceeded"
    again = exposure.Candidate(SYMBOLS[0], "buy", Decimal(1), False, PRICES[0], "b", cli_ord_id="x3")
    with pytest.raises(Refusal) as refused:  # the third order of the account: o1, x1, and this
        ledger_book.judge(ledger_book.trial("b", reconciles=0), [(0, again), (1, more)], limits, fresh=True)
    assert refused.value.code in ("positionLimitExceeded", "openOrdersLimitExceeded")
    assert len(ledger_book) == 2  # nothing of a refused request is held
