"""Kraken-shaped messages from guardian's account state, for the relay's snapshots (shapes:
`../shared/kraken-futures-ws.md` §2), and the "own" view's filter over the exchange's deltas.

A snapshot is rendered from `AccountStream.view()` (no exchange call per subscriber). The state keeps
what the guard needs, so a few fields Kraken's own snapshots carry are left out rather than invented:
an order's `time` / `last_update_time`, a fill's `remaining_order_qty` and `fee_currency`. Balances are the
exception: the state keeps only the totals, so the relay keeps the last balances document the exchange
sent (its groups merged as deltas arrive) and serves that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

from guardian.stream.state import Balances, Fill, OpenOrder, StateView

# The relay's private feeds, and the feed names of their messages (snapshots and deltas).
PRIVATE_FEEDS: Final = (
    "open_orders",
    "open_orders_verbose",
    "open_positions",
    "fills",
    "balances",
    "notifications_auth",
)
PUBLIC_FEEDS: Final = ("ticker", "ticker_lite", "book", "trade", "heartbeat")
ORDER_TYPES: Final = {"lmt": "limit", "stp": "stop", "post": "limit", "ioc": "limit", "mkt": "limit"}
FILLS_IN_SNAPSHOT: Final = 100
ROWS_PER_STEP: Final = 250  # a large open orders snapshot is rendered this many orders at a time


def dumps(message: Mapping[str, Any] | list[Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


Owner = Callable[[str | None, str | None], str | None]  # (order_id, cli_ord_id) -> the bot that placed it


def _num(value: Decimal | None) -> float:
    return 0.0 if value is None else float(value)


def order_row(order: OpenOrder) -> dict[str, Any]:
    row: dict[str, Any] = {
        "instrument": order.symbol,
        "qty": _num(order.remaining),
        "filled": _num(order.filled),
        "limit_price": _num(order.limit_price),
        "stop_price": _num(order.stop_price),
        "type": ORDER_TYPES.get(order.order_type or "lmt", order.order_type or "limit"),
        "order_id": order.order_id,
        "direction": 0 if order.side == "buy" else 1,
        "reduce_only": order.reduce_only,
    }
    if order.cli_ord_id is not None:
        row["cli_ord_id"] = order.cli_ord_id
    return row


def fill_row(fill: Fill, seq: int) -> dict[str, Any]:
    return {
        "instrument": fill.symbol,
        "time": int(fill.time * 1000),
        "price": float(fill.price),
        "seq": seq,
        "buy": fill.side == "buy",
        "qty": float(fill.size),
        "order_id": fill.order_id,
        "fill_id": fill.fill_id,
        "fill_type": fill.fill_type or "taker",
        "fee_paid": float(fill.fee),
        **({"fee_currency": fill.fee_currency} if fill.fee_currency else {}),
    }


def snapshot_text(
    feed: str,
    view: StateView,
    account: str,
    *,
    balances: Mapping[str, Any] | None,
    mine: Callable[[str | None, str | None], bool] | None = None,
) -> Generator[None, None, str]:
    """`snapshot` as the JSON text a subscriber gets, worked out a step at a time (`guardian.slicing`):
    an open orders snapshot of thousands of orders is sorted in one step and rendered ROWS_PER_STEP orders
    per step; the other feeds' snapshots are small and made in one."""
    if feed not in ("open_orders", "open_orders_verbose"):
        return dumps(snapshot(feed, view, account, balances=balances, mine=mine))
    orders = sorted(view.orders.values(), key=_order_id)
    yield
    parts: list[str] = []
    for start in range(0, len(orders), ROWS_PER_STEP):
        rows = [
            order_row(o)
            for o in orders[start : start + ROWS_PER_STEP]
            if mine is None or mine(o.order_id, o.cli_ord_id)
        ]
        if rows:
            parts.append(dumps(rows)[1:-1])
        yield
    empty = dumps({"feed": f"{feed}_snapshot", "account": account, "orders": []})
    return empty[: -len("]}")] + ",".join(parts) + "]}"


