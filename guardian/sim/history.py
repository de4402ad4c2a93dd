"""An account's history (`/api/history/v2|v3/...`), built from what happened in the simulation: the orders
the exchange holds (placed, then filled or cancelled), its trigger orders, its fills, and the account
log and position updates those fills made, replayed in order. Kraken's shapes: `elements` of events for
orders, triggers, executions and positions; `logs` for the account log; CSV for `accountlogcsv`.

Fills and settlements are replayed with each contract's arithmetic (guardian.sim.contracts) and booked in
the account the contract margins in: `flex` in USD, or the single-collateral account of an inverse
contract's base currency (`f-xbt:usd` in XBT, as Kraken's account log names it). A fixed maturity's
settlement at expiry shows as `info: settlement`.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from guardian.kraken.times import to_iso
from guardian.sim.contracts import FLEX, fee_currency
from guardian.sim.exchange import TRIGGER_TYPES, Account, Order
from guardian.sim.market import Market
from guardian.sim.market_data import fill_ms, usd_value

ZERO = Decimal(0)
START_BALANCE = Decimal(100_000)  # guardian.sim.exchange.Account's opening balance
ORDER_TYPE_NAMES = {"lmt": "Limit", "post": "Post", "ioc": "IoC", "mkt": "Market", "fok": "FoK"}


def _account_uid(acct: Account) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-account:{acct.name}"))


def _history_order(acct: Account, order: Order, *, filled: Decimal, at_ms: int) -> dict[str, Any]:
    return {
        "uid": order.order_id,
        "accountUid": _account_uid(acct),
        "tradeable": order.symbol,
        "direction": "Buy" if order.side == "buy" else "Sell",
        "quantity": str(order.size - filled),
        "filled": str(filled),
        "timestamp": str(order.received_ms),
        "limitPrice": None if order.limit_price is None else str(order.limit_price),
        "orderType": ORDER_TYPE_NAMES.get(order.order_type, "Limit"),
        "clientId": order.cli_ord_id or "",
        "reduceOnly": order.reduce_only,
        "lastUpdateTimestamp": str(at_ms),
    }


def _trigger_order(acct: Account, order: Order) -> dict[str, Any]:
    view = order.trigger_view()
    return {
        **_history_order(acct, order, filled=ZERO, at_ms=order.received_ms),
        "triggerPrice": None if order.stop_price is None else str(order.stop_price),
        "triggerSide": "Above" if view["triggerSide"] == "trigger_above" else "Below",
        "triggerSignal": order.trigger_signal,
    }


def _element(uid: str, ms: int, event: dict[str, Any]) -> dict[str, Any]:
    return {"uid": uid, "timestamp": ms, "event": event}


def order_events(acct: Account) -> Iterator[dict[str, Any]]:
    for order in acct.orders.values():
        if order.order_type in TRIGGER_TYPES and not order.triggered and order.state == "open":
            continue  # still a trigger: it shows in the trigger history
        placed = _history_order(acct, order, filled=ZERO, at_ms=order.received_ms)
        yield _element(
            f"{order.order_id}-placed",
            order.received_ms,
            {"OrderPlaced": {"order": placed, "reason": "new_user_order", "reducedQuantity": ""}},
        )
        if order.state == "filled":
            done = _history_order(acct, order, filled=order.filled, at_ms=order.updated_ms)
            update = {"oldOrder": placed, "newOrder": done, "reason": "full_fill", "reducedQuantity": ""}
            yield _element(f"{order.order_id}-filled", order.updated_ms, {"OrderUpdated": update})
        elif order.state == "cancelled":
            gone = _history_order(acct, order, filled=order.filled, at_ms=order.updated_ms)
            yield _element(
                f"{order.order_id}-cancelled",
                order.updated_ms,
                {"OrderCancelled": {"order": gone, "reason": order.update_reason.lower()}},
            )


def trigger_events(acct: Account) -> Iterator[dict[str, Any]]:
    for order in acct.orders.values():
        if order.order_type not in TRIGGER_TYPES:
            continue
        trigger = _trigger_order(acct, order)
        yield _element(
            f"{order.order_id}-trigger",
            order.received_ms,
            {"OrderTriggerPlaced": {"order": trigger, "reason": "new_user_order"}},
        )
        if order.triggered:
            yield _element(
                f"{order.order_id}-activated", order.updated_ms, {"OrderTriggerActivated": {"order": trigger}}
            )
        elif order.state == "cancelled":
            yield _element(
                f"{order.order_id}-trigger-cancelled",
                order.updated_ms,
                {"OrderTriggerCancelled": {"order": trigger, "reason": order.update_reason.lower()}},
            )


def execution_events(acct: Account, market: Market) -> Iterator[dict[str, Any]]:
    for fill in acct.fills:
        order = acct.orders.get(fill["order_id"])
        ms = fill_ms(fill)
        ours = (
            _history_order(acct, order, filled=Decimal(str(fill["size"])), at_ms=ms)
            if order is not None
            else {
                "uid": fill["order_id"],
                "tradeable": fill["symbol"],
                "direction": "Buy" if fill["side"] == "buy" else "Sell",
            }
        )
        role = "makerOrder" if fill.get("fillType") == "maker" else "takerOrder"
        execution = {
            "uid": fill["fill_id"],
            role: ours,
            "timestamp": str(ms),
            "quantity": str(fill["size"]),
            "price": str(fill["price"]),
            "markPrice": str(fill["price"]),
            "limitFilled": False,
            "usdValue": str(usd_value(market, fill)),
        }
        yield _element(
            fill["fill_id"], ms, {"Execution": {"execution": execution, "takerReducedQuantity": ""}}
        )


@dataclass(frozen=True, slots=True)
class _Step:
    """One fill (or settlement) replayed: how it moved the position and its margin account's balance."""

    uid: str  # the fill's id, or the settlement's booking id
    execution: str | None  # the fill's id (None for a settlement)
    info: str  # futures trade | settlement
    symbol: str
    date: str  # ISO
    ms: int
    price: Decimal
    amount: Decimal  # unsigned contracts traded (or settled)
    margin_account: str  # Kraken's account-log name: flex, f-xbt:usd
    asset: str  # the balance's currency, lower case: usd, xbt
    fee_currency: str
    old_position: Decimal
    new_position: Decimal
    old_balance: Decimal
    new_balance: Decimal
    realized: Decimal
    entry_before: Decimal
    entry_after: Decimal


