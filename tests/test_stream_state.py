"""The account state's rules (guardian.stream.state), as a unit: Kraken's WebSocket v1 shapes applied in
order, REST truth adopted with its drift, realised PnL from fills, day totals, tolerance of the unknown."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

from guardian.kraken.signing import sign_challenge
from guardian.stream.state import AccountState, Fill, OrderClosed

DAY = 1_780_000_000.0  # a fixed "now" (epoch seconds) for the day's totals
MS = int(DAY * 1000)


def state() -> AccountState:
    return AccountState(clock=lambda: DAY)


def ws_order(
    order_id: str, qty: float, *, filled: float = 0, direction: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "instrument": "PF_XBTUSD",
        "time": MS,
        "last_update_time": MS,
        "qty": qty,
        "filled": filled,
        "limit_price": 59000.0,
        "stop_price": 0.0,
        "type": "limit",
        "order_id": order_id,
        "direction": direction,
        "reduce_only": False,
        **extra,
    }


def ws_fill(
    fill_id: str, *, buy: bool, qty: float, price: float, fee: float = 0.1, at: int = MS
) -> dict[str, Any]:
    return {
        "instrument": "PF_XBTUSD",
        "time": at,
        "price": price,
        "seq": 1,
        "buy": buy,
        "qty": qty,
        "remaining_order_qty": 0.0,
        "order_id": f"order-{fill_id}",
        "fill_id": fill_id,
        "fill_type": "taker",
        "fee_paid": fee,
        "fee_currency": "USD",
        "order_type": "lmt",
    }


def test_the_challenge_is_signed_as_kraken_documents_it() -> None:
    secret = base64.b64decode(
        "7zxMEF5p/Z8l2p2U7Ghv6x14Af+Fx+92tPgUdVQ748FOIrEoT9bgT+bTRfXc5pz8na+hL/QdrCVG7bh9KpT0eMTm"
    )
    assert (
        sign_challenge(secret, "c100b894-1729-464d-ace1-52dbce11db42")
        == "4JEpF3ix66GA2B+ooK128Ift4XQVtc137N9yeg4Kqsn9PI0Kpzbysl9M1IeCEdjg0zl00wkVqcsnG4bmnlMb3A=="
    )


def test_orders_snapshot_then_deltas_with_qty_as_the_remaining_size() -> None:
    s = state()
    s.apply(
        {
            "feed": "open_orders_snapshot",
            "account": "a",
            "orders": [ws_order("o1", 2), ws_order("o2", 1, direction=1)],
        }
    )
    assert {o.order_id: (o.side, o.remaining) for o in s.view().orders.values()} == {
        "o1": ("buy", Decimal(2)),
        "o2": ("sell", Decimal(1)),
    }
    s.apply(
        {
            "feed": "open_orders",
            "order": ws_order("o1", 1.5, filled=0.5),
            "is_cancel": False,
            "reason": "partial_fill",
        }
    )
    assert s.view().orders["o1"].remaining == Decimal("1.5")
    closed = s.apply(
        {
            "feed": "open_orders",
            "order": ws_order("o1", 0, filled=2),
            "is_cancel": True,
            "reason": "full_fill",
        }
    )
    assert [(e.order_id, e.reason) for e in closed if isinstance(e, OrderClosed)] == [("o1", "full_fill")]
    closed = s.apply(
        {
            "feed": "open_orders",
            "order_id": "o2",
            "cli_ord_id": "c2",
            "is_cancel": True,
            "reason": "dead_man_switch",
        }
    )
    [event] = closed
    assert isinstance(event, OrderClosed) and (event.reason, event.cli_ord_id, event.order is not None) == (
        "dead_man_switch",
        "c2",
        True,
    )
    assert s.view().orders == {}


def test_unknown_feeds_reasons_and_fields_are_tolerated() -> None:
    s = state()
    assert s.apply({"feed": "brand_new_feed", "x": 1}) == []
    assert s.unknown_feeds == {"brand_new_feed"}
    s.apply(
        {
            "feed": "open_orders",
            "order": {**ws_order("o1", 1), "new_field": [1, 2]},
            "is_cancel": False,
            "reason": "edited_by_user",
        }
    )
    assert "o1" in s.view().orders
    s.apply(
        {"feed": "open_orders", "order": {"order_id": "broken"}, "is_cancel": False}
    )  # unreadable: skipped
    s.apply({"feed": "open_orders", "is_cancel": True})  # no id at all
    s.apply({"feed": "open_positions", "positions": ["junk", {"instrument": "PF_XBTUSD"}]})
    s.apply({"feed": "fills", "fills": [{"fill_id": "f"}, "junk"]})
    assert s.view().fills_today == 0 and "o1" in s.view().orders


def test_positions_are_upserted_and_removed_at_zero() -> None:
    s = state()
    s.apply(
        {
            "feed": "open_positions",
            "positions": [
                {
                    "instrument": "PF_XBTUSD",
                    "balance": 0.5,
                    "entry_price": 60000,
                    "mark_price": 60100,
                    "pnl": 50,
                }
            ],
        }
    )
    s.apply(
        {
            "feed": "open_positions",
            "positions": [{"instrument": "PF_ETHUSD", "balance": -3, "entry_price": 3000}],
        }
    )
    assert {p: v.size for p, v in s.view().positions.items()} == {
        "PF_XBTUSD": Decimal("0.5"),
        "PF_ETHUSD": Decimal(-3),
    }
    s.apply({"feed": "open_positions", "positions": [{"instrument": "PF_XBTUSD", "balance": 0}]})
    assert set(s.view().positions) == {"PF_ETHUSD"}


def test_fills_realise_pnl_at_the_average_entry_and_count_fees_once() -> None:
    s = state()
    s.apply({"feed": "fills_snapshot", "fills": []})
    s.apply({"feed": "fills", "username": "u", "fills": [ws_fill("f1", buy=True, qty=1, price=100)]})
    s.apply(
        {"feed": "fills", "username": "u", "fills": [ws_fill("f2", buy=True, qty=1, price=110)]}
    )  # entry 105
    events = s.apply(
        {"feed": "fills", "username": "u", "fills": [ws_fill("f3", buy=False, qty=3, price=120)]}
    )
    [fill] = events
    assert isinstance(fill, Fill) and fill.realized_pnl == Decimal(30)  # 2 x (120 - 105); now short 1 @ 120
    s.apply({"feed": "fills", "fills": [ws_fill("f4", buy=True, qty=1, price=100)]})  # closes the short: +20
    s.apply({"feed": "fills", "fills": [ws_fill("f4", buy=True, qty=1, price=100)]})  # the same fill again
    view = s.view()
    assert (view.fills_today, view.realized_today, view.fees_today) == (4, Decimal(50), Decimal("0.4"))
    assert view.fills_by_side == {("PF_XBTUSD", "buy"): 3, ("PF_XBTUSD", "sell"): 1}


def test_a_snapshot_counts_only_todays_unseen_fills_and_a_restart_restores_the_day() -> None:
    s = state()
    s.restore_day(
        [{"fill_id": "old-today", "symbol": "PF_XBTUSD", "side": "buy", "fee": "0.5", "realized_pnl": "-7"}]
    )
    yesterday = MS - 86_400_000
    s.apply(
        {
            "feed": "fills_snapshot",
            "fills": [
                ws_fill("old-today", buy=True, qty=1, price=1),
                ws_fill("yesterday", buy=True, qty=1, price=1, at=yesterday),
                ws_fill("missed", buy=False, qty=1, price=1, fee=0.25),
            ],
        }
    )
    view = s.view()
    assert (view.fills_today, view.realized_today, view.fees_today) == (2, Decimal(-7), Decimal("0.75"))


def test_reconciliation_adopts_rest_and_reports_each_kind_of_drift() -> None:
    s = state()
    s.apply({"feed": "open_orders_snapshot", "orders": [ws_order("gone", 1), ws_order("kept", 2)]})
    s.apply(
        {
            "feed": "open_positions",
            "positions": [{"instrument": "PF_XBTUSD", "balance": 1, "entry_price": 100}],
        }
    )
    rest_orders = [
        {"order_id": "kept", "symbol": "PF_XBTUSD", "side": "buy", "unfilledSize": 1, "filledSize": 1},
        {"order_id": "new", "symbol": "PF_ETHUSD", "side": "sell", "unfilledSize": 4, "orderType": "lmt"},
    ]
    rest_positions = [{"side": "short", "symbol": "PF_XBTUSD", "price": 101, "size": 2}]
    accounts = {
        "flex": {"portfolioValue": 1000, "availableMargin": 900, "initialMargin": 50, "maintenanceMargin": 25}
    }
    notices = [
        {
            "type": "maintenance",
            "priority": "high",
            "note": "upgrade",
            "effectiveTime": "2026-06-01T10:00:00Z",
            "expectedDowntimeMinutes": 30,
        }
    ]
    drifts = s.reconcile(rest_orders, rest_positions, accounts, notices)
    assert sorted((d.kind, d.detail) for d in drifts) == [
        ("open_orders", "1 open at the exchange the stream had not shown"),
        ("open_orders", "1 shown open that the exchange no longer has"),
        ("open_orders", "1 with another remaining size at the exchange"),
        ("positions", "PF_XBTUSD 1 -> -2"),
    ]
    view = s.view()
    assert set(view.orders) == {"kept", "new"} and view.positions["PF_XBTUSD"].size == -2
    assert view.balances.available_margin == 900
    assert [n.note for n in view.notices] == ["upgrade"] and view.notices[0].is_maintenance
    assert s.reconcile(rest_orders, rest_positions, accounts, notices) == []  # agreed now: no drift
    assert s.reconcile(None, None, None) == []  # nothing read: nothing changed
    assert set(s.view().orders) == {"kept", "new"}


def test_balances_come_from_the_flex_group_and_a_delta_without_it_changes_nothing() -> None:
    s = state()
    s.apply(
        {
            "feed": "balances_snapshot",
            "holding": {},
            "futures": {},
            "flex_futures": {
                "portfolio_value": 10,
                "available_margin": 8,
                "initial_margin": 2,
                "maintenance_margin": 1,
                "total_unrealized": -0.5,
            },
        }
    )
    s.apply({"feed": "balances", "holding": {"USD": 5}, "futures": {}})
    balances = s.view().balances
    assert (balances.portfolio_value, balances.available_margin, balances.unrealized_pnl) == (
        10,
        8,
        Decimal("-0.5"),
    )


def test_notices_from_the_feed_and_rest_are_one_and_the_next_maintenance_is_found() -> None:
    from structlog.testing import capture_logs

    s = state()
    at_ms = MS + 3_600_000
    with capture_logs() as logged:
        s.apply(
            {
                "feed": "notifications_auth",
                "notifications": [
                    {
                        "id": 7,
                        "type": "maintenance",
                        "priority": "high",
                        "note": "db",
                        "effective_time": at_ms,
                        "expected_downtime_minutes": 20,
                    },
                    {"id": 8, "type": "market", "priority": "low", "note": "fyi", "effective_time": MS},
                ],
            }
        )
        from guardian.kraken.times import to_iso

        s.reconcile(
            None,
            None,
            None,
            [
                {
                    "type": "maintenance",
                    "priority": "high",
                    "note": "db",
                    "effectiveTime": to_iso(at_ms / 1000),
                    "expectedDowntimeMinutes": 20,
                }
            ],
        )
    # Announced once, though the feed and REST both told it.
    assert [e["event"] for e in logged if e["event"] == "maintenance_announced"] == ["maintenance_announced"]
    view = s.view()
    assert len(view.notices) == 2
    upcoming = view.next_maintenance(DAY)
    assert upcoming is not None and upcoming.effective_time == at_ms / 1000
    assert view.next_maintenance(DAY + 3600 + 20 * 60 + 1) is None  # over


def test_a_stop_without_a_limit_price_has_none_not_zero() -> None:
    """The feed sends a stop-market order with `limit_price: 0`: read as a price, a buy stop would count at
    the mark (the higher of 0 and the mark) instead of its stop price in the gross notional."""
    s = state()
    stop = {**ws_order("o1", 2), "type": "stop", "limit_price": 0.0, "stop_price": 61_000.0}
    s.apply({"feed": "open_orders_snapshot", "account": "a", "orders": [stop]})
    order = s.view().orders["o1"]
    assert (order.limit_price, order.stop_price) == (None, Decimal(61_000))
