"""Long-lived WebSocket links to Kraken Futures' `ws/v1`: one private link per account, one public ticker
link per exchange URL. Each is a small state machine with one loop, in which reconnecting is the normal
path: connect, (authenticate,) subscribe, read until the link goes quiet or closes, wait a jittered,
capped backoff, and again.

- Liveness: anything received (a message, a ping, a pong) is life. After half of `liveness_timeout_s`
  in silence the link sends a protocol ping; silent for the whole of it, the link is declared down
  (`stream_link_stalled`), dropped and made again, with a fresh challenge and fresh snapshots. A stalled
  socket (TCP open, nothing flowing, no pong) is noticed within that bound (4 s by default), not after
  `link_timeout_s`. A quiet link that answers its pings stays up.
- The `heartbeat` feed is subscribed too: no *message* (data or heartbeat) for `link_timeout_s` means
  the link is down as well (a server that answers pings but whose feeds stopped).
- The private link authenticates by the challenge flow (`guardian.kraken.signing.sign_challenge`); an
  `alert` (a refused key or signature) ends the attempt with its reason, and it is tried again after the
  backoff, loudly.
- Every transition is logged once and counted; messages go to the owner's `on_message`, in order.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import structlog

from guardian import jsonslice
from guardian.config import DEFAULT_LIVENESS_TIMEOUT_S
from guardian.kraken.signing import sign_challenge
from guardian.kraken.times import to_iso
from guardian.secret import ApiSecret

log = structlog.get_logger("guardian.stream")

PRIVATE_FEEDS: Final = ("open_orders", "open_positions", "fills", "balances", "notifications_auth")
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024


class LinkState(enum.StrEnum):
    """What `/guardian/state` says of a link (contract values)."""

    CONNECTED = "connected"  # subscribed, and messages arrive
    RECONNECTING = "reconnecting"  # an attempt is under way
    DOWN = "down"  # the last attempt failed; the next waits for its backoff
    DISABLED = "disabled"  # stream.enabled = false


class LinkError(Exception):
    """Why a link attempt ended (the reason is logged and shown)."""


@dataclass(slots=True)
class LinkStatus:
    state: LinkState = LinkState.DOWN
    connected_since: float | None = None  # wall clock
    last_message_at: float | None = None  # monotonic
    reconnects: int = 0  # connections made after the first
    connections: int = 0
    stalls: int = 0  # connections declared down for silence (liveness_timeout_s)
    last_error: str | None = None

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        age = None if self.last_message_at is None else round(now - self.last_message_at, 3)
        return {
            "state": self.state.value,
            "connected_since": None if self.connected_since is None else to_iso(self.connected_since),
            "last_message_age_s": age,
            "reconnects": self.reconnects,
            "stalls": self.stalls,
            "last_error": self.last_error,
        }


def backoff_s(attempt: int, *, rng: random.Random | None = None) -> float:
    """Full jitter over a capped exponential: 0.5, 1, 2, 4 ... 30 s at most."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
    return (rng or random).uniform(ceiling / 2, ceiling)


