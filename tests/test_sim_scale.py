"""The simulator's running figures (guardian.sim.book) held equal to the plain computation over the whole
book, with hypothesis, and the opt-in wide instrument set.

After random sequences of sends of every type, edits, cancels, batches, leverage changes and mark moves
that fill resting orders and fire trigger orders (on two accounts and two symbols, with and without a
finite book, which makes the order of fills matter):

- every running figure equals the plain computation from every open order (the margin sums per account
  and symbol, the best resting price per account, symbol and side, the latest order per cliOrdId), and
  the self-fill, duplicate-cliOrdId and crossing decisions equal the plain walks over every order;
- a twin exchange that decides by those plain walks (the simulator's code before the figures existed)
  gives the same answers, the same stream events in the same order and the same state.

Deterministic: derandomized, no example database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from unittest import mock

import aiohttp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian.cli import build_parser
from guardian.sim import feeds
from guardian.sim.app import Simulator
from guardian.sim.exchange import LIMIT_PRICED, Account, Exchange, Order
from guardian.sim.market import (
    DEFAULT_INSTRUMENTS,
    INSTRUMENT_SETS,
    LINEAR_PERPETUALS,
    WIDE_INSTRUMENTS,
    Market,
)
from tests.conftest import TRADE_KEY, sim_keys

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
SYMBOLS = ("PF_XBTUSD", "PF_ETHUSD")
ACCOUNTS = ("a", "b")
CLI_IDS = ("c0", "c1", "c2")
STEP = {"PF_XBTUSD": Decimal(2), "PF_ETHUSD": Decimal("0.4")}  # the price grid the examples use
LOT = {"PF_XBTUSD": Decimal("0.1"), "PF_ETHUSD": Decimal(1)}
ZERO = Decimal(0)


# ---- the plain computations: a walk over every order, as the simulator did before the figures -----------
def plain_margin(
    ex: Exchange, acct: Account, symbol: str | None = None, margin_account: str = "flex"
) -> Decimal:
    return sum(
        (
            ex.margin_needed(acct, o)
            for o in acct.open_orders()
            if not o.reduce_only
            and (
                o.symbol == symbol
                if symbol is not None
                else ex.instrument(o.symbol).margin_account == margin_account
            )
        ),
        ZERO,
    )


def plain_self_fill(acct: Account, order: Order) -> bool:
    if order.order_type not in LIMIT_PRICED or order.limit_price is None:
        return False
    for other in acct.open_orders():
        if other.symbol != order.symbol or other.side == order.side or other.is_trigger:
            continue
        if other.limit_price is None:
            continue
        if order.side == "buy" and order.limit_price >= other.limit_price:
            return True
        if order.side == "sell" and order.limit_price <= other.limit_price:
            return True
    return False


def plain_find(acct: Account, cli_ord_id: str) -> Order | None:
    for oid in reversed(acct.orders):
        if acct.orders[oid].cli_ord_id == cli_ord_id:
            return acct.orders[oid]
    return None


def plain_due(ex: Exchange, order: Order) -> bool:
    """Whether a price move's visit may act on `order` at the current prices."""
    if not order.is_trigger:
        return ex._crosses(order)
    if order.order_type == "trailing_stop":
        return True  # its level follows the price: every move visits it
    price = ex.market.quotes[order.symbol].signal(order.trigger_signal)
    assert order.stop_price is not None
    rises = (order.order_type == "stp") == (order.side == "buy")
    return price >= order.stop_price if rises else price <= order.stop_price


class PlainAccount(Account):
    def find(self, order_id: str | None, cli_ord_id: str | None) -> Order | None:
        if order_id:
            return self.orders.get(order_id)
        return plain_find(self, cli_ord_id) if cli_ord_id else None


class PlainExchange(Exchange):
    """The twin: every decision the running figures serve, made by walking every order."""

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            self.accounts[name] = PlainAccount(name, index=len(self.accounts))
        return self.accounts[name]

    @staticmethod
    def _cli_ord_id_open(acct: Account, cli_ord_id: str) -> bool:
        return any(o.cli_ord_id == cli_ord_id for o in acct.open_orders())

    def _self_fill(self, acct: Account, order: Order) -> bool:
        return plain_self_fill(acct, order)

    def orders_margin(
        self, acct: Account, symbol: str | None = None, margin_account: str = "flex"
    ) -> Decimal:
        return plain_margin(self, acct, symbol, margin_account)

    def on_prices(self) -> None:
        for acct in self.accounts.values():
            for order in acct.open_orders():
                if order.state == "open":
                    self._visit(acct, order)
        self._flush()


