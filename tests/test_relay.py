"""guardian's ws/v1 relay (issue 13) on real sockets, against the simulator's ws/v1 upstream: bots'
authentication by local keys and what a refusal leaks (nothing), `read`, the "own" view, shared public
subscriptions, a slow consumer, an upstream drop, limits, metrics and the state endpoint, 200 subscribers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from guardian.service import Service
from guardian.sim.app import Simulator
from tests.conftest import TRADE_KEY, TRADE_SECRET
from tests.daemon import get_json, scrape, wait_for
from tests.relay_helpers import (
    AUTH_FAILED,
    BLIND_KEY,
    BLIND_SECRET,
    LMT,
    OWN_KEY,
    OWN_SECRET,
    READER_KEY,
    READER_SECRET,
    WsBot,
    exchange_and_guardian,
    rest,
    ws_bot,
    ws_url,
)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service]]:
    async with exchange_and_guardian(tmp_path) as found:
        yield found


def is_data(message: dict[str, object], feed: str) -> bool:
    """A feed's data message (acks carry `feed` too)."""
    return message.get("feed") == feed and "event" not in message


def upstream_public(exchange: Simulator) -> dict[str, list[str]]:
    """The public subscriptions guardian holds at the simulator (its ticker link's connection)."""
    found: dict[str, list[str]] = {}
    for conn in exchange.stream.state()["connections"]:
        for feed, products in conn["public"].items():
            if products:
                found[feed] = sorted(set(found.get(feed, [])) | set(products))
    return found


# ---- authentication ------------------------------------------------------------------------------


async def test_bad_signatures_and_unknown_keys_get_the_alert_and_leak_nothing(
    pair: tuple[Simulator, Service],
) -> None:
    exchange, service = pair
    with capture_logs() as logs:
        async with ws_bot(
            service, READER_KEY, base64.b64encode(b"not the bot's secret at all!!!!!").decode()
        ) as bad:
            assert (await bad.subscribe("open_orders"))["message"] == AUTH_FAILED
        async with ws_bot(service, "no-such-local-key", READER_SECRET) as unknown:
            challenge = await unknown.authenticate()
            assert len(challenge) == 36  # a UUID, as for any key: whether it exists is not said
            assert (await unknown.subscribe("fills"))["message"] == AUTH_FAILED
        async with ws_bot(service) as first, ws_bot(service) as second:
            await first.authenticate()
            second.challenge = first.challenge  # a challenge given to another connection
            assert (await second.subscribe("balances"))["message"] == AUTH_FAILED
            assert (await first.subscribe("balances"))["event"] == "subscribed"
            again = await first.authenticate()  # a fresh UUID per request
            assert again != second.challenge
            texts = first.texts + second.texts + bad.texts + unknown.texts
    refused = [e for e in logs if e["event"] == "relay_auth_refused"]
    assert [e["reason"] for e in refused] == [
        "a signature that does not match",
        "unknown key",
        "a challenge this connection was not given for that key",
    ]
    assert refused[0]["bot"] == "reader-bot"
    exchange_challenges = {c for conn in exchange.stream.connections for c in conn.challenges}
    secrets = [TRADE_KEY, TRADE_SECRET, READER_SECRET, *exchange_challenges]
    logged = repr(logs)
    for secret in secrets:
        assert all(secret not in text for text in texts), "an exchange secret reached a bot"
        assert secret not in logged
    assert READER_KEY not in logged  # keys are masked in the log


async def test_a_bot_without_read_gets_no_private_feed_but_public_ones(
    pair: tuple[Simulator, Service],
) -> None:
    _, service = pair
    async with ws_bot(service, BLIND_KEY, BLIND_SECRET) as blind:
        for feed in ("open_orders", "fills", "balances", "open_positions"):
            assert (await blind.subscribe(feed))["message"] == AUTH_FAILED
        assert (await blind.subscribe_public("ticker", ["PF_XBTUSD"]))["event"] == "subscribed"
        await blind.expect(lambda m: is_data(m, "ticker") and m.get("product_id") == "PF_XBTUSD")
        assert not [
            m for _, m in blind.messages if str(m.get("feed", "")).startswith(("open_", "fills", "bal"))
        ]


