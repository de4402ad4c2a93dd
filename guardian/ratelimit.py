"""A cost budget over a sliding window, the model of Kraken's rate limits.

Kraken says a key may spend 500 cost units "every 10 seconds" without saying how the budget refills.
A sliding window is the strict reading: at no moment have more than `capacity` units been spent in the
last `window_s` seconds. Whatever the exchange really does, a client that stays inside this model stays
inside the exchange's limit. The simulator enforces it; the guard spends from it before forwarding.

`TokenBucket` is the other shape, for a budget guardian sets itself (the public one): a burst answered at
once from a full bucket, the long run held to a rate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class CostBudget:
    """Spend cost units against a capacity over a sliding window, on the monotonic clock."""

    def __init__(
        self,
        capacity: float,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity <= 0 or window_s <= 0:
            raise ValueError("capacity and window_s must be positive")
        self.capacity = capacity
        self.window_s = window_s
        self._clock = clock
        self._spent: deque[tuple[float, float]] = deque()
        self._used = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._spent and self._spent[0][0] <= horizon:
            self._used -= self._spent.popleft()[1]
        if not self._spent:
            self._used = 0.0  # no float residue once the window is empty

    def available(self) -> float:
        """Units that can be spent right now."""
        self._expire(self._clock())
        return self.capacity - self._used

    def try_spend(self, cost: float, *, reserve: float = 0.0) -> bool:
        """Spend `cost` if that leaves at least `reserve` units; otherwise spend nothing and say False."""
        now = self._clock()
        self._expire(now)
        if cost <= 0:
            return True
        if self._used + cost > self.capacity - reserve:
            return False
        self._spent.append((now, cost))
        self._used += cost
        return True

    def spend(self, cost: float) -> None:
        """Record `cost` whatever is left: for calls that go out regardless (the switch's refreshes)."""
        if cost <= 0:
            return
        now = self._clock()
        self._expire(now)
        self._spent.append((now, cost))
        self._used += cost

    def seconds_until(self, cost: float, *, reserve: float = 0.0) -> float:
        """How long until `cost` could be spent (0 if now); infinite if it never fits."""
        if cost > self.capacity - reserve:
            return float("inf")
        now = self._clock()
        self._expire(now)
        need = self._used + cost - (self.capacity - reserve)
        if need <= 0:
            return 0.0
        freed = 0.0
        for stamp, spent in self._spent:
            freed += spent
            if freed >= need:
                return max(0.0, stamp + self.window_s - now)
        return self.window_s  # unreachable in practice: everything expires within one window


class TokenBucket:
    """`rate` tokens a second, at most `burst` held, on the monotonic clock; it starts full.

    Over any span of `t` seconds at most `burst + rate * t` are spent: a burst is answered at once, a
    sustained flood is held to `rate`. For guardian's own budgets (the public one); the exchange's are
    modelled by `CostBudget`."""

    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def available(self) -> float:
        """Tokens that can be spent right now."""
        self._refill()
        return self._tokens

    def try_spend(self, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many; otherwise spend nothing and say False."""
        self._refill()
        if cost > self._tokens:
            return False
        self._tokens -= cost
        return True

    def seconds_until(self, cost: float = 1.0) -> float:
        """How long until `cost` tokens are there (0 if now); infinite if the bucket never holds that many."""
        if cost > self.burst:
            return float("inf")
        self._refill()
        return max(0.0, (cost - self._tokens) / self.rate)

    def retune(self, rate: float, burst: float) -> None:
        """A new rate and burst (a reload): what was spent stays spent, so a bot near its limit is not given
        a fresh burst by a reload; a smaller burst caps what is held now."""
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._refill()
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)
