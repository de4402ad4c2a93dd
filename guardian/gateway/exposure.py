"""The exposure guard: what the account already holds and has working, and the limits a new order must
keep with it. Each limit is one rule over an immutable view of the account (`Exposure`) and one row in
`RULES`; `Book` is the account's memory of what was let out and not yet shown by the stream.

Worst case, on purpose:
- a position is read twice, from the positions feed and from the fills applied (a fill moves the second
  at once; the feed may follow a moment later): each rule takes whichever reading is worse for it;
- every open order counts at its remaining size until the stream says it is gone, and so does every
  order let out whose effect the stream has not shown yet (a *hold*): an order shown both open and held
  counts once, at the larger size; fills of it reduce its hold as they arrive;
- the check and the hold are one synchronous step (`Book.judge`): two bots' orders judged at the same
  moment see each other, so together they can never overshoot a limit.

A hold ends when the exchange's answer shows nothing placed (a rejection), when the stream shows the
order open at least as large (it counts there from then on), when the order is closed or filled in the
stream, or, whatever happened (an outcome unknown, a market order's unfilled rest), once two
reconciliations with REST have completed after the answer: REST's picture then has it.

Orders that can only reduce a position (`reduceOnly=true`) are exempt from `max_position` and the
account's gross notional; cancels are never judged here. Rules that read the account state refuse new
risk with `accountStateUnavailable` while that state is stale (guardian does not guess).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Final

from guardian.config import ClientConfig, GuardConfig
from guardian.gateway.orders import OrderIntent
from guardian.gateway.refusal import Refusal
from guardian.stream.state import Event, Fill, OpenOrder, OrderClosed, StateView

ZERO: Final = Decimal(0)
RATE_WINDOW_S: Final = 60.0
MAX_REMEMBERED: Final = 20_000  # fills and closes by order id, for answers that arrive after the stream
RECONCILES_TO_SETTLE: Final = 2  # a reconciliation wholly after the answer: the second one counted


@dataclass(frozen=True, slots=True)
class Working:
    """An order that may still add to the account's exposure: open at the exchange, or held."""

    symbol: str
    side: str  # buy | sell
    remaining: Decimal
    reduce_only: bool
    price: Decimal | None  # its limit or stop price; None: it trades at about the mark
    bot: str | None
    key: str | None  # order id (or cliOrdId) when known: how an open order and a hold are matched


@dataclass(frozen=True, slots=True)
class Candidate:
    """One send or merged edit, as the rules judge it."""

    symbol: str
    side: str
    size: Decimal  # what it may still fill: the whole size of a send, the remaining size after an edit
    reduce_only: bool
    price: Decimal | None
    bot: str | None
    replaces: str | None = None  # an edit: the order it changes (that order's size is then not counted)
    content: tuple[object, ...] = ()  # what the duplicate rule compares
    cli_ord_id: str | None = None
    order_tag: str | None = None  # a batch item's


@dataclass(frozen=True, slots=True)
class Notional:
    """The notional of the first `count` orders of a view's `working` that are not reduce-only, ready for
    any marks: per symbol, the size of those without a price, and those with one sorted by price with
    running sums of size and price x size. Each order counts at the higher of its price and the mark, so
    one bisection per symbol gives what a pass over every order would (`_gross_figure` checks one
    against the other in the tests)."""

    count: int
    by_symbol: Mapping[str, tuple[Decimal, list[Decimal], list[Decimal], list[Decimal]]]
    positions: tuple[tuple[str, Decimal], ...] = ()  # each position's larger absolute reading, if not 0

    @staticmethod
    def part(orders: Iterable[Working]) -> tuple[Decimal, list[Decimal], list[Decimal], list[Decimal]]:
        """One symbol's entry, from its orders."""
        unpriced = ZERO
        rows: list[tuple[Decimal, Decimal]] = []
        for w in orders:
            if w.reduce_only:
                continue
            if w.price is None:
                unpriced += w.remaining
            else:
                rows.append((w.price, w.remaining))
        rows.sort(key=lambda row: row[0])
        sizes, values = [ZERO], [ZERO]
        for price, size in rows:
            sizes.append(sizes[-1] + size)
            values.append(values[-1] + price * size)
        return unpriced, [r[0] for r in rows], sizes, values

    def total(self, view: Exposure) -> Decimal:
        total = ZERO
        for symbol, (unpriced, prices, sizes, values) in self.by_symbol.items():
            mark = view.marks.get(symbol)
            if mark is None:
                if unpriced:
                    _price_of(view, symbol, None)  # refuses: no mark, and an order without a price
                total += values[-1]
                continue
            at = bisect.bisect_left(prices, mark)  # from here on the order's price is the higher
            total += values[-1] - values[at] + mark * (sizes[at] + unpriced)
        return total


