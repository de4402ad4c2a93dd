"""The async Kraken Futures client: one pooled keep-alive session, per-call deadlines, signed requests,
parsed answers, and every failure classified into guardian's exception tree.

The session is made in `start()` (inside the running loop) and closed in `close()`. Components that
must not share a connection pool (the switch and bot traffic) each get their own client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from guardian import __version__, jsonslice
from guardian.errors import (
    AuthenticationFailed,
    ExchangeError,
    ExchangeRejected,
    ExchangeTimeout,
    ExchangeUnavailable,
    NonceRejected,
    RateLimited,
)
from guardian.kraken.endpoints import Endpoint, Permission, endpoint
from guardian.kraken.signing import ParamValue, encode_params, nonce_source_for, sign
from guardian.kraken.times import parse_iso
from guardian.kraken.wire import loads_strict
from guardian.secret import ApiSecret

UNAVAILABLE_CODES = frozenset({"Unavailable", "Server Error"})
NONCE_CODES = frozenset({"nonceBelowThreshold", "nonceDuplicate"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """An exchange key pair. The public key is shown only by its first characters."""

    api_key: str
    api_secret: ApiSecret

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key[:4]!r}..., api_secret=***)"


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """An exchange answer as received: for relaying unchanged."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class SwitchStatus:
    """The exchange's answer to `cancelallordersafter`, with the local monotonic times around it."""

    current_time: float  # exchange clock, epoch seconds
    trigger_time: float | None  # exchange clock; None when the switch is off
    server_time: float | None  # the envelope's serverTime, if it parsed
    sent_at: float  # time.monotonic() just before the request went out
    received_at: float  # time.monotonic() when the answer had been read

    @property
    def armed(self) -> bool:
        return self.trigger_time is not None

    @property
    def timeout_granted_s(self) -> float:
        """How long the exchange said its timer runs, from its own two timestamps (0 when off)."""
        if self.trigger_time is None:
            return 0.0
        return max(0.0, self.trigger_time - self.current_time)

    @property
    def deadline(self) -> float | None:
        """The local monotonic moment the exchange's timer runs out, counted from when the request was
        sent (the earliest the exchange can have started it): conservative, and free of clock skew."""
        if self.trigger_time is None:
            return None
        return self.sent_at + self.timeout_granted_s

    @property
    def clock_skew_s(self) -> float | None:
        """Exchange clock minus local clock, estimated at the midpoint of the round trip."""
        if self.server_time is None:
            return None
        midpoint_wall = time.time() - (time.monotonic() - (self.sent_at + self.received_at) / 2)
        return self.server_time - midpoint_wall


_UNREAD: Any = object()


def classify(name: str, status: int, body: bytes, doc: Any = _UNREAD) -> dict[str, Any]:
    """The parsed success payload of an answer, or the guardian error that describes it. `doc`: the body
    already parsed (None: it is not JSON)."""
    if doc is _UNREAD:
        try:
            doc = loads_strict(body) if body else None
        except (ValueError, UnicodeDecodeError):
            doc = None
    code = _error_code(doc)
    where = f"{name}: HTTP {status}"
    if status == 429 or code == "apiLimitExceeded":
        raise RateLimited(
            f"{where}: rate limited", endpoint=name, code="apiLimitExceeded", http_status=status
        )
    if status >= 500 or code in UNAVAILABLE_CODES:
        raise ExchangeUnavailable(
            f"{where}: exchange unavailable" + (f" ({code})" if code else ""),
            endpoint=name,
            code=code,
            http_status=status,
        )
    if not isinstance(doc, dict):
        if status in (401, 403):
            raise AuthenticationFailed(f"{where}: not authenticated", endpoint=name, http_status=status)
        raise ExchangeUnavailable(
            f"{where}: answer is not a JSON object ({len(body)} bytes)", endpoint=name, http_status=status
        )
    if code is not None or doc.get("result") == "error":
        code = code or "unknownError"
        kind: type[ExchangeRejected] = ExchangeRejected
        if code == "authenticationError" or status in (401, 403):
            kind = AuthenticationFailed
        elif code in NONCE_CODES:
            kind = NonceRejected
        raise kind(f"{where}: exchange error {code}", endpoint=name, code=code, http_status=status)
    if status >= 400:
        raise ExchangeRejected(
            f"{where}: unexpected status", endpoint=name, code=f"http{status}", http_status=status
        )
    if doc.get("result") != "success":
        raise ExchangeUnavailable(f"{where}: answer has no result", endpoint=name, http_status=status)
    return doc


def _error_code(doc: object) -> str | None:
    if not isinstance(doc, dict):
        return None
    error = doc.get("error")
    if isinstance(error, str) and error:
        return error
    errors = doc.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0]
        if isinstance(first, dict):
            found = first.get("message") or first.get("code")  # the message names it; code is a number
            return str(found) if found else "unknownError"
        return str(first)
    return None


