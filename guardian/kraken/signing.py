"""Kraken Futures request signing, both directions.

    message   = postData + nonce + endpointPath
    signature = base64(HMAC-SHA-512(key=base64decode(secret), msg=SHA-256(message)))

`postData` is the exact URL-encoded text on the wire (query for GET, form body for POST, query then
body when a request has both); `endpointPath` is the URL path with the `/derivatives` prefix removed.
The rule that keeps every client and server agreeing: sign the bytes you send, verify the bytes you got.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from urllib.parse import quote, urlencode

DERIVATIVES_PREFIX = "/derivatives"
SIGNATURE_LENGTH = 88  # base64 of 64 bytes

ParamValue = str | int | float | bool | Decimal


def signed_path(path: str) -> str:
    """The path Kraken signs: `/derivatives/api/v3/x` -> `/api/v3/x`; history paths unchanged."""
    if path.startswith(DERIVATIVES_PREFIX + "/"):
        return path[len(DERIVATIVES_PREFIX) :]
    return path


def sign(key: bytes, post_data: str | bytes, nonce: str | None, path: str) -> str:
    """The `Authent` header for a request. `key` is the decoded secret; `path` may keep its prefix."""
    if isinstance(post_data, str):
        post_data = post_data.encode()
    message = post_data + (nonce or "").encode() + signed_path(path).encode()
    digest = hashlib.sha256(message).digest()
    return base64.b64encode(hmac.new(key, digest, hashlib.sha512).digest()).decode()


def sign_challenge(key: bytes, challenge: str) -> str:
    """WebSocket v1's `signed_challenge`: the REST recipe with only the challenge as the message,
    base64(HMAC-SHA-512(key=decoded secret, msg=SHA-256(challenge))). 88 characters."""
    digest = hashlib.sha256(challenge.encode()).digest()
    return base64.b64encode(hmac.new(key, digest, hashlib.sha512).digest()).decode()


def verify_challenge(key: bytes, challenge: str, signed: object) -> bool:
    """True when `signed` is `challenge` signed with `key` (constant-time; junk is simply False)."""
    if not isinstance(signed, str) or len(signed) != SIGNATURE_LENGTH or not signed.isascii():
        return False
    return hmac.compare_digest(sign_challenge(key, challenge).encode(), signed.encode())


def verify(
    key: bytes,
    candidates: Iterable[str | bytes],
    nonce: str | None,
    path: str,
    authent: str | None,
) -> bool:
    """True when `authent` is the signature of one of the `candidates` for postData.

    The comparison is constant-time for each candidate; every candidate is computed, so the time taken
    does not reveal which one (if any) matched. An `authent` that is not ASCII cannot be a signature (base64
    is ASCII) and is refused here: the server decodes undecodable header bytes to lone surrogates, which
    `str.encode` would raise on.
    """
    if not authent or len(authent) != SIGNATURE_LENGTH or not authent.isascii():
        return False
    presented = authent.encode()
    matched = False
    for post_data in candidates:
        expected = sign(key, post_data, nonce, path).encode()
        matched |= hmac.compare_digest(expected, presented)
    return matched


def post_data_candidates(query: str, body: str) -> list[str]:
    """What a client may have signed for a request carrying `query` and `body` as sent.

    Kraken's guide says query first, then body. When both are present, clients disagree about a `&`
    between them, so both spellings are accepted: each is still an HMAC over the bytes that arrived.
    """
    if query and body:
        return [query + body, query + "&" + body]
    return [query or body]


def format_value(value: ParamValue) -> str:
    """A parameter value as Kraken expects it: `true`/`false`, plain decimals, never `1e-05`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def encode_params(params: Mapping[str, ParamValue] | Iterable[tuple[str, ParamValue]]) -> str:
    """URL-encode parameters the way they go on the wire (`%20` for space, `%3A` for `:`)."""
    items = params.items() if isinstance(params, Mapping) else params
    return urlencode([(k, format_value(v)) for k, v in items], quote_via=quote)


NONCE_UNITS: dict[str, int] = {"milliseconds": 1_000, "microseconds": 1_000_000, "nanoseconds": 1_000_000_000}


class NonceSource:
    """Strictly increasing nonces counted in `unit` (milliseconds by default), also across restarts.

    Each nonce is `max(previous + 1, now)`. It runs ahead of the clock only while more than one request
    per unit of time is signed, which the exchange's cost budget (500 per 10 s, at least 1 per request)
    rules out over any stretch longer than a second, so a restarted process, which starts from the
    clock, never reuses a nonce the previous one sent. Safe to call from any thread.

    The exchange remembers the highest nonce a key ever sent: a key once used by a client with larger
    nonces (python-kraken-sdk sends 18 digits) refuses milliseconds until it is replaced. A larger unit
    (`nanoseconds`: 19 digits) takes over from such a key.
    """

    def __init__(self, clock: Callable[[], int] | None = None, unit: str = "milliseconds") -> None:
        if unit not in NONCE_UNITS:
            raise ValueError(f"nonce unit must be one of {', '.join(NONCE_UNITS)}")
        per_second = NONCE_UNITS[unit]
        self.unit = unit
        self._clock = clock or (lambda: time.time_ns() // (1_000_000_000 // per_second))
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            now = int(self._clock())
            self._last = max(self._last + 1, now)
            return str(self._last)


_SOURCES: dict[str, NonceSource] = {}
_SOURCES_LOCK = threading.Lock()


def nonce_source_for(api_key: str, unit: str = "milliseconds") -> NonceSource:
    """The process's one nonce sequence for `api_key`. Every client signing with a key must draw from
    it: two sequences started in the same millisecond would send the same nonce (`nonceDuplicate`)."""
    with _SOURCES_LOCK:
        source = _SOURCES.get(api_key)
        if source is None:
            source = _SOURCES[api_key] = NonceSource(unit=unit)
        elif source.unit != unit:
            raise ValueError(
                f"one API key, two nonce units ({source.unit} and {unit}): the exchange would refuse one"
            )
        return source
