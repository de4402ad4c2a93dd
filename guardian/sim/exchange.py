"""The simulator's exchange: accounts, orders, matching, trigger orders, positions, fills, the switch.

Pure logic over a `Market` and an injected wall clock; the HTTP layer (`guardian.sim.app`) calls these
methods with the request's fields and renders what they return. Envelope errors (`result: error`) are
raised as `SimError(code)`; order outcomes that Kraken reports as a status inside a success envelope
(`postWouldExecute`, `insufficientAvailableFunds`, ...) are returned as that status.

The book is synthetic. By default its levels have unlimited size, so a crossing order fills whole at
the touch, a resting limit fills whole when the touch reaches it, and a market order fills at the mark.
With `book_depth` set, each price level (the touch and `book_levels - 1` ticks beyond it) offers that
many contracts until the market next moves: a crossing order walks the levels up to its limit and rests
(lmt) or drops (ioc, mkt) the rest, a resting order fills at most that much per level per move, so
partial fills happen. Fees are charged per fill (`maker_fee`, `taker_fee`: fractions of the contract's
value) and realised PnL is booked when a position is reduced, each in the account the contract margins in:
linear contracts (PF_, FF_) in USD in the multi-collateral `flex` account, inverse ones (PI_, FI_) in the
base currency in its single-collateral margin account (`fi_xbtusd`, `fi_ethusd`), with the arithmetic of
`guardian.sim.contracts`. A fixed maturity past its last trading time takes no new orders
(`marketInactive`): its open orders are cancelled and its positions settled at the mark of that moment
(`expire_due`). Funding is not modelled.

What each order reads of the resting book (the margin the open orders hold, the account's best resting
prices for the self-fill check, the orders a price move reaches) is kept as running figures by
`guardian.sim.book`, updated as each order changes, so an order costs the same with 5 or 5,000 resting.

Every change is published on `bus` (see `guardian.sim.events`) as it happens, already rendered in the
WebSocket feeds' shapes (`guardian.sim.feeds`), so streams show exactly what REST reads show.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from guardian.kraken.times import parse_iso, to_iso
from guardian.sim import feeds
from guardian.sim.book import OrderBook
from guardian.sim.contracts import FLEX
from guardian.sim.events import EventBus
from guardian.sim.market import Instrument, Market

ORDER_TYPES = ("lmt", "post", "ioc", "mkt", "stp", "take_profit", "trailing_stop", "fok")
LIMIT_PRICED = ("lmt", "post", "ioc", "fok")
TRIGGER_TYPES = ("stp", "take_profit", "trailing_stop")
SIDES = ("buy", "sell")
TRIGGER_SIGNALS = ("mark", "index", "last", "spot")  # spot: python-kraken-sdk's name for index
SIGNAL_OUT = {"mark": "mark", "index": "spot", "spot": "spot", "last": "last"}
MARKET_PROTECTION = Decimal("0.01")  # a mkt order is an ioc limited to 1% through the mark
TRAILING_UNITS = ("PERCENT", "QUOTE_CURRENCY")
NOTICE_TYPES = ("market", "general", "new_feature", "bug_fix", "maintenance", "settlement")
NOTICE_PRIORITIES = ("low", "medium", "high")
CLI_ORD_ID_MAX = 100
# The reason an order left the book, as orders/status spells it and as the open_orders feed spells it.
WS_REASONS = {
    "CANCELLED_BY_USER": "cancelled_by_user",
    "DEAD_MAN_SWITCH": "dead_man_switch",
    "WOULD_NOT_REDUCE_POSITION": "would_not_reduce_position",
    "IOC_WOULD_NOT_EXECUTE": "ioc_order_failed_because_it_would_not_be_executed",
    "FULL_FILL": "full_fill",
    "PARTIAL_FILL": "partial_fill",
    "MARKET_INACTIVE": "market_inactive",
}
ZERO = Decimal(0)
# Each account's single-collateral margin accounts and what they hold when the account opens.
DEFAULT_MARGIN_BALANCES: Mapping[str, Decimal] = {"fi_xbtusd": Decimal(1), "fi_ethusd": Decimal(10)}
DAYS_KEPT = 7  # daily realised PnL and fees are kept this many days


class SimError(Exception):
    """An answer in Kraken's error envelope: `{"result": "error", "error": code}`."""

    def __init__(self, code: str, detail: str = "", *, http_status: int = 200) -> None:
        super().__init__(detail or code)
        self.code = code
        self.http_status = http_status


def _num(value: Decimal | None) -> float | None:
    if value is None:
        return None
    as_int = int(value)
    return as_int if value == as_int else float(value)


@dataclass(slots=True)
class Order:
    order_id: str
    cli_ord_id: str | None
    symbol: str
    side: str
    order_type: str
    size: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    reduce_only: bool
    received_ms: int
    trigger_signal: str = "mark"
    trailing_deviation: Decimal | None = None
    trailing_unit: str | None = None
    trailing_anchor: Decimal | None = None
    filled: Decimal = ZERO
    state: str = "open"  # open | filled | cancelled
    triggered: bool = False  # a trigger order that fired and now rests as a limit order
    updated_ms: int = 0
    update_reason: str = "NEW_USER_ORDER"
    inverse: bool = False  # an inverse contract's (its margin is in the base currency)

    @property
    def unfilled(self) -> Decimal:
        return self.size - self.filled

    @property
    def is_trigger(self) -> bool:
        return self.order_type in TRIGGER_TYPES and not self.triggered

    @property
    def resting_type(self) -> str:
        """The type Kraken shows for the order as it rests now (a mkt order is shown as the ioc it is)."""
        if self.order_type == "mkt":
            return "ioc"
        if self.is_trigger:
            return {"stp": "stop", "take_profit": "take_profit", "trailing_stop": "trailing_stop"}[
                self.order_type
            ]
        return "lmt" if self.triggered else self.order_type

    def view(self) -> dict[str, Any]:
        """The `order` object inside orderEvents."""
        return {
            "orderId": self.order_id,
            "cliOrdId": self.cli_ord_id,
            "type": self.resting_type,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": _num(self.size),
            "filled": _num(self.filled),
            "limitPrice": _num(self.limit_price),
            "reduceOnly": self.reduce_only,
            "timestamp": to_iso(self.received_ms / 1000),
            "lastUpdateTimestamp": to_iso((self.updated_ms or self.received_ms) / 1000),
        }

    def trigger_view(self) -> dict[str, Any]:
        """The `orderTrigger` object Kraken sends for a resting trigger order."""
        above = (self.order_type == "stp") == (self.side == "buy")
        if self.order_type == "trailing_stop":
            above = self.side == "buy"
        return {
            "uid": self.order_id,
            "clientId": self.cli_ord_id,
            "type": "lmt" if self.limit_price is not None else "ioc",
            "symbol": self.symbol,
            "side": self.side,
            "quantity": _num(self.size),
            "limitPrice": _num(self.limit_price),
            "triggerPrice": _num(self.stop_price),
            "triggerSide": "trigger_above" if above else "trigger_below",
            "triggerSignal": f"{SIGNAL_OUT[self.trigger_signal]}_price",
            "reduceOnly": self.reduce_only,
            "timestamp": to_iso(self.received_ms / 1000),
            "lastUpdateTimestamp": to_iso((self.updated_ms or self.received_ms) / 1000),
            "startTime": None,
        }


@dataclass(slots=True)
class Position:
    size: Decimal = ZERO  # signed: positive long, negative short
    price: Decimal = ZERO  # average entry
    opened_ms: int = 0


@dataclass(slots=True)
class Wallet:
    """A single-collateral margin account (Kraken's `fi_xbtusd`): inverse contracts in its currency margin
    and settle there."""

    currency: str  # XBT, ETH
    balance: Decimal  # the deposit, plus realised PnL, minus fees
    opening: Decimal  # what it held when the account opened
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO


def open_wallets(balances: Mapping[str, Decimal]) -> dict[str, Wallet]:
    """Margin accounts by name (`fi_xbtusd`), each holding its opening balance in its currency (XBT)."""
    return {name: Wallet(_wallet_currency(name), amount, amount) for name, amount in balances.items()}


def _wallet_currency(name: str) -> str:
    """`fi_xbtusd` -> XBT: the base currency of a single-collateral account named for a USD pair."""
    if not (name.startswith("fi_") and name.endswith("usd") and len(name) > 6):
        raise ValueError(f"a margin account is named fi_<base>usd, not {name!r}")
    return name[3:-3].upper()


@dataclass(slots=True)
class Day:
    """One UTC day's realised PnL and fees, per currency and in USD (each amount converted at the mark
    of its contract when it was booked)."""

    pnl: dict[str, Decimal] = field(default_factory=dict)
    pnl_usd: Decimal = ZERO
    fees: dict[str, Decimal] = field(default_factory=dict)
    fees_usd: Decimal = ZERO