async def test_a_plain_http_request_gets_kraken_s_envelope_not_a_text_page(
    pair: tuple[Simulator, Service],
) -> None:
    _, service = pair
    async with aiohttp.ClientSession() as http, http.get(service.url + "/ws/v1") as answer:
        assert answer.status == 400 and answer.content_type == "application/json"
        doc = await answer.json()
    assert (doc["result"], doc["error"]) == ("error", "invalidArgument") and "WebSocket" in doc["message"]


async def test_junk_unknown_feeds_products_and_json_pings(pair: tuple[Simulator, Service]) -> None:
    _, service = pair
    async with ws_bot(service) as bot:
        await bot.ws.send_str("{not json")
        await bot.expect(lambda m: m == {"event": "error", "message": "Json Error"})
        await bot.ws.send_json({"event": "subscribe", "feed": "everything"})
        await bot.expect(lambda m: m == {"event": "error", "message": "Invalid feed"})
        assert (await bot.subscribe_public("book", ["PF_NOSUCH"]))["message"] == "Invalid product id"
        await bot.ws.send_json({"event": "ping"})
        await bot.expect(lambda m: m == {"event": "pong"})
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(service), autoping=False) as ws:
        await ws.ping(b"are you there")
        while (frame := await ws.receive(timeout=2)).type is not aiohttp.WSMsgType.PONG:
            pass
        assert frame.data == b"are you there"


# ---- private feeds ---------------------------------------------------------------------------------


async def test_the_own_view_shows_a_bot_only_its_orders_and_fills(pair: tuple[Simulator, Service]) -> None:
    _, service = pair
    async with rest(service) as reader_rest, rest(service, OWN_KEY, OWN_SECRET) as own_rest:
        before = await own_rest.send_order(**{**LMT, "limitPrice": 58000}, cliOrdId="own-early")
        await reader_rest.send_order(**{**LMT, "limitPrice": 58001}, cliOrdId="reader-early")
        await wait_for(lambda: len(service.streams[0].view().orders) == 2, 2.0, "both orders in the state")
        async with ws_bot(service) as reader, ws_bot(service, OWN_KEY, OWN_SECRET) as own:
            for bot in (reader, own):
                assert (await bot.subscribe("open_orders"))["event"] == "subscribed"
                assert (await bot.subscribe("fills"))["event"] == "subscribed"
            own_snapshot = await own.expect(lambda m: is_data(m, "open_orders_snapshot"))
            reader_snapshot = await reader.expect(lambda m: is_data(m, "open_orders_snapshot"))
            assert [o["order_id"] for o in own_snapshot["orders"]] == [before["sendStatus"]["order_id"]]
            assert len(reader_snapshot["orders"]) == 2
            mine = await own_rest.send_order(**LMT, cliOrdId="own-1")
            theirs = await reader_rest.send_order(**{**LMT, "limitPrice": 59001}, cliOrdId="reader-1")
            await own_rest.send_order(
                orderType="mkt", symbol="PF_XBTUSD", side="sell", size=1, cliOrdId="own-mkt"
            )
            await reader_rest.send_order(
                orderType="mkt", symbol="PF_XBTUSD", side="sell", size=2, cliOrdId="rd-mkt"
            )
            mine_id, theirs_id = mine["sendStatus"]["order_id"], theirs["sendStatus"]["order_id"]
            await reader.expect(lambda m: is_data(m, "fills") and m["fills"][0]["qty"] == 2)
            await reader.expect(lambda m: is_data(m, "open_orders") and m["order"]["order_id"] == theirs_id)
            await own.expect(lambda m: is_data(m, "open_orders") and m["order"]["order_id"] == mine_id)
            await own.expect(lambda m: is_data(m, "fills"))
            await asyncio.sleep(3.5)  # longer than the hold for deltas whose bot is not known yet
    own_orders = {m.get("order", {}).get("order_id") or m.get("order_id") for m in own.data("open_orders")}
    assert own_orders == {mine_id}
    own_fills = [f for m in own.data("fills") for f in m["fills"]]
    assert [f["qty"] for f in own_fills] == [1]
    reader_orders = {m.get("order", {}).get("order_id") for m in reader.data("open_orders")}
    assert {mine_id, theirs_id} <= reader_orders
    assert sorted(f["qty"] for m in reader.data("fills") for f in m["fills"]) == [1, 2]


