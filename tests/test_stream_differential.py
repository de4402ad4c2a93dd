"""The differential test of the account state (issue 11): three bots trade at random through guardian on
the simulator for a minute (resting and crossing orders, partial fills against a thin book, fees,
cancels, edits, price moves, and one dead man's switch expiry). Every couple of seconds the bots pause;
within 1 s of each pause guardian's positions, open orders and balances must equal the simulator's own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardian.config import ClientConfig, GuardConfig, StreamConfig, SwitchConfig
from guardian.errors import ExchangeError
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.sim.ws import StreamSettings
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, serving, wait_for

RUN_S = 60.0
ACTIVE_S = 1.5
SYMBOLS = {"PF_XBTUSD": (Decimal("60000"), Decimal("0.5")), "PF_ETHUSD": (Decimal("3000"), Decimal("0.1"))}
BOTS = [
    ClientConfig(
        f"bot-{i}",
        f"differential-bot-key-{i:02d}",
        ApiSecret(base64.b64encode(f"differential bot {i} local secret!!".encode()[:32]).decode()),
        frozenset({Permission.READ, Permission.TRADE}),
    )
    for i in range(3)
]


def sim_picture(exchange: Simulator) -> dict[str, Any]:
    acct = exchange.exchange.accounts["main"]
    flex = exchange.exchange.accounts_payload(acct)["flex"]
    return {
        "positions": {s: float(p.size) for s, p in acct.positions.items() if p.size},
        "orders": {o.order_id: float(o.unfilled) for o in acct.open_orders()},
        "available_margin": round(float(flex["availableMargin"]), 6),
        "portfolio_value": round(float(flex["portfolioValue"]), 6),
    }


def guardian_picture(service: Service) -> dict[str, Any]:
    view = service.streams[0].view()
    balances = view.balances
    return {
        "positions": {s: float(p.size) for s, p in view.positions.items()},
        "orders": {i: float(o.remaining) for i, o in view.orders.items()},
        "available_margin": None
        if balances.available_margin is None
        else round(float(balances.available_margin), 6),
        "portfolio_value": None
        if balances.portfolio_value is None
        else round(float(balances.portfolio_value), 6),
    }


async def trade(client: KrakenClient, rng: random.Random, until: float, mine: list[str]) -> int:
    """One bot's random actions until `until` (monotonic); the number of requests it made."""
    made = 0
    while time.monotonic() < until:
        symbol = rng.choice(sorted(SYMBOLS))
        mark, tick = SYMBOLS[symbol]
        side = rng.choice(["buy", "sell"])
        ticks = rng.randint(-6, 12)  # negative: crossing the book, positive: resting away from it
        price = mark - ticks * tick if side == "buy" else mark + ticks * tick
        action = rng.random()
        try:
            if action < 0.45 or not mine:
                answer = await client.send_order(
                    orderType="lmt", symbol=symbol, side=side, size=rng.randint(1, 4), limitPrice=price
                )
                if answer["sendStatus"].get("order_id"):
                    mine.append(answer["sendStatus"]["order_id"])
            elif action < 0.6:
                await client.send_order(orderType="mkt", symbol=symbol, side=side, size=rng.randint(1, 3))
            elif action < 0.8:
                order_id = mine.pop(rng.randrange(len(mine)))
                await client.cancel_order(order_id=order_id)
            else:
                order_id = rng.choice(mine)
                await client.edit_order(orderId=order_id, size=rng.randint(1, 5))
        except ExchangeError:
            pass  # a refusal (an edit of a filled order, margin) is part of trading
        made += 1
        await asyncio.sleep(rng.uniform(0.01, 0.08))
    return made


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_guardians_picture_equals_the_exchanges_at_every_quiet_look(tmp_path: Path) -> None:
    rng = random.Random(11)
    stream = StreamSettings(heartbeat_s=0.5, ticker_s=0.5)
    async with running_sim(
        budget_capacity=1_000_000,
        stream=stream,
        book_depth=Decimal("3"),
        maker_fee=Decimal("0.0002"),
        taker_fee=Decimal("0.0005"),
    ) as exchange:
        account = account_config(
            exchange.url,
            switch=SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=4, min_remaining_s=1.0),
            guard=GuardConfig(mark_poll_s=0.5, rate_budget=1_000_000, upstream_timeout_s=3.0),
            clients=tuple(BOTS),
            stream=StreamConfig(link_timeout_s=3.0, reconcile_s=5.0, state_max_age_s=3.0),
        )
        async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
            await wait_for(
                lambda: service.accounts[0].switch.state is SwitchState.ARMED and service.streams[0].link.up,
                timeout_s=10,
                what="ready",
            )
            clients = [
                KrakenClient(service.url, Credentials(b.api_key, b.api_secret), timeout_s=5) for b in BOTS
            ]
            for client in clients:
                await client.start()
            books: list[list[str]] = [[] for _ in BOTS]
            looks, mismatches, expired, requests = 0, [], False, 0
            try:
                ends = time.monotonic() + RUN_S
                while time.monotonic() < ends:
                    until = time.monotonic() + ACTIVE_S
                    made = await asyncio.gather(
                        *(
                            trade(c, random.Random(rng.random()), until, books[i])
                            for i, c in enumerate(clients)
                        )
                    )
                    requests += sum(made)
                    if rng.random() < 0.5:
                        exchange.step(rng.randint(1, 3))  # prices move: resting orders may fill
                    if not expired and time.monotonic() > ends - RUN_S / 2:
                        # Once, halfway: the switch runs out (refreshes hang) and the exchange cancels all.
                        expired = True
                        exchange.faults.add(Fault("cancelallordersafter", "hang"))
                        await wait_for(
                            lambda: exchange.exchange.accounts["main"].switch_fired > 0, 10, "expiry"
                        )
                        exchange.faults.clear()
                        exchange.release_hangs()
                        await wait_for(lambda: service.accounts[0].switch.allows_new_risk(), 10, "re-armed")
                        for book in books:
                            book.clear()
                    # Quiet: within 1 s guardian's picture equals the exchange's.
                    looks += 1
                    with contextlib.suppress(AssertionError):
                        await wait_for(
                            lambda: guardian_picture(service) == sim_picture(exchange),
                            1.0,
                            "the same picture",
                        )
                    if guardian_picture(service) != sim_picture(exchange):
                        mismatches.append((looks, guardian_picture(service), sim_picture(exchange)))
            finally:
                for client in clients:
                    await client.close()
            view = service.streams[0].view()
            drift = dict(service.streams[0].drift_total)
    assert expired and looks >= 15 and requests >= 300, (expired, looks, requests)
    assert mismatches == [], mismatches[:3]
    assert view.fills_today > 20  # it traded: crossing orders, market orders and price moves filled
    assert drift == {}, drift  # the stream alone kept it right: reconciliation found nothing to fix
