"""The configuration file: every validation rule, every secret source, defaults, warnings, the summary,
and `guardian check-config` as a real subprocess. No secret value may appear in any message, warning,
summary, repr or output."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guardian import config as cfg
from guardian.cli import EX_CONFIG
from guardian.config import (
    Config,
    OnShutdown,
    SymbolLimits,
    load_config,
    parse_config,
)
from guardian.errors import ConfigError
from guardian.kraken.endpoints import Permission
from guardian.logs import Redactor
from guardian.secret import ApiSecret, Secret

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"

MAIN_KEY = "MAINKEYfullvalue-0001"
MAIN_SECRET = base64.b64encode(b"main exchange secret, 64 bytes long......................").decode()
HEDGE_KEY = "HEDGEKEYfullvalue-0002"
HEDGE_SECRET = base64.b64encode(b"hedge exchange secret, also long enough...").decode()
BOT_KEY = "BOTKEYfullvalue-0003"
BOT_SECRET = base64.b64encode(b"the grid bot's local secret, 40 bytes..").decode()
ADMIN_TOKEN = "admin-token-that-must-never-show"
BAD_SECRET = "this is not base64 and is secret!"
# Every value no message, warning, summary or repr may contain (api_keys only as their first 4 chars).
SECRETS = (MAIN_KEY, MAIN_SECRET, HEDGE_KEY, HEDGE_SECRET, BOT_KEY, BOT_SECRET, ADMIN_TOKEN, BAD_SECRET)


def assert_clean(text: str) -> None:
    for value in SECRETS:
        assert value not in text, f"a secret leaked: {text}"


def doc(
    *,
    server: str = "",
    journal: str = "",
    log: str = "",
    account: str = "",
    switch: str = "",
    guard: str = "",
    client: str = "",
    tail: str = "",
) -> str:
    """A complete, valid configuration (every protection on) with extra lines added to each section."""
    return f"""