class Link:
    """One WebSocket link and its loop. Subclasses say what to send once connected."""

    kind = "link"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        link_timeout_s: float,
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
        on_message: Callable[[Mapping[str, Any]], Awaitable[None] | None],
        on_connected: Callable[[], Awaitable[None] | None] | None = None,
        on_state: Callable[[LinkState, LinkState], None] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.link_timeout_s = link_timeout_s
        self.liveness_timeout_s = liveness_timeout_s
        self.status = LinkStatus()
        self._heard_at = 0.0  # monotonic: the last frame of any kind on this connection
        self._data_at = 0.0  # monotonic: the last message (or the connection's start)
        self._pinged = False  # a ping went out in the current silence
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_state = on_state
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.url!r})"

    @property
    def up(self) -> bool:
        return self.status.state is LinkState.CONNECTED

    def _set(self, state: LinkState, *, error: str | None = None) -> None:
        previous = self.status.state
        if error is not None:
            self.status.last_error = error
        if state is previous:
            return
        self.status.state = state
        if state is LinkState.CONNECTED:
            self.status.connected_since = time.time()
            self.status.connections += 1
            if self.status.connections > 1:
                self.status.reconnects += 1
            self.status.last_error = None
        elif previous is LinkState.CONNECTED:
            self.status.connected_since = None
        event = "stream_link_up" if state is LinkState.CONNECTED else "stream_link_changed"
        (log.warning if state is LinkState.DOWN else log.info)(
            event,
            link=self.kind,
            name=self.name,
            state=state.value,
            previous=previous.value,
            error=self.status.last_error,
            reconnects=self.status.reconnects,
        )
        if self._on_state is not None:
            self._on_state(previous, state)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Until cancelled: connect, serve, back off, again."""
        attempt = 0
        while True:
            self._set(LinkState.RECONNECTING)
            try:
                try:
                    await self._serve(session)
                    reason = "closed by the exchange"
                except LinkError as exc:
                    reason = str(exc)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:300]
                attempt = 0 if self.status.state is LinkState.CONNECTED else attempt + 1
                # Down before the socket is closed: a stalled exchange's close frame is waited for (1 s).
                self._set(LinkState.DOWN, error=reason)
            finally:
                ws, self._ws = self._ws, None
                if ws is not None and not ws.closed:
                    await ws.close()
            await asyncio.sleep(backoff_s(attempt))

    async def drop(self) -> None:
        """Close the current connection (the loop makes a new one)."""
        if self._ws is not None:
            await self._ws.close()

    async def _serve(self, session: aiohttp.ClientSession) -> None:
        self._ws = ws = await session.ws_connect(
            self.url,
            # A close waits at most a second for the exchange's answer: a shutdown never hangs on it.
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
            max_msg_size=MAX_MESSAGE_BYTES,
            # No aiohttp heartbeat: this link pings when silent and judges the silence itself (`_frame`),
            # so it sees the pongs (life) and answers the exchange's pings.
            autoping=False,
        )
        self._heard_at = self._data_at = time.monotonic()
        self._pinged = False
        await self._open(ws)
        self._set(LinkState.CONNECTED)
        if self._on_connected is not None:
            result = self._on_connected()
            if result is not None:
                await result
        while True:
            message = await self._receive(ws)
            handled = self._dispatch(message)
            if handled is not None:  # a large message applied in slices: in order, before the next
                await handled

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> Mapping[str, Any]:
        """The next JSON object; LinkError when the link closes or goes silent (`_frame`)."""
        while True:
            frame = await self._frame(ws)
            if frame.type is aiohttp.WSMsgType.TEXT:
                self.status.last_message_at = self._data_at = time.monotonic()
                try:  # a snapshot of thousands of orders is read in slices: the loop keeps its turns
                    doc = await jsonslice.loads(frame.data)
                except ValueError:
                    log.warning("stream_message_not_json", link=self.kind, name=self.name)
                    continue
                if isinstance(doc, dict):
                    return doc
                continue
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise LinkError(f"closed by the exchange (code {ws.close_code})")
            if frame.type is aiohttp.WSMsgType.ERROR:
                raise LinkError(f"connection error: {ws.exception()}")
            if frame.type is aiohttp.WSMsgType.PING:
                await ws.pong(frame.data if isinstance(frame.data, bytes) else b"")
            # a PONG was life, and nothing more; binary frames are not Kraken's

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
        """The next frame of any kind: each is life. After half of liveness_timeout_s in silence a ping
        goes out; silent for all of it, or with no message for link_timeout_s, the link is down. Silence is
        judged only when a read finds nothing: frames that came while a large message was being applied
        are read first, and count."""
        half = self.liveness_timeout_s / 2
        while True:
            now = time.monotonic()
            if not self._pinged and now - self._heard_at >= half:
                self._pinged = True
                try:  # a socket that cannot take a few bytes within the bound is as stalled as a silent one
                    async with asyncio.timeout(half):
                        await ws.ping()
                except TimeoutError:
                    raise self._stalled("the ping could not be sent") from None
                now = time.monotonic()
            due = min(
                self._heard_at + (self.liveness_timeout_s if self._pinged else half),
                self._data_at + self.link_timeout_s,
            )
            try:
                frame = await ws.receive(timeout=max(due - now, 0.001))
            except TimeoutError:
                now = time.monotonic()
                if now - self._heard_at >= self.liveness_timeout_s:
                    raise self._stalled("no message, no pong") from None
                if now - self._data_at >= self.link_timeout_s:
                    raise LinkError(
                        f"no message for {self.link_timeout_s:g} s: the link is stalled"
                    ) from None
                continue
            self._heard_at = time.monotonic()
            self._pinged = False
            return frame

    def _stalled(self, what: str) -> LinkError:
        """The link said nothing for liveness_timeout_s: counted, logged once, and the attempt's end."""
        silent_s = time.monotonic() - self._heard_at
        self.status.stalls += 1
        log.warning(
            "stream_link_stalled",
            link=self.kind,
            name=self.name,
            silent_s=round(silent_s, 3),
            liveness_timeout_s=self.liveness_timeout_s,
        )
        return LinkError(f"silent for {silent_s:.1f} s ({what}): the link is stalled")

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, event: str) -> Mapping[str, Any]:
        """Read until an `event` message, handing feed messages on; LinkError on an alert or error."""
        while True:
            message = await self._receive(ws)
            if message.get("event") == event:
                return message
            handled = self._dispatch(message)
            if handled is not None:
                await handled

    def _dispatch(self, message: Mapping[str, Any]) -> Awaitable[None] | None:
        event = message.get("event")
        if event is None:
            return self._on_message(message)
        if event in ("alert", "error"):
            text = str(message.get("message", ""))[:200]
            if "Already subscribed" in text:
                return None
            raise LinkError(f"{event} from the exchange: {text}")
        if event in ("subscribed_failed", "unsubscribed_failed"):
            raise LinkError(f"{event}: {str(message)[:200]}")
        if event not in ("info", "subscribed", "unsubscribed", "pong", "challenge"):
            log.info("stream_unknown_event", link=self.kind, name=self.name, event=str(event)[:64])
        return None

    async def _open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        raise NotImplementedError