# ---- the figures against the plain computations -------------------------------------------------------
def check_figures(ex: Exchange) -> None:
    quotes = ex.market.quotes
    walk = [o for acct in ex.accounts.values() for o in acct.open_orders()]
    assert len(ex.book) == len(walk)
    # The orders a price move visits, in the order a walk over every order visits them.
    assert [r.order.order_id for _, r in sorted(ex.book.due(quotes))] == [
        o.order_id for o in walk if plain_due(ex, o)
    ]
    for acct in ex.accounts.values():
        expected: dict[str, tuple[Decimal, Decimal, int]] = {}
        for o in acct.open_orders():
            if not o.reduce_only:
                notional, unpriced, count = expected.get(o.symbol, (ZERO, ZERO, 0))
                if o.limit_price:
                    notional += o.unfilled * o.limit_price
                else:
                    unpriced += o.unfilled
                expected[o.symbol] = (notional, unpriced, count + 1)
        held = {s: (e.notional, e.unpriced, e.orders) for s, e in ex.book.exposure(acct).items()}
        assert held == expected
        assert ex.orders_margin(acct) == plain_margin(ex, acct)
        for symbol in SYMBOLS:
            assert ex.orders_margin(acct, symbol) == plain_margin(ex, acct, symbol)
            for side in ("buy", "sell"):
                prices = [
                    o.limit_price
                    for o in acct.open_orders()
                    if o.symbol == symbol and o.side == side and not o.is_trigger and o.limit_price
                ]
                best = (max if side == "buy" else min)(prices) if prices else None
                assert ex.book.best_limit(acct, symbol, side) == best
            # Self-fill decisions for new orders at, just inside and just outside every resting price.
            tick = STEP[symbol] / 4
            probes = {o.limit_price for o in acct.open_orders() if o.symbol == symbol and o.limit_price}
            for price in {p + d for p in probes for d in (-tick, ZERO, tick)}:
                for side in ("buy", "sell"):
                    probe = Order("probe", None, symbol, side, "lmt", LOT[symbol], price, None, False, 0)
                    assert ex._self_fill(acct, probe) == plain_self_fill(acct, probe)
        for cli in CLI_IDS:
            assert acct.find(None, cli) is plain_find(acct, cli)
            assert ex._cli_ord_id_open(acct, cli) == any(o.cli_ord_id == cli for o in acct.open_orders())
        assert set(acct.by_cli) <= {o.cli_ord_id for o in acct.orders.values()}


# ---- random sequences ---------------------------------------------------------------------------------
ORDER_TYPES = ("lmt", "lmt", "lmt", "post", "ioc", "fok", "mkt", "stp", "take_profit", "trailing_stop")
sends = st.tuples(
    st.just("send"),
    st.sampled_from(ACCOUNTS),
    st.sampled_from(SYMBOLS),
    st.sampled_from(("buy", "sell")),
    st.sampled_from(ORDER_TYPES),
    st.integers(-5, 5),  # limit or stop price: steps from the mark
    st.integers(1, 30),  # size in lots
    st.sampled_from((None, *CLI_IDS)),
    st.booleans() | st.just(False),  # reduce-only (less often)
    st.sampled_from(("mark", "index", "last", "spot")),
    st.integers(-4, 4) | st.none(),  # a trigger order's limit price, steps from its stop; None: none
)
picks = st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 40), st.booleans())  # an order, by cli?
edits = st.tuples(
    st.just("edit"),
    picks,
    st.integers(1, 30) | st.none(),  # size
    st.integers(-8, 8) | st.none(),  # limit price
    st.integers(-8, 8) | st.none(),  # stop price
    st.sampled_from((None, "0.5", "1")),  # trailing deviation
)
cancels = st.tuples(st.just("cancel"), picks)
cancel_alls = st.tuples(st.just("cancel_all"), st.sampled_from(ACCOUNTS), st.sampled_from((None, *SYMBOLS)))
moves = st.tuples(st.just("move"), st.sampled_from(SYMBOLS), st.integers(-25, 25))
leverages = st.tuples(
    st.just("leverage"),
    st.sampled_from(ACCOUNTS),
    st.sampled_from(SYMBOLS),
    st.sampled_from((None, 1, 2, 5, 10, 25)),
)
batch_items = st.one_of(sends, edits, cancels)
batches = st.tuples(
    st.just("batch"), st.sampled_from(ACCOUNTS), st.lists(batch_items, min_size=1, max_size=4)
)
# Mostly sends and moves, so that books build up and prices run through them.
WEIGHTED = (sends,) * 5 + (moves,) * 3 + (edits, edits, cancels, batches, leverages, cancel_alls)
steps = st.lists(st.sampled_from(WEIGHTED).flatmap(lambda step: step), min_size=5, max_size=50)
exchanges = st.fixed_dictionaries(
    {
        "book_depth": st.sampled_from((None, Decimal(1), Decimal(3))),
        "book_levels": st.just(3),
        "max_orders_kept": st.sampled_from((6, 50_000)),
        "max_open_orders": st.just(12),
        "maker_fee": st.sampled_from((ZERO, Decimal("0.0002"))),
        "taker_fee": st.sampled_from((ZERO, Decimal("0.0005"))),
    }
)