[server]
admin_token = "{ADMIN_TOKEN}"
{server}
[journal]
{journal}
[log]
{log}
[[accounts]]
name = "main"
api_key = "{MAIN_KEY}"
api_secret = "{MAIN_SECRET}"
{account}
[accounts.switch]
{switch}
[accounts.guard]
symbols = ["PF_XBTUSD", "PF_ETHUSD"]
max_order_size = 10
max_notional = 50000
price_band_pct = 5
max_position = 50
max_daily_loss = 5000
{guard}
[[accounts.clients]]
name = "grid"
api_key = "{BOT_KEY}"
api_secret = "{BOT_SECRET}"
permissions = ["read", "trade"]
{client}
{tail}
"""


HEDGE = f"""
[[accounts]]
name = "hedge"
api_key = "{HEDGE_KEY}"
api_secret = "{HEDGE_SECRET}"
"""
MINIMAL = f"""
[[accounts]]
name = "main"
api_key = "{MAIN_KEY}"
api_secret = "{MAIN_SECRET}"
"""


def parse(text: str, base_dir: Path = ROOT, **kwargs: object) -> Config:
    kwargs.setdefault("env", {})
    kwargs.setdefault("secrets_dirs", [])
    return parse_config(text, base_dir=base_dir, **kwargs)  # type: ignore[arg-type]


def config_error(text: str, base_dir: Path = ROOT, **kwargs: object) -> str:
    """The message of the ConfigError that `text` raises, checked for secrets."""
    with pytest.raises(ConfigError) as caught:
        parse(text, base_dir, **kwargs)
    message = str(caught.value)
    assert_clean(message)
    return message


# --- validation ------------------------------------------------------------------------------------------

# fmt: off
BAD = [
    # the switch
    ("refresh_min_above_max", doc(switch="refresh_min_s = 25\nrefresh_max_s = 20"),
     "accounts[0].switch.refresh_min_s (25) is above refresh_max_s (20)"),
    ("refresh_max_over_half_timeout", doc(switch="refresh_max_s = 31\ntimeout_s = 60"),
     "accounts[0].switch.refresh_max_s (31) is more than half of timeout_s (60)"),
    ("min_remaining_equals_timeout", doc(switch="min_remaining_s = 60"),
     "accounts[0].switch.min_remaining_s (60) must be below timeout_s (60)"),
    ("min_remaining_negative", doc(switch="min_remaining_s = -1"),
     "accounts[0].switch.min_remaining_s must be at least 0"),
    ("timeout_fraction", doc(switch="timeout_s = 60.5"),
     "accounts[0].switch.timeout_s must be a whole number of seconds"),
    ("timeout_zero", doc(switch="timeout_s = 0"), "accounts[0].switch.timeout_s must be between 1 and 4294967295"),
    ("timeout_2_to_32", doc(switch="timeout_s = 4294967296"), "accounts[0].switch.timeout_s must be between 1"),
    ("timeout_string", doc(switch='timeout_s = "60"'), "accounts[0].switch.timeout_s must be a number, not a string"),
    ("timeout_boolean", doc(switch="timeout_s = true"), "accounts[0].switch.timeout_s must be a number, not a boolean"),
    ("refresh_min_zero", doc(switch="refresh_min_s = 0"), "accounts[0].switch.refresh_min_s must be greater than 0"),
    ("refresh_max_negative", doc(switch="refresh_max_s = -5"), "accounts[0].switch.refresh_max_s must be greater than 0"),
    ("refresh_nan", doc(switch="refresh_min_s = nan"), "accounts[0].switch.refresh_min_s must be a finite number"),
    ("refresh_string", doc(switch='refresh_max_s = "20"'), "accounts[0].switch.refresh_max_s must be a number, not a string"),
    ("refresh_boolean", doc(switch="refresh_min_s = false"), "accounts[0].switch.refresh_min_s must be a number, not a boolean"),
    ("on_shutdown_unknown", doc(switch='on_shutdown = "kill"'),
     "accounts[0].switch.on_shutdown must be one of keep, disarm, cancel, got 'kill'"),
    # secrets and keys
    ("secret_not_base64", doc().replace(MAIN_SECRET, BAD_SECRET), "accounts[0].api_secret is not valid base64"),
    ("client_secret_not_base64", doc().replace(BOT_SECRET, BAD_SECRET),
     "accounts[0].clients[0].api_secret is not valid base64"),
    ("client_secret_too_short", doc().replace(BOT_SECRET, base64.b64encode(b"short").decode()),
     "accounts[0].clients[0].api_secret is too short"),
    ("secret_wrong_type", doc().replace(f'"{MAIN_SECRET}"', "12345"), "accounts[0].api_secret must be a string, not an integer"),
    ("secret_empty", doc().replace(f'"{MAIN_SECRET}"', '""'), "accounts[0].api_secret is empty"),
    ("api_key_missing", doc().replace(f'api_key = "{MAIN_KEY}"', ""),
     "accounts[0].api_key is missing: set api_key_file (a file holding it), api_key_env"),
    ("api_secret_missing", doc().replace(f'api_secret = "{BOT_SECRET}"', ""), "accounts[0].clients[0].api_secret is missing"),
    ("api_key_with_space", doc().replace(MAIN_KEY, "MAIN KEY with a space"), "accounts[0].api_key contains spaces"),
    ("two_sources", doc(account='api_secret_env = "X"'),
     "accounts[0].api_secret and accounts[0].api_secret_env are both set: keep exactly one"),
    ("admin_token_two_sources", doc(server='admin_token_file = "token"'),
     "server.admin_token and server.admin_token_file are both set"),
    ("admin_token_short", doc().replace(ADMIN_TOKEN, "short-token"), "server.admin_token is shorter than 16 characters"),
    # uniqueness
    ("duplicate_account_name", doc(tail=HEDGE.replace('"hedge"', '"main"')),
     "accounts[1].name ('main') is already used by accounts[0].name: account names must be unique"),
    ("duplicate_exchange_key", doc(tail=HEDGE.replace(HEDGE_KEY, MAIN_KEY)),
     "accounts[1].api_key (MAIN...) is already used by accounts[0].api_key"),
    ("duplicate_client_name_across_accounts",
     doc(tail=HEDGE + f'[[accounts.clients]]\nname = "grid"\napi_key = "other-bot-key-0004"\napi_secret = "{BOT_SECRET}"\npermissions = ["read"]'),
     "accounts[1].clients[0].name ('grid') is already used by accounts[0].clients[0].name"),
    ("client_key_in_two_accounts",
     doc(tail=HEDGE + f'[[accounts.clients]]\nname = "grid2"\napi_key = "{BOT_KEY}"\napi_secret = "{BOT_SECRET}"\npermissions = ["read"]'),
     "accounts[1].clients[0].api_key (BOTK...) is already used by accounts[0].clients[0].api_key: a key belongs to one account"),
    ("client_key_is_exchange_key", doc().replace(BOT_KEY, MAIN_KEY),
     "accounts[0].clients[0].api_key (MAIN...) is already used by accounts[0].api_key"),
    ("client_key_is_other_accounts_exchange_key", doc(tail=HEDGE).replace(BOT_KEY, HEDGE_KEY),
     "accounts[0].clients[0].api_key (HEDG...) is already used by accounts[1].api_key"),
    # unknown keys, at every level
    ("unknown_top_level", doc(tail="[sever]\nlisten = '127.0.0.1:1'"),
     "unknown key sever: did you mean server? the keys allowed at the top level are server, journal, log, accounts"),
    ("unknown_server", doc(server='listn = "0.0.0.0:1"'), "unknown key server.listn: did you mean listen?"),
    ("unknown_journal", doc(journal='pth = "x"'), "unknown key journal.pth: did you mean path?"),
    ("unknown_log", doc(log='lvl = "debug"'), "unknown key log.lvl"),
    ("unknown_account", doc(account='base_ur = "https://x"'), "unknown key accounts[0].base_ur: did you mean base_url?"),
    ("unknown_switch", doc(switch="refresh_max = 20"),
     "unknown key accounts[0].switch.refresh_max: did you mean refresh_max_s? the keys allowed in accounts[0].switch are "
     "refresh_min_s, refresh_max_s, timeout_s, min_remaining_s, on_shutdown"),
    ("unknown_guard", doc(guard="max_size = 1"), "unknown key accounts[0].guard.max_size"),
    ("unknown_guard_symbol", doc(tail="[accounts.guard.symbol.PF_XBTUSD]\nmax_order = 1"),
     "unknown key accounts[0].guard.symbol.PF_XBTUSD.max_order: did you mean max_order_size?"),
    ("unknown_client", doc(client='permission = ["read"]'), "unknown key accounts[0].clients[0].permission"),
    ("misspelt_secret_source", doc(account='api_secret_fil = "x"'), "unknown key accounts[0].api_secret_fil: did you mean api_secret_file?"),
    # server, journal, log
    ("listen_no_port", doc(server='listen = "localhost"'), "server.listen must be HOST:PORT"),
    ("listen_port_too_big", doc(server='listen = "127.0.0.1:65536"'), "server.listen must be HOST:PORT"),
    ("listen_ipv6_unbracketed", doc(server='listen = "::1:8787"'), "server.listen must be HOST:PORT"),
    ("listen_empty_host", doc(server='listen = ":8787"'), "server.listen must be HOST:PORT"),
    ("listen_bad_brackets", doc(server='listen = "[localhost]:8787"'), "server.listen must be HOST:PORT"),
    ("listen_integer", doc(server="listen = 8787"), "server.listen must be a string, not an integer"),
    ("journal_path_integer", doc(journal="path = 3"), "journal.path must be a string, not an integer"),
    ("journal_path_empty", doc(journal='path = ""'), "journal.path is empty"),
    ("journal_commit_on_loop_string", doc(journal='commit_on_loop = "yes"'), "journal.commit_on_loop must be a boolean, not a string"),
    ("journal_retention_negative", doc(journal="retention_days = -1"), "journal.retention_days must be at least 0, got -1"),
    ("journal_retention_string", doc(journal='retention_days = "90"'), "journal.retention_days must be a number, not a string"),
    ("journal_retention_infinite", doc(journal="retention_days = inf"), "journal.retention_days must be a finite number"),
    ("log_level_unknown", doc(log='level = "verbose"'),
     "log.level must be one of debug, info, warning, error, critical, got 'verbose'"),
    ("log_format_unknown", doc(log='format = "xml"'), "log.format must be one of auto, json, console"),
    ("server_not_a_table", 'server = "x"\n' + MINIMAL, "server must be a table, not a string"),
    # accounts
    ("no_accounts", '[server]\nlisten = "127.0.0.1:8787"', "no accounts: add at least one [[accounts]]"),
    ("accounts_not_an_array", MINIMAL.replace("[[accounts]]", "[accounts]"),
     "accounts must be an array of tables: write each entry as [[accounts]]"),
    ("name_missing", MINIMAL.replace('name = "main"', ""), "accounts[0].name is missing"),
    ("name_with_space", MINIMAL.replace('"main"', '"my account"'), "accounts[0].name must be 1 to 64 letters"),
    ("name_integer", MINIMAL.replace('"main"', "7"), "accounts[0].name must be a string, not an integer"),
    ("base_url_ftp", doc(account='base_url = "ftp://futures.kraken.com"'), "accounts[0].base_url must be an http(s) URL"),
    ("base_url_no_scheme", doc(account='base_url = "futures.kraken.com"'), "accounts[0].base_url must be an http(s) URL"),
    ("base_url_no_host", doc(account='base_url = "https://"'), "accounts[0].base_url must be an http(s) URL"),
    ("base_url_query", doc(account='base_url = "https://x.example?a=1"'), "accounts[0].base_url must be an http(s) URL"),
    ("base_url_bad_port", doc(account='base_url = "https://x.example:port"'), "accounts[0].base_url must be an http(s) URL"),
    # clients
    ("permissions_unknown", doc().replace('["read", "trade"]', '["read", "funds"]'),
     "accounts[0].clients[0].permissions must be a non-empty list drawn from ['read', 'trade', 'settings']"),
    ("permissions_empty", doc().replace('["read", "trade"]', "[]"), "accounts[0].clients[0].permissions must be a non-empty list"),
    ("permissions_string", doc().replace('["read", "trade"]', '"read"'),
     "accounts[0].clients[0].permissions must be an array, not a string"),
    ("permissions_missing", doc().replace('permissions = ["read", "trade"]', ""), "accounts[0].clients[0].permissions is missing"),
    # the guard
    ("max_order_size_zero", doc().replace("max_order_size = 10", "max_order_size = 0"),
     "accounts[0].guard.max_order_size must be greater than 0"),
    ("max_order_size_negative", doc().replace("max_order_size = 10", "max_order_size = -1"),
     "accounts[0].guard.max_order_size must be greater than 0"),
    ("max_order_size_infinite", doc().replace("max_order_size = 10", "max_order_size = inf"),
     "accounts[0].guard.max_order_size must be a finite number"),
    ("max_order_size_string", doc().replace("max_order_size = 10", 'max_order_size = "10"'),
     "accounts[0].guard.max_order_size must be a number, not a string"),
    ("max_notional_boolean", doc().replace("max_notional = 50000", "max_notional = true"),
     "accounts[0].guard.max_notional must be a number, not a boolean"),
    ("max_notional_nan", doc().replace("max_notional = 50000", "max_notional = nan"),
     "accounts[0].guard.max_notional must be a finite number"),
    ("price_band_zero", doc().replace("price_band_pct = 5", "price_band_pct = 0"),
     "accounts[0].guard.price_band_pct must be greater than 0"),
    ("price_band_100", doc().replace("price_band_pct = 5", "price_band_pct = 100"),
     "accounts[0].guard.price_band_pct must be below 100"),
    ("symbols_empty", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', "[]"), "accounts[0].guard.symbols is empty"),
    ("symbols_empty_string", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', '["PF_XBTUSD", ""]'),
     "accounts[0].guard.symbols[1] must be a symbol name"),
    ("symbols_with_space", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', '["PF XBTUSD"]'),
     "accounts[0].guard.symbols[0] must be a symbol name"),
    ("symbols_number", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', "[1]"), "accounts[0].guard.symbols[0] must be a symbol name"),
    ("symbols_string", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', '"PF_XBTUSD"'),
     "accounts[0].guard.symbols must be an array, not a string"),
    ("symbols_twice", doc().replace('["PF_XBTUSD", "PF_ETHUSD"]', '["PF_XBTUSD", "PF_XBTUSD"]'),
     "accounts[0].guard.symbols lists a symbol twice"),
    ("override_for_unlisted_symbol", doc(tail="[accounts.guard.symbol.PF_XBTUSB]\nmax_order_size = 1"),
     "accounts[0].guard.symbol.PF_XBTUSB is not in accounts[0].guard.symbols"),
    ("override_price_band", doc(tail="[accounts.guard.symbol.PF_XBTUSD]\nprice_band_pct = 150"),
     "accounts[0].guard.symbol.PF_XBTUSD.price_band_pct must be below 100"),
    ("override_symbol_with_space", doc().replace("symbols = [", "# symbols = [") + '[accounts.guard.symbol."PF XBTUSD"]\nmax_order_size = 1',
     'accounts[0].guard.symbol.PF XBTUSD: a symbol name like "PF_XBTUSD" is expected here'),
    ("override_not_a_table", doc(tail="[accounts.guard.symbol]\nPF_XBTUSD = 3"),
     "accounts[0].guard.symbol.PF_XBTUSD must be a table, not an integer"),
    ("nonce_unknown", doc(account='nonce = "seconds"'),
     "accounts[0].nonce must be one of milliseconds, microseconds, nanoseconds, off, got 'seconds'"),
    # the file itself
    ("invalid_toml", MINIMAL + "\nthis is not toml\n", "invalid TOML: "),
]
# fmt: on


@pytest.mark.parametrize(("text", "fragment"), [pytest.param(t, f, id=i) for i, t, f in BAD])
def test_invalid_configuration_is_refused_naming_the_key(text: str, fragment: str) -> None:
    assert fragment in config_error(text)


def test_the_base_document_of_the_table_is_valid() -> None:
    config = parse(doc())
    assert config.warnings() == []


def test_toml_syntax_error_gives_the_line() -> None:
    message = config_error(MINIMAL + "\nthis is not toml\n")
    assert "line 7" in message


def test_unknown_key_lists_the_allowed_ones_without_guessing_when_nothing_is_close() -> None:
    message = config_error(doc(switch="zzz = 1"))
    assert "did you mean" not in message
    assert "allowed in accounts[0].switch are refresh_min_s" in message


# --- defaults and valid values ---------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse(MINIMAL)
    assert (config.server.host, config.server.port, config.server.listen) == (
        "127.0.0.1",
        8787,
        "127.0.0.1:8787",
    )
    assert config.server.admin_token is None
    assert config.journal == cfg.JournalConfig(Path("guardian-journal.sqlite3"), retention_days=90.0)
    assert (config.log.level, config.log.format) == ("info", "auto")
    [account] = config.accounts
    assert account.base_url == "https://futures.kraken.com"
    assert account.switch == cfg.SwitchConfig(15.0, 20.0, 60, 20.0, OnShutdown.KEEP)
    assert account.guard == cfg.GuardConfig()
    assert account.clients == ()
    assert account.nonce == "milliseconds"
    assert account.api_key == MAIN_KEY
    assert account.api_secret == ApiSecret(MAIN_SECRET)


def test_small_values_for_failure_drills_are_valid() -> None:
    switch = (
        parse(doc(switch="refresh_min_s = 0.5\nrefresh_max_s = 0.5\ntimeout_s = 3\nmin_remaining_s = 1"))
        .accounts[0]
        .switch
    )
    assert (switch.refresh_min_s, switch.refresh_max_s, switch.timeout_s, switch.min_remaining_s) == (
        0.5,
        0.5,
        3,
        1,
    )


def test_edge_values_are_valid() -> None:
    switch = (
        parse(
            doc(
                switch="refresh_min_s = 30\nrefresh_max_s = 30\ntimeout_s = 60.0\nmin_remaining_s = 0\non_shutdown = 'cancel'"
            )
        )
        .accounts[0]
        .switch
    )
    assert switch.timeout_s == 60 and isinstance(switch.timeout_s, int)
    assert switch.min_remaining_s == 0
    assert switch.on_shutdown is OnShutdown.CANCEL
    assert parse(doc(switch=f"timeout_s = {2**32 - 1}")).accounts[0].switch.timeout_s == 2**32 - 1


def test_everything_is_read() -> None:
    text = doc(
        server='listen = "[::1]:0"',
        journal='path = "/var/lib/guardian/journal.sqlite3"\nretention_days = 7.5\ncommit_on_loop = false',
        log='level = "debug"\nformat = "json"',
        account='base_url = "http://127.0.0.1:8788/"',
        switch="refresh_min_s = 1.5\nrefresh_max_s = 2\ntimeout_s = 5\nmin_remaining_s = 2\non_shutdown = 'disarm'",
        client='[[accounts.clients]]\nname = "watcher"\napi_key = "watch-key-0005"\n'
        f'api_secret = "{BOT_SECRET}"\npermissions = ["read"]',
        tail="[accounts.guard.symbol.PF_XBTUSD]\nmax_order_size = 0.5\nprice_band_pct = 2",
    )
    config = parse(text)
    assert (config.server.host, config.server.port, config.server.listen) == ("::1", 0, "[::1]:0")
    assert config.server.admin_token == Secret(ADMIN_TOKEN)
    assert config.journal == cfg.JournalConfig(
        Path("/var/lib/guardian/journal.sqlite3"), retention_days=7.5, commit_on_loop=False
    )
    assert (config.log.level, config.log.format) == ("debug", "json")
    [account] = config.accounts
    assert account.base_url == "http://127.0.0.1:8788"
    assert account.switch == cfg.SwitchConfig(1.5, 2.0, 5, 2.0, OnShutdown.DISARM)
    assert account.guard.symbols == ("PF_XBTUSD", "PF_ETHUSD")
    assert account.guard.limits_for("PF_XBTUSD") == SymbolLimits(0.5, 50000, 2, 50)
    assert account.guard.limits_for("PF_ETHUSD") == SymbolLimits(10, 50000, 5, 50)
    grid, watcher = account.clients
    assert (grid.name, grid.api_key) == ("grid", BOT_KEY)
    assert grid.permissions == frozenset({Permission.READ, Permission.TRADE})
    assert grid.api_secret.key_bytes() == base64.b64decode(BOT_SECRET)
    assert (watcher.name, watcher.permissions) == ("watcher", frozenset({Permission.READ}))


def test_journal_retention_of_zero_keeps_rows_forever() -> None:
    config = parse(doc(journal="retention_days = 0"))
    assert config.journal.retention_days is None
    assert "journal: guardian-journal.sqlite3, rows kept forever" in config.summary()
    assert "journal: guardian-journal.sqlite3, rows kept 90 days" in parse(doc()).summary()


@pytest.mark.parametrize("unit", ["milliseconds", "microseconds", "nanoseconds", "off"])
def test_nonce_unit_is_read_and_summarised(unit: str) -> None:
    config = parse(doc(account=f'nonce = "{unit}"'))
    assert config.accounts[0].nonce == unit
    assert f"nonce {unit}" in config.summary()


def test_config_is_frozen() -> None:
    config = parse(doc())
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.accounts[0].guard.per_symbol["PF_XBTUSD"] = SymbolLimits()  # type: ignore[index]


# --- secret sources --------------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(credentials directory, secrets directory, configuration directory), all empty."""
    paths = tmp_path / "credentials", tmp_path / "run-secrets", tmp_path / "etc"
    for path in paths:
        path.mkdir()
    return paths


