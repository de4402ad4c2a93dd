"""The contracts the exchange lists, for the guard's arithmetic (`guardian.contracts`): read from the public
`instruments` at start and every `instruments_refresh_s` after.

Fail closed and say so: until the list has been read once, and for any symbol it does not have, has under a
type guardian does not judge, or has without the figures the arithmetic needs, new risk is refused with
`instrumentUnknown` (cancels and reduce-only orders pass). A fixed maturity past its `lastTradingTime`
(less `expiry_margin_s`) gets no new risk either (`instrumentExpired`). A later read that fails keeps the
last good list: contracts do not change under a running market, and refusing every order for a blip of
the public API would be worse than the list being a few minutes old.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from guardian.contracts import Contract, parse
from guardian.errors import ExchangeError
from guardian.gateway.refusal import Refusal
from guardian.kraken.client import KrakenClient
from guardian.kraken.times import to_iso

log = structlog.get_logger("guardian.instruments")

RETRY_FIRST_S: Final = 1.0  # a failed read is retried after this, doubling up to RETRY_MAX_S
# Until the first read, every new order is refused: an exchange back from an outage is read again within
# this long, not after a backoff grown to the refresh interval.
RETRY_MAX_S: Final = 30.0
MAX_UNJUDGED_SHOWN: Final = 50  # in /guardian/state; the log has them all


class Instruments:
    """One exchange's listed contracts. `run()` reads them until cancelled."""

    def __init__(
        self,
        client: KrakenClient | None,
        *,
        refresh_s: float = 300.0,
        expiry_margin_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.refresh_s = refresh_s
        self.expiry_margin_s = expiry_margin_s
        self._clock = clock
        self.contracts: dict[str, Contract] = {}
        self.unjudged: dict[str, str] = {}  # symbol -> why guardian cannot judge it
        self.loaded_at: float | None = None  # epoch seconds of the last good read
        self.reads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.loaded = asyncio.Event()
        # Told of each symbol whose contract appeared, changed or went (the running figures reprice it).
        self.listeners: list[Callable[[str], None]] = []

    async def wait_loaded(self, timeout_s: float) -> bool:
        """Until the list has been read once (at once, but in a daemon's first moments), at most
        `timeout_s`. False: not read (then `judge` refuses, saying why)."""
        if self.loaded.is_set():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self.loaded.wait()
        except TimeoutError:
            return False
        return True

    def contract(self, symbol: str) -> Contract | None:
        return self.contracts.get(symbol.upper())

    def update(self, rows: list[Any]) -> None:
        """Take one `instruments` answer whole: what it does not list is not listed any more."""
        contracts: dict[str, Contract] = {}
        unjudged: dict[str, str] = {}
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            contract, why = parse(row)
            if contract is not None:
                contracts[contract.symbol] = contract
            elif isinstance(row.get("symbol"), str) and why is not None:
                symbol = str(row["symbol"]).upper()
                if " index" in str(row.get("type", "")):
                    continue  # an index, not a contract: nothing to trade
                unjudged[symbol] = why
        for symbol, why in unjudged.items():
            if self.unjudged.get(symbol) != why:
                log.warning("instrument_not_judged", symbol=symbol, why=why)
        changed = {s for s in {*contracts, *self.contracts} if contracts.get(s) != self.contracts.get(s)}
        self.contracts, self.unjudged = contracts, unjudged
        self.loaded_at = self._clock()
        self.loaded.set()
        for symbol in changed:
            for listener in self.listeners:
                listener(symbol)

    def judge(self, symbol: str) -> Refusal | None:
        """Why new risk in `symbol` is refused, or None: it can be judged."""
        symbol = symbol.upper()
        found = self.contracts.get(symbol)
        if found is None:
            if self.loaded_at is None:
                why = "guardian has not read the exchange's instruments yet"
                if self.last_error:
                    why += f" (last try: {self.last_error})"
            elif symbol in self.unjudged:
                why = f"the exchange lists it, but {self.unjudged[symbol]}"
            else:
                why = "the exchange's instruments do not list it"
            return Refusal(
                "instrumentUnknown",
                f"{symbol}: {why}, so guardian cannot work out its notional and PnL and refuses new risk in "
                "it; cancels and reduce-only orders pass",
            )
        if found.expired(self._clock(), self.expiry_margin_s):
            assert found.last_trading is not None
            return Refusal(
                "instrumentExpired",
                f"{symbol} stops trading at {to_iso(found.last_trading)} (lastTradingTime"
                + (f", less expiry_margin_s {self.expiry_margin_s:g}" if self.expiry_margin_s else "")
                + "): no new risk in it; cancels and reduce-only orders pass",
            )
        return None

    def expired(self) -> list[str]:
        """The listed contracts past their last trading time (less `expiry_margin_s`), sorted."""
        now = self._clock()
        return sorted(s for s, c in self.contracts.items() if c.expired(now, self.expiry_margin_s))

    def snapshot(self) -> dict[str, object]:
        """For `/guardian/state`: how many contracts are judged, and the symbols that are not, with why."""
        shown = dict(sorted(self.unjudged.items())[:MAX_UNJUDGED_SHOWN])
        return {
            "loaded_at": None if self.loaded_at is None else to_iso(self.loaded_at),
            "contracts": len(self.contracts),
            "unjudged": shown,
            "unjudged_count": len(self.unjudged),
            "expired": self.expired(),
            "last_error": self.last_error,
        }

    async def read_once(self) -> bool:
        if self._client is None:
            return False
        try:
            rows = await self._client.instruments()
        except (ExchangeError, KeyError, TypeError) as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            log.warning("instruments_read_failed", error=self.last_error, failures=self.failures)
            return False
        self.update(rows)
        self.reads += 1
        self.last_error = None
        return True

    async def run(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        """Read now, again after a failure (backing off from `first_s` to `max_s`), and every `refresh_s`
        after a success."""
        wait = first_s
        while True:
            if await self.read_once():
                wait = first_s
                await asyncio.sleep(self.refresh_s)
            else:
                await asyncio.sleep(min(wait, max_s, self.refresh_s))
                wait = min(wait * 2, max_s)
