"""A bot with two keys (a rotation under way, `extra_keys`): each key works wherever the first does, the
relay's ws/v1 and the public budget included, each with its own secret only, and both keys share the
bot's one public budget."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from guardian.config import ClientConfig, ClientKey, GuardConfig, StreamConfig, SwitchConfig
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, serving, wait_for
from tests.relay_helpers import AUTH_FAILED, rest, ws_bot


def _secret(seed: str) -> str:
    return base64.b64encode(seed.encode().ljust(32, b"."))[:44].decode()


OLD_KEY, OLD_SECRET = "rotating-bot-key-old", _secret("the old key's secret")
NEW_KEY, NEW_SECRET = "rotating-bot-key-new", _secret("the new key's secret")
BOT = ClientConfig(
    "rotating-bot",
    OLD_KEY,
    ApiSecret(OLD_SECRET),
    frozenset({Permission.READ, Permission.TRADE}),
    public_rate_limit=1.0,
    public_burst=3.0,
    extra_keys=(ClientKey(NEW_KEY, ApiSecret(NEW_SECRET)),),
)
STREAM = StreamConfig(link_timeout_s=2.0, reconcile_s=30.0, state_max_age_s=2.0)
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)


@pytest.fixture
async def guardian(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service]]:
    from guardian.sim.ws import StreamSettings

    # A heartbeat well inside STREAM's 2 s link timeout (the default 5 s made the link drop every 2 s).
    async with running_sim(budget_capacity=1_000_000, stream=StreamSettings(heartbeat_s=0.5)) as exchange:
        account = account_config(
            exchange.url, switch=SWITCH, guard=GuardConfig(mark_poll_s=0.2), clients=(BOT,), stream=STREAM
        )
        async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
            await wait_for(
                lambda: service.accounts[0].switch.state is SwitchState.ARMED and service.streams[0].link.up,
                timeout_s=10,
                what="armed, link up",
            )
            yield exchange, service


async def test_each_key_of_a_bot_subscribes_to_the_relay_with_its_own_secret_only(
    guardian: tuple[Simulator, Service],
) -> None:
    _, service = guardian
    for key, secret in ((OLD_KEY, OLD_SECRET), (NEW_KEY, NEW_SECRET)):
        async with ws_bot(service, key, secret) as bot:
            ack = await bot.subscribe("open_orders")
            assert ack == {"event": "subscribed", "feed": "open_orders"}, (key, ack)
    for key, secret in ((OLD_KEY, NEW_SECRET), (NEW_KEY, OLD_SECRET)):  # a key with the other's secret
        async with ws_bot(service, key, secret) as bot:
            answer = await bot.subscribe("open_orders")
            assert answer.get("event") == "alert" and answer.get("message") == AUTH_FAILED, (key, answer)
    async with rest(service, NEW_KEY, NEW_SECRET) as client:  # and REST takes the new key too
        assert "openPositions" in await client.request("openpositions")


async def test_both_keys_of_a_bot_spend_its_one_public_budget(guardian: tuple[Simulator, Service]) -> None:
    _, service = guardian
    async with aiohttp.ClientSession() as http:

        async def read(key: str, symbol: str) -> int:
            url = f"{service.url}/derivatives/api/v3/tickers/{symbol}"
            async with http.get(url, headers={"APIKey": key}) as response:
                await response.read()
                return response.status

        # A burst of 3 for the bot, whichever key labels the request (distinct reads: none from the cache).
        statuses = [
            await read(key, symbol)
            for key, symbol in ((OLD_KEY, "PF_XBTUSD"), (NEW_KEY, "PF_ETHUSD"), (OLD_KEY, "PF_SOLUSD"))
        ]
        assert statuses == [200, 200, 200]
        assert await read(NEW_KEY, "PI_XBTUSD") == 429
        await asyncio.sleep(1.1)
        assert await read(NEW_KEY, "PI_XBTUSD") == 200