def with_file_secret(name: str = "main.secret") -> str:
    return doc().replace(f'api_secret = "{MAIN_SECRET}"', f'api_secret_file = "{name}"')


def test_relative_file_is_read_from_credentials_directory_first(dirs: tuple[Path, Path, Path]) -> None:
    credentials, secrets, etc = dirs
    (credentials / "main.secret").write_text(MAIN_SECRET + "\n")
    (secrets / "main.secret").write_text(HEDGE_SECRET + "\n")
    config = parse(
        with_file_secret(), etc, env={"CREDENTIALS_DIRECTORY": str(credentials)}, secrets_dirs=[secrets]
    )
    assert config.accounts[0].api_secret == ApiSecret(MAIN_SECRET)


def test_relative_file_falls_back_to_the_secrets_directory(dirs: tuple[Path, Path, Path]) -> None:
    credentials, secrets, etc = dirs
    (secrets / "main.secret").write_text(MAIN_SECRET + "\r\n")
    (etc / "main.secret").write_text(HEDGE_SECRET)
    for env in ({}, {"CREDENTIALS_DIRECTORY": str(credentials)}):
        config = parse(with_file_secret(), etc, env=env, secrets_dirs=[secrets])
        assert config.accounts[0].api_secret == ApiSecret(MAIN_SECRET)


