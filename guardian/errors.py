"""One exception tree for everything guardian raises on purpose.

Callers catch the branch they can act on: `ExchangeUnavailable` (retry later), `RateLimited` (back off),
`AuthenticationFailed` (a person must fix keys), `ExchangeRejected` (the exchange said no, with a code).
Messages name the endpoint, the code and the HTTP status; they never carry a secret, a signature or a
request body.
"""

from __future__ import annotations


class GuardianError(Exception):
    """Root of every error guardian raises deliberately."""


class ConfigError(GuardianError, ValueError):
    """The configuration is invalid; the message names the key and the fix."""


class ExchangeError(GuardianError):
    """Talking to the exchange did not give a usable success answer."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code
        self.http_status = http_status


class ExchangeRejected(ExchangeError):
    """The exchange answered with an error code (kept in `code`)."""


class AuthenticationFailed(ExchangeRejected):
    """The exchange did not accept the key or the signature (`authenticationError`, HTTP 401/403)."""


class NonceRejected(ExchangeRejected):
    """The exchange refused the nonce (`nonceBelowThreshold`, `nonceDuplicate`)."""


class RateLimited(ExchangeRejected):
    """Over the exchange's cost budget (`apiLimitExceeded` in a body, or HTTP 429)."""


class ExchangeUnavailable(ExchangeError, ConnectionError):
    """No usable answer: connection refused or reset, 5xx, a body that is not JSON, `Unavailable`."""


class ExchangeTimeout(ExchangeUnavailable, TimeoutError):
    """No answer within the call's deadline."""
