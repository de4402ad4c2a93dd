"""Public market data through guardian: unauthenticated, but neither free nor unbounded.

Kraken and its CDN throttle public requests by IP, and the switch's refreshes leave from the same IP, so
bots must not be able to send public requests as fast as they like. Two things keep them in check:

- **A rate budget**, a token bucket: each bot's public requests to the exchange (`[[accounts.clients]]
  public_rate_limit` per second, `public_burst` at once), and all of them together (`[server]
  public_rate_limit`, `public_burst`). A full bucket answers a client's start-up burst (30 different reads
  within a fraction of a second: ccxt's load_markets, an SDK's test suite) at once; it refills at the rate,
  so over any `t` seconds at most `burst + rate * t` go out, and a sustained flood is held to the rate.
  Over either budget, guardian answers 429 `apiLimitExceeded` and sends nothing.
- **A short cache**: identical reads (same path and query) within the endpoint's `cache_s` (the endpoint
  table's; 1 s for tickers, longer for slow-changing data) are answered from one upstream call; readers
  that arrive while that call is in flight wait for it. An answer from the cache costs no budget.

A public request carries no credential. It is charged to the bot whose local key is in its `APIKey`
header (a label, not a proof: labelling a request with another bot's key only spends that bot's share,
and never more than the total), or else to the share of unlabelled requests (10 per second, bursts of 40:
a bot's defaults).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from guardian.config import DEFAULT_BOT_PUBLIC_BURST, DEFAULT_BOT_PUBLIC_RATE_LIMIT, ClientConfig
from guardian.gateway.refusal import Refusal
from guardian.kraken.client import RawAnswer
from guardian.kraken.endpoints import Endpoint
from guardian.kraken.times import to_iso
from guardian.ratelimit import TokenBucket

MAX_CACHED = 4096  # distinct cached reads kept at once; the oldest go first
UNLABELLED = "(unlabelled)"

Fetch = Callable[[], Awaitable[RawAnswer]]


@dataclass(frozen=True, slots=True)
class _Cached:
    expires_at: float  # monotonic
    answer: RawAnswer
    stamp: tuple[int, int] | None = None  # where the answer's top-level serverTime value is, in its body

    def now(self) -> RawAnswer:
        """The answer with its `serverTime` saying now: a client that reads the exchange's clock from it
        (python-kraken-sdk's and ccxt's time calls) must not be told a time up to `cache_s` old."""
        if self.stamp is None:
            return self.answer
        start, end = self.stamp
        body = self.answer.body
        fresh = body[:start] + to_iso(time.time()).encode() + body[end:]
        return RawAnswer(self.answer.status, fresh, self.answer.content_type)


_SERVER_TIME = re.compile(rb'"serverTime"\s*:\s*"([^"\\]{1,40})"')


def _stamp(body: bytes) -> tuple[int, int] | None:
    """The span of the last `"serverTime": "..."` value in a JSON body (Kraken puts it at the top level,
    last), or None."""
    at = body.rfind(b'"serverTime"')
    found = _SERVER_TIME.match(body, at) if at >= 0 else None
    return None if found is None else found.span(1)


class PublicGate:
    """The public budget (per bot and in total) and the cache of identical reads."""

    def __init__(
        self,
        total_per_s: float,
        total_burst: float,
        clients: Iterable[ClientConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.total = TokenBucket(total_per_s, total_burst, clock)
        # Each bot's bucket, under every key it has (a bot rotating its key has two: one budget).
        self._bots: dict[str, tuple[str, TokenBucket]] = {}
        self._bind(clients)
        self.unlabelled = TokenBucket(DEFAULT_BOT_PUBLIC_RATE_LIMIT, DEFAULT_BOT_PUBLIC_BURST, clock)
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[RawAnswer]] = {}
        self.upstream_calls = 0  # public requests that went to the exchange
        self.cache_hits = 0

    def reconfigure(self, total_per_s: float, total_burst: float, clients: Iterable[ClientConfig]) -> None:
        """A reload's budgets: each bot kept keeps what it has spent (retuned), a new bot starts full, a
        removed bot's keys are no longer counted as its. The cache and the reads in flight are kept."""
        self.total.retune(total_per_s, total_burst)
        self._bind(clients)

    def _bind(self, clients: Iterable[ClientConfig]) -> None:
        """Each bot's bucket under each of its keys: one it already had is retuned, a new one starts full."""
        clients = list(clients)
        kept = {name: bucket for name, bucket in self._bots.values()}
        buckets: dict[str, TokenBucket] = {}
        for client in clients:
            bucket = kept.get(client.name)
            if bucket is None:
                bucket = TokenBucket(client.public_rate_limit, client.public_burst_size, self._clock)
            else:
                bucket.retune(client.public_rate_limit, client.public_burst_size)
            buckets[client.name] = bucket
        self._bots = {
            key.api_key: (client.name, buckets[client.name]) for client in clients for key in client.keys
        }

    def bot_for(self, headers: Mapping[str, str]) -> str | None:
        """The bot a public request is labelled with (its `APIKey` header), if any."""
        found = self._bots.get(headers.get("APIKey", ""))
        return None if found is None else found[0]

    async def answer(
        self, endpoint: Endpoint, path: str, query: str, headers: Mapping[str, str], fetch: Fetch
    ) -> RawAnswer:
        """The answer to a public read: from the cache, from a call in flight, or from `fetch()` once the
        budget allows it. Refusal(`apiLimitExceeded`) when it does not."""
        key = (path, query)
        cacheable = endpoint.cache_s > 0
        if cacheable:
            cached = self._cache.get(key)
            if cached is not None and cached.expires_at > self._clock():
                self.cache_hits += 1
                return cached.now()
            pending = self._inflight.get(key)
            if pending is not None:
                self.cache_hits += 1
                return await asyncio.shield(pending)  # one waiter leaving does not cancel the others
        self._spend(headers)
        if not cacheable:
            self.upstream_calls += 1
            return await fetch()
        future: asyncio.Future[RawAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.upstream_calls += 1
            answer = await fetch()
        except BaseException:
            # The caller that fetched went away (or hit a bug): those waiting on it are told the exchange's
            # answer did not arrive, as if they had asked themselves, rather than inherit a cancellation.
            future.set_result(_not_fetched())
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(answer)
        if 200 <= answer.status < 300:
            self._remember(key, _Cached(self._clock() + endpoint.cache_s, answer, _stamp(answer.body)))
        return answer

    def _spend(self, headers: Mapping[str, str]) -> None:
        found = self._bots.get(headers.get("APIKey", ""))
        name, own = found if found is not None else (UNLABELLED, self.unlabelled)
        if own.available() < 1:
            raise Refusal(
                "apiLimitExceeded",
                f"public requests of {'bot ' + repr(name) if found else 'requests without a bot APIKey header'} "
                f"are over {own.rate:g} per second after a burst of {own.burst:g} "
                f"(accounts.clients.public_rate_limit, public_burst); retry in {own.seconds_until(1):.2f} s",
            )
        if not self.total.try_spend(1):
            raise Refusal(
                "apiLimitExceeded",
                f"all bots' public requests are over {self.total.rate:g} per second after a burst of "
                f"{self.total.burst:g} (server.public_rate_limit, public_burst); retry in "
                f"{self.total.seconds_until(1):.2f} s",
            )
        own.try_spend(1)  # there was one: nothing ran since it was looked at

    def _remember(self, key: tuple[str, str], entry: _Cached) -> None:
        if len(self._cache) >= MAX_CACHED:
            now = self._clock()
            for stale in [k for k, v in self._cache.items() if v.expires_at <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = entry


def _not_fetched() -> RawAnswer:
    body = {
        "result": "error",
        "serverTime": to_iso(time.time()),
        "error": "Unavailable",
        "message": "the identical request this one waited for did not complete; retry",
    }
    return RawAnswer(502, json.dumps(body).encode(), "application/json")
