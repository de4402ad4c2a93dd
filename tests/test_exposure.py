"""The exposure guard (issue 12) against the simulator's REST and ws/v1 on loopback, with real signatures:
each limit refuses with its code and the refused order never reaches the exchange; concurrent orders never
jointly overshoot; holds are released when the exchange rejects, cancels or fills; a stale account state
refuses new risk and lets cancels through."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from guardian.config import ClientConfig, GuardConfig, StreamConfig, SwitchConfig
from guardian.demo import start_demo
from guardian.errors import ExchangeError
from guardian.gateway.refusal import CODES
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission, endpoint
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.sim.ws import StreamSettings
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, get_json, scrape, serving, wait_for

ADMIN = "admin-token-for-the-exposure-tests"
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
STREAM = StreamConfig(link_timeout_s=2.0, reconcile_s=30.0, state_max_age_s=2.0)
BASE = GuardConfig(mark_poll_s=0.2, rate_budget=20_000, upstream_timeout_s=2.0)
SYMBOL = "PF_XBTUSD"
MKT = {"orderType": "mkt", "symbol": SYMBOL, "side": "buy", "size": 1}


def bot_key(i: int) -> tuple[str, str]:
    return f"exposure-bot-key-{i:02d}", base64.b64encode(
        f"exposure bot {i:02d} secret, 32 bytes".encode()
    ).decode()


def client(i: int, **limits: Any) -> ClientConfig:
    key, secret = bot_key(i)
    return ClientConfig(
        f"bot-{i}", key, ApiSecret(secret), frozenset({Permission.READ, Permission.TRADE}), **limits
    )


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    async with running_sim(
        budget_capacity=100_000, stream=StreamSettings(heartbeat_s=0.5, ticker_s=0.2)
    ) as sim:
        yield sim


@contextlib.asynccontextmanager
async def guarded(
    exchange: Simulator, tmp_path: Path, *, clients: tuple[ClientConfig, ...] | None = None, **limits: Any
) -> AsyncIterator[Service]:
    guard = GuardConfig(**{**_fields(BASE), **limits})
    account = account_config(
        exchange.url, switch=SWITCH, guard=guard, clients=clients or (client(0), client(1)), stream=STREAM
    )
    async with serving(account, journal=tmp_path / "journal.sqlite3", admin_token=ADMIN) as service:
        await wait_for(
            lambda: (
                service.accounts[0].switch.state is SwitchState.ARMED
                and service.streams[0].link.up
                and service.accounts[0].marks.mark(SYMBOL) is not None
            ),
            timeout_s=10,
            what="switch armed, link up, a mark",
        )
        yield service


def _fields(guard: GuardConfig) -> dict[str, Any]:
    return {f.name: getattr(guard, f.name) for f in dataclasses.fields(guard) if f.init}


@contextlib.asynccontextmanager
async def bot(service: Service, i: int = 0) -> AsyncIterator[KrakenClient]:
    key, secret = bot_key(i)
    async with KrakenClient(service.url, Credentials(key, ApiSecret(secret)), timeout_s=5) as found:
        yield found


async def refused(exchange: Simulator, b: KrakenClient, params: dict[str, Any], code: str) -> str:
    """Send `params` as a sendorder; it must be refused with `code` (and its status) and never reach the
    exchange. The message, which says the limit, the figure and what would pass."""
    before = sent(exchange)
    raw = await b.send(endpoint("sendorder"), body=urlencode(params))
    doc = json.loads(raw.body)
    assert (raw.status, doc["result"], doc["error"]) == (CODES[code], "error", code), doc
    assert sent(exchange) == before, "a refused order reached the exchange"
    message: str = doc["message"]
    return message


def sent(exchange: Simulator) -> int:
    """sendorder, editorder and batchorder requests that reached the exchange."""
    return sum(len(exchange.requests_for(name)) for name in ("sendorder", "editorder", "batchorder"))


def position(exchange: Simulator) -> Decimal:
    found = exchange.exchange.accounts["main"].positions.get(SYMBOL)
    return Decimal(0) if found is None else Decimal(found.size)


def open_orders(exchange: Simulator) -> int:
    return len(exchange.exchange.accounts["main"].open_orders())


def limit_buy(price: float, **extra: Any) -> dict[str, Any]:
    return {"orderType": "lmt", "symbol": SYMBOL, "side": "buy", "size": 1, "limitPrice": price, **extra}


def below(exchange: Simulator, pct: float = 2.0) -> float:
    """A buy limit price that rests: `pct` below the mark."""
    mark = exchange.exchange.market.quotes[SYMBOL].mark
    return float(round(mark * Decimal(1 - pct / 100)))


async def shown(service: Service, orders: int | None = None, pos: Decimal | None = None) -> None:
    def seen() -> bool:
        view = service.streams[0].view()
        size = view.positions[SYMBOL].size if SYMBOL in view.positions else Decimal(0)
        return (orders is None or len(view.orders) == orders) and (pos is None or size == pos)

    await wait_for(seen, 3.0, f"the stream to show {orders} orders, position {pos}")


# ---- max_position --------------------------------------------------------------------------------------


async def test_max_position_counts_the_position_and_open_orders_and_refuses_before_the_exchange(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_position=5) as service, bot(service) as b:
        await b.send_order(**{**MKT, "size": 3})
        await b.send_order(**limit_buy(below(exchange), size=2))  # rests: 3 + 2 = 5, at the limit
        error = await refused(exchange, b, MKT, "positionLimitExceeded")
        assert "max_position 5" in error and "at most 0 would pass" in error
        # The other side is not this limit's business: a sell of 4 goes out (3 long - 4 = 1 short).
        await b.send_order(**{**MKT, "side": "sell", "size": 4})
        assert position(exchange) == -1


async def test_a_reduce_only_order_is_exempt_and_may_close_a_position_larger_than_max_order_size(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_position=5, max_order_size=2) as service, bot(service) as b:
        for _ in range(2):
            await b.send_order(**{**MKT, "size": 2})
        await b.send_order(**MKT)
        await shown(service, pos=Decimal(5))
        await refused(exchange, b, {**MKT, "side": "sell", "size": 5}, "orderSizeTooLarge")
        # More than the position: the size limit applies as before.
        await refused(
            exchange, b, {**MKT, "side": "sell", "size": 6, "reduceOnly": True}, "orderSizeTooLarge"
        )
        await b.send_order(**{**MKT, "side": "sell", "size": 5, "reduceOnly": True})
        assert position(exchange) == 0


async def test_concurrent_bots_never_jointly_overshoot_max_position(
    exchange: Simulator, tmp_path: Path
) -> None:
    bots = tuple(client(i) for i in range(4))
    async with (
        guarded(exchange, tmp_path, clients=bots, max_position=5) as service,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [await stack.enter_async_context(bot(service, i)) for i in range(4)]
        price = below(exchange)
        results = await asyncio.gather(
            *(c.send_order(**limit_buy(price)) for c in clients for _ in range(5)), return_exceptions=True
        )
        codes = sorted(r.code if isinstance(r, ExchangeError) else r["sendStatus"]["status"] for r in results)
        assert codes == ["placed"] * 5 + ["positionLimitExceeded"] * 15
        assert open_orders(exchange) == 5 and sent(exchange) == 5
        # Market buys, all at once, against a flat book: the position never passes 5 either.
        await clients[0].cancel_all_orders()
        await shown(service, orders=0)
        results = await asyncio.gather(
            *(c.send_order(**MKT) for c in clients for _ in range(3)), return_exceptions=True
        )
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 5
        assert position(exchange) == 5


async def test_a_hold_is_released_when_the_exchange_rejects_cancels_or_fills(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_position=1) as service, bot(service) as b:
        ask = exchange.exchange.market.quotes[SYMBOL].ask
        # Rejected: a post-only buy at the ask would execute. Nothing held: the next order passes.
        rejected = await b.send_order(
            orderType="post", symbol=SYMBOL, side="buy", size=1, limitPrice=float(ask)
        )
        assert rejected["sendStatus"]["status"] == "postWouldExecute"
        resting = await b.send_order(**limit_buy(below(exchange)))
        await refused(exchange, b, limit_buy(below(exchange)), "positionLimitExceeded")
        # Cancelled: once the stream shows it gone, the room is back.
        await b.cancel_order(order_id=resting["sendStatus"]["order_id"])
        await shown(service, orders=0)
        await b.send_order(**MKT)  # filled: now the position holds the room
        await shown(service, orders=0, pos=Decimal(1))
        await refused(exchange, b, limit_buy(below(exchange)), "positionLimitExceeded")
        assert len(service.accounts[0].exposure) == 0  # nothing left held: the stream shows it all


# ---- open orders, gross notional -----------------------------------------------------------------------


async def test_open_order_limits_per_symbol_account_and_bot(exchange: Simulator, tmp_path: Path) -> None:
    bots = (client(0, max_open_orders=2), client(1))
    limits = {"max_position": 100, "max_open_orders": 3, "max_open_orders_total": 4}
    async with (
        guarded(exchange, tmp_path, clients=bots, **limits) as service,
        bot(service, 0) as b0,
        bot(service, 1) as b1,
    ):
        price = below(exchange)
        for _ in range(2):
            await b0.send_order(**limit_buy(price))
        error = await refused(exchange, b0, limit_buy(price), "openOrdersLimitExceeded")
        assert "bot 'bot-0'" in error
        await b1.send_order(**limit_buy(price))
        error = await refused(exchange, b1, limit_buy(price), "openOrdersLimitExceeded")
        assert "PF_XBTUSD would have 4 open orders" in error and "max_open_orders 3" in error
        await b1.send_order(orderType="lmt", symbol="PF_ETHUSD", side="buy", size=1, limitPrice=100)
        error = await refused(
            exchange,
            b1,
            {"orderType": "lmt", "symbol": "PF_ETHUSD", "side": "buy", "size": 1, "limitPrice": 100},
            "openOrdersLimitExceeded",
        )
        assert "max_open_orders_total 4" in error
        assert open_orders(exchange) == 4 and sent(exchange) == 4


async def test_max_gross_notional_counts_positions_at_the_mark_and_open_orders(
    exchange: Simulator, tmp_path: Path
) -> None:
    mark = exchange.exchange.market.quotes[SYMBOL].mark
    limit = float(mark * Decimal("2.5"))
    async with (
        guarded(exchange, tmp_path, max_position=100, max_gross_notional=limit) as service,
        bot(service) as b,
    ):
        await b.send_order(**MKT)
        await b.send_order(**limit_buy(float(mark) * 0.98))
        await shown(service, orders=1, pos=Decimal(1))
        error = await refused(exchange, b, limit_buy(float(mark) * 0.98), "exposureLimitExceeded")
        assert "max_gross_notional" in error and "at most" in error
        await b.send_order(**{**MKT, "side": "sell", "reduceOnly": True})  # reduce-only: exempt


# ---- rate, duplicates ----------------------------------------------------------------------------------


async def test_max_orders_per_minute_is_per_bot_and_cancels_are_never_throttled(
    exchange: Simulator, tmp_path: Path
) -> None:
    bots = (client(0, max_orders_per_minute=2), client(1))
    async with (
        guarded(exchange, tmp_path, clients=bots, max_position=100, max_orders_per_minute=3) as service,
        bot(service, 0) as b0,
        bot(service, 1) as b1,
    ):
        price = below(exchange)
        placed = [await b0.send_order(**limit_buy(price - i)) for i in range(2)]
        error = await refused(exchange, b0, limit_buy(price), "orderRateExceeded")
        assert "max_orders_per_minute is 2" in error
        for i in range(3):  # the other bot has the account's 3 of its own
            await b1.send_order(**limit_buy(price - 10 - i))
        await refused(exchange, b1, limit_buy(price), "orderRateExceeded")
        for order in placed:
            await b0.cancel_order(order_id=order["sendStatus"]["order_id"])
        await b1.cancel_all_orders()
        assert open_orders(exchange) == 0 and sent(exchange) == 5


async def test_the_same_order_under_a_new_cliordid_is_a_duplicate_and_a_retry_is_not(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with (
        guarded(exchange, tmp_path, max_position=100, duplicate_window_s=1.0) as service,
        bot(service, 0) as b0,
        bot(service, 1) as b1,
    ):
        order = limit_buy(below(exchange))
        first = await b0.send_order(**order, cliOrdId="dup-1")
        assert await b0.send_order(**order, cliOrdId="dup-1") == first  # a retry: the first answer
        # A person (or Prometheus) looking at the limits between the two does not wipe the bot's memory.
        async with aiohttp.ClientSession() as http:
            assert (await get_json(http, service.url + "/guardian/state"))[0] == 200
            await scrape(http, service.url)
        error = await refused(exchange, b0, {**order, "cliOrdId": "dup-2"}, "duplicateOrder")
        assert "duplicate_window_s" in error
        await refused(exchange, b0, order, "duplicateOrder")
        await b1.send_order(**order)  # another bot's: not a duplicate
        await asyncio.sleep(1.1)
        await b0.send_order(**order, cliOrdId="dup-3")  # after the window
        assert sent(exchange) == 3


async def test_a_retry_of_an_order_in_flight_or_answered_gets_its_answer_not_a_limit_refusal(
    exchange: Simulator, tmp_path: Path
) -> None:
    """The retry of an order adds no risk (it gets the first attempt's answer): it is not counted a second
    time, which would refuse it for an order that exists once, while the bot never learns it was placed."""
    async with (
        guarded(exchange, tmp_path, max_position=5) as service,
        bot(service, 0) as b0,
        bot(service, 1) as b1,
    ):
        order = {**limit_buy(below(exchange)), "size": 5, "cliOrdId": "retry-1"}
        exchange.faults.add(Fault("sendorder", "latency", latency_s=0.5, times=1))
        first = asyncio.create_task(b0.send_order(**order))
        await wait_for(lambda: len(service.accounts[0].exposure) == 1, 2.0, "the first attempt held")
        assert await b0.send_order(**order) == await first  # in flight: it waited for the first answer
        assert first.result()["sendStatus"]["status"] == "placed"
        assert await b0.send_order(**order) == first.result()  # answered: the answer again
        assert sent(exchange) == 1 and open_orders(exchange) == 1
        await refused(exchange, b1, limit_buy(below(exchange)), "positionLimitExceeded")  # counted once
        await refused(exchange, b0, {**order, "cliOrdId": "retry-2"}, "positionLimitExceeded")


async def test_a_batch_retried_while_in_flight_gets_its_answer_not_a_limit_refusal(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_position=4) as service, bot(service, 0) as b0:
        price = below(exchange)
        batch = [
            {"order": "send", "order_tag": str(i), **limit_buy(price), "size": 2, "cliOrdId": f"batch-{i}"}
            for i in (1, 2)
        ]
        exchange.faults.add(Fault("batchorder", "latency", latency_s=0.5, times=1))
        first = asyncio.create_task(b0.batch_order(batch))
        await wait_for(lambda: len(service.accounts[0].exposure) == 2, 2.0, "the first attempt held")
        assert await b0.batch_order(batch) == await first
        assert [s["status"] for s in first.result()["batchStatus"]] == ["placed"] * 2
        assert await b0.batch_order(batch) == first.result()
        assert sent(exchange) == 1 and open_orders(exchange) == 2


async def test_a_retry_sent_again_after_its_first_attempt_was_lost_is_judged_as_new_risk(
    exchange: Simulator, tmp_path: Path
) -> None:
    """A retry that waited on its first attempt is judged when that attempt turns out not to be at the
    exchange and the retry would go out in its place. The lost attempt still counts until reconciled (a
    request that hung may yet arrive), so here the retry does not fit."""
    async with guarded(exchange, tmp_path, max_position=5) as service, bot(service, 0) as b0:
        order = {**limit_buy(below(exchange)), "size": 3, "cliOrdId": "lost-1"}
        exchange.faults.add(Fault("sendorder", "hang", times=1))
        try:
            first = asyncio.create_task(b0.send_order(**order))
            await wait_for(lambda: len(service.accounts[0].exposure) == 1, 2.0, "the first attempt held")
            message = await refused(exchange, b0, order, "positionLimitExceeded")  # waits for the timeout
            assert "max_position 5" in message
            with pytest.raises(ExchangeError):
                await first  # no answer in time: its outcome is unknown
        finally:
            exchange.release_hangs()
        assert open_orders(exchange) == 0


# ---- blindness -----------------------------------------------------------------------------------------


async def test_a_stale_state_refuses_new_risk_and_lets_cancels_and_reduce_only_orders_through(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_position=5) as service, bot(service) as b:
        resting = await b.send_order(**limit_buy(below(exchange)))
        await b.send_order(**MKT)
        exchange.stream.stall()
        exchange.faults.add(Fault("openorders", "error", code="Unavailable", status=503))
        await wait_for(lambda: not service.streams[0].fresh(), 8.0, "stale")
        error = await refused(exchange, b, limit_buy(below(exchange)), "accountStateUnavailable")
        assert "stale" in error
        await b.send_order(**{**MKT, "side": "sell", "reduceOnly": True})
        await b.cancel_order(order_id=resting["sendStatus"]["order_id"])
        assert open_orders(exchange) == 0 and position(exchange) == 0
        exchange.faults.clear()
        exchange.stream.resume()
        await wait_for(lambda: service.streams[0].fresh(), 10.0, "fresh again")
        await b.send_order(**MKT)


# ---- configuration -------------------------------------------------------------------------------------


async def test_run_sim_configures_the_limits_an_account_with_bots_needs() -> None:
    demo = await start_demo("127.0.0.1", 0)
    try:
        guard = demo.config.accounts[0].guard
        assert guard.unlimited() == [] and not guard.allow_unlimited
        assert guard.max_orders_per_minute and guard.max_fills_per_minute and guard.max_open_orders_total
    finally:
        await demo.close()


# ---- what guardian shows -------------------------------------------------------------------------------


async def test_the_limits_usage_shows_in_the_state_the_metrics_and_guardian_status(
    exchange: Simulator, tmp_path: Path
) -> None:
    bots = (client(0, max_orders_per_minute=10, max_open_orders=4), client(1))
    limits = {
        "max_position": 5,
        "max_open_orders_total": 10,
        "max_daily_loss": 1000.0,
        "max_fills_per_minute": 50,
    }
    async with guarded(exchange, tmp_path, clients=bots, **limits) as service, bot(service) as b:
        await b.send_order(**{**MKT, "size": 3})
        await b.send_order(**limit_buy(below(exchange)))
        await shown(service, orders=1, pos=Decimal(3))
        state = service.state_json()["accounts"][0]  # type: ignore[index]
        found = {(u["name"], u.get("symbol")): (u["used"], u["limit"], u["ratio"]) for u in state["limits"]}
        assert found[("max_position", SYMBOL)] == (4.0, 5.0, 0.8)
        assert found[("max_open_orders_total", None)] == (1.0, 10.0, 0.1)
        assert found[("max_fills_per_minute", None)] == (1.0, 50.0, 0.02)
        assert found[("max_daily_loss", None)][1] == 1000.0
        assert state["daily_pnl"] is not None
        [bot0, bot1] = state["bots"]
        assert bot0["mode"] == "active" and bot1 == {
            "name": "bot-1",
            "mode": "active",
            "limits": [],
            "orders_last_minute": 0,
            "open_orders": 0,
            "last_refusal": None,
        }
        own = {u["name"]: (u["used"], u["limit"]) for u in bot0["limits"]}
        assert own == {"max_orders_per_minute": (2.0, 10.0), "max_open_orders": (1.0, 4.0)}
        async with aiohttp.ClientSession() as http:
            samples = await scrape(http, service.url)
        labels = frozenset({("account", "main"), ("limit", "max_position"), ("symbol", SYMBOL)})
        assert samples[("guardian_limit_usage_ratio", labels)] == 0.8
        total = frozenset({("account", "main"), ("limit", "max_open_orders_total"), ("symbol", "")})
        assert samples[("guardian_limit_usage_ratio", total)] == 0.1
        assert ("guardian_daily_pnl", frozenset({("account", "main")})) in samples
        mode = frozenset({("account", "main"), ("bot", "bot-0"), ("mode", "active")})
        assert samples[("guardian_bot_mode", mode)] == 1
        trips = frozenset({("account", "main"), ("limit", "max_daily_loss")})
        assert samples[("guardian_limit_trips_total", trips)] == 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "status", "--url", service.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert f"max_position {SYMBOL}: 4 of 5 (80 %)" in text
    assert "max_open_orders_total: 1 of 10 (10 %)" in text
    assert "bot     bot-0: active (max_orders_per_minute 2/10, max_open_orders 1/4)" in text
