"""The latched trips (issue 12) against the simulator on loopback: a burst of fills halts the account and
cancels its orders with the kill's mechanism; the daily loss limit trips at the configured figure (checked
against the simulator's own PnL after a mark move) into `on_loss_limit`; both survive a restart (the
journal's modes) and are lifted only by POST /guardian/mode, which the journal and the log record."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.account import Mode
from guardian.config import LossAction
from guardian.gateway.exposure import daily_pnl
from guardian.journal import read_journal
from guardian.service import Service
from guardian.sim.app import Simulator
from tests.daemon import wait_for
from tests.test_exposure import (
    ADMIN,
    MKT,
    SYMBOL,
    below,
    bot,
    exchange,
    guarded,
    limit_buy,
    open_orders,
    refused,
    sent,
    shown,
)

__all__ = ["exchange"]  # the fixture


async def admin(service: Service, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http, http.post(service.url + path, json=doc, headers=headers) as r:
        return r.status, await r.json()


async def events(service: Service, kind: str) -> list[dict[str, Any]]:
    await service.journal.flush()
    rows = read_journal(service.config.journal.path, limit=100_000)
    return [r["detail"] for r in rows if r.get("type") == "event" and r["kind"] == kind]


def simulator_pnl(exchange: Simulator) -> Decimal:
    """The simulator's own figure: realised minus fees (all today: the account is fresh) plus unrealised."""
    acct = exchange.exchange.accounts["main"]
    return acct.realized_pnl - acct.fees + exchange.exchange.unrealized(acct)


# ---- the fill burst -------------------------------------------------------------------------------------


async def test_a_burst_of_fills_halts_the_account_cancels_its_orders_and_survives_a_restart(
    exchange: Simulator, tmp_path: Path
) -> None:
    limits = {"max_position": 100, "max_fills_per_minute": 5}
    async with guarded(exchange, tmp_path, **limits) as service:
        async with bot(service, 0) as b0, bot(service, 1) as b1:
            resting = await b1.send_order(**limit_buy(below(exchange, 3)))
            for _ in range(5):
                await b0.send_order(**MKT)
            account = service.accounts[0]
            await wait_for(lambda: account.trip is not None, 3.0, "the trip")
            assert account.mode is Mode.HALTED and account.trip is not None
            assert account.trip.limit == "max_fills_per_minute"
            await wait_for(lambda: open_orders(exchange) == 0, 3.0, "the resting order cancelled")
            await refused(exchange, b0, MKT, "tradingHalted")
            # Another bot can still cancel (nothing left to cancel: the exchange says so).
            await b1.cancel_order(order_id=resting["sendStatus"]["order_id"])
            await wait_for(lambda: service.trips._tasks == set(), 3.0, "the trip's journal writes")
        trip = await events(service, "limit_trip")
        assert [(t["limit"], t["mode"], t["cancel"]) for t in trip] == [
            ("max_fills_per_minute", "halted", "done")
        ]
        modes = await events(service, "mode_changed")
        assert modes[-1]["by"] == "max_fills_per_minute" and "5 fills within 60 s" in modes[-1]["reason"]
    async with guarded(exchange, tmp_path, **limits) as again:  # the same journal: a restart
        account = again.accounts[0]
        assert account.mode is Mode.HALTED and account.trip is not None
        assert account.trip.limit == "max_fills_per_minute"
        async with bot(again) as b:
            await refused(exchange, b, MKT, "tradingHalted")
            status, answer = await admin(again, "/guardian/mode", {"account": "main", "mode": "active"})
            assert status == 200 and answer["lifted"]["limit"] == "max_fills_per_minute"
            assert account.trip is None and account.mode is Mode.ACTIVE
            before = sent(exchange)
            await b.send_order(**MKT)  # the count starts again from the lift
            assert sent(exchange) == before + 1 and account.trip is None
        lifted = (await events(again, "mode_changed"))[-1]
        assert lifted["by"] == "admin" and "lifts the max_fills_per_minute trip" in lifted["reason"]