async def test_upstream_drop_pauses_the_feeds_and_recovery_sends_fresh_snapshots(
    pair: tuple[Simulator, Service],
) -> None:
    exchange, service = pair
    async with ws_bot(service) as bot, rest(service) as client:
        assert (await bot.subscribe("open_orders"))["event"] == "subscribed"
        assert (await bot.subscribe_public("book", ["PF_XBTUSD"]))["event"] == "subscribed"
        await bot.expect(lambda m: is_data(m, "book_snapshot"))
        exchange.stream.refuse(AUTH_FAILED)  # the private link stays down until accepted again
        exchange.stream.drop_all()
        notices = [await bot.expect(lambda m: m.get("event") == "alert" and "paused" in m["message"])]
        mark = len(bot.messages)
        placed = await client.send_order(**LMT)  # while the stream is down: REST still works
        await asyncio.sleep(0.5)
        assert not [m for _, m in bot.messages[mark:] if is_data(m, "open_orders")], "nothing while down"
        exchange.stream.accept()
        snapshot = await bot.expect(lambda m: is_data(m, "open_orders_snapshot"), timeout_s=8, start=mark)
        assert [o["order_id"] for o in snapshot["orders"]] == [placed["sendStatus"]["order_id"]]
        await bot.expect(lambda m: is_data(m, "book_snapshot"), timeout_s=8, start=mark)
        assert notices
        # and the feeds flow again
        mark = len(bot.messages)
        await client.cancel_order(order_id=placed["sendStatus"]["order_id"])
        await bot.expect(lambda m: is_data(m, "open_orders") and m.get("is_cancel") is True, start=mark)


# ---- public feeds ----------------------------------------------------------------------------------


async def test_public_feeds_share_one_upstream_subscription_and_release_it_after_the_last(
    pair: tuple[Simulator, Service],
) -> None:
    exchange, service = pair
    async with ws_bot(service) as one, ws_bot(service, BLIND_KEY, BLIND_SECRET) as two:
        for bot in (one, two):
            assert (await bot.subscribe_public("book", ["PF_XBTUSD"]))["product_ids"] == ["PF_XBTUSD"]
            assert (await bot.subscribe_public("trade", ["PF_XBTUSD"]))["event"] == "subscribed"
            assert (await bot.subscribe_public("heartbeat"))["feed"] == "heartbeat"
            await bot.expect(lambda m: is_data(m, "book_snapshot"))
            await bot.expect(lambda m: is_data(m, "trade_snapshot"))
        await wait_for(lambda: upstream_public(exchange).get("book") == ["PF_XBTUSD"], 2.0, "book upstream")
        connections = [c for c in exchange.stream.state()["connections"] if c["public"].get("book")]
        assert len(connections) == 1, "one upstream subscription for both bots"
        exchange.exchange.market.set_mark("PF_XBTUSD", Decimal(60100))
        for bot in (one, two):
            await bot.expect(lambda m: is_data(m, "book") and m.get("price") == 60106)
            await bot.expect(lambda m: is_data(m, "heartbeat"))
        await one.ws.send_json({"event": "unsubscribe", "feed": "book", "product_ids": ["PF_XBTUSD"]})
        await one.expect(lambda m: m.get("event") == "unsubscribed")
        await asyncio.sleep(0.3)
        assert upstream_public(exchange).get("book") == ["PF_XBTUSD"], "still wanted by the second bot"
    await wait_for(lambda: not upstream_public(exchange).get("book"), 3.0, "the book released upstream")
    await wait_for(lambda: not upstream_public(exchange).get("trade"), 3.0, "the trades released upstream")