@dataclass(frozen=True, slots=True)
class Exposure:
    """The immutable view the rules read."""

    positions: Mapping[str, tuple[Decimal, Decimal]]  # symbol -> (lowest, highest) reading, signed
    working: tuple[Working, ...]
    marks: Mapping[str, Decimal | None]
    daily_pnl: Decimal | None  # realised since 00:00 UTC plus unrealised, net of fees; None: unknown
    bot_orders: int = 0  # the judged bot's new orders and edits in the last minute
    bot_recent: tuple[tuple[float, tuple[object, ...], str | None], ...] = ()  # its recent sends
    bot_recent_count: Mapping[tuple[object, ...], int] = field(default_factory=dict)  # content -> how many
    now: float = 0.0  # monotonic
    notional: Notional | None = None  # of the first orders of `working`, when worked out ahead
    duplicate_window_s: float = 0.0  # the window `bot_recent` was read with (0: the rule is off)

    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        return self.positions.get(symbol, (ZERO, ZERO))

    def with_order(self, candidate: Candidate) -> Exposure:
        """The view once `candidate` is out (the next item of a batch is judged against it)."""
        kept = tuple(w for w in self.working if _kept(w, candidate))
        added = Working(
            candidate.symbol,
            candidate.side,
            candidate.size,
            candidate.reduce_only,
            candidate.price,
            candidate.bot,
            candidate.replaces or candidate.cli_ord_id,
        )
        recent = (*self.bot_recent, (self.now, candidate.content, candidate.cli_ord_id))
        count = {
            **self.bot_recent_count,
            candidate.content: self.bot_recent_count.get(candidate.content, 0) + 1,
        }
        return replace(
            self,
            working=(*kept, added),
            bot_orders=self.bot_orders + 1,
            bot_recent=recent,
            bot_recent_count=count,
            notional=self.notional if candidate.replaces is None else None,  # an edit drops one it covers
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """What applies to one bot's orders: the account's guard table, the symbol's, the bot's own."""

    guard: GuardConfig
    client: ClientConfig | None = None

    def position(self, symbol: str) -> Decimal | None:
        return _dec(self.guard.limits_for(symbol).max_position)

    def open_orders(self, symbol: str) -> Decimal | None:
        return _dec(self.guard.limits_for(symbol).max_open_orders)

    def orders_per_minute(self) -> Decimal | None:
        own = None if self.client is None else self.client.max_orders_per_minute
        return _dec(own if own is not None else self.guard.max_orders_per_minute)

    def bot_open_orders(self) -> Decimal | None:
        return _dec(None if self.client is None else self.client.max_open_orders)


# ---- the rules -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit: its configuration key, its refusal code, whether it reads the account state, the
    figure a candidate would lead to, and the limit that figure is held to."""

    name: str
    code: str
    needs_state: bool
    limit: Callable[[Limits, Candidate], Decimal | None]
    figure: Callable[[Exposure, Candidate], Decimal]
    explain: Callable[[Exposure, Candidate, Decimal, Decimal], str]
    exempt: Callable[[Candidate], bool] = lambda c: False
    at_limit_refuses: bool = False  # a figure exactly at the limit passes, except where this says


def _same_side(view: Exposure, c: Candidate) -> Decimal:
    return sum(
        (
            w.remaining
            for w in view.working
            if w.symbol == c.symbol and w.side == c.side and not w.reduce_only and _kept(w, c)
        ),
        ZERO,
    )


def _position_figure(view: Exposure, c: Candidate) -> Decimal:
    """How far the position could go in the candidate's direction: the worse reading of the position,
    plus every non-reduce-only order on that side, plus the candidate."""
    low, high = view.position(c.symbol)
    if c.side == "buy":
        return high + _same_side(view, c) + c.size
    return -(low - _same_side(view, c) - c.size)


def _position_why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    low, high = view.position(c.symbol)
    held = high if c.side == "buy" else -low
    room = max(ZERO, limit - (figure - c.size))
    return (
        f"{c.side} {_fmt(c.size)} {c.symbol} could take the position to {_fmt(figure)} "
        f"{'long' if c.side == 'buy' else 'short'} (position {_fmt(held)}, open and unsettled orders on that side "
        f"{_fmt(figure - held - c.size)}), above max_position {_fmt(limit)}: at most {_fmt(room)} would pass "
        "(reduce-only orders are exempt)"
    )


def _replaced(view: Exposure, c: Candidate, where: Callable[[Working], bool]) -> int:
    """How many working orders matching `where` an edit `c` replaces (those do not count: `_kept`)."""
    if c.replaces is None:
        return 0
    return sum(1 for w in view.working if w.key == c.replaces and where(w))


def _open_orders_figure(view: Exposure, c: Candidate) -> Decimal:
    symbol = c.symbol
    count = sum(1 for w in view.working if w.symbol == symbol)
    return Decimal(count - _replaced(view, c, lambda w: w.symbol == symbol) + 1)


def _open_total_figure(view: Exposure, c: Candidate) -> Decimal:
    return Decimal(len(view.working) - _replaced(view, c, lambda w: True) + 1)


def _bot_open_figure(view: Exposure, c: Candidate) -> Decimal:
    bot = c.bot
    count = sum(1 for w in view.working if w.bot == bot)
    return Decimal(count - _replaced(view, c, lambda w: w.bot == bot) + 1)


def _count_why(scope: str, key: str) -> Callable[[Exposure, Candidate, Decimal, Decimal], str]:
    def why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
        where = scope.format(symbol=c.symbol, bot=c.bot)
        return (
            f"{where} would have {_fmt(figure)} open orders (open and unsettled ones counted), above {key} "
            f"{_fmt(limit)}: cancel one first, or wait for one to fill"
        )

    return why


def _price_of(view: Exposure, symbol: str, price: Decimal | None) -> Decimal:
    """The higher of an order's own price and the mark (the worse for notional)."""
    mark = view.marks.get(symbol)
    found = mark if price is None else price if mark is None or price > mark else mark
    if found is None:
        raise Refusal(
            "markPriceUnavailable",
            f"no mark price for {symbol}, which max_gross_notional needs: guardian refuses rather than guess; "
            "try again when the mark is back",
        )
    return found


def _sizes(positions: Mapping[str, tuple[Decimal, Decimal]]) -> tuple[tuple[str, Decimal], ...]:
    """Each position's larger absolute reading, where it is not 0."""
    found = ((symbol, max(abs(low), abs(high))) for symbol, (low, high) in positions.items())
    return tuple((symbol, size) for symbol, size in found if size)


def _gross_figure(view: Exposure, c: Candidate) -> Decimal:
    total = ZERO
    marks, replaces = view.marks, c.replaces
    sizes = view.notional.positions if view.notional is not None else _sizes(view.positions)
    for symbol, size in sizes:
        mark = marks.get(symbol)
        total += size * (mark if mark is not None else _price_of(view, symbol, None))
    rest: Iterable[Working] = view.working
    if view.notional is not None and replaces is None:  # an edit: the order it replaces does not count
        total += view.notional.total(view)
        rest = view.working[view.notional.count :]
    for w in rest:  # _price_of inlined
        if w.reduce_only or (replaces is not None and w.key == replaces):
            continue
        price, mark = w.price, marks.get(w.symbol)
        found = mark if price is None else price if mark is None or price > mark else mark
        total += w.remaining * (found if found is not None else _price_of(view, w.symbol, price))
    return total + c.size * _price_of(view, c.symbol, c.price)


def _gross_why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    this = c.size * _price_of(view, c.symbol, c.price)
    room = max(ZERO, limit - (figure - this))
    return (
        f"the account's gross notional would be {_fmt(figure)} (positions at the mark, open and unsettled "
        f"non-reduce-only orders, and this order's {_fmt(this)}), above max_gross_notional {_fmt(limit)}: "
        f"an order worth at most {_fmt(room)} would pass"
    )


def _rate_why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    return (
        f"bot {c.bot!r} has sent {_fmt(figure - 1)} new orders and edits in the last minute, max_orders_per_minute "
        f"is {_fmt(limit)}: wait a few seconds (cancels are never throttled)"
    )


def _loss_figure(view: Exposure, c: Candidate) -> Decimal:
    return ZERO if view.daily_pnl is None else -view.daily_pnl


def _loss_why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    return (
        f"today's PnL is {_fmt(-figure)} (realised since 00:00 UTC, unrealised, fees), at or past max_daily_loss "
        f"{_fmt(limit)}: only reduce-only orders and cancels pass"
    )


def _duplicate_figure(view: Exposure, c: Candidate) -> Decimal:
    """1 when the bot sent the same order under another cliOrdId (or none) within the window."""
    if not view.bot_recent_count.get(c.content):
        return ZERO  # not sent at all within the window: no need to look through them
    return Decimal(
        sum(
            1
            for _, content, cli in view.bot_recent
            if content == c.content and (cli is None or cli != c.cli_ord_id)
        )
    )


def _duplicate_why(view: Exposure, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    return (
        f"bot {c.bot!r} sent the same order ({c.side} {_fmt(c.size)} {c.symbol} at the same prices) within "
        "duplicate_window_s under another cliOrdId: it is refused as a duplicate; a retry of the same request "
        "keeps its cliOrdId"
    )


def _reduce_only(c: Candidate) -> bool:
    return c.reduce_only


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "max_position",
        "positionLimitExceeded",
        True,
        lambda lim, c: lim.position(c.symbol),
        _position_figure,
        _position_why,
        _reduce_only,
    ),
    Rule(
        "max_open_orders",
        "openOrdersLimitExceeded",
        True,
        lambda lim, c: lim.open_orders(c.symbol),
        _open_orders_figure,
        _count_why("{symbol}", "max_open_orders"),
    ),
    Rule(
        "max_open_orders_total",
        "openOrdersLimitExceeded",
        True,
        lambda lim, c: _dec(lim.guard.max_open_orders_total),
        _open_total_figure,
        _count_why("the account", "max_open_orders_total"),
    ),
    Rule(
        "max_open_orders_bot",
        "openOrdersLimitExceeded",
        True,
        lambda lim, c: lim.bot_open_orders(),
        _bot_open_figure,
        _count_why("bot {bot!r}", "its clients.max_open_orders"),
    ),
    Rule(
        "max_gross_notional",
        "exposureLimitExceeded",
        True,
        lambda lim, c: _dec(lim.guard.max_gross_notional),
        _gross_figure,
        _gross_why,
        _reduce_only,
    ),
    Rule(
        "max_daily_loss",
        "dailyLossLimitReached",
        True,
        lambda lim, c: _dec(lim.guard.max_daily_loss),
        _loss_figure,
        _loss_why,
        _reduce_only,
        at_limit_refuses=True,  # a loss at the limit has reached it
    ),
    Rule(
        "max_orders_per_minute",
        "orderRateExceeded",
        False,
        lambda lim, c: lim.orders_per_minute(),
        lambda view, c: Decimal(view.bot_orders + 1),
        _rate_why,
    ),
    Rule(
        "duplicate_window_s",
        "duplicateOrder",
        False,
        lambda lim, c: ZERO if lim.guard.duplicate_window_s > 0 and c.content else None,
        _duplicate_figure,
        _duplicate_why,
    ),
)


