"""`guardian init`: a working configuration for a real account in one command.

It writes `config.toml`, with every limit set low on purpose (no account starts unlimited), and beside it a
`credentials/` directory (mode 0700) holding, each in a file of mode 0600: the exchange key and secret
(read from files or from a prompt that does not echo), an admin token and one generated secret per bot.
The configuration names each file by its bare name, which guardian looks up in `$CREDENTIALS_DIRECTORY`
(systemd's `LoadCredential=`), `/run/secrets` (Docker's secrets), then in `credentials/` beside the
configuration: the same file runs by hand, under systemd and in a container. Nothing that exists is overwritten, nothing is left half-written, and what is written is validated
as `guardian check-config` validates it. Bot secrets are printed once; no other secret is printed at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import tomlkit

from guardian.config import _NAME, _SYMBOL, CREDENTIALS_DIR, ServerConfig, _parse_base_url, load_config
from guardian.errors import ConfigError
from guardian.keys import (
    CannotCreate,
    InputError,
    NewKey,
    NoInputError,
    UsageError,
    ensure_secrets_dir,
    make_key,
    remove_quietly,
    write_new_file,
    write_secret,
)
from guardian.secret import ApiSecret

CONFIG_NAME: Final = "config.toml"
CONFIG_MODE: Final = 0o644  # no secret in it; the daemon's (dynamic) user must read it
ADMIN_TOKEN_FILE: Final = "admin_token"  # noqa: S105 (a file name)
MAX_BOTS: Final = 100
_MAX_INPUT_BYTES: Final = 64 * 1024
DEFAULT_SYMBOLS: Final = ("PF_XBTUSD", "PF_ETHUSD")

# The limits a new account starts with, and what each means: low enough that a bot gone wrong costs
# little, to be raised on purpose. (key, value, what it bounds)
LIMITS: Final[tuple[tuple[str, float | int, str], ...]] = (
    ("max_order_size", 1, "contracts in one order (for PI_/FI_ contracts: USD of face value)"),
    ("max_notional", 1000, "USD value of one order"),
    ("price_band_pct", 2, "percent a limit or stop price may be from the mark"),
    ("max_leverage", 2, "highest leverage a bot with the settings permission may set"),
    ("max_position", 1, "contracts of absolute net position per symbol, counted worst case"),
    ("max_open_orders", 10, "open orders per symbol"),
    ("max_open_orders_total", 20, "open orders in the account"),
    ("max_gross_notional", 5000, "USD of positions and open orders, all symbols together"),
    ("max_orders_per_minute", 30, "new orders and edits per bot per minute"),
    ("max_fills_per_minute", 20, "fills per minute in the account: more halts it and cancels its orders"),
    ("max_daily_loss", 100, "USD lost since 00:00 UTC: then the account goes reduce_only"),
)
BOT_RATE_BUDGET: Final = 100  # each bot's share of the account's 500 cost units per 10 s: 10 sendorders


@dataclasses.dataclass(frozen=True, slots=True)
class InitOptions:
    directory: Path
    account: str
    bots: int
    base_url: str
    api_key: str = dataclasses.field(repr=False)
    api_secret: ApiSecret
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    permissions: tuple[str, ...] = ("read", "trade")
    listen: tuple[str, int] = ("127.0.0.1", 8787)


@dataclasses.dataclass(frozen=True, slots=True)
class InitResult:
    options: InitOptions
    config: Path
    credentials: Path
    secret_files: tuple[Path, ...]
    bots: tuple[NewKey, ...]


def check_name(name: str) -> str:
    """--account: what `accounts.name` accepts."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"--account must be 1 to 64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
            f"got {name!r}"
        )
    return name


def check_bots(count: int) -> int:
    """--bots: 0 to MAX_BOTS."""
    if not 0 <= count <= MAX_BOTS:
        raise UsageError(f"--bots must be between 0 and {MAX_BOTS}, got {count}")
    return count


def check_base_url(url: str) -> str:
    """--base-url: what `accounts.base_url` accepts."""
    try:
        return _parse_base_url(url, "--base-url")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def parse_symbols(text: str) -> tuple[str, ...]:
    """--symbols: PF_XBTUSD,PF_ETHUSD, each once."""
    found = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not found or not all(_SYMBOL.fullmatch(s) for s in found):
        raise UsageError(f"--symbols must be a comma-separated list like PF_XBTUSD,PF_ETHUSD, got {text!r}")
    return found


# --- the exchange key ------------------------------------------------------------------------------------