# ---- robustness ------------------------------------------------------------------------------------


class RawSlowBot:
    """A bot on a raw socket with a tiny receive buffer that stops reading: the slowest consumer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws/v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0]

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_to_close(self, timeout_s: float) -> int | None:
        """Read everything until the server's close frame; its code (None: cut without one)."""
        self.sock.settimeout(timeout_s)
        data = self.buffer
        try:
            while True:
                code = _close_code(data)
                if code is not None:
                    return code
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return _close_code(data)
                data += chunk
        except (ConnectionError, TimeoutError):
            return _close_code(data)
        finally:
            self.sock.close()


def _close_code(data: bytes) -> int | None:
    at = 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack(">H", data[at : at + 2])
            at += 2
        elif length == 127:
            (length,) = struct.unpack(">Q", data[at : at + 8])
            at += 8
        if at + length > len(data):
            return None
        if opcode == 0x8:
            return int(struct.unpack(">H", data[at : at + 2])[0])
        at += length
    return None


async def test_a_slow_consumer_is_dropped_with_1013_and_the_others_are_not_delayed(
    pair: tuple[Simulator, Service],
) -> None:
    """A bot that stops reading never holds up the others or the upstream: with its queue made large
    enough that it is not given up, the fast bots get every delta while it sits thousands of messages
    behind (a relay that waited on it would stall once its socket's few kilobytes were full). Then its
    queue's limit is what it is in production, and it is dropped with 1013. The fast bots' delays are
    printed, not asserted: timing is the benchmark's job (bench/relay_latency.py), not a shared CI's."""
    exchange, service = pair
    service.relay.queue_size = 100_000
    service.relay.send_buffer_bytes = 8192
    port = int(service.url.rsplit(":", 1)[1])
    slow = await asyncio.to_thread(RawSlowBot, port)
    with capture_logs() as logs:
        await asyncio.to_thread(
            slow.send_text, '{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}'
        )
        [slow_conn] = await wait_for(
            lambda: [c for c in service.relay.connections if c.public] or None, 3.0, "the slow bot subscribed"
        )
        async with ws_bot(service) as fast_a, ws_bot(service, OWN_KEY, OWN_SECRET) as fast_b:
            fast = (fast_a, fast_b)
            for bot in fast:
                await bot.subscribe_public("book", ["PF_XBTUSD"])
                await bot.expect(lambda m: is_data(m, "book_snapshot"))
            for i in range(100):  # each move replaces levels: about 25 book deltas
                exchange.exchange.market.set_mark("PF_XBTUSD", Decimal(60000 + 20 * (i % 2)))
                await asyncio.sleep(0.04)

            def deltas(bot: WsBot) -> list[tuple[object, object, object]]:
                return [(m["side"], m["price"], m["qty"]) for _, m in bot.messages if is_data(m, "book")]

            await wait_for(
                lambda: len(deltas(fast_a)) >= 2400 and deltas(fast_a) == deltas(fast_b), 20.0, "every delta"
            )
            behind = slow_conn.queued
            assert slow_conn.reason is None and behind > 0, f"the slow bot, stuck all along ({behind})"
            delays = [d for bot in fast for d in _arrival_delays_ms(bot)]
            slow_conn.limit = 50  # production's rule: so far behind is given up at the next message
            exchange.exchange.market.set_mark("PF_XBTUSD", Decimal(60040))
            await wait_for(lambda: slow_conn.reason == "slow_consumer", 5.0, "the slow bot given up")
            assert slow_conn.bot is None and slow_conn.queued == 0  # its backlog is let go at once
            code = await asyncio.to_thread(slow.read_to_close, 10.0)  # it reads again: the close is next
            await wait_for(lambda: len(service.relay.connections) == 2, 10.0, "the slow bot gone")
    assert code == 1013
    assert exchange.stream.overflowed == 0  # guardian's upstream kept reading the exchange all along
    p99 = statistics.quantiles(delays, n=100)[98]
    print(
        f"fast bots' delay from the exchange's timestamp, a stuck bot {behind} messages behind: "
        f"p50 {statistics.median(delays):.1f} ms, p99 {p99:.1f} ms"
    )
    closed = [e for e in logs if e["event"] == "relay_connection_closed"]
    assert closed and closed[0]["reason"] == "slow_consumer" and closed[0]["log_level"] == "warning"
    counted = ("guardian_ws_disconnects_total", frozenset({("reason", "slow_consumer")}))
    async with aiohttp.ClientSession() as http:  # counted once the connection's ending has run its course

        async def disconnect_counted() -> bool:
            return (await scrape(http, service.url)).get(counted) == 1

        await wait_for(disconnect_counted, 10.0, "the slow consumer's disconnect counted")