def test_relative_file_falls_back_to_the_configuration_directory(dirs: tuple[Path, Path, Path]) -> None:
    _, secrets, etc = dirs
    (etc / "keys").mkdir()
    (etc / "keys" / "main.secret").write_text(MAIN_SECRET + "\n")
    config = parse(with_file_secret("keys/main.secret"), etc, secrets_dirs=[secrets])
    assert config.accounts[0].api_secret == ApiSecret(MAIN_SECRET)


def test_absolute_file_is_read_as_is(dirs: tuple[Path, Path, Path]) -> None:
    credentials, secrets, etc = dirs
    (credentials / "admin").write_text(ADMIN_TOKEN + "\n\n")
    text = doc().replace(f'admin_token = "{ADMIN_TOKEN}"', f'admin_token_file = "{credentials / "admin"}"')
    config = parse(text, etc, env={"CREDENTIALS_DIRECTORY": str(secrets)}, secrets_dirs=[secrets])
    assert config.server.admin_token == Secret(ADMIN_TOKEN)


def test_every_secret_and_key_can_come_from_the_environment() -> None:
    text = (
        doc()
        .replace(f'admin_token = "{ADMIN_TOKEN}"', 'admin_token_env = "ADMIN"')
        .replace(f'api_key = "{MAIN_KEY}"', 'api_key_env = "MAIN_KEY"')
        .replace(f'api_secret = "{MAIN_SECRET}"', 'api_secret_env = "MAIN_SECRET"')
        .replace(f'api_key = "{BOT_KEY}"', 'api_key_env = "BOT_KEY"')
        .replace(f'api_secret = "{BOT_SECRET}"', 'api_secret_env = "BOT_SECRET"')
    )
    env = {"ADMIN": ADMIN_TOKEN, "MAIN_KEY": MAIN_KEY, "MAIN_SECRET": MAIN_SECRET, "BOT_KEY": BOT_KEY}
    env["BOT_SECRET"] = BOT_SECRET
    config = parse(text, env=env)
    assert config.server.admin_token == Secret(ADMIN_TOKEN)
    [account] = config.accounts
    assert (account.api_key, account.api_secret) == (MAIN_KEY, ApiSecret(MAIN_SECRET))
    assert (account.clients[0].api_key, account.clients[0].api_secret) == (BOT_KEY, ApiSecret(BOT_SECRET))


