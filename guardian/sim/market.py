"""The simulator's market: instruments and prices that move on a bounded, seedable random walk.

The default set is what Kraken Futures lists, one or more of each kind: linear multi-collateral
perpetuals (`PF_`), inverse perpetuals (`PI_XBTUSD`, `PI_ETHUSD`), an inverse fixed maturity
(`FI_XBTUSD_<yymmdd>`) and a linear fixed maturity (`FF_XBTUSD_<yymmdd>`). The fixed maturities' last
trading time is 16:00 UTC on the last Friday of the month after next, counted from the clock the set is
built with (`default_instruments(now)`); after it they trade no more and settle
(guardian.sim.exchange).
"""

from __future__ import annotations

import calendar
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from guardian.sim.contracts import ARITHMETIC, INVERSE, LINEAR, Arithmetic, margin_account


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    size_precision: int  # contractValueTradePrecision: digits after the point a size may have
    initial_price: Decimal
    max_position_size: Decimal = Decimal(1_000_000)
    max_leverage: int = 50
    kind: str = LINEAR  # Kraken's `type`: flexible_futures (linear) or futures_inverse
    contract_size: Decimal = Decimal(1)
    last_trading_time: float | None = None  # epoch seconds; None: a perpetual
    underlying: str | None = None  # Kraken's `underlying` (inverse contracts: rr_xbtusd)
    # The `type` the instruments list shows, when it is not `kind` (a test's contract of a type a client
    # does not know, e.g. futures_vanilla, traded with `kind`'s arithmetic).
    listed_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARITHMETIC:
            raise ValueError(f"{self.symbol}: kind must be {LINEAR} or {INVERSE}")

    @property
    def pair(self) -> str:
        return f"{self.base}:{self.quote}"

    @property
    def math(self) -> Arithmetic:
        """This contract's arithmetic (guardian.sim.contracts)."""
        return ARITHMETIC[self.kind]

    @property
    def inverse(self) -> bool:
        return self.kind == INVERSE

    @property
    def margin_account(self) -> str:
        """`flex`, or the single-collateral account of the base currency (`fi_xbtusd`)."""
        return margin_account(self.kind, self.base, self.quote)

    @property
    def margin_currency(self) -> str:
        """What its value, PnL, fees and margin are counted in: USD, or the base currency."""
        return self.base if self.inverse else self.quote

    @property
    def perpetual(self) -> bool:
        return self.last_trading_time is None

    def expired(self, now: float) -> bool:
        """Past its last trading time (a perpetual never is)."""
        return self.last_trading_time is not None and now >= self.last_trading_time

    @property
    def tag(self) -> str:
        """The tickers' `tag`: perpetual, or month / quarter for a fixed maturity."""
        if self.last_trading_time is None:
            return "perpetual"
        month = datetime.fromtimestamp(self.last_trading_time, UTC).month
        return "quarter" if month % 3 == 0 else "month"

    def round_price(self, price: float | Decimal) -> Decimal:
        ticks = (Decimal(str(price)) / self.tick_size).to_integral_value(ROUND_HALF_EVEN)
        return ticks * self.tick_size

    def price_on_tick(self, price: Decimal) -> bool:
        try:  # an absurdly large price overflows Decimal's precision: not on any tick
            return price > 0 and (price % self.tick_size) == 0
        except InvalidOperation:
            return False

    def size_on_lot(self, size: Decimal) -> bool:
        try:  # likewise an absurdly large size
            return size > 0 and size == size.quantize(Decimal(1).scaleb(-self.size_precision))
        except InvalidOperation:
            return False


# The linear multi-collateral perpetuals every set starts with (many tests trade PF_XBTUSD at 60000).
LINEAR_PERPETUALS: tuple[Instrument, ...] = (
    Instrument("PF_XBTUSD", "XBT", "USD", Decimal("0.5"), 4, Decimal("60000")),
    Instrument("PF_ETHUSD", "ETH", "USD", Decimal("0.1"), 3, Decimal("3000")),
    Instrument("PF_SOLUSD", "SOL", "USD", Decimal("0.01"), 2, Decimal("150")),
)
SETTLEMENT_HOUR_UTC = 16


