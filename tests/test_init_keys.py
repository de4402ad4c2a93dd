"""`guardian init` and `guardian keys` as real subprocesses: the files and their modes, the configuration
passing `guardian check-config`, `guardian run` on it against the simulator arming the switch and taking a
generated bot key's order; refusals (a config that exists, no key files, a bad secret, no terminal), key
rotation with both keys valid until the old one is revoked, the file's comments kept, and no secret in any
log, message or listing."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from guardian import keys
from guardian.config import AccountConfig, ClientConfig, ClientKey, GuardConfig, parse_config
from guardian.errors import ConfigError, ExchangeError
from guardian.gateway.auth import LocalKeys
from guardian.gateway.refusal import Refusal
from guardian.init import exchange_key
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission, endpoint
from guardian.kraken.signing import sign
from guardian.secret import ApiSecret
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.test_daemon import Daemon, clean_env

ORDER: dict[str, str | float] = {
    "orderType": "lmt",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": 0.01,
    "limitPrice": 59500,
}
UNUSED_URL = "http://127.0.0.1:9"  # init never calls the exchange


def guardian(
    *args: str, cwd: Path | None = None, stdin: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardian", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        cwd=cwd,
        stdin=stdin,
    )


def key_files(tmp_path: Path, secret: str = TRADE_SECRET) -> list[str]:
    given = tmp_path / "given"
    given.mkdir(exist_ok=True)
    (given / "key").write_text(TRADE_KEY + "\n")
    (given / "secret").write_text(secret + "\n")
    return ["--api-key-file", str(given / "key"), "--api-secret-file", str(given / "secret")]


def init(
    tmp_path: Path, *extra: str, base_url: str = UNUSED_URL, bots: int = 2
) -> subprocess.CompletedProcess[str]:
    return guardian(
        "init", "--dir", str(tmp_path / "g"), "--non-interactive", "--bots", str(bots),
        "--base-url", base_url, *key_files(tmp_path), *extra,
    )  # fmt: skip


def printed_bots(stdout: str) -> dict[str, tuple[str, str]]:
    """bot name -> (api_key, api_secret), from init's or keys' `bot NAME api_key=K api_secret=S` lines."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("bot "):
            name, key, secret = line.split()[1:4]
            found[name] = (key.removeprefix("api_key="), secret.removeprefix("api_secret="))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_of(directory: Path) -> list[str]:
    return [path.read_text().strip() for path in (directory / "credentials").iterdir()]


def assert_none_in(text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text, "a secret reached the output"


# ---- guardian init --------------------------------------------------------------------------------------


def test_init_writes_a_config_and_each_secret_in_a_0600_file_of_a_0700_directory(tmp_path: Path) -> None:
    done = init(tmp_path)
    assert done.returncode == 0, done.stderr
    g = tmp_path / "g"
    config, credentials = g / "config.toml", g / "credentials"
    assert mode(credentials) == 0o700
    assert mode(config) == 0o644
    bots = printed_bots(done.stdout)
    assert sorted(bots) == ["bot-1", "bot-2"]
    names = {path.name for path in credentials.iterdir()}
    assert names == {"admin_token", "main_api_key", "main_api_secret"} | {
        f"{k}_api_secret" for k, _ in bots.values()
    }
    assert all(mode(path) == 0o600 for path in credentials.iterdir())
    assert (credentials / "main_api_key").read_text().strip() == TRADE_KEY
    assert (credentials / "main_api_secret").read_text().strip() == TRADE_SECRET
    for api_key, secret in bots.values():  # a CSPRNG's 64 bytes, stored once, printed once
        assert len(base64.b64decode(secret)) == keys.BOT_SECRET_BYTES
        assert (credentials / f"{api_key}_api_secret").read_text().strip() == secret
        assert done.stdout.count(secret) == 1
    admin_token = (credentials / "admin_token").read_text().strip()
    assert len(admin_token) >= 32
    text = config.read_text()
    assert_none_in(text, [TRADE_SECRET, TRADE_KEY, admin_token, *(s for _, s in bots.values())])
    assert_none_in(done.stdout + done.stderr, [TRADE_SECRET, admin_token])
    # No account starts unlimited, and the user is told what to revisit.
    assert "max_position = 1" in text and "max_daily_loss = 100" in text and "allow_unlimited = false" in text
    for limit in ("symbols", "max_position", "max_daily_loss", "max_notional"):
        assert limit in done.stdout.split("revisit", 1)[1]
    # The next three commands.
    assert f"guardian check-config --online --config {config}" in done.stdout
    assert f"ExecStart=/opt/guardian/bin/guardian run --config {config}" in done.stdout
    assert f"LoadCredential=main_api_secret:{credentials / 'main_api_secret'}" in done.stdout
    assert "base URL http://127.0.0.1:8787" in done.stdout


def test_what_init_writes_passes_check_config(tmp_path: Path) -> None:
    assert init(tmp_path).returncode == 0
    checked = guardian("check-config", "--config", str(tmp_path / "g" / "config.toml"))
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout
    assert "max position 1" in checked.stdout and "max daily loss 100" in checked.stdout
    assert_none_in(checked.stdout + checked.stderr, secrets_of(tmp_path / "g"))


def test_init_refuses_a_directory_that_holds_a_config_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "config.toml").write_text("# mine\n")
    done = init(tmp_path)
    assert done.returncode == keys.EX_CANTCREAT
    assert f"{tmp_path / 'g' / 'config.toml'} exists" in done.stderr
    assert (tmp_path / "g" / "config.toml").read_text() == "# mine\n"
    assert not (tmp_path / "g" / "credentials").exists()
    assert_none_in(done.stdout + done.stderr, [TRADE_SECRET])


