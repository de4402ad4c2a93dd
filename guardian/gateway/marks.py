"""Mark prices for the guard, from polling the exchange's public `tickers`.

A mark is usable only while it is fresh: older than `max_age_s` (counted on the monotonic clock from
when the answer arrived), or from a suspended market, it is no mark at all, and every rule that needs
one refuses (`markPriceUnavailable`). Failing closed is the point: a stale mark would let a price band
wave through an order priced against a market that has moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import structlog

from guardian.errors import ExchangeError
from guardian.kraken.client import KrakenClient

log = structlog.get_logger("guardian.marks")


class Marks:
    """One exchange's marks, refreshed every `interval_s` by `run()`."""

    def __init__(
        self,
        client: KrakenClient,
        *,
        interval_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._marks: dict[str, tuple[Decimal, float]] = {}
        self.last_error: str | None = None
        self.polls = 0
        self.failures = 0

    def mark(self, symbol: str) -> Decimal | None:
        """The fresh mark of `symbol`, or None (unknown, stale, or its market suspended)."""
        found = self._marks.get(symbol)
        if found is None:
            return None
        price, at = found
        return price if self._clock() - at <= self.max_age_s else None

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every mark held, with its age and whether it is still fresh enough to use."""
        now = self._clock()
        return {
            symbol: {"price": str(price), "age_s": round(now - at, 3), "fresh": now - at <= self.max_age_s}
            for symbol, (price, at) in sorted(self._marks.items())
        }

    def age(self, symbol: str) -> float | None:
        found = self._marks.get(symbol)
        return None if found is None else self._clock() - found[1]

    def update(self, tickers: list[dict[str, object]], at: float | None = None) -> None:
        """Take the marks of one `tickers` answer (anything unusable is dropped, never kept stale)."""
        now = self._clock() if at is None else at
        for ticker in tickers:
            symbol = ticker.get("symbol")
            if not isinstance(symbol, str):
                continue
            price = _price(ticker.get("markPrice"))
            if price is None or ticker.get("suspended") is True:
                self._marks.pop(symbol, None)
                continue
            self._marks[symbol] = (price, now)

    async def poll_once(self) -> bool:
        try:
            tickers = await self._client.tickers()
        except ExchangeError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("marks_poll_failed", error=str(exc), failures=self.failures)
            return False
        self.update(tickers)
        self.polls += 1
        self.last_error = None
        return True

    async def run(self) -> None:
        """Poll until cancelled, on a fixed monotonic beat."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll_once()
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:
                next_at = now
            await asyncio.sleep(next_at - now)


def _price(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    return price if price.is_finite() and price > 0 else None
