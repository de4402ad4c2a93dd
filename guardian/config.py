"""The configuration file: TOML in, frozen validated dataclasses out, or a `ConfigError` naming the key.

Phase one of two: nothing here opens a socket or a session. Every key is checked for its type and its
range, unknown keys are refused at every level (a typo must not silently switch a protection off), and
every message names the dotted key (`accounts[0].switch.refresh_max_s`) and says how to fix it.

Secrets (`api_key`, `api_secret`, `admin_token`) come from exactly one of three places: the value itself
(`x`), a file (`x_file`) or an environment variable (`x_env`). A relative `x_file` is looked up under
`$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), then `/run/secrets` (Docker secrets), then the
configuration file's own directory, then its `credentials/` directory (what `guardian init` writes); an
absolute one is read as it is. Secret values never appear in a
message, a warning, a summary or a `repr`; an `api_key` shows at most its first four characters.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from guardian import logs, tls
from guardian.errors import ConfigError
from guardian.kraken.endpoints import Permission, endpoint
from guardian.kraken.signing import NONCE_UNITS
from guardian.secret import ApiSecret, Secret

DEFAULT_SECRETS_DIRS: Final = (Path("/run/secrets"),)
CREDENTIALS_DIR: Final = "credentials"  # beside the configuration: where `guardian init` puts secrets
DEFAULT_BASE_URL: Final = "https://futures.kraken.com"
MAX_TIMEOUT_S: Final = 2**32 - 1
MIN_ADMIN_TOKEN_CHARS: Final = 16
MIN_CLIENT_SECRET_BYTES: Final = 16
CLIENT_PERMISSIONS: Final = (Permission.READ, Permission.TRADE, Permission.SETTINGS)
# Public requests per second: all bots together, and each bot (or all unlabelled requests) alone. Kraken
# throttles public data by IP and does not publish the figure: these stay well under any seen in use.
DEFAULT_PUBLIC_RATE_LIMIT: Final = 20.0
DEFAULT_BOT_PUBLIC_RATE_LIMIT: Final = 10.0
# And how many may go at once, from a full bucket (a client's start-up reads: ccxt's load_markets, an SDK's
# test suite, about 30 different reads within a fraction of a second); a rate above it is its own burst.
DEFAULT_PUBLIC_BURST: Final = 60.0
DEFAULT_BOT_PUBLIC_BURST: Final = 40.0
# Bots' connections to guardian's ws/v1 relay: in total, and per bot key (Kraken allows 100 per account).
DEFAULT_WS_MAX_CONNECTIONS: Final = 500
DEFAULT_BOT_WS_MAX_CONNECTIONS: Final = 20
# The local server's connections (guardian.conns): a request's headers and body must arrive within
# REQUEST_TIMEOUT_S; an idle keep-alive connection is closed after KEEPALIVE_TIMEOUT_S; at most
# MAX_CONNECTIONS at once (fitted below the file limit at start), MAX_CONNECTIONS_PER_SOURCE of them from one address.
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_RANGE_S: Final = (0.5, 300.0)
DEFAULT_KEEPALIVE_TIMEOUT_S: Final = 75.0
KEEPALIVE_TIMEOUT_RANGE_S: Final = (1.0, 3600.0)
DEFAULT_MAX_CONNECTIONS: Final = 2048
DEFAULT_MAX_CONNECTIONS_PER_SOURCE: Final = 512
MAX_CONNECTIONS_RANGE: Final = (16, 1_000_000)
FEED_VIEWS: Final = ("account", "own")  # what a bot's private ws/v1 feeds show: the account, or its orders
_MAX_SECRET_FILE_BYTES: Final = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SYMBOL = re.compile(r"\S+")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


class OnShutdown(enum.StrEnum):
    """What a deliberate stop of guardian does to the exchange's switch."""

    KEEP = "keep"  # leave the timer running: a restart takes over with no unprotected gap
    DISARM = "disarm"  # send timeout=0 as the very last call
    CANCEL = "cancel"  # cancel every open order, then disarm


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    admin_token: Secret | None = None  # None: no admin endpoints
    public_rate_limit: float = DEFAULT_PUBLIC_RATE_LIMIT  # public requests per second sent to the exchange
    ws_max_connections: int = DEFAULT_WS_MAX_CONNECTIONS  # bots' ws/v1 connections to guardian, in total
    public_burst: float | None = None  # public requests at once; None: the default (public_burst_size)
    # TLS (guardian.tls): the server's PEM certificate and key; with a client CA, mutual TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Connection hygiene (guardian.conns).
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # a request's headers and body, from its first byte
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S  # an idle keep-alive connection is closed
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # at once, in total; fitted below the file limit at start
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE  # at once, from one address

    @property
    def public_burst_size(self) -> float:
        """The public budget's burst: as configured, else DEFAULT_PUBLIC_BURST or the rate if higher."""
        return burst_or_default(self.public_burst, self.public_rate_limit, DEFAULT_PUBLIC_BURST)

    @property
    def listen(self) -> str:
        return host_port(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path = Path("guardian-journal.sqlite3")  # a relative path is relative to the working directory
    retention_days: float | None = 90.0  # rows older than this are deleted; None: kept forever
    commit_on_loop: bool = False  # True: intents committed on the event loop while the writer is idle


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    refresh_min_s: float = 15.0
    refresh_max_s: float = 20.0
    timeout_s: int = 60
    min_remaining_s: float = 20.0
    on_shutdown: OnShutdown = OnShutdown.KEEP


@dataclass(frozen=True, slots=True)
class SymbolLimits:
    """Pre-trade limits; None means that limit is off."""

    max_order_size: float | None = None
    max_notional: float | None = None
    price_band_pct: float | None = None
    max_position: float | None = None  # contracts: the largest absolute net position, counted worst case
    max_open_orders: int | None = None  # open orders in the symbol (worst case: unsettled ones count)


class LossAction(enum.StrEnum):
    """What the account moves to when the daily loss limit trips (`on_loss_limit`)."""

    REDUCE_ONLY = "reduce_only"
    HALTED = "halted"
    HALTED_AND_CANCEL = "halted_and_cancel"


@dataclass(frozen=True, slots=True)
class GuardConfig:
    symbols: tuple[str, ...] | None = None  # None: any symbol may be traded
    max_order_size: float | None = None
    max_notional: float | None = None
    price_band_pct: float | None = None
    max_leverage: float | None = None  # the highest leverage a settings call may set; None: any
    per_symbol: Mapping[str, SymbolLimits] = field(default_factory=lambda: MappingProxyType({}))
    # The exposure limits (guardian.gateway.exposure); None: off.
    max_position: float | None = None
    max_open_orders: int | None = None
    max_open_orders_total: int | None = None
    max_gross_notional: float | None = None
    max_orders_per_minute: int | None = None  # each bot's, unless its client table sets its own
    max_fills_per_minute: int | None = None  # the account's: a burst halts it (latched) and cancels
    max_daily_loss: float | None = None  # quote currency: at the limit the account moves to on_loss_limit
    on_loss_limit: LossAction = LossAction.REDUCE_ONLY
    duplicate_window_s: float = 0.0  # the same order again from the same bot under a new cliOrdId; 0: off
    allow_unlimited: bool = False  # an account with bots may run without max_position and max_daily_loss
    # How the guard works, rather than what it allows:
    mark_poll_s: float = 2.0  # how often the marks are read from the exchange's tickers
    mark_max_age_s: float = 10.0  # an older mark is no mark: rules needing one refuse (fail closed)
    instruments_refresh_s: float = 300.0  # how often the listed contracts are read again
    expiry_margin_s: float = 0.0  # a fixed maturity gets no new risk from this long before lastTradingTime
    rate_budget: float = 500.0  # the local model of the exchange's cost budget: units per rate_window_s
    rate_window_s: float = 10.0
    dedupe_window_s: float = (
        300.0  # a sendorder repeating a cliOrdId forwarded this recently gets the first answer
    )
    upstream_timeout_s: float = 10.0  # a forwarded request without an answer by then: outcome unknown (504)
    # Seconds before an announced high-priority maintenance at which the account goes reduce_only (and
    # back after the announced window, unless an operator changed the mode meanwhile); 0: off.
    maintenance_reduce_only_s: float = 0.0
    # limits_for's answers, for the symbols configured and the first others asked about (not config)
    _limits_memo: dict[str, SymbolLimits] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def limits_for(self, symbol: str) -> SymbolLimits:
        """The limits that apply to `symbol`: its own override where set, else the account's."""
        found = self._limits_memo.get(symbol)
        if found is None:
            found = self._limits(symbol)
            if symbol in self.per_symbol or len(self._limits_memo) < 256:  # bounded: bots name symbols
                self._limits_memo[symbol] = found
        return found

    def _limits(self, symbol: str) -> SymbolLimits:
        own = self.per_symbol.get(symbol, SymbolLimits())
        open_orders = own.max_open_orders if own.max_open_orders is not None else self.max_open_orders
        return SymbolLimits(
            max_order_size=_first(own.max_order_size, self.max_order_size),
            max_notional=_first(own.max_notional, self.max_notional),
            price_band_pct=_first(own.price_band_pct, self.price_band_pct),
            max_position=_first(own.max_position, self.max_position),
            max_open_orders=open_orders,
        )

    def unlimited(self) -> list[str]:
        """The limits an account with bots must set unless `allow_unlimited` says it is a choice: the keys
        missing (max_position counts as set when every listed symbol has its own)."""
        missing = []
        per_symbol = self.symbols is not None and all(
            self.per_symbol.get(s, SymbolLimits()).max_position is not None for s in self.symbols
        )
        if self.max_position is None and not per_symbol:
            missing.append("max_position")
        if self.max_daily_loss is None:
            missing.append("max_daily_loss")
        return missing


DEFAULT_LIVENESS_TIMEOUT_S: Final = 4.0
LIVENESS_TIMEOUT_RANGE_S: Final = (1.0, 60.0)  # a ping at least every 30 s of silence (Kraken: 60 s)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The account's picture of itself: Kraken's WebSocket feeds, checked against REST."""

    enabled: bool = True
    ws_url: str | None = None  # None: derived from base_url (https://h -> wss://h/ws/v1, http -> ws)
    link_timeout_s: float = 15.0  # no message for this long: the link is down, reconnect
    reconcile_s: float = 60.0  # REST openorders, openpositions, accounts compared this often
    state_max_age_s: float = 10.0  # with the link down, the state is fresh this long after a reconcile
    # Nothing at all received (no message, no pong) for this long: the link is down. A protocol ping goes
    # out after half of it in silence. The default declares a stalled link down within 5 s.
    liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S

    def url_for(self, base_url: str) -> str:
        if self.ws_url is not None:
            return self.ws_url
        parts = urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws/v1"


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One key of a local bot: the APIKey it sends and the secret it signs with."""

    api_key: str = field(repr=False)
    api_secret: ApiSecret


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A local bot's key: it signs its requests to guardian with `api_secret`, as it would to Kraken.

    A bot may have more keys (`extra_keys`), each as valid as the first: a rotation adds the new key, the
    bot switches to it, and revoking the old one leaves no moment without a working key."""

    name: str
    api_key: str = field(repr=False)
    api_secret: ApiSecret
    permissions: frozenset[Permission]
    rate_budget: float | None = None  # this bot's own share: cost units per the account's rate_window_s
    public_rate_limit: float = DEFAULT_BOT_PUBLIC_RATE_LIMIT  # its public requests per second to the exchange
    ws_max_connections: int = DEFAULT_BOT_WS_MAX_CONNECTIONS  # its ws/v1 connections to guardian at once
    feeds: str = "account"  # account: its ws/v1 private feeds show the whole account; own: its orders only
    max_orders_per_minute: int | None = None  # new orders and edits; None: the account's guard value
    max_open_orders: int | None = None  # the open orders this bot placed; None: no limit of its own
    public_burst: float | None = None  # its public requests at once; None: the default (public_burst_size)
    extra_keys: tuple[ClientKey, ...] = ()  # further keys of this bot, each valid like api_key
    tls_client_subject: str | None = None  # with mutual TLS: the subject CN its certificate must name
    # The source addresses its keys are accepted from; None: any (guardian.conns).
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    require_nonce: bool = False  # True: a request without a Nonce header is refused (nonceRequired)

    @property
    def public_burst_size(self) -> float:
        """This bot's public burst: as configured, else DEFAULT_BOT_PUBLIC_BURST or its rate if higher."""
        return burst_or_default(self.public_burst, self.public_rate_limit, DEFAULT_BOT_PUBLIC_BURST)

    @property
    def keys(self) -> tuple[ClientKey, ...]:
        """Every key that authenticates this bot: api_key first, then extra_keys."""
        return (ClientKey(self.api_key, self.api_secret), *self.extra_keys)


def burst_or_default(burst: float | None, rate: float, default: float) -> float:
    """A public budget's burst: the configured one, else `default`, or one second's worth of `rate` when
    that is more (a rate raised without a burst is never held to a smaller one)."""
    return burst if burst is not None else max(default, rate)


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    api_key: str = field(repr=False)
    api_secret: ApiSecret
    base_url: str = DEFAULT_BASE_URL
    switch: SwitchConfig = SwitchConfig()
    guard: GuardConfig = field(default_factory=GuardConfig)
    clients: tuple[ClientConfig, ...] = ()
    nonce: str = "milliseconds"  # milliseconds | microseconds | nanoseconds | off (no Nonce header)
    stream: StreamConfig = StreamConfig()

    @property
    def ws_url(self) -> str:
        return self.stream.url_for(self.base_url)


NOTIFY_KINDS: Final = ("webhook", "slack", "telegram")
# What a notifier may be told (contract names); `events` defaults to all of them.
NOTIFY_EVENTS: Final = (
    "switch_degraded",
    "switch_expired",
    "switch_rearmed",
    "trip",
    "kill",
    "mode_changed",
    "account_state_stale",
    "maintenance_notice",
    "relay_dropped",
    "daemon_started",
    "daemon_stopping",
)
DEFAULT_TELEGRAM_API: Final = "https://api.telegram.org"


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """One push notifier (`[[notify]]`): where its messages go, which events, how often at most."""

    name: str  # the `notifier` label of the metrics and its name in logs and /guardian/state
    kind: str  # webhook | slack | telegram
    url: Secret | None = None  # webhook and slack: where to POST (a Slack webhook's URL is its secret)
    bot_token: Secret | None = None  # telegram
    chat_id: str | None = None  # telegram
    api_url: str = DEFAULT_TELEGRAM_API  # telegram: the Bot API's base URL
    events: frozenset[str] = frozenset(NOTIFY_EVENTS)
    min_interval_s: float = 60.0  # one message per event kind and account this often at most
    degraded_for_s: float = 10.0  # a switch degraded this long is told (a retry that works is not)
    timeout_s: float = 5.0  # one delivery attempt's limit

    def secrets(self) -> list[Secret]:
        return [s for s in (self.url, self.bot_token) if s is not None]


@dataclass(frozen=True, slots=True)
class Config:
    accounts: tuple[AccountConfig, ...]
    server: ServerConfig = ServerConfig()
    journal: JournalConfig = JournalConfig()
    log: LogConfig = LogConfig()
    notify: tuple[NotifyConfig, ...] = ()

    def all_secrets(self) -> list[Secret]:
        """Every secret loaded, for `logs.REDACTOR.register`."""
        found: list[Secret] = [] if self.server.admin_token is None else [self.server.admin_token]
        for notifier in self.notify:
            found.extend(notifier.secrets())
        for account in self.accounts:
            found.append(account.api_secret)
            found.extend(key.api_secret for client in account.clients for key in client.keys)
        return found

    def warnings(self) -> list[str]:
        """Every protection that is off, and every choice that weakens one, one line each."""
        notes: list[str] = []
        if self.server.admin_token is None:
            notes.append("server.admin_token is not set: the admin endpoints are off")
        if not self.server.is_loopback and self.server.tls_cert_file is None:
            notes.append(
                f"server.listen = {self.server.listen!r} is not a loopback address: "
                "guardian's API is reachable from other machines, in plain HTTP (no server.tls_cert_file)"
            )
        elif not self.server.is_loopback and self.server.tls_client_ca_file is None:
            notes.append(
                "server.tls_client_ca_file is not set: any machine that reaches guardian may connect (over TLS)"
            )
        for i, account in enumerate(self.accounts):
            notes.extend(_account_warnings(f"accounts[{i}]", account))
        for i, notifier in enumerate(self.notify):
            target = notifier.api_url if notifier.url is None else notifier.url.reveal()
            if urlsplit(target).scheme == "http" and not _is_loopback_url(target):
                notes.append(
                    f"notify[{i}] ({notifier.name}): plain http to another machine: messages travel unencrypted"
                )
        return notes

    def summary(self) -> str:
        """A human summary for `guardian check-config`; secrets masked, api_keys cut to four characters."""
        token = "set" if self.server.admin_token else "not set (no admin endpoints)"
        lines = [
            f"server: listen {self.server.listen}, admin token {token}, public requests at most "
            f"{self.server.public_rate_limit:g}/s (bursts of {self.server.public_burst_size:g})",
            f"journal: {self.journal.path}, "
            + (
                "rows kept forever"
                if self.journal.retention_days is None
                else f"rows kept {self.journal.retention_days:g} days"
            ),
            f"log: level {self.log.level}, format {self.log.format}",
        ]
        for account in self.accounts:
            sw, guard = account.switch, account.guard
            lines += [
                f"account {account.name}: {account.base_url}, api_key {mask_key(account.api_key)}, "
                f"api_secret {account.api_secret}, nonce {account.nonce}",
                f"  switch: refresh every {sw.refresh_min_s:g}-{sw.refresh_max_s:g} s, timeout {sw.timeout_s} s, "
                f"no new risk under {sw.min_remaining_s:g} s left, on shutdown {sw.on_shutdown}",
                "  guard: symbols "
                + (", ".join(guard.symbols) if guard.symbols else "any")
                + "; "
                + _limits_text(
                    SymbolLimits(
                        guard.max_order_size,
                        guard.max_notional,
                        guard.price_band_pct,
                        guard.max_position,
                        guard.max_open_orders,
                    )
                ),
                f"  exposure: {_exposure_text(guard)}",
            ]
            lines += [f"    {symbol}: {_limits_text(own)}" for symbol, own in guard.per_symbol.items()]
            lines.append(
                "  settings: "
                + (
                    "any leverage"
                    if guard.max_leverage is None
                    else f"leverage at most {guard.max_leverage:g}"
                )
            )
            if guard.maintenance_reduce_only_s:
                lines.append(
                    f"  maintenance: reduce_only {guard.maintenance_reduce_only_s:g} s before an announced downtime"
                )
            stream = account.stream
            lines.append(
                f"  stream: {account.ws_url}, link timeout {stream.link_timeout_s:g} s, reconcile every "
                f"{stream.reconcile_s:g} s, state fresh for {stream.state_max_age_s:g} s without the link"
                if stream.enabled
                else "  stream: disabled (no account state: positions, orders and margin are not watched)"
            )
            lines += [
                f"  client {client.name}: api_key {mask_key(client.api_key)}, api_secret {client.api_secret}, "
                + "".join(f"extra key {mask_key(key.api_key)}, " for key in client.extra_keys)
                + f"permissions {'+'.join(sorted(p.value for p in client.permissions))}"
                + ("" if client.rate_budget is None else f", rate budget {client.rate_budget:g}")
                + f", public requests at most {client.public_rate_limit:g}/s"
                + f" (bursts of {client.public_burst_size:g})"
                for client in account.clients
            ] or ["  clients: none"]
        lines += [_notify_text(notifier) for notifier in self.notify]
        return "\n".join(lines)


def mask_key(api_key: str) -> str:
    """An api_key as it may be shown: its first four characters, or nothing if it is short."""
    return f"{api_key[:4]}..." if len(api_key) >= 12 else "***"


def load_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    secrets_dirs: Sequence[Path] | None = None,
    secret_files: list[tuple[str, Path]] | None = None,
) -> Config:
    """Read and validate the configuration file at `path`. Raises ConfigError, prefixed with the path."""
    return load_config_bytes(path, env=env, secrets_dirs=secrets_dirs, secret_files=secret_files)[0]