def test_missing_environment_variable_names_the_key_and_the_variable() -> None:
    text = doc().replace(f'api_secret = "{MAIN_SECRET}"', 'api_secret_env = "GUARDIAN_MAIN_SECRET"')
    message = config_error(text, env={"OTHER": MAIN_SECRET})
    assert "accounts[0].api_secret_env: environment variable GUARDIAN_MAIN_SECRET is not set" in message


def test_missing_file_names_the_key_the_file_and_where_it_was_looked_for(
    dirs: tuple[Path, Path, Path],
) -> None:
    credentials, secrets, etc = dirs
    message = config_error(
        with_file_secret(), etc, env={"CREDENTIALS_DIRECTORY": str(credentials)}, secrets_dirs=[secrets]
    )
    assert "accounts[0].api_secret_file: no file main.secret in" in message
    assert f"$CREDENTIALS_DIRECTORY ({credentials})" in message
    assert str(secrets) in message
    assert str(etc) in message


def test_missing_absolute_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    message = config_error(with_file_secret(str(tmp_path / "nowhere")))
    assert f"accounts[0].api_secret_file: cannot read {tmp_path / 'nowhere'}" in message


def test_empty_file_and_empty_variable_are_refused(dirs: tuple[Path, Path, Path]) -> None:
    _, secrets, etc = dirs
    (secrets / "main.secret").write_text("\n")
    message = config_error(with_file_secret(), etc, secrets_dirs=[secrets])
    assert f"accounts[0].api_secret (from {secrets / 'main.secret'}) is empty" in message
    text = doc().replace(f'api_secret = "{MAIN_SECRET}"', 'api_secret_env = "S"')
    assert "accounts[0].api_secret (from $S) is empty" in config_error(text, env={"S": ""})


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe" + MAIN_SECRET.encode(), "is not UTF-8 text"),
        (MAIN_SECRET.encode() * 2000, "is larger than a secret can be"),
    ],
    ids=["not_utf8", "too_large"],
)
def test_unusable_secret_files_are_refused(
    dirs: tuple[Path, Path, Path], content: bytes, fragment: str
) -> None:
    _, secrets, etc = dirs
    (secrets / "main.secret").write_bytes(content)
    message = config_error(with_file_secret(), etc, secrets_dirs=[secrets])
    assert f"accounts[0].api_secret_file: {secrets / 'main.secret'} {fragment}" in message


def test_empty_file_name_is_refused() -> None:
    assert "accounts[0].api_secret_file is empty: give a file name" in config_error(with_file_secret(""))


def test_secret_from_a_file_that_is_not_base64_names_its_source(dirs: tuple[Path, Path, Path]) -> None:
    _, secrets, etc = dirs
    (secrets / "main.secret").write_text(BAD_SECRET)
    message = config_error(with_file_secret(), etc, secrets_dirs=[secrets])
    assert f"accounts[0].api_secret (from {secrets / 'main.secret'}) is not valid base64" in message


def test_default_environment_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDIAN_TEST_MAIN_SECRET", MAIN_SECRET)
    text = doc().replace(f'api_secret = "{MAIN_SECRET}"', 'api_secret_env = "GUARDIAN_TEST_MAIN_SECRET"')
    assert parse_config(text, base_dir=ROOT).accounts[0].api_secret == ApiSecret(MAIN_SECRET)


# --- warnings --------------------------------------------------------------------------------------------


def test_every_protection_that_is_off_is_warned_about() -> None:
    text = MINIMAL.replace("[[accounts]]", '[server]\nlisten = "0.0.0.0:8787"\n[[accounts]]')
    warnings = parse(text).warnings()
    expected = [
        "server.admin_token is not set: the admin endpoints are off",
        "server.listen = '0.0.0.0:8787' is not a loopback address",
        "account main: accounts[0].guard.symbols is not set: bots may trade any symbol",
        "account main: accounts[0].guard.max_order_size is not set",
        "account main: accounts[0].guard.max_notional is not set",
        "account main: accounts[0].guard.price_band_pct is not set",
        "account main: no [[accounts.clients]]",
    ]
    assert len(warnings) == len(expected)
    for line, fragment in zip(warnings, expected, strict=True):
        assert fragment in line


@pytest.mark.parametrize("listen", ["127.0.0.1:8787", "127.8.9.1:1", "localhost:8787", "[::1]:8787"])
def test_loopback_listen_is_not_warned_about(listen: str) -> None:
    assert parse(doc(server=f'listen = "{listen}"')).warnings() == []


@pytest.mark.parametrize("listen", ["0.0.0.0:8787", "[::]:8787", "192.168.1.5:80", "guardian.internal:8787"])
def test_other_listen_addresses_are_warned_about(listen: str) -> None:
    [warning] = parse(doc(server=f'listen = "{listen}"')).warnings()
    assert "is not a loopback address" in warning


