"""`Pushes`: the daemon's notifiers, and the one rule that matters most: telling a person never waits.

`push(note)` is synchronous and O(1) per notifier: it filters (the notifier's `events`), folds, and puts a
message on that notifier's bounded queue, or drops it (counted) when the queue is full. Each notifier
has its own sender task, so a hung Telegram holds no Slack message, and all share one aiohttp session
(created in `start()`, inside the running loop), apart from the exchange's clients: the switch and the
orders never wait behind a notification, and a hung receiver costs one socket and a timeout.

Per notifier:
- A storm is folded: one message per event kind and account per `min_interval_s`. The first goes at
  once; the others within the interval are held, and when it ends one message goes with the latest of
  them and how many it stands for.
- `switch_degraded` is told once per episode, and only when it has lasted `degraded_for_s`; after it, a
  `switch_rearmed` that ends the episode is told to whoever heard the alarm.
- A failed delivery (no answer within `timeout_s`, a refused connection, 5xx, 429) is retried with
  backoff, `MAX_ATTEMPTS` times in all; a refusal (4xx) is not. Each failure is counted
  (`guardian_notify_failures_total{notifier}`); a message given up is logged and counted as dropped.

`close(limit_s)`: held messages go at once, and the queues get `limit_s` to empty; what is left is
dropped, counted and logged. Nothing here logs a URL: they hold secrets (Slack's path, Telegram's token).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
import structlog

from guardian.config import NOTIFY_EVENTS, NotifyConfig
from guardian.kraken.times import to_iso
from guardian.push import dialects
from guardian.push.messages import Note, render, trial

log = structlog.get_logger("guardian.push")

QUEUE_SIZE: Final = 64  # messages waiting per notifier (a storm is folded first: 64 distinct ones)
MAX_ATTEMPTS: Final = 6
BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0)  # before the 2nd, 3rd... attempt, jittered +-20 %
MAX_RETRY_AFTER_S: Final = 30.0  # a receiver's Retry-After is honoured up to this
MAX_ANSWER_BYTES: Final = 16 * 1024
DROP_REASONS: Final = ("queue_full", "failed", "shutdown")

Key = tuple[str, str]  # (event, account or "")


class PushObserver(Protocol):
    """What the metrics are told."""

    def on_notify_sent(self, notifier: str) -> None: ...
    def on_notify_failure(self, notifier: str) -> None: ...
    def on_notify_dropped(self, notifier: str, reason: str) -> None: ...
    def on_notify_folded(self, notifier: str) -> None: ...


@dataclass(slots=True)
class _Message:
    note: Note
    count: int = 1  # the events it stands for
    first_at: float | None = None  # epoch seconds of the first of them, when folded


@dataclass(slots=True)
class _Fold:
    """Events of one kind and account held back until the notifier's `min_interval_s` has passed."""

    note: Note  # the latest
    first_at: float
    count: int = 1
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    problem: str | None  # None: delivered
    retry: bool = False
    retry_after_s: float | None = None


async def post(session: aiohttp.ClientSession, config: NotifyConfig, message: _Message, host: str) -> Outcome:
    """One delivery attempt in the notifier's dialect, bounded by its `timeout_s`."""
    text = render(message.note, host=host, count=message.count, first_at=message.first_at)
    url, body = dialects.request(config, message.note, text, message.count)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    try:
        async with session.post(url, json=body, timeout=timeout, allow_redirects=False) as response:
            status = response.status
            retry_after = _seconds(response.headers.get("Retry-After"))
            answer = b"" if status < 300 else await response.content.read(MAX_ANSWER_BYTES)
    except TimeoutError:
        return Outcome(f"no answer within {config.timeout_s:g} s", retry=True)
    except aiohttp.ClientError as exc:  # refused, reset, no such host: the class says which, never the URL
        return Outcome(type(exc).__name__, retry=True)
    if 200 <= status < 300:
        return Outcome(None)
    retry = status in (408, 429) or status >= 500
    wait = retry_after if retry_after is not None else dialects.retry_after(config, answer)
    return Outcome(dialects.refusal(config, status, answer), retry=retry, retry_after_s=wait)


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:  # an HTTP date: the backoff applies
        return None


