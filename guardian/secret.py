"""A wrapper that keeps secrets out of reprs, logs, exception texts and traceback locals."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from guardian.errors import ConfigError

_MASK: Final = "***"


class Secret:
    """Holds a secret string. `repr`/`str` print `***`; `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


class ApiSecret(Secret):
    """A Kraken API secret: base64 text. Decoded once, when built, so a bad one fails at startup."""

    __slots__ = ("_key",)

    def __init__(self, value: str, *, name: str = "api_secret") -> None:
        super().__init__(value)
        try:
            key = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{name} is not valid base64 (copy the secret exactly as Kraken shows it)"
            ) from None
        if not key:
            raise ConfigError(f"{name} is empty")
        self._key = key

    def key_bytes(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return f"ApiSecret({_MASK!r})"
