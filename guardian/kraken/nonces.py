"""Checking the nonces a key sends, the way the exchange does: no repeats, and no falling more than a
tolerance below the highest seen (the exchange tolerates brief reordering of concurrent requests)."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

RECENT_KEPT = 4096


@dataclass
class NonceWindow:
    """One key's nonce history."""

    highest: int = -1  # nothing seen yet: a first nonce of 0 is new, not stale
    recent: set[int] = field(default_factory=set)
    order: deque[int] = field(default_factory=deque)

    def check(self, nonce: int, tolerance: int) -> str | None:
        """Record `nonce` and return None, or return the exchange's error code and record nothing."""
        if nonce in self.recent:
            return "nonceDuplicate"
        if nonce <= self.highest - tolerance or (tolerance == 0 and nonce < self.highest):
            return "nonceBelowThreshold"
        self.highest = max(self.highest, nonce)
        self.recent.add(nonce)
        self.order.append(nonce)
        while len(self.order) > RECENT_KEPT:
            self.recent.discard(self.order.popleft())
        return None


def tolerance_for(nonce: int, seconds: float, now: float | None = None) -> int:
    """`seconds` expressed in the nonce's own unit, whatever the client's scheme: milliseconds (13
    digits), python-kraken-sdk's 18 digits, nanoseconds (19). The unit is the power of ten closest to
    nonce / now; a nonce that is not a timestamp at all (a counter) gets no tolerance."""
    wall = time.time() if now is None else now
    ratio = nonce / wall
    if ratio < 100:  # a counter, or seconds: not enough resolution to tolerate anything
        return 0
    # Closest, not floor: a nonce signed a moment before `now` gives 999.99..., which is milliseconds.
    unit = 10 ** round(math.log10(ratio))
    return int(seconds * unit)