def price(ex: Exchange, symbol: str, steps: int) -> str:
    return str(ex.market.quotes[symbol].mark + STEP[symbol] * steps)


def send_fields(ex: Exchange, step: tuple[Any, ...]) -> dict[str, Any]:
    _, _, symbol, side, order_type, offset, lots, cli, reduce_only, signal, limit_off = step
    fields: dict[str, Any] = {
        "orderType": order_type,
        "symbol": symbol,
        "side": side,
        "size": str(LOT[symbol] * lots),
        "triggerSignal": signal,
    }
    if order_type in ("lmt", "post", "ioc", "fok"):
        fields["limitPrice"] = price(ex, symbol, offset)
    elif order_type in ("stp", "take_profit"):
        fields["stopPrice"] = price(ex, symbol, offset)
        if limit_off is not None:
            fields["limitPrice"] = price(ex, symbol, offset + limit_off)
    elif order_type == "trailing_stop":
        percent = offset % 2 == 0
        fields["trailingStopMaxDeviation"] = "0.1" if percent else str(STEP[symbol] * abs(offset))
        fields["trailingStopDeviationUnit"] = "PERCENT" if percent else "QUOTE_CURRENCY"
        if limit_off is not None:
            fields["limitPrice"] = price(ex, symbol, limit_off)
    if cli is not None:
        fields["cliOrdId"] = cli
    if reduce_only:
        fields["reduceOnly"] = "true"
    return fields


def target(acct: Account, pick: tuple[str, int, bool]) -> dict[str, str]:
    """The order a step names: by id (the n-th kept, or one that does not exist) or by cliOrdId."""
    _, n, by_cli = pick
    kept = list(acct.orders.values())
    if by_cli:
        return {"cliOrdId": CLI_IDS[n % len(CLI_IDS)]}
    return {"order_id": kept[n % len(kept)].order_id if kept else "no-such-order"}


def edit_fields(ex: Exchange, acct: Account, step: tuple[Any, ...]) -> dict[str, str]:
    _, pick, lots, limit_off, stop_off, deviation = step
    named = target(acct, pick)
    fields = {"orderId": named["order_id"]} if "order_id" in named else dict(named)
    order = acct.find(named.get("order_id"), named.get("cliOrdId"))
    symbol = order.symbol if order is not None else SYMBOLS[0]
    if lots is not None:
        fields["size"] = str(LOT[symbol] * lots)
        fields["qtyMode"] = "ABSOLUTE"
    if limit_off is not None:
        fields["limitPrice"] = price(ex, symbol, limit_off)
    if stop_off is not None:
        fields["stopPrice"] = price(ex, symbol, stop_off)
    if deviation is not None:
        fields["trailingStopMaxDeviation"] = deviation
    return fields


def batch_item(ex: Exchange, acct: Account, step: tuple[Any, ...], n: int) -> dict[str, Any]:
    if step[0] == "send":
        return {"order": "send", "order_tag": str(n), **send_fields(ex, step)}
    if step[0] == "edit":
        fields = edit_fields(ex, acct, step)
        return {"order": "edit", "order_id": fields.pop("orderId", None), **fields}
    return {"order": "cancel", **target(acct, step[1])}