def _order_id(order: OpenOrder) -> str:
    return order.order_id


def snapshot(
    feed: str,
    view: StateView,
    account: str,
    *,
    balances: Mapping[str, Any] | None,
    mine: Callable[[str | None, str | None], bool] | None = None,
) -> dict[str, Any]:
    """The snapshot a subscriber of `feed` gets first. `mine(order_id, cli_ord_id)`: the "own" view's test
    (None: the whole account)."""
    if feed in ("open_orders", "open_orders_verbose"):
        orders = [
            order_row(o)
            for o in sorted(view.orders.values(), key=lambda o: o.order_id)
            if mine is None or mine(o.order_id, o.cli_ord_id)
        ]
        return {"feed": f"{feed}_snapshot", "account": account, "orders": orders}
    if feed == "fills":
        fills = [f for f in view.recent_fills if mine is None or mine(f.order_id, f.cli_ord_id)]
        rows = [fill_row(f, i + 1) for i, f in enumerate(fills[-FILLS_IN_SNAPSHOT:])]
        return {"feed": "fills_snapshot", "account": account, "fills": rows}
    if feed == "open_positions":
        positions = [
            {
                "instrument": p.symbol,
                "balance": float(p.size),
                "entry_price": _num(p.entry_price),
                "mark_price": _num(p.mark_price),
                "pnl": _num(p.unrealized_pnl),
            }
            for p in sorted(view.positions.values(), key=lambda p: p.symbol)
        ]
        return {
            "feed": "open_positions",
            "account": account,
            "positions": positions,
            "seq": 0,
            "timestamp": int(time.time() * 1000),
        }
    if feed == "balances":
        if balances:
            return {**balances, "feed": "balances_snapshot", "account": account}
        return balances_from_view(view.balances, account)
    if feed == "notifications_auth":
        notes = []
        for i, n in enumerate(view.notices):
            note: dict[str, Any] = {"id": i + 1, "type": n.type, "priority": n.priority, "note": n.note}
            if n.effective_time is not None:
                note["effective_time"] = int(n.effective_time * 1000)
            if n.expected_downtime_minutes is not None:
                note["expected_downtime_minutes"] = n.expected_downtime_minutes
            notes.append(note)
        return {"feed": "notifications_auth", "notifications": notes}
    raise ValueError(f"not a private feed: {feed}")


def balances_from_view(balances: Balances, account: str) -> dict[str, Any]:
    """Before the exchange's first balances document: the totals guardian knows (REST's)."""
    return {
        "feed": "balances_snapshot",
        "account": account,
        "holding": {},
        "futures": {},
        "flex_futures": {
            "currencies": {},
            "portfolio_value": _num(balances.portfolio_value),
            "available_margin": _num(balances.available_margin),
            "initial_margin": _num(balances.initial_margin),
            "maintenance_margin": _num(balances.maintenance_margin),
            "total_unrealized": _num(balances.unrealized_pnl),
        },
        "timestamp": int(time.time() * 1000),
        "seq": 0,
    }


def merge_balances(kept: Mapping[str, Any] | None, message: Mapping[str, Any]) -> dict[str, Any]:
    """The balances document after `message` (a snapshot replaces it; a delta replaces its groups)."""
    if message.get("feed") == "balances_snapshot" or kept is None:
        return dict(message)
    return {**kept, **message}


def order_keys(message: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(order_id, cli_ord_id) of an open_orders delta."""
    order = message.get("order")
    if isinstance(order, Mapping):
        return _text(order.get("order_id")), _text(order.get("cli_ord_id")) or _text(
            message.get("cli_ord_id")
        )
    return _text(message.get("order_id")), _text(message.get("cli_ord_id"))


def fill_keys(fills: Iterable[Any]) -> list[tuple[str | None, str | None]]:
    return [
        (_text(f.get("order_id")), _text(f.get("cli_ord_id"))) if isinstance(f, Mapping) else (None, None)
        for f in fills
    ]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