async def test_a_bot_that_never_reads_again_is_cut_after_the_close_grace(
    pair: tuple[Simulator, Service],
) -> None:
    from guardian.relay.server import CLOSE_WAIT_S

    exchange, service = pair
    service.relay.queue_size = 50
    service.relay.send_buffer_bytes = 8192
    stuck = await asyncio.to_thread(RawSlowBot, int(service.url.rsplit(":", 1)[1]))
    try:
        await asyncio.to_thread(
            stuck.send_text, '{"event":"subscribe","feed":"book","product_ids":["PF_XBTUSD"]}'
        )
        await wait_for(
            lambda: len(service.relay.connections) == 1 and upstream_public(exchange).get("book"), 3.0, "on"
        )
        for i in range(150):
            exchange.exchange.market.set_mark("PF_XBTUSD", Decimal(60000 + 20 * (i % 2)))
            await asyncio.sleep(0.06)
            if any(c.reason for c in service.relay.connections):
                break
        given_up = time.monotonic()
        await wait_for(
            lambda: any(c.reason for c in service.relay.connections), 5.0, "the stuck bot given up"
        )
        await wait_for(lambda: not service.relay.connections, CLOSE_WAIT_S + 2.0, "the stuck bot cut")
        assert time.monotonic() - given_up <= CLOSE_WAIT_S + 2.0
        # and the upstream subscription it held is released
        await wait_for(lambda: not upstream_public(exchange).get("book"), 3.0, "the book released")
    finally:
        stuck.sock.close()


def _arrival_delays_ms(bot: object) -> list[float]:
    """Each book delta's arrival against the exchange's timestamp on it (wall clock, ms)."""
    assert isinstance(bot, WsBot)
    offset = time.time() - time.monotonic()
    return [(t + offset) * 1000 - m["timestamp"] for t, m in bot.messages if is_data(m, "book")]


async def test_connection_limits_per_bot_and_in_total_close_with_1013(
    pair: tuple[Simulator, Service],
) -> None:
    _, service = pair
    async with contextlib.AsyncExitStack() as stack:
        owns = [await stack.enter_async_context(ws_bot(service, OWN_KEY, OWN_SECRET)) for _ in range(4)]
        for bot in owns[:3]:
            assert (await bot.subscribe("balances"))["event"] == "subscribed"
        await owns[3].authenticate()
        await owns[3].ws.send_json({"event": "subscribe", "feed": "balances", **owns[3].auth()})
        await wait_for(lambda: owns[3].closed, 3.0, "the fourth connection of own-bot closed")
        assert owns[3].ws.close_code == 1013
        # Told why before the close, as Kraken tells a refused private subscription.
        assert {"event": "alert", "message": AUTH_FAILED} in [m for _, m in owns[3].messages]
        service.relay.max_connections = len(service.relay.connections)
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(service)) as ws:
            frame = await ws.receive(timeout=3)
            assert frame.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1013
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
    assert found[("guardian_ws_disconnects_total", frozenset({("reason", "bot_connection_limit")}))] == 1
    assert found[("guardian_ws_disconnects_total", frozenset({("reason", "connection_limit")}))] == 1


