"""The guard for what is not an order but changes risk all the same: account settings, the assignment
program and RFQ offers. Each endpoint is judged by one small rule here, after authentication and
permission (`settings` for the settings and the assignment program, `trade` for RFQ offers):

- what only takes risk away (`assignmentprogram/delete`, `rfqs/{rfqUid}/cancel-offer`, trading switched
  off on a subaccount) always passes, whatever the mode and the switch;
- everything else is new risk: refused unless the account is `active` (`tradingHalted`,
  `reduceOnlyMode`) and the switch is armed with time left (`switchNotArmed`), then held to its limit:
  - `leveragepreferences` PUT and `rfq-assignment/max-leverage` PUT/DELETE: at most
    `[accounts.guard] max_leverage` (`leverageTooHigh`; removing a preference or the cap is refused while
    a maximum is configured, since it lets the exchange use any leverage), on an allowed symbol;
  - `assignmentprogram/add`: an allowed contract, and `maxSize` within `max_order_size`;
  - RFQ offers: an order of the RFQ's size at each offered price (bid: a buy, ask: a sell), held to the
    symbol allow-list, max_order_size, max_notional and the price band, as `sendorder` is.

Parameters are read wherever the clients put them: the query (ccxt, python-kraken-sdk's PUT), the form
body, or a JSON body (Kraken's newer reference shows JSON for the RFQ endpoints).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from guardian.account import Account, Mode
from guardian.gateway import orders, rules
from guardian.gateway.orders import OrderIntent
from guardian.gateway.refusal import Refusal
from guardian.kraken import endpoints as ep

# How an offer's RFQ is read: its uid -> the RFQ as the exchange describes it.
RfqLookup = Callable[[str], Awaitable[Mapping[str, Any]]]

LEVERAGE_ENDPOINTS = frozenset({"leveragepreferences:put", "rfq-assignment/max-leverage:put"})


def fields_with_json(fields: Mapping[str, str], body: str) -> dict[str, str]:
    """The request's fields, plus those of a JSON object body (as text, the way a form carries them)."""
    found = dict(fields)
    text = body.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise Refusal("invalidArgument", "the body starts like JSON but is not valid JSON") from None
        if isinstance(doc, dict):
            for key, value in doc.items():
                if isinstance(value, bool):
                    found[str(key)] = "true" if value else "false"
                elif value is not None:
                    found[str(key)] = str(value)
    return found


def reduces(endpoint: ep.Endpoint, fields: Mapping[str, str]) -> bool:
    """Whether this call only takes risk away (it then always passes)."""
    if endpoint.risk is ep.Risk.REDUCES:
        return True
    if endpoint.name == "subaccount/{uid}/trading-enabled:put":
        return fields.get("tradingEnabled", "").lower() == "false"
    return False


async def judge(
    account: Account,
    endpoint: ep.Endpoint,
    fields: Mapping[str, str],
    path_params: Mapping[str, str],
    rfq: RfqLookup,
    *,
    mode: Mode | None = None,
) -> bool:
    """Refuse what the account's mode (or `mode`, the bot's if stricter), switch or limits do not
    allow; True when the call adds risk."""
    if reduces(endpoint, fields):
        return False
    guard = account.config.guard
    # Validate first (a malformed request is invalid whatever the mode), then mode, gate, limits.
    offers: list[OrderIntent] = []
    if endpoint.name in ("rfqs/{rfqUid}/place-offer", "rfqs/{rfqUid}/replace-offer"):
        prices = _offer_prices(fields)
        check_mode_and_gate(account, endpoint, mode)
        offers = await _offers(path_params.get("rfqUid", ""), prices, rfq)
        for offer in offers:
            assert offer.symbol is not None
            rules.check_limits(offer, guard, account.marks.mark(offer.symbol))
        return True
    leverage = _leverage(endpoint, fields)
    check_mode_and_gate(account, endpoint, mode)
    if endpoint.name in LEVERAGE_ENDPOINTS or endpoint.name == "rfq-assignment/max-leverage:delete":
        _check_leverage(endpoint, leverage, guard.max_leverage)
    if "symbol" in fields and endpoint.name in ("leveragepreferences:put", "pnlpreferences:put"):
        _check_symbol(fields["symbol"], guard.symbols)
    if endpoint.name == "assignmentprogram/add":
        _check_assignment(fields, account)
    return True


