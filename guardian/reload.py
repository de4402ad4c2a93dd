"""Reloading the configuration without a restart (`SIGHUP`, `systemctl reload`, `POST /guardian/reload`).

The file is read and validated whole, as at start. What can change in place does, at once and together
(no request is judged half by the old rules and half by the new): each account's limits, its bots (their
keys, permissions, rates and modes of working), the public budgets, the relay's connection cap and the
notifiers. What cannot change without a restart is named and the new file refused whole:

- `server.listen` (the socket is bound), `server.admin_token` (the admin routes are built at start), and
  every other `[server]` key not listed in `SERVER_IN_PLACE`;
- `[journal]` and `[log]`;
- adding, removing or renaming an account;
- an account's exchange credentials, `base_url`, `nonce`, `[accounts.switch]` and `[accounts.stream]`;
- the guard's working settings in `GUARD_RESTART_ONLY` (its clocks and windows: the objects built from
  them keep history that a new value would have to throw away).

A request already past authentication keeps the bot and the limits it started with (`Passage.guard`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from guardian.config import (
    GUARD_SETTINGS,
    AccountConfig,
    Config,
    GuardConfig,
    JournalConfig,
    LogConfig,
    ServerConfig,
    load_config_bytes,
)

# [server] keys that change in place (the rest need a restart). The TLS certificate and key are re-read on
# every reload, whether their paths changed or not.
SERVER_IN_PLACE: Final = frozenset(
    {"public_rate_limit", "public_burst", "ws_max_connections", "tls_cert_file", "tls_key_file"}
)
GUARD_RESTART_ONLY: Final = GUARD_SETTINGS
ACCOUNT_RESTART_ONLY: Final = ("api_key", "api_secret", "base_url", "nonce", "switch", "stream")


def config_hash(data: bytes) -> str:
    """The configuration's identity as `/guardian/state` and the journal show it: the file's SHA-256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """Where the daemon's configuration comes from, for a reload: the file, and `--listen` if given (it
    overrides the file's `server.listen` at every load, as at start)."""

    path: Path
    listen: tuple[str, int] | None = None

    def load(self) -> tuple[Config, str]:
        """The validated configuration and the hash of the exact bytes it was read from."""
        config, data = load_config_bytes(self.path)
        if self.listen is not None:
            server = dataclasses.replace(config.server, host=self.listen[0], port=self.listen[1])
            config = dataclasses.replace(config, server=server)
        return config, config_hash(data)


@dataclass(slots=True)
class ReloadOutcome:
    """What a reload did: `ok`, the hash now in force, what changed in place, or why it was refused."""

    ok: bool
    via: str
    hash: str | None
    loaded_at: float | None
    changed: list[str] = field(default_factory=list)
    error: str | None = None
    restart_only: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        if self.ok:
            return {"result": "success", "hash": self.hash, "changed": self.changed, "via": self.via}
        return {
            "result": "error",
            "error": "configRefused",
            "message": self.error,
            "restart_only": self.restart_only,
            "hash": self.hash,
            "via": self.via,
        }


def restart_only(old: Config, new: Config) -> list[str]:
    """What differs between `old` and `new` that only a restart can change, by configuration key."""
    found: list[str] = []
    for f in dataclasses.fields(ServerConfig):
        if f.name not in SERVER_IN_PLACE and getattr(old.server, f.name) != getattr(new.server, f.name):
            key = "server.listen" if f.name in ("host", "port") else f"server.{f.name}"
            if key not in found:
                found.append(key)
    found += _differing("journal", old.journal, new.journal, dataclasses.fields(JournalConfig))
    found += _differing("log", old.log, new.log, dataclasses.fields(LogConfig))
    before = [a.name for a in old.accounts]
    after = [a.name for a in new.accounts]
    found += [f"accounts: {name!r} added" for name in after if name not in before]
    found += [f"accounts: {name!r} removed" for name in before if name not in after]
    olds = {a.name: a for a in old.accounts}
    for account in new.accounts:
        was = olds.get(account.name)
        if was is None:
            continue
        where = f"accounts[{account.name}]"
        found += [
            f"{where}.{name}" for name in ACCOUNT_RESTART_ONLY if getattr(was, name) != getattr(account, name)
        ]
        found += [
            f"{where}.guard.{name}"
            for name in GUARD_RESTART_ONLY
            if getattr(was.guard, name) != getattr(account.guard, name)
        ]
    return found


def changed_in_place(old: Config, new: Config) -> list[str]:
    """What a reload changes in place, by configuration key (bots by name; never a secret's value)."""
    found = [
        f"server.{name}"
        for name in sorted(SERVER_IN_PLACE)
        if hasattr(old.server, name) and getattr(old.server, name) != getattr(new.server, name)
    ]
    olds = {a.name: a for a in old.accounts}
    for account in new.accounts:
        was = olds.get(account.name)
        if was is not None:
            found += list(_account_changes(was, account))
    if old.notify != new.notify:
        found.append("notify")
    return found


def _account_changes(old: AccountConfig, new: AccountConfig) -> Iterator[str]:
    where = f"accounts[{new.name}]"
    for f in dataclasses.fields(GuardConfig):
        changed = getattr(old.guard, f.name) != getattr(new.guard, f.name)
        if f.compare and f.name not in GUARD_RESTART_ONLY and changed:
            yield f"{where}.guard.{f.name}"
    bots_before = {c.name: c for c in old.clients}
    bots_after = {c.name: c for c in new.clients}
    for name in bots_after:
        if name not in bots_before:
            yield f"{where}.clients[{name}] added"
        elif bots_before[name] != bots_after[name]:
            yield f"{where}.clients[{name}] changed"
    for name in bots_before:
        if name not in bots_after:
            yield f"{where}.clients[{name}] removed"


def _differing(
    section: str, old: object, new: object, fields: tuple[dataclasses.Field[Any], ...]
) -> list[str]:
    return [f"{section}.{f.name}" for f in fields if getattr(old, f.name) != getattr(new, f.name)]
