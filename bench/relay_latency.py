"""The delay guardian's ws/v1 relay adds between the exchange and a bot, and the memory a connected bot costs.

`guardian sim` and `guardian run` are separate processes, as in production; this process is the bots. A
reference client holds its own connection to the simulator's ws/v1 with the exchange key, subscribed to
`open_orders`; N bots hold theirs to guardian's relay with a local key, subscribed to `open_orders` too.
Each sample is an order placed (then cancelled) directly at the simulator over REST, so guardian is not on
the order's path, only on the stream's: the added delay is a bot's arrival time minus the reference
client's, for the same message, all read on this process's monotonic clock. With N bots this process reads
N sockets in turn, so the last bot's figure includes this process's own reading of the others' frames: the
figures are an upper bound on what guardian adds.

Memory: guardian's RSS with N bots connected and subscribed to open_orders, fills, balances and
open_positions, minus its RSS before they came, per bot.

Usage: .venv/bin/python bench/relay_latency.py [--samples 300] [--subscribers 1,100] [--memory-bots 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    Key,
    daemon_toml,
    guardian_env,
    machine,
    markdown_table,
    quantile,
    rss_kb,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
    wait_http,
)

from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.signing import sign_challenge
from guardian.secret import ApiSecret


class Reader:
    """One ws/v1 connection: the arrival time of each open_orders message, by order id and cancel flag."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.arrivals: dict[tuple[str, bool], float] = {}
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            at = time.perf_counter()
            message = json.loads(frame.data)
            if message.get("feed") != "open_orders" or "event" in message:
                continue
            order = message.get("order")
            order_id = order.get("order_id") if isinstance(order, dict) else message.get("order_id")
            self.arrivals[(str(order_id), bool(message.get("is_cancel")))] = at
            self.changed.set()

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


async def connect(
    http: aiohttp.ClientSession, url: str, key: str, secret: str, feeds: tuple[str, ...] = ("open_orders",)
) -> Reader:
    ws = await http.ws_connect(url, max_msg_size=8 * 1024 * 1024)
    info = await ws.receive_json()
    assert info.get("event") == "info", info
    await ws.send_json({"event": "challenge", "api_key": key})
    while (answer := await ws.receive_json()).get("event") != "challenge":
        pass
    challenge = answer["message"]
    signed = sign_challenge(base64.b64decode(secret), challenge)
    for feed in feeds:
        await ws.send_json(
            {
                "event": "subscribe",
                "feed": feed,
                "api_key": key,
                "original_challenge": challenge,
                "signed_challenge": signed,
            }
        )
    acked: set[str] = set()
    while acked != set(feeds):
        message = await ws.receive_json()
        if message.get("event") == "subscribed":
            acked.add(message["feed"])
        elif message.get("event") in ("alert", "error"):
            raise SystemExit(f"refused: {message}")
    return Reader(ws)


async def wait_all(readers: list[Reader], key: tuple[str, bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(key in r.arrivals for r in readers):
        if time.monotonic() > deadline:
            raise SystemExit(f"not every reader got {key} within {timeout_s:g} s")
        await asyncio.sleep(0.001)


async def measure(
    http: aiohttp.ClientSession,
    exchange: Key,
    bot: Key,
    sim_url: str,
    relay_url: str,
    subscribers: int,
    samples: int,
) -> list[float]:
    """Added delays (s) of every bot for every sample, placements and cancels."""
    sim_ws = sim_url.replace("http://", "ws://") + "/ws/v1"
    reference = await connect(http, sim_ws, exchange.api_key, exchange.secret)
    bots = [await connect(http, relay_url, bot.api_key, bot.secret) for _ in range(subscribers)]
    delays: list[float] = []
    try:
        async with KrakenClient(sim_url, Credentials(exchange.api_key, ApiSecret(exchange.secret))) as rest:
            for i in range(samples):
                answer = await rest.send_order(
                    orderType="lmt", symbol="PF_XBTUSD", side="buy", size=1, limitPrice=50000 + i % 100
                )
                order_id = answer["sendStatus"]["order_id"]
                await rest.cancel_order(order_id=order_id)
                for cancel in (False, True):
                    key = (order_id, cancel)
                    await wait_all([reference, *bots], key)
                    delays.extend(b.arrivals[key] - reference.arrivals[key] for b in bots)
    finally:
        for reader in (reference, *bots):
            await reader.close()
    return delays


async def main(args: argparse.Namespace) -> int:
    exchange, bot = Key.make("exchange"), Key.make("relay-bot")
    counts = [int(n) for n in args.subscribers.split(",")]
    sim, sim_url = await start_sim(exchange, budget=1e9)
    try:
        with tempfile.TemporaryDirectory(prefix="guardian-relay-bench-") as tmp:
            port = int(args.port)
            text = daemon_toml(port, Path(tmp) / "journal.sqlite3", sim_url, exchange, [bot])
            text += f"ws_max_connections = {max([*counts, args.memory_bots]) + 10}\n"
            text = text.replace("[server]\n", "[server]\nws_max_connections = 1000\n", 1)
            config = Path(tmp) / "guardian.toml"
            config.write_text(text)
            daemon = await start_daemon(config, guardian_env(**secrets_env([exchange, bot])))
            try:
                await wait_http(f"http://127.0.0.1:{port}/readyz")
                relay_url = f"ws://127.0.0.1:{port}/ws/v1"
                results: dict[int, list[float]] = {}
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    await asyncio.sleep(1.0)  # the account's stream up
                    for n in counts:
                        results[n] = await measure(http, exchange, bot, sim_url, relay_url, n, args.samples)
                    await asyncio.sleep(0.5)
                    before = rss_kb(daemon.pid)
                    feeds = ("open_orders", "fills", "balances", "open_positions")
                    held = [
                        await connect(http, relay_url, bot.api_key, bot.secret, feeds)
                        for _ in range(args.memory_bots)
                    ]
                    await asyncio.sleep(0.5)
                    after = rss_kb(daemon.pid)
                    for reader in held:
                        await reader.close()
            finally:
                await stop(daemon)
    finally:
        await stop(sim)

    def row(n: int) -> list[str]:
        ms = sorted(v * 1000 for v in results[n])
        return [
            str(n),
            str(len(ms)),
            f"{statistics.median(ms):.2f} ms",
            f"{quantile(ms, 0.99):.2f} ms",
            f"{ms[-1]:.2f} ms",
        ]

    print(
        f"Delay the relay adds from the exchange's open_orders message to a bot (bot's arrival minus a direct "
        f"client's), {args.samples} orders placed and cancelled at the simulator. {machine()}."
    )
    print()
    print(markdown_table(["subscribers", "messages", "p50", "p99", "max"], [row(n) for n in counts]))
    print()
    per_bot = (after - before) / max(args.memory_bots, 1)
    print(
        f"Memory: guardian's RSS {before / 1024:.1f} MB before, {after / 1024:.1f} MB with {args.memory_bots} bots "
        f"connected (4 private feeds each): {per_bot:.1f} kB per connected bot."
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--subscribers", default="1,100")
    parser.add_argument("--memory-bots", type=int, default=200)
    parser.add_argument("--port", default="0")
    args = parser.parse_args()
    if args.port == "0":
        from _common import free_port

        args.port = str(free_port())
    sys.exit(asyncio.run(main(args)))
