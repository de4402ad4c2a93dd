"""The simulator's WebSocket v1 (`/ws/v1`), as Kraken Futures serves it (see kraken-futures-ws.md).

On connect the server says `{"event":"info","version":1}`. A client asks for a challenge
(`{"event":"challenge","api_key":K}` -> `{"event":"challenge","message":UUID}`) and signs it; every private
subscribe carries `api_key`, `original_challenge` and `signed_challenge`. Acks are `subscribed`,
`unsubscribed` (public ones echo `product_ids`), each followed by the feed's snapshot; errors are
`{"event":"error","message":"Invalid feed" | "Invalid product id" | "Json Error"}` and a refused
private subscribe is `{"event":"alert","message":"Failed to subscribe to authenticated feed"}`.
Protocol pings are answered (by hand, so that a stall can withhold the pongs too).

Each connection holds one bounded subscription to the exchange's event bus. Everything it sends
(acks, snapshots, deltas, tickers, heartbeats) goes through that one queue, so it leaves in the order it
was produced; a connection whose queue overflows is closed (code 1008) rather than allowed to hold the
exchange back. The controls (`drop_all`, `stall`, `resume`, `refuse`, `accept`) act on every connection;
the fault table's `stall` fault (endpoint `ws`) stalls them all while it is set (`follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from guardian.kraken.signing import verify_challenge
from guardian.kraken.times import parse_iso
from guardian.sim import feeds
from guardian.sim.events import Event, Overflow, Subscription
from guardian.sim.faults import FaultTable

if TYPE_CHECKING:
    from guardian.sim.app import SimKey
    from guardian.sim.exchange import Exchange

log = structlog.get_logger("guardian.sim.ws")

AUTH_FAILED = "Failed to subscribe to authenticated feed"
ALREADY_SUBSCRIBED = "Already subscribed to feed, re-requesting"
MAX_MESSAGE = 64 * 1024
CHALLENGES_KEPT = 64  # per connection
TRADES_IN_SNAPSHOT = 100


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How the simulated stream behaves where Kraken's behaviour is unconfirmed or a test wants it fast."""

    heartbeat_s: float = 5.0  # `heartbeat` feed interval (unconfirmed on Kraken)
    ticker_s: float = 1.0  # ticker / ticker_lite / book updates at most this often (Kraken: 1 s)
    request_rate: int = 100  # requests a connection may send per second (Kraken: 100)
    queue_size: int = 10_000  # messages a connection may fall behind before it is closed
    # Cancels with these reasons carry the whole order instead of only order_id / cli_ord_id. Kraken's
    # user cancels carry only the ids (observed); the dead man's switch's shape is unconfirmed.
    full_order_on_cancel: frozenset[str] = frozenset()
    # A challenge is good only on the connection that asked for it (unconfirmed; off: on any).
    challenge_per_connection: bool = True

    def __post_init__(self) -> None:
        if not 0.01 <= self.heartbeat_s <= 3600 or not 0.01 <= self.ticker_s <= 3600:
            raise ValueError("heartbeat_s and ticker_s must be between 0.01 and 3600 seconds")
        if self.request_rate < 1 or self.queue_size < 1:
            raise ValueError("request_rate and queue_size must be positive")


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message a connection produced itself (ack, snapshot, error, ticker, heartbeat)."""

    message: Mapping[str, Any]


@dataclass(slots=True)
class PrivateFeed:
    account: str
    since: int  # bus seq the snapshot covered: later events are deltas
    products: frozenset[str] | None = None  # fills only


@dataclass(slots=True)
class PublicFeed:
    products: set[str] = field(default_factory=set)


class StreamServer:
    """Every `/ws/v1` connection of one simulator, and the controls that act on all of them."""

    def __init__(
        self,
        exchange: Exchange,
        keys: Mapping[str, SimKey],
        settings: StreamSettings,
        faults: FaultTable | None = None,
    ) -> None:
        self.exchange = exchange
        self.keys = keys
        self.settings = settings
        self._fault_stall = False  # stalled by a `stall` fault (cleared with it), not by the control
        if faults is not None:
            faults.watch(lambda: self.follow(faults))
        self.connections: set[Connection] = set()
        self.challenges: dict[str, str] = {}  # challenge -> api_key, when not per connection
        self.stalled = False
        self.refusal: str | None = None
        self.dropped = 0
        self.overflowed = 0
        self.accepted = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        conn = Connection(self, ws, request)
        self.connections.add(conn)
        self.accepted += 1
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            conn.sub.close()
        return ws

    # ---- controls -------------------------------------------------------------------------------------
    def drop_all(self, *, clean: bool = False) -> int:
        """Cut every connection: abruptly (no close frame, like a network failure) or with close 1001."""
        conns = list(self.connections)
        for conn in conns:
            conn.drop(clean=clean)
        self.dropped += len(conns)
        log.info("sim_ws_dropped", connections=len(conns), clean=clean)
        return len(conns)

    def stall(self) -> int:
        """Every connection, and any new one, goes silent both ways: no messages, no pongs."""
        self.stalled = True
        for conn in self.connections:
            conn.flow.clear()
        log.info("sim_ws_stalled", connections=len(self.connections))
        return len(self.connections)

    def follow(self, faults: FaultTable) -> None:
        """The fault table changed: a `stall` fault on `ws` stalls every connection until it is cleared."""
        wanted = faults.ws_stalled
        if wanted and not self._fault_stall:
            self._fault_stall = True
            self.stall()
        elif not wanted and self._fault_stall:
            self._fault_stall = False
            self.resume()

    def resume(self) -> int:
        self.stalled = False
        for conn in self.connections:
            conn.flow.set()
        log.info("sim_ws_resumed", connections=len(self.connections))
        return len(self.connections)

    def refuse(self, reason: str) -> None:
        """Refuse every private subscribe with an alert carrying `reason`, until `accept()`."""
        self.refusal = reason
        log.info("sim_ws_refusing_auth", reason=reason)

    def accept(self) -> None:
        self.refusal = None

    def state(self) -> dict[str, Any]:
        return {
            "connections": [c.describe() for c in self.connections],
            "stalled": self.stalled,
            "refusing": self.refusal,
            "accepted_total": self.accepted,
            "dropped_total": self.dropped,
            "overflowed_total": self.overflowed,
        }

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.drop(clean=True)


class Connection:
    """One client socket: a reader that acts on requests, a writer that drains the queue, and a clock
    that produces tickers, book updates and heartbeats."""

    def __init__(self, server: StreamServer, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.server = server
        self.ws = ws
        self.request = request
        self.exchange = server.exchange
        self.sub: Subscription = self.exchange.bus.subscribe(server.settings.queue_size)
        self.flow = asyncio.Event()  # set while the link flows; cleared while stalled
        if not server.stalled:
            self.flow.set()
        self.challenges: OrderedDict[str, str] = OrderedDict()  # challenge -> api_key
        self.private: dict[str, PrivateFeed] = {}
        self.public: dict[str, PublicFeed] = {}
        self.heartbeat = False
        self.requests: deque[float] = deque()
        self.sent_tickers: dict[tuple[str, str], dict[str, Any]] = {}
        self.sent_books: dict[str, dict[str, dict[float | int, float | int]]] = {}
        self.book_seq: dict[str, int] = {}
        self.trade_seq: dict[str, int] = {}
        self.dropped = False
        self.opened = time.time()

    def describe(self) -> dict[str, Any]:
        return {
            "private": {name: feed.account for name, feed in self.private.items()},
            "public": {name: sorted(feed.products) for name, feed in self.public.items()},
            "heartbeat": self.heartbeat,
            "queued": len(self.sub),
            "age_s": round(time.time() - self.opened, 3),
        }

    def drop(self, *, clean: bool) -> None:
        self.dropped = True
        self.flow.set()  # let blocked loops see the end
        if clean:
            self.sub.put(_CLOSE)
        elif self.request.transport is not None:
            self.request.transport.abort()

    def put(self, message: Mapping[str, Any]) -> None:
        self.sub.put(Outbound(message))

    async def run(self) -> None:
        self.put({"event": "info", "version": 1})
        writer = asyncio.create_task(self._write_loop(), name="sim-ws-writer")
        clock = asyncio.create_task(self._clock_loop(), name="sim-ws-clock")
        try:
            await self._read_loop()
        finally:
            for task in (writer, clock):
                task.cancel()
            for task in (writer, clock):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError):
                    await self.ws.close()

    # ---- reading ------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while not self.ws.closed:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            await self.flow.wait()  # stalled: nothing sent is acted on, not even a ping
            if self.dropped:
                return
            if msg.type == WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await self.ws.pong(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self._on_request(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.put({"event": "error", "message": "Json Error"})

    def _within_rate(self) -> bool:
        now = time.monotonic()
        while self.requests and now - self.requests[0] >= 1.0:
            self.requests.popleft()
        if len(self.requests) >= self.server.settings.request_rate:
            return False
        self.requests.append(now)
        return True

    def _on_request(self, text: str) -> None:
        if not self._within_rate():
            self.put({"event": "error", "message": "Rate limit exceeded"})
            return
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.put({"event": "error", "message": "Json Error"})
            return
        event = doc.get("event")
        if event == "challenge":
            self._challenge(doc)
        elif event in ("subscribe", "unsubscribe"):
            feed = doc.get("feed")
            if not isinstance(feed, str):
                self.put({"event": "error", "message": "Json Error"})
            elif feed in feeds.PRIVATE_FEEDS:
                self._private(event == "subscribe", feed, doc)
            elif feed in feeds.PUBLIC_FEEDS:
                self._public(event == "subscribe", feed, doc)
            else:
                self.put({"event": "error", "message": "Invalid feed"})
        else:
            self.put({"event": "error", "message": "Json Error"})

    def _challenge(self, doc: Mapping[str, Any]) -> None:
        api_key = doc.get("api_key")
        if not isinstance(api_key, str) or not api_key or len(api_key) > 256:
            self.put({"event": "error", "message": "Json Error"})
            return
        challenge = str(uuid.uuid4())
        book = self.challenges if self.server.settings.challenge_per_connection else self.server.challenges
        book[challenge] = api_key
        while len(book) > CHALLENGES_KEPT:
            book.pop(next(iter(book)))
        self.put({"event": "challenge", "message": challenge})

    def _authenticate(self, doc: Mapping[str, Any]) -> SimKey | None:
        api_key, original = doc.get("api_key"), doc.get("original_challenge")
        if not isinstance(api_key, str) or not isinstance(original, str):
            return None
        book = self.challenges if self.server.settings.challenge_per_connection else self.server.challenges
        key = self.server.keys.get(api_key)
        if key is None or book.get(original) != api_key:
            return None
        if not verify_challenge(key.secret.key_bytes(), original, doc.get("signed_challenge")):
            return None
        return key

    # ---- private feeds ------------------------------------------------------------------------------
    def _private(self, subscribe: bool, feed: str, doc: Mapping[str, Any]) -> None:
        if self.server.refusal is not None:
            self.put({"event": "alert", "message": self.server.refusal})
            return
        key = self._authenticate(doc)
        if key is None:
            log.info("sim_ws_auth_failed", feed=feed)
            self.put({"event": "alert", "message": AUTH_FAILED})
            return
        if not subscribe:
            if self.private.pop(feed, None) is None:
                self.put({"event": "unsubscribed_failed", "feed": feed})
            else:
                self.put({"event": "unsubscribed", "feed": feed})
            self.sub.accounts = {f.account for f in self.private.values()}
            return
        products: frozenset[str] | None = None
        if feed == "fills" and doc.get("product_ids") is not None:
            products = self._products(doc)
            if products is None:
                return
        if feed in self.private:
            self.put({"event": "alert", "message": ALREADY_SUBSCRIBED})
        else:
            self.put({"event": "subscribed", "feed": feed})
        acct = self.exchange.account(key.account)
        # Rendered and queued in one step: every later event is a delta after this snapshot.
        self.private[feed] = PrivateFeed(acct.name, self.exchange.bus.seq, products)
        self.sub.accounts = {f.account for f in self.private.values()}
        self.put(self._snapshot(feed, acct.name, products))

    def _snapshot(self, feed: str, account: str, products: frozenset[str] | None) -> dict[str, Any]:
        exchange = self.exchange
        acct = exchange.accounts[account]
        if feed in ("open_orders", "open_orders_verbose"):
            orders = [feeds.order_row(o) for o in acct.open_orders()]
            return {"feed": f"{feed}_snapshot", "account": account, "orders": orders}
        if feed == "fills":
            # ccxt notes that snapshots leave cli_ord_id out; updates carry it.
            rows = [
                {k: v for k, v in f.items() if k != "cli_ord_id"}
                for f in acct.stream_fills
                if products is None or f["instrument"] in products
            ]
            return {"feed": "fills_snapshot", "account": account, "fills": rows[-100:]}
        if feed == "open_positions":
            return {"feed": "open_positions", **feeds.positions_message(exchange, acct, snapshot=True)}
        if feed == "balances":
            return {"feed": "balances_snapshot", **feeds.balances_message(exchange, acct, snapshot=True)}
        return {"feed": "notifications_auth", "notifications": [dict(n) for n in exchange.notices]}

    # ---- public feeds -------------------------------------------------------------------------------
    def _products(self, doc: Mapping[str, Any]) -> frozenset[str] | None:
        ids = doc.get("product_ids")
        market = self.exchange.market
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, str) and market.instrument(i.upper()) is not None for i in ids)
        ):
            self.put({"event": "error", "message": "Invalid product id"})
            return None
        return frozenset(i.upper() for i in ids)

    def _public(self, subscribe: bool, feed: str, doc: Mapping[str, Any]) -> None:
        if feed == "heartbeat":
            was, self.heartbeat = self.heartbeat, subscribe
            if subscribe or was:
                self.put({"event": "subscribed" if subscribe else "unsubscribed", "feed": feed})
            else:
                self.put({"event": "unsubscribed_failed", "feed": feed})
            return
        products = self._products(doc)
        if products is None:
            return
        echo = {"feed": feed, "product_ids": doc["product_ids"]}
        state = self.public.setdefault(feed, PublicFeed())
        if not subscribe:
            if products & state.products:
                state.products -= products
                for symbol in products:
                    self.sent_tickers.pop((feed, symbol), None)
                    if feed == "book":
                        self.sent_books.pop(symbol, None)
                self.put({"event": "unsubscribed", **echo})
            else:
                self.put({"event": "unsubscribed_failed", **echo})
            self.sub.public = bool(self.public.get("trade") and self.public["trade"].products)
            return
        state.products |= products
        self.put({"event": "subscribed", **echo})
        now_ms = self.exchange.now_ms()
        for symbol in sorted(products):
            if feed in ("ticker", "ticker_lite"):
                row = feeds.ticker_row(self.exchange.market, symbol, now_ms, lite=feed == "ticker_lite")
                self.sent_tickers[(feed, symbol)] = row
                self.put(row)
            elif feed == "book":
                self.put(self._book_snapshot(symbol, now_ms))
            else:
                self.put(self._trade_snapshot(symbol))
        self.sub.public = bool(self.public.get("trade") and self.public["trade"].products)

    def _book_snapshot(self, symbol: str, now_ms: int) -> dict[str, Any]:
        levels = feeds.book_levels(self.exchange, symbol)
        self.sent_books[symbol] = levels
        self.book_seq[symbol] = self.book_seq.get(symbol, 0) + 1
        instrument = self.exchange.market.instrument(symbol)
        assert instrument is not None
        return {
            "feed": "book_snapshot",
            "product_id": symbol,
            "timestamp": now_ms,
            "seq": self.book_seq[symbol],
            "bids": [{"price": p, "qty": q} for p, q in sorted(levels["buy"].items(), reverse=True)],
            "asks": [{"price": p, "qty": q} for p, q in sorted(levels["sell"].items())],
            "tickSize": feeds.num(instrument.tick_size),
        }

    def _trade_snapshot(self, symbol: str) -> dict[str, Any]:
        trades: list[dict[str, Any]] = []
        for acct in self.exchange.accounts.values():
            trades.extend(f for f in acct.fills if f["symbol"] == symbol)
        trades.sort(key=lambda f: f["fillTime"])
        rows = []
        for fill in trades[-TRADES_IN_SNAPSHOT:]:
            self.trade_seq[symbol] = self.trade_seq.get(symbol, 0) + 1
            rows.append(
                {
                    "feed": "trade",
                    "product_id": symbol,
                    "uid": fill["fill_id"],
                    "side": fill["side"],
                    "type": "fill",
                    "seq": self.trade_seq[symbol],
                    "time": _ms(fill["fillTime"]),
                    "qty": fill["size"],
                    "price": fill["price"],
                }
            )
        rows.reverse()  # newest first, as Kraken's example lists them
        return {"feed": "trade_snapshot", "product_id": symbol, "trades": rows}

    # ---- the clock ----------------------------------------------------------------------------------
    async def _clock_loop(self) -> None:
        settings = self.server.settings
        loop = asyncio.get_running_loop()
        next_ticker = loop.time() + settings.ticker_s
        next_beat = loop.time() + settings.heartbeat_s
        while True:
            await asyncio.sleep(max(0.0, min(next_ticker, next_beat) - loop.time()))
            now = loop.time()
            if now >= next_ticker:
                next_ticker += settings.ticker_s
                self._market_updates()
            if now >= next_beat:
                next_beat += settings.heartbeat_s
                if self.heartbeat:
                    self.put({"feed": "heartbeat", "time": self.exchange.now_ms()})

    def _market_updates(self) -> None:
        """Tickers that changed since last sent, and book levels that changed (qty 0 deletes a level)."""
        now_ms = self.exchange.now_ms()
        for feed in ("ticker", "ticker_lite"):
            for symbol in sorted(self.public.get(feed, PublicFeed()).products):
                row = feeds.ticker_row(self.exchange.market, symbol, now_ms, lite=feed == "ticker_lite")
                last = self.sent_tickers.get((feed, symbol))
                if last is None or {**last, "time": 0} != {**row, "time": 0}:
                    self.sent_tickers[(feed, symbol)] = row
                    self.put(row)
        for symbol in sorted(self.public.get("book", PublicFeed()).products):
            levels = feeds.book_levels(self.exchange, symbol)
            before = self.sent_books.get(symbol, {"buy": {}, "sell": {}})
            for side in ("buy", "sell"):
                for price in sorted(set(before[side]) | set(levels[side])):
                    qty = levels[side].get(price, 0)
                    if before[side].get(price) != qty:
                        self.book_seq[symbol] = self.book_seq.get(symbol, 0) + 1
                        self.put(
                            {
                                "feed": "book",
                                "product_id": symbol,
                                "side": side,
                                "seq": self.book_seq[symbol],
                                "price": price,
                                "qty": qty,
                                "timestamp": now_ms,
                            }
                        )
            self.sent_books[symbol] = levels

    # ---- writing ------------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            try:
                item = await self.sub.get()
            except Overflow:
                self.server.overflowed += 1
                log.warning("sim_ws_slow_consumer_closed", queue_size=self.sub.maxsize)
                await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
                return
            await self.flow.wait()
            if item is _CLOSE:
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"closed by the simulator")
                return
            for message in self._render(item):
                await self.ws.send_str(json.dumps(message, separators=(",", ":")))

    def _render(self, item: object) -> list[Mapping[str, Any]]:
        if isinstance(item, Outbound):
            return [item.message]
        assert isinstance(item, Event)
        data = item.data
        out: list[Mapping[str, Any]] = []
        if item.topic == "order":
            for name in ("open_orders", "open_orders_verbose"):
                feed = self.private.get(name)
                if feed is None or feed.account != item.account or item.seq <= feed.since:
                    continue
                if data["verbose_only"] and name != "open_orders_verbose":
                    continue
                out.append(self._order_message(name, data))
            return out
        if item.topic == "trade":
            symbol = data["product_id"]
            if symbol in self.public.get("trade", PublicFeed()).products:
                self.trade_seq[symbol] = self.trade_seq.get(symbol, 0) + 1
                out.append({"feed": "trade", **data, "seq": self.trade_seq[symbol]})
            return out
        name = {
            "fill": "fills",
            "positions": "open_positions",
            "balances": "balances",
            "notice": "notifications_auth",
        }[item.topic]
        feed = self.private.get(name)
        if feed is None or feed.account != item.account or item.seq <= feed.since:
            return out
        if item.topic == "fill":
            fill = data["fill"]
            if feed.products is None or fill["instrument"] in feed.products:
                out.append({"feed": "fills", "username": item.account, "fills": [fill]})
        elif item.topic == "notice":
            out.append({"feed": "notifications_auth", "notifications": [data["notification"]]})
        else:
            out.append({"feed": name, **data})
        return out

    def _order_message(self, feed: str, data: Mapping[str, Any]) -> dict[str, Any]:
        reason = data["reason"]
        full = (
            not data["is_cancel"]
            or reason == "full_fill"
            or data["verbose_only"]
            or reason in self.server.settings.full_order_on_cancel
        )
        if full:
            return {"feed": feed, "order": data["order"], "is_cancel": data["is_cancel"], "reason": reason}
        message: dict[str, Any] = {"feed": feed, "order_id": data["order_id"]}
        if data["cli_ord_id"] is not None:
            message["cli_ord_id"] = data["cli_ord_id"]
        message.update(is_cancel=True, reason=reason)
        return message


_CLOSE = object()


def _ms(iso: str) -> int:
    return int(parse_iso(iso) * 1000)