class PrivateLink(Link):
    """An account's private feeds, authenticated with its exchange key."""

    kind = "private"

    def __init__(self, name: str, url: str, api_key: str, api_secret: ApiSecret, **kwargs: Any) -> None:
        super().__init__(name, url, **kwargs)
        self._api_key = api_key
        self._api_secret = api_secret
        self.feeds: Sequence[str] = PRIVATE_FEEDS

    async def _open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_json({"event": "challenge", "api_key": self._api_key})
        answer = await self._expect(ws, "challenge")
        challenge = answer.get("message")
        if not isinstance(challenge, str) or not challenge:
            raise LinkError("the exchange's challenge answer has no challenge")
        auth = {
            "api_key": self._api_key,
            "original_challenge": challenge,
            "signed_challenge": sign_challenge(self._api_secret.key_bytes(), challenge),
        }
        for feed in self.feeds:
            await ws.send_json({"event": "subscribe", "feed": feed, **auth})
        await ws.send_json({"event": "subscribe", "feed": "heartbeat"})
        wanted = set(self.feeds)
        while wanted:  # every ack (snapshots that come meanwhile are applied); an alert ends the attempt
            message = await self._expect(ws, "subscribed")
            wanted.discard(str(message.get("feed")))


class PublicListener(Protocol):
    """A reader of a public link (the ws/v1 relay): called in the link's loop, in order; never blocks."""

    def on_public_message(self, message: Mapping[str, Any]) -> None: ...
    def on_public_state(self, previous: LinkState, state: LinkState) -> None: ...


DEMAND_FEEDS: Final = ("ticker", "ticker_lite", "book", "trade")


