"""Shared by the relay's tests (issue 13): guardian with the stream on, in front of the simulator, with
bots of each kind; and a small ws/v1 bot on a real socket that signs its challenges."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from guardian.config import ClientConfig, GuardConfig, StreamConfig, SwitchConfig
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import sign_challenge
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, serving, wait_for


def _secret(seed: str) -> str:
    return base64.b64encode(seed.encode().ljust(32, b"."))[:44].decode()


READER_KEY, READER_SECRET = "relay-reader-key-01", _secret("relay reader secret")
OWN_KEY, OWN_SECRET = "relay-own-key-01", _secret("relay own-view secret")
BLIND_KEY, BLIND_SECRET = "relay-blind-key-01", _secret("relay blind bot secret")
RW = frozenset({Permission.READ, Permission.TRADE})
READER = ClientConfig("reader-bot", READER_KEY, ApiSecret(READER_SECRET), RW, ws_max_connections=250)
OWN = ClientConfig("own-bot", OWN_KEY, ApiSecret(OWN_SECRET), RW, ws_max_connections=3, feeds="own")
BLIND = ClientConfig("blind-bot", BLIND_KEY, ApiSecret(BLIND_SECRET), frozenset({Permission.TRADE}))
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
STREAM = StreamConfig(link_timeout_s=2.0, reconcile_s=30.0, state_max_age_s=2.0)
GUARD = GuardConfig(mark_poll_s=0.2, rate_budget=100_000, upstream_timeout_s=2.0)
AUTH_FAILED = "Failed to subscribe to authenticated feed"
LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 59000}


@contextlib.asynccontextmanager
async def exchange_and_guardian(
    tmp_path: Path,
    *,
    account_stream: StreamConfig = STREAM,
    clients: tuple[ClientConfig, ...] | None = None,
    **sim: Any,
) -> AsyncIterator[tuple[Simulator, Service]]:
    from guardian.sim.ws import StreamSettings

    settings = sim.pop("stream", StreamSettings(heartbeat_s=0.5, ticker_s=0.05))
    async with running_sim(budget_capacity=1_000_000, stream=settings, **sim) as exchange:
        account = account_config(
            exchange.url,
            switch=SWITCH,
            guard=GUARD,
            clients=(READER, OWN, BLIND) if clients is None else clients,
            stream=account_stream,
        )
        async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
            await wait_for(
                lambda: (
                    service.accounts[0].switch.state is SwitchState.ARMED
                    and service.streams[0].link.up
                    and service.tickers[0].up
                    and "PF_XBTUSD" in service.accounts[0].marks.known
                ),
                timeout_s=10,
                what="switch armed, links up, markets known",
            )
            yield exchange, service


def ws_url(service: Service) -> str:
    return service.url.replace("http://", "ws://") + "/ws/v1"


@contextlib.asynccontextmanager
async def rest(
    service: Service, key: str = READER_KEY, secret: str = READER_SECRET
) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(service.url, Credentials(key, ApiSecret(secret)), timeout_s=5) as client:
        yield client


class WsBot:
    """A ws/v1 client on a real socket: every message it gets, with the monotonic time it arrived."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, key: str | None, secret: str | None) -> None:
        self.ws = ws
        self.key = key
        self.secret = secret
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.texts: list[str] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.challenge: str | None = None

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                self.texts.append(frame.data)
                self.messages.append((time.monotonic(), json.loads(frame.data)))
                self._arrived.set()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 3.0, start: int = 0
    ) -> dict[str, Any]:
        """The first message (from index `start`) that `predicate` accepts."""
        deadline = time.monotonic() + timeout_s
        seen = start
        while True:
            for _, message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = max(seen, len(self.messages))
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(
                    f"no such message within {timeout_s} s; got {[m for _, m in self.messages][-10:]}"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def data(self, feed: str) -> list[dict[str, Any]]:
        """The feed's data messages (not its acks)."""
        return [m for _, m in self.messages if m.get("feed") == feed and "event" not in m]

    async def authenticate(self) -> str:
        assert self.key is not None
        mark = len(self.messages)
        await self.ws.send_json({"event": "challenge", "api_key": self.key})
        answer = await self.expect(lambda m: m.get("event") == "challenge", start=mark)
        self.challenge = str(answer["message"])
        return self.challenge

    def auth(self) -> dict[str, str]:
        assert self.key is not None and self.secret is not None and self.challenge is not None
        signed = sign_challenge(base64.b64decode(self.secret), self.challenge)
        return {"api_key": self.key, "original_challenge": self.challenge, "signed_challenge": signed}

    async def subscribe(self, feed: str, **extra: Any) -> dict[str, Any]:
        """A private subscribe; the ack or the alert that answered it."""
        if self.challenge is None:
            await self.authenticate()
        mark = len(self.messages)
        await self.ws.send_json({"event": "subscribe", "feed": feed, **self.auth(), **extra})
        return await self.expect(
            lambda m: (m.get("event") == "subscribed" and m.get("feed") == feed) or m.get("event") == "alert",
            start=mark,
        )

    async def subscribe_public(self, feed: str, products: list[str] | None = None) -> dict[str, Any]:
        mark = len(self.messages)
        request: dict[str, Any] = {"event": "subscribe", "feed": feed}
        if products is not None:
            request["product_ids"] = products
        await self.ws.send_json(request)
        return await self.expect(lambda m: m.get("event") in ("subscribed", "error", "alert"), start=mark)


@contextlib.asynccontextmanager
async def ws_bot(
    service: Service, key: str | None = READER_KEY, secret: str | None = READER_SECRET
) -> AsyncIterator[WsBot]:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(service), heartbeat=None)
        bot = WsBot(ws, key, secret)
        await bot.expect(lambda m: m == {"event": "info", "version": 1})
        try:
            yield bot
        finally:
            await bot.close()