def judge(view: Exposure, candidate: Candidate, limits: Limits, *, fresh: bool) -> None:
    """Refuse `candidate` if it breaks a rule (the first one, in `RULES` order)."""
    for rule in RULES:
        limit = rule.limit(limits, candidate)
        if limit is None or rule.exempt(candidate):
            continue
        if rule.needs_state and not fresh:
            raise Refusal(
                "accountStateUnavailable",
                f"guardian's picture of the account is stale (its stream and REST reads are behind), and "
                f"{rule.name} needs it: no new risk until it is fresh again; reduce-only orders and cancels pass",
            )
        figure = rule.figure(view, candidate)
        if figure > limit or (rule.at_limit_refuses and figure == limit):
            raise Refusal(rule.code, rule.explain(view, candidate, figure, limit))


@dataclass(frozen=True, slots=True)
class Usage:
    """One limit's usage, for /guardian/state, the metrics and `guardian status`."""

    name: str
    used: Decimal
    limit: Decimal
    symbol: str = ""  # "" for account-wide (and per-bot) limits
    bot: str | None = None

    @property
    def ratio(self) -> float:
        return float(self.used / self.limit) if self.limit else 0.0

    def as_json(self) -> dict[str, object]:
        found: dict[str, object] = {"name": self.name, "used": float(self.used), "limit": float(self.limit)}
        if self.symbol:
            found["symbol"] = self.symbol
        found["ratio"] = round(self.ratio, 4)
        return found


