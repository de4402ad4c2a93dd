"""`relay_dropped` (issue 22): when guardian's ws/v1 relay closes a bot's connection (a slow consumer, or
one over the bot's `ws_max_connections`), every notifier that wants the event hears it from a real
daemon, through real receivers on loopback speaking each dialect: the account, the bot, why, what
guardian did and where to look; folded per kind and account like every other event; no secret in it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import struct
import time
from decimal import Decimal
from pathlib import Path

import pytest

from guardian.config import NotifyConfig
from guardian.kraken.signing import sign_challenge
from guardian.sim.app import Simulator
from tests.daemon import wait_for
from tests.relay_helpers import GUARD, READER, READER_KEY, READER_SECRET, STREAM, WsBot, ws_bot
from tests.test_exposure import exchange
from tests.test_pushnotify import Receiver, assert_clean, daemon, receiver, slack, telegram, webhook
from tests.test_relay import RawSlowBot

__all__ = ["exchange", "receiver"]  # the fixtures

ONE_CONNECTION = dataclasses.replace(READER, ws_max_connections=1)
pytestmark = pytest.mark.slow


def default_events(config: NotifyConfig) -> NotifyConfig:
    """`events` left at its default: relay_dropped must be in it."""
    assert "relay_dropped" in config.events
    return config


class AuthSlowBot(RawSlowBot):
    """The slowest consumer, authenticated as a bot: a raw socket with a tiny receive buffer that reads
    what it needs to sign its challenge and subscribe, then stops reading."""

    def texts(self, until: str, timeout_s: float = 3.0) -> list[dict[str, object]]:
        """Read server frames until a text message containing `until`; every text message read."""
        self.sock.settimeout(timeout_s)
        found: list[dict[str, object]] = []
        while True:
            while len(self.buffer) >= 2:
                opcode, length, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
                if length == 126:
                    (length,) = struct.unpack(">H", self.buffer[2:4])
                    at = 4
                if len(self.buffer) < at + length:
                    break
                payload, self.buffer = self.buffer[at : at + length], self.buffer[at + length :]
                if opcode == 0x1:
                    found.append(json.loads(payload))
                    if until in payload.decode():
                        return found
            self.buffer += self.sock.recv(4096)

    def subscribe(self, key: str, secret: str) -> None:
        self.texts('"info"')
        self.send_text(json.dumps({"event": "challenge", "api_key": key}))
        challenge = str(self.texts('"challenge"')[-1]["message"])
        signed = sign_challenge(base64.b64decode(secret), challenge)
        auth = {"api_key": key, "original_challenge": challenge, "signed_challenge": signed}
        request = json.dumps({"event": "subscribe", "feed": "fills", **auth}, separators=(",", ":"))
        self.send_long_text(request)
        self.texts('"subscribed"')
        self.send_text('{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}')
        self.texts('"book_snapshot"')

    def send_long_text(self, text: str) -> None:
        """A client text frame of 126 to 65535 bytes (the signed subscribe is about 250)."""
        payload = text.encode()
        assert 126 <= len(payload) < 65536
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload)) + mask + masked)


async def over_the_limit(over: WsBot) -> None:
    """A subscribe on a connection the bot has no room for: it is closed (1013)."""
    await over.authenticate()
    await over.ws.send_json({"event": "subscribe", "feed": "fills", **over.auth()})
    await wait_for(lambda: over.closed, 5.0, "the connection over the limit closed")


async def test_a_slow_bot_dropped_by_the_relay_is_told_in_every_dialect(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    notifiers = (default_events(webhook(receiver)), slack(receiver), telegram(receiver))
    async with daemon(
        exchange.url, tmp_path, *notifiers, clients=(READER,), stream=STREAM, guard=GUARD
    ) as service:
        await wait_for(lambda: service.streams[0].link.up and service.tickers[0].up, 10.0, "links up")
        service.relay.queue_size = 50  # production's rule at a size a test fills in a second
        service.relay.send_buffer_bytes = 8192
        port = int(service.url.rsplit(":", 1)[1])
        slow = await asyncio.to_thread(AuthSlowBot, port)
        try:
            await asyncio.to_thread(slow.subscribe, READER_KEY, READER_SECRET)
            [conn] = list(service.relay.connections)
            assert (conn.account, conn.bot) == ("main", READER.name)
            moves = 0
            while conn.reason is None:  # each move replaces book levels: deltas the bot never reads
                assert moves < 200, "the bot was never given up"
                moves += 1
                exchange.exchange.market.set_mark("PF_XBTUSD", Decimal(60000 + 20 * moves))
                await asyncio.sleep(0.1)
            dropped_at = time.monotonic()
            assert conn.reason == "slow_consumer"
            await wait_for(
                lambda: len(receiver.of("relay_dropped")) == 3, 5.0, "relay_dropped, three dialects"
            )
        finally:
            slow.sock.close()
    for got in receiver.of("relay_dropped"):
        assert got.at - dropped_at < 2.0
        assert f"main, bot {READER.name}: relay connection DROPPED" in got.text
        assert "ws/v1 relay connection fell too far behind (slow consumer: more than 50 messages" in got.text
        assert "What guardian did: closed that connection (1013, try again later)" in got.text
        assert (
            f"Look: curl -s {service.url}/guardian/state" in got.text
            and "docs/relay.md#robustness" in got.text
        )
        assert READER_SECRET not in got.text
        assert_clean(got.text)
    [hook] = receiver.of("relay_dropped", "webhook")
    assert (hook.body["event"], hook.body["account"], hook.body["bot"], hook.body["count"]) == (
        "relay_dropped",
        "main",
        READER.name,
        1,
    )


async def test_connections_over_a_bots_limit_are_told_and_folded_per_account(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    hook = webhook(receiver, min_interval_s=60.0)  # a storm: one message now, the rest folded
    async with daemon(
        exchange.url, tmp_path, hook, clients=(ONE_CONNECTION,), stream=STREAM, guard=GUARD
    ) as service:
        await wait_for(lambda: service.streams[0].link.up, 10.0, "the link up")
        async with ws_bot(service) as first:
            assert (await first.subscribe("fills"))["event"] == "subscribed"
            for extra in range(3):
                async with ws_bot(service) as over:
                    await over_the_limit(over)
                    assert over.ws.close_code == 1013, extra
            await wait_for(lambda: receiver.of("relay_dropped"), 2.0, "the first drop told")
            await asyncio.sleep(0.3)
            [told] = receiver.of("relay_dropped")
            assert "a new ws/v1 relay connection was refused: bot reader-bot has 1 connections" in told.text
            assert "raise the bot's ws_max_connections" in told.text
            assert (told.body["account"], told.body["bot"], told.body["count"]) == ("main", READER.name, 1)
            assert not first.closed  # the bot's first connection is kept
    # At the stop the folded ones leave as one message that says how many it stands for.
    told = receiver.of("relay_dropped")
    assert len(told) == 2 and told[1].body["count"] == 2
    assert "(2 relay_dropped events for main, bot reader-bot since" in told[1].text


async def test_a_notifier_that_does_not_want_relay_dropped_is_not_told(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    hook = webhook(receiver, events=frozenset({"kill"}))
    async with daemon(
        exchange.url, tmp_path, hook, clients=(ONE_CONNECTION,), stream=STREAM, guard=GUARD
    ) as service:
        await wait_for(lambda: service.streams[0].link.up, 10.0, "the link up")
        async with ws_bot(service) as first, ws_bot(service) as over:
            assert (await first.subscribe("fills"))["event"] == "subscribed"
            await over_the_limit(over)
            await asyncio.sleep(0.5)
    assert receiver.got == []
