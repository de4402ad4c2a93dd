"""Fan-out from guardian's upstream links to the bots' connections.

`AccountFeeds` reads one account's stream (an `AccountStream` listener) and `PublicFeeds` one exchange's
public link (a `TickerLink` listener). Both are called in the link's loop, in order, and only ever
*offer* a message to a subscriber (`Sink.offer`), which queues it or, when that subscriber's bounded queue
is full, drops the subscriber: one slow reader never holds the link or the others.

Each message is serialised once per shape, however many subscribers get it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from guardian.relay import render
from guardian.slicing import sliced
from guardian.stream.account import AccountStream
from guardian.stream.link import LinkState, TickerLink

log = structlog.get_logger("guardian.relay")

OWN_HOLD_S: Final = 3.0  # an order's delta may come before the REST answer that names its bot
TRADES_KEPT: Final = 100
PAUSED = "Upstream feed interrupted: feeds paused; fresh snapshots follow when it is back"
RECOVERED_FEEDS: Final = {
    "open_orders_snapshot": ("open_orders", "open_orders_verbose"),
    "open_orders_verbose_snapshot": ("open_orders", "open_orders_verbose"),
    "fills_snapshot": ("fills",),
    "balances_snapshot": ("balances",),
}
HOLD = object()  # the "own" filter's answer while a message's bot is not known yet


dumps = render.dumps


class Sink(Protocol):
    """A bot's connection as the fan-out sees it."""

    @property
    def bot(self) -> str | None: ...
    @property
    def own(self) -> bool: ...
    def offer(self, text: str, feed: str) -> None: ...


@dataclass(slots=True)
class _Held:
    until: float
    feed: str
    message: Mapping[str, Any]