def test_a_limit_set_for_only_some_symbols_is_warned_about_for_the_others() -> None:
    text = doc(tail="[accounts.guard.symbol.PF_XBTUSD]\nmax_notional = 1000").replace(
        "max_notional = 50000", ""
    )
    [warning] = parse(text).warnings()
    assert "accounts[0].guard.max_notional is not set: orders of any value pass for PF_ETHUSD" in warning
    both = text + "[accounts.guard.symbol.PF_ETHUSD]\nmax_notional = 2000"
    assert parse(both).warnings() == []


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [("disarm", "stopping guardian disarms the exchange's switch"), ("cancel", "cancels every open order")],
)
def test_shutdown_policies_other_than_keep_are_noted(policy: str, fragment: str) -> None:
    [warning] = parse(doc(switch=f'on_shutdown = "{policy}"')).warnings()
    assert f'accounts[0].switch.on_shutdown = "{policy}"' in warning
    assert fragment in warning


def test_a_switch_that_needs_the_whole_rate_budget_is_warned_about() -> None:
    config = parse(doc(switch="refresh_min_s = 0.5\nrefresh_max_s = 0.5\ntimeout_s = 3\nmin_remaining_s = 1"))
    [warning] = [w for w in config.warnings() if "rate budget" in w]
    assert warning.startswith("account main: the switch may refresh 21 times per 10 s (525 cost units)")
    assert "no new order can pass" in warning
    assert not [w for w in parse(doc()).warnings() if "rate budget" in w]


def test_min_remaining_reached_in_normal_operation_is_warned_about() -> None:
    [warning] = parse(doc(switch="min_remaining_s = 45")).warnings()
    assert "accounts[0].switch.min_remaining_s (45) is above timeout_s - refresh_max_s (40)" in warning


def test_plain_http_to_another_machine_is_warned_about() -> None:
    [warning] = parse(doc(account='base_url = "http://futures.example"')).warnings()
    assert "accounts[0].base_url is plain http to another machine" in warning
    assert parse(doc(account='base_url = "http://localhost:8788"')).warnings() == []


# --- what may be shown -----------------------------------------------------------------------------------


def full_config() -> Config:
    return parse(doc(tail=HEDGE + "[accounts.guard.symbol.PF_XBTUSD]\nmax_order_size = 0.5"))


def test_summary_masks_secrets_and_cuts_keys() -> None:
    summary = full_config().summary()
    assert_clean(summary)
    assert "account main: https://futures.kraken.com, api_key MAIN..., api_secret ***" in summary
    assert "client grid: api_key BOTK..., api_secret ***, permissions read+trade" in summary
    assert "switch: refresh every 15-20 s, timeout 60 s" in summary
    assert (
        "guard: symbols PF_XBTUSD, PF_ETHUSD; max order size 10, max notional 50000, price band 5%" in summary
    )
    assert "PF_XBTUSD: max order size 0.5" in summary
    assert "admin token set" in summary


def test_short_api_keys_are_not_shown_at_all() -> None:
    assert cfg.mask_key("abcdefgh") == "***"
    assert cfg.mask_key("abcdefghijkl") == "abcd..."


def test_repr_shows_no_secret_and_no_api_key() -> None:
    config = full_config()
    assert_clean(repr(config))
    assert "ApiSecret('***')" in repr(config)


def test_all_secrets_lists_every_secret_for_the_redactor() -> None:
    config = full_config()
    values = {secret.reveal() for secret in config.all_secrets()}
    assert values == {ADMIN_TOKEN, MAIN_SECRET, HEDGE_SECRET, BOT_SECRET}
    redactor = Redactor()
    redactor.register(config.all_secrets())
    assert redactor.scrub(f"x {MAIN_SECRET} {ADMIN_TOKEN} {BOT_SECRET}") == "x *** *** ***"


# --- files and the command -------------------------------------------------------------------------------


def test_load_config_prefixes_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(doc(switch="refresh_max_s = 40"))
    with pytest.raises(ConfigError, match=r"config\.toml: accounts\[0\]\.switch\.refresh_max_s \(40\)"):
        load_config(path, env={}, secrets_dirs=[])


def test_load_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing\.toml"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(tmp_path / "latin1.toml")


def test_load_config_reads_relative_secret_files_next_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "main.secret").write_text(MAIN_SECRET + "\n")
    (tmp_path / "config.toml").write_text(with_file_secret())
    config = load_config(tmp_path / "config.toml", env={}, secrets_dirs=[])
    assert config.accounts[0].api_secret == ApiSecret(MAIN_SECRET)


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = {"server", "journal", "log", "accounts", "switch", "guard", "clients", "symbol", "listen", "path"}
    keys |= {
        "level",
        "format",
        *cfg._ACCOUNT_KEYS,
        *cfg._SWITCH_KEYS,
        *cfg._LIMIT_KEYS,
        *cfg.GUARD_SETTINGS,
        *cfg._EXPOSURE_KEYS,
        *cfg._CLIENT_KEYS,
    }
    keys |= set(cfg._secret_keys("admin_token")) | set(cfg._JOURNAL_KEYS)
    for key in keys:
        assert key in text, key


def test_load_journal_config_reads_only_the_journal_table_and_needs_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    text = doc(journal='path = "j.sqlite3"\nretention_days = 0').replace(
        f'api_secret = "{MAIN_SECRET}"', 'api_secret_env = "GUARDIAN_TEST_UNSET_SECRET"'
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match="GUARDIAN_TEST_UNSET_SECRET is not set"):
        load_config(path, env={}, secrets_dirs=[])
    assert cfg.load_journal_config(path) == cfg.JournalConfig(Path("j.sqlite3"), retention_days=None)
    path.write_text(MINIMAL)
    assert cfg.load_journal_config(path) == cfg.JournalConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (doc(journal="retention_days = -3"), "journal.retention_days must be at least 0, got -3"),
        (doc(journal='pth = "x"'), "unknown key journal.pth: did you mean path?"),
        ('journal = "x"', "journal must be a table, not a string"),
        ("[journal\n", "invalid TOML"),
    ],
)
def test_load_journal_config_refuses_a_bad_journal_table_naming_the_file(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        cfg.load_journal_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)
    assert_clean(str(caught.value))


