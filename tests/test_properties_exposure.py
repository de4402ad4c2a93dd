"""The exposure limits as a property (issue 12): three bots send random orders, edits and cancels at once
while the market fills what rests (hypothesis, derandomized, a seeded simulator with frozen prices moved
by the test). At every step the simulator's own position and open-order count stay within the limits
(sampled every millisecond while requests are in flight), and at every quiet moment guardian refuses a
new order exactly when the worst case counted from the simulator's own book would break a limit: no
false refusals beyond the worst-case count."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.errors import ExchangeError
from guardian.kraken.client import KrakenClient
from guardian.service import Service
from guardian.sim.app import Simulator
from tests.test_exposure import SYMBOL, bot, client, exchange, guarded

__all__ = ["exchange"]  # the fixture

MAX_POSITION, MAX_OPEN_TOTAL = 4, 5
BOTS = 3
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one daemon for every example, on purpose
)
ACTION = st.one_of(
    st.tuples(
        st.just("send"),
        st.integers(0, BOTS - 1),
        st.sampled_from(["buy", "sell"]),
        st.sampled_from(["lmt", "mkt"]),
        st.integers(1, 3),
        st.booleans(),  # reduce-only
    ),
    st.tuples(st.just("cancel"), st.integers(0, BOTS - 1), st.integers(0, 9)),
    st.tuples(st.just("edit"), st.integers(0, BOTS - 1), st.integers(0, 9), st.integers(1, 3)),
    st.tuples(st.just("fill"), st.sampled_from(["buy", "sell"])),
)
STEPS = st.lists(st.lists(ACTION, min_size=1, max_size=4), min_size=1, max_size=6)


class World:
    """The daemon, its bots' clients, and the simulator's own book."""

    def __init__(self, exchange: Simulator, service: Service, bots: list[KrakenClient]) -> None:
        self.exchange, self.service, self.bots = exchange, service, bots
        self.mark = exchange.exchange.market.quotes[SYMBOL].mark
        self.placed: dict[int, list[str]] = {i: [] for i in range(BOTS)}
        self.breaches: list[str] = []

    def position(self) -> Decimal:
        found = self.exchange.exchange.accounts["main"].positions.get(SYMBOL)
        return Decimal(0) if found is None else Decimal(found.size)

    def orders(self) -> list[Any]:
        return self.exchange.exchange.accounts["main"].open_orders()

    def look(self) -> None:
        position, count = self.position(), len(self.orders())
        if abs(position) > MAX_POSITION or count > MAX_OPEN_TOTAL:
            self.breaches.append(f"position {position}, open orders {count}")

    async def sample(self, done: asyncio.Event) -> None:
        """Look at the simulator's book every millisecond until `done`."""
        while not done.is_set():
            self.look()
            await asyncio.sleep(0.001)

    async def act(self, action: tuple[Any, ...]) -> None:
        kind, who = action[0], action[1]
        b = self.bots[who] if isinstance(who, int) else None
        try:
            if kind == "send" and b is not None:
                _, _, side, order_type, size, reduce_only = action
                fields: dict[str, Any] = {
                    "orderType": order_type,
                    "symbol": SYMBOL,
                    "side": side,
                    "size": size,
                }
                if order_type == "lmt":  # rests until the market is moved through it
                    away = Decimal("0.98") if side == "buy" else Decimal("1.02")
                    fields["limitPrice"] = float(round(self.mark * away))
                if reduce_only:
                    fields["reduceOnly"] = True
                answer = await b.send_order(**fields)
                order_id = answer["sendStatus"].get("order_id")
                if order_id:
                    self.placed[who].append(order_id)
            elif kind == "cancel" and b is not None and self.placed[who]:
                order_id = self.placed[who][action[2] % len(self.placed[who])]
                await b.cancel_order(order_id=order_id)
            elif kind == "edit" and b is not None and self.placed[who]:
                order_id = self.placed[who][action[2] % len(self.placed[who])]
                await b.request("editorder", {"orderId": order_id, "size": action[3]})
        except ExchangeError:
            pass  # refusals are judged at the quiet moments below
        if kind == "fill":  # the market moves through the resting orders of one side, and back
            market = self.exchange.exchange
            move = Decimal("0.97") if who == "buy" else Decimal("1.03")
            market.market.set_mark(SYMBOL, round(self.mark * move))
            market.on_prices()
            market.market.set_mark(SYMBOL, self.mark)
            market.on_prices()

    async def quiet(self) -> None:
        """Until guardian's picture equals the simulator's and nothing is held any more."""
        account = self.service.accounts[0]

        def caught_up() -> bool:
            view = self.service.streams[0].view()
            shown = view.positions[SYMBOL].size if SYMBOL in view.positions else Decimal(0)
            ids = {o.order_id for o in self.orders()}
            self.service.exposure_book(account)  # holds settled by reconciliations end when next looked at
            return shown == self.position() and set(view.orders) == ids and len(account.exposure) == 0

        for _ in range(300):
            if caught_up():
                return
            await asyncio.sleep(0.01)
        view = self.service.streams[0].view()
        raise AssertionError(
            f"not quiet: holds {list(account.exposure.held())}, shown orders {dict(view.orders)}, "
            f"position {view.positions}; the simulator's {[o.view() for o in self.orders()]}, {self.position()}"
        )

    def worst(self, side: str) -> Decimal:
        same = sum(
            (
                Decimal(o.size) - Decimal(o.filled)
                for o in self.orders()
                if o.side == side and not o.reduce_only
            ),
            Decimal(0),
        )
        return self.position() + same if side == "buy" else -(self.position() - same)

    async def probe(self) -> None:
        """A 1-lot resting order on each side: refused exactly when the worst case breaks a limit."""
        for side in ("buy", "sell"):
            too_many = len(self.orders()) + 1 > MAX_OPEN_TOTAL
            too_far = self.worst(side) + 1 > MAX_POSITION
            away = Decimal("0.98") if side == "buy" else Decimal("1.02")
            fields = {"orderType": "lmt", "symbol": SYMBOL, "side": side, "size": 1}
            fields["limitPrice"] = float(round(self.mark * away))
            refusal: ExchangeError | None = None
            try:
                answer = await self.bots[0].send_order(**fields)
            except ExchangeError as exc:
                refusal = exc
            if refusal is not None:
                expected = {"positionLimitExceeded", "openOrdersLimitExceeded"}
                assert refusal.code in expected and (too_far or too_many), (side, refusal, self.worst(side))
                continue
            assert not (too_far or too_many), (side, "let through beyond the worst case", self.worst(side))
            await self.bots[0].cancel_order(order_id=answer["sendStatus"]["order_id"])
            await self.quiet()

    async def reset(self) -> None:
        await self.bots[0].cancel_all_orders()
        position = self.position()
        if position:
            side = "sell" if position > 0 else "buy"
            await self.bots[0].send_order(
                orderType="mkt", symbol=SYMBOL, side=side, size=int(abs(position)), reduceOnly=True
            )
        self.placed = {i: [] for i in range(BOTS)}
        await self.quiet()


@pytest.fixture
async def world(exchange: Simulator, tmp_path: Path) -> AsyncIterator[World]:
    limits = {"max_position": MAX_POSITION, "max_open_orders_total": MAX_OPEN_TOTAL}
    bots = tuple(client(i) for i in range(BOTS))
    async with (
        guarded(exchange, tmp_path, clients=bots, **limits) as service,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [await stack.enter_async_context(bot(service, i)) for i in range(BOTS)]
        yield World(exchange, service, clients)


@SETTINGS
@given(steps=STEPS)
async def test_concurrent_bots_stay_within_the_limits_and_are_refused_only_beyond_the_worst_case(
    world: World, steps: list[list[tuple[Any, ...]]]
) -> None:
    await world.reset()
    for step in steps:
        done = asyncio.Event()
        sampler = asyncio.create_task(world.sample(done))
        await asyncio.gather(*(world.act(action) for action in step))
        done.set()
        await sampler
        world.look()
        assert world.breaches == [], world.breaches
        await world.quiet()
        await world.probe()