def run(ex: Exchange, step: tuple[Any, ...]) -> Any:
    kind = step[0]
    if kind == "send":
        return ex.send_order(ex.account(step[1]), send_fields(ex, step))
    if kind == "edit":
        acct = ex.account(step[1][0])
        return ex.edit_order(acct, edit_fields(ex, acct, step))
    if kind == "cancel":
        acct = ex.account(step[1][0])
        return ex.cancel_order(acct, target(acct, step[1]))
    if kind == "cancel_all":
        return ex.cancel_all(ex.account(step[1]), step[2])
    if kind == "move":
        symbol = step[1]
        instrument = ex.market.instrument(symbol)
        assert instrument is not None
        ex.market.set_mark(symbol, instrument.initial_price + STEP[symbol] * step[2])
        ex.on_prices()
        return None
    if kind == "leverage":
        acct, symbol, leverage = ex.account(step[1]), step[2], step[3]
        if leverage is None:
            acct.leverage.pop(symbol, None)
        else:
            acct.leverage[symbol] = Decimal(leverage)
        return None
    acct = ex.account(step[1])
    return ex.batch(acct, [batch_item(ex, acct, item, n) for n, item in enumerate(step[2])])


def state(ex: Exchange) -> dict[str, Any]:
    return {
        name: (
            ex.open_orders_payload(acct),
            ex.accounts_payload(acct),
            ex.open_positions_payload(acct),
            feeds.position_rows(ex, acct),
            [
                (o.order_id, o.state, o.size, o.filled, o.limit_price, o.stop_price)
                for o in acct.orders.values()
            ],
        )
        for name, acct in ex.accounts.items()
    }


class Ids:
    """uuid4 as a counter, so that both twins name their orders and fills alike."""

    def __init__(self) -> None:
        self.issued = 0

    def __call__(self) -> uuid.UUID:
        self.issued += 1
        return uuid.UUID(int=self.issued)


@contextmanager
def counted_ids() -> Iterator[Ids]:
    ids = Ids()
    with mock.patch.object(uuid, "uuid4", ids):
        yield ids


UNLIMITED = {
    "book_depth": None,
    "book_levels": 3,
    "max_orders_kept": 50_000,
    "max_open_orders": 12,
    "maker_fee": ZERO,
    "taker_fee": ZERO,
}
# A resting limit fills as the mark moves through it, at its own price, and that last price reaches stops
# and take-profits on the last price: those further along the walk fire in the same move, one earlier in
# it on the next call.
FURTHER_ALONG = [
    ("send", "a", SYMBOLS[0], "buy", "lmt", 2, 10, None, False, "mark", None),
    ("send", "b", SYMBOLS[0], "buy", "stp", 1, 10, None, False, "last", None),
    ("send", "b", SYMBOLS[0], "buy", "lmt", 2, 10, None, False, "mark", None),
    ("send", "a", SYMBOLS[0], "sell", "take_profit", 1, 10, None, False, "last", None),
    ("move", SYMBOLS[0], -2),
]
EARLIER = [
    ("move", SYMBOLS[0], 0),
    ("send", "b", SYMBOLS[0], "sell", "lmt", -2, 10, None, False, "mark", None),
    ("send", "a", SYMBOLS[0], "sell", "stp", -1, 10, None, False, "last", None),
    ("move", SYMBOLS[0], 2),
    ("send", "b", SYMBOLS[1], "buy", "lmt", -3, 1, None, False, "mark", None),
]
# In one move the last price rises through a stop's level (a resting buy fills), falls back (a sell stop
# fires) and rises through it again (a buy take-profit fires): the stop is visited once (with a finite
# book a second visit would fill it further, at its limit price).
UP_DOWN_UP = [
    ("send", "a", SYMBOLS[0], "buy", "lmt", 2, 10, None, False, "mark", None),
    ("send", "a", SYMBOLS[0], "sell", "stp", -1, 10, None, False, "mark", None),
    ("send", "a", SYMBOLS[0], "buy", "take_profit", -1, 1, None, False, "mark", None),
    ("send", "b", SYMBOLS[0], "buy", "stp", 1, 30, None, False, "last", 4),
    ("move", SYMBOLS[0], -1),
]