class _Channel:
    """One notifier: its filter, its folds, its queue and the sender task that empties it."""

    def __init__(self, config: NotifyConfig, *, host: str, observer: PushObserver | None) -> None:
        self.config = config
        self.name = config.name
        self._host = host
        self._observer = observer
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(QUEUE_SIZE)
        self._last: dict[Key, float] = {}  # loop time of the last message of each kind and account
        self._folds: dict[Key, _Fold] = {}
        self._told_degraded: dict[str, float] = {}  # account -> the degraded episode told (its start)
        self._task: asyncio.Task[None] | None = None
        self._sending: _Message | None = None
        self._closed = False
        self.sent = self.failures = self.dropped = self.folded = 0
        self.last_error: str | None = None
        self.last_sent_at: float | None = None

    # ---- taking events (synchronous, never waits) -----------------------------------------------------
    def offer(self, note: Note) -> None:
        if self._closed or note.event not in self.config.events or not self._due(note):
            return
        loop = asyncio.get_running_loop()
        key = (note.event, note.account or "")
        fold = self._folds.get(key)
        if fold is not None:
            fold.note = note
            fold.count += 1
            self.folded += 1
            if self._observer is not None:
                self._observer.on_notify_folded(self.name)
            return
        now = loop.time()
        last = self._last.get(key)
        if last is not None and now - last < self.config.min_interval_s:
            fold = self._folds[key] = _Fold(note, first_at=note.at)
            fold.timer = loop.call_at(last + self.config.min_interval_s, self._release, key)
            return
        self._last[key] = now
        self._put(_Message(note))

    def _due(self, note: Note) -> bool:
        """The switch's episodes: degraded is told once, after `degraded_for_s`; a re-arm that ends a
        degraded episode only to a notifier that told it."""
        account = note.account or ""
        if note.event == "switch_degraded":
            since = note.since if note.since is not None else time.monotonic()
            if time.monotonic() - since < self.config.degraded_for_s:
                return False
            if self._told_degraded.get(account) == since:
                return False
            self._told_degraded[account] = since
            return True
        if note.event in ("switch_expired", "switch_rearmed"):
            told = self._told_degraded.pop(account, None)
            return note.event == "switch_expired" or note.after != "degraded" or told is not None
        return True

    def _release(self, key: Key) -> None:
        fold = self._folds.pop(key, None)
        if fold is None:
            return
        if fold.timer is not None:
            fold.timer.cancel()
        self._last[key] = asyncio.get_running_loop().time()
        self._put(_Message(fold.note, fold.count, fold.first_at if fold.count > 1 else None))

    def _put(self, message: _Message) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._drop(message, "queue_full")

    def _drop(self, message: _Message, reason: str, **detail: object) -> None:
        self.dropped += 1
        if self._observer is not None:
            self._observer.on_notify_dropped(self.name, reason)
        note = message.note
        (log.error if reason == "failed" else log.warning)(
            "notify_dropped",
            notifier=self.name,
            about=note.event,
            account=note.account,
            bot=note.bot,
            reason=reason,
            **detail,
        )

    # ---- sending ---------------------------------------------------------------------------------------
    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(session), name=f"notify-{self.name}")

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            message = await self._queue.get()
            self._sending = message
            try:
                await self._deliver(session, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one delivery must not silence the notifier for good
                self._drop(message, "failed", error=f"bug: {type(exc).__name__}")
            finally:
                self._sending = None
                self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, message: _Message) -> None:
        note = message.note
        for attempt in range(1, MAX_ATTEMPTS + 1):
            outcome = await post(session, self.config, message, self._host)
            if outcome.problem is None:
                self.sent += 1
                self.last_error = None
                self.last_sent_at = time.time()
                if self._observer is not None:
                    self._observer.on_notify_sent(self.name)
                log.info(
                    "notify_sent",
                    notifier=self.name,
                    about=note.event,
                    account=note.account,
                    bot=note.bot,
                    count=message.count,
                    attempts=attempt,
                )
                return
            self.failures += 1
            self.last_error = outcome.problem
            if self._observer is not None:
                self._observer.on_notify_failure(self.name)
            if not outcome.retry or attempt == MAX_ATTEMPTS:
                break
            delay = BACKOFF_S[attempt - 1] * random.uniform(0.8, 1.2)
            delay = max(delay, min(outcome.retry_after_s or 0.0, MAX_RETRY_AFTER_S))
            log.warning(
                "notify_send_failed",
                notifier=self.name,
                about=note.event,
                account=note.account,
                attempt=attempt,
                error=outcome.problem,
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)
        self._drop(message, "failed", error=self.last_error, attempts=attempt)

    # ---- shutdown --------------------------------------------------------------------------------------
    def release_all(self) -> None:
        """Stop taking events; what is held back goes into the queue now."""
        self._closed = True
        for key in list(self._folds):
            self._release(key)

    async def drained(self) -> None:
        await self._queue.join()

    async def stop(self) -> None:
        """End the sender; what it had not delivered is dropped, counted."""
        left = [*([self._sending] if self._sending is not None else []), *self._pending()]
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # it ended on a bug before: said now, where it is collected
                log.error("notify_sender_failed", notifier=self.name, error=type(exc).__name__)
            self._task = None
        for message in left:
            self._drop(message, "shutdown")

    def _pending(self) -> list[_Message]:
        found = []
        while not self._queue.empty():
            found.append(self._queue.get_nowait())
            self._queue.task_done()
        return found

    def state_json(self) -> dict[str, object]:
        every = self.config.events == frozenset(NOTIFY_EVENTS)
        return {
            "name": self.name,
            "kind": self.config.kind,
            "events": "all" if every else sorted(self.config.events),
            "min_interval_s": self.config.min_interval_s,
            "queued": self._queue.qsize() + (1 if self._sending is not None else 0),
            "held": len(self._folds),
            "sent": self.sent,
            "failures": self.failures,
            "dropped": self.dropped,
            "folded": self.folded,
            "last_error": self.last_error,
            "last_sent": None if self.last_sent_at is None else to_iso(self.last_sent_at),
        }