class AccountFeeds:
    """One account's private feeds for the relay's subscribers."""

    def __init__(self, stream: AccountStream, *, hold_s: float = OWN_HOLD_S) -> None:
        self.stream = stream
        self.name = stream.name
        self.hold_s = hold_s
        self.subs: dict[str, set[Sink]] = {feed: set() for feed in render.PRIVATE_FEEDS}
        self.balances: dict[str, Any] | None = None
        self._held: dict[Sink, deque[_Held]] = {}
        # A subscriber whose snapshot is being rendered (in slices: thousands of orders) gets the deltas
        # that come meanwhile after it: they wait here, per (subscriber, feed).
        self._pending: dict[tuple[Sink, str], list[str]] = {}
        self._renders: set[asyncio.Task[None]] = set()
        stream.listeners.append(self)

    @property
    def up(self) -> bool:
        return self.stream.link.up

    # ---- subscribers ----------------------------------------------------------------------------------
    async def subscribe(self, sink: Sink, feed: str) -> None:
        """Add `sink` to `feed` and give it its snapshot first (from the state, no exchange call; rendered
        in slices, the deltas that come meanwhile following it)."""
        self.subs[feed].add(sink)
        await self._snapshots(self._wait_for_snapshot([sink], feed), feed, self.stream.view())

    def unsubscribe(self, sink: Sink, feed: str) -> None:
        self.subs[feed].discard(sink)
        self._pending.pop((sink, feed), None)

    def forget(self, sink: Sink) -> None:
        for feed, subs in self.subs.items():
            subs.discard(sink)
            self._pending.pop((sink, feed), None)
        self._held.pop(sink, None)

    def snapshot(self, feed: str, sink: Sink) -> dict[str, Any]:
        mine = self._mine(sink.bot) if sink.own else None
        return render.snapshot(feed, self.stream.view(), self.name, balances=self.balances, mine=mine)

    async def close(self) -> None:
        """Stop the snapshots being rendered (shutdown)."""
        for task in list(self._renders):
            task.cancel()
        await asyncio.gather(*self._renders, return_exceptions=True)

    def _wait_for_snapshot(self, sinks: Iterable[Sink], feed: str) -> list[tuple[Sink, list[str]]]:
        """From now on, `feed`'s deltas to these sinks wait for their snapshot (one synchronous step with
        the look at the state the snapshot is rendered from)."""
        found = []
        for sink in sinks:
            waiting: list[str] = []
            self._pending[(sink, feed)] = waiting
            found.append((sink, waiting))
        return found

    async def _snapshots(self, sinks: list[tuple[Sink, list[str]]], feed: str, view: Any) -> None:
        """Render `feed`'s snapshot of `view` for each sink (once per "own" bot, once for the rest), in
        slices; offer it, then the deltas that waited for it."""
        texts: dict[tuple[bool, str | None], str] = {}
        try:
            for sink, waiting in sinks:
                key = (sink.own, sink.bot if sink.own else None)
                text = texts.get(key)
                if text is None:
                    mine = self._mine(sink.bot) if sink.own else None
                    steps = render.snapshot_text(feed, view, self.name, balances=self.balances, mine=mine)
                    text = texts[key] = await sliced(steps)
                if self._pending.get((sink, feed)) is not waiting:
                    continue  # gone, or a newer snapshot is on its way to it
                del self._pending[(sink, feed)]
                if sink in self.subs[feed]:
                    sink.offer(text, feed)
                    for queued in waiting:
                        sink.offer(queued, feed)
        finally:
            for sink, waiting in sinks:
                if self._pending.get((sink, feed)) is waiting:
                    del self._pending[(sink, feed)]

    def _offer(self, sink: Sink, text: str, feed: str) -> None:
        """Offer a delta, behind the sink's snapshot if that is still being rendered."""
        waiting = self._pending.get((sink, feed))
        if waiting is not None:
            waiting.append(text)
        else:
            sink.offer(text, feed)

    def _mine(self, bot: str | None) -> Callable[[str | None, str | None], bool]:
        def mine(order_id: str | None, cli_ord_id: str | None) -> bool:
            return bot is not None and self.stream.owner(order_id, cli_ord_id) == bot

        return mine

    # ---- the stream (StreamListener) ------------------------------------------------------------------
    def on_stream_message(self, message: Mapping[str, Any]) -> None:
        try:
            self._route(message)
        except Exception:  # a relay bug must never break the state's owner: logged loudly, message lost
            log.exception("relay_fanout_failed", account=self.name, feed=str(message.get("feed"))[:64])

    def on_placed(self) -> None:
        now = time.monotonic()
        for sink in list(self._held):
            self._drain(sink, now)

    def on_link_changed(self, previous: LinkState, state: LinkState) -> None:
        if previous is LinkState.CONNECTED and state is not LinkState.CONNECTED:
            notice = dumps({"event": "alert", "message": PAUSED})
            for sink in self._subscribers():
                sink.offer(notice, "alert")
            log.warning("relay_feeds_paused", account=self.name, subscribers=len(self._subscribers()))

    def _subscribers(self) -> set[Sink]:
        found: set[Sink] = set()
        for subs in self.subs.values():
            found |= subs
        return found

    def tick(self, now: float | None = None) -> None:
        """Release the "own" messages whose bot never became known (not theirs)."""
        now = time.monotonic() if now is None else now
        for sink in list(self._held):
            self._drain(sink, now)

    def _route(self, message: Mapping[str, Any]) -> None:
        feed = message.get("feed")
        if feed in ("balances_snapshot", "balances"):
            self.balances = render.merge_balances(self.balances, message)
        recovered = RECOVERED_FEEDS.get(str(feed))
        if recovered is not None:  # a new upstream connection's snapshot: each subscriber's fresh one
            view = self.stream.view()
            for name in recovered:
                if self.subs[name]:
                    waiting = self._wait_for_snapshot(list(self.subs[name]), name)
                    task = asyncio.create_task(self._snapshots(waiting, name, view), name=f"relay-{name}")
                    self._renders.add(task)
                    task.add_done_callback(self._rendered)
            return
        if feed in ("open_orders", "open_orders_verbose"):
            # Upstream carries open_orders; the verbose feed is served from it (same shape, renamed).
            self._send("open_orders", {**message, "feed": "open_orders"})
            self._send("open_orders_verbose", {**message, "feed": "open_orders_verbose"})
        elif feed in ("fills", "open_positions", "balances", "notifications_auth"):
            self._send(str(feed), message)

    def _rendered(self, task: asyncio.Task[None]) -> None:
        self._renders.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay_snapshot_failed", account=self.name, error=repr(task.exception()))

    def _send(self, feed: str, message: Mapping[str, Any]) -> None:
        subs = self.subs[feed]
        if not subs:
            return
        text: str | None = None
        now = time.monotonic()
        for sink in list(subs):
            if sink.own:
                self._offer_own(sink, feed, message, now)
                continue
            if text is None:
                text = dumps(message)
            self._offer(sink, text, feed)

    # ---- the "own" view ---------------------------------------------------------------------------
    def _offer_own(self, sink: Sink, feed: str, message: Mapping[str, Any], now: float) -> None:
        held = self._held.get(sink)
        if held:  # behind a message still waiting: keep the order
            held.append(_Held(now + self.hold_s, feed, message))
            self._drain(sink, now)
            return
        verdict = self._own(sink.bot, feed, message, final=False)
        if verdict is HOLD:
            self._held.setdefault(sink, deque()).append(_Held(now + self.hold_s, feed, message))
        elif isinstance(verdict, Mapping):
            self._offer(sink, dumps(verdict), feed)

    def _drain(self, sink: Sink, now: float) -> None:
        held = self._held.get(sink)
        while held:
            head = held[0]
            verdict = self._own(sink.bot, head.feed, head.message, final=now >= head.until)
            if verdict is HOLD:
                return
            held.popleft()
            if isinstance(verdict, Mapping):
                self._offer(sink, dumps(verdict), head.feed)
        self._held.pop(sink, None)

    def _own(self, bot: str | None, feed: str, message: Mapping[str, Any], *, final: bool) -> object:
        """The message as `bot`'s own view shows it; None (not its business) or HOLD (not known yet)."""
        if feed in ("open_orders", "open_orders_verbose"):
            owner = self.stream.owner(*render.order_keys(message))
            if owner is None:
                return None if final else HOLD
            return message if owner == bot else None
        if feed == "fills":
            rows = message.get("fills")
            if not isinstance(rows, list):
                return None
            owners = [self.stream.owner(*keys) for keys in render.fill_keys(rows)]
            if not final and any(o is None for o in owners):
                return HOLD
            kept = [row for row, owner in zip(rows, owners, strict=True) if owner == bot]
            return {**message, "fills": kept} if kept else None
        return message  # positions, balances, notifications: the account's, for every view