def usage(view: Exposure, guard: GuardConfig, *, fills_in_window: int) -> list[Usage]:
    """How much of each account-wide and per-symbol limit that is on is used now (the worst case, as the
    rules count it: a new order of size 0 would lead to these figures). Symbols: those configured, held
    or worked."""
    found: list[Usage] = []
    symbols = sorted({*(guard.symbols or ()), *view.positions, *(w.symbol for w in view.working)})
    for symbol in symbols:
        limits = guard.limits_for(symbol)
        if limits.max_position is not None:
            buy = Candidate(symbol, "buy", ZERO, False, None, None)
            sell = Candidate(symbol, "sell", ZERO, False, None, None)
            used = max(_position_figure(view, buy), _position_figure(view, sell), ZERO)
            found.append(Usage("max_position", used, _dec(limits.max_position) or ZERO, symbol))
        if limits.max_open_orders is not None:
            count = Decimal(sum(1 for w in view.working if w.symbol == symbol))
            found.append(Usage("max_open_orders", count, Decimal(limits.max_open_orders), symbol))
    if guard.max_open_orders_total is not None:
        found.append(
            Usage("max_open_orders_total", Decimal(len(view.working)), Decimal(guard.max_open_orders_total))
        )
    if guard.max_gross_notional is not None:
        nothing = Candidate(symbols[0] if symbols else "", "buy", ZERO, False, ZERO, None)
        try:
            gross = _gross_figure(view, nothing)
        except Refusal:  # a mark is missing: no figure rather than a wrong one
            gross = None
        if gross is not None:
            found.append(Usage("max_gross_notional", gross, _dec(guard.max_gross_notional) or ZERO))
    if guard.max_daily_loss is not None and view.daily_pnl is not None:
        loss = max(ZERO, -view.daily_pnl)
        found.append(Usage("max_daily_loss", loss, _dec(guard.max_daily_loss) or ZERO))
    if guard.max_fills_per_minute is not None:
        found.append(
            Usage("max_fills_per_minute", Decimal(fills_in_window), Decimal(guard.max_fills_per_minute))
        )
    return found