@dataclass
class Account:
    name: str
    index: int = 0  # its place among the exchange's accounts (the order price moves visit them in)
    balance: Decimal = Decimal(100_000)  # USD collateral: the deposit, plus realised PnL, minus fees
    realized_pnl: Decimal = ZERO  # booked when positions are reduced, since the account opened
    fees: Decimal = ZERO  # paid since the account opened (a maker rebate counts negative)
    orders: dict[str, Order] = field(default_factory=dict)  # every order kept, oldest first
    open_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    by_cli: dict[str, Order] = field(default_factory=dict)  # cliOrdId -> the latest order kept with it
    positions: dict[str, Position] = field(default_factory=dict)
    fills: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    stream_fills: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1_000))  # feed shape
    switch_trigger_at: float | None = None  # exchange clock, epoch seconds
    switch_fired: int = 0
    leverage: dict[str, Decimal] = field(default_factory=dict)  # leveragepreferences: symbol -> max leverage
    # Sequence numbers of the account's streamed messages (fills count fills, the others messages).
    seq: dict[str, int] = field(default_factory=lambda: {"fills": 0, "positions": 0, "balances": 0})
    streamed_positions: set[str] = field(default_factory=set)  # symbols the last positions message held
    streamed_futures: dict[str, Any] = field(default_factory=dict)  # the last `futures` balances group
    # Single-collateral margin accounts (inverse contracts), by name: fi_xbtusd -> its wallet.
    wallets: dict[str, Wallet] = field(default_factory=lambda: open_wallets(DEFAULT_MARGIN_BALANCES))
    days: dict[str, Day] = field(default_factory=dict)  # UTC date (YYYY-MM-DD) -> realised PnL, fees
    # Positions settled at expiry, oldest first: symbol, time_ms, price, size, entry, realized.
    settlements: list[dict[str, Any]] = field(default_factory=list)

    def next_seq(self, feed: str) -> int:
        self.seq[feed] += 1
        return self.seq[feed]

    def open_orders(self) -> list[Order]:
        return [self.orders[i] for i in self.open_ids]

    def keep(self, order: Order) -> None:
        """Hold `order` (again: keeping an order twice leaves it where it was)."""
        self.orders[order.order_id] = order
        if order.cli_ord_id is not None:
            self.by_cli[order.cli_ord_id] = order

    def forget(self, order_id: str) -> None:
        """Drop a kept order (the oldest ones go first, so no older order has its cliOrdId)."""
        order = self.orders.pop(order_id)
        if order.cli_ord_id is not None and self.by_cli.get(order.cli_ord_id) is order:
            del self.by_cli[order.cli_ord_id]

    def find(self, order_id: str | None, cli_ord_id: str | None) -> Order | None:
        """An order by id, else the latest one kept with `cli_ord_id`."""
        if order_id:
            return self.orders.get(order_id)
        if cli_ord_id:
            return self.by_cli.get(cli_ord_id)
        return None


def _decimal(fields: Mapping[str, Any], name: str) -> Decimal | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise SimError("invalidArgument", f"{name} is not a number") from None
    if not value.is_finite():
        raise SimError("invalidArgument", f"{name} is not a finite number")
    return value


def _flag(fields: Mapping[str, Any], name: str) -> bool:
    raw = fields.get(name)
    if raw is None or raw == "":
        return False
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise SimError("invalidArgument", f"{name} must be true or false")


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    return str(raw)


def _check_deviation(deviation: Decimal, unit: str | None) -> None:
    """A trailing stop's distance: positive, and 0.1 to 50 when it is a percentage."""
    if deviation <= 0 or (unit == "PERCENT" and not Decimal("0.1") <= deviation <= 50):
        raise SimError("invalidArgument", "trailingStopMaxDeviation is out of range")


