"""Local keys: bots sign their requests to guardian exactly as they would sign them to Kraken, with the
local secret of their `[[accounts.clients]]` entry (its api_key, or one of its extra_keys while a key is
rotated: each as valid as the other). A key belongs to one account; its permissions are
`read`, `trade` and/or `settings`. A nonce, when sent, must not repeat or fall more than a few seconds (in the
client's own unit) below the highest one that key sent, as at the exchange."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from guardian.config import AccountConfig, ClientConfig
from guardian.gateway.refusal import Refusal
from guardian.kraken.endpoints import Endpoint, Permission
from guardian.kraken.nonces import NonceWindow, tolerance_for
from guardian.kraken.signing import post_data_candidates, verify
from guardian.secret import ApiSecret

NONCE_TOLERANCE_S = 3.0
MAX_NONCE_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the bot and the account its key belongs to."""

    account: str
    client: ClientConfig

    @property
    def bot(self) -> str:
        return self.client.name


def key_table(accounts: Iterable[AccountConfig]) -> dict[str, tuple[Caller, ApiSecret]]:
    """Every key of every bot (a bot has several while one is rotated): the bot it is, and its secret."""
    return {
        key.api_key: (Caller(account.name, client), key.api_secret)
        for account in accounts
        for client in account.clients
        for key in client.keys
    }


class LocalKeys:
    """Every bot key of every account, and each key's nonce history."""

    def __init__(
        self, accounts: Iterable[AccountConfig], *, nonce_tolerance_s: float = NONCE_TOLERANCE_S
    ) -> None:
        # Every key of every bot (a bot has several while one is rotated), and the secret that key signs with.
        self._keys: dict[str, tuple[Caller, ApiSecret]] = {}
        self.reconfigure(accounts)
        self._nonces: dict[str, NonceWindow] = {}
        self.nonce_tolerance_s = nonce_tolerance_s

    def __len__(self) -> int:
        return len(self._keys)

    def reconfigure(self, accounts: Iterable[AccountConfig]) -> None:
        """The keys of a reloaded configuration, in one step: a removed key is refused from its next
        request, an added one works at once. Every key's nonce history is kept, a removed key's too (a
        key revoked and later restored must not accept its old requests again)."""
        self._keys = key_table(accounts)

    def lookup(self, api_key: str) -> Caller | None:
        """The bot a key belongs to, its signature not verified (for checks made before the body is read)."""
        found = self._keys.get(api_key)
        return None if found is None else found[0]

    def authenticate(
        self, headers: Mapping[str, str], ep: Endpoint, query: str, body: str, path: str | None = None
    ) -> Caller:
        """The caller, or Refusal(`authenticationError` / a nonce code / `permissionDenied`). `path` is the
        request's path (a templated endpoint's real one), which the bot signed."""
        api_key = headers.get("APIKey", "")
        authent = headers.get("Authent", "")
        if not api_key or not authent:
            raise Refusal(
                "authenticationError",
                "this endpoint needs the APIKey and Authent headers: sign the request with your bot's local "
                "key and secret exactly as for Kraken",
            )
        found = self._keys.get(api_key)
        nonce = headers.get("Nonce")
        # isdigit alone also accepts `¹` (which int() refuses) and non-ASCII digits such as `١٢`.
        if nonce is not None and not (nonce.isascii() and nonce.isdigit() and len(nonce) <= MAX_NONCE_DIGITS):
            raise Refusal(
                "authenticationError",
                f"the Nonce header must be a whole number of at most {MAX_NONCE_DIGITS} digits 0-9",
            )
        if found is None or not verify(
            found[1].key_bytes(),
            post_data_candidates(query, body),
            nonce,
            path or ep.path,
            authent,
        ):
            # One answer for an unknown key and a wrong signature: the difference is not the caller's business.
            raise Refusal(
                "authenticationError",
                "unknown APIKey or a signature that does not match: Authent = base64(HMAC-SHA512(base64decode("
                "local secret), SHA256(postData + Nonce + path without /derivatives))), over the bytes sent",
            )
        caller = found[0]
        if nonce is None and caller.client.require_nonce:  # read now: a reloaded entry applies at once
            raise Refusal(
                "nonceRequired",
                f"bot {caller.bot!r} must send a Nonce header (accounts.clients.require_nonce), so that no "
                "request of it can be replayed",
            )
        if nonce is not None:
            value = int(nonce)
            problem = self._nonces.setdefault(api_key, NonceWindow()).check(
                value, tolerance_for(value, self.nonce_tolerance_s)
            )
            if problem is not None:
                raise Refusal(
                    problem,
                    "the Nonce must keep increasing for this key (a repeated or much older nonce is refused)",
                )
        needed = ep.permission
        if (
            needed in (Permission.READ, Permission.TRADE, Permission.SETTINGS)
            and needed not in caller.client.permissions
        ):
            raise Refusal(
                "permissionDenied",
                f"{ep.name} needs the {needed.value!r} permission, which the key of bot {caller.bot!r} does not have "
                "(accounts.clients.permissions)",
            )
        return caller
