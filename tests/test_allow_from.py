"""`[[accounts.clients]] allow_from` and `require_nonce` (issue 23), through the real gateway and relay in
front of the simulator. 127.0.0.2, a second loopback address, stands in for another host: the client's
socket is bound to it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest
from kraken.futures import Trade

from guardian import conns
from guardian.config import ClientConfig, GuardConfig, StreamConfig, parse_config
from guardian.errors import ConfigError
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import sign
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, scrape, serving, wait_for
from tests.relay_helpers import WsBot

RW = frozenset({Permission.READ, Permission.TRADE})
HOME_KEY, HOME_SECRET = "home-bot-key-0001", base64.b64encode(b"home bot secret, 32 bytes long..").decode()
OPEN_KEY, OPEN_SECRET = "open-bot-key-0001", base64.b64encode(b"open bot secret, 32 bytes long..").decode()
NONCE_KEY, NONCE_SECRET = "nonce-bot-key-001", base64.b64encode(b"nonce bot secret, 32 bytes long.").decode()
# home-bot: only from 127.0.0.1. open-bot: anywhere, no nonce needed. nonce-bot: must send a Nonce.
HOME = ClientConfig(
    "home-bot", HOME_KEY, ApiSecret(HOME_SECRET), RW, allow_from=(ipaddress.ip_network("127.0.0.1/32"),)
)
OPEN = ClientConfig("open-bot", OPEN_KEY, ApiSecret(OPEN_SECRET), RW)
NONCED = ClientConfig("nonce-bot", NONCE_KEY, ApiSecret(NONCE_SECRET), RW, require_nonce=True)
GUARD = GuardConfig(rate_budget=100_000, allow_unlimited=True)
ORDER = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1", "limitPrice": "50000"}
SENDORDER = "/derivatives/api/v3/sendorder"


@contextlib.asynccontextmanager
async def guardian(stream: bool = False) -> AsyncIterator[tuple[Simulator, Service]]:
    settings: dict[str, Any] = {}
    if stream:
        from guardian.sim.ws import StreamSettings

        settings["stream"] = StreamSettings(heartbeat_s=0.5, ticker_s=0.05)
    async with running_sim(budget_capacity=1_000_000, **settings) as sim:
        account = account_config(
            sim.url,
            guard=GUARD,
            clients=(HOME, OPEN, NONCED),
            stream=StreamConfig(link_timeout_s=2.0) if stream else StreamConfig(enabled=False),
        )
        async with serving(account) as service:
            await wait_for(lambda: service.accounts[0].switch.state is SwitchState.ARMED, 10, "switch armed")
            yield sim, service


def signed(key: str, secret: str, body: str, nonce: str | None = None) -> dict[str, str]:
    headers = {
        "APIKey": key,
        "Authent": sign(base64.b64decode(secret), body, nonce, SENDORDER.removeprefix("/derivatives")),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if nonce is not None:
        headers["Nonce"] = nonce
    return headers


@contextlib.asynccontextmanager
async def session_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as http:
        yield http


async def post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: str) -> tuple[int, Any]:
    async with http.post(url + SENDORDER, data=body.encode(), headers=headers) as response:
        return response.status, await response.json(content_type=None)


def sendorders(sim: Simulator) -> list[dict[str, Any]]:
    return sim.requests_for("sendorder")


# ---- allow_from on the gateway ------------------------------------------------------------------------
async def test_a_key_from_outside_allow_from_is_refused_and_counted_by_bot_while_home_and_others_pass() -> (
    None
):
    async with guardian() as (sim, service):
        body = urlencode(ORDER)
        async with session_from("127.0.0.2") as away:
            status, answer = await post(away, service.url, signed(HOME_KEY, HOME_SECRET, body), body)
            assert (status, answer["error"]) == (403, "sourceNotAllowed")
            assert "127.0.0.2" in answer["message"] and HOME_SECRET not in str(answer)
            # A bot without allow_from is accepted from anywhere.
            status, answer = await post(away, service.url, signed(OPEN_KEY, OPEN_SECRET, body), body)
            assert (status, answer["sendStatus"]["status"]) == (200, "placed")
        assert len(sendorders(sim)) == 1  # the refused one never reached the exchange
        async with session_from("127.0.0.1") as home:
            status, answer = await post(home, service.url, signed(HOME_KEY, HOME_SECRET, body), body)
            assert (status, answer["sendStatus"]["status"]) == (200, "placed")
            found = await scrape(home, service.url)
        labels = frozenset({"account": "main", "bot": "home-bot"}.items())
        assert found[("guardian_client_source_refused_total", labels)] == 1.0
        assert (
            "guardian_client_source_refused_total",
            frozenset({**dict(labels), "bot": "open-bot"}.items()),
        ) not in found


async def test_the_refusal_comes_before_the_body_is_read() -> None:
    """Headers announcing a body that is never sent: a request from home waits for it; one from away is
    answered at once."""
    async with guardian() as (_, service):
        parts = urlsplit(service.url)
        head = (
            f"POST {SENDORDER} HTTP/1.1\r\nHost: x\r\nAPIKey: {HOME_KEY}\r\nAuthent: {'A' * 88}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
        ).encode()

        async def first_answer(address: str) -> bytes:
            reader, writer = await asyncio.open_connection(
                parts.hostname, parts.port, local_addr=(address, 0)
            )
            try:
                writer.write(head)
                await writer.drain()
                return await asyncio.wait_for(reader.read(4096), timeout=1.0)
            finally:
                writer.close()

        answer = await first_answer("127.0.0.2")
        assert answer.startswith(b"HTTP/1.1 403") and b"sourceNotAllowed" in answer
        with pytest.raises(TimeoutError):
            await first_answer("127.0.0.1")  # guardian waits for the body it was promised


# ---- allow_from at the relay's login ------------------------------------------------------------------
async def test_a_relay_login_from_outside_allow_from_fails_and_is_counted() -> None:
    async with guardian(stream=True) as (_, service):
        await wait_for(lambda: service.streams[0].link.up, 10, "the stream up")
        url = service.url.replace("http://", "ws://") + "/ws/v1"
        for address, expected in (("127.0.0.2", "alert"), ("127.0.0.1", "subscribed")):
            async with session_from(address) as http:
                bot = WsBot(await http.ws_connect(url, heartbeat=None), HOME_KEY, HOME_SECRET)
                try:
                    await bot.expect(lambda m: m == {"event": "info", "version": 1})
                    assert (await bot.subscribe("open_orders"))["event"] == expected
                finally:
                    await bot.close()
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
        assert (
            found[
                (
                    "guardian_client_source_refused_total",
                    frozenset({"account": "main", "bot": "home-bot"}.items()),
                )
            ]
            == 1.0
        )


# ---- require_nonce --------------------------------------------------------------------------------------
async def test_with_require_nonce_a_replayed_nonceless_request_never_reaches_the_exchange() -> None:
    async with guardian() as (sim, service), aiohttp.ClientSession() as http:
        body = urlencode({**ORDER, "cliOrdId": "replayed-1"})
        captured = signed(NONCE_KEY, NONCE_SECRET, body)  # what an eavesdropper saw: no Nonce
        for _ in range(2):
            status, answer = await post(http, service.url, captured, body)
            assert (status, answer["error"]) == (401, "nonceRequired")
        assert sendorders(sim) == []
        # The same request with a Nonce passes once; its replay is nonceDuplicate.
        nonce = str(int(time.time() * 1000))
        captured = signed(NONCE_KEY, NONCE_SECRET, body, nonce)
        status, answer = await post(http, service.url, captured, body)
        assert (status, answer["sendStatus"]["status"]) == (200, "placed")
        status, answer = await post(http, service.url, captured, body)
        assert (status, answer["error"]) == (401, "nonceDuplicate")
        assert len(sendorders(sim)) == 1


async def test_without_require_nonce_the_nonceless_replay_is_what_the_setting_stops() -> None:
    """The threat, shown: a bot that needs no Nonce has its captured request placed twice."""
    async with guardian() as (sim, service), aiohttp.ClientSession() as http:
        body = urlencode(ORDER)
        captured = signed(OPEN_KEY, OPEN_SECRET, body)
        for _ in range(2):
            status, answer = await post(http, service.url, captured, body)
            assert (status, answer["sendStatus"]["status"]) == (200, "placed")
        assert len(sendorders(sim)) == 2


async def test_a_python_kraken_sdk_bot_with_require_nonce_trades_as_before() -> None:
    async with guardian() as (sim, service):
        trade = Trade(key=NONCE_KEY, secret=NONCE_SECRET, url=service.url)
        try:
            answer = await asyncio.to_thread(
                trade.create_order,
                orderType="lmt",
                side="buy",
                size=1,
                symbol="PF_XBTUSD",
                limitPrice=50000,
            )
            assert answer["sendStatus"]["status"] == "placed"
            cancelled = await asyncio.to_thread(trade.cancel_order, order_id=answer["sendStatus"]["order_id"])
            assert cancelled["cancelStatus"]["status"] == "cancelled"
        finally:
            trade._FuturesClient__session.close()  # type: ignore[attr-defined]
        assert len(sendorders(sim)) == 1


# ---- configuration --------------------------------------------------------------------------------------
CONFIG = """
[[accounts]]
name = "main"
api_key = "exchange-key"
api_secret = "{secret}"
[accounts.guard]
allow_unlimited = true
[[accounts.clients]]
name = "bot"
api_key = "bot-key-0001"
api_secret = "{secret}"
permissions = ["read", "trade"]
{extra}
"""


def load(extra: str, server: str = "") -> Any:
    text = (server + CONFIG).format(secret=HOME_SECRET, extra=extra)
    return parse_config(text, base_dir=Path("."), env={}, secrets_dirs=[])


def test_allow_from_takes_ipv4_and_ipv6_cidrs_and_defaults_to_any_address() -> None:
    client = load('allow_from = ["10.0.0.0/8", "192.168.1.20/32", "fd00::/8"]').accounts[0].clients[0]
    assert client.allow_from == tuple(
        ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.20/32", "fd00::/8")
    )
    for source, ok in (("10.9.8.7", True), ("192.168.1.20", True), ("192.168.1.21", False), ("fd00::5", True),
                       ("::ffff:10.1.1.1", False), ("127.0.0.1", False), ("", False)):  # fmt: skip
        assert conns.allowed(client, source) is ok, source
    # An IPv4-mapped IPv6 peer (a dual-stack listener) is judged as the IPv4 address it is.
    assert conns.allowed(client, conns.source_of(("::ffff:10.1.1.1", 5000, 0, 0)))
    assert load("").accounts[0].clients[0].allow_from is None
    assert conns.allowed(load("").accounts[0].clients[0], "203.0.113.9")


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ('allow_from = ["10.0.0.1/8"]', "accounts[0].clients[0].allow_from[0] = '10.0.0.1/8' is not a CIDR"),
        ('allow_from = ["ten"]', "accounts[0].clients[0].allow_from[0] = 'ten' is not a CIDR"),
        ("allow_from = []", "accounts[0].clients[0].allow_from is empty"),
        ("allow_from = [10]", "accounts[0].clients[0].allow_from[0] must be a string"),
        ('allow_from = "10.0.0.0/8"', "accounts[0].clients[0].allow_from must be an array"),
        ('require_nonce = "yes"', "accounts[0].clients[0].require_nonce must be a boolean"),
    ],
)
def test_a_bad_allow_from_or_require_nonce_is_refused_at_load_naming_the_key(extra: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(extra)
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("server", "said"),
    [
        ("request_timeout_s = 0.1", "server.request_timeout_s must be at least 0.5"),
        ("request_timeout_s = 301", "server.request_timeout_s must be at most 300 s"),
        ("keepalive_timeout_s = 0", "server.keepalive_timeout_s must be at least 1"),
        ("max_connections = 8", "server.max_connections must be between 16 and 1000000"),
        ("max_connections = 100\nmax_connections_per_source = 200", "is more than server.max_connections"),
        ("max_connections_per_source = 0", "server.max_connections_per_source must be a whole number"),
    ],
)
def test_connection_keys_are_refused_out_of_range(server: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load("", "[server]\n" + server + "\n")
    assert said in str(caught.value)


def test_connection_keys_have_their_documented_defaults() -> None:
    server = load("").server
    assert (server.request_timeout_s, server.keepalive_timeout_s) == (10.0, 75.0)
    assert (server.max_connections, server.max_connections_per_source) == (2048, 512)