def load_config_bytes(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    secrets_dirs: Sequence[Path] | None = None,
    secret_files: list[tuple[str, Path]] | None = None,
) -> tuple[Config, bytes]:
    """`load_config`, and the exact bytes it was read from (a reload's hash is theirs)."""
    path = Path(path)
    data = _read_config_bytes(path)
    try:
        config = parse_config(
            _decode_config(path, data),
            base_dir=path.parent,
            env=env,
            secrets_dirs=secrets_dirs,
            secret_files=secret_files,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config, data


def load_journal_config(path: str | Path) -> JournalConfig:
    """Only the [journal] table of the configuration file at `path`, validated as `load_config` does.

    For `guardian journal`, which reads the journal and nothing else: it needs no secret, so it works in a
    shell that lacks the daemon's environment or credentials, and the rest of the file is not checked.
    """
    path = Path(path)
    text = _read_config(path)
    try:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}") from None
        return _journal(_Table(data, "").table("journal", _JOURNAL_KEYS))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """Where `guardian status --config` finds the daemon, and whether it speaks TLS."""

    host: str
    port: int
    tls_cert_file: Path | None  # the daemon's own certificate: what status trusts
    mutual: bool  # server.tls_client_ca_file is set: a client certificate is asked for

    @property
    def url(self) -> str:
        """The daemon's URL from this machine: a wildcard listen address is asked on loopback."""
        scheme = "http" if self.tls_cert_file is None else "https"
        return f"{scheme}://{host_port(_WILDCARD_TO_LOOPBACK.get(self.host, self.host), self.port)}"