def inverse_perpetual(base: str, tick: str, price: str) -> Instrument:
    """`PI_` + base + `USD`: one contract is 1 USD, whole contracts, margined in the base currency."""
    return Instrument(
        f"PI_{base}USD",
        base,
        "USD",
        Decimal(tick),
        0,
        Decimal(price),
        kind=INVERSE,
        underlying=f"rr_{base.lower()}usd",
    )


def fixed_maturity(
    kind: str, base: str, tick: str, precision: int, price: str, last_trading_time: float
) -> Instrument:
    """`FI_` (inverse) or `FF_` (linear) + base + `USD_` + the date of `last_trading_time` (yymmdd)."""
    day = datetime.fromtimestamp(last_trading_time, UTC).strftime("%y%m%d")
    prefix = "FI" if kind == INVERSE else "FF"
    return Instrument(
        f"{prefix}_{base}USD_{day}",
        base,
        "USD",
        Decimal(tick),
        precision,
        Decimal(price),
        kind=kind,
        last_trading_time=last_trading_time,
        underlying=f"rr_{base.lower()}usd" if kind == INVERSE else None,
    )


def last_trading_time(now: float) -> float:
    """16:00 UTC on the last Friday of the month after the next one, from `now` (epoch seconds)."""
    moment = datetime.fromtimestamp(now, UTC)
    year, month = divmod(moment.year * 12 + moment.month - 1 + 2, 12)
    month += 1
    last_day = calendar.monthrange(year, month)[1]
    friday = max(d for d in range(last_day - 6, last_day + 1) if calendar.weekday(year, month, d) == 4)
    return datetime(year, month, friday, SETTLEMENT_HOUR_UTC, tzinfo=UTC).timestamp()


def default_instruments(now: float | None = None) -> tuple[Instrument, ...]:
    """The default set as of `now` (epoch seconds; the wall clock if None): the linear perpetuals, the
    inverse perpetuals, and one inverse and one linear fixed maturity expiring on `last_trading_time`."""
    expiry = last_trading_time(time.time() if now is None else now)
    return (
        *LINEAR_PERPETUALS,
        inverse_perpetual("XBT", "0.5", "60000"),
        inverse_perpetual("ETH", "0.05", "3000"),
        fixed_maturity(INVERSE, "XBT", "0.5", 0, "60500", expiry),
        fixed_maturity(LINEAR, "XBT", "1", 4, "60500", expiry),
    )


# Built when the module is first imported (a `guardian sim` process: when it starts). A simulator made
# with its own clock and no market builds the set from that clock instead (guardian.sim.app).
DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = default_instruments()


def _perpetual(base: str, tick: str, precision: int, price: str, leverage: int) -> Instrument:
    """A linear multi-collateral perpetual, `PF_` + base + `USD`."""
    return Instrument(
        f"PF_{base}USD", base, "USD", Decimal(tick), precision, Decimal(price), max_leverage=leverage
    )


# Opt-in (`guardian sim --instruments wide`, `Market(instruments=WIDE_INSTRUMENTS)`): 24 linear
# perpetuals for benchmarks and tests that spread orders over many symbols. The first three are the
# default set's linear perpetuals.
WIDE_INSTRUMENTS: tuple[Instrument, ...] = (
    *LINEAR_PERPETUALS,
    _perpetual("XRP", "0.0001", 0, "0.6", 25),
    _perpetual("ADA", "0.00001", 0, "0.45", 25),
    _perpetual("DOGE", "0.000001", 0, "0.15", 25),
    _perpetual("LTC", "0.01", 1, "80", 25),
    _perpetual("LINK", "0.001", 1, "15", 25),
    _perpetual("DOT", "0.001", 1, "7", 25),
    _perpetual("AVAX", "0.001", 1, "35", 25),
    _perpetual("BCH", "0.05", 2, "450", 25),
    _perpetual("ATOM", "0.001", 1, "9", 20),
    _perpetual("UNI", "0.001", 1, "8", 20),
    _perpetual("XLM", "0.00001", 0, "0.11", 20),
    _perpetual("ETC", "0.001", 1, "26", 20),
    _perpetual("FIL", "0.001", 1, "5.5", 20),
    _perpetual("TRX", "0.00001", 0, "0.12", 20),
    _perpetual("NEAR", "0.001", 1, "5.5", 20),
    _perpetual("APT", "0.001", 1, "9", 10),
    _perpetual("ARB", "0.0001", 1, "1.1", 10),
    _perpetual("OP", "0.0001", 1, "2.4", 10),
    _perpetual("INJ", "0.001", 1, "25", 10),
    _perpetual("SUI", "0.0001", 1, "1.2", 10),
    _perpetual("AAVE", "0.01", 2, "95", 10),
)
INSTRUMENT_SETS: dict[str, tuple[Instrument, ...]] = {
    "default": DEFAULT_INSTRUMENTS,
    "wide": WIDE_INSTRUMENTS,
}


