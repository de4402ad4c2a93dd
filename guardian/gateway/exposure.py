"""The exposure guard: what the account already holds and has working, and the limits a new order must
keep with it. Each limit is one rule (a row of `RULES`) over `Trial`, the account as one request sees it:
the running figures of `guardian.gateway.ledger.Ledger`, less what an edit replaces, plus the earlier
items of the same batch. `Book` is the account's memory of what was let out and not yet shown by the
stream (the holds' lives), and of each bot's rate and duplicate windows.

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

Every figure a rule reads is kept up to date as things change, so judging an order costs the same with
5,000 orders resting as with 5 (issue 20; `bench/exposure.py`).
"""

from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Final, TypeVar

from guardian.config import ClientConfig, GuardConfig
from guardian.contracts import Contract
from guardian.gateway.ledger import Held, Ledger, MarkSource, Working
from guardian.gateway.orders import OrderIntent
from guardian.gateway.refusal import Refusal
from guardian.stream.state import Event, Fill, OrderClosed, Settlement, StateView

__all__ = ["Book", "Candidate", "Held", "Hold", "Limits", "Trial", "Usage", "Working", "judge"]

ZERO: Final = Decimal(0)
T = TypeVar("T")
RATE_WINDOW_S: Final = 60.0
MAX_REMEMBERED: Final = 20_000  # fills and closes by order id, for answers that arrive after the stream
RECONCILES_TO_SETTLE: Final = 2  # a reconciliation wholly after the answer: the second one counted


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

    def working(self) -> Working:
        """The candidate as it counts once let out."""
        key = self.replaces or self.cli_ord_id
        return Working(self.symbol, self.side, self.size, self.reduce_only, self.price, self.bot, key)


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


class Recent:
    """One bot's sends within the duplicate window: what each said, under which cliOrdId, counted as they
    come and go, so that how many match a new order is a lookup."""

    __slots__ = ("by_cli", "by_content", "items")

    def __init__(self) -> None:
        self.items: deque[tuple[float, tuple[object, ...], str | None]] = deque()
        self.by_content: Counter[tuple[object, ...]] = Counter()
        self.by_cli: Counter[tuple[tuple[object, ...], str]] = Counter()

    def add(self, at: float, content: tuple[object, ...], cli: str | None) -> None:
        self.items.append((at, content, cli))
        self.by_content[content] += 1
        if cli is not None:
            self.by_cli[(content, cli)] += 1

    def prune(self, since: float) -> None:
        items = self.items
        while items and items[0][0] < since:
            _, content, cli = items.popleft()
            _take(self.by_content, content)
            if cli is not None:
                _take(self.by_cli, (content, cli))

    def matching(self, content: tuple[object, ...], cli: str | None) -> int:
        """Sends of the same content under another cliOrdId (or none)."""
        same = self.by_content.get(content, 0)
        return same - (self.by_cli.get((content, cli), 0) if same and cli is not None else 0)


