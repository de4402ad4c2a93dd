"""The simulator's WebSocket v1 on a real loopback socket, spoken to by a plain aiohttp client with real
signatures: the protocol (info, challenge, acks, errors, alerts, pings), every private feed's snapshot
and deltas against what REST reads say, and the stream controls (notices, drop, stall, refuse auth).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.signing import sign_challenge, verify_challenge
from guardian.secret import ApiSecret
from guardian.sim.app import Simulator
from guardian.sim.ws import StreamSettings
from tests.conftest import READ_KEY, READ_SECRET, TRADE_KEY, TRADE_SECRET, running_sim

SYM = "PF_XBTUSD"  # mark 60000, bid 59994, ask 60006, tick 0.5
PRIVATE = ("open_orders", "open_orders_verbose", "open_positions", "fills", "balances", "notifications_auth")


class Stream:
    """A raw WebSocket client: sends JSON, reads JSON, skips what a test did not ask about."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, key: str, secret: str) -> None:
        self.ws = ws
        self.key = key
        self.secret = secret
        self.challenge = ""

    async def send(self, doc: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(doc))

    async def recv(self, wait_s: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=wait_s)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        doc = json.loads(msg.data)
        assert isinstance(doc, dict)
        return doc

    async def next(
        self, feed: str | None = None, event: str | None = None, wait_s: float = 5.0
    ) -> dict[str, Any]:
        """The next message of `feed` (or with `event`), skipping heartbeats, tickers and the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            doc = await self.recv(max(0.01, deadline - loop.time()))
            if feed is not None and doc.get("feed") == feed and "event" not in doc:
                return doc
            if event is not None and doc.get("event") == event:
                return doc

    async def authenticate(self) -> str:
        await self.send({"event": "challenge", "api_key": self.key})
        reply = await self.next(event="challenge")
        self.challenge = reply["message"]
        return self.challenge

    def auth(self) -> dict[str, str]:
        signed = sign_challenge(base64.b64decode(self.secret), self.challenge)
        return {"api_key": self.key, "original_challenge": self.challenge, "signed_challenge": signed}

    async def subscribe(self, feed: str) -> dict[str, Any]:
        """Subscribe to a private feed; returns its snapshot (after checking the exact ack)."""
        if not self.challenge:
            await self.authenticate()
        await self.send({"event": "subscribe", "feed": feed, **self.auth()})
        assert await self.recv() == {"event": "subscribed", "feed": feed}
        return await self.recv()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(
    sim: Simulator, http: aiohttp.ClientSession, key: str = TRADE_KEY, secret: str = TRADE_SECRET
) -> Stream:
    ws = await http.ws_connect(sim.ws_url, autoping=False)
    stream = Stream(ws, key, secret)
    assert await stream.recv() == {"event": "info", "version": 1}
    return stream


async def control(http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, **doc: Any) -> Any:
    async with http.request(method, f"{sim.url}/_sim{path}", json=doc) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture
async def kraken(sim: Simulator) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


async def order(kraken: KrakenClient, **fields: str) -> dict[str, Any]:
    params = {"orderType": "lmt", "symbol": SYM, "side": "buy", "size": "1", **fields}
    return dict((await kraken.request("sendorder", params))["sendStatus"])


# ---- signing --------------------------------------------------------------------------------------
def test_signed_challenge_matches_krakens_golden_vector() -> None:
    secret = "7zxMEF5p/Z8l2p2U7Ghv6x14Af+Fx+92tPgUdVQ748FOIrEoT9bgT+bTRfXc5pz8na+hL/QdrCVG7bh9KpT0eMTm"
    challenge = "c100b894-1729-464d-ace1-52dbce11db42"
    expected = "4JEpF3ix66GA2B+ooK128Ift4XQVtc137N9yeg4Kqsn9PI0Kpzbysl9M1IeCEdjg0zl00wkVqcsnG4bmnlMb3A=="

    assert sign_challenge(base64.b64decode(secret), challenge) == expected
    assert verify_challenge(base64.b64decode(secret), challenge, expected)
    assert not verify_challenge(base64.b64decode(secret), challenge, expected[:-4] + "AAA=")
    assert not verify_challenge(base64.b64decode(secret), challenge, None)
    assert not verify_challenge(base64.b64decode(secret), challenge, "é" * 88)


# ---- protocol -------------------------------------------------------------------------------------
async def test_connect_says_info_and_a_challenge_is_a_fresh_uuid(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    stream = await connect(sim, http)
    first = await stream.authenticate()
    second = await stream.authenticate()

    assert str(uuid.UUID(first)) == first and first != second


async def test_private_ack_is_only_event_and_feed_then_the_snapshot(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    resting = await order(kraken, limitPrice="59000", cliOrdId="bot-1")
    stream = await connect(sim, http)

    snapshot = await stream.subscribe("open_orders")

    assert snapshot["feed"] == "open_orders_snapshot" and snapshot["account"] == "main"
    [row] = snapshot["orders"]
    assert row == {
        "instrument": SYM,
        "time": row["time"],
        "last_update_time": row["time"],
        "qty": 1,
        "filled": 0,
        "limit_price": 59000,
        "stop_price": 0,
        "type": "limit",
        "order_id": resting["order_id"],
        "direction": 0,
        "reduce_only": False,
        "cli_ord_id": "bot-1",
    }
    assert (await stream.subscribe("open_orders_verbose"))["feed"] == "open_orders_verbose_snapshot"
    positions = await stream.subscribe("open_positions")
    assert (positions["feed"], positions["positions"]) == ("open_positions", [])
    assert (await stream.subscribe("fills"))["feed"] == "fills_snapshot"
    balances = await stream.subscribe("balances")
    assert balances["feed"] == "balances_snapshot" and set(balances) >= {
        "holding",
        "futures",
        "flex_futures",
        "seq",
    }
    assert await stream.subscribe("notifications_auth") == {"feed": "notifications_auth", "notifications": []}


async def test_a_read_only_key_may_stream(sim: Simulator, http: aiohttp.ClientSession) -> None:
    stream = await connect(sim, http, READ_KEY, READ_SECRET)
    assert (await stream.subscribe("fills"))["feed"] == "fills_snapshot"


async def test_bad_signature_unknown_key_and_foreign_challenge_get_the_alert(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    alert = {"event": "alert", "message": "Failed to subscribe to authenticated feed"}
    stream = await connect(sim, http)
    await stream.authenticate()
    good = stream.auth()

    await stream.send({"event": "subscribe", "feed": "fills", **good, "signed_challenge": "A" * 88})
    assert await stream.recv() == alert
    await stream.send({"event": "subscribe", "feed": "fills", **good, "api_key": "nobody"})
    assert await stream.recv() == alert
    await stream.send({"event": "subscribe", "feed": "fills", "api_key": TRADE_KEY})  # no challenge at all
    assert await stream.recv() == alert

    other = await connect(sim, http)  # a challenge is good only on the connection that asked for it
    await other.send({"event": "subscribe", "feed": "fills", **good})
    assert await other.recv() == alert
    # and a wrong secret signs the right challenge wrongly
    wrong = await connect(sim, http, TRADE_KEY, READ_SECRET)
    await wrong.authenticate()
    await wrong.send({"event": "subscribe", "feed": "fills", **wrong.auth()})
    assert await wrong.recv() == alert
    # the good subscription still works after all that
    await stream.send({"event": "subscribe", "feed": "fills", **good})
    assert await stream.recv() == {"event": "subscribed", "feed": "fills"}


async def test_unknown_feed_product_and_junk_get_the_documented_errors(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    stream = await connect(sim, http)
    for request, message in (
        ({"event": "subscribe", "feed": "nope"}, "Invalid feed"),
        ({"event": "subscribe", "feed": "ticker", "product_ids": ["PF_NOPE"]}, "Invalid product id"),
        ({"event": "subscribe", "feed": "ticker"}, "Invalid product id"),
        ({"event": "subscribe", "feed": "book", "product_ids": "PF_XBTUSD"}, "Invalid product id"),
        ({"event": "subscribe"}, "Json Error"),
        ({"event": "dance"}, "Json Error"),
        ({"event": "challenge"}, "Json Error"),
        ([1, 2], "Json Error"),
    ):
        await stream.send(request)  # type: ignore[arg-type]
        assert await stream.recv() == {"event": "error", "message": message}, request
    await stream.ws.send_str("{not json")
    assert await stream.recv() == {"event": "error", "message": "Json Error"}
    await stream.ws.send_bytes(b"\x00\x01")
    assert await stream.recv() == {"event": "error", "message": "Json Error"}
    # still serving
    await stream.send({"event": "subscribe", "feed": "heartbeat"})
    assert await stream.recv() == {"event": "subscribed", "feed": "heartbeat"}


async def test_protocol_ping_is_answered_with_a_pong(sim: Simulator, http: aiohttp.ClientSession) -> None:
    stream = await connect(sim, http)
    await stream.ws.ping(b"are-you-there")
    msg = await stream.ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are-you-there")


async def test_more_than_100_requests_a_second_are_refused(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    stream = await connect(sim, http)
    for _ in range(101):
        await stream.send({"event": "challenge", "api_key": TRADE_KEY})
    replies = [await stream.recv() for _ in range(101)]
    assert [r["event"] for r in replies[:100]] == ["challenge"] * 100
    assert replies[100] == {"event": "error", "message": "Rate limit exceeded"}


async def test_public_acks_echo_product_ids_and_ticker_carries_mark_and_suspended(
    http: aiohttp.ClientSession,
) -> None:
    async with running_sim(stream=StreamSettings(ticker_s=0.05, heartbeat_s=0.2)) as sim:
        stream = await connect(sim, http)
        await stream.send({"event": "subscribe", "feed": "ticker", "product_ids": [SYM]})
        assert await stream.recv() == {"event": "subscribed", "feed": "ticker", "product_ids": [SYM]}
        ticker = await stream.recv()
        assert ticker["feed"] == "ticker" and ticker["product_id"] == SYM
        assert (ticker["markPrice"], ticker["bid"], ticker["ask"], ticker["suspended"]) == (
            60000,
            59994,
            60006,
            False,
        )
        assert {
            "time",
            "last",
            "index",
            "post_only",
            "leverage",
            "pair",
            "funding_rate",
            "openInterest",
        } <= set(ticker)

        await control(http, sim, "POST", "/suspend", symbol=SYM)
        assert (await stream.next("ticker"))["suspended"] is True
        await control(http, sim, "POST", "/mark", symbol=SYM, price=61000)
        assert (await stream.next("ticker"))["markPrice"] == 61000

        await stream.send({"event": "subscribe", "feed": "heartbeat"})
        beat = await stream.next("heartbeat")
        assert set(beat) == {"feed", "time"}

        await stream.send({"event": "subscribe", "feed": "ticker_lite", "product_ids": ["PF_ETHUSD"]})
        lite = await stream.next("ticker_lite")
        assert lite["product_id"] == "PF_ETHUSD" and "markPrice" not in lite

        await stream.send({"event": "subscribe", "feed": "book", "product_ids": [SYM]})
        book = await stream.next("book_snapshot")
        assert book["bids"][0] == {"price": 60994, "qty": 10} and book["asks"][0]["price"] == 61006
        await control(http, sim, "POST", "/mark", symbol=SYM, price=61010)
        update = await stream.next("book")
        assert update["product_id"] == SYM and update["seq"] == book["seq"] + 1

        await stream.send({"event": "unsubscribe", "feed": "ticker", "product_ids": [SYM]})
        assert await stream.next(event="unsubscribed") == {
            "event": "unsubscribed",
            "feed": "ticker",
            "product_ids": [SYM],
        }


# ---- private deltas ---------------------------------------------------------------------------------
async def all_feeds(sim: Simulator, http: aiohttp.ClientSession) -> Stream:
    stream = await connect(sim, http)
    for feed in PRIVATE:
        await stream.subscribe(feed)
    return stream


async def test_order_lifecycle_partial_then_full_fill_with_fees_matches_rest(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        running_sim(book_depth=Decimal(1), maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.0005")) as sim,
        KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as kraken,
    ):
        stream = await all_feeds(sim, http)
        # 3 contracts through two levels of depth 1 (60006, 60006.5): 2 fill as taker, 1 rests.
        placed = await order(kraken, size="3", limitPrice="60006.5", cliOrdId="walk")

        fills = [await stream.next("fills"), await stream.next("fills")]
        assert [(f["username"], f["fills"][0]["price"], f["fills"][0]["qty"]) for f in fills] == [
            ("main", 60006, 1),
            ("main", 60006.5, 1),
        ]
        first = fills[0]["fills"][0]
        assert first["fill_type"] == "taker" and first["cli_ord_id"] == "walk"
        assert first["fee_paid"] == pytest.approx(60006 * 0.0005) and first["fee_currency"] == "USD"
        assert first["remaining_order_qty"] == 2 and first["buy"] is True
        assert [f["fills"][0]["seq"] for f in fills] == [1, 2]
        rested = await stream.next("open_orders")
        assert rested["reason"] == "partial_fill" and rested["is_cancel"] is False
        assert (rested["order"]["qty"], rested["order"]["filled"]) == (1, 2)  # qty: what remains

        positions = await stream.next("open_positions")
        assert [(p["instrument"], p["balance"], p["entry_price"]) for p in positions["positions"]] == [
            (SYM, 2, 60006.25)
        ]
        rest_orders = (await kraken.request("openorders"))["openOrders"]
        assert [(o["order_id"], o["unfilledSize"], o["filledSize"]) for o in rest_orders] == [
            (placed["order_id"], 1, 2)
        ]

        # The market moves through the resting order: it fills as maker, and leaves with the whole order.
        await control(http, sim, "POST", "/mark", symbol=SYM, price=59000)
        maker = (await stream.next("fills"))["fills"][0]
        assert (maker["fill_type"], maker["price"], maker["qty"]) == ("maker", 60006.5, 1)
        assert maker["fee_paid"] == pytest.approx(60006.5 * 0.0002)
        done = await stream.next("open_orders")
        assert (done["is_cancel"], done["reason"]) == (True, "full_fill")
        assert (done["order"]["order_id"], done["order"]["qty"], done["order"]["filled"]) == (
            placed["order_id"],
            0,
            3,
        )

        # What the stream says now equals what REST says.
        balances = await stream.next("balances")
        while True:  # the last balances message after the move
            try:
                balances = await stream.next("balances", wait_s=0.3)
            except TimeoutError:
                break
        account = (await kraken.request("accounts"))["accounts"]["flex"]
        flex = balances["flex_futures"]
        assert flex["available_margin"] == pytest.approx(account["availableMargin"])
        assert flex["portfolio_value"] == pytest.approx(account["portfolioValue"])
        assert flex["currencies"]["USD"]["quantity"] == pytest.approx(
            account["currencies"]["USD"]["quantity"]
        )
        fees = 60006 * 0.0005 + 60006.5 * 0.0005 + 60006.5 * 0.0002
        assert account["currencies"]["USD"]["quantity"] == pytest.approx(100_000 - fees)
        [rest_position] = (await kraken.request("openpositions"))["openPositions"]
        assert (rest_position["size"], rest_position["price"]) == (
            3,
            pytest.approx((60006 + 60006.5 * 2) / 3),
        )


async def test_taker_that_fills_at_once_shows_only_as_fills(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await all_feeds(sim, http)
    await order(kraken, orderType="mkt")
    await stream.next("fills")
    await stream.next("open_positions")
    await stream.next("balances")
    await order(kraken, limitPrice="59000")  # the next open_orders message is this one's
    assert (await stream.next("open_orders"))["reason"] == "new_placed_order_by_user"


async def test_cancel_carries_order_id_and_cli_ord_id_and_verbose_shows_rejections(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await all_feeds(sim, http)
    placed = await order(kraken, limitPrice="59000", cliOrdId="mine")
    assert (await stream.next("open_orders"))["reason"] == "new_placed_order_by_user"
    assert (await stream.next("open_orders_verbose"))["reason"] == "new_placed_order_by_user"

    await kraken.request("cancelorder", {"order_id": placed["order_id"]})

    assert await stream.next("open_orders") == {
        "feed": "open_orders",
        "order_id": placed["order_id"],
        "cli_ord_id": "mine",
        "is_cancel": True,
        "reason": "cancelled_by_user",
    }
    await stream.next("open_orders_verbose")
    rejected = await order(kraken, orderType="post", limitPrice="60100")
    assert rejected["status"] == "postWouldExecute"
    verbose = await stream.next("open_orders_verbose")
    assert (verbose["is_cancel"], verbose["reason"]) == (True, "post_order_failed_because_it_would_be_filled")
    edited_first = await order(kraken, limitPrice="58000")
    await kraken.request("editorder", {"orderId": edited_first["order_id"], "limitPrice": "58500"})
    assert (await stream.next("open_orders"))["reason"] == "new_placed_order_by_user"  # not the rejected post
    edited = await stream.next("open_orders")
    assert (edited["reason"], edited["order"]["limit_price"]) == ("edited_by_user", 58500)


async def test_dead_man_switch_cancels_show_reason_dead_man_switch(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await all_feeds(sim, http)
    first = await order(kraken, limitPrice="59000")
    second = await order(kraken, side="sell", limitPrice="61000", cliOrdId="s")
    await kraken.request("cancelallordersafter", {"timeout": "1"})

    seen = []
    while len(seen) < 2:
        message = await stream.next("open_orders", wait_s=5)
        if message["is_cancel"]:
            seen.append(message)

    assert [(m["order_id"], m["reason"]) for m in seen] == [
        (first["order_id"], "dead_man_switch"),
        (second["order_id"], "dead_man_switch"),
    ]
    assert seen[1]["cli_ord_id"] == "s" and "order" not in seen[1]


async def test_dead_man_switch_cancels_can_carry_the_whole_order(http: aiohttp.ClientSession) -> None:
    settings = StreamSettings(full_order_on_cancel=frozenset({"dead_man_switch"}))
    async with running_sim(stream=settings) as sim:
        stream = await all_feeds(sim, http)
        sim.exchange.send_order(
            sim.exchange.accounts["main"],
            {"orderType": "lmt", "symbol": SYM, "side": "buy", "size": "1", "limitPrice": "59000"},
        )
        await stream.next("open_orders")
        sim.exchange.fire_switch(sim.exchange.accounts["main"])
        message = await stream.next("open_orders")
        assert (message["reason"], message["is_cancel"], message["order"]["limit_price"]) == (
            "dead_man_switch",
            True,
            59000,
        )


async def test_closed_position_is_streamed_once_with_balance_zero(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await all_feeds(sim, http)
    await order(kraken, orderType="mkt")
    assert [p["balance"] for p in (await stream.next("open_positions"))["positions"]] == [1]
    await order(kraken, orderType="mkt", side="sell")
    closed = await stream.next("open_positions")
    assert [(p["instrument"], p["balance"]) for p in closed["positions"]] == [(SYM, 0)]
    await order(kraken, limitPrice="59000")
    assert (await stream.next("open_positions"))["positions"] == []
    assert (await kraken.request("openpositions"))["openPositions"] == []
    realized = sim.exchange.accounts["main"].realized_pnl
    assert realized == Decimal(0)  # mkt orders fill at the mark both ways with unlimited depth


async def test_notice_reaches_the_feed_and_rest_notifications(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await all_feeds(sim, http)
    posted = await control(
        http,
        sim,
        "POST",
        "/notices",
        note="Scheduled maintenance",
        type="maintenance",
        priority="high",
        effective_time="2030-01-01T00:00:00Z",
        expected_downtime_minutes=30,
    )

    delta = await stream.next("notifications_auth")
    assert delta == {"feed": "notifications_auth", "notifications": [posted["notice"]]}
    assert posted["notice"] == {
        "id": 1,
        "type": "maintenance",
        "priority": "high",
        "note": "Scheduled maintenance",
        "effective_time": 1893456000000,
        "expected_downtime_minutes": 30,
    }
    rest = await kraken.request("notifications")
    assert rest["notifications"] == [
        {
            "type": "maintenance",
            "priority": "high",
            "note": "Scheduled maintenance",
            "effectiveTime": "2030-01-01T00:00:00.000Z",
            "expectedDowntimeMinutes": 30,
        }
    ]
    again = await connect(sim, http)
    assert (await again.subscribe("notifications_auth"))["notifications"] == [posted["notice"]]
    async with http.post(f"{sim.url}/_sim/notices", json={"note": "x", "priority": "urgent"}) as bad:
        assert bad.status == 400


async def test_resubscribe_gives_a_fresh_snapshot(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await connect(sim, http)
    assert (await stream.subscribe("open_orders"))["orders"] == []
    await stream.send({"event": "unsubscribe", "feed": "open_orders", **stream.auth()})
    assert await stream.recv() == {"event": "unsubscribed", "feed": "open_orders"}
    placed = await order(kraken, limitPrice="59000")

    again = await stream.subscribe("open_orders")

    assert [o["order_id"] for o in again["orders"]] == [placed["order_id"]]
    await stream.send({"event": "subscribe", "feed": "open_orders", **stream.auth()})
    assert await stream.recv() == {"event": "alert", "message": "Already subscribed to feed, re-requesting"}
    assert [o["order_id"] for o in (await stream.recv())["orders"]] == [placed["order_id"]]


# ---- controls -------------------------------------------------------------------------------------
async def test_refused_auth_alerts_with_the_reason_until_accepted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    await control(http, sim, "POST", "/ws/refuse", reason="account under review")
    stream = await connect(sim, http)
    await stream.authenticate()
    await stream.send({"event": "subscribe", "feed": "fills", **stream.auth()})
    assert await stream.recv() == {"event": "alert", "message": "account under review"}

    await control(http, sim, "DELETE", "/ws/refuse")
    await stream.send({"event": "subscribe", "feed": "fills", **stream.auth()})
    assert await stream.recv() == {"event": "subscribed", "feed": "fills"}


async def test_drop_closes_every_socket_and_clients_can_reconnect(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    streams = [await connect(sim, http), await connect(sim, http)]
    dropped = await control(http, sim, "POST", "/ws/drop")
    assert dropped == {"dropped": 2}
    for stream in streams:
        msg = await stream.ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    clean = await connect(sim, http)
    await control(http, sim, "POST", "/ws/drop", mode="close")
    msg = await clean.ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    again = await connect(sim, http)
    assert (await again.subscribe("fills"))["feed"] == "fills_snapshot"
    state = await control(http, sim, "GET", "/ws")
    assert state["dropped_total"] == 3 and len(state["connections"]) == 1


async def test_stall_withholds_messages_and_pongs_until_resumed(
    sim: Simulator, http: aiohttp.ClientSession, kraken: KrakenClient
) -> None:
    stream = await connect(sim, http)
    await stream.subscribe("open_orders")
    await control(http, sim, "POST", "/ws/stall")

    await stream.ws.ping(b"hello")
    placed = await order(kraken, limitPrice="59000")
    with pytest.raises(TimeoutError):
        await stream.ws.receive(timeout=0.5)  # no pong, no delta

    await control(http, sim, "DELETE", "/ws/stall")
    kinds = [await stream.ws.receive(timeout=5), await stream.ws.receive(timeout=5)]
    assert {m.type for m in kinds} == {aiohttp.WSMsgType.PONG, aiohttp.WSMsgType.TEXT}
    text = next(m for m in kinds if m.type == aiohttp.WSMsgType.TEXT)
    assert json.loads(text.data)["order"]["order_id"] == placed["order_id"]


async def test_a_slow_subscriber_is_cut_off_without_holding_the_exchange(http: aiohttp.ClientSession) -> None:
    async with (
        running_sim(stream=StreamSettings(queue_size=8)) as sim,
        KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as kraken,
    ):
        slow = await connect(sim, http)
        await slow.subscribe("open_orders")
        await control(http, sim, "POST", "/ws/stall")  # the link stops draining: the queue fills
        for i in range(12):
            assert (await order(kraken, limitPrice=str(59000 - i)))["status"] == "placed"
        assert len((await kraken.request("openorders"))["openOrders"]) == 12
        await control(http, sim, "DELETE", "/ws/stall")

        delivered = 0  # at most what the writer held when the link stalled, then the close
        while (msg := await slow.ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            delivered += 1
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        assert delivered <= 1
        assert sim.exchange.bus.overflows == 1 and sim.stream.overflowed == 1
        fresh = await connect(sim, http)
        assert len((await fresh.subscribe("open_orders"))["orders"]) == 12
