"""Reload, in-process (the daemon's own objects, real sockets): a removed bot's relay session is closed while
every other one is kept; notifiers come and go; a request already past authentication finishes under the
limits it started with; the admin endpoint needs its token. The subprocess tests are in test_reload.py."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.errors import ExchangeError
from guardian.gateway import app as gateway_app
from guardian.gateway import checks
from guardian.ratelimit import TokenBucket
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import wait_for
from tests.relay_helpers import LMT, OWN, OWN_KEY, OWN_SECRET, exchange_and_guardian, rest, ws_bot
from tests.test_pushnotify import ADMIN, Receiver, admin, daemon, receiver, webhook

ADDED_KEY = "reload-added-bot-key-01"
__all__ = ["receiver"]  # the fixture, imported for these tests


async def test_a_removed_bot_loses_its_relay_session_and_its_key_while_the_others_keep_theirs(
    tmp_path: Path,
) -> None:
    async with (
        exchange_and_guardian(tmp_path) as (_, service),
        ws_bot(service) as reader,
        ws_bot(service, OWN_KEY, OWN_SECRET) as own,
    ):
        assert (await reader.subscribe("open_orders"))["event"] == "subscribed"
        assert (await own.subscribe("open_orders"))["event"] == "subscribed"
        account = service.config.accounts[0]
        kept = tuple(c for c in account.clients if c.name != "reader-bot")
        new = dataclasses.replace(service.config, accounts=(dataclasses.replace(account, clients=kept),))
        outcome = await service.reload("test", (new, "sha256:test"))
        assert outcome.ok and outcome.changed == ["accounts[main].clients[reader-bot] removed"]
        await asyncio.wait_for(reader._reader, 5)  # closed by guardian
        assert reader.ws.close_code == 1013
        assert not own.closed
        async with rest(service, OWN_KEY, OWN_SECRET) as bot:
            placed = await bot.send_order(**LMT)
        order_id = placed["sendStatus"]["order_id"]
        await own.expect(lambda m: m.get("feed") == "open_orders" and order_id in str(m))
        async with rest(service) as gone:
            with pytest.raises(ExchangeError) as caught:
                await gone.open_orders()
        assert caught.value.code == "authenticationError"
        assert service.accounts[0].switch.state is SwitchState.ARMED
        assert service.state_json()["config"]["hash"] == "sha256:test"  # type: ignore[index]


async def test_a_bot_no_longer_allowed_from_its_address_loses_its_relay_session(tmp_path: Path) -> None:
    async with (
        exchange_and_guardian(tmp_path) as (_, service),
        ws_bot(service, OWN_KEY, OWN_SECRET) as own,
        ws_bot(service) as reader,
    ):
        assert (await own.subscribe("open_orders"))["event"] == "subscribed"
        assert (await reader.subscribe("open_orders"))["event"] == "subscribed"
        account = service.config.accounts[0]
        elsewhere = (ipaddress.ip_network("10.0.0.0/8"),)
        clients = tuple(
            dataclasses.replace(c, allow_from=elsewhere) if c.name == "own-bot" else c
            for c in account.clients
        )
        new = dataclasses.replace(service.config, accounts=(dataclasses.replace(account, clients=clients),))
        assert (await service.reload("test", (new, "sha256:elsewhere"))).ok
        await asyncio.wait_for(own._reader, 5)
        assert own.ws.close_code == 1013 and not reader.closed


async def test_a_bot_added_by_a_reload_has_its_last_refusal_on_the_state(tmp_path: Path) -> None:
    """The status page's per-bot figures know the reloaded bots: a new bot's refusal shows on its row."""
    async with exchange_and_guardian(tmp_path) as (_, service):
        account = service.config.accounts[0]
        added = dataclasses.replace(OWN, name="added-bot", api_key=ADDED_KEY, extra_keys=())
        new = dataclasses.replace(
            service.config, accounts=(dataclasses.replace(account, clients=(*account.clients, added)),)
        )
        assert (await service.reload("test", (new, "sha256:added"))).ok
        async with rest(service, ADDED_KEY, OWN_SECRET) as bot:
            with pytest.raises(ExchangeError) as caught:
                await bot.send_order(**{**LMT, "orderType": "bogus"})
        state = service.state_json()
        [row] = [b for b in state["accounts"][0]["bots"] if b["name"] == "added-bot"]  # type: ignore[index]
        assert row["last_refusal"]["code"] == caught.value.code


async def test_notifiers_added_and_removed_by_a_reload(receiver: Receiver, tmp_path: Path) -> None:
    async with running_sim() as exchange, daemon(exchange.url, tmp_path) as service:
        with_hook = dataclasses.replace(service.config, notify=(webhook(receiver),))
        assert (await service.reload("test", (with_hook, "sha256:one"))).ok
        status, _ = await admin(service, "/guardian/kill", {"account": "main"})
        assert status == 200
        await wait_for(lambda: receiver.of("kill"), what="the kill told to the new notifier")
        without = dataclasses.replace(service.config, notify=())
        outcome = await service.reload("test", (without, "sha256:two"))
        assert outcome.ok and outcome.changed == ["notify"]
        assert service.pushes.channels == []
        await admin(service, "/guardian/mode", {"account": "main", "mode": "active"})
        await asyncio.sleep(0.5)
        assert receiver.of("mode_changed") == []  # nobody to tell any more
        assert len(receiver.of("kill")) == 1


async def test_post_reload_needs_the_admin_token_and_says_why_it_refuses(tmp_path: Path) -> None:
    async with running_sim() as exchange, daemon(exchange.url, tmp_path) as service:
        async with aiohttp.ClientSession() as http:
            async with http.post(service.url + "/guardian/reload") as answer:
                assert answer.status == 401
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with http.post(service.url + "/guardian/reload", headers=headers) as answer:
                assert answer.status == 422
                doc = await answer.json()
            async with http.post(service.url + "/guardian/reload", headers=headers, json={"x": 1}) as answer:
                assert answer.status == 400
        assert doc["result"] == "error" and "nothing to re-read" in doc["message"]
        assert service.metrics.config_reload_failures._value.get() == 1


async def test_a_request_past_authentication_is_judged_by_the_limits_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that lands while an order waits in the gate (as for the account's contracts or a settling
    order) does not change the limits that order is judged by; the next order gets the new ones."""
    async with exchange_and_guardian(tmp_path) as (_, service):
        account = service.config.accounts[0]
        tight = dataclasses.replace(account.guard, max_order_size=0.5)
        new = dataclasses.replace(service.config, accounts=(dataclasses.replace(account, guard=tight),))
        waiting, release = asyncio.Event(), asyncio.Event()

        async def held_gate(gw: Any, p: Any) -> None:
            if not waiting.is_set():
                waiting.set()
                await release.wait()
            await checks.gate(gw, p)

        held = tuple(
            dataclasses.replace(stage, run=held_gate) if stage.run is checks.gate else stage
            for stage in gateway_app.STAGES
        )
        monkeypatch.setattr(gateway_app, "STAGES", held)
        async with rest(service, OWN_KEY, OWN_SECRET) as bot:
            order = asyncio.create_task(bot.send_order(**LMT))  # size 1: within the limits it started with
            await asyncio.wait_for(waiting.wait(), 5)
            assert (await service.reload("test", (new, "sha256:tight"))).ok
            release.set()
            placed = await order
            assert placed["sendStatus"]["status"] == "placed"
            with pytest.raises(ExchangeError) as caught:
                await bot.send_order(**LMT)  # the next order: 1 > 0.5
            assert caught.value.code == "orderSizeTooLarge"