class Trial:
    """The account as the rules see it for one request: the ledger's running figures, less the orders an
    edit replaces, plus the request's earlier items (a batch's next item is judged with those out). It
    lives for one synchronous judgement and copies nothing of the book."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        daily_pnl: Decimal | None = None,
        bot_orders: int = 0,
        recent: Recent | None = None,
        now: float = 0.0,
        duplicate_window_s: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.daily_pnl = daily_pnl  # realised since 00:00 UTC plus unrealised, net of fees; None: unknown
        self.pnl_gap: tuple[str, str] | None = None  # why daily_pnl cannot be valued (code, what)
        self.bot_orders = bot_orders  # the judged bot's new orders and edits in the last minute
        self.recent = recent
        self.now = now  # monotonic
        self.duplicate_window_s = duplicate_window_s  # 0: the duplicate rule is off
        self.added: list[Working] = []  # the earlier items that still count
        self.sent: list[tuple[tuple[object, ...], str | None]] = []  # the earlier items' content, cliOrdId
        self.replaced: set[str] = set()  # keys the earlier items' edits replaced
        self._scope: tuple[Candidate, list[Working], list[Working]] | None = None

    def add(self, c: Candidate) -> None:
        """`c` is out: the next item is judged with it counted."""
        if c.replaces is not None:
            self.replaced.add(c.replaces)
            self.added = [w for w in self.added if w.key != c.replaces]
        self.added.append(c.working())
        self.sent.append((c.content, c.cli_ord_id))
        self.bot_orders += 1
        self._scope = None

    def scope(self, c: Candidate) -> tuple[list[Working], list[Working]]:
        """What does not count beside `c` (the orders it and earlier edits replace), and what the earlier
        items add."""
        if self._scope is not None and self._scope[0] is c:
            return self._scope[1], self._scope[2]
        keys = self.replaced if c.replaces is None else {*self.replaced, c.replaces}
        out: list[Working] = []
        seen: set[int] = set()
        for key in keys:
            for entry in self.ledger.named(key):
                if id(entry) not in seen and entry.counted is not None:
                    seen.add(id(entry))
                    out.append(entry.counted)
        inn = [w for w in self.added if c.replaces is None or w.key != c.replaces]
        self._scope = (c, out, inn)
        return out, inn

    # ---- the figures ----------------------------------------------------------------------------------
    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        return self.ledger.position(symbol)

    def same_side(self, c: Candidate) -> Decimal:
        """Every non-reduce-only order on the candidate's side of its symbol that counts beside it."""
        out, inn = self.scope(c)
        size = self.ledger.side_size(c.symbol, c.side)
        for w in out:
            if w.symbol == c.symbol and w.side == c.side and not w.reduce_only:
                size -= w.remaining
        for w in inn:
            if w.symbol == c.symbol and w.side == c.side and not w.reduce_only:
                size += w.remaining
        return size

    def count(self, c: Candidate, where: Callable[[Working], bool], counted: int) -> int:
        """`counted` (the ledger's count of what `where` selects) as it stands beside `c`."""
        out, inn = self.scope(c)
        if not out and not inn:
            return counted
        return counted - sum(1 for w in out if where(w)) + sum(1 for w in inn if where(w))

    def gross(self, c: Candidate) -> Decimal:
        """The gross notional beside `c`, without `c`. Refusal when a mark it needs is missing."""
        total, missing = self.ledger.gross()
        if missing is not None:
            raise self._unpriced(missing)
        out, inn = self.scope(c)
        for w in out:
            if not w.reduce_only:
                total -= self.value_of(w.symbol, w.remaining, w.price)
        for w in inn:
            if not w.reduce_only:
                total += self.value_of(w.symbol, w.remaining, w.price)
        return total

    def value_of(self, symbol: str, size: Decimal, price: Decimal | None) -> Decimal:
        """USD notional of an order as its contract counts it, at the higher of its own price and the mark
        (the worse for notional)."""
        found = self.ledger.value(symbol, size, price)
        if found is None:
            raise self._unpriced(symbol)
        return found

    def _unpriced(self, symbol: str) -> Refusal:
        if self.ledger.contract(symbol) is None:
            return Refusal(
                "instrumentUnknown",
                f"max_gross_notional counts {symbol}, whose contract guardian does not know (the exchange's "
                "instruments do not list it as one guardian judges): no new risk until it does; cancels and "
                "reduce-only orders pass",
            )
        return _no_mark(symbol)

    def duplicates(self, c: Candidate) -> int:
        found = 0 if self.recent is None else self.recent.matching(c.content, c.cli_ord_id)
        for content, cli in self.sent:
            if content == c.content and (cli is None or cli != c.cli_ord_id):
                found += 1
        return found


def _no_mark(symbol: str) -> Refusal:
    return Refusal(
        "markPriceUnavailable",
        f"no mark price for {symbol}, which max_gross_notional needs: guardian refuses rather than guess; "
        "try again when the mark is back",
    )