def test_init_refuses_to_overwrite_a_credential_and_names_it(tmp_path: Path) -> None:
    credentials = tmp_path / "g" / "credentials"
    credentials.mkdir(parents=True, mode=0o700)
    (credentials / "main_api_secret").write_text("theirs\n")
    done = init(tmp_path)
    assert done.returncode == keys.EX_CANTCREAT
    assert f"{credentials / 'main_api_secret'} exists" in done.stderr
    assert (credentials / "main_api_secret").read_text() == "theirs\n"
    assert sorted(p.name for p in credentials.iterdir()) == ["main_api_secret"]
    assert not (tmp_path / "g" / "config.toml").exists()


def test_init_non_interactive_without_the_key_files_refuses_with_a_clear_message(tmp_path: Path) -> None:
    done = guardian("init", "--dir", str(tmp_path / "g"), "--non-interactive")
    assert done.returncode == keys.EX_USAGE
    assert "--non-interactive needs --api-key-file and --api-secret-file" in done.stderr
    assert not (tmp_path / "g").exists()


def test_init_without_a_terminal_or_key_files_refuses_rather_than_read_a_secret_from_a_pipe(
    tmp_path: Path,
) -> None:
    done = guardian("init", "--dir", str(tmp_path / "g"), stdin=subprocess.DEVNULL)
    assert done.returncode == keys.EX_USAGE
    assert "no terminal to ask for the exchange key on" in done.stderr


def test_init_with_a_secret_that_is_not_base64_exits_65_naming_the_file_not_the_value(tmp_path: Path) -> None:
    bad = "not-base64-but-secret!!"
    done = guardian(
        "init", "--dir", str(tmp_path / "g"), "--non-interactive", *key_files(tmp_path, secret=bad)
    )
    assert done.returncode == keys.EX_DATAERR
    assert "is not valid base64" in done.stderr and str(tmp_path / "given" / "secret") in done.stderr
    assert_none_in(done.stdout + done.stderr, [bad])
    assert not (tmp_path / "g").exists()


def test_init_with_a_missing_key_file_exits_66(tmp_path: Path) -> None:
    done = guardian(
        "init", "--dir", str(tmp_path / "g"), "--non-interactive",
        "--api-key-file", str(tmp_path / "nowhere"), "--api-secret-file", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert done.returncode == keys.EX_NOINPUT
    assert f"cannot read the exchange API key from {tmp_path / 'nowhere'}" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "no spaces"], "--account must be"),
        (["--base-url", "ftp://example.org"], "--base-url must be an http(s) URL"),
        (["--permissions", "read,withdraw"], "--permissions must be"),
        (["--bots", "101"], "--bots must be between 0 and 100"),
    ],
)
def test_init_refuses_values_guardian_would_refuse(tmp_path: Path, args: list[str], message: str) -> None:
    done = guardian("init", "--dir", str(tmp_path / "g"), "--non-interactive", *key_files(tmp_path), *args)
    assert done.returncode == keys.EX_USAGE
    assert message in done.stderr
    assert not (tmp_path / "g").exists()