class KrakenClient:
    """Signed requests to one Kraken Futures base URL with one key (or none, for public data)."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        timeout_s: float = 10.0,
        use_nonce: bool = True,
        nonce_unit: str = "milliseconds",
        pool_size: int = 16,
        name: str = "client",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self.timeout_s = timeout_s
        self._nonce = nonce_source_for(credentials.api_key, nonce_unit) if use_nonce and credentials else None
        self._pool_size = pool_size
        self.name = name
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"KrakenClient({self.base_url!r}, name={self.name!r})"

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": f"guardian/{__version__}"},
            auto_decompress=True,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KrakenClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the one way out --------------------------------------------------------------------------
    async def send(
        self,
        ep: Endpoint,
        query: str = "",
        body: str = "",
        *,
        timeout_s: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> RawAnswer:
        """Send exactly `query` and `body`, signed over those bytes; return the raw answer. `path` is
        the real path of a templated endpoint (`tickers/{symbol}`), and the path signed.

        Raises ExchangeUnavailable/ExchangeTimeout when no answer arrives; never looks at the answer.
        """
        if self._session is None:
            raise RuntimeError("KrakenClient.start() has not been awaited")
        headers: dict[str, str] = {}
        if ep.permission is not Permission.PUBLIC:
            if self._credentials is None:
                raise AuthenticationFailed(f"{ep.name}: no credentials configured", endpoint=ep.name)
            nonce = self._nonce() if self._nonce is not None else None
            key = self._credentials.api_secret.key_bytes()
            headers["APIKey"] = self._credentials.api_key
            headers["Authent"] = sign(key, query + body, nonce, path or ep.path)
            if nonce is not None:
                headers["Nonce"] = nonce
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = URL(self.base_url + (path or ep.path) + (f"?{query}" if query else ""), encoded=True)
        timeout = aiohttp.ClientTimeout(total=timeout_s if timeout_s is not None else self.timeout_s)
        try:
            async with self._session.request(
                method or ep.method,
                url,
                data=body.encode() if body else None,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                return RawAnswer(response.status, payload, response.content_type)
        except TimeoutError:
            raise ExchangeTimeout(
                f"{ep.name}: no answer within {timeout.total:g}s", endpoint=ep.name
            ) from None
        except aiohttp.ClientError as exc:
            raise ExchangeUnavailable(f"{ep.name}: {type(exc).__name__}", endpoint=ep.name) from None
        except OSError as exc:
            raise ExchangeUnavailable(f"{ep.name}: {type(exc).__name__}", endpoint=ep.name) from None

    async def request(
        self,
        name: str,
        params: Mapping[str, ParamValue] | Sequence[tuple[str, ParamValue]] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Call an endpoint by its table name; parameters go in the query (GET) or the form body (POST)."""
        ep = endpoint(name)
        encoded = encode_params(params or {})
        query, body = (encoded, "") if ep.method == "GET" else ("", encoded)
        answer = await self.send(ep, query, body, timeout_s=timeout_s)
        if len(answer.body) < jsonslice.THRESHOLD:
            return classify(ep.name, answer.status, answer.body)
        try:  # thousands of open orders: read in slices, so the event loop keeps its turns
            doc = await jsonslice.loads_strict(answer.body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        return classify(ep.name, answer.status, answer.body, doc)

    # ---- typed calls ------------------------------------------------------------------------------
    async def cancelallordersafter(self, timeout_s: int, *, deadline_s: float | None = None) -> SwitchStatus:
        """Arm (timeout > 0), push back, or disarm (0) the dead man's switch."""
        if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or not 0 <= timeout_s < 2**32:
            raise ValueError("timeout_s must be whole seconds between 0 and 2**32-1")
        sent_at = time.monotonic()
        doc = await self.request("cancelallordersafter", {"timeout": timeout_s}, timeout_s=deadline_s)
        received_at = time.monotonic()
        status = doc.get("status")
        malformed = "cancelallordersafter: malformed answer"
        if not isinstance(status, dict):
            raise ExchangeError(f"{malformed} (no status object)", endpoint="cancelallordersafter")
        try:
            current = parse_iso(status["currentTime"])
            trigger_raw = status["triggerTime"]
            trigger = None if trigger_raw in ("0", 0, None, "") else parse_iso(trigger_raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ExchangeError(
                f"cancelallordersafter: malformed answer ({type(exc).__name__})",
                endpoint="cancelallordersafter",
            ) from None
        server_time: float | None
        try:
            server_time = parse_iso(doc.get("serverTime", ""))
        except ValueError:
            server_time = None
        return SwitchStatus(current, trigger, server_time, sent_at, received_at)

    async def send_order(self, **params: ParamValue) -> dict[str, Any]:
        return await self.request("sendorder", params)

    async def edit_order(self, **params: ParamValue) -> dict[str, Any]:
        return await self.request("editorder", params)

    async def cancel_order(
        self, *, order_id: str | None = None, cli_ord_id: str | None = None
    ) -> dict[str, Any]:
        params = {"order_id": order_id} if order_id else {"cliOrdId": cli_ord_id or ""}
        return await self.request("cancelorder", params)

    async def cancel_all_orders(self, symbol: str | None = None) -> dict[str, Any]:
        return await self.request("cancelallorders", {"symbol": symbol} if symbol else None)

    async def batch_order(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        text = json.dumps({"batchOrder": list(items)}, separators=(",", ":"), allow_nan=False)
        return await self.request("batchorder", {"json": text})

    async def open_orders(self) -> list[dict[str, Any]]:
        return list((await self.request("openorders"))["openOrders"])

    async def open_positions(self) -> list[dict[str, Any]]:
        return list((await self.request("openpositions"))["openPositions"])

    async def accounts(self) -> dict[str, Any]:
        return dict((await self.request("accounts"))["accounts"])

    async def fills(self, last_fill_time: str | None = None) -> list[dict[str, Any]]:
        params = {"lastFillTime": last_fill_time} if last_fill_time else None
        return list((await self.request("fills", params))["fills"])

    async def order_status(
        self, order_ids: Sequence[str] = (), cli_ord_ids: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        params = [("orderIds", i) for i in order_ids] + [("cliOrdIds", c) for c in cli_ord_ids]
        return list((await self.request("orders/status", params))["orders"])

    async def tickers(self) -> list[dict[str, Any]]:
        return list((await self.request("tickers"))["tickers"])

    async def instruments(self) -> list[dict[str, Any]]:
        return list((await self.request("instruments"))["instruments"])

    async def orderbook(self, symbol: str) -> dict[str, Any]:
        return dict((await self.request("orderbook", {"symbol": symbol}))["orderBook"])