EXAMPLE_ENV = {
    "GUARDIAN_ADMIN_TOKEN": ADMIN_TOKEN,
    "GUARDIAN_MAIN_API_KEY": MAIN_KEY,
    "GUARDIAN_MAIN_API_SECRET": MAIN_SECRET,
    "GUARDIAN_HEDGE_API_KEY": HEDGE_KEY,
    "GUARDIAN_HEDGE_API_SECRET": HEDGE_SECRET,
    "GUARDIAN_GRID_BOT_SECRET": BOT_SECRET,
}


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY" and not k.startswith("GUARDIAN_")
    }
    return subprocess.run(
        [sys.executable, "-m", "guardian", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **env},
        cwd=ROOT,
    )


def test_the_example_passes_check_config_and_its_warnings_are_printed() -> None:
    result = check_config(EXAMPLE, EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLE}: valid\n")
    assert "account main: https://futures.kraken.com, api_key MAIN..., api_secret ***" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert (
        "warning: account hedge: accounts[1].guard.symbols is not set: bots may trade any symbol" in warnings
    )
    assert len(warnings) == 5  # the second account's four absent limits and its absent clients
    assert_clean(result.stdout + result.stderr)


def test_the_example_parses_in_process_as_well() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV, secrets_dirs=[])
    main = config.accounts[0]
    assert main.guard.limits_for("PF_XBTUSD") == SymbolLimits(0.5, 40000, 2, 20, 50)
    assert [client.name for client in main.clients] == ["grid-bot"]


def test_check_config_refuses_a_bad_file_with_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(doc().replace(MAIN_SECRET, BAD_SECRET))
    result = check_config(path, {})
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"guardian: configuration error: {path}: accounts[0].api_secret is not valid base64"
    )
    assert_clean(result.stdout + result.stderr)


def test_an_account_with_bots_but_no_position_or_loss_limit_exits_78_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "unlimited.toml"
    path.write_text(doc().replace("max_position = 50\n", "").replace("max_daily_loss = 5000\n", ""))
    result = check_config(path, {})
    assert result.returncode == EX_CONFIG
    assert (
        "account main has bots but no accounts[0].guard.max_position and accounts[0].guard.max_daily_loss"
        in result.stderr
    )
    assert "accounts[0].guard.allow_unlimited = true" in result.stderr
    # One of the two is enough to name only the other.
    path.write_text(doc().replace("max_daily_loss = 5000\n", ""))
    result = check_config(path, {})
    assert result.returncode == EX_CONFIG and "but no accounts[0].guard.max_daily_loss:" in result.stderr
    assert_clean(result.stdout + result.stderr)


def test_allow_unlimited_is_a_choice_said_out_loud() -> None:
    text = doc(guard="allow_unlimited = true").replace("max_position = 50\n", "")
    config = parse(text)
    assert config.accounts[0].guard.allow_unlimited
    assert (
        "account main: accounts[0].guard.allow_unlimited = true: no max_position, by choice"
        in config.warnings()
    )


def test_max_position_per_symbol_for_every_listed_symbol_counts_as_set() -> None:
    tail = "[accounts.guard.symbol.PF_XBTUSD]\nmax_position = 3\n[accounts.guard.symbol.PF_ETHUSD]\nmax_position = 30"
    guard = parse(doc(tail=tail).replace("max_position = 50\n", "")).accounts[0].guard
    assert (
        guard.limits_for("PF_XBTUSD").max_position == 3 and guard.limits_for("PF_ETHUSD").max_position == 30
    )
    only_one = doc(tail=tail.split("[accounts.guard.symbol.PF_ETHUSD]")[0]).replace("max_position = 50\n", "")
    assert "but no accounts[0].guard.max_position:" in config_error(only_one)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "max_open_orders = 0",
            "accounts[0].guard.max_open_orders must be a whole number of at least 1, got 0",
        ),
        ("max_open_orders_total = 2.5", "accounts[0].guard.max_open_orders_total must be an integer"),
        ("max_orders_per_minute = true", "accounts[0].guard.max_orders_per_minute must be an integer"),
        ("max_fills_per_minute = -1", "accounts[0].guard.max_fills_per_minute must be a whole number"),
        ("max_gross_notional = 0", "accounts[0].guard.max_gross_notional must be greater than 0"),
        ('on_loss_limit = "flatten"', "accounts[0].guard.on_loss_limit must be one of reduce_only, halted"),
        ("duplicate_window_s = -1", "accounts[0].guard.duplicate_window_s must be at least 0"),
        ('allow_unlimited = "yes"', "accounts[0].guard.allow_unlimited must be a boolean"),
    ],
)
def test_bad_exposure_limits_are_refused_naming_the_key(line: str, message: str) -> None:
    assert message in config_error(doc(guard=line))


def test_the_exposure_limits_are_read() -> None:
    guard_lines = "\n".join(
        [
            "max_open_orders = 7",
            "max_open_orders_total = 9",
            "max_gross_notional = 100000",
            "max_orders_per_minute = 30",
            "max_fills_per_minute = 20",
            'on_loss_limit = "halted_and_cancel"',
            "duplicate_window_s = 1.5",
        ]
    )
    config = parse(doc(guard=guard_lines, client="max_orders_per_minute = 10\nmax_open_orders = 4"))
    guard, bot = config.accounts[0].guard, config.accounts[0].clients[0]
    assert (guard.max_position, guard.max_daily_loss, guard.max_open_orders) == (50, 5000, 7)
    assert (guard.max_open_orders_total, guard.max_gross_notional) == (9, 100000)
    assert (guard.max_orders_per_minute, guard.max_fills_per_minute) == (30, 20)
    assert (guard.on_loss_limit.value, guard.duplicate_window_s, guard.allow_unlimited) == (
        "halted_and_cancel",
        1.5,
        False,
    )
    assert (bot.max_orders_per_minute, bot.max_open_orders) == (10, 4)
    summary = config.summary()
    assert "max position 50" in summary and "max daily loss 5000 (then halted_and_cancel)" in summary


def test_check_config_names_a_missing_variable_with_exit_78() -> None:
    env = {k: v for k, v in EXAMPLE_ENV.items() if k != "GUARDIAN_GRID_BOT_SECRET"}
    result = check_config(EXAMPLE, env)
    assert result.returncode == EX_CONFIG
    assert (
        "accounts[0].clients[0].api_secret_env: environment variable GUARDIAN_GRID_BOT_SECRET is not set"
        in (result.stderr)
    )
    assert_clean(result.stdout + result.stderr)


