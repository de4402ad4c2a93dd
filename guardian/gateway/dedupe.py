"""Retried orders: a `sendorder` (or a `batchorder` with `send` items) whose `cliOrdId` was already
forwarded gets the first answer again instead of becoming a second order, but only when it is the same
request.

Bots retry on timeouts. The exchange refuses a `cliOrdId` only while an order with it is still open
(`clientOrderIdAlreadyExist`); once the first order filled, a retry would fill again. So guardian
remembers, per account, every `cliOrdId` it forwarded within a window, with the bot that sent it and
what the request said (every field but the nonce and the signature, as parsed: `size=1` and `size=1.0`
are the same order). A later request using one of those `cliOrdId`s is:
- a **retry** when it comes from the same bot with the same content (for a batch: the same batch, every
  item and its processBefore). While the first attempt is in flight the retry waits for it and gets the
  same answer; once answered, it gets that answer (marked with the `X-Guardian-Replayed` header); if
  the first attempt's outcome is unknown (no answer in time), the caller must ask the exchange
  (`orders/status`) before deciding, and `Outcome.UNKNOWN` says so;
- a **reuse** otherwise (another bot of the account, or another order under the same id, or a batch
  item reusing a single order's id): refused with Kraken's own `clientOrderIdAlreadyExist` (409), naming
  the earlier request's bot and time but nothing of its content, and never forwarded. An idempotency key
  replays only the request it was first used for (Stripe's API is the usual reference).

cliOrdIds are unique per account at Kraken, so each account has its own memory; other accounts are
unaffected.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from guardian.gateway.refusal import Refusal
from guardian.kraken.client import RawAnswer
from guardian.kraken.times import to_iso


class Outcome(enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    UNKNOWN = "unknown"


@dataclass(slots=True, eq=False)
class Attempt:
    """One forwarded request that carried cliOrdIds: who sent it, what it said, and how it ended."""

    at: float  # monotonic, for the window
    bot: str | None = None
    content: Hashable = None  # compared with ==, never shown: another bot must learn nothing of it
    keys: tuple[str, ...] = ()  # every cliOrdId it claimed
    sent_at: float = 0.0  # wall clock, for the message a reuse gets
    outcome: Outcome = Outcome.PENDING
    answer: RawAnswer | None = None
    # Made only when a retry has to wait for the attempt in flight, and dropped once it is settled: most
    # attempts are never waited on, and an Event is half of what each remembered order would cost.
    _settled: asyncio.Event | None = field(default=None, repr=False)

    async def wait(self) -> None:
        """Until the attempt is answered, found unknown or forgotten (at once if it already is)."""
        if self.outcome is Outcome.PENDING:
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()

    def settle(self, outcome: Outcome, answer: RawAnswer | None = None) -> None:
        self.outcome = outcome
        self.answer = answer
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    def is_retry(self, bot: str | None, content: Hashable, keys: Sequence[str]) -> bool:
        """The same request again: the same bot, the same content, the same cliOrdIds."""
        return self.bot == bot and self.keys == tuple(keys) and self.content == content


def reuse_refusal(cli_ord_id: str, earlier: Attempt, *, item: int | None = None) -> Refusal:
    """`clientOrderIdAlreadyExist` for a cliOrdId an earlier, different request used: who and when,
    never what (that may be another bot's order)."""
    who = "another bot" if earlier.bot is None else f"bot {earlier.bot!r}"
    refusal = Refusal(
        "clientOrderIdAlreadyExist",
        f"cliOrdId {cli_ord_id!r} was already used on this account by {who} at {to_iso(earlier.sent_at)}; "
        "only the same request from the same bot is answered again (a retry): use a new cliOrdId",
    )
    return refusal if item is None else refusal.for_item(item, None)


class RecentOrders:
    """One account's forwarded `cliOrdId`s within `window_s` (bounded to `max_entries`)."""

    def __init__(
        self, window_s: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._attempts: OrderedDict[str, Attempt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def _expire(self) -> None:
        """Forget answered attempts older than the window (and the oldest beyond `max_entries`); an
        attempt still in flight is never forgotten, because its retries wait on it."""
        horizon = self._clock() - self.window_s
        stale: list[str] = []
        for cli_ord_id, attempt in self._attempts.items():  # oldest first
            if attempt.at > horizon and len(self._attempts) - len(stale) <= self.max_entries:
                break
            if attempt.outcome is not Outcome.PENDING:
                stale.append(cli_ord_id)
        for cli_ord_id in stale:
            del self._attempts[cli_ord_id]

    def get(self, cli_ord_id: str) -> Attempt | None:
        return self._attempts.get(cli_ord_id)

    def claim(
        self,
        keys: str | Sequence[str],
        bot: str | None = None,
        content: Hashable = None,
        *,
        items: Sequence[int] | None = None,
    ) -> tuple[Attempt, bool]:
        """(attempt, True): this is the first attempt, now registered as in flight under every key; the
        caller must `answered()`, `unknown()` or `forget()` it. (earlier, False): the earlier attempt
        (possibly still in flight) of which this request is a retry. Raises Refusal
        (`clientOrderIdAlreadyExist`) when a key was used by a different request; `items` are the batch
        positions of the keys, to name the item at fault."""
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self._expire()
        found = [(index, key, self._attempts.get(key)) for index, key in enumerate(keys)]
        for index, key, attempt in found:
            if attempt is None:
                continue
            if attempt.is_retry(bot, content, keys) and all(a is attempt for _, _, a in found):
                return attempt, False
            raise reuse_refusal(key, attempt, item=None if items is None else items[index])
        attempt = Attempt(self._clock(), bot, content, keys, time.time())
        for key in keys:
            self._attempts[key] = attempt
        return attempt, True

    def answered(self, attempt: Attempt, answer: RawAnswer) -> None:
        attempt.settle(Outcome.ANSWERED, answer)

    def unknown(self, attempt: Attempt) -> None:
        attempt.settle(Outcome.UNKNOWN)

    def forget(self, attempt: Attempt) -> None:
        """The attempt never reached the exchange (refused locally, or the exchange says it has no such
        order): a retry is a first attempt again."""
        for key in attempt.keys:
            if self._attempts.get(key) is attempt:
                del self._attempts[key]
        attempt.settle(Outcome.UNKNOWN)
