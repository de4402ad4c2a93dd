"""Per-bot modes and the per-bot kill (issue 12) against the simulator on loopback: a bot's own mode,
the stricter of it and the account's applying; the kill of one bot cancels exactly the orders it placed
(the stream knows who placed what) and follows its requests in flight by cliOrdId, leaving other bots'
orders alone; both persisted across a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guardian.account import Mode
from guardian.errors import ExchangeError
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from tests.daemon import wait_for
from tests.test_exposure import MKT, below, bot, exchange, guarded, limit_buy, open_orders, refused
from tests.test_trips import admin, events

__all__ = ["exchange"]  # the fixture

LIMITS = {"max_position": 100}


def orders_of(exchange: Simulator) -> set[str]:
    return {o.order_id for o in exchange.exchange.accounts["main"].open_orders()}


async def test_a_bot_kill_cancels_exactly_its_orders_and_halts_only_it(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, **LIMITS) as service, bot(service, 0) as b0, bot(service, 1) as b1:
        price = below(exchange)
        mine = {(await b0.send_order(**limit_buy(price - i)))["sendStatus"]["order_id"] for i in range(3)}
        theirs = {(await b1.send_order(**limit_buy(price - i)))["sendStatus"]["order_id"] for i in range(2)}
        status, answer = await admin(service, "/guardian/kill", {"account": "main", "bot": "bot-0"})
        assert status == 200, answer
        assert set(answer["cancelled"]) == mine and answer["failed"] == [] and answer["others_left"] == 2
        assert (answer["bot"], answer["mode"], answer["previous"]) == ("bot-0", "halted", "active")
        assert orders_of(exchange) == theirs  # the other bot's orders untouched
        account = service.accounts[0]
        assert account.mode is Mode.ACTIVE and account.mode_for("bot-0") is Mode.HALTED
        message = await refused(exchange, b0, limit_buy(price), "tradingHalted")
        assert "bot 'bot-0' is halted" in message
        await b1.send_order(**limit_buy(price))  # the other bot trades on
        await b0.cancel_order(order_id=sorted(theirs)[0])  # a halted bot may still cancel
        [kill] = await events(service, "admin_kill")
        assert kill["bot"] == "bot-0" and set(kill["cancelled"]) == mine
    async with guarded(exchange, tmp_path, **LIMITS) as again:  # a restart: the bot's halt persisted
        account = again.accounts[0]
        assert account.mode_for("bot-0") is Mode.HALTED and account.mode_for("bot-1") is Mode.ACTIVE
        state = again.state_json()["accounts"][0]  # type: ignore[index]
        assert [(b["name"], b["mode"]) for b in state["bots"]] == [("bot-0", "halted"), ("bot-1", "active")]
        async with bot(again, 0) as b0:
            await refused(exchange, b0, MKT, "tradingHalted")
            status, answer = await admin(
                again, "/guardian/mode", {"account": "main", "bot": "bot-0", "mode": "active"}
            )
            assert (status, answer["previous"], answer["mode"]) == (200, "halted", "active")
            await b0.send_order(**MKT)


async def test_the_stricter_of_the_account_and_the_bot_mode_applies(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, **LIMITS) as service, bot(service, 0) as b0, bot(service, 1) as b1:
        await b0.send_order(**MKT)
        status, _ = await admin(
            service, "/guardian/mode", {"account": "main", "bot": "bot-1", "mode": "reduce_only"}
        )
        assert status == 200
        message = await refused(exchange, b1, MKT, "reduceOnlyMode")
        assert "bot 'bot-1' is reduce_only" in message
        await b1.send_order(**{**MKT, "side": "sell", "reduceOnly": True})
        await b0.send_order(**MKT)
        await admin(service, "/guardian/mode", {"account": "main", "mode": "halted"})
        await refused(exchange, b0, MKT, "tradingHalted")  # the account's halt covers every bot
        await refused(exchange, b1, {**MKT, "side": "sell", "reduceOnly": True}, "tradingHalted")
        status, answer = await admin(
            service, "/guardian/mode", {"account": "main", "bot": "nobody", "mode": "active"}
        )
        assert status == 400 and "bot must be one of account main's: bot-0, bot-1" in answer["message"]


async def test_a_bot_kill_follows_its_unknown_outcomes_by_cliordid_not_cancelling_everything(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, **LIMITS) as service, bot(service, 0) as b0, bot(service, 1) as b1:
        theirs = (await b1.send_order(**limit_buy(below(exchange))))["sendStatus"]["order_id"]
        # The exchange places bot-0's order 3 s after it arrives: after guardian's 2 s upstream timeout.
        exchange.faults.add(Fault("sendorder", "latency", latency_s=3.0, times=1))
        in_flight = asyncio.create_task(b0.send_order(**limit_buy(below(exchange, 3)), cliOrdId="late-one"))
        await asyncio.sleep(0.3)
        status, answer = await admin(service, "/guardian/kill", {"account": "main", "bot": "bot-0"})
        assert status == 200 and answer["in_flight"] == 1
        with pytest.raises(ExchangeError) as caught:
            await in_flight
        assert caught.value.http_status == 504  # outcome unknown
        await wait_for(lambda: service.halts.pending == 0, 10.0, "the follow-ups")
        follow_ups = await events(service, "kill_follow_up")
    assert orders_of(exchange) == {theirs}  # bot-0's late order cancelled by name, bot-1's left
    assert exchange.requests_for("cancelallorders") == []
    assert [(f["action"], f.get("cliOrdId")) for f in follow_ups] == [("cancelorder", "late-one")] * 2
    assert open_orders(exchange) == 1