# ---- the daily loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["reduce_only", "halted_and_cancel"])
async def test_the_loss_limit_trips_at_the_configured_figure_into_on_loss_limit(
    exchange: Simulator, tmp_path: Path, action: str
) -> None:
    limits = {"max_position": 100, "max_daily_loss": 300.0, "on_loss_limit": LossAction(action)}
    async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
        account = service.accounts[0]
        await b.send_order(**{**MKT, "size": 2})
        resting = await b.send_order(**limit_buy(below(exchange, 5)))
        await shown(service, orders=1, pos=Decimal(2))
        entry = exchange.exchange.accounts["main"].positions[SYMBOL].price
        # A loss of 298 (2 contracts, 149 down): not yet.
        exchange.exchange.market.set_mark(SYMBOL, entry - 149)
        exchange.exchange.on_prices()
        await wait_for(lambda: daily_pnl(service.streams[0].view()) == simulator_pnl(exchange), 3.0, "pnl")
        assert simulator_pnl(exchange) == -298
        await asyncio.sleep(0.5)
        assert account.trip is None and account.mode is Mode.ACTIVE
        # 300 at the simulator's own figure: at the limit, tripped.
        exchange.exchange.market.set_mark(SYMBOL, entry - 150)
        exchange.exchange.on_prices()
        await wait_for(lambda: account.trip is not None, 3.0, "the loss trip")
        assert simulator_pnl(exchange) == -300 == daily_pnl(service.streams[0].view())
        assert account.trip is not None and account.trip.limit == "max_daily_loss"
        if action == "reduce_only":
            assert account.mode is Mode.REDUCE_ONLY
            await refused(exchange, b, limit_buy(below(exchange, 5)), "reduceOnlyMode")
            assert open_orders(exchange) == 1  # reduce_only cancels nothing
            await b.cancel_order(order_id=resting["sendStatus"]["order_id"])
        else:
            assert account.mode is Mode.HALTED
            await wait_for(lambda: open_orders(exchange) == 0, 3.0, "the resting order cancelled")
            await refused(exchange, b, limit_buy(below(exchange, 5)), "tradingHalted")
        # Lifted by a person while the loss is still past the limit: the mode is theirs, but new risk is
        # still refused at the order (dailyLossLimitReached); reduce-only orders pass.
        status, answer = await admin(service, "/guardian/mode", {"account": "main", "mode": "active"})
        assert status == 200 and answer["lifted"]["limit"] == "max_daily_loss"
        message = await refused(exchange, b, limit_buy(below(exchange, 5)), "dailyLossLimitReached")
        assert "max_daily_loss 300" in message
        await asyncio.sleep(0.5)
        assert account.trip is None  # not tripped again the same day while still past the limit
        await b.send_order(**{**MKT, "side": "sell", "size": 2, "reduceOnly": True})
    async with guarded(exchange, tmp_path, **limits) as again:
        assert again.accounts[0].trip is None and again.accounts[0].mode is Mode.ACTIVE  # the lift persisted


async def test_a_loss_trip_survives_a_restart_and_stays_in_its_mode(
    exchange: Simulator, tmp_path: Path
) -> None:
    limits = {"max_position": 100, "max_daily_loss": 100.0}
    async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
        await b.send_order(**MKT)
        entry = exchange.exchange.accounts["main"].positions[SYMBOL].price
        exchange.exchange.market.set_mark(SYMBOL, entry - 200)
        exchange.exchange.on_prices()
        await wait_for(lambda: service.accounts[0].trip is not None, 3.0, "the loss trip")
        await b.send_order(**{**MKT, "side": "sell", "reduceOnly": True})  # flat again, realised
    async with guarded(exchange, tmp_path, **limits) as again:
        account = again.accounts[0]
        assert account.mode is Mode.REDUCE_ONLY and account.trip is not None
        assert account.trip.limit == "max_daily_loss" and "reached -100" in account.trip.reason
        state = again.state_json()["accounts"][0]  # type: ignore[index]
        assert state["trip"]["limit"] == "max_daily_loss"


async def test_a_loss_trip_stays_latched_across_midnight_and_the_new_day_starts_at_zero(
    exchange: Simulator, tmp_path: Path
) -> None:
    limits = {"max_position": 100, "max_daily_loss": 100.0}
    async with guarded(exchange, tmp_path, **limits) as service, bot(service) as b:
        account, stream = service.accounts[0], service.streams[0]
        await b.send_order(**MKT)
        entry = exchange.exchange.accounts["main"].positions[SYMBOL].price
        exchange.exchange.market.set_mark(SYMBOL, entry - 200)
        exchange.exchange.on_prices()
        await wait_for(lambda: account.trip is not None, 3.0, "the loss trip")
        await b.send_order(**{**MKT, "side": "sell", "reduceOnly": True})  # flat, the loss realised
        await wait_for(lambda: daily_pnl(stream.view()) <= -200, 3.0, "the realised loss")
        yesterday = stream.view().day
        # 00:00:30 UTC the next day, for the account state and the trips alike.
        shift = (time.time() // 86_400 + 1) * 86_400 + 30 - time.time()
        stream.state._clock = service.trips._clock = lambda: time.time() + shift
        await wait_for(lambda: stream.view().day != yesterday, 3.0, "the new day, without a fill")
        assert daily_pnl(stream.view()) == 0
        await asyncio.sleep(0.6)  # a few of the daemon's checks on the new day
        assert account.trip is not None and account.trip.limit == "max_daily_loss"
        assert account.mode is Mode.REDUCE_ONLY
        await refused(exchange, b, MKT, "reduceOnlyMode")
        # Only a person lifts it; today's PnL is 0, so new risk passes again.
        status, answer = await admin(service, "/guardian/mode", {"account": "main", "mode": "active"})
        assert status == 200 and answer["lifted"]["limit"] == "max_daily_loss"
        before = sent(exchange)
        await b.send_order(**MKT)
        assert sent(exchange) == before + 1 and account.trip is None