def check_mode_and_gate(account: Account, endpoint: ep.Endpoint, mode: Mode | None = None) -> None:
    """`mode`: the mode the request is judged by (its bot's, if stricter); the account's by default."""
    mode = account.mode if mode is None else mode
    if mode is Mode.HALTED:
        raise Refusal(
            "tradingHalted",
            f"trading is halted on this account: {endpoint.name} would add risk, and only what takes risk "
            "away passes until a person sets the mode back (POST /guardian/mode)",
        )
    if mode is Mode.REDUCE_ONLY:
        raise Refusal(
            "reduceOnlyMode",
            f"this account is in reduce_only mode: {endpoint.name} may add risk, so it is refused",
        )
    if not account.switch.allows_new_risk():
        remaining = account.switch.remaining()
        left = "not running" if remaining is None else f"{remaining:.1f} s left"
        raise Refusal(
            "switchNotArmed",
            f"the dead man's switch of account {account.name!r} is {account.switch.state.value} ({left}): "
            f"{endpoint.name} adds risk and needs it armed with at least "
            f"{account.config.switch.min_remaining_s:g} s left",
        )


def _leverage(endpoint: ep.Endpoint, fields: Mapping[str, str]) -> Decimal | None:
    if endpoint.name not in LEVERAGE_ENDPOINTS:
        return None
    raw = fields.get("maxLeverage")
    if raw is None or raw == "":
        return None
    return orders.parse_decimal("maxLeverage", raw)


def _check_leverage(endpoint: ep.Endpoint, leverage: Decimal | None, maximum: float | None) -> None:
    if maximum is None:
        return
    limit = Decimal(str(maximum))
    if leverage is None:
        raise Refusal(
            "leverageTooHigh",
            f"{endpoint.name} without maxLeverage removes the preference, which lets the exchange use any "
            f"leverage; this account allows at most {limit:g} (accounts.guard.max_leverage): send "
            f"maxLeverage={limit:g} or lower",
        )
    if leverage > limit:
        raise Refusal(
            "leverageTooHigh",
            f"maxLeverage {leverage:g} is above this account's maximum of {limit:g} (accounts.guard.max_leverage)",
        )


def _check_symbol(symbol: str, allowed: tuple[str, ...] | None) -> None:
    if allowed is not None and symbol.upper() not in {s.upper() for s in allowed}:
        raise Refusal(
            "symbolNotAllowed",
            f"{symbol.upper()} is not in this account's guard.symbols ({', '.join(allowed)})",
        )


def _check_assignment(fields: Mapping[str, str], account: Account) -> None:
    """Joining the assignment program: the exchange may hand the account liquidated positions."""
    guard = account.config.guard
    contract = fields.get("contract")
    if guard.symbols is not None:
        if not contract:
            raise Refusal(
                "symbolNotAllowed",
                "assignmentprogram/add without a contract would take assignments in any contract; this account "
                f"trades only {', '.join(guard.symbols)}: name one of them as contract",
            )
        _check_symbol(contract, guard.symbols)
    limit = rules.limits_for(guard, contract or "").max_order_size
    if limit is None:
        return
    raw = fields.get("maxSize")
    if not raw:
        raise Refusal(
            "orderSizeTooLarge",
            f"assignmentprogram/add without maxSize could assign any size; this account allows at most "
            f"{limit:g} per order (max_order_size): send maxSize",
        )
    size = orders.parse_decimal("maxSize", raw)
    if size > Decimal(str(limit)):
        raise Refusal("orderSizeTooLarge", f"maxSize {size:g} is above max_order_size ({limit:g})")


def _offer_prices(fields: Mapping[str, str]) -> dict[str, Decimal]:
    prices = {
        side: orders.parse_decimal(name, fields[name])
        for name, side in (("bid", "buy"), ("ask", "sell"))
        if fields.get(name) not in (None, "")
    }
    if not prices:
        raise Refusal("requiredArgumentMissing", "an RFQ offer needs a bid, an ask or both")
    return prices


async def _offers(rfq_uid: str, prices: Mapping[str, Decimal], rfq: RfqLookup) -> list[OrderIntent]:
    """Each offered price as the order it may become: the RFQ's symbol and size at that price."""
    found = await rfq(rfq_uid)
    symbol, size = found.get("symbol"), found.get("size")
    if not isinstance(symbol, str) or not symbol:
        raise Refusal(
            "invalidArgument", f"RFQ {rfq_uid} has no symbol guardian can read: it cannot be judged"
        )
    amount = orders.parse_decimal("size", size) if isinstance(size, int | float | str) else None
    if amount is None or isinstance(size, bool):
        raise Refusal("invalidArgument", f"RFQ {rfq_uid} has no size guardian can read: it cannot be judged")
    return [
        OrderIntent(kind="send", order_type="lmt", symbol=symbol, side=side, size=amount, limit_price=price)
        for side, price in prices.items()
    ]