_WILDCARD_TO_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - asked, not bound


def load_status_target(path: str | Path) -> StatusTarget:
    """Only `server.listen` and the server's TLS files of the configuration at `path` (for `guardian
    status`: no secret is needed to ask a running daemon how it is, and no key file is read)."""
    path = Path(path)
    text = _read_config(path)
    try:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}") from None
        server = _Table(_Table(data, "").get("server", dict, {}), "server")
        host, port = parse_listen(server.get("listen", str, "127.0.0.1:8787"), "server.listen")
        cert = _tls_path(server, "tls_cert_file", path.parent)
        mutual = _tls_path(server, "tls_client_ca_file", path.parent) is not None
        return StatusTarget(host, port, cert, mutual)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_config(path: Path) -> str:
    return _decode_config(path, _read_config_bytes(path))


def _read_config_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None


def _decode_config(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: save it as UTF-8") from None


def parse_config(
    text: str,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    secrets_dirs: Sequence[Path] | None = None,
    secret_files: list[tuple[str, Path]] | None = None,
) -> Config:
    """Validate configuration text; `base_dir` is where a relative `*_file` is looked up last. Each secret
    file read is appended to `secret_files` (its key and path), when given: `check-config --online` checks
    their modes."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    found = _Secrets(os.environ if env is None else env, base_dir, secrets_dirs)
    if secret_files is not None:
        found.files = secret_files
    root = _Table(data, "", ("server", "journal", "log", "accounts", "notify"))

    server = root.table(
        "server",
        (
            "listen",
            *_secret_keys("admin_token"),
            "public_rate_limit",
            "public_burst",
            "ws_max_connections",
            *_TLS_KEYS,
            *_CONNECTION_KEYS,
        ),
    )
    host, port = parse_listen(server.get("listen", str, "127.0.0.1:8787"), server.key("listen"))
    admin_token = found.optional(server, "admin_token")
    if admin_token is not None and len(admin_token.reveal()) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"{server.key('admin_token')} is shorter than {MIN_ADMIN_TOKEN_CHARS} characters: use a long random "
            "token, e.g. the output of `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )

    public_rate_limit = server.number("public_rate_limit", DEFAULT_PUBLIC_RATE_LIMIT, above=0)
    public_burst = server.optional_number("public_burst", at_least=1)
    ws_max_connections = _whole(server, "ws_max_connections", DEFAULT_WS_MAX_CONNECTIONS)
    journal = _journal(root.table("journal", _JOURNAL_KEYS))

    log = root.table("log", ("level", "format"))
    level = log.choice("level", logs.LEVELS, "info")
    fmt = log.choice("format", logs.FORMATS, "auto")

    tables = root.array("accounts")
    if not tables:
        raise ConfigError(
            "no accounts: add at least one [[accounts]] table with name, api_key and api_secret"
        )
    accounts = tuple(_account(table, found) for table in tables)
    _check_unique(accounts)
    for i, account in enumerate(accounts):
        _check_limited(f"accounts[{i}].guard", account)
    notify = tuple(_notify(table, found) for table in root.array("notify"))
    _check_unique_notifiers(notify)
    cert, key, ca = (_tls_path(server, name, base_dir) for name in _TLS_KEYS)
    tls_server = ServerConfig(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca)
    _check_tls(tls_server, accounts)
    return Config(
        accounts=accounts,
        server=ServerConfig(
            host,
            port,
            admin_token,
            public_rate_limit,
            ws_max_connections,
            public_burst,
            tls_cert_file=cert,
            tls_key_file=key,
            tls_client_ca_file=ca,
            **_connection_limits(server),
        ),
        journal=journal,
        log=LogConfig(level, fmt),
        notify=notify,
    )


# --- sections --------------------------------------------------------------------------------------------


def _secret_keys(name: str) -> tuple[str, str, str]:
    return name, f"{name}_file", f"{name}_env"


_JOURNAL_KEYS = ("path", "retention_days", "commit_on_loop")
_TLS_KEYS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
_CONNECTION_KEYS = (
    "request_timeout_s",
    "keepalive_timeout_s",
    "max_connections",
    "max_connections_per_source",
)
_ACCOUNT_KEYS = ("name", "base_url", *_secret_keys("api_key"), *_secret_keys("api_secret"), "nonce")
NONCE_CHOICES: Final = (*NONCE_UNITS, "off")
_SWITCH_KEYS = ("refresh_min_s", "refresh_max_s", "timeout_s", "min_remaining_s", "on_shutdown")
_LIMIT_KEYS = ("max_order_size", "max_notional", "price_band_pct", "max_position", "max_open_orders")
_EXPOSURE_KEYS = (
    "max_open_orders_total",
    "max_gross_notional",
    "max_orders_per_minute",
    "max_fills_per_minute",
    "max_daily_loss",
    "on_loss_limit",
    "duplicate_window_s",
    "allow_unlimited",
)
# How the guard works, rather than what it allows (a reload cannot change these: guardian.reload).
GUARD_SETTINGS: Final = (
    "mark_poll_s",
    "mark_max_age_s",
    "instruments_refresh_s",
    "expiry_margin_s",
    "rate_budget",
    "rate_window_s",
    "dedupe_window_s",
    "upstream_timeout_s",
    "maintenance_reduce_only_s",
)
_STREAM_KEYS = ("enabled", "ws_url", "link_timeout_s", "reconcile_s", "state_max_age_s", "liveness_timeout_s")
_CLIENT_KEYS = (
    "name",
    *_secret_keys("api_key"),
    *_secret_keys("api_secret"),
    "permissions",
    "rate_budget",
    "public_rate_limit",
    "public_burst",
    "max_orders_per_minute",
    "max_open_orders",
    "ws_max_connections",
    "feeds",
    "extra_keys",
    "tls_client_subject",
    "allow_from",
    "require_nonce",
)
_CLIENT_KEY_KEYS = (*_secret_keys("api_key"), *_secret_keys("api_secret"))


def _journal(table: _Table) -> JournalConfig:
    path = table.get("path", str, "guardian-journal.sqlite3")
    if not path:
        raise ConfigError(f"{table.key('path')} is empty: give a file name for the journal database")
    retention = table.number("retention_days", 90.0, at_least=0)
    return JournalConfig(
        Path(path),
        retention_days=retention or None,  # 0: keep forever
        commit_on_loop=table.get("commit_on_loop", bool, False),
    )


def _account(table: _Table, found: _Secrets) -> AccountConfig:
    table.allow(*_ACCOUNT_KEYS, "switch", "guard", "clients", "stream")
    name = table.name()
    base_url = _parse_base_url(table.get("base_url", str, DEFAULT_BASE_URL), table.key("base_url"))
    api_key = _api_key(found, table)
    api_secret = found.api_secret(table)
    switch = _switch(table.table("switch", _SWITCH_KEYS))
    guard = _guard(
        table.table(
            "guard", ("symbols", *_LIMIT_KEYS, *_EXPOSURE_KEYS, "max_leverage", *GUARD_SETTINGS, "symbol")
        )
    )
    clients = tuple(_client(client, found) for client in table.array("clients"))
    nonce = table.choice("nonce", NONCE_CHOICES, "milliseconds")
    stream = _stream(table.table("stream", _STREAM_KEYS))
    return AccountConfig(name, api_key, api_secret, base_url, switch, guard, clients, nonce, stream)


def _stream(table: _Table) -> StreamConfig:
    defaults = StreamConfig()
    ws_url = table.get("ws_url", str, None)
    if ws_url is not None:
        try:
            parts = urlsplit(ws_url)
            usable = parts.scheme in ("ws", "wss") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            usable = False
        if not usable or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(
                f"{table.key('ws_url')} must be a ws:// or wss:// URL with a host, e.g. "
                f'"wss://futures.kraken.com/ws/v1", got {ws_url!r}; remove it to derive it from base_url'
            )
    link_timeout = table.number("link_timeout_s", defaults.link_timeout_s, above=0)
    reconcile = table.number("reconcile_s", defaults.reconcile_s, above=0)
    max_age = table.number("state_max_age_s", defaults.state_max_age_s, above=0)
    low, high = LIVENESS_TIMEOUT_RANGE_S
    liveness = table.number("liveness_timeout_s", defaults.liveness_timeout_s, at_least=low)
    if liveness > high:
        raise ConfigError(
            f"{table.key('liveness_timeout_s')} must be at most {high:g} s (a silent link is pinged after half "
            f"of it, and Kraken wants a ping at least every 60 s), got {liveness:g}"
        )
    return StreamConfig(
        enabled=table.get("enabled", bool, defaults.enabled),
        ws_url=ws_url,
        link_timeout_s=link_timeout,
        reconcile_s=reconcile,
        state_max_age_s=max_age,
        liveness_timeout_s=liveness,
    )


_NOTIFY_KEYS = (
    "name",
    "kind",
    *_secret_keys("url"),
    *_secret_keys("bot_token"),
    *_secret_keys("chat_id"),
    "api_url",
    "events",
    "min_interval_s",
    "degraded_for_s",
    "timeout_s",
)
_NOTIFY_TARGETS: Final = {
    "webhook": ("url",),
    "slack": ("url",),
    "telegram": ("bot_token", "chat_id", "api_url"),
}
_BOT_TOKEN = re.compile(r"[A-Za-z0-9:_-]+")
MAX_NOTIFY_TIMEOUT_S: Final = 60.0


def _notify(table: _Table, found: _Secrets) -> NotifyConfig:
    """One `[[notify]]` table: a webhook or Slack `url`, or Telegram's `bot_token` and `chat_id` (each from
    the value, a `_file` or an `_env`, as every secret)."""
    table.allow(*_NOTIFY_KEYS)
    if "kind" not in table.data:
        raise ConfigError(f"{table.key('kind')} is missing: one of {', '.join(map(repr, NOTIFY_KINDS))}")
    kind = table.choice("kind", NOTIFY_KINDS, "webhook")
    name = table.name() if "name" in table.data else kind
    defaults = NotifyConfig(name, kind)
    wanted = _NOTIFY_TARGETS[kind]
    for key in table.data:
        base = key.removesuffix("_file").removesuffix("_env")
        if base in ("url", "bot_token", "chat_id", "api_url") and base not in wanted:
            raise ConfigError(
                f"{table.key(key)} is not for kind = {kind!r}: a {kind} notifier takes {', '.join(wanted)}"
            )
    url = token = chat_id = None
    api_url = defaults.api_url
    if kind == "telegram":
        token = found.text(table, "bot_token")
        if not _BOT_TOKEN.fullmatch(token):
            raise ConfigError(
                f"{table.key('bot_token')} has characters a Telegram bot token does not: copy it exactly as "
                "@BotFather gave it"
            )
        chat_id = found.text(table, "chat_id")
        api_url = _http_url(table.get("api_url", str, api_url), table.key("api_url"), secret=False)
    else:
        url = _http_url(found.text(table, "url"), table.key("url"), secret=True)
    timeout = table.number("timeout_s", defaults.timeout_s, above=0)
    if timeout > MAX_NOTIFY_TIMEOUT_S:
        raise ConfigError(
            f"{table.key('timeout_s')} must be at most {MAX_NOTIFY_TIMEOUT_S:g}, got {timeout:g}"
        )
    return NotifyConfig(
        name,
        kind,
        url=None if url is None else Secret(url),
        bot_token=None if token is None else Secret(token),
        chat_id=chat_id,
        api_url=api_url,
        events=_notify_events(table, defaults.events),
        min_interval_s=table.number("min_interval_s", defaults.min_interval_s, at_least=0),
        degraded_for_s=table.number("degraded_for_s", defaults.degraded_for_s, at_least=0),
        timeout_s=timeout,
    )


def _notify_events(table: _Table, default: frozenset[str]) -> frozenset[str]:
    if "events" not in table.data:
        return default
    raw = table.get("events", list, [])
    if not raw:
        raise ConfigError(
            f"{table.key('events')} is empty, so nothing would be sent: list the events, or remove the key "
            "for all of them"
        )
    for i, event in enumerate(raw):
        if not isinstance(event, str) or event not in NOTIFY_EVENTS:
            close = difflib.get_close_matches(str(event), NOTIFY_EVENTS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{table.key('events')}[{i}] ({event!r}) is not an event: {hint}the events are "
                f"{', '.join(NOTIFY_EVENTS)}"
            )
    return frozenset(raw)


def _http_url(text: str, key: str, *, secret: bool) -> str:
    """An http(s) URL with a host; a secret one is never repeated in the message."""
    try:
        parts = urlsplit(text)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        usable = False
    if not usable:
        shown = " (the value is not repeated here: it is a secret)" if secret else f", got {text!r}"
        raise ConfigError(f"{key} must be an http(s) URL with a host{shown}")
    return text.rstrip("/") if not secret else text


def _check_unique_notifiers(notify: Sequence[NotifyConfig]) -> None:
    names: dict[str, str] = {}
    for i, notifier in enumerate(notify):
        _claim(
            names,
            notifier.name,
            f"notify[{i}].name",
            "give each notifier its own name (the default is its kind)",
        )


def _notify_text(notifier: NotifyConfig) -> str:
    """A notifier's line in the summary: its secrets masked."""
    every = notifier.events == frozenset(NOTIFY_EVENTS)
    events = "every event" if every else ", ".join(e for e in NOTIFY_EVENTS if e in notifier.events)
    target = (
        f"chat {notifier.chat_id} via {notifier.api_url}, bot_token ***"
        if notifier.kind == "telegram"
        else "url ***"
    )
    return (
        f"notify {notifier.name}: {notifier.kind}, {target}; {events}; at most one message per event and account "
        f"every {notifier.min_interval_s:g} s; a degraded switch is told after {notifier.degraded_for_s:g} s"
    )