def read_input_file(path: Path, what: str) -> str:
    """A key or secret from a file the user gave (trailing newline ignored); errors name the file only."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise NoInputError(f"cannot read {what} from {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > _MAX_INPUT_BYTES:
        raise InputError(f"{path} is larger than {what} can be: point at a file holding only it")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: it should hold {what} as Kraken shows it") from None
    if not text:
        raise InputError(f"{path} is empty: it should hold {what}")
    return text


def exchange_key(
    key_file: Path | None,
    secret_file: Path | None,
    *,
    interactive: bool,
    prompt: Callable[[str], str] = getpass.getpass,
    has_terminal: Callable[[], bool] = lambda: sys.stdin.isatty(),
) -> tuple[str, ApiSecret]:
    """The exchange key and secret, from the files given, else asked for without echo."""
    missing = [
        flag
        for flag, given in (("--api-key-file", key_file), ("--api-secret-file", secret_file))
        if not given
    ]
    if missing and not interactive:
        raise UsageError(
            f"--non-interactive needs {' and '.join(missing)}: files holding the Kraken Futures API key and "
            "its secret (Settings > API keys; the key needs the trade permission)"
        )
    if missing and not has_terminal():
        raise UsageError(
            f"no terminal to ask for the exchange key on: give {' and '.join(missing)}, or run guardian init "
            "in a terminal"
        )
    if key_file is not None:
        api_key = read_input_file(key_file, "the exchange API key")
    else:
        api_key = prompt("Kraken Futures API key (public key, not shown): ").strip()
    if secret_file is not None:
        secret = read_input_file(secret_file, "the exchange API secret")
        source = f"the exchange API secret in {secret_file}"
    else:
        secret = prompt("Kraken Futures API secret (private key, not shown): ").strip()
        source = "the exchange API secret entered"
    if not api_key:
        raise InputError("the exchange API key is empty")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in api_key):
        raise InputError("the exchange API key contains spaces or non-printable characters: copy it exactly")
    try:
        return api_key, ApiSecret(secret, name=source)
    except ConfigError as exc:  # the message names the source, never the value
        raise InputError(str(exc)) from None


# --- writing ---------------------------------------------------------------------------------------------


def _toml(value: object) -> str:
    return tomlkit.item(value).as_string()


def render_config(options: InitOptions, bots: Sequence[NewKey], credentials: Path) -> str:
    """The configuration text: every key commented, no secret, each secret file named by its bare name."""
    account, config = options.account, options.directory / CONFIG_NAME
    listen = ServerConfig(host=options.listen[0], port=options.listen[1]).listen
    limits = "\n".join(f"# {what[0].upper()}{what[1:]}.\n{key} = {value}" for key, value, what in LIMITS)
    lines = [
        f"# guardian configuration for the Kraken Futures account {account!r}, written by `guardian init` on "
        f"{datetime.now(UTC):%Y-%m-%d}.",
        "# Every limit is set low on purpose: raise each one deliberately, for what your bots trade.",
        "# config.example.toml and docs/configuration.md explain every key.",
        "#",
        f"# No secret is in this file. Each *_file names a file of {credentials}/ (mode 0700, each file",
        "# 0600), where guardian finds it unless $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) or",
        "# /run/secrets (Docker's secrets) holds a file of that name.",
        f"# Check it: guardian check-config --config {config}",
        f"# Bots' keys: guardian keys list|add|rotate|revoke --config {config}",
        "",
        "[server]",
        "# Loopback only: bots run on this machine.",
        f"listen = {_toml(listen)}",
        "# The bearer token of the admin endpoints (/guardian/mode, /guardian/kill, /guardian/reload).",
        f"admin_token_file = {_toml(ADMIN_TOKEN_FILE)}",
        "",
        "[journal]",
        "# Relative to the daemon's working directory (under systemd: /var/lib/guardian).",
        'path = "journal.sqlite3"',
        "retention_days = 90",
        "",
        "[log]",
        "# JSON lines when not on a terminal (journald, docker logs), readable lines on one.",
        'format = "auto"',
        "",
        "[[accounts]]",
        f"name = {_toml(account)}",
        f"base_url = {_toml(options.base_url)}",
        "# guardian's own exchange key (trade permission; one key per daemon: nonces are per key).",
        f"api_key_file = {_toml(account + '_api_key')}",
        f"api_secret_file = {_toml(account + '_api_secret')}",
        "",
        "[accounts.switch]",
        "# The exchange cancels every open order timeout_s after guardian's last refresh: if guardian, this",
        "# machine or its network dies, the orders go with it.",
        "timeout_s = 60",
        "refresh_min_s = 15",
        "refresh_max_s = 20",
        "min_remaining_s = 20",
        "# A restart (an upgrade) within timeout_s takes the timer over: no unprotected gap.",
        'on_shutdown = "keep"',
        "",
        "[accounts.guard]",
        "# Revisit every value here before trading for real. The only symbols bots may trade:",
        f"symbols = {_toml(list(options.symbols))}",
        limits,
        "# At max_daily_loss bots may only reduce positions until POST /guardian/mode lifts it.",
        'on_loss_limit = "reduce_only"',
        "# The same order again from the same bot within 2 s is refused (duplicateOrder).",
        "duplicate_window_s = 2",
        "# An announced maintenance: reduce_only from 10 minutes before it.",
        "maintenance_reduce_only_s = 600",
        "# A fixed maturity gets no new risk in its last hour.",
        "expiry_margin_s = 3600",
        "allow_unlimited = false",
        "",
        "[accounts.stream]",
        "# The account's fills, positions and orders, followed live: the exposure limits need them.",
        "enabled = true",
    ]
    for bot in bots:
        lines += [
            "",
            "[[accounts.clients]]",
            f"name = {_toml(bot.bot)}",
            "# The bot signs with this key as it would with Kraken's; its secret was printed once.",
            f"api_key = {_toml(bot.api_key)}",
            f"api_secret_file = {_toml(bot.reference)}",
            f"permissions = {_toml(list(options.permissions))}",
            "# Its share of the account's rate budget per 10 s (sendorder costs 10).",
            f"rate_budget = {BOT_RATE_BUDGET}",
        ]
    return "\n".join(lines) + "\n"


def initialise(options: InitOptions) -> InitResult:
    """Write the configuration and its credentials, or nothing at all. Raises CannotCreate naming the first
    file that exists, InputError for values guardian would refuse, ConfigError if the result does not
    validate (a defect: it is removed)."""
    check_bots(options.bots)
    directory = options.directory.absolute()
    options = dataclasses.replace(options, directory=directory)
    config = directory / CONFIG_NAME
    credentials = directory / CREDENTIALS_DIR
    fixed = {
        ADMIN_TOKEN_FILE: secrets.token_urlsafe(32),
        f"{options.account}_api_key": options.api_key,
        f"{options.account}_api_secret": options.api_secret.reveal(),
    }
    for path in (config, *(credentials / name for name in fixed)):
        if path.exists() or path.is_symlink():
            raise CannotCreate(f"{path} exists: guardian init overwrites nothing; choose another --dir")
    made_dirs = [d for d in (credentials, directory) if not d.exists()]
    written: list[Path] = []
    bots: list[NewKey] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ensure_secrets_dir(credentials)
        for name, value in fixed.items():
            written.append(write_secret(credentials, name, value))
        for i in range(1, options.bots + 1):
            bots.append(make_key(f"bot-{i}", credentials, (b.api_key for b in bots)))
            written.append(bots[-1].secret_file)
        secret_files = tuple(written)
        write_new_file(config, render_config(options, bots, credentials), CONFIG_MODE)
        written.append(config)
        # What was written, as the daemon reads it (the credentials/ beside it, not another directory's).
        load_config(config, env={k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"})
    except BaseException:
        remove_quietly(*written)
        for made in made_dirs:
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    return InitResult(options, config, credentials, secret_files, tuple(bots))


# --- what it prints --------------------------------------------------------------------------------------


def report(result: InitResult) -> str:
    """What `guardian init` prints: what it wrote, each bot's key and secret (this once), the limits to
    revisit, and the next three commands."""
    options, config, credentials = result.options, result.config, result.credentials
    names = ", ".join(path.name for path in result.secret_files)
    listen = ServerConfig(host=options.listen[0], port=options.listen[1]).listen
    lines = [
        f"guardian init: wrote {config}",
        f"  and {credentials}/ (mode 0700): {names} (each mode 0600)",
        "",
    ]
    for bot in result.bots:
        lines.append(f"bot {bot.bot} api_key={bot.api_key} api_secret={bot.api_secret.reveal()}")
    if result.bots:
        lines += [
            f"  Each bot's secret is printed this once and kept only in {credentials}: give it to the bot now.",
            "",
        ]
    width = max(len(key) for key, _, _ in LIMITS)
    lines += [
        f"Every limit is set low; revisit each in {config} [accounts.guard] before trading for real:",
        f"  {'symbols':<{width}}  {', '.join(options.symbols)} (the only symbols bots may trade)",
        *(f"  {key:<{width}}  {value:g}: {what}" for key, value, what in LIMITS),
        "",
        "Next:",
        "  1. Check the key, the clock and the symbols against the exchange (read-only: no order, no switch):",
        f"       guardian check-config --online --config {config}",
        "  2. Run it under systemd (docs/systemd.md): install deploy/systemd/guardian.service with these lines",
        "     in [Service] in place of its ExecStart= and LoadCredential= lines, then start it:",
        f"       ExecStart=/opt/guardian/bin/guardian run --config {config}",
        *(f"       LoadCredential={path.name}:{path}" for path in result.secret_files),
        "       systemctl daemon-reload && systemctl enable --now guardian",
        f"  3. Point each bot at guardian instead of {options.base_url}: base URL http://{listen}, its own",
        "     api_key and api_secret above (Kraken's paths and signing, unchanged; e.g. for ccxt",
        f'     ex.urls["api"].update(public="http://{listen}/derivatives/api/", private="http://{listen}/derivatives/api/")).',
    ]
    return "\n".join(lines)