def test_init_asks_for_the_key_and_secret_on_a_terminal_without_echo(tmp_path: Path) -> None:
    """A real pseudo-terminal: the prompts appear, what is typed is not echoed, the files hold it."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "guardian", "init", "--dir", str(tmp_path / "g"), "--base-url", UNUSED_URL],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=clean_env(),
        start_new_session=True,  # no controlling terminal: getpass asks on stdin, the pty, echo off
    )
    os.close(secondary)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while marker not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(primary, 4096)
                except OSError:  # the child is gone and the terminal closed
                    return
            elif process.poll() is not None and marker.startswith(b"never"):
                return

    try:
        read_until(b"API key")
        os.write(primary, TRADE_KEY.encode() + b"\n")
        read_until(b"API secret")
        os.write(primary, TRADE_SECRET.encode() + b"\n")
        read_until(b"Next:")
        assert process.wait(20) == 0
        read_until(b"never printed: read to the end")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert TRADE_SECRET.encode() not in seen and TRADE_KEY.encode() not in seen  # never echoed
    credentials = tmp_path / "g" / "credentials"
    assert (credentials / "main_api_key").read_text().strip() == TRADE_KEY
    assert (credentials / "main_api_secret").read_text().strip() == TRADE_SECRET


def test_exchange_key_prompts_for_what_no_file_gives(tmp_path: Path) -> None:
    asked: list[str] = []

    def prompt(label: str) -> str:
        asked.append(label)
        return TRADE_SECRET

    given = tmp_path / "key"
    given.write_text(TRADE_KEY)
    key, secret = exchange_key(given, None, interactive=True, prompt=prompt, has_terminal=lambda: True)
    assert (key, secret) == (TRADE_KEY, ApiSecret(TRADE_SECRET))
    assert asked == ["Kraken Futures API secret (private key, not shown): "]


# ---- guardian run on what init wrote ---------------------------------------------------------------------


async def start_daemon(tmp_path: Path) -> Daemon:
    daemon = await Daemon.start(
        "run", "--config", str(tmp_path / "g" / "config.toml"), "--listen", "127.0.0.1:0",
        env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    await daemon.wait_event("guardian_ready", timeout_s=30)
    return daemon


async def send_when_judged(url: str, api_key: str, secret: str) -> dict[str, Any]:
    """A bot's order, sent again while guardian still gathers what its limits need (marks, the account's
    state): any other refusal fails the test."""
    deadline = time.monotonic() + 15
    async with KrakenClient(url, Credentials(api_key, ApiSecret(secret)), timeout_s=5) as bot:
        while True:
            try:
                return await bot.send_order(**ORDER)
            except ExchangeError as exc:
                if (
                    exc.code not in ("markPriceUnavailable", "accountStateUnavailable")
                    or time.monotonic() > deadline
                ):
                    raise
                await asyncio.sleep(0.2)


async def test_guardian_run_on_an_init_config_arms_the_switch_and_takes_a_generated_bot_keys_order(
    tmp_path: Path,
) -> None:
    async with running_sim() as sim:
        done = init(tmp_path, base_url=sim.url, bots=1)
        assert done.returncode == 0, done.stderr
        [(api_key, secret)] = printed_bots(done.stdout).values()
        daemon = await start_daemon(tmp_path)
        try:
            assert sim.switch_remaining("main") is not None  # armed with the exchange key init was given
            url = await daemon.url()
            answer = await send_when_judged(url, api_key, secret)
            assert answer["sendStatus"]["status"] == "placed"
            [forwarded] = sim.requests_for("sendorder")
            assert forwarded["api_key"] == TRADE_KEY  # re-signed with the exchange key
            code, _ = await daemon.signal_and_wait(signal.SIGTERM)
            assert code == 0
        finally:
            await daemon.kill()
        assert_none_in(daemon.output(), secrets_of(tmp_path / "g"))


# ---- guardian keys ---------------------------------------------------------------------------------------

NOTE = "# operator's note: bot-1 is the grid strategy, do not remove"


def with_note(tmp_path: Path) -> Path:
    """An init'd configuration with a comment of the operator's inside the first bot's table."""
    config = tmp_path / "g" / "config.toml"
    text = config.read_text().replace('name = "bot-1"\n', f'name = "bot-1"\n{NOTE}\n', 1)
    config.write_text(text)
    return config


def keys_cmd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return guardian("keys", *args, "--config", str(config))