def _switch(table: _Table) -> SwitchConfig:
    refresh_min = table.number("refresh_min_s", 15.0, above=0)
    refresh_max = table.number("refresh_max_s", 20.0, above=0)
    timeout = table.get("timeout_s", (int, float), 60)
    if isinstance(timeout, float) and not timeout.is_integer():
        raise ConfigError(
            f"{table.key('timeout_s')} must be a whole number of seconds (Kraken takes an integer)"
        )
    timeout = int(timeout)
    if not 1 <= timeout <= MAX_TIMEOUT_S:
        raise ConfigError(
            f"{table.key('timeout_s')} must be between 1 and {MAX_TIMEOUT_S} seconds, got {timeout}"
        )
    min_remaining = table.number("min_remaining_s", 20.0, at_least=0)
    on_shutdown = OnShutdown(table.choice("on_shutdown", tuple(OnShutdown), "keep"))
    if refresh_min > refresh_max:
        raise ConfigError(
            f"{table.key('refresh_min_s')} ({refresh_min:g}) is above refresh_max_s ({refresh_max:g}): each "
            "refresh waits a random time in [refresh_min_s, refresh_max_s]; lower refresh_min_s or raise refresh_max_s"
        )
    if 2 * refresh_max > timeout:
        raise ConfigError(
            f"{table.key('refresh_max_s')} ({refresh_max:g}) is more than half of timeout_s ({timeout}): a failed "
            f"refresh must leave time for a retry before the exchange's timer runs out; keep refresh_max_s at "
            f"most {timeout / 2:g} or raise timeout_s to at least {math.ceil(2 * refresh_max)}"
        )
    if min_remaining >= timeout:
        raise ConfigError(
            f"{table.key('min_remaining_s')} ({min_remaining:g}) must be below timeout_s ({timeout}), or no new "
            "order would ever be let out; lower min_remaining_s"
        )
    return SwitchConfig(refresh_min, refresh_max, timeout, min_remaining, on_shutdown)


