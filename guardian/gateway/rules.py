"""The guard's rules: what an account's mode lets through, and the limits every order must keep. Pure.

- Mode: `active` lets anything through; `reduce_only` only reduce-only orders (and edits of reduce-only
  orders) and cancels; `halted` only cancels. Cancels always pass: they can only take risk away.
- Limits (`GuardConfig`, per symbol via `limits_for`): the symbols allow-list, `max_order_size` (the
  order's size in contracts), `max_notional` (in USD, as the symbol's contract counts it
  (`guardian.contracts`): for a linear contract size x contractSize times the limit price, or, for an
  order that has none, the mark or its stop price, whichever is higher; for an inverse contract its face
  value, size x contractSize USD, whatever the price) and `price_band_pct` (every limit and stop
  price within that percentage of the mark, either side). A limit that is off (None) is never checked and never needs the mark; one that needs the
  mark when there is none refuses (`markPriceUnavailable`): guardian does not guess a price.

Arithmetic is Decimal throughout with enough precision to be exact for any number `orders` accepts; the
configured limits are floats and enter as `Decimal(str(x))`, so `0.3` means 0.3, not 0.30000000000000004.
A value exactly at its limit passes.

Choices where Kraken's behaviour is unverified:
- qtyMode (editorder): RELATIVE, the default, reads `size` as what is left to fill, so the order's new
  size is its fills plus `size`; ABSOLUTE reads `size` as the whole new size. This is how the simulator
  and an independent connector's notes (Deltix: "the desired open (remaining) quantity must be
  provided") describe it; Kraken's own text was not available. Without qtyMode the larger reading
  (RELATIVE) is used. Limits judge the whole new size, fills included, which is never less than what is
  left to fill.
- limitPriceOffsetValue: its sign convention is not documented, so the triggered order's limit price is
  taken as the stop price plus and minus the offset, and both must be inside the band.
- Notional for a sell uses the limit price as given (a sell can fill higher): the rule is "size times
  limit price", by design. Stop orders without a limit price, mkt and trailing_stop orders use the mark
  (and any limit price they do carry, whichever is larger).
- An edit whose order guardian has no record of is answered before these rules, in Kraken's own shape
  (`guardian.gateway.notfound`: `orderForEditNotFound`); one that reaches a batch's rules without its
  original is refused (`invalidArgument`): there is nothing to judge the edited order by.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, localcontext
from typing import TypeVar

from guardian.account import Mode
from guardian.config import GuardConfig, SymbolLimits
from guardian.contracts import PLAIN, ZERO, Contract, ContractOf
from guardian.gateway.orders import (
    MAX_BATCH_ITEMS,
    CancelAllIntent,
    CancelIntent,
    Intent,
    OrderIntent,
)
from guardian.gateway.refusal import Refusal

__all__ = [
    "MAX_BATCH_ITEMS",
    "check_batch",
    "check_intent",
    "check_limits",
    "check_mode",
    "limits_for",
    "merge_edit",
]

T = TypeVar("T")

# Inputs have at most 31 significant digits (orders.MAX_NUMBER_CHARS): products of two stay exact.
_PRECISION = 100


def merge_edit(original: OrderIntent, edit: OrderIntent) -> OrderIntent:
    """What the order will look like after `edit`: the fields the edit sends replace the original's.

    `original` is the whole open order (a send, or an earlier merge), with `filled` set when known.
    """
    if not original.merged:
        raise ValueError("merge_edit needs the whole original order (a send or a merged edit)")
    if edit.kind != "edit":
        raise ValueError("merge_edit merges an edit intent")
    size = original.size
    if edit.size is not None:
        size = edit.size if edit.qty_mode == "ABSOLUTE" else original.filled + edit.size
    assert original.symbol is not None
    return dataclasses.replace(
        original,
        kind="edit",
        symbol=original.symbol.upper(),  # as parsed intents carry it (an exchange report may not)
        size=size,
        limit_price=_first(edit.limit_price, original.limit_price),
        stop_price=_first(edit.stop_price, original.stop_price),
        trailing_deviation=_first(edit.trailing_deviation, original.trailing_deviation),
        trailing_unit=_first(edit.trailing_unit, original.trailing_unit),
        qty_mode=edit.qty_mode,
        process_before=edit.process_before,
        order_id=_first(edit.order_id, original.order_id),
        cli_ord_id=_first(original.cli_ord_id, edit.cli_ord_id),
        order_tag=None,
    )


def _first(value: T | None, fallback: T | None) -> T | None:
    return fallback if value is None else value


# ---- mode ----------------------------------------------------------------------------------------------


def check_mode(mode: Mode | str, intent: Intent) -> None:
    """Refuse what the account's mode does not let through (`reduceOnlyMode`, `tradingHalted`)."""
    mode = Mode(mode)  # an unknown mode is a bug: ValueError, never a silent pass
    if isinstance(intent, CancelIntent | CancelAllIntent) or mode is Mode.ACTIVE:
        return
    if mode is Mode.HALTED:
        raise Refusal(
            "tradingHalted",
            "trading is halted on this account: only cancels (cancelorder, cancelallorders, batch cancel "
            "items) are let through until a person sets the mode back (POST /guardian/mode)",
        )
    if intent.reduce_only is True:
        return
    if intent.kind == "send":
        why = "send it with reduceOnly=true"
    elif intent.reduce_only is None:
        why = "guardian cannot tell whether the order being edited is reduce-only"
    else:
        why = "the order being edited is not reduce-only"
    raise Refusal(
        "reduceOnlyMode",
        f"this account is in reduce_only mode: only reduce-only orders and cancels are let through ({why})",
    )


