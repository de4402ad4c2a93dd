"""The configuration file edited in place, its comments and layout kept (tomlkit): `guardian keys
list|add|rotate|revoke`.

A bot may hold several keys (`extra_keys` beside its `api_key`): `rotate` adds one, the bot switches to it,
`revoke` removes the old one, and no request of the bot fails in between. Every edit is validated as the
daemon validates a configuration (`parse_config`) before the file is replaced, atomically, so `keys` never
leaves a file guardian would refuse; a failed edit removes the secret file it made.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tomlkit
from tomlkit.items import AoT, Array, Comment, InlineTable, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

from guardian.config import CREDENTIALS_DIR, Config, parse_config
from guardian.errors import ConfigError
from guardian.keys import (
    EditLock,
    InputError,
    NewKey,
    NoInputError,
    UsageError,
    make_key,
    remove_quietly,
    replace_file,
)

_SECRET_SOURCES: Final = ("api_secret", "api_secret_file", "api_secret_env")
_KEY_SOURCES: Final = ("api_key", "api_key_file", "api_key_env")


# --- the configuration file ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One key as `guardian keys list` shows it: never a secret, only where the secret comes from."""

    account: str
    bot: str
    permissions: tuple[str, ...]
    api_key: str  # the key itself when written in the file, else where it comes from
    secret_from: str
    extra: bool  # one of extra_keys (a rotation in progress), not the bot's api_key


def _source(table: Mapping[str, Any], names: Sequence[str]) -> str:
    for name in names:
        if name in table and isinstance(table[name], str):
            if name.endswith("_file"):
                return f"file {table[name]}"
            if name.endswith("_env"):
                return f"${table[name]}"
            return "in the configuration" if name == "api_secret" else str(table[name])
    return "missing"


def list_keys(path: Path, *, account: str | None = None, bot: str | None = None) -> list[KeyRow]:
    """Every bot key of the configuration at `path` (or of one account, one bot), read without loading a
    single secret: listing needs no credentials."""
    data = _load_toml(path)
    rows = []
    for acct in _accounts(data, path, account):
        for client in acct.get("clients", []):
            if bot is not None and client.get("name") != bot:
                continue
            keys = [(client, False), *((key, True) for key in client.get("extra_keys", []))]
            for table, extra in keys:
                rows.append(
                    KeyRow(
                        str(acct.get("name")),
                        str(client.get("name")),
                        tuple(client.get("permissions", ())),
                        _source(table, _KEY_SOURCES),
                        _source(table, _SECRET_SOURCES),
                        extra,
                    )
                )
    if bot is not None and not rows:
        raise UsageError(f"{path}: no bot {bot!r}{_in_account(account)}: `guardian keys list` shows them")
    return rows


def _in_account(account: str | None) -> str:
    return "" if account is None else f" in account {account!r}"


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NoInputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _accounts(data: Mapping[str, Any], path: Path, account: str | None) -> list[Any]:
    accounts = data.get("accounts", [])
    if not isinstance(accounts, list) or not accounts:
        raise ConfigError(f"{path}: no [[accounts]] table")
    if account is None:
        return accounts
    found = [a for a in accounts if isinstance(a, dict) and a.get("name") == account]
    if not found:
        names = ", ".join(str(a.get("name")) for a in accounts if isinstance(a, dict))
        raise UsageError(f"{path}: no account {account!r}; the accounts are {names}")
    return found


@dataclass(frozen=True, slots=True)
class Change:
    """What an edit did: the key made (its secret shown once by the caller), the key revoked and the
    secret file removed with it, and the bot's keys after the edit."""

    bot: str
    account: str
    made: NewKey | None
    revoked: str | None
    removed_file: Path | None
    keys_now: tuple[str, ...]