def _limits(table: _Table) -> SymbolLimits:
    band = table.optional_number("price_band_pct", above=0)
    if band is not None and band >= 100:
        raise ConfigError(
            f"{table.key('price_band_pct')} must be below 100 (a percentage away from the mark), got {band:g}"
        )
    return SymbolLimits(
        table.optional_number("max_order_size", above=0),
        table.optional_number("max_notional", above=0),
        band,
        table.optional_number("max_position", above=0),
        _count(table, "max_open_orders"),
    )


def _count(table: _Table, name: str) -> int | None:
    """A limit that counts things: a whole number, at least 1, or absent (off)."""
    value = table.get(name, int, None)
    if value is not None and value < 1:
        raise ConfigError(f"{table.key(name)} must be a whole number of at least 1, got {value}")
    return value  # type: ignore[no-any-return]


def _guard(table: _Table) -> GuardConfig:
    symbols: tuple[str, ...] | None = None
    if "symbols" in table.data:
        raw = table.get("symbols", list, [])
        if not raw:
            raise ConfigError(
                f"{table.key('symbols')} is empty, so no symbol could be traded: list the symbols bots may "
                'trade (e.g. ["PF_XBTUSD"]) or remove the key to allow any'
            )
        for i, symbol in enumerate(raw):
            if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
                raise ConfigError(f'{table.key("symbols")}[{i}] must be a symbol name like "PF_XBTUSD"')
        if len(set(raw)) != len(raw):
            raise ConfigError(f"{table.key('symbols')} lists a symbol twice: list each once")
        symbols = tuple(raw)
    limits = _limits(table)
    per_symbol: dict[str, SymbolLimits] = {}
    overrides = table.table("symbol", None)
    for symbol in overrides.data:
        if symbols is not None and symbol not in symbols:
            raise ConfigError(
                f"{overrides.key(symbol)} is not in {table.key('symbols')}, so it can never apply: "
                "fix the symbol's spelling or add it to symbols"
            )
        if not _SYMBOL.fullmatch(symbol):
            raise ConfigError(f'{overrides.key(symbol)}: a symbol name like "PF_XBTUSD" is expected here')
        per_symbol[symbol] = _limits(overrides.table(symbol, _LIMIT_KEYS))
    defaults = GuardConfig()
    mark_poll = table.number("mark_poll_s", defaults.mark_poll_s, above=0)
    mark_max_age = table.number("mark_max_age_s", defaults.mark_max_age_s, above=0)
    if mark_max_age < mark_poll:
        raise ConfigError(
            f"{table.key('mark_max_age_s')} ({mark_max_age:g}) is below {table.key('mark_poll_s')} ({mark_poll:g}): "
            "every mark would be stale before the next poll; make it at least two polls long"
        )
    return GuardConfig(
        symbols,
        limits.max_order_size,
        limits.max_notional,
        limits.price_band_pct,
        table.optional_number("max_leverage", above=0),
        MappingProxyType(per_symbol),
        mark_poll_s=mark_poll,
        mark_max_age_s=mark_max_age,
        instruments_refresh_s=table.number(
            "instruments_refresh_s", defaults.instruments_refresh_s, at_least=10
        ),
        expiry_margin_s=table.number("expiry_margin_s", defaults.expiry_margin_s, at_least=0),
        rate_budget=table.number("rate_budget", defaults.rate_budget, above=0),
        rate_window_s=table.number("rate_window_s", defaults.rate_window_s, above=0),
        dedupe_window_s=table.number("dedupe_window_s", defaults.dedupe_window_s, at_least=0),
        upstream_timeout_s=table.number("upstream_timeout_s", defaults.upstream_timeout_s, above=0),
        maintenance_reduce_only_s=table.number(
            "maintenance_reduce_only_s", defaults.maintenance_reduce_only_s, at_least=0
        ),
        max_position=limits.max_position,
        max_open_orders=limits.max_open_orders,
        max_open_orders_total=_count(table, "max_open_orders_total"),
        max_gross_notional=table.optional_number("max_gross_notional", above=0),
        max_orders_per_minute=_count(table, "max_orders_per_minute"),
        max_fills_per_minute=_count(table, "max_fills_per_minute"),
        max_daily_loss=table.optional_number("max_daily_loss", above=0),
        on_loss_limit=LossAction(table.choice("on_loss_limit", tuple(LossAction), "reduce_only")),
        duplicate_window_s=table.number("duplicate_window_s", 0.0, at_least=0),
        allow_unlimited=table.get("allow_unlimited", bool, False),
    )