def _log_account(name: str) -> str:
    """The account log's name for a margin account: flex, or `f-xbt:usd` for `fi_xbtusd`."""
    return name if name == FLEX else f"f-{name[3:-3]}:{name[-3:]}"


def _replay(acct: Account, market: Market) -> list[_Step]:
    """The fills and settlements in order, with the position and balance each left (as
    guardian.sim.exchange books them; fees are not replayed)."""
    events: list[tuple[int, int, dict[str, Any]]] = [(fill_ms(f), 0, f) for f in acct.fills]
    events += [(s["time_ms"], 1, s) for s in acct.settlements]
    events.sort(key=lambda e: (e[0], e[1]))
    positions: dict[str, tuple[Decimal, Decimal]] = {}
    balances: dict[str, Decimal] = {FLEX: START_BALANCE}
    balances.update({name: wallet.opening for name, wallet in acct.wallets.items()})
    steps = []
    for ms, settled, event in events:
        instrument = market.instrument(event["symbol"])
        if instrument is None:
            continue
        held, entry = positions.get(event["symbol"], (ZERO, ZERO))
        if settled:
            price, amount = event["price"], abs(held)
            new, new_entry, realized = (
                ZERO,
                ZERO,
                instrument.math.pnl(held, instrument.contract_size, entry, price),
            )
            uid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"settlement:{acct.name}:{event['symbol']}:{ms}"))
            execution, info, date = None, "settlement", to_iso(ms / 1000)
        else:
            price, amount = Decimal(str(event["price"])), Decimal(str(event["size"]))
            signed = amount if event["side"] == "buy" else -amount
            new, new_entry, realized = instrument.math.apply_fill(
                held, entry, signed, price, instrument.contract_size
            )
            uid = execution = event["fill_id"]
            info, date = "futures trade", event["fillTime"]
        positions[event["symbol"]] = (new, new_entry)
        name = instrument.margin_account
        balance = balances.get(name, ZERO)
        balances[name] = balance + realized
        steps.append(
            _Step(
                uid=uid,
                execution=execution,
                info=info,
                symbol=event["symbol"],
                date=date,
                ms=ms,
                price=price,
                amount=amount,
                margin_account=_log_account(name),
                asset=instrument.margin_currency.lower(),
                fee_currency=fee_currency(instrument.margin_currency),
                old_position=held,
                new_position=new,
                old_balance=balance,
                new_balance=balance + realized,
                realized=realized,
                entry_before=entry,
                entry_after=new_entry,
            )
        )
    return steps


def account_log(acct: Account, market: Market) -> list[dict[str, Any]]:
    """Two rows per fill, as Kraken books a futures trade: the cash leg and the position leg (a
    settlement likewise). Newest first."""
    rows: list[dict[str, Any]] = []
    for step in _replay(acct, market):
        base = {
            "booking_uid": str(uuid.uuid5(uuid.NAMESPACE_OID, step.uid)),
            "contract": step.symbol.lower(),
            "date": step.date,
            "execution": step.execution,
            "fee": 0,
            "funding_rate": None,
            "info": step.info,
            "margin_account": step.margin_account,
            "mark_price": _number(step.price),
            "realized_funding": None,
            "trade_price": _number(step.price),
            "collateral": None,
            "conversion_spread_percentage": None,
            "liquidation_fee": None,
        }
        rows.append(
            {
                **base,
                "asset": step.asset,
                "old_balance": float(step.old_balance),
                "new_balance": float(step.new_balance),
                "realized_pnl": float(step.realized),
                "old_average_entry_price": None,
                "new_average_entry_price": None,
            }
        )
        rows.append(
            {
                **base,
                "asset": step.symbol.lower(),
                "old_balance": float(step.old_position),
                "new_balance": float(step.new_position),
                "realized_pnl": None,
                "old_average_entry_price": float(step.entry_before),
                "new_average_entry_price": float(step.entry_after),
            }
        )
    rows.reverse()
    for n, row in enumerate(reversed(rows), 1):
        row["id"] = n
    return rows