# ---- the rules -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit: its configuration key, its refusal code, whether it reads the account state, the
    figure a candidate would lead to, and the limit that figure is held to."""

    name: str
    code: str
    needs_state: bool
    limit: Callable[[Limits, Candidate], Decimal | None]
    figure: Callable[[Trial, Candidate], Decimal]
    explain: Callable[[Trial, Candidate, Decimal, Decimal], str]
    exempt: Callable[[Candidate], bool] = lambda c: False
    at_limit_refuses: bool = False  # a figure exactly at the limit passes, except where this says


def _position_figure(t: Trial, c: Candidate) -> Decimal:
    """How far the position could go in the candidate's direction: the worse reading of the position,
    plus every non-reduce-only order on that side, plus the candidate."""
    low, high = t.position(c.symbol)
    if c.side == "buy":
        return high + t.same_side(c) + c.size
    return -(low - t.same_side(c) - c.size)


def _position_why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    low, high = t.position(c.symbol)
    held = high if c.side == "buy" else -low
    room = max(ZERO, limit - (figure - c.size))
    return (
        f"{c.side} {_fmt(c.size)} {c.symbol} could take the position to {_fmt(figure)} "
        f"{'long' if c.side == 'buy' else 'short'} (position {_fmt(held)}, open and unsettled orders on that side "
        f"{_fmt(figure - held - c.size)}), above max_position {_fmt(limit)}: at most {_fmt(room)} would pass "
        "(reduce-only orders are exempt)"
    )


def _open_orders_figure(t: Trial, c: Candidate) -> Decimal:
    symbol = c.symbol
    return Decimal(t.count(c, lambda w: w.symbol == symbol, t.ledger.count(symbol)) + 1)


def _open_total_figure(t: Trial, c: Candidate) -> Decimal:
    return Decimal(t.count(c, lambda w: True, t.ledger.total) + 1)


def _bot_open_figure(t: Trial, c: Candidate) -> Decimal:
    bot = c.bot
    return Decimal(t.count(c, lambda w: w.bot == bot, t.ledger.bot_count(bot)) + 1)


def _count_why(scope: str, key: str) -> Callable[[Trial, Candidate, Decimal, Decimal], str]:
    def why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
        where = scope.format(symbol=c.symbol, bot=c.bot)
        return (
            f"{where} would have {_fmt(figure)} open orders (open and unsettled ones counted), above {key} "
            f"{_fmt(limit)}: cancel one first, or wait for one to fill"
        )

    return why


def _gross_figure(t: Trial, c: Candidate) -> Decimal:
    return t.gross(c) + t.value_of(c.symbol, c.size, c.price)


def _gross_why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    this = t.value_of(c.symbol, c.size, c.price)
    room = max(ZERO, limit - (figure - this))
    return (
        f"the account's gross notional would be {_fmt(figure)} (positions at the mark, open and unsettled "
        f"non-reduce-only orders, and this order's {_fmt(this)}), above max_gross_notional {_fmt(limit)}: "
        f"an order worth at most {_fmt(room)} would pass"
    )


def _rate_why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    return (
        f"bot {c.bot!r} has sent {_fmt(figure - 1)} new orders and edits in the last minute, max_orders_per_minute "
        f"is {_fmt(limit)}: wait a few seconds (cancels are never throttled)"
    )


def _loss_figure(t: Trial, c: Candidate) -> Decimal:
    if t.daily_pnl is None and t.pnl_gap is not None:  # fail closed: a loss limit that cannot be read
        code, what = t.pnl_gap
        raise Refusal(
            code, f"max_daily_loss cannot be judged: {what}; only reduce-only orders and cancels pass"
        )
    return ZERO if t.daily_pnl is None else -t.daily_pnl


def _loss_why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
    return (
        f"today's PnL is {_fmt(-figure)} (realised since 00:00 UTC, unrealised, fees), at or past max_daily_loss "
        f"{_fmt(limit)}: only reduce-only orders and cancels pass"
    )


def _duplicate_figure(t: Trial, c: Candidate) -> Decimal:
    """How many times the bot sent the same order under another cliOrdId (or none) within the window."""
    return Decimal(t.duplicates(c))


def _duplicate_why(t: Trial, c: Candidate, figure: Decimal, limit: Decimal) -> str:
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
        lambda t, c: Decimal(t.bot_orders + 1),
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


def judge(t: Trial, candidate: Candidate, limits: Limits, *, fresh: bool) -> None:
    """Refuse `candidate` if it breaks a rule (the first one, in `RULES` order)."""
    for rule in RULES:
        if rule.exempt(candidate):
            continue
        limit = rule.limit(limits, candidate)
        if limit is None:
            continue
        if rule.needs_state and not fresh:
            raise Refusal(
                "accountStateUnavailable",
                f"guardian's picture of the account is stale (its stream and REST reads are behind), and "
                f"{rule.name} needs it: no new risk until it is fresh again; reduce-only orders and cancels pass",
            )
        figure = rule.figure(t, candidate)
        if figure > limit or (rule.at_limit_refuses and figure == limit):
            raise Refusal(rule.code, rule.explain(t, candidate, figure, limit))


# ---- what the state endpoint, the metrics and `guardian status` show ------------------------------------


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


def usage(
    ledger: Ledger, guard: GuardConfig, *, daily_pnl: Decimal | None, fills_in_window: int
) -> list[Usage]:
    """How much of each account-wide and per-symbol limit that is on is used now (the worst case, as the
    rules count it: a new order of size 0 would lead to these figures). Symbols: those configured, and
    those with a position or an order counted. Reads the running figures: O(symbols)."""
    found: list[Usage] = []
    t = Trial(ledger, daily_pnl=daily_pnl)
    for symbol in sorted({*(guard.symbols or ()), *ledger.symbols()}):
        limits = guard.limits_for(symbol)
        if limits.max_position is not None:
            buy = Candidate(symbol, "buy", ZERO, False, None, None)
            sell = Candidate(symbol, "sell", ZERO, False, None, None)
            used = max(_position_figure(t, buy), _position_figure(t, sell), ZERO)
            found.append(Usage("max_position", used, _dec(limits.max_position) or ZERO, symbol))
        if limits.max_open_orders is not None:
            count = Decimal(ledger.count(symbol))
            found.append(Usage("max_open_orders", count, Decimal(limits.max_open_orders), symbol))
    if guard.max_open_orders_total is not None:
        found.append(
            Usage("max_open_orders_total", Decimal(ledger.total), Decimal(guard.max_open_orders_total))
        )
    if guard.max_gross_notional is not None:
        gross, missing = ledger.gross()
        if missing is None:  # a mark is missing: no figure rather than a wrong one
            found.append(Usage("max_gross_notional", gross, _dec(guard.max_gross_notional) or ZERO))
    if guard.max_daily_loss is not None and daily_pnl is not None:
        loss = max(ZERO, -daily_pnl)
        found.append(Usage("max_daily_loss", loss, _dec(guard.max_daily_loss) or ZERO))
    if guard.max_fills_per_minute is not None:
        found.append(
            Usage("max_fills_per_minute", Decimal(fills_in_window), Decimal(guard.max_fills_per_minute))
        )
    return found


def bot_usage(book: Book, limits: Limits, bot: str) -> list[Usage]:
    """A bot's own limits' usage: its orders in the last minute, its open orders."""
    found: list[Usage] = []
    rate = limits.orders_per_minute()
    if rate is not None:
        found.append(Usage("max_orders_per_minute", Decimal(book.orders_in_window(bot)), rate, bot=bot))
    own = limits.bot_open_orders()
    if own is not None:
        found.append(Usage("max_open_orders", Decimal(book.ledger.bot_count(bot)), own, bot=bot))
    return found


def daily_pnl(state: StateView) -> Decimal:
    """Realised PnL since 00:00 UTC, plus unrealised, net of fees."""
    unrealised = state.balances.unrealized_pnl
    if unrealised is None:
        unrealised = sum((p.unrealized_pnl or ZERO for p in state.positions.values()), ZERO)
    return state.realized_today - state.fees_today + unrealised


def candidate(intent: OrderIntent, bot: str | None, *, replaces_open: bool = True) -> Candidate:
    """A send or merged edit as the rules read it. `replaces_open` false: an edit of an earlier item of
    its own batch, which is counted as one more order (what it edits is not open yet)."""
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
        replaces=(intent.order_id or intent.cli_ord_id) if intent.kind == "edit" and replaces_open else None,
        content=content if intent.kind == "send" else (),
        cli_ord_id=intent.cli_ord_id,
        order_tag=intent.order_tag if intent.kind == "send" else None,
    )


# ---- the book of holds -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Hold:
    """What one request holds: one `Held` per send or edit item, in order."""

    items: list[Held] = field(default_factory=list)


class Book:
    """One account's running figures (`ledger`), the lives of its holds, and each bot's rate and duplicate
    windows. Single-threaded: the event loop's."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        marks: MarkSource | None = None,
        contracts: Callable[[str], Contract | None] | None = None,
    ) -> None:
        self._clock = clock
        self.ledger = Ledger(marks, contracts=contracts)
        self._orders_at: dict[str | None, deque[float]] = {}
        self._recent: dict[str | None, Recent] = {}
        self._filled: OrderedDict[str, Decimal] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        # Reconciliation count -> the holds released at it, while they are held (a hold that ends sooner
        # leaves its set at once: the sets never keep what has ended).
        self._settling: dict[int, set[Held]] = {}
        self._reconciles = 0  # the count the holds were last pruned at
        self.ledger.released = self._unsettle

    def __len__(self) -> int:
        return len(self.ledger)

    def held(self) -> Iterator[Working]:
        return (h.order for h in self.ledger.holds())

    # ---- one request's view --------------------------------------------------------------------------
    def trial(
        self,
        bot: str | None,
        *,
        reconciles: int,
        daily_pnl: Decimal | None = None,
        window_s: float = 0.0,
    ) -> Trial:
        """The account as `bot`'s request sees it now. `window_s`: the duplicate window (0: off)."""
        self.prune(reconciles)
        now = self._clock()
        recent = None
        if window_s > 0:  # read only when judging with it: a reader without it keeps the bot's memory
            recent = self._recent.get(bot)
            if recent is None:
                recent = self._recent[bot] = Recent()
            recent.prune(now - window_s)
        return Trial(
            self.ledger,
            daily_pnl=daily_pnl,
            bot_orders=self.orders_in_window(bot, now),
            recent=recent,
            now=now,
            duplicate_window_s=window_s,
        )

    def orders_in_window(self, bot: str | None, now: float | None = None) -> int:
        """`bot`'s new orders and edits in the last minute."""
        found = self._orders_at.get(bot)
        if found is None:
            return 0
        since = (self._clock() if now is None else now) - RATE_WINDOW_S
        while found and found[0] < since:
            found.popleft()
        return len(found)

    # ---- judge and hold, one step ----------------------------------------------------------------------
    def judge(
        self,
        trial: Trial,
        candidates: Sequence[tuple[int, Candidate]],
        limits: Limits,
        *,
        fresh: bool,
        item: Callable[[int, Refusal], Refusal] = lambda _, r: r,
    ) -> Hold:
        """Judge each candidate with the earlier ones out; if all pass, hold them all and count them as the
        bot's orders. Synchronous: nothing else runs between the check and the hold."""
        last = len(candidates) - 1
        for n, (index, c) in enumerate(candidates):
            try:
                judge(trial, c, limits, fresh=fresh)
            except Refusal as refusal:
                raise item(index, refusal) from None
            if n < last:  # a batch's next item is judged with this one out
                trial.add(c)
        hold = Hold()
        now = self._clock()
        for _, c in candidates:
            held = Held(
                c.working(), c.cli_ord_id, order_id=c.replaces, tag=c.order_tag, edit=c.replaces is not None
            )
            self.ledger.hold(held)
            hold.items.append(held)
            self._orders_at.setdefault(c.bot, deque()).append(now)
            if c.content and trial.duplicate_window_s > 0:  # remembered only while the rule is on
                recent = self._recent.get(c.bot)
                if recent is None:
                    recent = self._recent[c.bot] = Recent()
                recent.add(now, c.content, c.cli_ord_id)
        return hold

    # ---- settling --------------------------------------------------------------------------------------
    def release(self, hold: Hold) -> None:
        """Nothing of `hold` reached the exchange (refused before it left, or rejected)."""
        for held in hold.items:
            self.ledger.release(held)

    def answered(
        self, hold: Hold, placed: Sequence[tuple[str | None, bool] | None] | None, reconciles: int
    ) -> None:
        """The exchange answered. `placed` has one (order id, left anything) per item, in order, None for
        an item whose outcome is unknown; None as a whole: every outcome is unknown. An item that left
        nothing is released; the others are bound to their order id and released by the stream, or
        after two more reconciliations whatever happens."""
        for index, held in enumerate(hold.items):
            if not self.ledger.holding(held):
                continue  # the stream already ended it
            keys = held.keys
            held.answered = True
            held.settle_at = reconciles + RECONCILES_TO_SETTLE
            self._settling.setdefault(held.settle_at, set()).add(held)
            if placed is None or index >= len(placed) or placed[index] is None:
                self.ledger.held_changed(held, keys)
                continue
            order_id, left = placed[index]  # type: ignore[misc]
            if not left:
                self.ledger.release(held)
                continue
            held.order_id = order_id or held.order_id
            self.ledger.held_changed(held, keys)
            if held.edit and held.order_id:  # applied: the order's earlier holds no longer say its size
                for other in self.ledger.holds_named(held.order_id):
                    if other is not held:
                        self.ledger.release(other)
            if held.order_id:
                self._apply_known(held, held.order_id)

    def observe(self, events: Iterable[Event]) -> None:
        """The stream's fills and closed orders: holds shrink and end with them."""
        for event in events:
            if isinstance(event, Settlement):
                continue
            keys = tuple(k for k in (event.order_id, event.cli_ord_id) if k)
            for key in keys:
                if isinstance(event, Fill):
                    self._filled[key] = self._filled.get(key, ZERO) + event.size
                    self._filled.move_to_end(key)
                else:
                    self._closed[key] = None
            touched = {h for key in keys for h in self.ledger.holds_named(key)}
            for held in touched:
                if isinstance(event, OrderClosed):
                    self.ledger.release(held)
                else:
                    self._shrink(held, event.size)
        for memory in (self._filled, self._closed):
            while len(memory) > MAX_REMEMBERED:
                memory.popitem(last=False)

    def prune(self, reconciles: int) -> None:
        """Release the holds whose second reconciliation after their answer has completed."""
        if reconciles <= self._reconciles:
            return
        self._reconciles = reconciles
        for at in [at for at in self._settling if at <= reconciles]:  # a few counts at most
            for held in list(self._settling.get(at, ())):
                self.ledger.release(held)  # (which takes it out of its set)
            self._settling.pop(at, None)

    def _unsettle(self, held: Held) -> None:
        """`held` has ended: it leaves its reconciliation's set."""
        found = self._settling.get(held.settle_at) if held.settle_at is not None else None
        if found is not None:
            found.discard(held)
            if not found:
                del self._settling[held.settle_at]  # type: ignore[arg-type]

    def _apply_known(self, held: Held, order_id: str) -> None:
        """What the stream already showed of an order before its answer arrived."""
        if order_id in self._closed:
            self.ledger.release(held)
        elif order_id in self._filled:
            self._shrink(held, self._filled[order_id])

    def _shrink(self, held: Held, size: Decimal) -> None:
        if not self.ledger.holding(held):
            return
        left = held.order.remaining - size
        if left <= 0:
            self.ledger.release(held)
            return
        keys = held.keys
        held.order = replace(held.order, remaining=left)
        self.ledger.held_changed(held, keys)


def _take(counter: Counter[T], key: T) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


def _dec(value: float | int | None) -> Decimal | None:
    return None if value is None else _decimal(value)


@functools.lru_cache(maxsize=512)  # the configured limits: a handful of values
def _decimal(value: float | int) -> Decimal:
    return Decimal(str(value))


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f")