def _client(table: _Table, found: _Secrets) -> ClientConfig:
    table.allow(*_CLIENT_KEYS)
    name = table.name()
    api_key, api_secret = _client_key(table, found)
    extra_keys = tuple(ClientKey(*_client_key(item, found)) for item in _extra_keys(table))
    if "permissions" not in table.data:
        raise ConfigError(
            f'{table.key("permissions")} is missing: say what the bot may do, e.g. ["read", "trade"]'
        )
    raw = table.get("permissions", list, [])
    allowed = [p.value for p in CLIENT_PERMISSIONS]
    if not raw or any(p not in allowed for p in raw):
        raise ConfigError(
            f"{table.key('permissions')} must be a non-empty list drawn from {allowed}: "
            '["read"] for a bot that only looks, ["read", "trade"] for one that trades, "settings" for one '
            "that may change leverage and other risk settings"
        )
    rate_budget = table.optional_number("rate_budget", above=0)
    public = table.number("public_rate_limit", DEFAULT_BOT_PUBLIC_RATE_LIMIT, above=0)
    public_burst = table.optional_number("public_burst", at_least=1)
    ws_max = _whole(table, "ws_max_connections", DEFAULT_BOT_WS_MAX_CONNECTIONS)
    feeds = table.choice("feeds", FEED_VIEWS, "account")
    return ClientConfig(
        name,
        api_key,
        api_secret,
        frozenset(Permission(p) for p in raw),
        rate_budget,
        public,
        ws_max,
        feeds,
        max_orders_per_minute=_count(table, "max_orders_per_minute"),
        max_open_orders=_count(table, "max_open_orders"),
        public_burst=public_burst,
        extra_keys=extra_keys,
        tls_client_subject=_tls_subject(table),
        allow_from=_allow_from(table),
        require_nonce=table.get("require_nonce", bool, False),
    )