# ---- limits --------------------------------------------------------------------------------------------


def limits_for(guard: GuardConfig, symbol: str) -> SymbolLimits:
    """`guard.limits_for(symbol)`, with the symbol matched case-insensitively, as Kraken reads it."""
    for key in guard.per_symbol:
        if key.upper() == symbol.upper():
            return guard.limits_for(key)
    return guard.limits_for(symbol)


def check_limits(
    intent: OrderIntent,
    guard: GuardConfig,
    mark: Decimal | None,
    *,
    reducible: Decimal | None = None,
    contract: Contract | None = PLAIN,
) -> None:
    """Refuse a send or merged edit that breaks one of the account's limits for its symbol.

    `reducible`: for a reduce-only order, the size of the position it can close (from a fresh account
    state): such an order may exceed max_order_size up to that size (closing a large position in one
    order is never blocked by the order-size limit).

    `contract`: how the symbol's size and price make USD notional (`guardian.contracts`); None: unknown,
    and then only a reduce-only order gets here (`instrumentUnknown` refuses the rest before), whose
    notional is not checked: it cannot add to the risk the notional limit bounds.

    Raises Refusal: symbolNotAllowed, orderSizeTooLarge, notionalTooLarge, priceOutsideBand, or
    markPriceUnavailable when a limit that is on needs the mark and `mark` is None (or not a price).
    """
    if not intent.merged:
        raise ValueError("check_limits judges whole orders: merge an edit with its original first")
    assert intent.symbol is not None and intent.size is not None
    symbol = intent.symbol.upper()
    if guard.symbols is not None and symbol not in {s.upper() for s in guard.symbols}:
        raise Refusal(
            "symbolNotAllowed",
            f"{symbol} is not in this account's guard.symbols ({', '.join(guard.symbols)}): trade a listed "
            "symbol, or add it to the configuration",
        )
    limits = limits_for(guard, symbol)
    usable = mark if mark is not None and mark.is_finite() and mark > 0 else None
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        if reducible is None or intent.reduce_only is not True or intent.size > reducible:
            _check_size(intent.size, limits, symbol)
        if contract is not None:
            _check_notional(intent, limits, symbol, usable, contract)
        elif intent.reduce_only is not True:
            raise Refusal("instrumentUnknown", f"{symbol}: its contract is not known, so its notional is not")
        _check_band(intent, limits, symbol, usable)


@functools.lru_cache(maxsize=512)  # the configured limits: a handful of values
def _limit(value: float) -> Decimal:
    return Decimal(str(value))


