"""What happened lately on each account, for `/guardian/state` and the status page: the last refusals,
the last trips and kills, and each bot's last refusal.

Bounded whatever the traffic: `KEPT` of each per account (a deque that drops the oldest) and one refusal
per configured bot. Recording is O(1), reading O(KEPT). Nothing here is persisted: the journal has the
whole story (`guardian journal`); this is the screenful a person reads first. A refusal's message says
what is wrong and how to fix it; it never carries a secret (guardian.gateway.refusal), and is cut to
`MESSAGE_MAX` characters here all the same.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from guardian.kraken.times import to_iso

KEPT: Final = 20
MESSAGE_MAX: Final = 300


@dataclass(frozen=True, slots=True)
class Refused:
    at: float  # epoch s
    bot: str | None
    endpoint: str
    code: str
    message: str
    symbol: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "at": to_iso(self.at),
            "bot": self.bot,
            "endpoint": self.endpoint,
            "symbol": self.symbol,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Stopped:
    """A trip (`kind` "trip": `limit` says which) or a person's kill (`kind` "kill", of a bot or all)."""

    at: float
    kind: str
    reason: str
    mode: str
    limit: str | None = None
    bot: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "at": to_iso(self.at),
            "kind": self.kind,
            "limit": self.limit,
            "bot": self.bot,
            "mode": self.mode,
            "reason": self.reason,
        }


class Recent:
    """One account's recent refusals and stops; the bots it knows are the account's configured ones."""

    def __init__(self, bots: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._bots = frozenset(bots)
        self.refusals: deque[Refused] = deque(maxlen=KEPT)
        self.stops: deque[Stopped] = deque(maxlen=KEPT)
        self.last_refusal: dict[str, Refused] = {}

    def rebind(self, bots: Iterable[str]) -> None:
        """The account's bots after a reload: a new one's refusals are kept from now, a removed one's last
        refusal is forgotten (the account's list keeps it)."""
        self._bots = frozenset(bots)
        self.last_refusal = {bot: found for bot, found in self.last_refusal.items() if bot in self._bots}

    def refused(
        self, bot: str | None, endpoint: str, code: str, message: str, symbol: str | None = None
    ) -> None:
        found = Refused(self._clock(), bot, endpoint, code, message[:MESSAGE_MAX], symbol)
        self.refusals.append(found)
        if bot in self._bots:
            self.last_refusal[bot] = found

    def stopped(
        self,
        kind: str,
        reason: str,
        mode: str,
        *,
        limit: str | None = None,
        bot: str | None = None,
        at: float | None = None,
    ) -> None:
        when = self._clock() if at is None else at
        self.stops.append(Stopped(when, kind, reason[:MESSAGE_MAX], mode, limit, bot))

    def bot_json(self, bot: str) -> dict[str, object] | None:
        found = self.last_refusal.get(bot)
        return None if found is None else found.as_json()

    def as_json(self) -> dict[str, object]:
        """Newest first."""
        return {
            "refusals": [r.as_json() for r in reversed(self.refusals)],
            "trips": [s.as_json() for s in reversed(self.stops)],
        }
