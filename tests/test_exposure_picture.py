"""The exposure guard's shortcuts hold what the plain computation would (issue 12's CPU budget).

`Picture.of` works a new state view out from the last picture (only the orders that changed, only their
symbols' notional entries); `Picture.build` works it out from nothing. `Notional` prices the open orders
by bisection; the plain sum prices each order at the higher of its price and the mark. Hypothesis drives
an `AccountState` through random order, cancel, position and owner changes (Kraken-shaped messages) and
holds the shortcuts equal to the plain answers after every step."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.gateway import exposure
from guardian.gateway.refusal import Refusal
from guardian.stream.state import AccountState

SYMBOLS = ("PF_AUSD", "PF_BUSD", "PF_CUSD")
PRICES = st.one_of(st.none(), st.sampled_from([Decimal(p) for p in ("95", "99.5", "100", "100.5", "105")]))
STEP = st.one_of(
    st.tuples(
        st.just("order"),
        st.integers(0, 11),  # which order (a new one, or a change of one already open)
        st.sampled_from(SYMBOLS),
        st.integers(0, 1),  # direction
        st.sampled_from(["0.5", "1", "2", "3.25"]),
        PRICES,
        st.booleans(),  # reduce-only
        st.booleans(),  # with a cliOrdId
    ),
    st.tuples(st.just("cancel"), st.integers(0, 11)),
    st.tuples(st.just("position"), st.sampled_from(SYMBOLS), st.sampled_from(["0", "-2", "1.5", "4"])),
    st.tuples(st.just("owner"), st.integers(0, 11), st.sampled_from(["bot-a", "bot-b"])),
)
GROSS = next(rule for rule in exposure.RULES if rule.name == "max_gross_notional")
MARKS = st.dictionaries(
    st.sampled_from(SYMBOLS), st.one_of(st.none(), PRICES.filter(lambda p: p is not None))
)


def plain_notional(picture: exposure.Picture, marks: dict[str, Decimal | None]) -> Decimal | None:
    """Every order not reduce-only at the higher of its price and the mark; None where one has neither."""
    total = Decimal(0)
    for w in picture.shown.values():
        if w.reduce_only:
            continue
        prices = [p for p in (w.price, marks.get(w.symbol)) if p is not None]
        if not prices:
            return None
        total += w.remaining * max(prices)
    return total


def same(a: exposure.Picture, b: exposure.Picture) -> None:
    assert a.shown == b.shown
    assert a.order_id_of == b.order_id_of
    assert a.unowned == b.unowned
    assert {s: dict(g) for s, g in a.groups.items()} == {s: dict(g) for s, g in b.groups.items()}
    assert a.positions == b.positions and a.symbols == b.symbols
    assert a.notional.count == b.notional.count == len(a.shown)
    assert sorted(a.notional.positions) == sorted(b.notional.positions)
    for symbol in {*a.parts, *b.parts}:
        unpriced_a, prices_a, sizes_a, values_a = a.parts[symbol]
        unpriced_b, prices_b, sizes_b, values_b = b.parts[symbol]
        assert (unpriced_a, prices_a, sizes_a[-1], values_a[-1]) == (
            unpriced_b,
            prices_b,
            sizes_b[-1],
            values_b[-1],
        )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(steps=st.lists(STEP, min_size=1, max_size=40), marks=MARKS)
def test_the_picture_worked_out_from_the_last_one_equals_the_one_made_from_nothing(
    steps: list[tuple[Any, ...]], marks: dict[str, Decimal | None]
) -> None:
    state = AccountState()
    state.apply({"feed": "open_orders_snapshot", "orders": []})
    owners: dict[str, str] = {}

    def owner(order_id: str | None, cli: str | None) -> str | None:
        return owners.get(order_id or "") or owners.get(cli or "")

    picture = exposure.Picture.of(state.view(), owner, None)
    for step in steps:
        kind = step[0]
        if kind == "order":
            _, n, symbol, direction, qty, price, reduce_only, cli = step
            raw: dict[str, Any] = {
                "instrument": symbol,
                "order_id": f"o{n}",
                "qty": qty,
                "filled": 0,
                "direction": direction,
                "limit_price": None if price is None else float(price),
                "stop_price": 0.0,
                "type": "limit" if price is not None else "stop",
                "reduce_only": reduce_only,
            }
            if cli:
                raw["cli_ord_id"] = f"c{n}"
            state.apply({"feed": "open_orders", "order": raw, "is_cancel": False, "reason": "new_placed"})
        elif kind == "cancel":
            state.apply({"feed": "open_orders", "order_id": f"o{step[1]}", "is_cancel": True, "reason": "x"})
        elif kind == "position":
            _, symbol, size = step
            state.apply(
                {"feed": "open_positions", "positions": [{"instrument": symbol, "balance": float(size)}]}
            )
        else:
            owners[f"o{step[1]}"] = step[2]
        picture = exposure.Picture.of(state.view(), owner, picture)
        fresh = exposure.Picture.build(state.view(), owner)
        same(picture, fresh)
        view = exposure.Exposure(
            positions=picture.positions,
            working=tuple(picture.shown.values()),
            marks=marks,
            daily_pnl=None,
            notional=picture.notional,
        )
        expected = plain_notional(picture, marks)
        if expected is None:
            continue  # an order with neither price nor mark: both refuse (tested below)
        assert picture.notional.total(view) == expected


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    orders=st.lists(
        st.tuples(st.sampled_from(SYMBOLS), PRICES, st.sampled_from(["1", "2.5"]), st.booleans()), max_size=12
    ),
    marks=MARKS,
    edit=st.one_of(st.none(), st.integers(0, 11)),
    extra=st.booleans(),
)
def test_the_gross_notional_with_the_shortcut_equals_the_plain_pass(
    orders: list[tuple[str, Decimal | None, str, bool]],
    marks: dict[str, Decimal | None],
    edit: int | None,
    extra: bool,
) -> None:
    """With and without `Notional`, an edit's order left out, a held order beyond what it covers, and
    the same refusal where an order has neither a price nor a mark."""
    working = [
        exposure.Working(symbol, "buy", Decimal(size), reduce_only, price, None, f"o{i}")
        for i, (symbol, price, size, reduce_only) in enumerate(orders)
    ]
    parts: dict[str, list[exposure.Working]] = {}
    for w in working:
        parts.setdefault(w.symbol, []).append(w)
    notional = exposure.Notional(
        len(working), {s: exposure.Notional.part(ws) for s, ws in parts.items()}, ((SYMBOLS[0], Decimal(2)),)
    )
    held = (
        [exposure.Working(SYMBOLS[1], "sell", Decimal(3), False, Decimal(101), "bot-a", "h")] if extra else []
    )
    view = exposure.Exposure(
        positions={SYMBOLS[0]: (Decimal(-2), Decimal(1))},
        working=(*working, *held),
        marks={**marks, SYMBOLS[0]: Decimal(100)},
        daily_pnl=None,
        notional=notional,
    )
    candidate = exposure.Candidate(
        SYMBOLS[2],
        "buy",
        Decimal(1),
        False,
        Decimal(100),
        "bot-a",
        replaces=None if edit is None else f"o{edit}",
    )
    outcomes = []
    for shortcut in (view, dataclasses.replace(view, notional=None)):
        try:
            outcomes.append(GROSS.figure(shortcut, candidate))
        except Refusal as refusal:
            outcomes.append(refusal.code)
    assert outcomes[0] == outcomes[1]


def test_the_duplicate_memory_is_kept_only_while_the_rule_is_on_and_readers_do_not_wipe_it() -> None:
    from guardian.config import GuardConfig
    from guardian.stream.state import StateView

    now = [100.0]
    book = exposure.Book(clock=lambda: now[0])
    limits = exposure.Limits(GuardConfig(duplicate_window_s=2.0))

    def send(window_s: float, cli: str) -> None:
        view = book.exposure(
            StateView(),
            marks=lambda _: None,
            owner=lambda _o, _c: None,
            reconciles=0,
            bot="b",
            window_s=window_s,
        )
        order = exposure.Candidate(
            SYMBOLS[0], "buy", Decimal(1), False, Decimal(1), "b", content=(1,), cli_ord_id=cli
        )
        book.answered(book.judge(view, [(0, order)], limits, fresh=True), [(None, False)], 0)

    for n in range(1_000):  # the rule off (window 0): nothing remembered, however many orders
        send(0.0, f"off-{n}")
    assert sum(len(d) for d in book._recent.values()) == 0
    send(2.0, "on-1")
    book.exposure(
        StateView(), marks=lambda _: None, owner=lambda _o, _c: None, reconciles=0, bot="b"
    )  # a reader
    with pytest.raises(Refusal) as refused:
        send(2.0, "on-2")
    assert refused.value.code == "duplicateOrder"
    now[0] += 2.5  # past the window: forgotten
    send(2.0, "on-3")
    assert len(book._recent["b"]) == 1