def bot_usage(view: Exposure, limits: Limits, bot: str) -> list[Usage]:
    """A bot's own limits' usage: its orders in the last minute, its open orders."""
    found: list[Usage] = []
    rate = limits.orders_per_minute()
    if rate is not None:
        found.append(Usage("max_orders_per_minute", Decimal(view.bot_orders), rate, bot=bot))
    own = limits.bot_open_orders()
    if own is not None:
        count = Decimal(sum(1 for w in view.working if w.bot == bot))
        found.append(Usage("max_open_orders", count, own, bot=bot))
    return found


def daily_pnl(state: StateView) -> Decimal:
    """Realised PnL since 00:00 UTC, plus unrealised, net of fees."""
    unrealised = state.balances.unrealized_pnl
    if unrealised is None:
        unrealised = sum((p.unrealized_pnl or ZERO for p in state.positions.values()), ZERO)
    return state.realized_today - state.fees_today + unrealised


def candidate(intent: OrderIntent, bot: str | None) -> Candidate:
    """A send or merged edit as the rules read it."""
    assert intent.symbol is not None and intent.size is not None and intent.side is not None
    price = intent.limit_price if intent.limit_price is not None else intent.stop_price
    content = (
        intent.symbol.upper(),
        intent.side,
        intent.order_type,
        intent.size,
        intent.limit_price,
        intent.stop_price,
        intent.reduce_only,
    )
    return Candidate(
        symbol=intent.symbol.upper(),
        side=intent.side,
        size=max(ZERO, intent.size - intent.filled),
        reduce_only=intent.reduce_only is True,
        price=price,
        bot=bot,
        replaces=(intent.order_id or intent.cli_ord_id) if intent.kind == "edit" else None,
        content=content if intent.kind == "send" else (),
        cli_ord_id=intent.cli_ord_id,
        order_tag=intent.order_tag if intent.kind == "send" else None,
    )


# ---- the book of holds -----------------------------------------------------------------------------------


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

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in (self.order_id, self.cli_ord_id, self.order.key) if k)


@dataclass(slots=True, eq=False)
class Hold:
    """What one request holds: one `Held` per send or edit item, in order."""

    items: list[Held] = field(default_factory=list)


