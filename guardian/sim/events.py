"""The simulator's event bus: what happened at the exchange, in order, for whoever is listening.

One owner changes the exchange's state (the `Exchange`, called synchronously from the HTTP handlers,
the price ticker and the switch timers) and publishes an `Event` for each change, numbered in the order
it happened. Listeners (the WebSocket connections) each hold a `Subscription`: a bounded queue that the
bus fills synchronously and the listener drains at its own pace. A listener that falls `maxsize` events
behind is cut off (`Overflow` on its next read) rather than allowed to hold the exchange or the other
listeners back; the bus counts how many were cut off.

Events carry data already rendered for the moment they happened (copies, never live objects), so a
listener that reads them late still sees each change as it was.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_QUEUE = 10_000

# Topics: private ones are published for one account, public ones for everybody.
PRIVATE_TOPICS = ("order", "fill", "positions", "balances", "notice")
PUBLIC_TOPICS = ("trade",)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int  # position in the exchange's history; strictly increasing
    topic: str
    account: str | None  # None: a public event
    data: Mapping[str, Any]


class Overflow(Exception):
    """The subscriber fell too far behind and was cut off."""


class Subscription:
    """One listener's bounded queue. Items are bus `Event`s or anything the listener itself `put`s."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self.accounts: set[str] = set()
        self.public = False
        self.overflowed = False
        self._items: deque[object] = deque()
        self._ready = asyncio.Event()

    def wants(self, event: Event) -> bool:
        if event.account is None:
            return self.public
        return event.account in self.accounts

    def put(self, item: object) -> None:
        """Queue `item`; a full queue cuts the subscriber off (its next `get` raises Overflow)."""
        if self.overflowed:
            return
        if len(self._items) >= self.maxsize:
            self.overflowed = True
            self._items.clear()
            self._bus.overflows += 1
            self._bus.unsubscribe(self)
        else:
            self._items.append(item)
        self._ready.set()

    async def get(self) -> object:
        while not self._items:
            if self.overflowed:
                raise Overflow(f"more than {self.maxsize} events behind")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Fan-out from the exchange to its listeners; `publish` never blocks and never fails."""

    def __init__(self) -> None:
        self.seq = 0
        self.overflows = 0
        self._subs: list[Subscription] = []

    def subscribe(self, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        if maxsize < 1:
            raise ValueError("a subscription's queue holds at least one event")
        sub = Subscription(self, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def listening(self, account: str | None) -> bool:
        """Whether anyone would receive an event for `account` (None: a public event): lets the owner
        skip rendering what nobody reads."""
        if account is None:
            return any(s.public for s in self._subs)
        return any(account in s.accounts for s in self._subs)

    def publish(self, topic: str, account: str | None, render: Callable[[], Mapping[str, Any]]) -> None:
        """Number the event and queue it for each subscriber that wants it. `render` is called (once)
        only when somebody does."""
        self.seq += 1
        targets = [s for s in self._subs if (s.public if account is None else account in s.accounts)]
        if not targets:
            return
        event = Event(self.seq, topic, account, render())
        for sub in targets:
            sub.put(event)