class Exchange:
    """The state of the simulated exchange and every operation on it."""

    def __init__(
        self,
        market: Market | None = None,
        *,
        clock: Callable[[], float] = time.time,
        price_collar: Decimal = Decimal("0.25"),
        max_open_orders: int = 500,
        max_orders_kept: int = 50_000,
        default_trigger_signal: str = "mark",
        status_retention_s: float = 5.0,
        maker_fee: Decimal = ZERO,
        taker_fee: Decimal = ZERO,
        book_depth: Decimal | None = None,
        book_levels: int = 10,
        margin_balances: Mapping[str, Decimal] = DEFAULT_MARGIN_BALANCES,
    ) -> None:
        if not (-1 < maker_fee < 1 and 0 <= taker_fee < 1):
            raise ValueError("fees are fractions of the notional: maker_fee in (-1, 1), taker_fee in [0, 1)")
        if book_depth is not None and book_depth <= 0:
            raise ValueError("book_depth must be positive (or None for unlimited)")
        if not 1 <= book_levels <= 1000:
            raise ValueError("book_levels must be between 1 and 1000")
        self.maker_fee = maker_fee
        self.taker_fee = taker_fee
        self.book_depth = book_depth
        self.book_levels = book_levels
        # Unverified how Kraken shows a closed position on open_positions: once more with balance 0 (on),
        # or just left out of the next message (off).
        self.closed_position_rows = True
        self.bus = EventBus()
        self.notices: list[dict[str, Any]] = []
        # Per symbol: the (bid, ask) the counts belong to, and what was taken per (side, price) since.
        self._taken: dict[str, tuple[tuple[Decimal, Decimal], dict[tuple[str, Decimal], Decimal]]] = {}
        self._marks_seen: dict[str, Decimal] = {}
        self._dirty: set[str] = set()  # accounts whose positions or balances changed: stream them
        self.market = market or Market()
        self._clock = clock
        self.clock_offset_s = 0.0
        self.price_collar = price_collar
        self.max_open_orders = max_open_orders
        self.max_orders_kept = max_orders_kept
        # Kraken does not document the default trigger signal (unverified): configurable, and shown.
        if default_trigger_signal not in TRIGGER_SIGNALS:
            raise ValueError("default_trigger_signal must be mark, index, spot or last")
        self.default_trigger_signal = default_trigger_signal
        # orders/status only reports orders that are open or closed within this many seconds.
        self.status_retention_s = status_retention_s
        open_wallets(margin_balances)  # named and valued as they must be, or ValueError now
        if any(amount < 0 for amount in margin_balances.values()):
            raise ValueError("margin_balances must not be negative")
        self.margin_balances = dict(margin_balances)
        self.accounts: dict[str, Account] = {}
        self.book = OrderBook()  # running figures over the resting orders: see guardian.sim.book
        self.settled: list[dict[str, Any]] = []  # expiries done: symbol, time, price, positions settled
        # Per symbol, the account it margins in; per margin account, its symbols (read on every order).
        self._account_of: dict[str, str] = {}
        self._symbols_of: dict[str, list[str]] = {}
        self._inverse: dict[str, tuple[bool, Decimal]] = {}  # symbol -> (inverse?, contract size)
        for listed in self.market.instruments:
            if listed.symbol not in self._account_of:
                self._account_of[listed.symbol] = listed.margin_account
                self._symbols_of.setdefault(listed.margin_account, []).append(listed.symbol)
                self._inverse[listed.symbol] = (listed.inverse, listed.contract_size)
        self._next_expiry = min(
            (i.last_trading_time for i in self.market.instruments if i.last_trading_time is not None),
            default=None,
        )

    # ---- time -------------------------------------------------------------------------------------
    def now(self) -> float:
        """The exchange's clock (the wall clock plus any injected offset), epoch seconds."""
        return self._clock() + self.clock_offset_s

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def server_time(self) -> str:
        return to_iso(self.now())

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            self.accounts[name] = Account(
                name, index=len(self.accounts), wallets=open_wallets(self.margin_balances)
            )
        return self.accounts[name]

    def wallet(self, acct: Account, name: str) -> Wallet:
        """`acct`'s margin account `name` (fi_xbtusd), opened empty if the account has none by that name."""
        found = acct.wallets.get(name)
        if found is None:
            found = acct.wallets[name] = Wallet(_wallet_currency(name), ZERO, ZERO)
        return found

    def instrument(self, symbol: str) -> Instrument:
        """A listed instrument (the caller knows it is listed)."""
        instrument = self.market.instrument(symbol)
        assert instrument is not None, symbol
        return instrument

    # ---- validation -------------------------------------------------------------------------------
    def _instrument(self, symbol: str | None) -> Instrument:
        if symbol is None:
            raise SimError("requiredArgumentMissing", "symbol is required")
        instrument = self.market.instrument(symbol.upper())
        if instrument is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol}")
        return instrument

    def _new_order(self, acct: Account, fields: Mapping[str, Any]) -> Order | str:
        """Build an order from sendorder fields, or return the status that rejects it."""
        order_type = _text(fields, "orderType")
        side = _text(fields, "side")
        size = _decimal(fields, "size")
        for name, value in (("orderType", order_type), ("side", side), ("size", size)):
            if value is None:
                raise SimError("requiredArgumentMissing", f"{name} is required")
        instrument = self._instrument(_text(fields, "symbol"))
        assert order_type is not None and side is not None and size is not None
        if order_type not in ORDER_TYPES:
            raise SimError("invalidArgument", f"orderType must be one of {', '.join(ORDER_TYPES)}")
        if side not in SIDES:
            raise SimError("invalidArgument", "side must be buy or sell")
        limit_price = _decimal(fields, "limitPrice")
        stop_price = _decimal(fields, "stopPrice")
        if order_type in LIMIT_PRICED and limit_price is None:
            raise SimError("requiredArgumentMissing", f"limitPrice is required for {order_type}")
        if order_type in ("stp", "take_profit") and stop_price is None:
            raise SimError("requiredArgumentMissing", f"stopPrice is required for {order_type}")
        signal = (_text(fields, "triggerSignal") or self.default_trigger_signal).lower()
        if signal not in TRIGGER_SIGNALS:
            raise SimError("invalidArgument", "triggerSignal must be mark, index (spot) or last")
        deviation = _decimal(fields, "trailingStopMaxDeviation")
        unit = _text(fields, "trailingStopDeviationUnit")
        if order_type == "trailing_stop":
            if deviation is None or unit is None:
                raise SimError(
                    "requiredArgumentMissing",
                    "trailing_stop needs trailingStopMaxDeviation and trailingStopDeviationUnit",
                )
            unit = unit.upper()
            if unit not in TRAILING_UNITS:
                raise SimError(
                    "invalidArgument", "trailingStopDeviationUnit must be PERCENT or QUOTE_CURRENCY"
                )
            _check_deviation(deviation, unit)
        cli_ord_id = _text(fields, "cliOrdId")
        if cli_ord_id is not None and len(cli_ord_id) > CLI_ORD_ID_MAX:
            raise SimError("invalidArgument", f"cliOrdId is longer than {CLI_ORD_ID_MAX} characters")
        reduce_only = _flag(fields, "reduceOnly")
        process_before = _text(fields, "processBefore")
        if process_before is not None:
            try:
                deadline = parse_iso(process_before)
            except ValueError:
                raise SimError("invalidArgument", "processBefore is not an ISO 8601 time") from None
            if deadline < self.now():
                return "wouldProcessAfterSpecifiedTime"

        quote = self.market.quotes[instrument.symbol]
        if instrument.expired(self.now()):
            return "marketInactive"
        if quote.suspended:
            return "marketSuspended"
        if not instrument.size_on_lot(size):
            return "invalidSize"
        for price in (limit_price, stop_price):
            if price is not None and not instrument.price_on_tick(price):
                return "invalidPrice"
        if limit_price is not None and not self._within_collar(side, limit_price, quote.mark):
            return "outsidePriceCollar"
        if cli_ord_id is not None and self._cli_ord_id_open(acct, cli_ord_id):
            return "clientOrderIdAlreadyExist"
        if len(acct.open_ids) >= self.max_open_orders:
            return "tooManyOrders"
        now_ms = self.now_ms()
        anchor = quote.signal(signal) if order_type == "trailing_stop" else None
        order = Order(
            order_id=str(uuid.uuid4()),
            cli_ord_id=cli_ord_id,
            symbol=instrument.symbol,
            side=side,
            order_type=order_type,
            size=size,
            limit_price=limit_price,
            stop_price=stop_price,
            reduce_only=reduce_only,
            received_ms=now_ms,
            updated_ms=now_ms,
            trigger_signal=signal,
            trailing_deviation=deviation,
            trailing_unit=unit,
            trailing_anchor=anchor,
            inverse=instrument.inverse,
        )
        if order_type == "trailing_stop":
            order.stop_price = self._trailing_trigger(order, instrument)
        if order_type == "mkt":
            move = 1 + MARKET_PROTECTION if side == "buy" else 1 - MARKET_PROTECTION
            order.limit_price = instrument.round_price(quote.mark * move)
        if reduce_only and not self._reduces(acct, order):
            return "wouldNotReducePosition"
        if self._self_fill(acct, order):
            return "selfFill"
        if not reduce_only and self._margin_needed(acct, order, quote.mark) > self.available_margin(
            acct, instrument.margin_account
        ):
            return "insufficientAvailableFunds"
        return order

    def _within_collar(self, side: str, price: Decimal, mark: Decimal) -> bool:
        if side == "buy":
            return price <= mark * (1 + self.price_collar)
        return price >= mark * (1 - self.price_collar)

    def _reduces(self, acct: Account, order: Order) -> bool:
        position = acct.positions.get(order.symbol)
        held = position.size if position else ZERO
        return (held > 0 and order.side == "sell") or (held < 0 and order.side == "buy")

    @staticmethod
    def _cli_ord_id_open(acct: Account, cli_ord_id: str) -> bool:
        """Whether an open order carries `cli_ord_id`. While one does, no other order with it is accepted
        and none is dropped (only closed orders are), so it is the latest one kept with it."""
        latest = acct.by_cli.get(cli_ord_id)
        return latest is not None and latest.state == "open"

    def _self_fill(self, acct: Account, order: Order) -> bool:
        """A limit-priced order that would trade against one of the account's own resting orders: a buy
        at or above its lowest resting offer, a sell at or below its highest resting bid."""
        if order.order_type not in LIMIT_PRICED or order.limit_price is None:
            return False
        if order.side == "buy":
            lowest = self.book.best_limit(acct, order.symbol, "sell")
            return lowest is not None and order.limit_price >= lowest
        highest = self.book.best_limit(acct, order.symbol, "buy")
        return highest is not None and order.limit_price <= highest

    def _margin_needed(self, acct: Account, order: Order, mark: Decimal) -> Decimal:
        """The initial margin of `order`'s unfilled size at its limit price (or `mark`), in the currency of
        the account the contract margins in: its value over the leverage."""
        instrument = self.instrument(order.symbol)
        value = instrument.math.value(order.unfilled, instrument.contract_size, order.limit_price or mark)
        return abs(value) / self.leverage(acct, order.symbol)

    def leverage(self, acct: Account, symbol: str) -> Decimal:
        """The leverage margin is computed at: the account's preference for `symbol`, else the instrument's
        maximum."""
        instrument = self.market.instrument(symbol)
        assert instrument is not None
        return acct.leverage.get(symbol, Decimal(instrument.max_leverage))

    def margin_needed(self, acct: Account, order: Order) -> Decimal:
        """The initial margin an open order holds (at its limit price, or the mark)."""
        return self._margin_needed(acct, order, self.market.quotes[order.symbol].mark)

    def balance(self, acct: Account, margin_account: str = FLEX) -> Decimal:
        """What `margin_account` holds: USD in `flex`, the base currency in a single-collateral account."""
        return acct.balance if margin_account == FLEX else self.wallet(acct, margin_account).balance

    def held_in(self, acct: Account, margin_account: str) -> list[tuple[str, Position, Instrument]]:
        """`acct`'s positions in contracts that margin in `margin_account`."""
        of = self._account_of
        return [
            (symbol, position, self.instrument(symbol))
            for symbol, position in acct.positions.items()
            if of[symbol] == margin_account
        ]

    def position_pnl(self, symbol: str, position: Position) -> Decimal:
        """A position's unrealised PnL at the mark, in its margin currency."""
        instrument = self.instrument(symbol)
        mark = self.market.quotes[symbol].mark
        return instrument.math.pnl(position.size, instrument.contract_size, position.price, mark)

    def position_margin(self, acct: Account, symbol: str, position: Position) -> Decimal:
        """A position's initial margin at the mark over the leverage, in its margin currency."""
        instrument = self.instrument(symbol)
        value = instrument.math.value(
            position.size, instrument.contract_size, self.market.quotes[symbol].mark
        )
        return abs(value) / self.leverage(acct, symbol)

    def liquidation_price(self, acct: Account, symbol: str) -> Decimal:
        """The mark of `symbol` at which the equity of the account it margins in would fall to its
        maintenance margin (0 when no such price exists). Linear: the other marks and the margin staying
        where they are. Inverse: every mark in the margin account moving in proportion (they are all on
        one base currency), see `inverse_threshold`."""
        position = acct.positions.get(symbol)
        if position is None or position.size == 0:
            return ZERO
        instrument = self.instrument(symbol)
        mark = self.market.quotes[symbol].mark
        if instrument.inverse:
            factor = self.inverse_threshold(acct, instrument.margin_account, Decimal(1) / 2)
            price = mark * factor if factor is not None else ZERO
        else:
            cushion = acct.balance + self.unrealized(acct) - self.initial_margin(acct) / 2
            price = mark - cushion / position.size
        return max(ZERO, instrument.round_price(price))

    def inverse_threshold(self, acct: Account, margin_account: str, share: Decimal) -> Decimal | None:
        """The factor k by which every mark in the single-collateral `margin_account` would move for its
        equity to fall to `share` of the positions' initial margin (1/2: the maintenance margin), or
        None if no move does. With balance B, positions s_i at entry E_i and mark m_i, contract size c_i,
        rate r_i = share / leverage_i:
            B + sum(s_i c_i (1/E_i - 1/(m_i k))) = sum(|s_i| c_i r_i / (m_i k))
            k = sum((s_i + |s_i| r_i) c_i / m_i) / (B + sum(s_i c_i / E_i))"""
        top = ZERO
        bottom = self.balance(acct, margin_account)
        held = self.held_in(acct, margin_account)
        if not held:
            return None
        for symbol, position, instrument in held:
            rate = share / self.leverage(acct, symbol)
            mark = self.market.quotes[symbol].mark
            size, contract = position.size, instrument.contract_size
            top += (size + abs(size) * rate) * contract / mark
            bottom += size * contract / position.price
        if top == 0 or bottom == 0 or (top > 0) != (bottom > 0):
            return None
        return top / bottom

    def unrealized(self, acct: Account, margin_account: str = FLEX) -> Decimal:
        """The unrealised PnL of the positions margined in `margin_account`, at the marks, in its currency."""
        total = ZERO
        of = self._account_of
        for symbol, position in acct.positions.items():
            if of[symbol] == margin_account:
                total += self.position_pnl(symbol, position)
        return total

    def initial_margin(self, acct: Account, margin_account: str = FLEX) -> Decimal:
        """The initial margin of the positions margined in `margin_account`, at the marks."""
        total = ZERO
        of = self._account_of
        for symbol, position in acct.positions.items():
            if of[symbol] == margin_account:
                total += self.position_margin(acct, symbol, position)
        return total

    def orders_margin(self, acct: Account, symbol: str | None = None, margin_account: str = FLEX) -> Decimal:
        """The initial margin `acct`'s open orders hold (those in `symbol`, or all those margined in
        `margin_account`): their unfilled size at the limit price, or the mark for orders without one,
        valued as the contract is and over the leverage; reduce-only orders hold none. Read from the
        book's running sums, one term per symbol."""
        exposure = self.book.exposure(acct)
        if symbol is not None:
            symbols: Iterable[str] = [symbol] if symbol in exposure else []
        elif margin_account == FLEX:  # most symbols: walk the ones with orders
            of = self._account_of
            symbols = [s for s in exposure if of[s] == FLEX]
        else:  # a single-collateral account's few symbols
            symbols = [s for s in self._symbols_of.get(margin_account, ()) if s in exposure]
        total = ZERO
        quotes = self.market.quotes
        for name in symbols:
            held = exposure[name]
            inverse, contract_size = self._inverse[name]
            mark = quotes[name].mark
            if inverse:  # size x contract size / price, summed
                value = held.reciprocal + held.unpriced / mark
            else:  # size x contract size x price, summed
                value = held.notional + held.unpriced * mark
            if contract_size != 1:
                value *= contract_size
            total += value / self.leverage(acct, name)
        return total

    def available_margin(self, acct: Account, margin_account: str = FLEX) -> Decimal:
        """What `margin_account` has left for new orders: its balance plus its unrealised PnL, less the
        initial margin of its positions and open orders."""
        orders = self.orders_margin(acct, margin_account=margin_account)
        unrealized = self.unrealized(acct, margin_account)
        return (
            self.balance(acct, margin_account)
            + unrealized
            - self.initial_margin(acct, margin_account)
            - orders
        )

    # ---- execution --------------------------------------------------------------------------------
    def _crosses(self, order: Order) -> bool:
        quote = self.market.quotes[order.symbol]
        if order.order_type == "mkt":
            return True
        assert order.limit_price is not None
        if order.side == "buy":
            return order.limit_price >= quote.ask
        return order.limit_price <= quote.bid

    def _taken_at(self, symbol: str) -> dict[tuple[str, Decimal], Decimal]:
        """What was taken from the book per (side, price) since the market last moved (then it refills)."""
        quote = self.market.quotes[symbol]
        touch = (quote.bid, quote.ask)
        held = self._taken.get(symbol)
        if held is None or held[0] != touch:
            held = (touch, {})
            self._taken[symbol] = held
        return held[1]

    def liquidity(self, symbol: str, side: str, price: Decimal) -> Decimal | None:
        """Contracts a `side` order can still trade at `price` before the market moves (None: unlimited)."""
        if self.book_depth is None:
            return None
        return max(ZERO, self.book_depth - self._taken_at(symbol).get((side, price), ZERO))

    def _levels(self, order: Order) -> list[tuple[Decimal, Decimal | None]]:
        """The price levels a crossing order takes from, best first, within its limit (if it has one)."""
        quote = self.market.quotes[order.symbol]
        instrument = self.market.instrument(order.symbol)
        assert instrument is not None
        if self.book_depth is None:
            if order.order_type == "mkt" or order.limit_price is None:
                return [(quote.mark, None)]  # unlimited depth: a market order fills at the mark
            return [(self._taker_price(order), None)]
        step = instrument.tick_size if order.side == "buy" else -instrument.tick_size
        touch = quote.ask if order.side == "buy" else quote.bid
        levels: list[tuple[Decimal, Decimal | None]] = []
        for i in range(self.book_levels):
            price = touch + step * i
            if price <= 0:
                break
            if order.limit_price is not None and (
                price > order.limit_price if order.side == "buy" else price < order.limit_price
            ):
                break
            levels.append((price, self.liquidity(order.symbol, order.side, price)))
        return levels

    def _wanted(self, acct: Account, order: Order) -> Decimal:
        """How much of `order` may still trade: its rest, or for reduce-only what the position allows."""
        if not order.reduce_only:
            return order.unfilled
        position = acct.positions.get(order.symbol)
        return min(order.unfilled, abs(position.size) if position else ZERO)

    def _take(self, acct: Account, order: Order) -> list[dict[str, Any]]:
        """Trade a crossing order against the book as far as its limit and the levels allow."""
        events = []
        for price, available in self._levels(order):
            want = self._wanted(acct, order)
            if want <= 0:
                break
            amount = want if available is None else min(want, available)
            if amount > 0:
                events.append(self._fill(acct, order, price, amount, maker=False))
        return events

    def _fill(
        self, acct: Account, order: Order, price: Decimal, amount: Decimal, *, maker: bool
    ) -> dict[str, Any]:
        """Trade `amount` of `order` at `price`: position, realised PnL, fee, the fill; the EXECUTION event."""
        before = order.view()
        was_resting = order.order_id in acct.open_ids
        instrument = self.instrument(order.symbol)
        position = acct.positions.setdefault(order.symbol, Position())
        signed = amount if order.side == "buy" else -amount
        now_ms = self.now_ms()
        held = position.size
        position.size, position.price, realized = instrument.math.apply_fill(
            held, position.price, signed, price, instrument.contract_size
        )
        if position.size != 0 and (held == 0 or (held > 0) != (position.size > 0)):
            position.opened_ms = now_ms  # opened, or flipped: the rest opened now
        if position.size == 0:
            del acct.positions[order.symbol]
        rate = self.maker_fee if maker else self.taker_fee  # of the fill's value, in the margin currency
        fee = abs(instrument.math.value(amount, instrument.contract_size, price)) * rate
        self._book(acct, instrument, realized, fee)
        order.filled += amount
        order.updated_ms = now_ms
        if order.reduce_only and order.unfilled > 0 and order.symbol not in acct.positions:
            order.size = order.filled  # the part that would not reduce is dropped, as Kraken does
        if order.unfilled == 0:
            order.state = "filled"
            order.update_reason = "FULL_FILL"
            acct.open_ids.pop(order.order_id, None)
        else:
            order.update_reason = "PARTIAL_FILL"
        self.book.sync(acct, order)
        if self.book_depth is not None:
            taken = self._taken_at(order.symbol)
            taken[(order.side, price)] = taken.get((order.side, price), ZERO) + amount
        self.market.record_trade(order.symbol, price)
        fill_id = str(uuid.uuid4())
        fill_type = "maker" if maker else "taker"
        acct.fills.append(
            {
                "fill_id": fill_id,
                "symbol": order.symbol,
                "side": order.side,
                "order_id": order.order_id,
                "cliOrdId": order.cli_ord_id,
                "size": _num(amount),
                "price": _num(price),
                "fillTime": to_iso(now_ms / 1000),
                "fillType": fill_type,
            }
        )
        row = feeds.fill_row(
            order, fill_id, price, amount, fee, fill_type, now_ms, acct.next_seq("fills"), instrument
        )
        acct.stream_fills.append(row)
        self.bus.publish("fill", acct.name, lambda: {"fill": row})
        self.bus.publish("trade", None, lambda: feeds.trade_row(order, fill_id, price, amount, now_ms))
        if was_resting:  # an order that never rested shows only as fills (observed on Kraken)
            closed = order.state == "filled"
            self._publish_order(acct, order, "full_fill" if closed else "partial_fill", is_cancel=closed)
        self._dirty.add(acct.name)
        return {
            "type": "EXECUTION",
            "executionId": fill_id,
            "price": _num(price),
            "amount": _num(amount),
            "orderPriorEdit": None,
            "orderPriorExecution": before,
            "takerReducedQuantity": None,
        }

    def _book(self, acct: Account, instrument: Instrument, realized: Decimal, fee: Decimal) -> None:
        """Credit realised PnL and charge a fee (both in the contract's margin currency) to the account the
        contract margins in, and count them in today's figures (in USD at the contract's mark)."""
        if instrument.inverse:
            wallet = self.wallet(acct, instrument.margin_account)
            wallet.balance += realized - fee
            wallet.realized_pnl += realized
            wallet.fees += fee
        else:
            acct.balance += realized - fee
            acct.realized_pnl += realized
            acct.fees += fee
        if realized == 0 and fee == 0:
            return
        day = self.today(acct)
        currency = instrument.margin_currency
        mark = self.market.quotes[instrument.symbol].mark
        day.pnl[currency] = day.pnl.get(currency, ZERO) + realized
        day.pnl_usd += instrument.math.to_usd(realized, mark)
        day.fees[currency] = day.fees.get(currency, ZERO) + fee
        day.fees_usd += instrument.math.to_usd(fee, mark)

    def today(self, acct: Account) -> Day:
        """`acct`'s figures for the current UTC day of the exchange's clock (the oldest days are dropped)."""
        key = to_iso(self.now())[:10]
        day = acct.days.get(key)
        if day is None:
            day = acct.days[key] = Day()
            while len(acct.days) > DAYS_KEPT:
                del acct.days[min(acct.days)]
        return day

    def _publish_order(
        self, acct: Account, order: Order, reason: str, *, is_cancel: bool, verbose_only: bool = False
    ) -> None:
        self.bus.publish(
            "order",
            acct.name,
            lambda: {
                "order": feeds.order_row(order),
                "order_id": order.order_id,
                "cli_ord_id": order.cli_ord_id,
                "is_cancel": is_cancel,
                "reason": reason,
                "verbose_only": verbose_only,
            },
        )

    def _flush(self) -> None:
        """Stream the positions and balances of every account an operation changed (one message each)."""
        marks = {s: q.mark for s, q in self.market.quotes.items()}
        if marks != self._marks_seen:
            self._marks_seen = marks
            self._dirty.update(a.name for a in self.accounts.values() if a.positions)
        dirty, self._dirty = self._dirty, set()
        for name in sorted(dirty):
            acct = self.accounts[name]
            self.bus.publish("positions", name, lambda a=acct: feeds.positions_message(self, a))  # type: ignore[misc]
            self.bus.publish("balances", name, lambda a=acct: feeds.balances_message(self, a))  # type: ignore[misc]

    def _taker_price(self, order: Order) -> Decimal:
        quote = self.market.quotes[order.symbol]
        if order.order_type == "mkt":
            return quote.mark
        return quote.ask if order.side == "buy" else quote.bid

    def _rest(self, acct: Account, order: Order) -> None:
        acct.keep(order)
        acct.open_ids[order.order_id] = None
        self.book.sync(acct, order)
        self._trim(acct)
        self._dirty.add(acct.name)

    def _trim(self, acct: Account) -> None:
        while len(acct.orders) > self.max_orders_kept:
            oldest = next(iter(acct.orders))
            if oldest in acct.open_ids:
                break
            acct.forget(oldest)

    def _available_within_limit(self, order: Order) -> Decimal | None:
        levels = self._levels(order)
        if any(available is None for _, available in levels):
            return None
        return sum((available for _, available in levels if available is not None), ZERO)

    def _place(self, acct: Account, order: Order) -> tuple[str, list[dict[str, Any]]]:
        """Run a new valid order; return its status and events."""
        if order.is_trigger:
            self._rest(acct, order)
            self._publish_order(acct, order, "new_placed_order_by_user", is_cancel=False)
            return "placed", [{"type": "PLACE", "orderTrigger": order.trigger_view()}]
        crosses = self._crosses(order)
        if order.order_type == "post" and crosses:
            self._publish_order(
                acct, order, "post_order_failed_because_it_would_be_filled", is_cancel=True, verbose_only=True
            )
            return "postWouldExecute", [self._reject(order, "POST_WOULD_EXECUTE")]
        if order.order_type in ("ioc", "fok") and crosses:
            available = self._available_within_limit(order)
            short = order.size if order.order_type == "fok" else ZERO
            if available is not None and (available == 0 or available < short):
                crosses = False  # nothing (fok: not all of it) to trade within the limit
        if order.order_type in ("ioc", "fok") and not crosses:
            self._publish_order(
                acct,
                order,
                "ioc_order_failed_because_it_would_not_be_executed",
                is_cancel=True,
                verbose_only=True,
            )
            return "iocWouldNotExecute", [self._reject(order, "IOC_WOULD_NOT_EXECUTE")]
        if crosses:
            acct.keep(order)
            events = self._take(acct, order)
            if order.state == "open" and order.unfilled > 0:
                if order.order_type in ("ioc", "fok", "mkt"):  # the rest of an immediate order is dropped
                    order.state = "cancelled"
                    order.update_reason = "IOC_WOULD_NOT_EXECUTE" if order.filled == 0 else "PARTIAL_FILL"
                else:  # the rest of a limit order rests
                    self._rest(acct, order)
                    reason = "partial_fill" if order.filled > 0 else "new_placed_order_by_user"
                    self._publish_order(acct, order, reason, is_cancel=False)
                    events.append({"type": "PLACE", "order": order.view(), "reducedQuantity": None})
            self._dirty.add(acct.name)
            self._trim(acct)
            return "placed", events
        self._rest(acct, order)
        self._publish_order(acct, order, "new_placed_order_by_user", is_cancel=False)
        return "placed", [{"type": "PLACE", "order": order.view(), "reducedQuantity": None}]

    @staticmethod
    def _reject(order: Order, reason: str) -> dict[str, Any]:
        return {"type": "REJECT", "uid": order.order_id, "order": order.view(), "reason": reason}

    # ---- endpoints --------------------------------------------------------------------------------
    def send_order(self, acct: Account, fields: Mapping[str, Any]) -> dict[str, Any]:
        received = self.server_time()
        built = self._new_order(acct, fields)
        if isinstance(built, str):
            return {"status": built, "receivedTime": received, "orderEvents": []}
        status, events = self._place(acct, built)
        answer: dict[str, Any] = {
            "order_id": built.order_id,
            "status": status,
            "receivedTime": received,
            "orderEvents": events,
        }
        if built.cli_ord_id is not None:
            answer["cliOrdId"] = built.cli_ord_id
        self.on_prices()
        return answer

    @staticmethod
    def _locate(
        acct: Account, fields: Mapping[str, Any], id_name: str, alias: str
    ) -> tuple[str | None, str | None, Order | None]:
        """The order an edit or cancel names: by id (Kraken spells it differently per endpoint) or cliOrdId."""
        order_id = _text(fields, id_name) or _text(fields, alias)
        cli_ord_id = _text(fields, "cliOrdId")
        if order_id is None and cli_ord_id is None:
            raise SimError("requiredArgumentMissing", f"{id_name} or cliOrdId is required")
        return order_id, cli_ord_id, acct.find(order_id, cli_ord_id)

    def edit_order(self, acct: Account, fields: Mapping[str, Any]) -> dict[str, Any]:
        received = self.server_time()
        order_id, _, order = self._locate(acct, fields, "orderId", "order_id")
        answer: dict[str, Any] = {
            "receivedTime": received,
            "orderId": order_id or (order and order.order_id),
        }
        if order is None or order.state != "open":
            return {**answer, "status": "orderForEditNotFound", "orderEvents": []}
        size = _decimal(fields, "size")
        limit_price = _decimal(fields, "limitPrice")
        stop_price = _decimal(fields, "stopPrice")
        deviation = _decimal(fields, "trailingStopMaxDeviation")
        qty_mode = (_text(fields, "qtyMode") or "RELATIVE").upper()
        if qty_mode not in ("ABSOLUTE", "RELATIVE"):
            raise SimError("invalidArgument", "qtyMode must be ABSOLUTE or RELATIVE")
        instrument = self.market.instrument(order.symbol)
        assert instrument is not None
        answer["orderId"] = order.order_id
        if (stop_price is not None or deviation is not None) and not order.is_trigger:
            return {**answer, "status": "orderForEditNotAStop", "orderEvents": []}
        if order.order_type == "trailing_stop" and order.is_trigger:
            if stop_price is not None:
                return {**answer, "status": "cannotEditTriggerPriceOfTrailingStop", "orderEvents": []}
            if limit_price is not None:
                return {**answer, "status": "cannotEditLimitPriceOfTrailingStop", "orderEvents": []}
            if deviation is not None:
                _check_deviation(deviation, order.trailing_unit)
        new_size = order.size
        if size is not None:
            new_size = size if qty_mode == "ABSOLUTE" else order.filled + size
            if not instrument.size_on_lot(new_size) or new_size <= order.filled:
                return {**answer, "status": "invalidSize", "orderEvents": []}
        for price in (limit_price, stop_price):
            if price is not None and not instrument.price_on_tick(price):
                return {**answer, "status": "invalidPrice", "orderEvents": []}
        quote = self.market.quotes[order.symbol]
        if limit_price is not None and not self._within_collar(order.side, limit_price, quote.mark):
            return {**answer, "status": "outsidePriceCollar", "orderEvents": []}
        old = order.view()
        candidate = dataclasses.replace(order)
        candidate.size = new_size
        if limit_price is not None:
            candidate.limit_price = limit_price
        if stop_price is not None:
            candidate.stop_price = stop_price
        if deviation is not None:
            candidate.trailing_deviation = deviation
        if not candidate.is_trigger and candidate.order_type == "post" and self._crosses(candidate):
            return {**answer, "status": "postWouldExecute", "orderEvents": []}
        if candidate.reduce_only and not self._reduces(acct, candidate):
            return {**answer, "status": "wouldNotReducePosition", "orderEvents": []}
        extra = self._margin_needed(acct, candidate, quote.mark) - self._margin_needed(
            acct, order, quote.mark
        )
        if (
            not candidate.reduce_only
            and extra > 0
            and extra > self.available_margin(acct, instrument.margin_account)
        ):
            return {**answer, "status": "insufficientAvailableFunds", "orderEvents": []}
        order.size, order.limit_price, order.stop_price = (
            new_size,
            candidate.limit_price,
            candidate.stop_price,
        )
        order.trailing_deviation = candidate.trailing_deviation
        if order.order_type == "trailing_stop" and order.is_trigger and deviation is not None:
            order.stop_price = self._trailing_trigger(order, instrument)  # same anchor, new distance
        order.updated_ms = self.now_ms()
        self.book.sync(acct, order)
        events: list[dict[str, Any]] = [
            {"type": "EDIT", "old": old, "new": order.view(), "reducedQuantity": None}
        ]
        self._dirty.add(acct.name)
        self._publish_order(acct, order, "edited_by_user", is_cancel=False)
        if not order.is_trigger and self._crosses(order):
            events.extend(self._take(acct, order))
        self.on_prices()
        return {**answer, "status": "edited", "orderEvents": events}

    def cancel_order(self, acct: Account, fields: Mapping[str, Any]) -> dict[str, Any]:
        received = self.server_time()
        order_id, cli_ord_id, order = self._locate(acct, fields, "order_id", "orderId")
        answer: dict[str, Any] = {"receivedTime": received}
        if order is None:
            answer.update(status="notFound")
            if order_id:
                answer["order_id"] = order_id
            if cli_ord_id:
                answer["cliOrdId"] = cli_ord_id
            return answer
        answer["order_id"] = order.order_id
        if order.cli_ord_id is not None:
            answer["cliOrdId"] = order.cli_ord_id
        if order.state == "filled":
            return {**answer, "status": "filled", "orderEvents": []}
        if order.state == "cancelled":
            return {**answer, "status": "notFound", "orderEvents": []}
        event = self._cancel(acct, order, "CANCELLED_BY_USER")
        self._flush()
        return {**answer, "status": "cancelled", "orderEvents": [event]}

    def _cancel(self, acct: Account, order: Order, reason: str) -> dict[str, Any]:
        order.state = "cancelled"
        order.update_reason = reason
        order.updated_ms = self.now_ms()
        acct.open_ids.pop(order.order_id, None)
        self.book.sync(acct, order)
        self._dirty.add(acct.name)
        self._publish_order(acct, order, WS_REASONS.get(reason, reason.lower()), is_cancel=True)
        if order.is_trigger:  # a trigger order that never fired is shown as the trigger it still is
            return {"type": "CANCEL", "uid": order.order_id, "orderTrigger": order.trigger_view()}
        return {"type": "CANCEL", "uid": order.order_id, "order": order.view()}

    def cancel_all(
        self, acct: Account, symbol: str | None, *, reason: str = "CANCELLED_BY_USER"
    ) -> dict[str, Any]:
        received = self.server_time()
        if symbol is not None:
            symbol = self._instrument(symbol).symbol
        targets = [o for o in acct.open_orders() if symbol is None or o.symbol == symbol]
        events = [self._cancel(acct, o, reason) for o in targets]
        self._flush()
        return {
            "receivedTime": received,
            "cancelOnly": symbol or "all",
            "status": "cancelled" if targets else "noOrdersToCancel",
            "cancelledOrders": [
                {"order_id": o.order_id, **({"cliOrdId": o.cli_ord_id} if o.cli_ord_id else {})}
                for o in targets
            ],
            "orderEvents": events,
        }

    def batch(self, acct: Account, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        tags: dict[str, str] = {}
        for item in items:
            try:
                results.append(self._batch_item(acct, item, tags))
            except SimError as exc:  # a malformed item fails alone, as on Kraken
                entry: dict[str, Any] = {"status": exc.code, "orderEvents": []}
                for key in ("order_tag", "order_id", "cliOrdId"):
                    if item.get(key) is not None:
                        entry[key] = item[key]
                results.append(entry)
        return results

    def _batch_item(self, acct: Account, item: Mapping[str, Any], tags: dict[str, str]) -> dict[str, Any]:
        """One batch item. Edits and cancels may name an earlier item's `order_tag` as their order_id."""
        kind = item.get("order")
        fields = dict(item)
        if kind == "send":
            answer = self.send_order(acct, fields)
            entry = {
                "status": answer["status"],
                "order_tag": item.get("order_tag"),
                "order_id": answer.get("order_id"),
                "dateTimeReceived": answer["receivedTime"],
                "orderEvents": answer["orderEvents"],
            }
            if answer.get("order_id") and item.get("order_tag") is not None:
                tags[str(item["order_tag"])] = answer["order_id"]
            if item.get("cliOrdId") is not None:
                entry["cliOrdId"] = item["cliOrdId"]
            return entry
        if kind == "edit":
            fields["orderId"] = tags.get(str(item.get("order_id")), item.get("order_id"))
            answer = self.edit_order(acct, fields)
            return {
                "status": answer["status"],
                "order_id": answer.get("orderId"),
                "orderEvents": answer["orderEvents"],
            }
        if kind == "cancel":
            fields["order_id"] = tags.get(str(item.get("order_id")), item.get("order_id"))
            answer = self.cancel_order(acct, fields)
            entry = {
                "status": answer["status"],
                "order_id": answer.get("order_id"),
                "orderEvents": answer.get("orderEvents", []),
            }
            if answer.get("cliOrdId") is not None:
                entry["cliOrdId"] = answer["cliOrdId"]
            return entry
        raise SimError("invalidArgument", "batch items must be send, edit or cancel")

    # ---- reads ------------------------------------------------------------------------------------
    def open_orders_payload(self, acct: Account) -> list[dict[str, Any]]:
        rows = []
        for order_id in reversed(acct.open_ids):  # newest first, as Kraken lists them
            order = acct.orders[order_id]
            row: dict[str, Any] = {
                "order_id": order.order_id,
                "symbol": order.symbol,
                "side": order.side,
                "orderType": order.resting_type,
                "unfilledSize": _num(order.unfilled),
                "filledSize": _num(order.filled),
                "receivedTime": to_iso(order.received_ms / 1000),
                "lastUpdateTime": to_iso(order.updated_ms / 1000),
                "status": "untouched" if order.filled == 0 else "partiallyFilled",
                "reduceOnly": order.reduce_only,
            }
            if order.limit_price is not None:
                row["limitPrice"] = _num(order.limit_price)
            if order.is_trigger:
                row["stopPrice"] = _num(order.stop_price)
                row["triggerSignal"] = SIGNAL_OUT[order.trigger_signal]
            if order.cli_ord_id is not None:
                row["cliOrdId"] = order.cli_ord_id
            rows.append(row)
        return rows

    def open_positions_payload(self, acct: Account) -> list[dict[str, Any]]:
        """REST `openpositions`. `unrealizedPnl` is in the contract's margin currency; an inverse contract's
        row has no `pnlCurrency`, a fixed maturity's `unrealizedFunding` is null (Kraken's example)."""
        rows = []
        for symbol, position in acct.positions.items():
            instrument = self.instrument(symbol)
            row: dict[str, Any] = {
                "side": "long" if position.size > 0 else "short",
                "symbol": symbol,
                "price": _num(position.price),
                "fillTime": to_iso(position.opened_ms / 1000),
                "size": _num(abs(position.size)),
                "unrealizedPnl": _num(self.position_pnl(symbol, position)),
                "unrealizedFunding": 0 if instrument.perpetual else None,
            }
            if not instrument.inverse:
                row["pnlCurrency"] = "USD"
            rows.append(row)
        return rows

    def accounts_payload(self, acct: Account) -> dict[str, Any]:
        unrealized = self.unrealized(acct)
        margin = self.initial_margin(acct)
        available = self.available_margin(acct)
        equity = acct.balance + unrealized
        balance = _num(acct.balance)
        payload: dict[str, Any] = {
            "cash": {"type": "cashAccount", "balances": {"usd": 0}},
            "flex": {
                "type": "multiCollateralMarginAccount",
                "currencies": {
                    "USD": {
                        "quantity": balance,
                        "value": balance,
                        "collateral": balance,
                        "available": _num(available),
                    },
                },
                "initialMargin": _num(margin),
                "initialMarginWithOrders": _num(equity - available),
                "maintenanceMargin": _num(margin / 2),
                "balanceValue": balance,
                "portfolioValue": _num(equity),
                "collateralValue": balance,
                "pnl": _num(unrealized),
                "unrealizedFunding": 0,
                "totalUnrealized": _num(unrealized),
                "totalUnrealizedAsMargin": _num(unrealized),
                "availableMargin": _num(available),
                "marginEquity": _num(equity),
            },
        }
        for name in acct.wallets:
            payload[name] = self.margin_account_payload(acct, name)
        return payload

    def idle(self, acct: Account, name: str) -> bool:
        """Whether `acct` holds no position and no margined open order in margin account `name` (its
        figures are then its balance alone)."""
        of = self._account_of
        if any(of[symbol] == name for symbol in acct.positions):
            return False
        exposure = self.book.exposure(acct)
        return not any(symbol in exposure for symbol in self._symbols_of.get(name, ()))

    def margin_figures(self, acct: Account, name: str) -> dict[str, Decimal]:
        """A single-collateral margin account's figures, in its currency: balance, pnl (unrealised),
        pv (portfolio value), im and mm (positions), orders (open orders' initial margin), af (available
        funds: pv less the initial margin of positions and orders)."""
        balance = self.balance(acct, name)
        if self.idle(acct, name):
            pnl = im = orders = ZERO
        else:
            pnl = self.unrealized(acct, name)
            im = self.initial_margin(acct, name)
            orders = self.orders_margin(acct, margin_account=name)
        pv = balance + pnl
        return {
            "balance": balance,
            "pnl": pnl,
            "pv": pv,
            "im": im,
            "mm": im / 2,
            "orders": orders,
            "af": pv - im - orders,
        }

    def reference_mark(self, acct: Account, name: str) -> tuple[str | None, Decimal]:
        """The contract a margin account's prices are told in, and its mark: its largest position's (by
        USD notional), else the first listed inverse contract margined there (the perpetual), else none."""
        held = self.held_in(acct, name)
        if held:
            symbol, _, _ = max(held, key=lambda row: abs(row[1].size) * row[2].contract_size)
            return symbol, self.market.quotes[symbol].mark
        for instrument in self.market.instruments:
            if instrument.inverse and instrument.margin_account == name:
                return instrument.symbol, self.market.quotes[instrument.symbol].mark
        return None, ZERO

    def margin_account_payload(self, acct: Account, name: str) -> dict[str, Any]:
        """REST `accounts`: a single-collateral margin account (`"type": "marginAccount"`) as Kraken
        documents it: `balances` holds the currency (lower case) and each position's signed size by
        symbol; `auxiliary` pv, pnl, af, funding and usd (pv in USD at the reference mark);
        `marginRequirements` im, mm, lt (3/4 of mm), tt (1/2 of mm), in the currency; `triggerEstimates`
        the prices (of the reference contract) at which each would be reached, 0 when none."""
        wallet = self.wallet(acct, name)
        figures = self.margin_figures(acct, name)
        balances: dict[str, Any] = {wallet.currency.lower(): _num(figures["balance"])}
        for held, position, _ in self.held_in(acct, name):
            balances[held] = _num(position.size)
        symbol, mark = self.reference_mark(acct, name)
        mm = figures["mm"]
        shares = {"im": Decimal(1), "mm": Decimal(1) / 2, "lt": Decimal(3) / 8, "tt": Decimal(1) / 4}
        estimates: dict[str, Any] = {}
        for key, share in shares.items():
            factor = self.inverse_threshold(acct, name, share)
            if factor is None or symbol is None:
                estimates[key] = 0
            else:
                estimates[key] = _num(max(ZERO, self.instrument(symbol).round_price(mark * factor)))
        return {
            "type": "marginAccount",
            "currency": wallet.currency.lower(),
            "balances": balances,
            "auxiliary": {
                "usd": _num(figures["pv"] * mark),
                "pv": _num(figures["pv"]),
                "pnl": _num(figures["pnl"]),
                "af": _num(figures["af"]),
                "funding": 0,
            },
            "marginRequirements": {
                "im": _num(figures["im"]),
                "mm": _num(mm),
                "lt": _num(mm * 3 / 4),
                "tt": _num(mm / 2),
            },
            "triggerEstimates": estimates,
        }

    def fills_payload(self, acct: Account, last_fill_time: str | None) -> list[dict[str, Any]]:
        fills = list(acct.fills)
        if last_fill_time is not None:
            try:
                cutoff = parse_iso(last_fill_time)
            except ValueError:
                raise SimError("invalidArgument", "lastFillTime is not an ISO 8601 time") from None
            fills = [f for f in fills if parse_iso(f["fillTime"]) <= cutoff]
        fills.reverse()  # newest first, as Kraken lists them
        return [{k: v for k, v in f.items() if v is not None} for f in fills[:100]]

    def order_status_payload(
        self, acct: Account, order_ids: list[str], cli_ids: list[str]
    ) -> list[dict[str, Any]]:
        found: list[Order] = []
        for oid in order_ids:
            order = acct.orders.get(oid)
            if order is not None:
                found.append(order)
        for cid in cli_ids:
            order = acct.find(None, cid)
            if order is not None and order not in found:
                found.append(order)
        horizon_ms = self.now_ms() - self.status_retention_s * 1000
        rows = []
        for order in found:
            if order.state != "open" and order.updated_ms < horizon_ms:
                continue  # Kraken reports closed orders here only for a few seconds
            if order.state == "open":
                status = "TRIGGER_PLACED" if order.is_trigger else "ENTERED_BOOK"
            elif order.state == "filled":
                status = "FULLY_EXECUTED"
            else:
                status = "CANCELLED"
            view = order.view()
            view["type"] = "TRIGGER_ORDER" if order.order_type in TRIGGER_TYPES else "ORDER"
            view["orderType"] = order.resting_type
            view["priceTriggerOptions"] = None
            view["triggerTime"] = None
            if order.order_type in TRIGGER_TYPES:
                above = order.trigger_view()["triggerSide"] == "trigger_above"
                view["priceTriggerOptions"] = {
                    "triggerPrice": _num(order.stop_price),
                    "triggerSide": "TRIGGER_ABOVE" if above else "TRIGGER_BELOW",
                    "triggerSignal": f"{SIGNAL_OUT[order.trigger_signal].upper()}_PRICE",
                }
            rows.append(
                {
                    "order": view,
                    "status": status,
                    "updateReason": order.update_reason,
                    "error": None,
                }
            )
        return rows

    # ---- notices ----------------------------------------------------------------------------------
    def post_notice(
        self,
        *,
        note: str,
        notice_type: str = "general",
        priority: str = "low",
        effective_time_ms: int | None = None,
        expected_downtime_minutes: int | None = None,
    ) -> dict[str, Any]:
        """Announce a notice to every account (REST `notifications`, the `notifications_auth` feed)."""
        if notice_type not in NOTICE_TYPES:
            raise ValueError(f"type must be one of {', '.join(NOTICE_TYPES)}")
        if priority not in NOTICE_PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(NOTICE_PRIORITIES)}")
        if not note or len(note) > 2000:
            raise ValueError("a notice needs a note of 1 to 2000 characters")
        if expected_downtime_minutes is not None and not 0 <= expected_downtime_minutes <= 7 * 24 * 60:
            raise ValueError("expected_downtime_minutes must be between 0 and 10080")
        notice: dict[str, Any] = {
            "id": len(self.notices) + 1,
            "type": notice_type,
            "priority": priority,
            "note": note,
            "effective_time": self.now_ms() if effective_time_ms is None else effective_time_ms,
        }
        if expected_downtime_minutes is not None:
            notice["expected_downtime_minutes"] = expected_downtime_minutes
        self.notices.append(notice)
        for name in sorted(self.accounts):
            self.bus.publish("notice", name, lambda: {"notification": dict(notice)})
        return notice

    def clear_notices(self) -> None:
        self.notices.clear()

    def notifications_payload(self) -> list[dict[str, Any]]:
        """REST `notifications`: camelCase, an ISO effectiveTime and no id, unlike the feed."""
        rows = []
        for notice in self.notices:
            row = {
                "type": notice["type"],
                "priority": notice["priority"],
                "note": notice["note"],
                "effectiveTime": to_iso(notice["effective_time"] / 1000),
            }
            if "expected_downtime_minutes" in notice:
                row["expectedDowntimeMinutes"] = notice["expected_downtime_minutes"]
            rows.append(row)
        return rows

    # ---- the dead man's switch -------------------------------------------------------------------
    def arm_switch(self, acct: Account, timeout_s: int) -> dict[str, str]:
        """Start, push back (timeout > 0) or stop (0) the account's countdown; Kraken's answer."""
        now = self.now()
        acct.switch_trigger_at = now + timeout_s if timeout_s > 0 else None
        trigger = to_iso(acct.switch_trigger_at) if acct.switch_trigger_at is not None else "0"
        return {"currentTime": to_iso(now), "triggerTime": trigger}

    def fire_switch(self, acct: Account) -> int:
        """The countdown ran out: cancel every open order, trigger orders too; the switch stays off."""
        acct.switch_trigger_at = None
        acct.switch_fired += 1
        return len(self.cancel_all(acct, None, reason="DEAD_MAN_SWITCH")["cancelledOrders"])

    # ---- expiry -------------------------------------------------------------------------------------
    def expire_due(self) -> list[str]:
        """Settle every fixed maturity whose last trading time the exchange's clock has reached (one
        comparison when none has): its open orders are cancelled (`MARKET_INACTIVE`), every position in
        it is closed at the settlement price (the mark now, which the walk then leaves alone) with the PnL
        credited to the account it margins in, and the positions and balances streamed. Returns the
        symbols settled."""
        if self._next_expiry is None or self.now() < self._next_expiry:
            return []
        now = self.now()
        due = [i for i in self.market.instruments if i.expired(now) and i.symbol not in self.market.settled]
        for instrument in due:
            self._settle(instrument)
        self._next_expiry = min(
            (
                i.last_trading_time
                for i in self.market.instruments
                if i.last_trading_time is not None and i.symbol not in self.market.settled
            ),
            default=None,
        )
        self._flush()
        return [i.symbol for i in due]

    def _settle(self, instrument: Instrument) -> None:
        symbol = instrument.symbol
        price = self.market.settle(symbol)
        now_ms = self.now_ms()
        settled = 0
        for acct in self.accounts.values():
            for order in [o for o in acct.open_orders() if o.symbol == symbol]:
                self._cancel(acct, order, "MARKET_INACTIVE")
            position = acct.positions.pop(symbol, None)
            if position is None or position.size == 0:
                continue
            realized = instrument.math.pnl(position.size, instrument.contract_size, position.price, price)
            self._book(acct, instrument, realized, ZERO)
            acct.settlements.append(
                {
                    "symbol": symbol,
                    "time_ms": now_ms,
                    "price": price,
                    "size": position.size,
                    "entry": position.price,
                    "realized": realized,
                }
            )
            self._dirty.add(acct.name)
            settled += 1
        self.settled.append(
            {"symbol": symbol, "time": to_iso(now_ms / 1000), "price": price, "positions": settled}
        )

    # ---- prices moving ----------------------------------------------------------------------------
    def on_prices(self) -> None:
        """After a price change: fire trigger orders whose level was reached, fill resting limits.

        Orders are visited in the order of a walk over every account's open orders, but only those a
        visit may act on (`OrderBook.due`). A fill moves the last price; the stops and take-profits on the
        last price whose level it passes join the walk if the walk has not gone past them yet. Fixed
        maturities past their last trading time settle first."""
        self.expire_due()
        quotes = self.market.quotes
        walk = self.book.due(quotes)
        heapq.heapify(walk)
        queued = {key for key, _ in walk}
        while walk:
            key, resting = heapq.heappop(walk)
            order = resting.order
            if order.state != "open":
                continue
            quote = quotes[order.symbol]
            last = quote.last
            self._visit(resting.account, order)
            if quote.last != last:
                for later in self.book.reached_by_last(order.symbol, last, quote.last):
                    if later[0] > key and later[0] not in queued:
                        queued.add(later[0])
                        heapq.heappush(walk, later)
        self._flush()

    def _visit(self, acct: Account, order: Order) -> None:
        """A price moved: a trigger order fires if its level was reached, a resting limit that crosses
        fills."""
        instrument = self.market.instrument(order.symbol)
        assert instrument is not None
        if order.is_trigger:
            self._watch_trigger(acct, order, instrument)
        elif self._crosses(order):
            assert order.limit_price is not None
            if order.reduce_only and not self._reduces(acct, order):
                # The position it was to reduce is gone (or flipped): Kraken cancels it.
                self._cancel(acct, order, "WOULD_NOT_REDUCE_POSITION")
                return
            available = self.liquidity(order.symbol, order.side, order.limit_price)
            want = self._wanted(acct, order)
            amount = want if available is None else min(want, available)
            if amount > 0:
                self._fill(acct, order, order.limit_price, amount, maker=True)

    def _trailing_trigger(self, order: Order, instrument: Instrument) -> Decimal:
        assert order.trailing_anchor is not None and order.trailing_deviation is not None
        if order.trailing_unit == "PERCENT":
            offset = order.trailing_anchor * order.trailing_deviation / 100
        else:
            offset = order.trailing_deviation
        level = order.trailing_anchor + offset if order.side == "buy" else order.trailing_anchor - offset
        return instrument.round_price(max(level, instrument.tick_size))

    def _watch_trigger(self, acct: Account, order: Order, instrument: Instrument) -> None:
        price = self.market.quotes[order.symbol].signal(order.trigger_signal)
        if order.order_type == "trailing_stop":
            assert order.trailing_anchor is not None
            better = price < order.trailing_anchor if order.side == "buy" else price > order.trailing_anchor
            if better:
                order.trailing_anchor = price
                order.stop_price = self._trailing_trigger(order, instrument)
            fire = price >= order.stop_price if order.side == "buy" else price <= order.stop_price  # type: ignore[operator]
        elif order.order_type == "stp":
            fire = price >= order.stop_price if order.side == "buy" else price <= order.stop_price  # type: ignore[operator]
        else:  # take_profit
            fire = price <= order.stop_price if order.side == "buy" else price >= order.stop_price  # type: ignore[operator]
        if not fire:
            return
        if order.reduce_only and not self._reduces(acct, order):
            self._cancel(acct, order, "WOULD_NOT_REDUCE_POSITION")
            return
        order.triggered = True
        order.update_reason = "STOP_ORDER_TRIGGERED"
        order.updated_ms = self.now_ms()
        self.book.sync(acct, order)  # now a limit order (or a market order about to trade)
        if order.limit_price is None:  # a stop without a limit price fires as a market order
            self._take(acct, order)
            if order.state == "open":  # the book ran out: the rest of a market order is dropped
                self._cancel(acct, order, "IOC_WOULD_NOT_EXECUTE")
        elif self._crosses(order):
            self._take(acct, order)
        else:
            self._publish_order(acct, order, "stop_order_triggered", is_cancel=False)