class KeyEditor:
    """One configuration file opened for a key edit, and the credentials directory new secrets go to.

    Each method edits the document in memory and writes the new secret file; `commit()` validates the
    result as the daemon would and replaces the file, or removes the new secret file and raises."""

    def __init__(
        self,
        path: Path,
        env: Mapping[str, str] | None = None,
        *,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.env = os.environ if env is None else env
        self.credentials = credentials_dir(path, self.env)
        # Held until commit() or close(): another edit waits (`on_wait` told), then reads what this one wrote.
        self.lock = EditLock(path, on_wait=on_wait)
        try:
            try:
                self.text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise NoInputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
            self.before = self._validate(self.text)  # a configuration that is wrong already is not edited
        except BaseException:
            self.lock.release()
            raise
        self.doc: TOMLDocument = tomlkit.parse(self.text)
        self._written: list[Path] = []
        self._to_remove: list[Path] = []

    def close(self) -> None:
        """Let another edit go on (commit() does it too). The file is as it was unless committed."""
        self.lock.release()

    def _validate(self, text: str) -> Config:
        try:
            return parse_config(text, base_dir=self.path.parent, env=self.env)
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None

    def _used_keys(self) -> set[str]:
        used = {a.api_key for a in self.before.accounts}
        used |= {k.api_key for a in self.before.accounts for c in a.clients for k in c.keys}
        return used

    def _account(self, name: str | None) -> Table:
        accounts = self.doc.get("accounts")
        if not isinstance(accounts, AoT):
            raise InputError(
                f"{self.path}: write the accounts as [[accounts]] tables for guardian keys to edit"
            )
        if name is None:
            if len(accounts) > 1:
                names = ", ".join(str(a["name"]) for a in accounts)
                raise UsageError(f"{self.path} has several accounts ({names}): say which with --account")
            return accounts[0]
        for table in accounts:
            if table.get("name") == name:
                assert isinstance(table, Table)
                return table
        names = ", ".join(str(a["name"]) for a in accounts)
        raise UsageError(f"{self.path}: no account {name!r}; the accounts are {names}")

    def _client(self, account: Table, bot: str) -> Table:
        for table in account.get("clients", []):
            if table.get("name") == bot:
                assert isinstance(table, Table)
                return table
        raise UsageError(
            f"{self.path}: no bot {bot!r} in account {account['name']!r}: `guardian keys list` shows the "
            "bots, `guardian keys add` adds one"
        )

    def _new_key(self, bot: str) -> NewKey:
        made = make_key(bot, self.credentials, self._used_keys())
        self._written.append(made.secret_file)
        return made

    def add(self, account: str | None, bot: str, permissions: Sequence[str]) -> Change:
        """A new bot with a new key, at the end of its account's bots."""
        table = self._account(account)
        taken = {c.name for a in self.before.accounts for c in a.clients}
        if bot in taken:
            raise InputError(
                f"{self.path}: a bot named {bot!r} exists already: `guardian keys rotate` gives it a new key"
            )
        made = self._new_key(bot)
        client = tomlkit.table()
        client["name"] = bot
        client["api_key"] = made.api_key
        client["api_secret_file"] = made.reference
        client["permissions"] = list(permissions)
        client.trivia.indent = "\n"  # a blank line before its [[accounts.clients]]
        clients = table.get("clients")
        if clients is not None and not isinstance(clients, AoT):
            raise InputError(
                f"{self.path}: write the bots as [[accounts.clients]] tables for guardian keys to edit"
            )
        if clients is not None and len(clients):
            _move_trailing_trivia(clients[-1], client)
            clients.append(client)
        else:
            new = tomlkit.aot()
            new.append(client)
            _move_trailing_trivia(_last_table(table), client)
            table.append("clients", new)
        return Change(bot, str(table["name"]), made, None, None, (made.api_key,))

    def rotate(self, account: str | None, bot: str) -> Change:
        """A second (third...) key for `bot`, valid with the ones it has until they are revoked."""
        table = self._account(account)
        client = self._client(table, bot)
        made = self._new_key(bot)
        entry = tomlkit.inline_table()
        entry["api_key"] = made.api_key
        entry["api_secret_file"] = made.reference
        extra = client.get("extra_keys")
        if isinstance(extra, Array):
            extra.append(entry)
        else:
            extra = tomlkit.array()
            extra.multiline(True)
            extra.append(entry)
            _append_keeping_trivia(client, "extra_keys", extra)
        return Change(bot, str(table["name"]), made, None, None, tuple(_key_ids(client)))

    def revoke(self, account: str | None, bot: str, api_key: str | None) -> Change:
        """Remove one of `bot`'s keys (by default its oldest, the `api_key`); the last one is never removed.
        Its secret file, when it is one of the credentials directory's, is removed too."""
        table = self._account(account)
        client = self._client(table, bot)
        ids = _key_ids(client)
        if len(ids) < 2:
            raise InputError(
                f"{self.path}: {api_key or ids[0]!r} is the only key of bot {bot!r}: give it a new one first "
                f"(`guardian keys rotate --bot {bot}`), switch the bot to it, then revoke the old one"
            )
        target = ids[0] if api_key is None else api_key
        if target not in ids:
            raise UsageError(f"{self.path}: bot {bot!r} has no key {target!r}; its keys are {', '.join(ids)}")
        extra = client["extra_keys"]
        assert isinstance(extra, Array)
        position = ids.index(target)
        if position == 0:
            entry = extra[0]
            assert isinstance(entry, InlineTable)
            removed = self._forget_secret_file(client)
            _promote(client, entry)
            del extra[0]
        else:
            removed = self._forget_secret_file(extra[position - 1])
            del extra[position - 1]
        if not len(extra):
            del client["extra_keys"]
        return Change(bot, str(table["name"]), None, target, removed, tuple(_key_ids(client)))

    def _forget_secret_file(self, table: Mapping[str, Any]) -> Path | None:
        """The revoked key's secret file, removed once the edit is saved if it is a bare name in the
        credentials directory (where this module writes them) that nothing else in the file names; any
        other file is left alone."""
        name = table.get("api_secret_file")
        named = list(_file_names(self.doc.unwrap()))
        if (
            isinstance(name, str)
            and "/" not in name
            and named.count(name) == 1
            and (self.credentials / name).is_file()
        ):
            self._to_remove.append(self.credentials / name)
            return self.credentials / name
        return None

    def commit(self) -> Config:
        """Validate the edited document as the daemon would; replace the file, or undo and raise."""
        text = tomlkit.dumps(self.doc)
        try:
            config = self._validate(text)
            replace_file(self.path, text)
        except BaseException:
            remove_quietly(*self._written)
            raise
        finally:
            self.lock.release()
        remove_quietly(*self._to_remove)
        return config


def _file_names(data: Any) -> Iterator[str]:
    """Every `*_file` value of a parsed configuration, at any depth."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            else:
                yield from _file_names(value)
    elif isinstance(data, list):
        for item in data:
            yield from _file_names(item)


def _key_ids(client: Mapping[str, Any]) -> list[str]:
    return [_source(client, _KEY_SOURCES), *(_source(k, _KEY_SOURCES) for k in client.get("extra_keys", []))]


def _promote(client: Table, entry: InlineTable) -> None:
    """`entry` (the first of extra_keys) becomes the bot's api_key and secret, each written where the old
    one was, so the line keeps its place under its comments."""
    for names in (_KEY_SOURCES, _SECRET_SOURCES):
        new = next(name for name in names if name in entry)
        value = str(entry[new])
        old = next((name for name in names if name in client), None)
        if old is None:
            _append_keeping_trivia(client, new, value)
        elif old == new:
            client[new] = value
        else:  # api_secret_env = "..." becomes api_secret_file = "...", in the same place
            client.value._replace(old, new, tomlkit.item(value))


def _trailing_trivia(table: Table) -> list[Comment | Whitespace]:
    """Take the blank lines and comments that end `table` (from the first blank line after its last
    key): they introduce what follows the table, not the table, and must stay in front of what follows."""
    body = table.value.body  # the container's own list: unkeyed items at its end hold no index
    last_key = max((i for i, (key, _) in enumerate(body) if key is not None), default=-1)
    start = next((i for i in range(last_key + 1, len(body)) if isinstance(body[i][1], Whitespace)), len(body))
    if not all(key is None and isinstance(item, Comment | Whitespace) for key, item in body[start:]):
        return []
    taken = [item for _, item in body[start:] if isinstance(item, Comment | Whitespace)]
    del body[start:]
    return taken


def _move_trailing_trivia(source: Table, target: Table) -> None:
    for item in _trailing_trivia(source):
        target.add(item)


def _append_keeping_trivia(table: Table, key: str, value: Any) -> None:
    trivia = _trailing_trivia(table)
    table.append(key, value)
    for item in trivia:
        table.add(item)


def _last_table(table: Table) -> Table:
    """The table rendered last inside `table` (itself, or its last sub-table or array of tables' last
    entry, followed down): what a new array of tables appended to `table` follows in the file."""
    last: Table | None = None
    for _, item in table.value.body:
        if isinstance(item, Table):
            last = item
        elif isinstance(item, AoT) and len(item):
            last = item[-1]
    return table if last is None else _last_table(last)


def credentials_dir(config: Path, env: Mapping[str, str]) -> Path:
    """Where new secrets go: $CREDENTIALS_DIRECTORY when set (systemd's credentials, as an operator points
    check-config at them), else credentials/ beside the configuration (what `guardian init` made). The
    daemon looks in both, under the bare name the configuration gives."""
    found = env.get("CREDENTIALS_DIRECTORY")
    return Path(found) if found else config.parent / CREDENTIALS_DIR


def iter_lines(rows: Sequence[KeyRow]) -> Iterator[str]:
    """`guardian keys list`: one line per key, aligned; never a secret."""
    if not rows:
        yield "no bots: `guardian keys add --config FILE --bot NAME` adds one"
        return
    width_bot = max(len(r.bot) for r in rows)
    width_key = max(len(r.api_key) for r in rows)
    for row in rows:
        note = "  (extra key: valid until revoked)" if row.extra else ""
        yield (
            f"{row.account}  {row.bot:<{width_bot}}  {'+'.join(row.permissions) or '-':<10}  "
            f"{row.api_key:<{width_key}}  secret: {row.secret_from}{note}"
        )


def describe(change: Change, config: Path, account: str | None) -> str:
    """What `guardian keys add|rotate|revoke` prints: the new key and its secret (this once), what changed,
    and what to do next."""
    lines = []
    made = change.made
    if made is not None:
        lines.append(f"bot {made.bot} api_key={made.api_key} api_secret={made.api_secret.reveal()}")
        lines.append(
            f"  The secret is printed this once and kept only in {made.secret_file}: give it to the bot now."
        )
    others = [key for key in change.keys_now if made is None or key != made.api_key]
    if change.revoked is not None:
        gone = "" if change.removed_file is None else f" and its secret file {change.removed_file}"
        lines.append(
            f"guardian keys: removed key {change.revoked} of bot {change.bot}{gone}; its keys now: "
            f"{', '.join(change.keys_now)}."
        )
    elif others:
        flag = "" if account is None else f" --account {account}"
        lines += [
            f"guardian keys: bot {change.bot} now has {len(change.keys_now)} keys, each valid: "
            f"{', '.join(change.keys_now)}.",
            f"  Once the bot signs with {made.api_key if made else 'its new key'}, revoke the old one:",
            f"    guardian keys revoke --config {config}{flag} --bot {change.bot} --key {others[0]}",
        ]
    else:
        lines.append(f"guardian keys: added bot {change.bot} to account {change.account} in {config}.")
    lines.append(
        "  A running guardian takes the change on at its next start (or reload)"
        + (
            f"; under systemd, the unit needs LoadCredential={made.reference}:{made.secret_file} first."
            if made is not None
            else (
                f"; under systemd, remove the unit's LoadCredential= line for {change.removed_file.name}."
                if change.removed_file is not None
                else "."
            )
        )
    )
    return "\n".join(lines)