# --- the account-state stream ------------------------------------------------------------------------------


def stream(lines: str) -> str:
    return doc(tail=f"[accounts.stream]\n{lines}\n")


def test_the_stream_is_on_by_default_with_its_url_derived_from_the_base_url() -> None:
    account = parse(doc()).accounts[0]
    assert account.stream.enabled and account.ws_url == "wss://futures.kraken.com/ws/v1"
    assert (account.stream.link_timeout_s, account.stream.reconcile_s, account.stream.state_max_age_s) == (
        15,
        60,
        10,
    )
    local = parse(doc(account='base_url = "http://127.0.0.1:8788"')).accounts[0]
    assert local.ws_url == "ws://127.0.0.1:8788/ws/v1"
    summary = parse(doc()).summary()
    assert "stream: wss://futures.kraken.com/ws/v1, link timeout 15 s, reconcile every 60 s" in summary


def test_stream_keys_are_read_and_a_disabled_stream_is_warned_about() -> None:
    config = parse(
        stream(
            'enabled = false\nws_url = "wss://ws.example.test/ws/v1"\nlink_timeout_s = 5\nreconcile_s = 30\nstate_max_age_s = 3'
        )
    )
    settings = config.accounts[0].stream
    assert settings == type(settings)(False, "wss://ws.example.test/ws/v1", 5, 30, 3)
    assert config.accounts[0].ws_url == "wss://ws.example.test/ws/v1"
    assert any("stream.enabled = false" in w for w in config.warnings())
    assert "stream: disabled" in config.summary()


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (
            'ws_url = "https://futures.kraken.com/ws/v1"',
            "accounts[0].stream.ws_url must be a ws:// or wss:// URL",
        ),
        ('ws_url = "wss://"', "accounts[0].stream.ws_url must be a ws:// or wss:// URL"),
        ("link_timeout_s = 0", "accounts[0].stream.link_timeout_s must be greater than 0"),
        ("reconcile_s = -1", "accounts[0].stream.reconcile_s must be greater than 0"),
        ('state_max_age_s = "10"', "accounts[0].stream.state_max_age_s must be a number, not a string"),
        ('enabled = "yes"', "accounts[0].stream.enabled must be"),
        ("reconnect_s = 3", "accounts[0].stream"),
    ],
)
def test_bad_stream_keys_are_refused_naming_them(lines: str, fragment: str) -> None:
    assert fragment in config_error(stream(lines))


def test_maintenance_reduce_only_is_read_and_refused_when_negative() -> None:
    assert (
        parse(doc(guard="maintenance_reduce_only_s = 900")).accounts[0].guard.maintenance_reduce_only_s == 900
    )
    assert "maintenance_reduce_only_s must be at least 0" in config_error(
        doc(guard="maintenance_reduce_only_s = -1")
    )


# ---- the ws/v1 relay's keys (issue 13) -----------------------------------------------------------------


def test_the_relay_keys_have_defaults_and_take_their_values() -> None:
    config = parse(doc())
    client = config.accounts[0].clients[0]
    assert (config.server.ws_max_connections, client.ws_max_connections, client.feeds) == (500, 20, "account")
    config = parse(doc(server="ws_max_connections = 50", client='ws_max_connections = 3\nfeeds = "own"'))
    client = config.accounts[0].clients[0]
    assert (config.server.ws_max_connections, client.ws_max_connections, client.feeds) == (50, 3, "own")


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        (
            "server",
            "ws_max_connections = 0",
            r"server\.ws_max_connections must be a whole number of at least 1",
        ),
        ("server", "ws_max_connections = 1.5", r"server\.ws_max_connections must be an integer"),
        ("client", "ws_max_connections = -1", r"clients\[0\]\.ws_max_connections must be a whole number"),
        ("client", 'feeds = "mine"', r"clients\[0\]\.feeds must be one of account, own"),
        ("client", "feeds = true", r"clients\[0\]\.feeds must be a string"),
    ],
)
def test_bad_relay_keys_are_refused_naming_the_key(section: str, line: str, expected: str) -> None:
    message = config_error(doc(**{section: line}))
    assert re.search(expected, message), message


# ---- the public budget's burst (issue 24) -------------------------------------------------------------


def test_the_public_bursts_have_defaults_and_take_their_values() -> None:
    config = parse(doc())
    client = config.accounts[0].clients[0]
    assert (config.server.public_burst, client.public_burst) == (None, None)  # not set: the defaults
    assert (config.server.public_burst_size, client.public_burst_size) == (
        cfg.DEFAULT_PUBLIC_BURST,
        cfg.DEFAULT_BOT_PUBLIC_BURST,
    )
    assert (config.server.public_burst_size, client.public_burst_size) == (60, 40)
    assert "bursts of 60" in config.summary() and "bursts of 40" in config.summary()
    config = parse(doc(server="public_burst = 100", client="public_burst = 5\npublic_rate_limit = 2.5"))
    client = config.accounts[0].clients[0]
    assert (config.server.public_burst_size, client.public_burst_size, client.public_rate_limit) == (
        100,
        5,
        2.5,
    )
    # A rate raised without a burst is never held to a smaller burst than one second's worth of it.
    config = parse(doc(server="public_rate_limit = 500", client="public_rate_limit = 90"))
    assert (config.server.public_burst_size, config.accounts[0].clients[0].public_burst_size) == (500, 90)


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("server", "public_burst = 0", r"server\.public_burst must be at least 1, got 0"),
        ("server", "public_burst = 0.5", r"server\.public_burst must be at least 1, got 0\.5"),
        ("server", 'public_burst = "30"', r"server\.public_burst must be a number, not a string"),
        ("server", "public_burst = inf", r"server\.public_burst must be a finite number"),
        (
            "client",
            "public_burst = -3",
            r"accounts\[0\]\.clients\[0\]\.public_burst must be at least 1, got -3",
        ),
        (
            "client",
            "public_burst = true",
            r"accounts\[0\]\.clients\[0\]\.public_burst must be a number, not a boolean",
        ),
        (
            "client",
            "public_brust = 30",
            r"unknown key accounts\[0\]\.clients\[0\]\.public_brust: did you mean public_burst\?",
        ),
        ("server", "public_bursts = 30", r"unknown key server\.public_bursts: did you mean public_burst\?"),
    ],
)
def test_bad_public_bursts_are_refused_naming_the_key(section: str, line: str, expected: str) -> None:
    message = config_error(doc(**{section: line}))
    assert re.search(expected, message), message
