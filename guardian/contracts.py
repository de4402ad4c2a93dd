"""Every kind of contract Kraken Futures lists, and the arithmetic each needs (docs/exposure.md).

Kraken lists each contract in `GET /instruments` with its `type`, `contractSize`, `tickSize`,
`contractValueTradePrecision` and, for a fixed maturity, `lastTradingTime` (Kraken's "Get instruments";
ccxt's `fetch_markets` reads the same fields the same way). Two kinds of arithmetic follow from the type:

- **linear** (`flexible_futures`: the multi-collateral `PF_` perpetuals and `FF_` fixed maturities).
  A size counts units of the base currency (contractSize of them per contract), a price is USD per unit.
  Notional in USD = size x contractSize x price; PnL in USD = size x contractSize x (exit - entry),
  signed by the side; a position's average entry is the size-weighted mean of its prices.
- **inverse** (`futures_inverse`: the `PI_` perpetuals and `FI_` fixed maturities). A contract is
  contractSize USD of face value; margin and PnL are in the base currency (XBT, ETH). Notional in USD =
  size x contractSize, whatever the price; the position's value in the base currency = size x
  contractSize / price; PnL in the base currency = size x contractSize x (1/entry - 1/exit), signed by the
  side; the average entry is the harmonic mean weighted by size (what keeps size / entry additive). An
  amount in the base currency is worth amount x mark in USD.

Any other type (`futures_vanilla`, an index, a type Kraken adds later) is not judged: guardian refuses new
risk in it with `instrumentUnknown` rather than apply arithmetic that may mean something else. So does a
symbol the instruments list does not have, or lists without a usable `contractSize`.

The functions are pure and work in `Decimal`; a size passed signed is + long, - short.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from guardian.kraken.times import parse_iso

ZERO: Final = Decimal(0)
USD: Final = "USD"


class Kind(enum.StrEnum):
    LINEAR = "linear"
    INVERSE = "inverse"


# Kraken's instrument `type` -> the arithmetic it takes. Only these are judged.
KINDS: Final[Mapping[str, Kind]] = {
    "flexible_futures": Kind.LINEAR,
    "futures_inverse": Kind.INVERSE,
}


# ---- linear: size in base units, PnL in USD ----------------------------------------------------------------
def linear_notional(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """USD worth of `size` contracts at `price`."""
    return abs(size) * contract_size * price


def linear_pnl(size: Decimal, contract_size: Decimal, entry: Decimal, exit: Decimal) -> Decimal:
    """USD made by a signed position of `size` opened at `entry` and closed at `exit`."""
    return size * contract_size * (exit - entry)


def linear_entry(size: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal:
    """The average entry of a position of `size` at `entry` after `added` more at `price` (same side)."""
    return (abs(size) * entry + abs(added) * price) / (abs(size) + abs(added))


# ---- inverse: size in USD contracts, PnL in the base currency ----------------------------------------------
def inverse_notional(size: Decimal, contract_size: Decimal, price: Decimal | None = None) -> Decimal:
    """USD face value of `size` contracts: the price does not enter."""
    return abs(size) * contract_size


def inverse_value(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """The base-currency worth of `size` contracts at `price`."""
    return abs(size) * contract_size / price


def inverse_pnl(size: Decimal, contract_size: Decimal, entry: Decimal, exit: Decimal) -> Decimal:
    """Base currency made by a signed position of `size` opened at `entry` and closed at `exit`."""
    return size * contract_size * (1 / entry - 1 / exit)


def inverse_entry(size: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal:
    """The average entry after adding to a position: the size-weighted harmonic mean."""
    return (abs(size) + abs(added)) / (abs(size) / entry + abs(added) / price)


@dataclass(frozen=True, slots=True)
class Contract:
    """One listed contract as guardian judges it."""

    symbol: str
    type: str  # Kraken's `type`, as listed
    kind: Kind
    contract_size: Decimal
    base: str  # e.g. XBT
    quote: str  # USD
    tick_size: Decimal | None = None
    size_precision: int | None = None  # contractValueTradePrecision
    last_trading: float | None = None  # epoch seconds; None: a perpetual
    tradeable: bool = True

    @property
    def margin_currency(self) -> str:
        """The currency its margin, PnL and fees are in."""
        return self.base if self.kind is Kind.INVERSE else self.quote

    @property
    def price_free(self) -> bool:
        """Its notional needs no price (an inverse contract's is its face value)."""
        return self.kind is Kind.INVERSE

    def notional(self, size: Decimal, price: Decimal) -> Decimal:
        """USD notional of `size` contracts at `price`."""
        if self.kind is Kind.INVERSE:
            return inverse_notional(size, self.contract_size)
        return linear_notional(size, self.contract_size, price)

    def unit_value(self, price: Decimal | None) -> Decimal | None:
        """USD notional of one contract at `price` (None: it needs a price and has none)."""
        if self.kind is Kind.INVERSE:
            return self.contract_size
        return None if price is None else self.contract_size * price

    def pnl(self, size: Decimal, entry: Decimal, exit: Decimal) -> Decimal:
        """PnL in the margin currency of a signed position from `entry` to `exit`."""
        if self.kind is Kind.INVERSE:
            return inverse_pnl(size, self.contract_size, entry, exit)
        return linear_pnl(size, self.contract_size, entry, exit)

    def entry_after(self, size: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal:
        if self.kind is Kind.INVERSE:
            return inverse_entry(size, entry, added, price)
        return linear_entry(size, entry, added, price)

    def to_usd(self, amount: Decimal, mark: Decimal | None) -> Decimal | None:
        """An amount in the margin currency in USD (at `mark` for an inverse contract; None: no mark)."""
        if self.kind is not Kind.INVERSE:
            return amount
        return None if mark is None else amount * mark

    def expired(self, now: float, margin_s: float = 0.0) -> bool:
        """Past its last trading time (less `margin_s`): no new risk goes to it."""
        return self.last_trading is not None and now >= self.last_trading - margin_s


# The arithmetic guardian used before it read contracts, and still uses where no instrument list is
# wired (unit tests of the rules alone): a linear contract of size 1.
PLAIN: Final = Contract("", "flexible_futures", Kind.LINEAR, Decimal(1), "", USD)

ContractOf = Callable[[str], "Contract | None"]


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        found = Decimal(str(value))
    except InvalidOperation:
        return None
    return found if found.is_finite() else None


def parse(row: Mapping[str, Any]) -> tuple[Contract | None, str | None]:
    """One row of `instruments`: the contract, or None with why it cannot be judged."""
    symbol = row.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        return None, "no symbol"
    kind_name = row.get("type")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        return None, f"type {kind_name!r} is not one guardian judges"
    size = _decimal(row.get("contractSize"))
    if size is None or size <= 0:
        return None, f"contractSize {row.get('contractSize')!r} is not a positive number"
    base, quote = _pair(row, symbol.upper())
    if quote != USD:
        return None, f"quote currency {quote!r}: guardian counts notional in USD"
    if kind is Kind.INVERSE and not base:
        return None, "an inverse contract without a base currency"
    last: float | None = None
    text = row.get("lastTradingTime")
    if text is not None:
        try:
            last = parse_iso(text)
        except (ValueError, TypeError):
            return None, f"lastTradingTime {text!r} is not a time"
    tick = _decimal(row.get("tickSize"))
    precision = _decimal(row.get("contractValueTradePrecision"))
    return (
        Contract(
            symbol=symbol.upper(),
            type=str(kind_name),
            kind=kind,
            contract_size=size,
            base=base,
            quote=quote,
            tick_size=tick if tick is not None and tick > 0 else None,
            size_precision=int(precision) if precision is not None and precision == int(precision) else None,
            last_trading=last,
            tradeable=row.get("tradeable") is not False,
        ),
        None,
    )


def _pair(row: Mapping[str, Any], symbol: str) -> tuple[str, str]:
    """Base and quote: the row's `base` and `quote`, else its `pair` (XBT:USD), else the symbol's
    `PI_XBTUSD` / `FI_XBTUSD_220930` shape."""
    base, quote = row.get("base"), row.get("quote")
    if isinstance(base, str) and base and isinstance(quote, str) and quote:
        return base.upper(), quote.upper()
    pair = row.get("pair")
    if isinstance(pair, str) and ":" in pair:
        b, _, q = pair.partition(":")
        return b.upper(), q.upper()
    parts = symbol.split("_")
    if len(parts) >= 2 and parts[1].endswith(USD) and len(parts[1]) > len(USD):
        return parts[1][: -len(USD)], USD
    return "", ""
