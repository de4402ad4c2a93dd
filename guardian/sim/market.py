"""The simulator's market: instruments and prices that move on a bounded, seedable random walk."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation


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

    @property
    def pair(self) -> str:
        return f"{self.base}:{self.quote}"

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


DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("PF_XBTUSD", "XBT", "USD", Decimal("0.5"), 4, Decimal("60000")),
    Instrument("PF_ETHUSD", "ETH", "USD", Decimal("0.1"), 3, Decimal("3000")),
    Instrument("PF_SOLUSD", "SOL", "USD", Decimal("0.01"), 2, Decimal("150")),
)


def _perpetual(base: str, tick: str, precision: int, price: str, leverage: int) -> Instrument:
    """A linear multi-collateral perpetual, `PF_` + base + `USD`."""
    return Instrument(
        f"PF_{base}USD", base, "USD", Decimal(tick), precision, Decimal(price), max_leverage=leverage
    )


# Opt-in (`guardian sim --instruments wide`, `Market(instruments=WIDE_INSTRUMENTS)`): 24 perpetuals for
# benchmarks and tests that spread orders over many symbols. The first three are the default set.
WIDE_INSTRUMENTS: tuple[Instrument, ...] = (
    *DEFAULT_INSTRUMENTS,
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
    _rng: random.Random = field(init=False, repr=False)
    _by_symbol: dict[str, Instrument] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._by_symbol = {}
        self.quotes = {}
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

    def step(self) -> None:
        for instrument in self.instruments:
            quote = self.quotes[instrument.symbol]
            factor = math.exp(self._rng.gauss(0.0, self.sigma))
            low = float(instrument.initial_price) * (1 - self.bound)
            high = float(instrument.initial_price) * (1 + self.bound)
            mark = min(max(float(quote.mark) * factor, low), high)
            # Other participants trade too: the last price follows the mark.
            self.quotes[instrument.symbol] = self._quote(instrument, instrument.round_price(mark))