def _fmt(value: Decimal) -> str:
    """A number as a message shows it: plain digits, no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def _no_mark(symbol: str, rule: str, what: str) -> Refusal:
    return Refusal(
        "markPriceUnavailable",
        f"no mark price for {symbol}, which {rule} needs for {what}: guardian refuses rather than guess; "
        "try again when the mark is back",
    )


def _check_size(size: Decimal, limits: SymbolLimits, symbol: str) -> None:
    if limits.max_order_size is None:
        return
    cap = _limit(limits.max_order_size)
    if size > cap:
        raise Refusal(
            "orderSizeTooLarge",
            f"size {_fmt(size)} is above max_order_size {_fmt(cap)} for {symbol}: split the order or lower "
            "its size",
        )


def _offset_prices(intent: OrderIntent) -> Iterator[Decimal]:
    """The limit price a triggered order may get from limitPriceOffsetValue: stop price -/+ the offset."""
    if intent.limit_offset is None or intent.stop_price is None:
        return
    offset = abs(intent.limit_offset)
    if intent.limit_offset_unit == "PERCENT":
        offset = intent.stop_price * offset / 100
    yield intent.stop_price - offset
    yield intent.stop_price + offset


def _check_notional(
    intent: OrderIntent, limits: SymbolLimits, symbol: str, mark: Decimal | None, contract: Contract
) -> None:
    if limits.max_notional is None:
        return
    assert intent.size is not None
    cap = _limit(limits.max_notional)
    if contract.price_free:  # an inverse contract: its face value, whatever the price
        notional = contract.notional(intent.size, ZERO)
        if notional > cap:
            raise Refusal(
                "notionalTooLarge",
                f"notional {_fmt(notional)} USD (size {_fmt(intent.size)} contracts of "
                f"{_fmt(contract.contract_size)} USD) is above max_notional {_fmt(cap)} for {symbol}: lower the size",
            )
        return
    prices = [(p, "limitPrice") for p in (intent.limit_price,) if p is not None]
    prices += [(p, "the limit price after limitPriceOffsetValue") for p in _offset_prices(intent)]
    if intent.order_type in ("mkt", "trailing_stop") or intent.limit_price is None:
        if mark is None:
            raise _no_mark(symbol, "max_notional", f"a {intent.order_type} order without a limit price")
        prices.append((mark, "the mark"))
        if intent.stop_price is not None and intent.limit_offset is None:
            # Triggered, it trades at about its stop price: a buy stop far above the mark is worth more
            # than the mark says (the band, if on, bounds that distance; without it nothing else does).
            prices.append((intent.stop_price, "stopPrice"))
    price, basis = max(prices, key=lambda pair: pair[0])
    notional = contract.notional(intent.size, price)
    if notional > cap:
        unit = "" if contract.contract_size == 1 else f" x contractSize {_fmt(contract.contract_size)}"
        raise Refusal(
            "notionalTooLarge",
            f"notional {_fmt(notional)} (size {_fmt(intent.size)} x {basis} {_fmt(price)}{unit}) is above "
            f"max_notional {_fmt(cap)} for {symbol}: lower the size",
        )


def _check_band(intent: OrderIntent, limits: SymbolLimits, symbol: str, mark: Decimal | None) -> None:
    if limits.price_band_pct is None:
        return
    named = ((intent.limit_price, "limitPrice"), (intent.stop_price, "stopPrice"))
    checked = [(price, name) for price, name in named if price is not None]
    checked += [(p, "the limit price after limitPriceOffsetValue") for p in _offset_prices(intent)]
    if not checked:
        return  # nothing priced (mkt, trailing_stop): the band has nothing to judge
    if mark is None:
        raise _no_mark(symbol, "price_band_pct", f"its {checked[0][1]}")
    pct = _limit(limits.price_band_pct)
    width = mark * pct / 100
    low, high = mark - width, mark + width
    for price, name in checked:
        if not low <= price <= high:
            raise Refusal(
                "priceOutsideBand",
                f"{name} {_fmt(price)} is outside price_band_pct {_fmt(pct)} of the mark {_fmt(mark)} for "
                f"{symbol}: prices from {_fmt(low)} to {_fmt(high)} are let through",
            )


# ---- one request, a batch ------------------------------------------------------------------------------


def check_intent(
    intent: Intent,
    mode: Mode | str,
    guard: GuardConfig,
    mark: Decimal | None,
    contracts: ContractOf | None = None,
) -> None:
    """The mode, then (for a send or merged edit) the limits: everything a single request must pass."""
    check_mode(mode, intent)
    if isinstance(intent, OrderIntent):
        contract = PLAIN if contracts is None or intent.symbol is None else contracts(intent.symbol)
        check_limits(intent, guard, mark, contract=contract)


def check_batch(
    intents: Sequence[Intent],
    mode: Mode | str,
    guard: GuardConfig,
    marks: Mapping[str, Decimal | None],
    originals: Mapping[str, OrderIntent],
    contracts: ContractOf | None = None,
) -> None:
    """Judge a parsed batch item by item; the first item that fails refuses the whole batch, its Refusal
    carrying the item's index and order_tag.

    `marks` maps symbols (any case) to their mark (None or absent: unknown). `originals` maps the open
    orders that edits name, by order id or cliOrdId, to the whole orders (with `filled`); an edit may
    also name an open order by the cliOrdId it carries, or an earlier send item by its order_tag (as the
    exchange lets it). Where an edit's order_id matches both an earlier item's tag and an open order,
    both readings must pass. Later edits of the same order build on earlier ones.
    """
    mode = Mode(mode)
    if len(intents) > MAX_BATCH_ITEMS:
        raise Refusal(
            "requestTooLarge",
            f"batchOrder has {len(intents)} items; guardian takes at most {MAX_BATCH_ITEMS}: split the batch",
        )
    by_symbol: dict[str, Decimal | None] = {}
    for symbol, mark in marks.items():
        if mark is not None or symbol.upper() not in by_symbol:
            by_symbol[symbol.upper()] = mark
    _refuse_shared_names(intents)
    orders: dict[tuple[str, str], OrderIntent] = {("id", key): order for key, order in originals.items()}
    for order in originals.values():
        if order.cli_ord_id is not None:
            orders.setdefault(("cli", order.cli_ord_id), order)
    for index, intent in enumerate(intents):
        tag = intent.order_tag if isinstance(intent, OrderIntent) else None
        try:
            _check_item(intent, mode, guard, by_symbol, orders, contracts)
        except Refusal as exc:
            raise exc.for_item(index, tag) from None


def _refuse_shared_names(intents: Sequence[Intent]) -> None:
    """Two send items of one batch with the same order_tag or cliOrdId: an edit naming it could be judged
    against one and applied by the exchange to the other (if the exchange rejects the one judged). No
    client needs it, so the batch is refused, naming the second item."""
    seen: set[tuple[str, str]] = set()
    for index, intent in enumerate(intents):
        if not isinstance(intent, OrderIntent) or intent.kind != "send":
            continue
        names = [("order_tag", intent.order_tag), ("cliOrdId", intent.cli_ord_id)]
        for field_name, value in names:
            if value is None:
                continue
            if (field_name, value) in seen:
                raise Refusal(
                    "invalidArgument",
                    f"two send items share {field_name} {value!r}: give each order of a batch its own",
                ).for_item(index, intent.order_tag)
            seen.add((field_name, value))


def _check_item(
    intent: Intent,
    mode: Mode,
    guard: GuardConfig,
    marks: Mapping[str, Decimal | None],
    orders: dict[tuple[str, str], OrderIntent],
    contracts: ContractOf | None = None,
) -> None:
    if isinstance(intent, CancelIntent | CancelAllIntent) or intent.kind == "send":
        check_intent(intent, mode, guard, _mark(marks, intent), contracts)
        if isinstance(intent, OrderIntent):
            for key in _keys_of(intent):
                orders[key] = intent
        return
    if mode is Mode.HALTED:
        check_mode(mode, intent)  # refused as halted, whether or not guardian knows the order
    keys = [("tag", intent.order_id), ("id", intent.order_id)] if intent.order_id is not None else []
    keys += [("cli", intent.cli_ord_id), ("id", intent.cli_ord_id)] if intent.cli_ord_id is not None else []
    found: list[tuple[tuple[str, str], OrderIntent]] = []
    for key in keys:  # every distinct order the edit may mean
        if key in orders and all(orders[key] is not order for _, order in found):
            found.append((key, orders[key]))
    if not found:
        name = (
            f"order_id {intent.order_id!r}"
            if intent.order_id is not None
            else f"cliOrdId {intent.cli_ord_id!r}"
        )
        raise Refusal(
            "invalidArgument",
            f"the edit names {name}, which is not an open order guardian knows of (nor an earlier item's "
            "order_tag), so the edited order cannot be checked against the account's limits",
        )
    for key, original in found:
        merged = merge_edit(original, intent)
        check_intent(merged, mode, guard, _mark(marks, merged), contracts)
        orders[key] = merged
        for other in _keys_of(merged):
            orders[other] = merged


def _mark(marks: Mapping[str, Decimal | None], intent: Intent) -> Decimal | None:
    symbol = intent.symbol if isinstance(intent, OrderIntent) else None
    return None if symbol is None else marks.get(symbol.upper())


def _keys_of(order: OrderIntent) -> Iterator[tuple[str, str]]:
    """Where later items of a batch may find this order."""
    if order.order_tag is not None:
        yield ("tag", order.order_tag)
    if order.cli_ord_id is not None:
        yield ("cli", order.cli_ord_id)