def test_a_retuned_bucket_keeps_what_was_spent_and_caps_what_it_holds() -> None:
    now = [0.0]
    bucket = TokenBucket(1.0, 10.0, clock=lambda: now[0])
    assert bucket.try_spend(8)
    bucket.retune(5.0, 20.0)
    assert bucket.available() == pytest.approx(2.0)  # a reload gives no fresh burst
    now[0] = 2.0
    assert bucket.available() == pytest.approx(12.0)  # the new rate from the retune on
    bucket.retune(5.0, 4.0)
    assert bucket.available() == pytest.approx(4.0)  # a smaller burst caps what is held
    with pytest.raises(ValueError, match="positive"):
        bucket.retune(0, 1)


async def test_a_bot_killed_before_a_restart_without_it_is_still_halted_when_a_reload_adds_it_back(
    tmp_path: Path,
) -> None:
    from guardian.account import bot_mode_key
    from tests.relay_helpers import BLIND, OWN, READER

    async with exchange_and_guardian(tmp_path) as (_, service):
        # A kill persists the bot's mode in the journal (as POST /guardian/kill with "bot" does).
        await service.journal.set_mode(bot_mode_key("main", "own-bot"), "halted", by="admin", reason="kill")
    # Restarted on the same journal without the bot, then the bot is added back by a reload.
    async with exchange_and_guardian(tmp_path, clients=(READER, BLIND)) as (exchange, service):
        account = service.config.accounts[0]
        back = dataclasses.replace(account, clients=(*account.clients, OWN))
        new = dataclasses.replace(service.config, accounts=(back,))
        assert (await service.reload("test", (new, "sha256:back"))).ok
        async with rest(service, OWN_KEY, OWN_SECRET) as own:
            with pytest.raises(ExchangeError) as refused:
                await own.send_order(**LMT)
        assert refused.value.code == "tradingHalted", refused.value
        assert exchange.requests_for("sendorder") == []
        bots = {b["name"]: b["mode"] for b in service.state_json()["accounts"][0]["bots"]}  # type: ignore[index]
        assert bots["own-bot"] == "halted"