def _number(value: Decimal) -> float | int:
    """A price as the fills hold it: an int when whole, else a float."""
    return int(value) if value == int(value) else float(value)


def position_events(acct: Account, market: Market) -> Iterator[dict[str, Any]]:
    for step in _replay(acct, market):
        old, new = step.old_position, step.new_position
        if old == 0:
            change = "open"
        elif new == 0:
            change = "close"
        elif (old > 0) != (new > 0):
            change = "reverse"
        else:
            change = "increase" if abs(new) > abs(old) else "decrease"
        update = {
            "tradeable": step.symbol,
            "oldPosition": str(old),
            "newPosition": str(new),
            "positionChange": change,
            "oldAverageEntryPrice": str(step.entry_before),
            "newAverageEntryPrice": str(step.entry_after),
            "executionPrice": str(step.price),
            "executionSize": str(step.amount),
            "executionUid": step.execution or step.uid,
            "realizedPnL": str(step.realized),
            "realizedFunding": "0",
            "fee": "0",
            "feeCurrency": step.fee_currency,
            "updateReason": "trade" if step.execution else "settlement",
            "tradeType": "userExecution" if step.execution else "settlement",
            "fillTime": str(step.ms),
        }
        yield _element(step.uid, step.ms, {"PositionUpdate": update})


def _page(acct: Account, elements: list[dict[str, Any]], fields: Mapping[str, str]) -> dict[str, Any]:
    """Filter and order events as the history endpoints do: since/before (ms), sort, count, tradeable."""
    tradeable = fields.get("tradeable")
    if tradeable:
        elements = [e for e in elements if _tradeable(e) == tradeable.upper()]
    since, before = fields.get("since", ""), fields.get("before", "")
    if since.isdigit():
        elements = [e for e in elements if e["timestamp"] >= int(since)]
    if before.isdigit():
        elements = [e for e in elements if e["timestamp"] < int(before)]
    elements.sort(key=lambda e: e["timestamp"], reverse=fields.get("sort", "desc").lower() != "asc")
    count = int(fields["count"]) if fields.get("count", "").isdigit() else 500
    elements = elements[: max(1, min(count, 1000))]
    return {"accountUid": _account_uid(acct), "elements": elements, "len": len(elements)}


def _tradeable(element: Mapping[str, Any]) -> str | None:
    for event in element["event"].values():
        for key in ("order", "newOrder", "execution"):
            inner = event.get(key) if isinstance(event, Mapping) else None
            if isinstance(inner, Mapping):
                taker = inner.get("takerOrder") or inner.get("makerOrder") or inner
                return str(taker.get("tradeable"))
        if isinstance(event, Mapping) and "tradeable" in event:
            return str(event["tradeable"])
    return None


def events(acct: Account, market: Market, kind: str, fields: Mapping[str, str]) -> dict[str, Any]:
    if kind == "positions":
        return _page(acct, list(position_events(acct, market)), fields)
    if kind == "executions":
        return _page(acct, list(execution_events(acct, market)), fields)
    source = {"orders": order_events, "triggers": trigger_events}[kind]
    return _page(acct, list(source(acct)), fields)


def account_log_payload(acct: Account, market: Market, fields: Mapping[str, str]) -> dict[str, Any]:
    logs = account_log(acct, market)
    info = fields.get("info")
    if info:
        logs = [row for row in logs if row["info"] == info]
    if fields.get("sort", "desc").lower() == "asc":
        logs.reverse()
    count = int(fields["count"]) if fields.get("count", "").isdigit() else 500
    return {"accountUid": _account_uid(acct), "logs": logs[: max(1, min(count, 100_000))]}


CSV_COLUMNS = (
    "id",
    "date",
    "asset",
    "contract",
    "info",
    "old_balance",
    "new_balance",
    "realized_pnl",
    "fee",
    "trade_price",
    "mark_price",
    "execution",
    "booking_uid",
    "margin_account",
)


def account_log_csv(acct: Account, market: Market) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in account_log(acct, market):
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return out.getvalue()


def recent_orders(acct: Account) -> list[dict[str, Any]]:
    """`recentorders` (deprecated by Kraken, still listed by ccxt): the last placements, newest first."""
    return [
        {
            "timestamp": to_iso(o.received_ms / 1000),
            "order": _history_order(acct, o, filled=o.filled, at_ms=o.updated_ms),
        }
        for o in list(acct.orders.values())[-100:][::-1]
    ]