def _connection_limits(server: _Table) -> dict[str, Any]:
    """[server]'s connection hygiene keys (guardian.conns), each within its range."""
    found: dict[str, Any] = {}
    for name, default, (low, high) in (
        ("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S, REQUEST_TIMEOUT_RANGE_S),
        ("keepalive_timeout_s", DEFAULT_KEEPALIVE_TIMEOUT_S, KEEPALIVE_TIMEOUT_RANGE_S),
    ):
        found[name] = server.number(name, default, at_least=low)
        if found[name] > high:
            raise ConfigError(f"{server.key(name)} must be at most {high:g} s, got {found[name]:g}")
    low, high = MAX_CONNECTIONS_RANGE
    for name, default in (
        ("max_connections", DEFAULT_MAX_CONNECTIONS),
        ("max_connections_per_source", DEFAULT_MAX_CONNECTIONS_PER_SOURCE),
    ):
        value = _whole(server, name, default)
        if not low <= value <= high:
            raise ConfigError(f"{server.key(name)} must be between {low} and {high}, got {value}")
        found[name] = value
    if found["max_connections_per_source"] > found["max_connections"]:
        raise ConfigError(
            f"{server.key('max_connections_per_source')} ({found['max_connections_per_source']}) is more than "
            f"{server.key('max_connections')} ({found['max_connections']}): lower it, or raise max_connections"
        )
    return found


def _allow_from(table: _Table) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """A client's allow_from: CIDRs (or single addresses), IPv4 or IPv6; absent: any source."""
    if "allow_from" not in table.data:
        return None
    where = table.key("allow_from")
    raw = table.get("allow_from", list, [])
    if not raw:
        raise ConfigError(
            f'{where} is empty, so no address could use this key: list the bot\'s networks, e.g. ["10.0.0.0/8"], '
            "or leave the key out to accept it from any address"
        )
    networks = []
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise ConfigError(f'{where}[{i}] must be a string such as "10.0.0.0/8", not {_type_name(item)}')
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(
                f'{where}[{i}] = {item!r} is not a CIDR ({exc}): write a network such as "10.0.0.0/8", '
                '"192.168.1.20/32" or "fd00::/8", its address bits beyond the prefix all zero'
            ) from None
    return tuple(networks)


def _tls_path(server: _Table, name: str, base_dir: Path) -> Path | None:
    """A TLS file of [server]: an absolute path, or one relative to the configuration's directory."""
    raw = server.get(name, str, "")
    if name not in server.data:
        return None
    if not raw:
        raise ConfigError(f"{server.key(name)} is empty: give a PEM file's path, or leave the key out")
    return base_dir / Path(raw).expanduser()


def _tls_subject(table: _Table) -> str | None:
    if "tls_client_subject" not in table.data:
        return None
    subject: str = table.get("tls_client_subject", str, "")
    if not subject or subject != subject.strip():
        raise ConfigError(
            f'{table.key("tls_client_subject")} must be the bot certificate\'s subject CN, e.g. "bot-a"'
        )
    return subject


def _check_tls(server: ServerConfig, accounts: Sequence[AccountConfig]) -> None:
    """The TLS files as the server will load them; a bound subject needs client certificates."""
    tls.check_files(server)
    if server.tls_client_ca_file is None:
        for i, account in enumerate(accounts):
            for j, client in enumerate(account.clients):
                if client.tls_client_subject is not None:
                    raise ConfigError(
                        f"accounts[{i}].clients[{j}].tls_client_subject needs server.tls_client_ca_file: "
                        "without mutual TLS no client presents a certificate to compare"
                    )


def _client_key(table: _Table, found: _Secrets) -> tuple[str, ApiSecret]:
    """A bot's api_key and api_secret, from a client table or one of its extra_keys."""
    api_key = _api_key(found, table)
    api_secret = found.api_secret(table)
    if len(api_secret.key_bytes()) < MIN_CLIENT_SECRET_BYTES:
        raise ConfigError(
            f"{table.key('api_secret')} is too short ({MIN_CLIENT_SECRET_BYTES} bytes at least): generate one with "
            "`python3 -c 'import base64, os; print(base64.b64encode(os.urandom(64)).decode())'`"
        )
    return api_key, api_secret


def _extra_keys(table: _Table) -> list[_Table]:
    """A client's `extra_keys`: tables of api_key and api_secret, each from any of its three sources."""
    found = []
    for i, item in enumerate(table.get("extra_keys", list, [])):
        where = f"{table.key('extra_keys')}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f'{where} must be a table: {{ api_key = "...", api_secret_file = "..." }}')
        found.append(_Table(item, where, _CLIENT_KEY_KEYS))
    return found


def _check_limited(where: str, account: AccountConfig) -> None:
    """An account with bots has max_position and max_daily_loss, or says out loud that it runs without."""
    missing = account.guard.unlimited()
    if account.clients and missing and not account.guard.allow_unlimited:
        keys = " and ".join(f"{where}.{key}" for key in missing)
        raise ConfigError(
            f"account {account.name} has bots but no {keys}: a runaway bot of small orders would meet no "
            f"limit. Set {'them' if len(missing) > 1 else 'it'}, or say the choice out loud with "
            f"{where}.allow_unlimited = true"
        )


def _whole(table: _Table, name: str, default: int) -> int:
    value = table.get(name, int, default)
    if isinstance(value, bool) or value < 1:
        raise ConfigError(f"{table.key(name)} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _check_unique(accounts: Sequence[AccountConfig]) -> None:
    """Account names, client names and api_keys are each used once in the whole file."""
    names: dict[str, str] = {}
    clients: dict[str, str] = {}
    keys: dict[str, str] = {}
    for i, account in enumerate(accounts):
        _claim(names, account.name, f"accounts[{i}].name", "account names must be unique")
        _claim(keys, account.api_key, f"accounts[{i}].api_key", "each account needs its own exchange key")
    for i, account in enumerate(accounts):
        for j, client in enumerate(account.clients):
            where = f"accounts[{i}].clients[{j}]"
            _claim(clients, client.name, f"{where}.name", "client names must be unique across accounts")
            for k, key in enumerate(client.keys):
                _claim(
                    keys,
                    key.api_key,
                    f"{where}.api_key" if k == 0 else f"{where}.extra_keys[{k - 1}].api_key",
                    "a key belongs to one account, and a bot's key is never an exchange key; give each bot its own",
                )


def _claim(seen: dict[str, str], value: str, key: str, rule: str) -> None:
    if value in seen:
        shown = mask_key(value) if key.endswith("api_key") else repr(value)
        raise ConfigError(f"{key} ({shown}) is already used by {seen[value]}: {rule}")
    seen[value] = key


def _api_key(found: _Secrets, table: _Table) -> str:
    api_key = found.text(table, "api_key")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in api_key):
        raise ConfigError(
            f"{table.key('api_key')} contains spaces or non-printable characters: copy the key exactly"
        )
    return api_key


# --- values ----------------------------------------------------------------------------------------------


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets (as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid_host = bool(host) and (
        _is_ipv6(host) if bracketed else ":" not in host and _HOSTNAME.fullmatch(host) is not None
    )
    if not sep or not valid_host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{key} must be HOST:PORT (e.g. "127.0.0.1:8787", "[::1]:8787"), got {text!r}')
    return host, int(port)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _parse_base_url(text: str, key: str) -> str:
    try:
        url = urlsplit(text)
        usable = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a port that is not a number
        usable = False
    if not usable or url.query or url.fragment or url.username or url.password:
        raise ConfigError(
            f'{key} must be an http(s) URL with a host and no query, e.g. "{DEFAULT_BASE_URL}", got {text!r}'
        )
    return text.rstrip("/")


def _is_loopback_url(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return ServerConfig(host=host).is_loopback


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _limits_text(limits: SymbolLimits) -> str:
    parts = [
        f"max order size {limits.max_order_size:g}" if limits.max_order_size is not None else None,
        f"max notional {limits.max_notional:g}" if limits.max_notional is not None else None,
        f"price band {limits.price_band_pct:g}%" if limits.price_band_pct is not None else None,
        f"max position {limits.max_position:g}" if limits.max_position is not None else None,
        f"max open orders {limits.max_open_orders}" if limits.max_open_orders is not None else None,
    ]
    return ", ".join(p for p in parts if p) or "no limits"


def _exposure_text(guard: GuardConfig) -> str:
    parts = [
        f"max open orders total {guard.max_open_orders_total}" if guard.max_open_orders_total else None,
        f"max gross notional {guard.max_gross_notional:g}" if guard.max_gross_notional else None,
        f"max orders per minute per bot {guard.max_orders_per_minute}"
        if guard.max_orders_per_minute
        else None,
        f"max fills per minute {guard.max_fills_per_minute}" if guard.max_fills_per_minute else None,
        f"max daily loss {guard.max_daily_loss:g} (then {guard.on_loss_limit.value})"
        if guard.max_daily_loss
        else None,
        f"duplicates refused within {guard.duplicate_window_s:g} s" if guard.duplicate_window_s else None,
        "allow_unlimited" if guard.allow_unlimited else None,
    ]
    return ", ".join(p for p in parts if p) or "no account-wide limits"


def _account_warnings(where: str, account: AccountConfig) -> Iterator[str]:
    guard, label = account.guard, f"account {account.name}"
    refresh_cost, cancel_all_cost = endpoint("cancelallordersafter").cost, endpoint("cancelallorders").cost
    refreshes = math.ceil(guard.rate_window_s / account.switch.refresh_min_s) + 1
    kept = refresh_cost * refreshes + cancel_all_cost
    if kept >= guard.rate_budget:
        yield (
            f"{label}: the switch may refresh {refreshes} times per {guard.rate_window_s:g} s "
            f"({refresh_cost * refreshes:g} cost units) and a cancel-all is kept ({cancel_all_cost:g}), which "
            f"is all of {where}.guard.rate_budget ({guard.rate_budget:g}): no new order can pass, and cancels only while the switch leaves room; raise "
            "switch.refresh_min_s or the rate budget"
        )
    if guard.symbols is None:
        yield f"{label}: {where}.guard.symbols is not set: bots may trade any symbol"
    for limit, effect in (
        ("max_order_size", "orders of any size pass"),
        ("max_notional", "orders of any value pass"),
        ("price_band_pct", "orders at any price pass"),
    ):
        if getattr(guard, limit) is None:
            uncovered = [
                s
                for s in (guard.symbols or ())
                if getattr(guard.per_symbol.get(s, SymbolLimits()), limit) is None
            ]
            if guard.symbols is None or uncovered:
                scope = "" if guard.symbols is None else f" for {', '.join(uncovered)}"
                yield f"{label}: {where}.guard.{limit} is not set: {effect}{scope}"
    if not account.clients:
        yield f"{label}: no [[accounts.clients]]: no bot can trade through guardian for this account"
    elif guard.allow_unlimited and guard.unlimited():
        missing = " and ".join(guard.unlimited())
        yield f"{label}: {where}.guard.allow_unlimited = true: no {missing}, by choice"
    if not account.stream.enabled:
        yield (
            f"{label}: {where}.stream.enabled = false: guardian does not watch this account's fills, positions, "
            "open orders, margin or maintenance notices"
        )
    if account.switch.on_shutdown is OnShutdown.DISARM:
        yield (
            f'{label}: {where}.switch.on_shutdown = "disarm": stopping guardian disarms the exchange\'s switch, '
            "and open orders stay unprotected until it runs again"
        )
    elif account.switch.on_shutdown is OnShutdown.CANCEL:
        yield f'{label}: {where}.switch.on_shutdown = "cancel": stopping guardian cancels every open order'
    sw = account.switch
    if sw.min_remaining_s > sw.timeout_s - sw.refresh_max_s:
        yield (
            f"{label}: {where}.switch.min_remaining_s ({sw.min_remaining_s:g}) is above timeout_s - refresh_max_s "
            f"({sw.timeout_s - sw.refresh_max_s:g}): new orders are refused near the end of normal refresh intervals"
        )
    if urlsplit(account.base_url).scheme == "http" and not _is_loopback_url(account.base_url):
        yield f"{label}: {where}.base_url is plain http to another machine: the api_key and signatures travel unencrypted"


# --- reading tables --------------------------------------------------------------------------------------

_TYPE_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")


class _Table:
    """One TOML table and its dotted name; hands out typed values and refuses keys it does not know."""

    def __init__(self, data: Mapping[str, Any], where: str, allowed: Iterable[str] | None = None) -> None:
        self.data = data
        self.where = where
        if allowed is not None:
            self.allow(*allowed)

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def allow(self, *allowed: str) -> None:
        for name in self.data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                scope = f"in {self.where}" if self.where else "at the top level"
                raise ConfigError(
                    f"unknown key {self.key(name)}: {hint}the keys allowed {scope} are {', '.join(allowed)}"
                )

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = "a number" if float in kinds else _TYPE_NAMES[kinds[0]]
            raise ConfigError(f"{self.key(name)} must be {wanted}, not {_type_name(value)}")
        return value

    def number(
        self, name: str, default: float, *, above: float | None = None, at_least: float | None = None
    ) -> float:
        value = self.optional_number(name, above=above, at_least=at_least)
        return default if value is None else value

    def optional_number(
        self, name: str, *, above: float | None = None, at_least: float | None = None
    ) -> float | None:
        value = self.get(name, (int, float), None)
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{self.key(name)} must be a finite number, not {value}")
        if above is not None and value <= above:
            raise ConfigError(f"{self.key(name)} must be greater than {above:g}, got {value:g}")
        if at_least is not None and value < at_least:
            raise ConfigError(f"{self.key(name)} must be at least {at_least:g}, got {value:g}")
        return value

    def choice(self, name: str, allowed: Sequence[str], default: str) -> str:
        value: str = self.get(name, str, default)
        if value not in allowed:
            raise ConfigError(f"{self.key(name)} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def name(self) -> str:
        if "name" not in self.data:
            raise ConfigError(f'{self.key("name")} is missing: give it a short name like "main"')
        value: str = self.get("name", str, "")
        if not _NAME.fullmatch(value):
            raise ConfigError(
                f"{self.key('name')} must be 1 to 64 letters, digits, '_', '.' or '-' (starting with a letter "
                f"or digit), got {value!r}"
            )
        return value

    def table(self, name: str, allowed: Iterable[str] | None) -> _Table:
        return _Table(self.get(name, dict, {}), self.key(name), allowed)

    def array(self, name: str) -> list[_Table]:
        """An array of tables (`[[name]]`); absent means empty."""
        items = self.data.get(name, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ConfigError(
                f"{self.key(name)} must be an array of tables: write each entry as [[{self.key(name)}]]"
            )
        return [_Table(item, f"{self.key(name)}[{i}]") for i, item in enumerate(items)]


class _Secrets:
    """Reads a secret from exactly one of `x`, `x_file`, `x_env`; never puts its value in a message."""

    def __init__(self, env: Mapping[str, str], base_dir: Path, secrets_dirs: Sequence[Path] | None) -> None:
        self.env = env
        credentials = env.get("CREDENTIALS_DIRECTORY")
        self.places: list[tuple[str, Path]] = (
            [("$CREDENTIALS_DIRECTORY", Path(credentials))] if credentials else []
        )
        self.places += [(str(d), d) for d in (DEFAULT_SECRETS_DIRS if secrets_dirs is None else secrets_dirs)]
        self.places.append(("the configuration's directory", base_dir))
        self.places.append((f"its {CREDENTIALS_DIR}/ directory", base_dir / CREDENTIALS_DIR))
        self.files: list[tuple[str, Path]] = []  # every secret file read: its key and path

    def text(self, table: _Table, name: str) -> str:
        return self._required(table, name)[0]

    def optional(self, table: _Table, name: str) -> Secret | None:
        value = self._read(table, name)
        return None if value is None else Secret(value[0])

    def api_secret(self, table: _Table) -> ApiSecret:
        value, where = self._required(table, "api_secret")
        return ApiSecret(value, name=where)

    def _required(self, table: _Table, name: str) -> tuple[str, str]:
        value = self._read(table, name)
        if value is None:
            raise ConfigError(
                f"{table.key(name)} is missing: set {name}_file (a file holding it), {name}_env "
                f"(an environment variable holding it) or {name} itself"
            )
        return value

    def _read(self, table: _Table, name: str) -> tuple[str, str] | None:
        """The value and a description of where it came from (for messages), or None if not given."""
        given = [k for k in _secret_keys(name) if k in table.data]
        if len(given) > 1:
            raise ConfigError(
                f"{table.key(given[0])} and {table.key(given[1])} are both set: keep exactly one source for {name}"
            )
        if not given:
            return None
        key = table.key(given[0])
        source: str = table.get(given[0], str, "")
        if given[0] == name:
            value, where = source, key
        elif given[0].endswith("_env"):
            if source not in self.env:
                raise ConfigError(
                    f"{key}: environment variable {source} is not set: export it, or fix the name"
                )
            value, where = self.env[source], f"{table.key(name)} (from ${source})"
        else:
            path = self._find(key, source)
            value, where = self._read_file(key, path), f"{table.key(name)} (from {path})"
            self.files.append((key, path))
        if not value:
            raise ConfigError(f"{where} is empty: put the value there")
        return value, where

    def _find(self, key: str, name: str) -> Path:
        if not name:
            raise ConfigError(f"{key} is empty: give a file name")
        path = Path(name)
        if path.is_absolute():
            return path
        for _, directory in self.places:
            if (directory / path).is_file():
                return directory / path
        looked = ", ".join(f"{label} ({directory})" for label, directory in self.places)
        raise ConfigError(f"{key}: no file {name} in {looked}: create it, or give an absolute path")

    @staticmethod
    def _read_file(key: str, path: Path) -> str:
        try:
            with path.open("rb") as file:
                data = file.read(_MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        if len(data) > _MAX_SECRET_FILE_BYTES:
            raise ConfigError(
                f"{key}: {path} is larger than a secret can be: point at the file holding only the secret"
            )
        try:
            return data.decode("utf-8").rstrip()
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