class Picture:
    """What the rules need of one state view, worked out once per view: each position's two readings
    (lowest, highest), each open order as a Working (by order id; order ids by cliOrdId), the symbols of
    both, and the open orders' `Notional`.

    A new view is usually the last one with one order changed, so `of` works from the last picture: only
    the orders whose OpenOrder object is new (the state's are immutable, and kept while unchanged), gone,
    or whose owner has become known since (owners never change once known) are made again, and only their
    symbols' notional entries. `build` makes the same from nothing (the tests hold the two equal)."""

    __slots__ = (
        "groups",
        "notional",
        "order_id_of",
        "parts",
        "positions",
        "shown",
        "state",
        "symbols",
        "unowned",
    )

    def __init__(
        self,
        state: StateView,
        positions: dict[str, tuple[Decimal, Decimal]],
        shown: dict[str, Working],
        order_id_of: dict[str, str],
        unowned: dict[str, str | None],
        groups: dict[str, dict[str, Working]],
        parts: dict[str, tuple[Decimal, list[Decimal], list[Decimal], list[Decimal]]],
        last: Picture | None = None,
    ) -> None:
        self.state = state
        self.positions = positions
        self.shown = shown  # order id -> Working
        self.order_id_of = order_id_of  # cliOrdId -> order id
        self.unowned = unowned  # order id -> cliOrdId, of the orders whose owner is not known yet
        self.groups = groups  # symbol -> order id -> Working
        self.parts = parts  # symbol -> its Notional entry
        self.symbols: frozenset[str]
        sizes: tuple[tuple[str, Decimal], ...]
        if last is not None and positions is last.positions and groups.keys() == last.groups.keys():
            self.symbols, sizes = last.symbols, last.notional.positions
        else:
            self.symbols, sizes = frozenset({*positions, *groups}), _sizes(positions)
        self.notional: Notional = Notional(len(shown), parts, sizes)

    @staticmethod
    def _positions(state: StateView) -> dict[str, tuple[Decimal, Decimal]]:
        positions: dict[str, tuple[Decimal, Decimal]] = {}
        for symbol in set(state.positions) | set(state.fill_positions):
            feed = state.positions[symbol].size if symbol in state.positions else ZERO
            fills = state.fill_positions.get(symbol, ZERO)
            positions[symbol] = (min(feed, fills), max(feed, fills))
        return positions

    @staticmethod
    def _working(order: OpenOrder, placer: str | None) -> Working:
        price = order.limit_price if order.limit_price is not None else order.stop_price
        return Working(
            order.symbol, order.side, order.remaining, order.reduce_only, price, placer, order.order_id
        )

    @classmethod
    def build(cls, state: StateView, owner: Callable[[str | None, str | None], str | None]) -> Picture:
        shown: dict[str, Working] = {}
        order_id_of: dict[str, str] = {}
        unowned: dict[str, str | None] = {}
        groups: dict[str, dict[str, Working]] = {}
        for order_id, order in state.orders.items():
            placer = owner(order_id, order.cli_ord_id)
            item = shown[order_id] = cls._working(order, placer)
            groups.setdefault(order.symbol, {})[order_id] = item
            if order.cli_ord_id:
                order_id_of[order.cli_ord_id] = order_id
            if placer is None:
                unowned[order_id] = order.cli_ord_id
        parts = {symbol: Notional.part(orders.values()) for symbol, orders in groups.items()}
        return cls(state, cls._positions(state), shown, order_id_of, unowned, groups, parts)

    @classmethod
    def of(
        cls, state: StateView, owner: Callable[[str | None, str | None], str | None], last: Picture | None
    ) -> Picture:
        """The picture of `state`, from the `last` one where that saves work."""
        if last is None:
            return cls.build(state, owner)
        learned = [i for i, cli in last.unowned.items() if owner(i, cli) is not None]
        if last.state is state and not learned:
            return last
        before, now = last.state.orders, state.orders
        changed = [i for i, order in now.items() if before.get(i) is not order]
        added = sum(1 for i in changed if i not in before)
        gone = before.keys() - now.keys() if len(now) - added < len(before) else ()
        if len(changed) + len(gone) > len(now) // 2 + 1:
            return cls.build(state, owner)  # most of it is new anyway
        shown, order_id_of, unowned = dict(last.shown), dict(last.order_id_of), dict(last.unowned)
        groups, parts = dict(last.groups), dict(last.parts)
        touched: set[str] = set()
        for order_id in (*gone, *changed, *learned):  # out with the old
            old = last.shown.get(order_id)
            if old is None or order_id not in shown:
                continue
            del shown[order_id]
            unowned.pop(order_id, None)
            cli = before[order_id].cli_ord_id if order_id in before else None
            if cli and order_id_of.get(cli) == order_id:
                del order_id_of[cli]
            group = groups[old.symbol] = (
                dict(groups[old.symbol]) if old.symbol not in touched else groups[old.symbol]
            )
            touched.add(old.symbol)
            del group[order_id]
        for order_id in (*changed, *learned):  # in with the new
            order = now.get(order_id)
            if order is None or order_id in shown:
                continue
            placer = owner(order_id, order.cli_ord_id)
            item = shown[order_id] = cls._working(order, placer)
            if order.symbol not in touched:
                groups[order.symbol] = dict(groups.get(order.symbol, {}))
                touched.add(order.symbol)
            groups[order.symbol][order_id] = item
            if order.cli_ord_id:
                order_id_of[order.cli_ord_id] = order_id
            if placer is None:
                unowned[order_id] = order.cli_ord_id
        for symbol in touched:
            if groups[symbol]:
                parts[symbol] = Notional.part(groups[symbol].values())
            else:
                del groups[symbol]
                parts.pop(symbol, None)
        positions = (
            last.positions
            if state.positions == last.state.positions and state.fill_positions == last.state.fill_positions
            else cls._positions(state)
        )
        return cls(state, positions, shown, order_id_of, unowned, groups, parts, last)