@dataclass(slots=True)
class _Topic:
    """One (feed, product) upstream: its subscribers, and what a late one needs for its snapshot."""

    live: set[Sink] = field(default_factory=set)  # got their snapshot: deltas follow
    waiting: set[Sink] = field(default_factory=set)  # wait for the upstream snapshot
    book: dict[str, dict[float, Any]] | None = None  # side -> price -> qty
    book_meta: dict[str, Any] = field(default_factory=dict)
    trades: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TRADES_KEPT))
    ready: bool = False  # the cache follows the upstream (its snapshot came, the link is up)

    def reset(self) -> None:
        self.ready = False
        self.book = None
        self.book_meta = {}
        self.trades.clear()
        self.waiting |= self.live
        self.live = set()

    def snapshot_came(self) -> set[Sink]:
        """The upstream snapshot is in: the cache follows it, and the waiting subscribers go live (they
        get this snapshot); every live subscriber, to send it to."""
        self.ready = True
        self.live |= self.waiting
        self.waiting = set()
        return self.live


class PublicFeeds:
    """One exchange's public feeds for the relay: one upstream subscription per (feed, product).

    A topic is kept after its last subscriber leaves (one per feed and listed product at most), so that
    a bot subscribing again before the upstream is released gets its snapshot from the cache; whether
    the cache still follows the upstream is what the link says it has subscribed."""

    def __init__(self, link: TickerLink, known: Callable[[], Iterable[str]]) -> None:
        self.link = link
        self.known = known
        self.topics: dict[tuple[str, str], _Topic] = {}
        self.last: dict[tuple[str, str], dict[str, Any]] = {}  # ticker / ticker_lite: the last record
        self.heartbeat: set[Sink] = set()
        link.listeners.append(self)

    def valid(self, product: str) -> bool:
        return product in set(self.known())

    def _active(self, feed: str, product: str) -> bool:
        if not self.link.up:
            return False
        if feed == "ticker":
            return product in self.link.subscribed
        return product in self.link.active[feed]

    # ---- subscribers ----------------------------------------------------------------------------------
    def subscribe(self, sink: Sink, feed: str, product: str) -> tuple[list[str], bool]:
        """Add `sink` to (feed, product): what it gets now, and whether the upstream must subscribe."""
        key = (feed, product)
        topic = self.topics.setdefault(key, _Topic())
        if sink in topic.live or sink in topic.waiting:
            return self._catch_up(feed, product, topic) if topic.ready else [], False
        first = self.link.want(feed, product)
        active = self._active(feed, product)
        if feed in ("ticker", "ticker_lite"):
            topic.live.add(sink)
            last = self.last.get(key) if active else None
            return ([dumps(last)] if last is not None else []), first
        if not active:
            topic.reset()  # the upstream is not (or no longer) subscribed: its snapshot will come
        if topic.ready:
            topic.live.add(sink)
            return self._catch_up(feed, product, topic), first
        topic.waiting.add(sink)
        return [], first

    def unsubscribe(self, sink: Sink, feed: str, product: str) -> bool:
        """True if the upstream subscription is to be released (that was the last reader)."""
        topic = self.topics.get((feed, product))
        if topic is None or (sink not in topic.live and sink not in topic.waiting):
            return False
        topic.live.discard(sink)
        topic.waiting.discard(sink)
        return self.link.release(feed, product)

    def _catch_up(self, feed: str, product: str, topic: _Topic) -> list[str]:
        if feed == "book" and topic.book is not None:
            bids = sorted(topic.book["buy"].items(), reverse=True)
            asks = sorted(topic.book["sell"].items())
            return [
                dumps(
                    {
                        "feed": "book_snapshot",
                        "product_id": product,
                        "timestamp": topic.book_meta.get("timestamp"),
                        "seq": topic.book_meta.get("seq"),
                        "bids": [{"price": p, "qty": q} for p, q in bids],
                        "asks": [{"price": p, "qty": q} for p, q in asks],
                        "tickSize": topic.book_meta.get("tickSize"),
                    }
                )
            ]
        if feed == "trade":
            return [dumps({"feed": "trade_snapshot", "product_id": product, "trades": list(topic.trades)})]
        return []

    def forget(self, sink: Sink) -> list[tuple[str, str]]:
        """Remove `sink` everywhere; the (feed, product) pairs whose upstream is now unwanted."""
        self.heartbeat.discard(sink)
        released = []
        for (feed, product), topic in list(self.topics.items()):
            if (sink in topic.live or sink in topic.waiting) and self.unsubscribe(sink, feed, product):
                released.append((feed, product))
        return released

    # ---- the link (PublicListener) --------------------------------------------------------------------
    def on_public_message(self, message: Mapping[str, Any]) -> None:
        try:
            self._route(message)
        except Exception:  # a relay bug must never break the link: logged loudly, message lost
            log.exception("relay_public_fanout_failed", feed=str(message.get("feed"))[:64])

    def on_public_state(self, previous: LinkState, state: LinkState) -> None:
        if previous is LinkState.CONNECTED and state is not LinkState.CONNECTED:
            notice = dumps({"event": "alert", "message": PAUSED})
            sinks: set[Sink] = set(self.heartbeat)
            for (feed, _product), topic in self.topics.items():
                sinks |= topic.live | topic.waiting
                if feed in ("book", "trade"):  # a fresh snapshot first, when the link is back
                    topic.reset()
            for sink in sinks:
                sink.offer(notice, "alert")
            if sinks:
                log.warning("relay_public_feeds_paused", link=self.link.name, subscribers=len(sinks))

    def _route(self, message: Mapping[str, Any]) -> None:
        feed = message.get("feed")
        if feed == "heartbeat":
            if self.heartbeat:
                text = dumps(message)
                for sink in list(self.heartbeat):
                    sink.offer(text, "heartbeat")
            return
        product = message.get("product_id")
        if not isinstance(product, str):
            return
        if feed in ("ticker", "ticker_lite"):
            key = (str(feed), product)
            self.last[key] = dict(message)
            topic = self.topics.get(key)
            if topic is not None:
                self._fan(topic.live, message, str(feed))
        elif feed == "book_snapshot":
            topic = self.topics.get(("book", product))
            if topic is not None:
                topic.book = {
                    "buy": {row["price"]: row["qty"] for row in message.get("bids") or ()},
                    "sell": {row["price"]: row["qty"] for row in message.get("asks") or ()},
                }
                topic.book_meta = {k: message.get(k) for k in ("timestamp", "seq", "tickSize")}
                self._fan(topic.snapshot_came(), message, "book")
        elif feed == "book":
            topic = self.topics.get(("book", product))
            if topic is not None and topic.ready and topic.book is not None:
                side = topic.book.get(str(message.get("side")))
                price, qty = message.get("price"), message.get("qty")
                if side is not None and isinstance(price, int | float) and isinstance(qty, int | float):
                    if qty == 0:
                        side.pop(price, None)
                    else:
                        side[price] = qty
                topic.book_meta.update(seq=message.get("seq"), timestamp=message.get("timestamp"))
                self._fan(topic.live, message, "book")
        elif feed == "trade_snapshot":
            topic = self.topics.get(("trade", product))
            if topic is not None:
                topic.trades.clear()
                rows = [t for t in message.get("trades") or () if isinstance(t, dict)]
                topic.trades.extend(rows[:TRADES_KEPT])
                self._fan(topic.snapshot_came(), message, "trade")
        elif feed == "trade":
            topic = self.topics.get(("trade", product))
            if topic is not None and topic.ready:
                topic.trades.appendleft(dict(message))  # newest first, as the snapshot lists them
                self._fan(topic.live, message, "trade")

    @staticmethod
    def _fan(sinks: Iterable[Sink], message: Mapping[str, Any], feed: str) -> None:
        text: str | None = None
        for sink in list(sinks):
            if text is None:
                text = dumps(message)
            sink.offer(text, feed)