async def test_more_than_100_requests_a_second_are_refused(pair: tuple[Simulator, Service]) -> None:
    _, service = pair
    async with ws_bot(service) as bot:
        for _ in range(150):
            await bot.ws.send_json({"event": "subscribe", "feed": "heartbeat"})
        await wait_for(lambda: len(bot.messages) >= 151, 3.0, "150 answers")
        answers = [m for _, m in bot.messages[1:]]
        assert sum(1 for m in answers if m.get("event") == "subscribed") == 100
        assert sum(1 for m in answers if m == {"event": "error", "message": "Rate limit exceeded"}) == 50


async def test_metrics_and_the_state_list_connected_bots_and_their_feeds(
    pair: tuple[Simulator, Service],
) -> None:
    _, service = pair
    async with (
        ws_bot(service) as bot,
        ws_bot(service, OWN_KEY, OWN_SECRET) as own,
        ws_bot(service, None, None),
    ):
        await bot.subscribe("open_orders")
        await bot.subscribe_public("ticker", ["PF_XBTUSD"])
        await own.subscribe("fills")
        async with aiohttp.ClientSession() as http:
            found = await scrape(http, service.url)
            status, state = await get_json(http, service.url + "/guardian/state")
    assert status == 200
    assert found[("guardian_ws_clients", frozenset({("account", "main"), ("bot", "reader-bot")}))] == 1
    assert found[("guardian_ws_clients", frozenset({("account", "main"), ("bot", "own-bot")}))] == 1
    assert found[("guardian_ws_clients", frozenset({("account", "main"), ("bot", "blind-bot")}))] == 0
    assert found[("guardian_ws_clients", frozenset({("account", "-"), ("bot", "-")}))] == 1
    assert found[("guardian_ws_messages_total", frozenset({("feed", "open_orders")}))] >= 1
    listed = {(c["bot"], tuple(c["feeds"])) for c in state["relay"]["connections"]}
    assert listed == {
        ("reader-bot", ("open_orders", "ticker:PF_XBTUSD")),
        ("own-bot", ("fills",)),
        (None, ()),
    }


async def test_200_concurrent_subscribers_all_get_every_delta(pair: tuple[Simulator, Service]) -> None:
    _, service = pair
    async with contextlib.AsyncExitStack() as stack:
        bots = await asyncio.gather(*(stack.enter_async_context(ws_bot(service)) for _ in range(200)))
        acks = await asyncio.gather(*(bot.subscribe("open_orders") for bot in bots))
        assert all(a["event"] == "subscribed" for a in acks)
        async with rest(service) as client:
            sent = time.monotonic()
            placed = await client.send_order(**LMT)
        order_id = placed["sendStatus"]["order_id"]
        got = await asyncio.gather(
            *(
                bot.expect(
                    lambda m: is_data(m, "open_orders") and m["order"]["order_id"] == order_id, timeout_s=10.0
                )
                for bot in bots
            )
        )
        assert len(got) == 200
        arrivals = sorted(
            next(t for t, m in bot.messages if is_data(m, "open_orders")) - sent for bot in bots
        )
        print(
            f"200 subscribers: first {arrivals[0] * 1000:.1f} ms, last {arrivals[-1] * 1000:.1f} ms after the order"
        )
        assert service.relay.counts()[("main", "reader-bot")] == 200