class Book:
    """One account's holds and the bots' recent orders. Single-threaded: the event loop's."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: list[Held] = []
        self._orders_at: dict[str | None, deque[float]] = {}
        self._recent: dict[str | None, deque[tuple[float, tuple[object, ...], str | None]]] = {}
        self._recent_count: dict[str | None, Counter[tuple[object, ...]]] = {}  # kept with _recent
        self._filled: OrderedDict[str, Decimal] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._picture: Picture | None = None  # the last state's, see `Picture`

    def __len__(self) -> int:
        return len(self._held)

    # ---- the view --------------------------------------------------------------------------------------
    def exposure(
        self,
        state: StateView,
        *,
        marks: Callable[[str], Decimal | None],
        owner: Callable[[str | None, str | None], str | None],
        reconciles: int,
        bot: str | None = None,
        window_s: float = 0.0,
        symbols: Iterable[str] = (),
    ) -> Exposure:
        """The account as the rules see it now: the state's positions and orders, plus what is held."""
        self._prune(reconciles)
        now = self._clock()
        picture = self._picture = Picture.of(state, owner, self._picture)
        positions, shown_by_id, order_id_of = picture.positions, picture.shown, picture.order_id_of
        state_symbols, notional = picture.symbols, picture.notional
        copied = False
        extra: list[Working] = []
        for held in list(self._held):
            found = next(
                (i for i in (k if k in shown_by_id else order_id_of.get(k) for k in held.keys) if i), None
            )
            if found is None:
                extra.append(held.order)
                continue
            shown = shown_by_id[found]
            if held.answered and shown.remaining >= held.order.remaining:
                self._drop(held)  # the stream shows it at least as large: the open order counts it now
            elif held.order.remaining > shown.remaining:
                if not copied:
                    shown_by_id, copied = dict(shown_by_id), True  # the cache's is the state's: copy on write
                shown_by_id[found] = replace(shown, remaining=held.order.remaining)
        unique = shown_by_id
        wanted = {*state_symbols, *symbols, *(w.symbol for w in extra)}
        marks_now = {s: marks(s) for s in wanted}
        for symbol, position in state.positions.items():
            if marks_now.get(symbol) is None and position.mark_price is not None:
                marks_now[symbol] = position.mark_price
        times = self._window(self._orders_at, bot, now - RATE_WINDOW_S)
        # The duplicate window, read only when judging with it: a reader without it (the state, the
        # metrics) must not prune the bot's memory to nothing.
        recent, count = self._recent_window(bot, now - window_s) if window_s > 0 else ((), Counter())
        return Exposure(
            positions=positions,
            working=(*unique.values(), *extra),
            notional=None if copied else notional,  # it covers the state's orders as the state has them
            marks=marks_now,
            daily_pnl=daily_pnl(state),
            bot_orders=len(times),
            bot_recent=tuple(recent),
            bot_recent_count=count,
            now=now,
            duplicate_window_s=window_s,
        )

    def _recent_window(
        self, bot: str | None, since: float
    ) -> tuple[deque[tuple[float, tuple[object, ...], str | None]], Counter[tuple[object, ...]]]:
        """The bot's sends within the duplicate window, and how many of each content (kept together)."""
        found = self._recent.setdefault(bot, deque())
        count = self._recent_count.setdefault(bot, Counter())
        while found and found[0][0] < since:
            content = found.popleft()[1]
            count[content] -= 1
            if count[content] <= 0:
                del count[content]
        return found, count

    @staticmethod
    def _window(table: dict[str | None, deque[float]], bot: str | None, since: float) -> deque[float]:
        found = table.setdefault(bot, deque())
        while found and found[0] < since:
            found.popleft()
        return found

    # ---- judge and hold, one step ----------------------------------------------------------------------
    def judge(
        self,
        view: Exposure,
        candidates: Sequence[tuple[int, Candidate]],
        limits: Limits,
        *,
        fresh: bool,
        item: Callable[[int, Refusal], Refusal] = lambda _, r: r,
    ) -> Hold:
        """Judge each candidate against the view with the earlier ones added; if all pass, hold them all
        and count them as the bot's orders. Synchronous: nothing else runs between the check and the hold."""
        last = len(candidates) - 1
        for n, (index, c) in enumerate(candidates):
            try:
                judge(view, c, limits, fresh=fresh)
            except Refusal as refusal:
                raise item(index, refusal) from None
            if n < last:  # a batch's next item is judged with this one out
                view = view.with_order(c)
        hold = Hold()
        now = self._clock()
        for _, c in candidates:
            held = Held(
                Working(c.symbol, c.side, c.size, c.reduce_only, c.price, c.bot, c.replaces or c.cli_ord_id),
                c.cli_ord_id,
                order_id=c.replaces,
                tag=c.order_tag,
                edit=c.replaces is not None,
            )
            self._held.append(held)
            hold.items.append(held)
            self._orders_at.setdefault(c.bot, deque()).append(now)
            if c.content and view.duplicate_window_s > 0:  # remembered only while the rule is on
                self._recent.setdefault(c.bot, deque()).append((now, c.content, c.cli_ord_id))
                count = self._recent_count.setdefault(c.bot, Counter())
                count[c.content] += 1
        return hold

    # ---- settling --------------------------------------------------------------------------------------
    def release(self, hold: Hold) -> None:
        """Nothing of `hold` reached the exchange (refused before it left, or rejected)."""
        for held in hold.items:
            self._drop(held)

    def answered(
        self, hold: Hold, placed: Sequence[tuple[str | None, bool] | None] | None, reconciles: int
    ) -> None:
        """The exchange answered. `placed` has one (order id, left anything) per item, in order, None for
        an item whose outcome is unknown; None as a whole: every outcome is unknown. An item that left
        nothing is released; the others are bound to their order id and released by the stream, or
        after two more reconciliations whatever happens."""
        for index, held in enumerate(hold.items):
            held.answered = True
            held.settle_at = reconciles + RECONCILES_TO_SETTLE
            if placed is None or index >= len(placed) or placed[index] is None:
                continue
            order_id, left = placed[index]  # type: ignore[misc]
            if not left:
                self._drop(held)
                continue
            held.order_id = order_id or held.order_id
            if held.edit:  # applied: the order's earlier holds (its send, older edits) no longer say its size
                for other in [h for h in self._held if h is not held and held.order_id in h.keys]:
                    self._drop(other)
            if held.order_id:
                self._apply_known(held, held.order_id)

    def observe(self, events: Iterable[Event]) -> None:
        """The stream's fills and closed orders: holds shrink and end with them."""
        for event in events:
            for key in _event_keys(event):
                if isinstance(event, Fill):
                    self._filled[key] = self._filled.get(key, ZERO) + event.size
                    self._filled.move_to_end(key)
                else:
                    self._closed[key] = None
            for held in list(self._held):
                if any(k in held.keys for k in _event_keys(event)):
                    if isinstance(event, OrderClosed):
                        self._drop(held)
                    else:
                        self._shrink(held, event.size)
        for memory in (self._filled, self._closed):
            while len(memory) > MAX_REMEMBERED:
                memory.popitem(last=False)

    def _apply_known(self, held: Held, order_id: str) -> None:
        """What the stream already showed of an order before its answer arrived."""
        if order_id in self._closed:
            self._drop(held)
        elif order_id in self._filled:
            self._shrink(held, self._filled[order_id])

    def _shrink(self, held: Held, size: Decimal) -> None:
        left = held.order.remaining - size
        if left <= 0:
            self._drop(held)
        else:
            held.order = replace(held.order, remaining=left)

    def _drop(self, held: Held) -> None:
        if held in self._held:
            self._held.remove(held)

    def _prune(self, reconciles: int) -> None:
        for held in list(self._held):
            if held.settle_at is not None and reconciles >= held.settle_at:
                self._held.remove(held)

    def held(self) -> Iterator[Working]:
        return (h.order for h in self._held)


def _kept(working: Working, candidate: Candidate) -> bool:
    """Whether `working` still counts beside `candidate`: not when the candidate is an edit of it."""
    return candidate.replaces is None or working.key != candidate.replaces


def _event_keys(event: Event) -> tuple[str, ...]:
    return tuple(k for k in (event.order_id, event.cli_ord_id) if k)


def _dec(value: float | int | None) -> Decimal | None:
    return None if value is None else _decimal(value)


@functools.lru_cache(maxsize=512)  # the configured limits: a handful of values
def _decimal(value: float | int) -> Decimal:
    return Decimal(str(value))


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")