# Beyond `max_orders_kept` the oldest closed orders are dropped, and with them what cliOrdId finds.
DROPPED = [
    ("send", "a", SYMBOLS[0], "buy", "ioc", 4, 1, "c0", False, "mark", None),
    *(("send", "a", SYMBOLS[0], "buy", "lmt", -k, 1, None, False, "mark", None) for k in range(1, 7)),
    ("cancel", ("a", 0, True)),
    ("send", "a", SYMBOLS[0], "sell", "lmt", 5, 1, "c0", False, "mark", None),
]


@SETTINGS
@example(UNLIMITED, FURTHER_ALONG + EARLIER)
@example({**UNLIMITED, "book_depth": Decimal(1)}, UP_DOWN_UP)
@example({**UNLIMITED, "max_orders_kept": 6}, DROPPED)
@given(exchanges, steps)
def test_running_figures_equal_the_plain_computation_and_the_twin_that_walks_every_order(
    config: dict[str, Any], sequence: list[tuple[Any, ...]]
) -> None:
    now = [1_700_000_000.0]
    fast = Exchange(Market(seed=1), clock=lambda: now[0], **config)
    twin = PlainExchange(Market(seed=1), clock=lambda: now[0], **config)
    streams = []
    for ex in (fast, twin):
        for name in ACCOUNTS:
            ex.account(name)
        stream = ex.bus.subscribe(maxsize=1_000_000)
        stream.accounts.update(ACCOUNTS)
        stream.public = True
        streams.append(stream)
    with counted_ids() as ids:
        for step in sequence:
            now[0] += 0.25
            before = ids.issued
            answer = run(fast, step)
            issued, ids.issued = ids.issued, before
            assert run(twin, step) == answer, step
            assert ids.issued == issued
            events = [[(e.seq, e.topic, e.account, e.data) for e in s._items] for s in streams]  # type: ignore[attr-defined]
            assert events[0] == events[1], step
            for s in streams:
                s._items.clear()
            assert state(fast) == state(twin), step
            check_figures(fast)


def test_a_fill_that_moves_the_last_price_fires_a_later_stop_on_it_in_the_same_move() -> None:
    """Account a's resting buy fills when the mark falls, at a last price that account b's stop (on the
    last price) watches for: b's stop fires in the same move, as a walk over every order would fire it."""
    ex = Exchange(Market(seed=1))
    a, b = ex.account("a"), ex.account("b")
    buy = ex.send_order(
        a, {"orderType": "lmt", "symbol": SYMBOLS[0], "side": "buy", "size": "1", "limitPrice": "59900"}
    )
    stop = ex.send_order(
        b,
        {
            "orderType": "stp",
            "symbol": SYMBOLS[0],
            "side": "sell",
            "size": "1",
            "stopPrice": "59950",
            "triggerSignal": "last",
        },
    )
    ex.market.set_mark(SYMBOLS[0], Decimal(59890))  # the bid is now below 59900: a's buy crosses
    assert ex.market.quotes[SYMBOLS[0]].last == 59890 and ex.market.quotes[SYMBOLS[0]].bid < 59900
    ex.market.quotes[SYMBOLS[0]].last = Decimal(60000)  # the last trade was higher: b's stop is not due
    assert [r.order.order_id for _, r in ex.book.due(ex.market.quotes)] == [buy["order_id"]]
    ex.on_prices()
    assert a.orders[buy["order_id"]].state == "filled"
    assert b.orders[stop["order_id"]].triggered  # the fill at 59900 reached its level


def test_a_leverage_without_a_finite_reciprocal_rounds_once_per_symbol() -> None:
    """At 3x the margin of several orders is their notional over 3, rounded once (the plain sum of the
    per-order margins rounds once per order): the two agree to far more digits than any answer shows."""
    ex = Exchange(Market(seed=1))
    acct = ex.account("a")
    acct.leverage[SYMBOLS[0]] = Decimal(3)
    for limit in ("59000", "59000.5", "58999.5"):
        ex.send_order(
            acct,
            {"orderType": "lmt", "symbol": SYMBOLS[0], "side": "buy", "size": "0.7", "limitPrice": limit},
        )
    assert abs(ex.orders_margin(acct) - plain_margin(ex, acct)) < Decimal("1e-20")
    assert float(ex.orders_margin(acct)) == float(plain_margin(ex, acct))