class TickerLink(Link):
    """One exchange's public `ticker` feed for the symbols in use, shared by every account on it; and the
    public feeds bots ask for through the relay (`demand`), subscribed on first demand and released after
    the last, one upstream subscription per feed and product however many bots want it."""

    kind = "ticker"

    def __init__(self, name: str, url: str, symbols: Callable[[], Iterable[str]], **kwargs: Any) -> None:
        self._push: Callable[[Mapping[str, Any]], None] = kwargs.pop("on_message")
        self._state_hook: Callable[[LinkState, LinkState], None] | None = kwargs.pop("on_state", None)
        super().__init__(name, url, on_message=self._fan_out, on_state=self._state_changed, **kwargs)
        self._symbols = symbols
        self.subscribed: set[str] = set()  # ticker products subscribed on this connection
        self._bots_only: set[str] = set()  # ticker products subscribed for bots alone
        self.active: dict[str, set[str]] = {feed: set() for feed in DEMAND_FEEDS[1:]}
        self.demand: dict[str, dict[str, int]] = {feed: {} for feed in DEMAND_FEEDS}  # feed -> product -> n
        self.listeners: list[PublicListener] = []
        # (feed, product) pairs the exchange refused ("Invalid product id": not on the feed): not asked for
        # again on this connection, so one bad product cannot keep the link reconnecting (REST polls cover
        # the marks). Each request asks for one product, so an error answers the oldest unconfirmed one.
        self.refused: set[tuple[str, str]] = set()
        self._unconfirmed: deque[tuple[str, str]] = deque()

    def _fan_out(self, message: Mapping[str, Any]) -> None:
        self._push(message)
        for listener in self.listeners:
            listener.on_public_message(message)

    def _state_changed(self, previous: LinkState, state: LinkState) -> None:
        if self._state_hook is not None:
            self._state_hook(previous, state)
        for listener in self.listeners:
            listener.on_public_state(previous, state)

    def want(self, feed: str, product: str) -> bool:
        """One more reader of (feed, product); True if it is the first."""
        counts = self.demand[feed]
        counts[product] = counts.get(product, 0) + 1
        return counts[product] == 1

    def release(self, feed: str, product: str) -> bool:
        """One reader fewer; True if it was the last."""
        counts = self.demand[feed]
        left = counts.get(product, 0) - 1
        if left > 0:
            counts[product] = left
            return False
        counts.pop(product, None)
        return True

    async def refresh(self) -> None:
        """Bring the upstream subscriptions in line with the demand now (when the link is up)."""
        ws = self._ws
        if ws is not None and not ws.closed and self.up:
            await self._subscribe_new(ws)

    async def _open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.subscribed = set()
        self._bots_only = set()
        self.active = {feed: set() for feed in DEMAND_FEEDS[1:]}
        self.refused, self._unconfirmed = set(), deque()
        await self._subscribe_new(ws)
        await ws.send_json({"event": "subscribe", "feed": "heartbeat"})

    async def _subscribe_new(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # The sets change before anything is awaited, so that two callers never send the same request.
        refused = self.refused
        marks = set(self._symbols())
        tickers = {p for p in marks | set(self.demand["ticker"]) if ("ticker", p) not in refused}
        requests: list[dict[str, Any]] = []
        for product in sorted(tickers - self.subscribed):
            requests.append({"event": "subscribe", "feed": "ticker", "product_ids": [product]})
            self.subscribed.add(product)
            self._unconfirmed.append(("ticker", product))
        self._bots_only = (self._bots_only | tickers) - marks  # the marks' tickers are never released
        released = sorted(self._bots_only - set(self.demand["ticker"]) - marks)
        if released:
            requests.append({"event": "unsubscribe", "feed": "ticker", "product_ids": released})
            self.subscribed.difference_update(released)
            self._bots_only.difference_update(released)
        for feed, active in self.active.items():
            demanded = {p for p in self.demand[feed] if (feed, p) not in refused}
            for product in sorted(demanded - active):
                requests.append({"event": "subscribe", "feed": feed, "product_ids": [product]})
                self._unconfirmed.append((feed, product))
            gone = sorted(active - demanded)
            if gone:
                requests.append({"event": "unsubscribe", "feed": feed, "product_ids": gone})
            active.clear()
            active.update(demanded)
        for request in requests:
            await ws.send_json(request)

    def _dispatch(self, message: Mapping[str, Any]) -> Awaitable[None] | None:
        event = message.get("event")
        if event == "subscribed":
            feed = str(message.get("feed"))
            for product in message.get("product_ids") or ():
                if (feed, product) in self._unconfirmed:
                    self._unconfirmed.remove((feed, str(product)))
            return None
        if event == "error" and self._unconfirmed:  # a subscription refused: not the link's end
            feed, product = self._unconfirmed.popleft()
            log.warning(
                "ticker_subscription_refused",
                feed=feed,
                symbol=product,
                message=str(message.get("message"))[:200],
            )
            self.refused.add((feed, product))
            if feed == "ticker":
                self.subscribed.discard(product)
            else:
                self.active[feed].discard(product)
            return None
        return super()._dispatch(message)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> Mapping[str, Any]:
        message = await super()._receive(ws)
        await self._subscribe_new(ws)  # symbols come into use as bots trade them
        return message