class Pushes:
    """Every configured notifier. `await start()` in the running loop, `push()` from it, `await close()`."""

    def __init__(
        self,
        configs: Sequence[NotifyConfig],
        *,
        observer: PushObserver | None = None,
        host: str | None = None,
    ) -> None:
        self.host = host or socket.gethostname()
        self._observer = observer
        self.channels = [_Channel(config, host=self.host, observer=observer) for config in configs]
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None or not self.channels:
            return
        self._session = aiohttp.ClientSession()
        for channel in self.channels:
            channel.start(self._session)

    async def reconfigure(self, configs: Sequence[NotifyConfig], limit_s: float) -> None:
        """A reload's notifiers: one kept (by name) takes its new settings at once and keeps its queue and
        what it holds back; a new one starts; a removed one stops taking events, and what it held is sent
        within `limit_s` before it stops (as at shutdown)."""
        by_name = {channel.name: channel for channel in self.channels}
        channels = []
        for config in configs:
            channel = by_name.pop(config.name, None)
            if channel is None:
                channel = _Channel(config, host=self.host, observer=self._observer)
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                channel.start(self._session)
            else:
                channel.config = config
            channels.append(channel)
        self.channels = channels
        removed = list(by_name.values())
        for channel in removed:
            channel.release_all()
        if removed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit_s):
                    await asyncio.gather(*(channel.drained() for channel in removed))
            for channel in removed:
                await channel.stop()

    def push(self, note: Note) -> None:
        """Tell every notifier that wants `note`'s event. Synchronous: it never waits for a receiver."""
        for channel in self.channels:
            channel.offer(note)

    async def close(self, limit_s: float) -> bool:
        """Flush within `limit_s`: held messages go now, the queues get that long to empty. True if every
        message was delivered or given up before the limit."""
        for channel in self.channels:
            channel.release_all()
        flushed = True
        try:
            if self._session is not None:
                try:
                    async with asyncio.timeout(limit_s):
                        await asyncio.gather(*(channel.drained() for channel in self.channels))
                except TimeoutError:
                    flushed = False
                    log.warning("notify_flush_incomplete", limit_s=limit_s)
        finally:
            for channel in self.channels:
                await channel.stop()
            if self._session is not None:
                await self._session.close()
                self._session = None
        return flushed

    def state_json(self) -> list[dict[str, object]]:
        """`/guardian/state`'s `notify`: each notifier's name, kind and counts; never a URL or a token."""
        return [channel.state_json() for channel in self.channels]


@dataclass(frozen=True, slots=True)
class TrialResult:
    name: str
    kind: str
    problem: str | None  # None: delivered


async def send_tests(configs: Sequence[NotifyConfig], *, host: str | None = None) -> list[TrialResult]:
    """`guardian notify-test`: one test message to each notifier at once, one attempt each."""
    host = host or socket.gethostname()
    async with aiohttp.ClientSession() as session:
        outcomes = await asyncio.gather(
            *(post(session, config, _Message(trial(config.name)), host) for config in configs)
        )
    return [
        TrialResult(config.name, config.kind, outcome.problem)
        for config, outcome in zip(configs, outcomes, strict=True)
    ]
