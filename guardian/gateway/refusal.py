"""Why guardian refused a request: a contract code, a message for the person who runs the bot, a status.

Codes are part of guardian's contract with bots: some are Kraken's own (`invalidArgument`,
`requiredArgumentMissing`, `apiLimitExceeded`, `authenticationError`), so a client that already handles
Kraken's errors handles these; the rest say which protection spoke. The answer has Kraken's error
envelope, with a `message` saying what is wrong and how to fix it. Messages may quote a field name and a
short value; they never carry a secret, a signature or a whole request body.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from guardian.errors import GuardianError

CODES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "authenticationError": 401,
        "permissionDenied": 403,
        "endpointNotAllowed": 403,
        "invalidArgument": 400,
        "requiredArgumentMissing": 400,
        "symbolNotAllowed": 403,
        "orderSizeTooLarge": 403,
        "notionalTooLarge": 403,
        "priceOutsideBand": 403,
        "leverageTooHigh": 403,
        "markPriceUnavailable": 503,
        "reduceOnlyMode": 403,
        "tradingHalted": 403,
        "switchNotArmed": 409,
        # Kraken's own code (a sendorder status there): a cliOrdId an earlier, different request used.
        "clientOrderIdAlreadyExist": 409,
        # Kraken's word too: the exchange's ticker says the market is suspended; no new order goes to it.
        "marketSuspended": 503,
        "requestTooLarge": 413,
        "headersTooLarge": 431,  # guardian.server: a header over its limit, or too many
        "apiLimitExceeded": 429,
        # Also used by the local API's other parts (auth, app): Kraken's nonce codes for a bot that signs
        # with a Nonce, Kraken's notFound for a path or method guardian does not serve, and the two
        # conditions in which guardian lets no new risk out.
        "nonceBelowThreshold": 401,
        "nonceDuplicate": 401,
        "notFound": 404,
        "upstreamUnavailable": 503,
        "journalUnavailable": 503,
        # The exposure guard (guardian.gateway.exposure): what the account holds and has working.
        "positionLimitExceeded": 403,
        "openOrdersLimitExceeded": 403,
        "exposureLimitExceeded": 403,
        "dailyLossLimitReached": 403,
        "orderRateExceeded": 429,
        "accountStateUnavailable": 503,
        "duplicateOrder": 409,
        # The contracts (guardian.gateway.instruments): one guardian cannot judge, or past its last trading.
        "instrumentUnknown": 403,
        "instrumentExpired": 403,
        # guardian.conns and the local keys: a bot key from outside its allow_from; a Nonce its bot must send.
        "sourceNotAllowed": 403,
        "nonceRequired": 401,
    }
)


class Refusal(GuardianError):
    """A request guardian will not forward. `item` and `order_tag` locate the batch item at fault."""

    def __init__(
        self, code: str, message: str, *, item: int | None = None, order_tag: str | None = None
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown refusal code {code!r}: add it to CODES with its HTTP status")
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = CODES[code]
        self.item = item
        self.order_tag = order_tag
        self.detail = message  # the message without the batch item's name (`for_item` adds it)

    def __repr__(self) -> str:
        where = "" if self.item is None else f", item={self.item}"
        return f"Refusal({self.code!r}, {self.message!r}{where})"

    def for_item(self, item: int, order_tag: str | None) -> Refusal:
        """The same refusal, located at batch item `item` and named in the message."""
        tag = "" if order_tag is None else f" (order_tag {order_tag!r})"
        found = Refusal(self.code, f"batchOrder[{item}]{tag}: {self.detail}", item=item, order_tag=order_tag)
        found.detail = self.detail
        return found

    def envelope(self, server_time: str) -> dict[str, Any]:
        """Kraken's error envelope, with guardian's message (and the batch item, if one is at fault)."""
        body: dict[str, Any] = {
            "result": "error",
            "serverTime": server_time,
            "error": self.code,
            "message": self.message,
        }
        if self.item is not None:
            body["item"] = self.item
        if self.order_tag is not None:
            body["order_tag"] = self.order_tag
        return body
