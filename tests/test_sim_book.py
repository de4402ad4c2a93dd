"""The simulator's finite book, fees, realised PnL and event bus, as pure logic (no HTTP).

PF_XBTUSD starts at mark 60000, bid 59994, ask 60006, tick 0.5; the account holds 100000 USD.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from guardian.sim.events import EventBus, Overflow
from guardian.sim.exchange import Account, Exchange
from guardian.sim.market import Market

SYM = "PF_XBTUSD"


def make(**kwargs: Any) -> tuple[Exchange, Account]:
    ex = Exchange(Market(seed=1), **kwargs)
    return ex, ex.account("t")


def send(ex: Exchange, acct: Account, **fields: str) -> dict[str, Any]:
    return ex.send_order(acct, {"orderType": "lmt", "symbol": SYM, "side": "buy", "size": "1", **fields})


def executions(answer: dict[str, Any]) -> list[tuple[float, float]]:
    return [(e["price"], e["amount"]) for e in answer["orderEvents"] if e["type"] == "EXECUTION"]


# ---- depth and partial fills -------------------------------------------------------------------------
def test_a_crossing_limit_walks_the_levels_and_rests_the_rest() -> None:
    ex, acct = make(book_depth=Decimal(1))
    answer = send(ex, acct, size="3", limitPrice="60006.5")

    assert answer["status"] == "placed"
    assert executions(answer) == [(60006, 1), (60006.5, 1)]
    order = acct.orders[answer["order_id"]]
    assert (order.filled, order.unfilled, order.state) == (Decimal(2), Decimal(1), "open")
    assert acct.positions[SYM].size == 2 and acct.positions[SYM].price == Decimal("60006.25")
    assert ex.open_orders_payload(acct)[0]["status"] == "partiallyFilled"


def test_taken_liquidity_refills_when_the_market_moves() -> None:
    ex, acct = make(book_depth=Decimal(1))
    assert executions(send(ex, acct, orderType="ioc", limitPrice="60006")) == [(60006, 1)]
    assert send(ex, acct, orderType="ioc", limitPrice="60006")["status"] == "iocWouldNotExecute"

    ex.market.set_mark(SYM, Decimal("60000.5"))
    ex.on_prices()

    assert executions(send(ex, acct, orderType="ioc", limitPrice="60006.5")) == [(60006.5, 1)]


def test_ioc_drops_what_the_book_cannot_fill_and_fok_fills_all_or_nothing() -> None:
    ex, acct = make(book_depth=Decimal("0.5"), book_levels=2)
    ioc = send(ex, acct, orderType="ioc", size="2", limitPrice="60100")
    assert executions(ioc) == [(60006, 0.5), (60006.5, 0.5)]
    assert acct.orders[ioc["order_id"]].state == "cancelled" and not acct.open_ids

    ex.market.set_mark(SYM, Decimal(60001))
    fok = send(ex, acct, orderType="fok", size="2", limitPrice="60100")
    assert fok["status"] == "iocWouldNotExecute" and acct.positions[SYM].size == 1


def test_a_market_order_walks_the_book_within_its_protection() -> None:
    ex, acct = make(book_depth=Decimal(1), book_levels=3)
    answer = send(ex, acct, orderType="mkt", size="5")
    assert executions(answer) == [(60006, 1), (60006.5, 1), (60007, 1)]
    assert acct.orders[answer["order_id"]].state == "cancelled"  # the rest of a market order is dropped


def test_a_resting_order_fills_at_most_the_depth_per_move() -> None:
    ex, acct = make(book_depth=Decimal(1))
    answer = send(ex, acct, size="2", limitPrice="59900")
    for mark in ("59800", "59700"):
        ex.market.set_mark(SYM, Decimal(mark))
        ex.on_prices()
        if mark == "59800":
            assert acct.orders[answer["order_id"]].filled == 1
    order = acct.orders[answer["order_id"]]
    assert (order.filled, order.state) == (Decimal(2), "filled")
    assert [f["fillType"] for f in acct.fills] == ["maker", "maker"]


def test_unlimited_depth_keeps_the_old_whole_fills() -> None:
    ex, acct = make()
    assert executions(send(ex, acct, size="50", limitPrice="60100")) == [(60006, 50)]


# ---- fees and realised PnL --------------------------------------------------------------------------
def test_fees_and_realised_pnl_land_in_the_balance_and_agree_with_accounts() -> None:
    ex, acct = make(maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.0005"))
    send(ex, acct, orderType="ioc", limitPrice="60006")  # buy 1 at the ask, taker
    send(ex, acct, orderType="ioc", side="sell", limitPrice="59994")  # sell 1 at the bid, taker

    realized = Decimal(59994 - 60006)
    fees = (Decimal(60006) + Decimal(59994)) * Decimal("0.0005")
    assert (acct.realized_pnl, acct.fees) == (realized, fees)
    assert acct.balance == 100_000 + realized - fees
    flex = ex.accounts_payload(acct)["flex"]
    assert flex["currencies"]["USD"]["quantity"] == float(100_000 + realized - fees)
    assert flex["availableMargin"] == flex["portfolioValue"] == float(acct.balance)


def test_a_flip_books_pnl_on_the_closed_part_and_opens_the_rest_at_the_fill() -> None:
    ex, acct = make(maker_fee=Decimal("-0.0001"))  # a maker rebate
    send(ex, acct, limitPrice="59000")
    ex.market.set_mark(SYM, Decimal(58000))
    ex.on_prices()  # bought 1 at 59000 as maker
    send(ex, acct, side="sell", size="3", limitPrice="59500")
    ex.market.set_mark(SYM, Decimal(60000))
    ex.on_prices()  # sold 3 at 59500: 1 closes (+500), 2 open short

    assert acct.realized_pnl == 500
    assert acct.fees == Decimal("-0.0001") * (59000 + 3 * 59500)
    assert (acct.positions[SYM].size, acct.positions[SYM].price) == (-2, 59500)


def test_fee_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="fees"):
        make(taker_fee=Decimal("-0.1"))
    with pytest.raises(ValueError, match="book_depth"):
        make(book_depth=Decimal(0))


# ---- the event bus ----------------------------------------------------------------------------------
def test_bus_delivers_in_order_to_subscribers_of_the_account_only() -> None:
    ex, acct = make()
    mine = ex.bus.subscribe()
    mine.accounts.add("t")
    other = ex.bus.subscribe()
    other.accounts.add("someone-else")

    send(ex, acct, limitPrice="59000")
    send(ex, acct, orderType="mkt", side="sell")

    topics = [(e.topic, e.seq) for e in mine._items]  # type: ignore[attr-defined]
    assert [t for t, _ in topics] == ["order", "positions", "balances", "fill", "positions", "balances"]
    assert [s for _, s in topics] == sorted(s for _, s in topics)
    assert len(other) == 0


async def test_an_overflowing_subscriber_is_cut_off_and_counted() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=2)
    slow.accounts.add("a")
    fast = bus.subscribe(maxsize=100)
    fast.accounts.add("a")
    for _ in range(3):
        bus.publish("order", "a", dict)

    with pytest.raises(Overflow):
        await slow.get()
    assert bus.overflows == 1 and bus.subscribers == 1 and len(fast) == 3
    bus.publish("order", "a", dict)  # publishing carries on for the others
    assert len(fast) == 4


def test_nothing_is_rendered_when_nobody_listens() -> None:
    bus = EventBus()

    def explode() -> dict[str, Any]:
        raise AssertionError("rendered for nobody")

    bus.publish("fill", "a", explode)
    assert bus.seq == 1 and not bus.listening("a")
