"""The simulator's exchange engine as pure logic: order types, validation, positions, edits, cancels,
batches, reads and the dead man's switch, with an injected clock (no HTTP, no sleeping).

PF_XBTUSD starts at mark 60000 with bid 59994 and ask 60006 (tick 0.5, size precision 4, leverage 50),
the account holds 100000 USD, and the synthetic book has unlimited size at the touch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from guardian.kraken.times import parse_iso, to_iso
from guardian.sim.exchange import Account, Exchange, SimError
from guardian.sim.market import Market

SYM = "PF_XBTUSD"
T0 = 1_700_000_000.0


def make(**kwargs: Any) -> tuple[Exchange, Account]:
    ex = Exchange(Market(seed=1), **kwargs)
    return ex, ex.account("t")


def clocked(**kwargs: Any) -> tuple[Exchange, Account, list[float]]:
    t = [T0]
    ex, acct = make(clock=lambda: t[0], **kwargs)
    return ex, acct, t


def o(order_type: str = "lmt", side: str = "buy", size: str = "1", **extra: str) -> dict[str, str]:
    return {"orderType": order_type, "symbol": SYM, "side": side, "size": size, **extra}


def move(ex: Exchange, price: str, symbol: str = SYM) -> None:
    ex.market.set_mark(symbol, Decimal(price))
    ex.on_prices()


def send(ex: Exchange, acct: Account, fields: dict[str, str]) -> dict[str, Any]:
    return ex.send_order(acct, fields)


def is_open(acct: Account, order_id: str) -> bool:
    return order_id in acct.open_ids


def position(acct: Account, symbol: str = SYM) -> Decimal:
    held = acct.positions.get(symbol)
    return held.size if held else Decimal(0)


def status_row(ex: Exchange, acct: Account, order_id: str) -> dict[str, Any]:
    rows = ex.order_status_payload(acct, [order_id], [])
    assert len(rows) == 1
    return rows[0]


def test_the_market_starts_where_these_tests_assume() -> None:
    ex, _ = make()
    quote = ex.market.quotes[SYM]
    assert (quote.mark, quote.bid, quote.ask) == (Decimal(60000), Decimal(59994), Decimal(60006))


# ---- order types ----------------------------------------------------------------------------------


def test_lmt_below_the_ask_rests_with_a_place_event() -> None:
    ex, acct = make()
    answer = send(ex, acct, o(limitPrice="59000"))
    assert answer["status"] == "placed"
    [event] = answer["orderEvents"]
    assert event["type"] == "PLACE"
    assert event["order"]["type"] == "lmt"
    assert event["order"]["limitPrice"] == 59000
    assert event["order"]["quantity"] == 1
    assert is_open(acct, answer["order_id"])
    assert position(acct) == 0


@pytest.mark.parametrize(
    ("side", "limit", "touch", "held"), [("buy", "61000", 60006, 1), ("sell", "59000", 59994, -1)]
)
def test_lmt_that_crosses_fills_whole_at_the_touch(side: str, limit: str, touch: int, held: int) -> None:
    ex, acct = make()
    answer = send(ex, acct, o(side=side, limitPrice=limit))
    assert answer["status"] == "placed"
    [event] = answer["orderEvents"]
    assert event["type"] == "EXECUTION"
    assert (event["price"], event["amount"]) == (touch, 1)
    assert event["orderPriorExecution"]["filled"] == 0
    assert not is_open(acct, answer["order_id"])
    assert position(acct) == held
    assert acct.positions[SYM].price == touch


def test_resting_lmt_fills_at_its_own_price_when_the_touch_reaches_it() -> None:
    ex, acct = make()
    answer = send(ex, acct, o(limitPrice="59000"))
    move(ex, "59500")  # ask 59506: not yet
    assert is_open(acct, answer["order_id"])
    move(ex, "58990")  # ask 58996 <= 59000
    assert not is_open(acct, answer["order_id"])
    assert acct.positions[SYM].price == 59000
    assert acct.fills[-1]["fillType"] == "maker"


def test_post_that_does_not_cross_rests() -> None:
    ex, acct = make()
    answer = send(ex, acct, o("post", limitPrice="60000"))
    assert answer["status"] == "placed"
    assert answer["orderEvents"][0]["type"] == "PLACE"
    assert answer["orderEvents"][0]["order"]["type"] == "post"
    assert is_open(acct, answer["order_id"])


def test_post_that_would_cross_is_rejected_with_post_would_execute() -> None:
    ex, acct = make()
    answer = send(ex, acct, o("post", limitPrice="60006"))
    assert answer["status"] == "postWouldExecute"
    [event] = answer["orderEvents"]
    assert event["type"] == "REJECT"
    assert event["reason"] == "POST_WOULD_EXECUTE"
    assert event["uid"] == answer["order_id"]
    assert acct.open_ids == {}
    assert position(acct) == 0


@pytest.mark.parametrize("kind", ["ioc", "fok"])
def test_ioc_and_fok_fill_when_they_cross(kind: str) -> None:
    ex, acct = make()
    answer = send(ex, acct, o(kind, side="sell", limitPrice="59994"))
    assert answer["status"] == "placed"
    [event] = answer["orderEvents"]
    assert (event["type"], event["price"], event["amount"]) == ("EXECUTION", 59994, 1)
    assert position(acct) == -1


@pytest.mark.parametrize("kind", ["ioc", "fok"])
def test_ioc_and_fok_that_do_not_cross_are_rejected_and_never_rest(kind: str) -> None:
    ex, acct = make()
    answer = send(ex, acct, o(kind, limitPrice="60005.5"))
    assert answer["status"] == "iocWouldNotExecute"
    [event] = answer["orderEvents"]
    assert (event["type"], event["reason"]) == ("REJECT", "IOC_WOULD_NOT_EXECUTE")
    assert acct.open_ids == {}
    assert position(acct) == 0


def test_mkt_fills_at_the_mark_and_shows_as_ioc() -> None:
    ex, acct = make()
    answer = send(ex, acct, o("mkt", size="2"))
    assert answer["status"] == "placed"
    [event] = answer["orderEvents"]
    assert event["type"] == "EXECUTION"
    assert (event["price"], event["amount"]) == (60000, 2)
    prior = event["orderPriorExecution"]
    assert prior["type"] == "ioc"
    assert prior["limitPrice"] == 60600  # the 1% protection price
    assert position(acct) == 2
    assert acct.fills[-1]["fillType"] == "taker"


@pytest.mark.parametrize(
    ("kind", "side", "stop", "side_shown", "away", "towards", "reached", "held"),
    [
        ("stp", "sell", "59000", "trigger_below", "61000", "59500", "58900", -1),
        ("stp", "buy", "61000", "trigger_above", "59000", "60500", "61100", 1),
        ("take_profit", "sell", "61000", "trigger_above", "59000", "60500", "61000", -1),
        ("take_profit", "buy", "59000", "trigger_below", "61000", "59500", "59000", 1),
    ],
)
def test_trigger_orders_rest_and_fire_as_market_only_in_their_direction(
    kind: str, side: str, stop: str, side_shown: str, away: str, towards: str, reached: str, held: int
) -> None:
    ex, acct = make()
    answer = send(ex, acct, o(kind, side=side, stopPrice=stop))
    assert answer["status"] == "placed"
    [event] = answer["orderEvents"]
    assert event["type"] == "PLACE"
    trigger = event["orderTrigger"]
    assert trigger["uid"] == answer["order_id"]
    assert trigger["triggerPrice"] == int(stop)
    assert trigger["triggerSide"] == side_shown
    assert trigger["type"] == "ioc"  # no limitPrice: a stop-market
    assert trigger["limitPrice"] is None
    assert trigger["triggerSignal"] == "mark_price"
    oid = answer["order_id"]
    move(ex, away)
    assert is_open(acct, oid)
    move(ex, towards)
    assert is_open(acct, oid)
    assert status_row(ex, acct, oid)["status"] == "TRIGGER_PLACED"
    move(ex, reached)
    assert not is_open(acct, oid)
    assert position(acct) == held
    assert acct.fills[-1]["price"] == int(reached)  # a stop-market fills at the mark
    assert status_row(ex, acct, oid)["status"] == "FULLY_EXECUTED"


def test_stop_limit_fills_at_the_touch_when_its_limit_crosses_on_trigger() -> None:
    ex, acct = make()
    answer = send(ex, acct, o("stp", side="sell", stopPrice="59000", limitPrice="58500"))
    trigger = answer["orderEvents"][0]["orderTrigger"]
    assert (trigger["type"], trigger["limitPrice"]) == ("lmt", 58500)
    move(ex, "58900")  # bid 58894 >= 58500
    assert not is_open(acct, answer["order_id"])
    assert acct.fills[-1]["price"] == 58894
    assert position(acct) == -1


def test_stop_limit_whose_limit_is_not_reached_rests_as_a_limit_order_after_triggering() -> None:
    ex, acct = make()
    answer = send(ex, acct, o("stp", side="sell", stopPrice="59000", limitPrice="58950"))
    oid = answer["order_id"]
    move(ex, "58000")  # triggered, but the bid 57994 is under the limit
    assert is_open(acct, oid)
    [row] = ex.open_orders_payload(acct)
    assert row["orderType"] == "lmt"
    assert "stopPrice" not in row
    assert acct.orders[oid].update_reason == "STOP_ORDER_TRIGGERED"
    assert position(acct) == 0
    move(ex, "59000")  # bid 58994 reaches the limit
    assert not is_open(acct, oid)
    assert acct.fills[-1]["price"] == 58950
    assert position(acct) == -1


def test_trailing_stop_percent_follows_the_price_and_fires_on_a_pullback_of_the_deviation() -> None:
    ex, acct = make()
    answer = send(
        ex,
        acct,
        o("trailing_stop", side="sell", trailingStopMaxDeviation="1", trailingStopDeviationUnit="PERCENT"),
    )
    assert answer["status"] == "placed"
    oid = answer["order_id"]
    trigger = answer["orderEvents"][0]["orderTrigger"]
    assert (trigger["triggerPrice"], trigger["triggerSide"]) == (59400, "trigger_below")
    move(ex, "62000")
    assert acct.orders[oid].stop_price == Decimal(61380)
    move(ex, "61500")  # a pull-back smaller than 1%: the trigger stays where it was
    assert acct.orders[oid].stop_price == Decimal(61380)
    assert is_open(acct, oid)
    move(ex, "61380.5")
    assert is_open(acct, oid)
    move(ex, "61380")
    assert not is_open(acct, oid)
    assert position(acct) == -1


def test_trailing_stop_quote_currency_buy_trails_above_a_falling_price() -> None:
    ex, acct = make()
    answer = send(
        ex,
        acct,
        o("trailing_stop", trailingStopMaxDeviation="500", trailingStopDeviationUnit="QUOTE_CURRENCY"),
    )
    oid = answer["order_id"]
    trigger = answer["orderEvents"][0]["orderTrigger"]
    assert (trigger["triggerPrice"], trigger["triggerSide"]) == (60500, "trigger_above")
    move(ex, "59000")
    assert acct.orders[oid].stop_price == Decimal(59500)
    move(ex, "59499.5")
    assert is_open(acct, oid)
    move(ex, "59500")
    assert not is_open(acct, oid)
    assert position(acct) == 1


def test_trailing_stop_needs_its_deviation_and_unit() -> None:
    ex, acct = make()
    with pytest.raises(SimError) as caught:
        send(ex, acct, o("trailing_stop", side="sell", trailingStopDeviationUnit="PERCENT"))
    assert caught.value.code == "requiredArgumentMissing"
    with pytest.raises(SimError) as caught:
        send(
            ex,
            acct,
            o(
                "trailing_stop",
                side="sell",
                trailingStopMaxDeviation="60",
                trailingStopDeviationUnit="PERCENT",
            ),
        )
    assert caught.value.code == "invalidArgument"


@pytest.mark.parametrize(
    ("signal", "shown", "moved"),
    [("last", "last_price", "last"), ("index", "spot_price", "index"), ("spot", "spot_price", "index")],
)
def test_trigger_signal_selects_the_price_a_stop_watches(signal: str, shown: str, moved: str) -> None:
    ex, acct = make()
    watching = send(ex, acct, o("stp", side="sell", stopPrice="59000", triggerSignal=signal))
    on_mark = send(ex, acct, o("stp", side="sell", stopPrice="59000"))
    assert watching["orderEvents"][0]["orderTrigger"]["triggerSignal"] == shown
    setattr(ex.market.quotes[SYM], moved, Decimal(58000))  # the mark stays at 60000
    ex.on_prices()
    assert not is_open(acct, watching["order_id"])
    assert is_open(acct, on_mark["order_id"])
    assert position(acct) == -1


def test_default_trigger_signal_is_configurable() -> None:
    ex, acct = make(default_trigger_signal="last")
    answer = send(ex, acct, o("stp", side="sell", stopPrice="59000"))
    assert answer["orderEvents"][0]["orderTrigger"]["triggerSignal"] == "last_price"
    with pytest.raises(ValueError, match="default_trigger_signal"):
        make(default_trigger_signal="bogus")


# ---- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["orderType", "symbol", "side", "size"])
def test_a_missing_required_field_is_required_argument_missing(missing: str) -> None:
    ex, acct = make()
    fields = o(limitPrice="59000")
    del fields[missing]
    with pytest.raises(SimError) as caught:
        send(ex, acct, fields)
    assert caught.value.code == "requiredArgumentMissing"
    assert acct.orders == {}


@pytest.mark.parametrize(
    "override",
    [
        {"orderType": "limit"},
        {"side": "long"},
        {"symbol": "PF_DOGEUSD"},
        {"triggerSignal": "bogus"},
        {"size": "one"},
        {"reduceOnly": "maybe"},
    ],
)
def test_a_bad_value_is_invalid_argument(override: dict[str, str]) -> None:
    ex, acct = make()
    with pytest.raises(SimError) as caught:
        send(ex, acct, {**o(limitPrice="59000"), **override})
    assert caught.value.code == "invalidArgument"


@pytest.mark.parametrize("kind", ["lmt", "post", "ioc", "fok"])
def test_limit_priced_types_need_a_limit_price(kind: str) -> None:
    ex, acct = make()
    with pytest.raises(SimError) as caught:
        send(ex, acct, o(kind))
    assert caught.value.code == "requiredArgumentMissing"


@pytest.mark.parametrize("kind", ["stp", "take_profit"])
def test_stop_types_need_a_stop_price(kind: str) -> None:
    ex, acct = make()
    with pytest.raises(SimError) as caught:
        send(ex, acct, o(kind, side="sell", limitPrice="58000"))
    assert caught.value.code == "requiredArgumentMissing"


@pytest.mark.parametrize("size", ["0.00001", "0", "-1", "1e30"])
def test_a_size_off_the_lot_is_invalid_size(size: str) -> None:
    ex, acct = make()
    answer = send(ex, acct, o(size=size, limitPrice="59000"))
    assert answer["status"] == "invalidSize"
    assert answer["orderEvents"] == []
    assert acct.orders == {}


@pytest.mark.parametrize(
    "prices",
    [{"limitPrice": "59000.25"}, {"limitPrice": "1e30"}, {"orderType": "stp", "stopPrice": "59000.3"}],
)
def test_a_price_off_the_tick_is_invalid_price(prices: dict[str, str]) -> None:
    ex, acct = make()
    answer = send(ex, acct, {**o(side="sell"), **prices})
    assert answer["status"] == "invalidPrice"
    assert acct.orders == {}


@pytest.mark.parametrize(("side", "limit"), [("buy", "75000.5"), ("sell", "44999.5")])
def test_a_limit_beyond_the_collar_is_outside_price_collar(side: str, limit: str) -> None:
    ex, acct = make()
    assert send(ex, acct, o(side=side, limitPrice=limit))["status"] == "outsidePriceCollar"
    assert acct.orders == {}


def test_a_limit_at_the_collar_is_accepted() -> None:
    ex, acct = make()
    assert send(ex, acct, o(side="buy", limitPrice="75000"))["status"] == "placed"
    assert send(ex, acct, o(side="sell", limitPrice="45000"))["status"] == "placed"


def test_cli_ord_id_in_use_by_an_open_order_is_refused_but_free_again_once_it_closes() -> None:
    ex, acct = make()
    first = send(ex, acct, o(limitPrice="59000", cliOrdId="mine"))
    assert first["cliOrdId"] == "mine"
    again = send(ex, acct, o(limitPrice="58000", cliOrdId="mine"))
    assert again["status"] == "clientOrderIdAlreadyExist"
    assert len(acct.open_ids) == 1
    ex.cancel_order(acct, {"order_id": first["order_id"]})
    reused = send(ex, acct, o(limitPrice="58000", cliOrdId="mine"))
    assert reused["status"] == "placed"
    assert acct.find(None, "mine") is acct.orders[reused["order_id"]]


def test_cli_ord_id_longer_than_100_characters_is_invalid_argument() -> None:
    ex, acct = make()
    assert send(ex, acct, o(limitPrice="59000", cliOrdId="x" * 100))["status"] == "placed"
    with pytest.raises(SimError) as caught:
        send(ex, acct, o(limitPrice="59000", cliOrdId="y" * 101))
    assert caught.value.code == "invalidArgument"


def test_process_before_in_the_past_is_would_process_after_specified_time() -> None:
    ex, acct, _ = clocked()
    late = send(ex, acct, o(limitPrice="59000", processBefore=to_iso(T0 - 1)))
    assert late["status"] == "wouldProcessAfterSpecifiedTime"
    assert acct.orders == {}
    in_time = send(ex, acct, o(limitPrice="59000", processBefore=to_iso(T0 + 1)))
    assert in_time["status"] == "placed"
    with pytest.raises(SimError) as caught:
        send(ex, acct, o(limitPrice="59000", processBefore="soon"))
    assert caught.value.code == "invalidArgument"


def test_a_suspended_market_is_market_suspended() -> None:
    ex, acct = make()
    ex.market.set_suspended(SYM, True)
    assert send(ex, acct, o(limitPrice="59000"))["status"] == "marketSuspended"
    assert send(ex, acct, {**o(limitPrice="3000"), "symbol": "PF_ETHUSD"})["status"] == "placed"
    ex.market.set_suspended(SYM, False)
    assert send(ex, acct, o(limitPrice="59000"))["status"] == "placed"


def test_reduce_only_without_a_position_to_reduce_is_would_not_reduce_position() -> None:
    ex, acct = make()
    assert send(ex, acct, o("mkt", reduceOnly="true"))["status"] == "wouldNotReducePosition"
    send(ex, acct, o("mkt"))  # long 1: a reduce-only buy still adds to it
    assert send(ex, acct, o("mkt", reduceOnly="true"))["status"] == "wouldNotReducePosition"
    assert position(acct) == 1


def test_a_reduce_only_fill_is_capped_at_the_position() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt"))
    answer = send(ex, acct, o("mkt", side="sell", size="3", reduceOnly="true"))
    assert answer["status"] == "placed"
    assert answer["orderEvents"][0]["amount"] == 1
    assert position(acct) == 0
    assert acct.orders[answer["order_id"]].size == 1


def test_a_resting_reduce_only_order_whose_position_is_gone_is_cancelled_not_filled() -> None:
    ex, acct, _ = clocked()
    send(ex, acct, o("mkt"))
    resting = send(ex, acct, o(side="sell", limitPrice="61000", reduceOnly="true"))
    send(ex, acct, o("mkt", side="sell"))  # the position is closed by another order
    move(ex, "62000")  # the reduce-only sell now crosses
    assert position(acct) == 0  # it did not open a short
    assert not is_open(acct, resting["order_id"])
    row = status_row(ex, acct, resting["order_id"])
    assert (row["status"], row["updateReason"]) == ("CANCELLED", "WOULD_NOT_REDUCE_POSITION")


def test_a_reduce_only_stop_whose_position_is_gone_is_cancelled_when_it_triggers() -> None:
    ex, acct, _ = clocked()
    send(ex, acct, o("mkt"))
    stop = send(ex, acct, o("stp", side="sell", stopPrice="59000", reduceOnly="true"))
    send(ex, acct, o("mkt", side="sell"))
    move(ex, "58000")
    assert position(acct) == 0
    row = status_row(ex, acct, stop["order_id"])
    assert (row["status"], row["updateReason"]) == ("CANCELLED", "WOULD_NOT_REDUCE_POSITION")


def test_an_order_beyond_the_available_margin_is_insufficient_available_funds() -> None:
    ex, acct = make()
    # 100 x 59000 / 50 = 118000 of margin against 100000 of collateral.
    assert send(ex, acct, o(size="100", limitPrice="59000"))["status"] == "insufficientAvailableFunds"
    assert acct.orders == {}
    # 80 x 59000 / 50 = 94400 fits; open orders then hold that margin, so 10 more does not.
    assert send(ex, acct, o(size="80", limitPrice="59000"))["status"] == "placed"
    assert send(ex, acct, o(size="10", limitPrice="59000"))["status"] == "insufficientAvailableFunds"
    assert len(acct.open_ids) == 1


def test_an_order_that_would_trade_with_the_accounts_own_order_is_self_fill() -> None:
    ex, acct = make()
    assert send(ex, acct, o(limitPrice="60003"))["status"] == "placed"  # inside the spread
    answer = send(ex, acct, o(side="sell", limitPrice="60003"))
    assert answer["status"] == "selfFill"
    assert len(acct.open_ids) == 1
    assert position(acct) == 0
    assert send(ex, acct, o(side="sell", limitPrice="60003.5"))["status"] == "placed"


def test_open_orders_beyond_the_maximum_are_too_many_orders() -> None:
    ex, acct = make(max_open_orders=2)
    send(ex, acct, o(limitPrice="59000"))
    send(ex, acct, o("stp", side="sell", stopPrice="59000"))
    assert send(ex, acct, o(limitPrice="58000"))["status"] == "tooManyOrders"
    assert len(acct.open_ids) == 2


# ---- positions and PnL ----------------------------------------------------------------------------


def test_closing_a_long_at_a_higher_mark_adds_the_difference_to_the_balance() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt", size="2"))
    assert acct.balance == 100_000
    move(ex, "61000")
    [row] = ex.open_positions_payload(acct)
    assert (row["side"], row["size"], row["price"], row["unrealizedPnl"]) == ("long", 2, 60000, 2000)
    send(ex, acct, o("mkt", side="sell", size="2"))
    assert acct.balance == 102_000
    assert acct.positions == {}
    assert ex.open_positions_payload(acct) == []


def test_covering_a_short_at_a_higher_mark_takes_the_loss_from_the_balance() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt", side="sell"))
    move(ex, "60500")
    send(ex, acct, o("mkt"))
    assert acct.balance == 99_500


def test_a_partial_close_keeps_the_entry_price_and_realizes_only_the_closed_part() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt", size="3"))
    move(ex, "61000")
    send(ex, acct, o("mkt", side="sell", size="1"))
    assert acct.balance == 101_000
    assert (acct.positions[SYM].size, acct.positions[SYM].price) == (2, 60000)


def test_selling_more_than_the_long_flips_to_a_short_at_the_fill_price() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt"))
    move(ex, "61000")
    send(ex, acct, o("mkt", side="sell", size="3"))
    assert acct.balance == 101_000  # only the closed contract is realized
    [row] = ex.open_positions_payload(acct)
    assert (row["side"], row["size"], row["price"]) == ("short", 2, 61000)


def test_adding_to_a_position_averages_the_entry_price() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt"))
    move(ex, "61000")
    send(ex, acct, o("mkt"))
    assert acct.positions[SYM].price == 60500


def test_accounts_payload_reports_balance_and_unrealized_pnl() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt"))
    move(ex, "60100")
    flex = ex.accounts_payload(acct)["flex"]
    assert flex["balanceValue"] == 100_000
    assert flex["pnl"] == 100
    assert flex["portfolioValue"] == 100_100


# ---- editorder ------------------------------------------------------------------------------------


def test_edit_changes_size_and_price_with_an_edit_event_relative_by_default() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "size": "2", "limitPrice": "59100"})
    assert answer["status"] == "edited"
    assert answer["orderId"] == placed["order_id"]
    [event] = answer["orderEvents"]
    assert event["type"] == "EDIT"
    assert (event["old"]["quantity"], event["old"]["limitPrice"]) == (1, 59000)
    assert (event["new"]["quantity"], event["new"]["limitPrice"]) == (2, 59100)
    [row] = ex.open_orders_payload(acct)
    assert (row["unfilledSize"], row["limitPrice"]) == (2, 59100)


def test_edit_with_absolute_quantity_mode_sets_the_total_size() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "size": "3", "qtyMode": "ABSOLUTE"})
    assert answer["status"] == "edited"
    assert acct.orders[placed["order_id"]].size == 3
    with pytest.raises(SimError) as caught:
        ex.edit_order(acct, {"orderId": placed["order_id"], "size": "3", "qtyMode": "TOTAL"})
    assert caught.value.code == "invalidArgument"


def test_edit_by_cli_ord_id() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000", cliOrdId="c1"))
    answer = ex.edit_order(acct, {"cliOrdId": "c1", "limitPrice": "58000"})
    assert (answer["status"], answer["orderId"]) == ("edited", placed["order_id"])
    assert acct.orders[placed["order_id"]].limit_price == 58000


def test_edit_of_an_unknown_or_closed_order_is_order_for_edit_not_found() -> None:
    ex, acct = make()
    answer = ex.edit_order(acct, {"orderId": "no-such-order", "limitPrice": "59000"})
    assert (answer["status"], answer["orderEvents"]) == ("orderForEditNotFound", [])
    placed = send(ex, acct, o(limitPrice="59000"))
    ex.cancel_order(acct, {"order_id": placed["order_id"]})
    assert (
        ex.edit_order(acct, {"orderId": placed["order_id"], "size": "2"})["status"] == "orderForEditNotFound"
    )
    with pytest.raises(SimError) as caught:
        ex.edit_order(acct, {"size": "2"})
    assert caught.value.code == "requiredArgumentMissing"


def test_a_stop_price_edit_on_a_plain_limit_order_is_order_for_edit_not_a_stop() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "stopPrice": "58000"})
    assert answer["status"] == "orderForEditNotAStop"
    assert acct.orders[placed["order_id"]].stop_price is None


def test_edit_to_a_size_off_the_lot_is_invalid_size_and_changes_nothing() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "size": "0.00001"})
    assert answer["status"] == "invalidSize"
    assert acct.orders[placed["order_id"]].size == 1


def test_edit_of_a_post_order_to_a_crossing_price_is_post_would_execute_and_changes_nothing() -> None:
    ex, acct = make()
    placed = send(ex, acct, o("post", limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "limitPrice": "60006"})
    assert answer["status"] == "postWouldExecute"
    assert is_open(acct, placed["order_id"])
    assert acct.orders[placed["order_id"]].limit_price == 59000
    assert position(acct) == 0


def test_an_edit_that_crosses_fills_at_the_touch() -> None:
    ex, acct = make()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.edit_order(acct, {"orderId": placed["order_id"], "limitPrice": "61000"})
    assert answer["status"] == "edited"
    assert [e["type"] for e in answer["orderEvents"]] == ["EDIT", "EXECUTION"]
    assert answer["orderEvents"][1]["price"] == 60006
    assert not is_open(acct, placed["order_id"])
    assert position(acct) == 1


def test_editing_a_stop_price_moves_where_it_fires() -> None:
    ex, acct = make()
    placed = send(ex, acct, o("stp", side="sell", stopPrice="59000"))
    assert ex.edit_order(acct, {"orderId": placed["order_id"], "stopPrice": "58000"})["status"] == "edited"
    move(ex, "58500")
    assert is_open(acct, placed["order_id"])
    move(ex, "58000")
    assert not is_open(acct, placed["order_id"])


def test_editing_a_trailing_stops_deviation_moves_its_trigger() -> None:
    ex, acct = make()
    placed = send(
        ex,
        acct,
        o("trailing_stop", side="sell", trailingStopMaxDeviation="1", trailingStopDeviationUnit="PERCENT"),
    )
    oid = placed["order_id"]
    answer = ex.edit_order(acct, {"orderId": oid, "trailingStopMaxDeviation": "2"})
    assert answer["status"] == "edited"
    assert acct.orders[oid].stop_price == 58800
    move(ex, "59000")  # under the old 1% trigger, above the new 2% one
    assert is_open(acct, oid)


def test_a_trailing_stops_trigger_or_limit_price_cannot_be_edited() -> None:
    ex, acct = make()
    placed = send(
        ex,
        acct,
        o("trailing_stop", side="sell", trailingStopMaxDeviation="1", trailingStopDeviationUnit="PERCENT"),
    )
    oid = placed["order_id"]
    answer = ex.edit_order(acct, {"orderId": oid, "stopPrice": "50000"})
    assert answer["status"] == "cannotEditTriggerPriceOfTrailingStop"
    answer = ex.edit_order(acct, {"orderId": oid, "limitPrice": "50000"})
    assert answer["status"] == "cannotEditLimitPriceOfTrailingStop"
    assert acct.orders[oid].stop_price == 59400
    assert acct.orders[oid].limit_price is None


# ---- cancelorder and cancelallorders ---------------------------------------------------------------


def test_cancel_by_order_id_cancels_with_a_cancel_event() -> None:
    ex, acct, _ = clocked()
    placed = send(ex, acct, o(limitPrice="59000"))
    answer = ex.cancel_order(acct, {"order_id": placed["order_id"]})
    assert (answer["status"], answer["order_id"]) == ("cancelled", placed["order_id"])
    [event] = answer["orderEvents"]
    assert (event["type"], event["uid"]) == ("CANCEL", placed["order_id"])
    assert not is_open(acct, placed["order_id"])
    assert status_row(ex, acct, placed["order_id"])["updateReason"] == "CANCELLED_BY_USER"


def test_cancel_by_cli_ord_id() -> None:
    ex, acct = make()
    placed = send(ex, acct, o("stp", side="sell", stopPrice="59000", cliOrdId="stop-1"))
    answer = ex.cancel_order(acct, {"cliOrdId": "stop-1"})
    assert (answer["status"], answer["order_id"], answer["cliOrdId"]) == (
        "cancelled",
        placed["order_id"],
        "stop-1",
    )
    assert acct.open_ids == {}


def test_cancel_of_a_filled_order_says_filled_and_of_an_unknown_or_cancelled_one_not_found() -> None:
    ex, acct = make()
    filled = send(ex, acct, o("mkt"))
    assert ex.cancel_order(acct, {"order_id": filled["order_id"]})["status"] == "filled"
    unknown = ex.cancel_order(acct, {"order_id": "no-such-order"})
    assert (unknown["status"], unknown["order_id"]) == ("notFound", "no-such-order")
    assert ex.cancel_order(acct, {"cliOrdId": "nobody"})["status"] == "notFound"
    resting = send(ex, acct, o(limitPrice="59000"))
    ex.cancel_order(acct, {"order_id": resting["order_id"]})
    assert ex.cancel_order(acct, {"order_id": resting["order_id"]})["status"] == "notFound"
    with pytest.raises(SimError) as caught:
        ex.cancel_order(acct, {})
    assert caught.value.code == "requiredArgumentMissing"


def test_cancel_all_cancels_every_open_order_trigger_orders_included() -> None:
    ex, acct = make()
    named = send(ex, acct, o(limitPrice="59000", cliOrdId="a"))["order_id"]
    ids = {
        named,
        send(ex, acct, o("stp", side="sell", stopPrice="59000"))["order_id"],
        send(ex, acct, {**o(limitPrice="2900"), "symbol": "PF_ETHUSD"})["order_id"],
    }
    answer = ex.cancel_all(acct, None)
    assert (answer["status"], answer["cancelOnly"]) == ("cancelled", "all")
    assert {c["order_id"] for c in answer["cancelledOrders"]} == ids
    assert {"order_id": named, "cliOrdId": "a"} in answer["cancelledOrders"]
    assert len(answer["orderEvents"]) == 3
    assert acct.open_ids == {}


def test_cancel_all_for_one_symbol_leaves_the_others() -> None:
    ex, acct = make()
    xbt = send(ex, acct, o(limitPrice="59000"))["order_id"]
    eth = send(ex, acct, {**o(limitPrice="2900"), "symbol": "PF_ETHUSD"})["order_id"]
    answer = ex.cancel_all(acct, "PF_XBTUSD")
    assert (answer["status"], answer["cancelOnly"]) == ("cancelled", "PF_XBTUSD")
    assert [c["order_id"] for c in answer["cancelledOrders"]] == [xbt]
    assert list(acct.open_ids) == [eth]
    with pytest.raises(SimError) as caught:
        ex.cancel_all(acct, "PF_NOPEUSD")
    assert caught.value.code == "invalidArgument"


def test_cancel_all_with_nothing_open_is_no_orders_to_cancel() -> None:
    ex, acct = make()
    answer = ex.cancel_all(acct, None)
    assert (answer["status"], answer["cancelledOrders"], answer["orderEvents"]) == (
        "noOrdersToCancel",
        [],
        [],
    )
    send(ex, acct, {**o(limitPrice="2900"), "symbol": "PF_ETHUSD"})
    assert ex.cancel_all(acct, SYM)["status"] == "noOrdersToCancel"


# ---- batchorder -----------------------------------------------------------------------------------


def test_batch_edits_and_cancels_may_name_an_earlier_items_order_tag() -> None:
    ex, acct = make()
    results = ex.batch(
        acct,
        [
            {"order": "send", "order_tag": "a", **o(limitPrice="59000")},
            {"order": "send", "order_tag": "b", **o(limitPrice="58000", cliOrdId="bee")},
            {"order": "edit", "order_id": "a", "limitPrice": "59100"},
            {"order": "cancel", "order_id": "b"},
        ],
    )
    assert [r["status"] for r in results] == ["placed", "placed", "edited", "cancelled"]
    a_id, b_id = results[0]["order_id"], results[1]["order_id"]
    assert (results[0]["order_tag"], results[1]["order_tag"]) == ("a", "b")
    assert results[1]["cliOrdId"] == "bee"
    assert "dateTimeReceived" in results[0]
    assert results[2]["order_id"] == a_id
    assert (results[3]["order_id"], results[3]["cliOrdId"]) == (b_id, "bee")
    assert list(acct.open_ids) == [a_id]
    assert acct.orders[a_id].limit_price == 59100


def test_a_malformed_batch_item_fails_alone_with_its_own_status() -> None:
    ex, acct = make()
    results = ex.batch(
        acct,
        [
            {"order": "send", "order_tag": "1", **o(limitPrice="59000")},
            {"order": "send", "order_tag": "2", "orderType": "lmt", "symbol": SYM, "side": "buy"},
            {"order": "send", "order_tag": "3", **o(limitPrice="59000.25")},
            {"order": "modify", "order_id": "whatever"},
            {"order": "cancel", "order_id": "not-an-order"},
            {"order": "send", "order_tag": "6", **o(limitPrice="58000")},
        ],
    )
    assert [r["status"] for r in results] == [
        "placed",
        "requiredArgumentMissing",
        "invalidPrice",
        "invalidArgument",
        "notFound",
        "placed",
    ]
    assert results[1] == {"status": "requiredArgumentMissing", "orderEvents": [], "order_tag": "2"}
    assert results[2]["order_tag"] == "3"
    assert len(acct.open_ids) == 2


def test_a_batch_send_of_a_json_number_size_works() -> None:
    ex, acct = make()
    [result] = ex.batch(
        acct,
        [
            {
                "order": "send",
                "order_tag": "1",
                "orderType": "lmt",
                "symbol": SYM,
                "side": "buy",
                "size": 0.5,
                "limitPrice": 59000,
                "reduceOnly": False,
            }
        ],
    )
    assert result["status"] == "placed"
    assert acct.orders[result["order_id"]].size == Decimal("0.5")


# ---- reads ----------------------------------------------------------------------------------------


def test_fills_are_newest_first_and_last_fill_time_keeps_those_up_to_it() -> None:
    ex, acct, t = clocked()
    ids = []
    for _ in range(3):
        ids.append(send(ex, acct, o("mkt"))["order_id"])
        t[0] += 1
    fills = ex.fills_payload(acct, None)
    assert [f["order_id"] for f in fills] == ids[::-1]
    assert [parse_iso(f["fillTime"]) for f in fills] == [T0 + 2, T0 + 1, T0]
    assert set(fills[0]) == {"fill_id", "symbol", "side", "order_id", "size", "price", "fillTime", "fillType"}
    earlier = ex.fills_payload(acct, to_iso(T0 + 1.5))
    assert [f["order_id"] for f in earlier] == [ids[1], ids[0]]
    with pytest.raises(SimError) as caught:
        ex.fills_payload(acct, "yesterday")
    assert caught.value.code == "invalidArgument"


def test_fills_carry_the_cli_ord_id_when_the_order_had_one() -> None:
    ex, acct = make()
    send(ex, acct, o("mkt", cliOrdId="buy-1"))
    assert ex.fills_payload(acct, None)[0]["cliOrdId"] == "buy-1"


def test_open_orders_are_newest_first_with_stop_fields_only_on_trigger_orders() -> None:
    ex, acct, t = clocked()
    lmt = send(ex, acct, o(limitPrice="59000"))["order_id"]
    t[0] += 1
    stp = send(ex, acct, o("stp", side="sell", stopPrice="59000", triggerSignal="index"))["order_id"]
    rows = ex.open_orders_payload(acct)
    assert [r["order_id"] for r in rows] == [stp, lmt]
    assert (rows[0]["orderType"], rows[0]["stopPrice"], rows[0]["triggerSignal"]) == ("stop", 59000, "spot")
    assert "stopPrice" not in rows[1] and "triggerSignal" not in rows[1]
    assert rows[1]["status"] == "untouched"


def test_orders_status_reports_open_orders_and_closed_ones_only_within_the_retention() -> None:
    ex, acct, t = clocked()
    resting = send(ex, acct, o(limitPrice="59000", cliOrdId="r"))["order_id"]
    trigger = send(ex, acct, o("stp", side="sell", stopPrice="59000"))["order_id"]
    doomed = send(ex, acct, o(limitPrice="58000"))["order_id"]
    filled = send(ex, acct, o("mkt"))["order_id"]
    ex.cancel_order(acct, {"order_id": doomed})
    everything = [resting, trigger, doomed, filled, "no-such-order"]

    rows = {r["order"]["orderId"]: r for r in ex.order_status_payload(acct, everything, [])}
    assert set(rows) == {resting, trigger, doomed, filled}
    assert (rows[resting]["status"], rows[resting]["updateReason"]) == ("ENTERED_BOOK", "NEW_USER_ORDER")
    assert rows[resting]["order"]["type"] == "ORDER"
    assert rows[trigger]["status"] == "TRIGGER_PLACED"
    assert rows[trigger]["order"]["type"] == "TRIGGER_ORDER"
    assert rows[trigger]["order"]["priceTriggerOptions"] == {
        "triggerPrice": 59000,
        "triggerSide": "TRIGGER_BELOW",
        "triggerSignal": "MARK_PRICE",
    }
    assert (rows[doomed]["status"], rows[doomed]["updateReason"]) == ("CANCELLED", "CANCELLED_BY_USER")
    assert (rows[filled]["status"], rows[filled]["updateReason"]) == ("FULLY_EXECUTED", "FULL_FILL")

    t[0] += ex.status_retention_s - 0.1
    assert len(ex.order_status_payload(acct, everything, [])) == 4
    t[0] += 0.2
    remaining = ex.order_status_payload(acct, everything, [])
    assert {r["order"]["orderId"] for r in remaining} == {resting, trigger}
    assert [r["order"]["orderId"] for r in ex.order_status_payload(acct, [], ["r"])] == [resting]


def test_status_retention_is_configurable() -> None:
    ex, acct, t = clocked(status_retention_s=60)
    doomed = send(ex, acct, o(limitPrice="58000"))["order_id"]
    ex.cancel_order(acct, {"order_id": doomed})
    t[0] += 30
    assert len(ex.order_status_payload(acct, [doomed], [])) == 1


# ---- the dead man's switch ------------------------------------------------------------------------


def test_arm_switch_answers_current_and_trigger_time_and_zero_turns_it_off() -> None:
    ex, acct, _ = clocked()
    answer = ex.arm_switch(acct, 60)
    assert parse_iso(answer["currentTime"]) == T0
    assert parse_iso(answer["triggerTime"]) == T0 + 60
    assert acct.switch_trigger_at == T0 + 60
    off = ex.arm_switch(acct, 0)
    assert off == {"currentTime": to_iso(T0), "triggerTime": "0"}
    assert acct.switch_trigger_at is None


def test_arm_switch_uses_the_exchange_clock_with_its_offset() -> None:
    ex, acct, _ = clocked()
    ex.clock_offset_s = 120
    answer = ex.arm_switch(acct, 60)
    assert parse_iso(answer["currentTime"]) == T0 + 120
    assert parse_iso(answer["triggerTime"]) == T0 + 180


def test_fire_switch_cancels_every_open_order_trigger_orders_too_and_stays_off() -> None:
    ex, acct, _ = clocked()
    ex.arm_switch(acct, 60)
    send(ex, acct, o("mkt"))  # a position, which the switch leaves alone
    ids = [
        send(ex, acct, o(limitPrice="59000"))["order_id"],
        send(ex, acct, o("stp", side="sell", stopPrice="59000", reduceOnly="true"))["order_id"],
        send(ex, acct, o("take_profit", side="sell", stopPrice="62000", reduceOnly="true"))["order_id"],
        send(
            ex,
            acct,
            o(
                "trailing_stop",
                side="sell",
                trailingStopMaxDeviation="5",
                trailingStopDeviationUnit="PERCENT",
            ),
        )["order_id"],
        send(ex, acct, {**o(limitPrice="2900"), "symbol": "PF_ETHUSD"})["order_id"],
    ]
    assert ex.fire_switch(acct) == len(ids)
    assert acct.open_ids == {}
    for row in ex.order_status_payload(acct, ids, []):
        assert (row["status"], row["updateReason"]) == ("CANCELLED", "DEAD_MAN_SWITCH")
    assert acct.switch_trigger_at is None
    assert acct.switch_fired == 1
    assert position(acct) == 1
    move(ex, "50000")  # the cancelled stops do not come back
    assert position(acct) == 1
