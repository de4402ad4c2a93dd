"""The relay's done-when (issue 13): ccxt's `ccxt.pro.krakenfutures` and python-kraken-sdk's
`FuturesWSClient`, unmodified, given guardian's URL and a bot's local key only, place an order through
guardian's REST and see it, its fill, the position and the balance on their WebSocket watches, end to end
on the simulator; the simulator sees only the account's key.

python-kraken-sdk hard-codes `wss://`: it reaches guardian through a small TLS terminator on loopback
with a throwaway certificate for 127.0.0.1 (trusted through SSL_CERT_FILE, as a deployment behind a TLS
proxy would be)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from kraken.futures import FuturesWSClient

from guardian.service import Service
from guardian.sim.app import Simulator
from tests.conftest import TRADE_KEY
from tests.daemon import wait_for
from tests.relay_helpers import READER_KEY, READER_SECRET, exchange_and_guardian, rest, ws_url

pytestmark = pytest.mark.compat

BTC = "BTC/USD:USD"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service]]:
    async with exchange_and_guardian(tmp_path) as found:
        yield found


def only_the_account_key_reached_the_exchange(exchange: Simulator) -> None:
    keys = {r.get("api_key") for r in exchange.requests} - {None}
    assert keys == {TRADE_KEY}, keys
    for conn in exchange.stream.connections:
        assert set(conn.challenges.values()) <= {TRADE_KEY}


async def _collect(watch: Callable[[], Awaitable[Any]], into: list[Any]) -> None:
    while True:
        found = await watch()
        into.extend(found if isinstance(found, list) else [found])


async def test_ccxt_pro_sees_its_order_fill_position_and_balance_through_guardian(
    pair: tuple[Simulator, Service],
) -> None:
    exchange, service = pair
    ex = ccxtpro.krakenfutures(
        {"apiKey": READER_KEY, "secret": READER_SECRET, "enableRateLimit": False, "timeout_on_exit": 0}
    )
    ex.urls["api"] = {
        **ex.urls["api"],
        "public": service.url + "/derivatives/api/",
        "private": service.url + "/derivatives/api/",
        "history": service.url + "/api/history/",
        "ws": ws_url(service),
    }
    orders: list[Any] = []
    trades: list[Any] = []
    positions: list[Any] = []
    balances: list[Any] = []
    try:
        await ex.load_markets()
        async with asyncio.TaskGroup() as group:
            watchers = [
                group.create_task(_collect(lambda: ex.watch_orders(BTC), orders)),
                group.create_task(_collect(lambda: ex.watch_my_trades(BTC), trades)),
                group.create_task(_collect(lambda: ex.watch_positions([BTC]), positions)),
                group.create_task(_collect(lambda: ex.watch_balance(), balances)),
            ]
            await wait_for(lambda: len(service.relay.connections) == 1 and balances, 5.0, "ccxt subscribed")
            resting = await ex.create_order(BTC, "limit", "buy", 1, 59000)
            await wait_for(
                lambda: any(o["id"] == resting["id"] for o in orders), 5.0, "the order on watch_orders"
            )
            taken = await ex.create_order(BTC, "market", "buy", 2)
            await wait_for(
                lambda: any(t["order"] == taken["id"] for t in trades), 5.0, "its fill on watch_my_trades"
            )
            await wait_for(
                lambda: any(p["symbol"] == BTC and p["contracts"] == 2 for p in positions),
                5.0,
                "the position on watch_positions",
            )
            await wait_for(lambda: len(balances) >= 2, 5.0, "a balance update on watch_balance")
            for task in watchers:
                task.cancel()
    finally:
        await ex.close()
    order = next(o for o in orders if o["id"] == resting["id"])
    assert (order["side"], order["price"], order["remaining"]) == ("buy", 59000, 1)
    fill = next(t for t in trades if t["order"] == taken["id"])
    assert (fill["side"], fill["amount"]) == ("buy", 2)
    assert balances[-1]["USD"]["total"] > 0
    assert {c["bot"] for c in service.state_json()["relay"]["connections"]} <= {"reader-bot"}  # type: ignore[index]
    only_the_account_key_reached_the_exchange(exchange)


@contextlib.asynccontextmanager
async def tls_terminator(tmp_path: Path, target_port: int) -> AsyncIterator[tuple[int, Path]]:
    """A TLS listener on 127.0.0.1 that forwards bytes to `target_port`; its port and certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], cert
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def test_python_kraken_sdk_sees_its_order_fill_position_and_balance_through_guardian(
    pair: tuple[Simulator, Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange, service = pair
    port = int(service.url.rsplit(":", 1)[1])
    received: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> None:
        received.append(message)

    def data(feed: str) -> list[dict[str, Any]]:
        return [m for m in received if m.get("feed") == feed and "event" not in m]

    async with tls_terminator(tmp_path, port) as (tls_port, cert):
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        client = FuturesWSClient(
            key=READER_KEY, secret=READER_SECRET, url=f"127.0.0.1:{tls_port}/ws/v1", callback=on_message
        )
        try:
            await client.start()
            for feed in ("open_orders", "fills", "open_positions", "balances"):
                await client.subscribe(feed=feed)
            await wait_for(lambda: data("balances_snapshot") and data("fills_snapshot"), 5.0, "the snapshots")
            async with rest(service) as bot:
                resting = await bot.send_order(
                    orderType="lmt", symbol="PF_XBTUSD", side="buy", size=1, limitPrice=59000
                )
                taken = await bot.send_order(orderType="mkt", symbol="PF_XBTUSD", side="buy", size=2)
            resting_id, taken_id = resting["sendStatus"]["order_id"], taken["sendStatus"]["order_id"]
            await wait_for(
                lambda: any(m.get("order", {}).get("order_id") == resting_id for m in data("open_orders")),
                5.0,
                "the order",
            )
            await wait_for(
                lambda: any(f["order_id"] == taken_id for m in data("fills") for f in m["fills"]),
                5.0,
                "the fill",
            )
            await wait_for(
                lambda: any(
                    p["instrument"] == "PF_XBTUSD" and p["balance"] == 2
                    for m in data("open_positions")
                    for p in m["positions"]
                ),
                5.0,
                "the position",
            )
            await wait_for(lambda: data("balances"), 5.0, "a balance delta")
            acks = {m["feed"] for m in received if m.get("event") == "subscribed"}
            assert acks == {"open_orders", "fills", "open_positions", "balances"}
            assert not [m for m in received if m.get("event") in ("alert", "error")]
        finally:
            await client.close()  # the SDK waits out its 10 s receive timeout here
    only_the_account_key_reached_the_exchange(exchange)
