"""Mark prices for the guard: from the exchange's public `ticker` WebSocket feed while it is up (pushed
by `guardian.stream.link.TickerLink`), and from polling the public REST `tickers` while it is not, or
while a symbol in use has no fresh mark from it.

A mark is usable only while it is fresh: older than `max_age_s` (counted on the monotonic clock from
when the answer arrived), or from a suspended market, it is no mark at all, and every rule that needs
one refuses (`markPriceUnavailable`). Failing closed is the point: a stale mark would let a price band
wave through an order priced against a market that has moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
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
        self.pushed = 0
        self.known: set[str] = set()  # symbols the exchange lists (from a poll or the feed)
        self.wanted: set[str] = set()  # symbols asked for: the ticker feed subscribes them
        self._suspended: set[str] = set()
        self.stream_up: Callable[[], bool] = lambda: False
        # Told of each symbol whose usable mark may have changed (the exposure guard's running figures).
        self.listeners: list[Callable[[str], None]] = []

    def now(self) -> float:
        """The clock marks age by (monotonic)."""
        return self._clock()

    def suspended(self, symbol: str) -> bool:
        """The market says it is suspended (ticker `suspended`): no new order goes to it."""
        return symbol in self._suspended

    def mark(self, symbol: str) -> Decimal | None:
        """The fresh mark of `symbol`, or None (unknown, stale, or its market suspended)."""
        found = self.quote(symbol)
        return None if found is None else found[0]

    def quote(self, symbol: str) -> tuple[Decimal, float] | None:
        """The fresh mark of `symbol` and until when it stays fresh (on `now()`'s clock), or None."""
        if symbol not in self.wanted and symbol in self.known:  # bounded by what the exchange lists
            self.wanted.add(symbol)
        found = self._marks.get(symbol)
        if found is None:
            return None
        price, at = found
        until = at + self.max_age_s
        return (price, until) if self._clock() <= until else None

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
            if isinstance(symbol, str):
                self._take(symbol, ticker, now)

    def push(self, message: dict[str, object] | Mapping[str, object]) -> None:
        """One message of the WebSocket `ticker` feed (`product_id`, `markPrice`, `suspended`, ...)."""
        symbol = message.get("product_id")
        if isinstance(symbol, str):
            self._take(symbol.upper(), message, self._clock())
            self.pushed += 1

    def _take(self, symbol: str, ticker: Mapping[str, object], now: float) -> None:
        self.known.add(symbol)
        if ticker.get("suspended") is True:
            if symbol not in self._suspended:
                log.warning("market_suspended", symbol=symbol)
            self._suspended.add(symbol)
        elif symbol in self._suspended:
            self._suspended.discard(symbol)
            log.info("market_resumed", symbol=symbol)
        price = _price(ticker.get("markPrice"))
        if price is None or symbol in self._suspended:
            if self._marks.pop(symbol, None) is not None:
                self._changed(symbol)
            return
        self._marks[symbol] = (price, now)
        self._changed(symbol)

    def _changed(self, symbol: str) -> None:
        for listener in self.listeners:
            listener(symbol)

    def _covered(self) -> bool:
        """The feed is up and gives every symbol in use a fresh mark: no poll needed."""
        if not self.stream_up():
            return False
        now = self._clock()
        for symbol in self.wanted & self.known:
            found = self._marks.get(symbol)
            if symbol not in self._suspended and (found is None or now - found[1] > self.max_age_s / 2):
                return False
        return True

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
            if not self._covered():
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