def test_keys_list_shows_bots_and_key_ids_and_never_a_secret(tmp_path: Path) -> None:
    done = init(tmp_path)
    bots = printed_bots(done.stdout)
    config = tmp_path / "g" / "config.toml"
    listed = keys_cmd(config, "list")
    assert listed.returncode == 0, listed.stderr
    for name, (api_key, _) in bots.items():
        assert f"main  {name}  read+trade  {api_key}  secret: file {api_key}_api_secret" in listed.stdout
    assert_none_in(listed.stdout + listed.stderr, secrets_of(tmp_path / "g"))
    one = keys_cmd(config, "list", "--bot", "bot-2")
    assert "bot-1" not in one.stdout and "bot-2" in one.stdout


def test_keys_add_rotate_revoke_edit_the_file_keeping_its_comments(tmp_path: Path) -> None:
    init(tmp_path)
    config = with_note(tmp_path)
    before = config.read_text()

    added = keys_cmd(config, "add", "--bot", "reader", "--permissions", "read")
    assert added.returncode == 0, added.stderr
    [(reader_key, reader_secret)] = printed_bots(added.stdout).values()
    assert config.read_text().startswith(before)  # appended; nothing above it changed
    assert f'name = "reader"\napi_key = "{reader_key}"' in config.read_text()
    assert 'permissions = ["read"]' in config.read_text()

    rotated = keys_cmd(config, "rotate", "--bot", "bot-1")
    assert rotated.returncode == 0, rotated.stderr
    [(new_key, new_secret)] = printed_bots(rotated.stdout).values()
    text = config.read_text()
    assert NOTE in text and "# Revisit every value here before trading for real." in text
    assert (
        f'extra_keys = [\n    {{api_key = "{new_key}", api_secret_file = "{new_key}_api_secret"}},\n]' in text
    )
    secret_file = tmp_path / "g" / "credentials" / f"{new_key}_api_secret"
    assert mode(secret_file) == 0o600 and secret_file.read_text().strip() == new_secret
    old_key = next(line for line in text.splitlines() if line.startswith('api_key = "bot-1-')).split('"')[1]
    assert f"--key {old_key}" in rotated.stdout  # what to run once the bot has switched

    revoked = keys_cmd(config, "revoke", "--bot", "bot-1")  # the oldest, by default
    assert revoked.returncode == 0, revoked.stderr
    assert f"removed key {old_key} of bot bot-1" in revoked.stdout
    text = config.read_text()
    assert old_key not in text and "extra_keys" not in text
    assert f'name = "bot-1"\n{NOTE}\n' in text  # the note stays where the operator put it
    assert f'api_key = "{new_key}"\napi_secret_file = "{new_key}_api_secret"' in text
    assert not (tmp_path / "g" / "credentials" / f"{old_key}_api_secret").exists()
    assert guardian("check-config", "--config", str(config)).returncode == 0
    everything = added.stdout + rotated.stdout + revoked.stdout
    assert_none_in(added.stderr + rotated.stderr + revoked.stderr, [reader_secret, new_secret])
    assert everything.count(new_secret) == 1 and everything.count(reader_secret) == 1


def test_keys_revoke_by_key_removes_the_new_one_and_never_the_last(tmp_path: Path) -> None:
    init(tmp_path, bots=1)
    config = tmp_path / "g" / "config.toml"
    only = keys_cmd(config, "revoke", "--bot", "bot-1")
    assert only.returncode == keys.EX_DATAERR
    assert "is the only key of bot 'bot-1'" in only.stderr
    [(new_key, _)] = printed_bots(keys_cmd(config, "rotate", "--bot", "bot-1").stdout).values()
    unknown = keys_cmd(config, "revoke", "--bot", "bot-1", "--key", "bot-1-nosuchkey")
    assert unknown.returncode == keys.EX_USAGE and "has no key 'bot-1-nosuchkey'" in unknown.stderr
    assert keys_cmd(config, "revoke", "--bot", "bot-1", "--key", new_key).returncode == 0
    assert new_key not in config.read_text() and "extra_keys" not in config.read_text()


