"""`ws://<listen>/ws/v1`: Kraken Futures' WebSocket v1 for bots, with their local keys.

A bot connects as it would to Kraken: `{"event":"info","version":1}` first; `challenge` with its local key
gets a fresh UUID (per request, kept per connection); each private subscribe carries the key, the
challenge and the challenge signed with the bot's local secret. guardian checks them itself (the
exchange's key, challenge and signature never leave its upstream link), answers
`{"event":"alert","message":"Failed to subscribe to authenticated feed"}` when anything is wrong (one answer
for an unknown key, a bad signature, a challenge not issued here, or a key without `read`), and logs why.

Private feeds come from guardian's account state (`AccountFeeds`), public ones from the shared public
link (`PublicFeeds`). Every connection has one bounded outgoing queue; a bot that falls `queue_size`
messages behind is closed with 1013 and named in the log, and nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import structlog
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from guardian import conns
from guardian.config import Config, mask_key
from guardian.gateway.auth import Caller, key_table
from guardian.gateway.refusal import Refusal
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import verify_challenge
from guardian.kraken.times import to_iso
from guardian.relay import render
from guardian.relay.fanout import AccountFeeds, PublicFeeds, dumps
from guardian.secret import ApiSecret
from guardian.tls import SubjectCheck

log = structlog.get_logger("guardian.relay")

PATH: Final = "/ws/v1"
AUTH_FAILED: Final = "Failed to subscribe to authenticated feed"
ALREADY_SUBSCRIBED: Final = "Already subscribed to feed, re-requesting"
QUEUE_SIZE: Final = 2048  # messages a bot may fall behind before it is closed (1013)
REQUESTS_PER_S: Final = 100  # Kraken's limit per connection
CHALLENGES_KEPT: Final = 64  # per connection
MAX_MESSAGE_BYTES: Final = 64 * 1024
PING_S: Final = 30.0  # protocol pings to the bot; no pong in time closes the connection
SEND_BUFFER_BYTES: Final = 256 * 1024  # the kernel's share of a bot's backlog, bounded too
CLOSE_WAIT_S: Final = 5.0  # a backlogged bot gets this long to read up to the close frame
TRY_AGAIN_LATER: Final = 1013
KNOWN_FEEDS: Final = frozenset(
    {*render.PRIVATE_FEEDS, *render.PUBLIC_FEEDS, "alert", "event"}
)  # the `feed` label's values
DISCONNECT_REASONS: Final = (
    "client_closed",
    "slow_consumer",
    "connection_limit",
    "bot_connection_limit",
    "shutdown",
)


class Connection:
    """One bot's socket: the reader (requests), one writer (the bounded queue), its subscriptions."""

    def __init__(
        self, relay: Relay, ws: web.WebSocketResponse, transport: asyncio.Transport | None, queue_size: int
    ) -> None:
        self.relay = relay
        self.ws = ws
        self.transport = transport
        self.limit = queue_size
        self.caller: Caller | None = None
        self.private: set[str] = set()
        self.public: set[tuple[str, str]] = set()
        self.heartbeat = False
        self.challenges: OrderedDict[str, str] = OrderedDict()  # challenge -> local api_key
        self.requests: deque[float] = deque()
        self.opened = time.time()
        self.reason: str | None = None  # why guardian closed it
        self.peername = transport.get_extra_info("peername") if transport is not None else None
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Connection({self.bot!r})"

    # ---- Sink -----------------------------------------------------------------------------------------
    @property
    def bot(self) -> str | None:
        return None if self.caller is None else self.caller.bot

    @property
    def account(self) -> str | None:
        return None if self.caller is None else self.caller.account

    @property
    def own(self) -> bool:
        return self.caller is not None and self.caller.client.feeds == "own"

    def offer(self, text: str, feed: str) -> None:
        """Queue a message, never waiting; a full queue closes the connection (1013)."""
        if self.reason is not None:
            return
        if len(self._queue) >= self.limit:
            self.kill("slow_consumer", f"slow consumer: more than {self.limit} messages behind")
            return
        self._queue.append(text)
        self._ready.set()
        self.relay.messages.labels(feed if feed in KNOWN_FEEDS else "other").inc()

    def send(self, message: Mapping[str, Any]) -> None:
        feed = str(message.get("feed"))
        self.offer(dumps(message), "event" if "event" in message else feed.removesuffix("_snapshot"))

    def kill(
        self, reason: str, text: str, caller: Caller | None = None, last: Mapping[str, Any] | None = None
    ) -> None:
        """Close with 1013 (try again later) in the background; the reader ends with it. `caller`: the bot
        it authenticated as, when that is why it is closed (over its connection limit). `last`: a message
        sent just before the close frame (what was queued is dropped, this one is not)."""
        if self.reason is not None:
            return
        self.reason = reason
        self._queue.clear()
        who = caller or self.caller
        bot, account = (None, None) if who is None else (who.bot, who.account)
        (log.warning if reason == "slow_consumer" else log.info)(
            "relay_connection_closed", reason=reason, bot=bot, account=account, detail=text
        )
        if self.relay.on_dropped is not None:  # told on (push notifications); never waits
            self.relay.on_dropped(account, bot, reason, text)
        final = None if last is None else dumps(last)
        self._closer = asyncio.create_task(self._close(TRY_AGAIN_LATER, text, final), name="relay-close")

    async def _close(self, code: int, text: str, last: str | None = None) -> None:
        """Send `last` and the close frame behind what the bot has not read yet; if it has not taken them
        within CLOSE_WAIT_S (a bot that stopped reading), cut the connection and drop the backlog."""
        if self.writer is not None:
            self.writer.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_WAIT_S
        if last is not None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(self.ws.send_str(last), CLOSE_WAIT_S)
        closing = asyncio.ensure_future(self.ws.close(code=code, message=text.encode()[:120]))
        try:
            await asyncio.wait({closing}, timeout=CLOSE_WAIT_S)
            # A close that returned with bytes unsent; asyncio has no event for a transport's buffer emptying.
            while self._backlog() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            if self.transport is not None and (not closing.done() or self._backlog()):
                self.transport.abort()
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await closing

    def _backlog(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    async def write_loop(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            await self.ws.send_str(self._queue.popleft())

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def finished(self) -> None:
        """Wait for a close guardian started (bounded), after the reader ended."""
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._closer

    def feeds(self) -> list[str]:
        found = sorted(self.private)
        found += sorted({f"{feed}:{product}" for feed, product in self.public})
        return found + (["heartbeat"] if self.heartbeat else [])

    def describe(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "bot": self.bot,
            "feeds": self.feeds(),
            "queued": self.queued,
            "connected_since": to_iso(self.opened),
        }


class Relay:
    """Every bot connection to `/ws/v1`, and the fan-outs they read from."""

    def __init__(
        self,
        config: Config,
        accounts: Mapping[str, AccountFeeds],
        public: Mapping[str, PublicFeeds],
        registry: CollectorRegistry,
        *,
        queue_size: int = QUEUE_SIZE,
        requests_per_s: int = REQUESTS_PER_S,
        on_dropped: Callable[[str | None, str | None, str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.on_dropped = on_dropped  # (account, bot, reason, detail) of each connection guardian closes
        self.accounts = accounts  # account name -> its private feeds (stream enabled)
        self.public = public  # account name -> its exchange's public feeds
        self.queue_size = queue_size
        self.requests_per_s = requests_per_s
        self.max_connections = config.server.ws_max_connections
        self.send_buffer_bytes = SEND_BUFFER_BYTES
        # Every key of every bot (a bot rotating its key has two), each with its own secret.
        self.keys: dict[str, Caller] = {}
        self._secrets: dict[str, ApiSecret] = {}
        self._read_keys(config)
        self.connections: set[Connection] = set()
        self.tls_subjects = SubjectCheck()  # tls_client_subject; the daemon's counts mismatches
        self.on_source_refused: Callable[[str, str], None] | None = None  # a key from outside allow_from
        self.closing = False
        self._refreshes: set[asyncio.Task[None]] = set()  # upstream releases in flight, owned here
        self.messages = Counter(
            "guardian_ws_messages",
            "Messages guardian's ws/v1 relay queued to bots, by feed (acks, alerts and errors: event)",
            ["feed"],
            registry=registry,
        )
        self.disconnects = Counter(
            "guardian_ws_disconnects",
            "Bot connections to the ws/v1 relay that ended, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in DISCONNECT_REASONS:
            self.disconnects.labels(reason)
        registry.register(_ClientsCollector(self))

    def __repr__(self) -> str:
        return f"Relay({len(self.connections)} connections)"

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handle)]

    # ---- a connection's life --------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=PING_S, max_msg_size=MAX_MESSAGE_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:  # plain HTTP: said in Kraken's envelope, not aiohttp's text
            refusal = Refusal("invalidArgument", f"{PATH} is a WebSocket: connect with an Upgrade request")
            return web.json_response(refusal.envelope(to_iso(time.time())), status=400)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:  # asyncio's TransportSocket: setsockopt passes through
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        if self.closing or len(self.connections) >= self.max_connections:
            reason = "shutdown" if self.closing else "connection_limit"
            log.warning("relay_connection_refused", reason=reason, connections=len(self.connections))
            self.disconnects.labels(reason).inc()
            await ws.close(code=TRY_AGAIN_LATER, message=b"too many connections: try again later")
            return ws
        conn = Connection(self, ws, request.transport, self.queue_size)
        self.connections.add(conn)
        conn.writer = asyncio.create_task(self._write(conn), name="relay-writer")
        try:
            conn.send({"event": "info", "version": 1})
            await self._read(conn)
        finally:
            self.connections.discard(conn)
            self._forget(conn)
            if conn.writer is not None:
                conn.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await conn.writer
            await conn.finished()
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close()
            self.disconnects.labels(conn.reason or "client_closed").inc()
            log.info("relay_disconnected", bot=conn.bot, account=conn.account, reason=conn.reason or "client")
        return ws

    async def _write(self, conn: Connection) -> None:
        try:
            await conn.write_loop()
        except ConnectionError:  # the bot went away: the reader sees it too
            return

    async def _read(self, conn: Connection) -> None:
        while True:
            msg = await conn.ws.receive()
            if msg.type is WSMsgType.TEXT:
                await self._request(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                conn.send({"event": "error", "message": "Json Error"})
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if conn.reason is not None:
                return

    def _forget(self, conn: Connection) -> None:
        for feeds in self.accounts.values():
            feeds.forget(conn)
        for public in set(self.public.values()):
            released = public.forget(conn)
            if released:
                self._refresh(public)

    def _refresh(self, public: PublicFeeds) -> None:
        task = asyncio.create_task(public.link.refresh(), name="relay-upstream-refresh")
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    def _within_rate(self, conn: Connection) -> bool:
        now = time.monotonic()
        while conn.requests and now - conn.requests[0] >= 1.0:
            conn.requests.popleft()
        if len(conn.requests) >= self.requests_per_s:
            return False
        conn.requests.append(now)
        return True

    # ---- requests -------------------------------------------------------------------------------------
    async def _request(self, conn: Connection, text: str) -> None:
        if not self._within_rate(conn):
            conn.send({"event": "error", "message": "Rate limit exceeded"})
            return
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            conn.send({"event": "error", "message": "Json Error"})
            return
        event = doc.get("event")
        if event == "challenge":
            self._challenge(conn, doc)
        elif event == "ping":
            conn.send({"event": "pong"})
        elif event in ("subscribe", "unsubscribe"):
            feed = doc.get("feed")
            if not isinstance(feed, str):
                conn.send({"event": "error", "message": "Json Error"})
            elif feed in render.PRIVATE_FEEDS:
                await self._private(conn, event == "subscribe", feed, doc)
            elif feed in render.PUBLIC_FEEDS:
                await self._public(conn, event == "subscribe", feed, doc)
            else:
                conn.send({"event": "error", "message": "Invalid feed"})
        else:
            conn.send({"event": "error", "message": "Json Error"})

    def _challenge(self, conn: Connection, doc: Mapping[str, Any]) -> None:
        api_key = doc.get("api_key")
        if not isinstance(api_key, str) or not api_key or len(api_key) > 256:
            conn.send({"event": "error", "message": "Json Error"})
            return
        challenge = str(uuid.uuid4())  # the same answer for a key guardian does not know
        conn.challenges[challenge] = api_key
        while len(conn.challenges) > CHALLENGES_KEPT:
            conn.challenges.popitem(last=False)
        conn.send({"event": "challenge", "message": challenge})

    def _authenticate(self, conn: Connection, feed: str, doc: Mapping[str, Any]) -> Caller | None:
        """The bot, or None (logged with the reason; the bot only hears AUTH_FAILED)."""
        api_key, original = doc.get("api_key"), doc.get("original_challenge")
        caller = self.keys.get(api_key) if isinstance(api_key, str) else None
        secret = self._secrets.get(api_key) if isinstance(api_key, str) else None
        why: str | None = None
        if caller is None or secret is None:
            why = "unknown key"
        elif not isinstance(original, str) or conn.challenges.get(original) != api_key:
            why = "a challenge this connection was not given for that key"
        elif not verify_challenge(secret.key_bytes(), original, doc.get("signed_challenge")):
            why = "a signature that does not match"
        elif Permission.READ not in caller.client.permissions:
            why = "the key has no read permission"
        elif conn.caller is not None and conn.caller.bot != caller.bot:
            why = "another bot's key on a connection that already authenticated"
        elif self.tls_subjects.problem(conn.transport, caller.account, caller.client) is not None:
            why = "a client certificate that does not name the key's tls_client_subject"
        elif not conns.allowed(caller.client, source := conns.source_of(conn.peername)):
            why = f"a source address ({source}) outside the bot's allow_from"
            if self.on_source_refused is not None:
                self.on_source_refused(caller.account, caller.bot)
        if why is not None:
            log.warning(
                "relay_auth_refused",
                reason=why,
                feed=feed,
                bot=None if caller is None else caller.bot,
                key=mask_key(api_key) if isinstance(api_key, str) else None,
            )
            conn.send({"event": "alert", "message": AUTH_FAILED})
            return None
        return caller

    async def _private(self, conn: Connection, subscribe: bool, feed: str, doc: Mapping[str, Any]) -> None:
        caller = self._authenticate(conn, feed, doc)
        if caller is None:
            return
        if conn.caller is None:
            limit = caller.client.ws_max_connections
            held = sum(1 for c in self.connections if c.bot == caller.bot)
            if held >= limit:
                conn.kill(
                    "bot_connection_limit",
                    f"bot {caller.bot} has {held} connections, its ws_max_connections",
                    caller,
                    last={"event": "alert", "message": AUTH_FAILED},
                )
                return
            conn.caller = caller
            log.info("relay_bot_authenticated", bot=caller.bot, account=caller.account)
        feeds = self.accounts.get(caller.account)
        if feeds is None:  # the account's stream is disabled: there is no state to serve
            log.warning("relay_feed_unavailable", bot=caller.bot, account=caller.account, feed=feed)
            conn.send({"event": "alert", "message": AUTH_FAILED})
            return
        if not subscribe:
            if feed in conn.private:
                conn.private.discard(feed)
                feeds.unsubscribe(conn, feed)
                conn.send({"event": "unsubscribed", "feed": feed})
            else:
                conn.send({"event": "unsubscribed_failed", "feed": feed})
            return
        if feed in conn.private:
            conn.send({"event": "alert", "message": ALREADY_SUBSCRIBED})
        else:
            conn.send({"event": "subscribed", "feed": feed})
            conn.private.add(feed)
        await feeds.subscribe(conn, feed)
        if not feeds.up:
            conn.send({"event": "alert", "message": "Upstream feed interrupted: feeds paused"})

    async def _public(self, conn: Connection, subscribe: bool, feed: str, doc: Mapping[str, Any]) -> None:
        public = self._public_for(conn)
        if public is None:
            conn.send({"event": "error", "message": "Invalid feed"})
            return
        if feed == "heartbeat":
            was = conn.heartbeat
            conn.heartbeat = subscribe
            if subscribe:
                public.heartbeat.add(conn)
            else:
                public.heartbeat.discard(conn)
            ack = "subscribed" if subscribe else ("unsubscribed" if was else "unsubscribed_failed")
            conn.send({"event": ack, "feed": feed})
            return
        ids = doc.get("product_ids")
        if (
            not isinstance(ids, list)
            or not ids
            or len(ids) > 100
            or not all(isinstance(i, str) and public.valid(i.upper()) for i in ids)
        ):
            conn.send({"event": "error", "message": "Invalid product id"})
            return
        products = [i.upper() for i in ids]
        echo = {"feed": feed, "product_ids": ids}
        first = False
        if not subscribe:
            held = [p for p in products if (feed, p) in conn.public]
            for product in held:
                conn.public.discard((feed, product))
                first = public.unsubscribe(conn, feed, product) or first
            conn.send({"event": "unsubscribed" if held else "unsubscribed_failed", **echo})
        else:
            conn.send({"event": "subscribed", **echo})
            for product in products:
                conn.public.add((feed, product))
                now, wanted = public.subscribe(conn, feed, product)
                first = first or wanted
                for text in now:
                    conn.offer(text, feed)
        if first:
            await public.link.refresh()

    def _public_for(self, conn: Connection) -> PublicFeeds | None:
        if conn.account is not None:
            return self.public.get(conn.account)
        return next(iter(self.public.values()), None)

    # ---- housekeeping and shutdown --------------------------------------------------------------------
    async def run(self) -> None:
        """The "own" view's clock: messages whose bot never became known are let go (not theirs)."""
        while True:
            await asyncio.sleep(0.25)
            for feeds in self.accounts.values():
                feeds.tick()

    async def close(self) -> None:
        """Shutdown: no new connections; each bot is told (1001) and its socket closed."""
        self.closing = True
        for feeds in self.accounts.values():
            await feeds.close()
        for conn in list(self.connections):
            conn.reason = conn.reason or "shutdown"
            if conn.writer is not None:
                conn.writer.cancel()
        await asyncio.gather(
            *(self._going_away(conn) for conn in list(self.connections)), return_exceptions=True
        )

    @staticmethod
    async def _going_away(conn: Connection) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(conn.ws.close(code=1001, message=b"guardian is stopping"), CLOSE_WAIT_S)

    def state_json(self) -> dict[str, Any]:
        return {
            "path": PATH,
            "max_connections": self.max_connections,
            "connections": [c.describe() for c in sorted(self.connections, key=lambda c: c.opened)],
        }

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration: its keys and the connection cap now. A connection stays open unless its
        bot was removed, lost the read permission or is no longer allowed from the connection's address
        (closed: `bot_removed`, `permission_removed`, `source_removed`); the others are kept, their
        subscriptions too, and judged as the bot's new entry says."""
        self.config = config
        self.max_connections = config.server.ws_max_connections
        self._read_keys(config)
        bots = {(c.account, c.bot): c for c in self.keys.values()}
        for conn in list(self.connections):
            if conn.caller is None:
                continue
            now = bots.get((conn.caller.account, conn.caller.bot))
            if now is None:
                conn.kill("bot_removed", f"bot {conn.caller.bot} is no longer configured")
            elif Permission.READ not in now.client.permissions:
                conn.kill("permission_removed", f"bot {conn.caller.bot} no longer has the read permission")
            elif not conns.allowed(now.client, conns.source_of(conn.peername)):
                conn.kill("source_removed", f"bot {conn.caller.bot} is no longer allowed from this address")
            else:
                conn.caller = now

    def _read_keys(self, config: Config) -> None:
        table = key_table(config.accounts)
        self.keys = {key: caller for key, (caller, _) in table.items()}
        self._secrets = {key: secret for key, (_, secret) in table.items()}

    def counts(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {
            (account.name, client.name): 0 for account in self.config.accounts for client in account.clients
        }
        for conn in self.connections:
            key = (conn.account or "-", conn.bot or "-")
            found[key] = found.get(key, 0) + 1
        return found


class _ClientsCollector(Collector):
    """`guardian_ws_clients{account,bot}`, counted when Prometheus scrapes (`-` before a bot authenticates)."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter([self._family()])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        for (account, bot), count in sorted(self._relay.counts().items()):
            family.add_metric([account, bot], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "guardian_ws_clients", "Bot connections to the ws/v1 relay", labels=["account", "bot"]
        )
