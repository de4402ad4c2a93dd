"""The simulator's contract arithmetic: what a position is worth, what closing it realises, where its
average entry moves, in each kind of contract Kraken Futures lists.

- **Linear** (`flexible_futures`: `PF_` perpetuals, `FF_` fixed maturities). Size is in units of the
  base currency (times `contractSize`), prices in USD, and value, PnL, fees and margin in USD, in the
  multi-collateral (`flex`) account.
    value in USD        = size x contractSize x price
    PnL in USD (long)   = (exit - entry) x size x contractSize          (a short: negated)
    entry when growing  = the size-weighted arithmetic mean of the fill prices
- **Inverse** (`futures_inverse`: `PI_` perpetuals, `FI_` fixed maturities). One contract is
  `contractSize` USD; value, PnL, fees and margin are in the base currency (XBT, ETH), in the
  single-collateral margin account of that currency (`fi_xbtusd`, `fi_ethusd`).
    value in the base currency = size x contractSize / price
    notional in USD            = size x contractSize                   (whatever the price)
    PnL in the base (long)     = size x contractSize x (1/entry - 1/exit)   (a short: negated)
    entry when growing         = the size-weighted harmonic mean of the fill prices, so that
                                 size / entry is additive
- Either kind: a base-currency amount is worth `amount x mark` USD, at the mark of the contract it
  belongs to; fees and initial margin are the value times a rate.

This is the simulator's own, independent computation: it imports nothing from guardian outside
guardian.sim, so that guardian's figures (guardian.contracts) can be held against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

LINEAR = "flexible_futures"
INVERSE = "futures_inverse"
KINDS = (LINEAR, INVERSE)
ZERO = Decimal(0)


# ---- linear ----------------------------------------------------------------------------------------------
def linear_value(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """USD: size x contractSize x price (the sign of `size` is kept)."""
    return size * contract_size * price


def linear_notional_usd(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """USD, unsigned: what the position is worth at `price`."""
    return abs(size) * contract_size * price


def linear_pnl(size: Decimal, contract_size: Decimal, entry: Decimal, exit_price: Decimal) -> Decimal:
    """USD realised by closing `size` (signed: positive long) entered at `entry` at `exit_price`."""
    return (exit_price - entry) * size * contract_size


def linear_entry(held: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal:
    """The average entry after `added` contracts at `price` join `held` at `entry` (both unsigned):
    the size-weighted arithmetic mean."""
    return (entry * held + price * added) / (held + added)


# ---- inverse ---------------------------------------------------------------------------------------------
def inverse_value(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """Base currency: size x contractSize / price (the sign of `size` is kept)."""
    return size * contract_size / price


def inverse_notional_usd(size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal:
    """USD, unsigned: size x contractSize, whatever the price (`price` is not read)."""
    return abs(size) * contract_size


def inverse_pnl(size: Decimal, contract_size: Decimal, entry: Decimal, exit_price: Decimal) -> Decimal:
    """Base currency realised by closing `size` (signed) entered at `entry` at `exit_price`:
    size x contractSize x (1/entry - 1/exit), written with one division so that it rounds once."""
    return size * contract_size * (exit_price - entry) / (entry * exit_price)


def inverse_entry(held: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal:
    """The average entry after `added` contracts at `price` join `held` at `entry` (both unsigned):
    the size-weighted harmonic mean, (held + added) / (held/entry + added/price), written with one
    division."""
    if held == 0:
        return price
    return (held + added) * entry * price / (held * price + added * entry)


# ---- one interface over both -----------------------------------------------------------------------------
class _Value(Protocol):
    def __call__(self, size: Decimal, contract_size: Decimal, price: Decimal) -> Decimal: ...


class _Pnl(Protocol):
    def __call__(
        self, size: Decimal, contract_size: Decimal, entry: Decimal, exit_price: Decimal
    ) -> Decimal: ...


class _Entry(Protocol):
    def __call__(self, held: Decimal, entry: Decimal, added: Decimal, price: Decimal) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """One kind of contract's functions. `value` is in the margin currency (USD for linear, the base
    currency for inverse); `notional_usd` in USD."""

    kind: str
    value: _Value
    notional_usd: _Value
    pnl: _Pnl
    entry: _Entry

    @property
    def inverse(self) -> bool:
        return self.kind == INVERSE

    def to_usd(self, amount: Decimal, mark: Decimal) -> Decimal:
        """USD of an amount in this kind's margin currency, at the contract's mark."""
        return amount * mark if self.inverse else amount

    def apply_fill(
        self, held: Decimal, entry: Decimal, signed: Decimal, price: Decimal, contract_size: Decimal
    ) -> tuple[Decimal, Decimal, Decimal]:
        """A position of `held` contracts (signed) at `entry`, after a fill of `signed` contracts at
        `price`: (new size, new average entry, PnL realised in the margin currency). Growing moves the
        entry; reducing keeps it and realises the part closed; flipping realises all of the old position
        and opens the rest at `price`; a flat position's entry is 0."""
        new = held + signed
        if held == 0 or (held > 0) == (signed > 0):
            return new, self.entry(abs(held), entry, abs(signed), price), ZERO
        closing = min(abs(signed), abs(held))
        realized = self.pnl(closing if held > 0 else -closing, contract_size, entry, price)
        if new == 0:
            return ZERO, ZERO, realized
        if (new > 0) != (held > 0):
            return new, price, realized
        return new, entry, realized


LINEAR_MATH = Arithmetic(LINEAR, linear_value, linear_notional_usd, linear_pnl, linear_entry)
INVERSE_MATH = Arithmetic(INVERSE, inverse_value, inverse_notional_usd, inverse_pnl, inverse_entry)
ARITHMETIC = {LINEAR: LINEAR_MATH, INVERSE: INVERSE_MATH}


# ---- margin accounts -------------------------------------------------------------------------------------
FLEX = "flex"


def margin_account(kind: str, base: str, quote: str = "USD") -> str:
    """The account a contract margins and settles in: `flex` for linear ones, `fi_<base><quote>` (lower
    case, Kraken's `fi_xbtusd`) for inverse ones."""
    return FLEX if kind == LINEAR else f"fi_{base.lower()}{quote.lower()}"


def fee_currency(currency: str) -> str:
    """The currency a fill's `fee_currency` names: Kraken spells XBT as BTC there."""
    return "BTC" if currency == "XBT" else currency