@dataclass(slots=True)
class Quote:
    """Prices of one instrument at one moment."""

    mark: Decimal
    index: Decimal
    last: Decimal
    bid: Decimal
    ask: Decimal
    suspended: bool = False

    def signal(self, name: str) -> Decimal:
        """The price a trigger order watches: `mark`, `index` (alias `spot`) or `last`."""
        return {"mark": self.mark, "index": self.index, "spot": self.index, "last": self.last}[name]


@dataclass
class Market:
    """All instruments' prices. `step()` moves each mark one bounded random-walk step.

    The walk is multiplicative with volatility `sigma` per step and stays within `bound` (a fraction)
    of each instrument's initial price, so a long-running demo never drifts to absurd prices.
    """

    instruments: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS
    seed: int | None = None
    sigma: float = 0.0005
    bound: float = 0.2
    spread: float = 0.0002  # bid/ask at mark -/+ half of this fraction
    quotes: dict[str, Quote] = field(init=False)
    settled: dict[str, Decimal] = field(init=False)  # expired fixed maturities -> settlement price
    _rng: random.Random = field(init=False, repr=False)
    _by_symbol: dict[str, Instrument] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._by_symbol = {}
        self.quotes = {}
        self.settled = {}
        for instrument in self.instruments:
            self._by_symbol.setdefault(instrument.symbol, instrument)
            self.quotes[instrument.symbol] = self._quote(instrument, instrument.initial_price)

    def instrument(self, symbol: str) -> Instrument | None:
        return self._by_symbol.get(symbol)

    def _quote(self, instrument: Instrument, mark: Decimal, *, last: Decimal | None = None) -> Quote:
        half = Decimal(str(self.spread / 2))
        bid = instrument.round_price(mark * (1 - half))
        ask = instrument.round_price(mark * (1 + half))
        if ask <= bid:
            ask = bid + instrument.tick_size
        suspended = self.quotes[instrument.symbol].suspended if instrument.symbol in self.quotes else False
        return Quote(
            mark=mark,
            index=mark,
            last=last if last is not None else mark,
            bid=bid,
            ask=ask,
            suspended=suspended,
        )

    def set_mark(self, symbol: str, price: Decimal) -> Quote:
        instrument = self.instrument(symbol)
        if instrument is None:
            raise KeyError(symbol)
        if price <= 0:
            raise ValueError("a mark price must be positive")
        quote = self._quote(instrument, instrument.round_price(price))
        self.quotes[symbol] = quote
        return quote

    def set_suspended(self, symbol: str, suspended: bool) -> None:
        self.quotes[symbol].suspended = suspended

    def record_trade(self, symbol: str, price: Decimal) -> None:
        self.quotes[symbol].last = price

    def settle(self, symbol: str) -> Decimal:
        """`symbol` expired: its mark now is its settlement price, and the walk leaves it there."""
        price = self.settled[symbol] = self.quotes[symbol].mark
        return price

    def step(self) -> None:
        for instrument in self.instruments:
            if instrument.symbol in self.settled:
                continue
            quote = self.quotes[instrument.symbol]
            factor = math.exp(self._rng.gauss(0.0, self.sigma))
            low = float(instrument.initial_price) * (1 - self.bound)
            high = float(instrument.initial_price) * (1 + self.bound)
            mark = min(max(float(quote.mark) * factor, low), high)
            # Other participants trade too: the last price follows the mark.
            self.quotes[instrument.symbol] = self._quote(instrument, instrument.round_price(mark))