def test_revoke_keeps_a_secret_file_that_another_key_still_names(tmp_path: Path) -> None:
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    [(key_1, _)] = printed_bots(keys_cmd(config, "rotate", "--bot", "bot-1").stdout).values()
    shared = f"{key_1}_api_secret"
    text = config.read_text().replace(
        'name = "bot-2"\n',
        f'name = "bot-2"\nextra_keys = [{{ api_key = "bot-2-shared", api_secret_file = "{shared}" }}]\n',
    )
    config.write_text(text)
    revoked = keys_cmd(config, "revoke", "--bot", "bot-1", "--key", key_1)
    assert revoked.returncode == 0, revoked.stderr
    assert "and its secret file" not in revoked.stdout
    assert (tmp_path / "g" / "credentials" / shared).is_file()
    assert guardian("check-config", "--config", str(config)).returncode == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rotate", "--bot", "nobody"], keys.EX_USAGE, "no bot 'nobody' in account 'main'"),
        (["add", "--bot", "bot-1"], keys.EX_DATAERR, "a bot named 'bot-1' exists already"),
        (["add", "--bot", "x", "--account", "other"], keys.EX_USAGE, "no account 'other'"),
        (["rotate"], keys.EX_USAGE, "guardian keys rotate needs --bot NAME"),
        (["rotate", "--bot", "bot-1", "--key", "k"], keys.EX_USAGE, "--key names the key to revoke"),
        (["add", "--bot", "x", "--permissions", "all"], keys.EX_USAGE, "--permissions must be"),
    ],
)
def test_keys_misuse_is_refused_and_the_file_left_as_it_was(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    before = config.read_text(), sorted((tmp_path / "g" / "credentials").iterdir())
    done = keys_cmd(config, *args)
    assert (done.returncode, message in done.stderr) == (code, True), done.stderr
    assert (config.read_text(), sorted((tmp_path / "g" / "credentials").iterdir())) == before


HEDGE = """
# The hedge account: its own key, no bots yet, and no limits for them either.
[[accounts]]
name = "hedge"
api_key = "hedge-exchange-key-01"
api_secret_file = "main_api_secret"
"""


def test_an_edit_guardian_would_refuse_is_not_written_and_its_secret_file_is_removed(tmp_path: Path) -> None:
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    config.write_text(config.read_text() + HEDGE)
    before = config.read_text()
    files = sorted((tmp_path / "g" / "credentials").iterdir())
    done = keys_cmd(config, "add", "--account", "hedge", "--bot", "hedger")
    assert done.returncode == 78  # a bot on an account without max_position: refused, as the daemon would
    assert "account hedge has bots but no" in done.stderr
    assert config.read_text() == before
    assert sorted((tmp_path / "g" / "credentials").iterdir()) == files
    assert "api_secret=" not in done.stdout


def test_a_bot_added_to_an_account_without_bots_goes_before_the_next_accounts_comment(tmp_path: Path) -> None:
    init(tmp_path, bots=0)
    config = tmp_path / "g" / "config.toml"
    config.write_text(config.read_text() + HEDGE)
    done = keys_cmd(config, "add", "--account", "main", "--bot", "first")
    assert done.returncode == 0, done.stderr
    after = config.read_text()
    assert after.index('name = "first"') < after.index("# The hedge account") < after.index('name = "hedge"')
    assert HEDGE.strip() in after


def test_keys_refuses_to_edit_a_configuration_that_does_not_validate(tmp_path: Path) -> None:
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    (tmp_path / "g" / "credentials" / "admin_token").unlink()
    before = config.read_text()
    done = keys_cmd(config, "rotate", "--bot", "bot-1")
    assert done.returncode == 78 and "admin_token" in done.stderr
    assert config.read_text() == before


async def test_after_rotate_both_keys_authenticate_and_after_revoke_the_old_one_is_refused(
    tmp_path: Path,
) -> None:
    async with running_sim() as sim:
        done = init(tmp_path, base_url=sim.url, bots=1)
        [(old_key, old_secret)] = printed_bots(done.stdout).values()
        config = tmp_path / "g" / "config.toml"
        rotated = keys_cmd(config, "rotate", "--bot", "bot-1")
        [(new_key, new_secret)] = printed_bots(rotated.stdout).values()

        daemon = await start_daemon(tmp_path)
        try:
            url = await daemon.url()
            for key, secret in ((old_key, old_secret), (new_key, new_secret)):
                async with KrakenClient(url, Credentials(key, ApiSecret(secret)), timeout_s=5) as bot:
                    assert await bot.open_orders() == []
            placed = await send_when_judged(url, new_key, new_secret)
            assert placed["sendStatus"]["status"] == "placed"
            await daemon.signal_and_wait(signal.SIGTERM)
        finally:
            await daemon.kill()

        assert keys_cmd(config, "revoke", "--bot", "bot-1", "--key", old_key).returncode == 0
        again = await start_daemon(tmp_path)
        try:
            url = await again.url()
            async with KrakenClient(url, Credentials(old_key, ApiSecret(old_secret)), timeout_s=5) as bot:
                with pytest.raises(ExchangeError) as caught:
                    await bot.open_orders()
                assert caught.value.code == "authenticationError"
            async with KrakenClient(url, Credentials(new_key, ApiSecret(new_secret)), timeout_s=5) as bot:
                assert len(await bot.open_orders()) == 1
            await again.signal_and_wait(signal.SIGTERM)
        finally:
            await again.kill()
    logged = daemon.output() + again.output()
    assert_none_in(logged, [old_secret, new_secret, TRADE_SECRET])


# ---- a bot's several keys in the configuration and the gateway --------------------------------------------

SECRET_A = base64.b64encode(b"a" * 32).decode()
SECRET_B = base64.b64encode(b"b" * 32).decode()


def test_a_client_with_extra_keys_is_parsed_with_each_key_and_secret(tmp_path: Path) -> None:
    (tmp_path / "b.secret").write_text(SECRET_B + "\n")
    text = f"""
[[accounts]]
name = "main"
api_key = "exchange-key-0001"
api_secret = "{TRADE_SECRET}"
[accounts.guard]
allow_unlimited = true
[[accounts.clients]]
name = "bot"
api_key = "bot-key-aaaa"
api_secret = "{SECRET_A}"
permissions = ["read"]
extra_keys = [{{ api_key = "bot-key-bbbb", api_secret_file = "b.secret" }}]
"""
    config = parse_config(text, base_dir=tmp_path, env={}, secrets_dirs=[])
    [client] = config.accounts[0].clients
    assert [(k.api_key, k.api_secret) for k in client.keys] == [
        ("bot-key-aaaa", ApiSecret(SECRET_A)),
        ("bot-key-bbbb", ApiSecret(SECRET_B)),
    ]
    assert {s.reveal() for s in config.all_secrets()} == {TRADE_SECRET, SECRET_A, SECRET_B}
    assert "extra key bot-..." in config.summary() and SECRET_B not in config.summary()
    assert "bot-key-bbbb" not in repr(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[{ api_key = "bot-key-aaaa", api_secret = "SB" }]',
            "extra_keys[0].api_key (bot-...) is already used",
        ),
        ('[{ api_key = "bot-key-cccc", api_secret = "SB", permissions = ["trade"] }]', "unknown key"),
        ('[{ api_key = "bot-key-cccc" }]', "extra_keys[0].api_secret is missing"),
        ('[{ api_key = "bot-key-cccc", api_secret = "c2hvcnQ=" }]', "extra_keys[0].api_secret is too short"),
        ('["bot-key-cccc"]', "extra_keys[0] must be a table"),
        ('[{ api_key = "exchange-key-0001", api_secret = "SB" }]', "a bot's key is never an exchange key"),
    ],
)
def test_extra_keys_are_validated_like_the_bots_first_key(extra: str, message: str) -> None:
    text = f"""
[[accounts]]
name = "main"
api_key = "exchange-key-0001"
api_secret = "{TRADE_SECRET}"
[accounts.guard]
allow_unlimited = true
[[accounts.clients]]
name = "bot"
api_key = "bot-key-aaaa"
api_secret = "{SECRET_A}"
permissions = ["read"]
extra_keys = {extra.replace("SB", SECRET_B)}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=Path(), env={}, secrets_dirs=[])
    assert message in str(caught.value)
    assert SECRET_B not in str(caught.value) and SECRET_A not in str(caught.value)


def test_the_gateway_takes_each_of_a_bots_keys_with_its_own_secret_only() -> None:
    client = ClientConfig(
        "bot",
        "bot-key-aaaa",
        ApiSecret(SECRET_A),
        frozenset({Permission.READ}),
        extra_keys=(ClientKey("bot-key-bbbb", ApiSecret(SECRET_B)),),
    )
    account = AccountConfig(
        "main", "exchange", ApiSecret(TRADE_SECRET), guard=GuardConfig(), clients=(client,)
    )
    local = LocalKeys([account])
    ep = endpoint("openorders")

    def headers(key: str, secret: str) -> dict[str, str]:
        return {"APIKey": key, "Authent": sign(base64.b64decode(secret), "", None, ep.path)}

    for key, secret in (("bot-key-aaaa", SECRET_A), ("bot-key-bbbb", SECRET_B)):
        assert local.authenticate(headers(key, secret), ep, "", "").bot == "bot"
    for key, secret in (("bot-key-aaaa", SECRET_B), ("bot-key-bbbb", SECRET_A)):
        with pytest.raises(Refusal) as caught:
            local.authenticate(headers(key, secret), ep, "", "")
        assert caught.value.code == "authenticationError"


def test_a_new_bot_key_is_long_random_and_what_guardian_accepts(tmp_path: Path) -> None:
    made = {keys.new_api_key("bot") for _ in range(100)}
    assert len(made) == 100 and all(k.startswith("bot-") and len(k) == len("bot-") + 12 for k in made)
    secret = keys.new_api_secret()
    assert len(secret.key_bytes()) == 64 and repr(secret) == "ApiSecret('***')"
    key = keys.make_key("bot", tmp_path / "creds")
    assert mode(tmp_path / "creds") == 0o700 and mode(key.secret_file) == 0o600
    assert key.api_key not in repr(key) and key.api_secret.reveal() not in repr(key)
    with pytest.raises(keys.CannotCreate, match="exists"):
        keys.write_secret(tmp_path / "creds", key.secret_file.name, "x")
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)  # noqa: S103 (the case under test)
    with pytest.raises(keys.CannotCreate, match="open to other users"):
        keys.make_key("bot", tmp_path / "open")


# ---- edits at once ------------------------------------------------------------------------------------
def keys_started(config: Path, *args: str) -> subprocess.Popen[str]:
    """`guardian keys ARGS --config CONFIG` started, not waited for."""
    command = [sys.executable, "-m", "guardian", "keys", *args, "--config", str(config)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
    )


def test_a_keys_edit_waits_for_one_in_progress_and_builds_on_what_it_wrote(tmp_path: Path) -> None:
    """Two operators (or a provisioning script's parallel runs) editing at once: the second waits for
    the first's lock, then reads the file the first wrote, so neither edit is lost."""
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    with config.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # an edit in progress, as guardian keys holds it
        waiting = keys_started(config, "add", "--bot", "later")
        time.sleep(2.0)
        assert waiting.poll() is None, waiting.communicate()  # it waits for the lock
        # The edit in progress writes a new file (a new inode, as every edit does) and lets go.
        keys.replace_file(config, config.read_text() + "# written by the edit in progress\n")
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert f"guardian keys: waiting for another edit of {config} to finish" in err  # said once, at once
    assert err.count("waiting for another edit") == 1
    text = config.read_text()
    assert "# written by the edit in progress" in text and 'name = "later"' in text
    assert printed_bots(out)["later"][0] in keys_cmd(config, "list").stdout


def test_keys_edits_started_together_are_all_kept(tmp_path: Path) -> None:
    init(tmp_path)
    config = tmp_path / "g" / "config.toml"
    runs = [keys_started(config, "add", "--bot", f"bot-p{i}") for i in range(6)]
    answers = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 6, [err for _, err in answers]
    listed = keys_cmd(config, "list").stdout
    for i, (out, _) in enumerate(answers):
        assert printed_bots(out)[f"bot-p{i}"][0] in listed  # every printed key is in the file
    assert guardian("check-config", "--config", str(config)).returncode == 0


def test_an_edit_lock_won_on_a_replaced_file_is_taken_again_on_the_file_the_path_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("a = 1\n")
    first = keys.EditLock(path)
    won: list[keys.EditLock] = []
    waiter = threading.Thread(target=lambda: won.append(keys.EditLock(path, wait_s=10)))
    waiter.start()
    time.sleep(0.3)
    assert won == []  # waiting for the first
    keys.replace_file(path, "a = 2\n")  # the first edit writes a new file, then lets go
    first.release()
    waiter.join(5)
    [second] = won
    # The second holds the file the path names now: a third edit waits for it, and gives up with 75.
    with pytest.raises(keys.Busy, match=r"config.toml is being edited by another guardian keys") as busy:
        keys.EditLock(path, wait_s=0.3)
    assert busy.value.exit_code == keys.EX_TEMPFAIL == 75
    second.release()
    keys.EditLock(path, wait_s=0.3).release()