# ---- the wide instrument set --------------------------------------------------------------------------
def test_the_wide_set_is_24_linear_perpetuals_starting_with_the_default_three() -> None:
    assert len(WIDE_INSTRUMENTS) >= 24
    assert WIDE_INSTRUMENTS[: len(LINEAR_PERPETUALS)] == LINEAR_PERPETUALS
    assert DEFAULT_INSTRUMENTS[: len(LINEAR_PERPETUALS)] == LINEAR_PERPETUALS
    assert INSTRUMENT_SETS == {"default": DEFAULT_INSTRUMENTS, "wide": WIDE_INSTRUMENTS}
    symbols = [i.symbol for i in WIDE_INSTRUMENTS]
    assert len(set(symbols)) == len(symbols)
    for inst in WIDE_INSTRUMENTS:
        assert inst.symbol == f"PF_{inst.base}USD" and inst.quote == "USD"
        assert inst.price_on_tick(inst.initial_price)
        assert inst.initial_price / inst.tick_size >= 1000  # a spread of 0.02% is a few ticks at most
        assert 1 / Decimal(inst.max_leverage) * inst.max_leverage == 1
    market = Market(instruments=WIDE_INSTRUMENTS, seed=1)
    assert all(market.instrument(s) is i for s, i in zip(symbols, WIDE_INSTRUMENTS, strict=True))
    assert market.instrument("PF_NOPEUSD") is None
    for _ in range(200):
        market.step()
    for inst in WIDE_INSTRUMENTS:
        quote = market.quotes[inst.symbol]
        assert quote.bid < quote.ask and inst.price_on_tick(quote.bid) and inst.price_on_tick(quote.ask)
        assert abs(quote.mark - inst.initial_price) <= inst.initial_price * Decimal("0.2") + inst.tick_size


def test_guardian_sim_takes_the_instrument_set_and_defaults_to_the_three() -> None:
    parser = build_parser()
    assert parser.parse_args(["sim"]).instruments == "default"
    assert parser.parse_args(["sim", "--instruments", "wide"]).instruments == "wide"


async def test_every_instrument_of_the_wide_set_is_listed_quoted_traded_and_streamed() -> None:
    simulator = Simulator(sim_keys(), market=Market(instruments=WIDE_INSTRUMENTS, seed=7), tick_s=None)
    await simulator.start("127.0.0.1", 0)
    symbols = [i.symbol for i in WIDE_INSTRUMENTS]
    try:
        async with aiohttp.ClientSession() as http:
            api = simulator.url + "/derivatives/api/v3/"
            async with http.get(api + "instruments") as response:
                listed = (await response.json())["instruments"]
            assert [i["symbol"] for i in listed] == symbols
            async with http.get(api + "tickers") as response:
                tickers = (await response.json())["tickers"]
            assert [t["symbol"] for t in tickers] == symbols
            async with http.get(api + "tickers/PF_AAVEUSD") as response:
                assert (await response.json())["ticker"]["symbol"] == "PF_AAVEUSD"
            async with http.ws_connect(simulator.ws_url) as ws:
                assert (await ws.receive_json())["event"] == "info"
                await ws.send_json({"event": "subscribe", "feed": "ticker", "product_ids": symbols})
                assert (await ws.receive_json())["event"] == "subscribed"
                rows = [await ws.receive_json() for _ in symbols]
                assert sorted(r["product_id"] for r in rows) == sorted(symbols)
        simulator.step(5)  # the walk moves every instrument; resting orders in any of them react
        acct = simulator.exchange.accounts[simulator.keys[TRADE_KEY].account]
        for inst in WIDE_INSTRUMENTS:
            quote = simulator.exchange.market.quotes[inst.symbol]
            lot = str(Decimal(1).scaleb(-inst.size_precision))
            answer = simulator.exchange.send_order(
                acct,
                {
                    "orderType": "lmt",
                    "symbol": inst.symbol,
                    "side": "buy",
                    "size": lot,
                    "limitPrice": str(quote.bid),
                },
            )
            assert answer["status"] == "placed", (inst.symbol, answer)
        assert len(acct.open_ids) == len(WIDE_INSTRUMENTS)
    finally:
        await simulator.close()
