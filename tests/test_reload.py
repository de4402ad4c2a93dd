"""Reloading the configuration without a restart: a real `guardian run` subprocess in front of the simulator,
four bots trading through it, and the file changed under it. SIGHUP and `POST /guardian/reload` apply limits,
bots and keys in place; an invalid file or a change that needs a restart is refused whole, with the reason,
and the rules in force stay. The pure parts (what may change in place) are tested on their own at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.config import parse_config
from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.reload import changed_in_place, restart_only
from guardian.secret import ApiSecret
from guardian.sim.app import Simulator
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import get_json, metric, scrape, wait_for
from tests.test_daemon import Daemon, clean_env
from tests.test_init_keys import (
    NOTE,
    ORDER,
    init,
    keys_cmd,
    printed_bots,
    send_when_judged,
    start_daemon,
    with_note,
)

ADMIN_TOKEN = "reload-admin-token-0123456789abcdef"
BOTS = {f"b{i}": (f"reload-bot-{i}-key", base64.b64encode(bytes([i]) * 48).decode()) for i in range(1, 6)}
SYMBOL = "PF_XBTUSD"


def config_text(base_url: str, *, bots: list[str], max_position: float, extra_guard: str = "") -> str:
    clients = "".join(
        f"""
[[accounts.clients]]
name = "{name}"
api_key = "{BOTS[name][0]}"
api_secret = "{BOTS[name][1]}"
permissions = ["read", "trade"]
"""
        for name in bots
    )
    return f"""# the operator's comment: kept by every edit of this test
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
[journal]
path = "journal.sqlite3"
[log]
level = "debug"
format = "json"
[[accounts]]
name = "main"
base_url = "{base_url}"
api_key = "{TRADE_KEY}"
api_secret_file = "main.secret"
[accounts.switch]
refresh_min_s = 0.3
refresh_max_s = 0.5
timeout_s = 3
min_remaining_s = 1
[accounts.guard]
allow_unlimited = true
max_order_size = 20
max_position = {max_position}
rate_budget = 100000
{extra_guard}
{clients}"""


@dataclass
class Loop:
    """One bot placing a resting order and cancelling it, again and again; every answer recorded."""

    name: str
    url: str
    key: tuple[str, str]
    placed: int = 0
    failures: list[tuple[float, str | None]] = field(default_factory=list)
    stop: bool = False

    async def run(self) -> None:
        async with KrakenClient(
            self.url, Credentials(self.key[0], ApiSecret(self.key[1])), timeout_s=5
        ) as bot:
            while not self.stop:
                try:
                    sent = await bot.send_order(
                        orderType="lmt", symbol=SYMBOL, side="buy", size=1, limitPrice=40000
                    )
                    order_id = sent["sendStatus"]["order_id"]
                    self.placed += 1
                    await bot.cancel_order(order_id=order_id)
                except ExchangeError as exc:
                    self.failures.append((time.time(), exc.code))
                    if exc.code == "authenticationError":
                        return  # removed: nothing more to send
                await asyncio.sleep(0.05)


async def judged(url: str, name: str, size: float = 1) -> dict[str, Any]:
    """A bot's order, sent again while guardian still gathers what its limits need; any other refusal
    fails the test."""
    key, secret = BOTS[name]
    deadline = time.monotonic() + 15
    async with KrakenClient(url, Credentials(key, ApiSecret(secret)), timeout_s=5) as bot:
        while True:
            try:
                answer = await bot.send_order(
                    orderType="lmt", symbol=SYMBOL, side="buy", size=size, limitPrice=40000
                )
            except ExchangeError as exc:
                if exc.code not in ("markPriceUnavailable", "accountStateUnavailable", "instrumentUnknown"):
                    raise
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            order_id = answer["sendStatus"].get("order_id")
            if order_id:
                await bot.cancel_order(order_id=order_id)
            return answer


async def refused_code(url: str, name: str, size: float = 1) -> str | None:
    try:
        await judged(url, name, size)
    except ExchangeError as exc:
        return exc.code
    return None


@contextlib.asynccontextmanager
async def daemon_on(tmp_path: Path, text: str) -> AsyncIterator[tuple[Daemon, Path, str]]:
    (tmp_path / "main.secret").write_text(TRADE_SECRET + "\n")
    path = tmp_path / "guardian.toml"
    path.write_text(text)
    daemon = await Daemon.start("run", "--config", str(path), env=clean_env(), cwd=tmp_path)
    try:
        await daemon.wait_event("guardian_ready", timeout_s=30)
        yield daemon, path, await daemon.url()
    finally:
        await daemon.kill()


async def reload_over_http(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/guardian/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        return r.status, await r.json()


def digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


@pytest.mark.slow
async def test_reload_while_four_bots_trade_applies_limits_and_bots_and_refuses_a_bad_file(
    tmp_path: Path,
) -> None:
    async with running_sim(budget_capacity=1_000_000) as sim, aiohttp.ClientSession() as http:
        await four_bots(tmp_path, sim, http)


async def four_bots(tmp_path: Path, sim: Simulator, http: aiohttp.ClientSession) -> None:
    first = config_text(sim.url, bots=["b1", "b2", "b3", "b4"], max_position=50)
    async with daemon_on(tmp_path, first) as (daemon, path, url):
        for name in ("b1", "b2", "b3", "b4"):
            assert (await judged(url, name))["sendStatus"]["status"] == "placed"
        assert (await judged(url, "b1", size=11))["sendStatus"]["status"] == "placed"  # 11 <= 50
        _, state = await get_json(http, url + "/guardian/state")
        assert state["config"]["hash"] == digest(path)
        loops = [Loop(name, url, BOTS[name]) for name in ("b1", "b2", "b3", "b4")]
        tasks = [asyncio.create_task(loop.run()) for loop in loops]
        await wait_for(lambda: all(loop.placed >= 3 for loop in loops), 15, "every bot trading")

        # 1. SIGHUP: max_position lowered to 10, b4 removed, b5 added.
        path.write_text(config_text(sim.url, bots=["b1", "b2", "b3", "b5"], max_position=10))
        reloaded_at = time.time()
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: events(daemon, "config_reloaded"), 10, "config_reloaded")
        assert await refused_code(url, "b1", size=11) == "positionLimitExceeded"  # the next order
        assert (await judged(url, "b5"))["sendStatus"]["status"] == "placed"  # the added bot works
        await wait_for(lambda: loops[3].failures, 10, "the removed bot refused")
        assert [code for _, code in loops[3].failures] == ["authenticationError"]
        assert loops[3].failures[0][0] >= reloaded_at
        before = [loop.placed for loop in loops[:3]]
        await wait_for(
            lambda: all(loop.placed >= n + 3 for loop, n in zip(loops[:3], before, strict=True)),
            15,
            "the kept bots trading on after the reload",
        )
        [reloaded] = events(daemon, "config_reloaded")
        assert reloaded["via"] == "SIGHUP" and reloaded["hash"] == digest(path)
        assert "accounts[main].guard.max_position" in reloaded["changed"]
        assert "accounts[main].clients[b4] removed" in reloaded["changed"]
        assert "accounts[main].clients[b5] added" in reloaded["changed"]
        good = digest(path)

        # 2. An invalid file: refused whole, with the reason; the rules in force stay.
        path.write_text(config_text(sim.url, bots=["b1", "b2", "b3"], max_position=-1))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: events(daemon, "config_reload_failed"), 10, "config_reload_failed")
        [failed] = events(daemon, "config_reload_failed")
        assert "max_position" in failed["error"] and failed["via"] == "SIGHUP"
        assert (await judged(url, "b5"))["sendStatus"]["status"] == "placed"  # b5 was not removed
        assert await refused_code(url, "b1", size=11) == "positionLimitExceeded"  # still 10

        # 3. Over HTTP: a change that needs a restart is named and refused; then a good one applies.
        restart = config_text(sim.url, bots=["b1", "b2", "b3", "b5"], max_position=50).replace(
            'path = "journal.sqlite3"', 'path = "elsewhere.sqlite3"'
        )
        path.write_text(restart)
        status, answer = await reload_over_http(http, url)
        assert status == 422 and answer["restart_only"] == ["journal.path"]
        assert "journal.path" in answer["message"] and answer["hash"] == good
        path.write_text(config_text(sim.url, bots=["b1", "b2", "b3", "b5"], max_position=50))
        status, answer = await reload_over_http(http, url)
        assert status == 200 and answer["changed"] == ["accounts[main].guard.max_position"]
        assert (await judged(url, "b1", size=11))["sendStatus"]["status"] == "placed"
        _, state = await get_json(http, url + "/guardian/state")
        assert state["config"]["hash"] == digest(path) == answer["hash"]
        found = await scrape(http, url)
        assert metric(found, "guardian_config_reload_failures_total") == 2
        assert metric(found, "guardian_config_reloads_total") == 2

        for loop in loops:
            loop.stop = True
        await asyncio.gather(*tasks)
        # No kept bot's request failed, for any reason, across three reloads.
        assert [loop.failures for loop in loops[:3]] == [[], [], []]
        # The switch beat on undisturbed: armed throughout (a beat late by 2 s would have left it degraded),
        # no beat late by as much as two refresh intervals.
        changes = events(daemon, "switch_state_changed")
        assert [e["state"] for e in changes] == ["starting", "armed"]
        lates = [e["late_s"] for e in events(daemon, "switch_beat")]
        assert lates and max(lates) < 1.0  # a beat is 0.3-0.5 s; the timer 3 s
        code, _ = await daemon.signal_and_wait(signal.SIGTERM)
        assert code == 0
    rows = read_journal(tmp_path / "journal.sqlite3")
    kinds = [r["kind"] for r in rows if r["type"] == "event" and r["kind"].startswith("config_")]
    assert kinds == ["config_reloaded", "config_reload_failed", "config_reload_failed", "config_reloaded"]
    logged = daemon.output()
    for _, secret in BOTS.values():
        assert secret not in logged
    assert TRADE_SECRET not in logged and ADMIN_TOKEN not in logged


# ---- keys rotate and revoke while a bot trades, applied by SIGHUP -----------------------------------------


@dataclass
class Rotating:
    """A bot that reads and trades in a loop with whichever key it holds now; every failure recorded."""

    url: str
    key: tuple[str, str]
    requests: int = 0
    orders: int = 0
    failures: list[str] = field(default_factory=list)
    stop: bool = False

    async def run(self) -> None:
        last_order = 0.0
        while not self.stop:
            key, secret = self.key
            async with KrakenClient(self.url, Credentials(key, ApiSecret(secret)), timeout_s=5) as bot:
                try:
                    await bot.open_orders()
                    # Within init's limits: 100 cost units per 10 s for the bot (a read costs 2, an order
                    # and its cancel 20: about 60 here), 30 orders a minute, no same order twice within 2 s.
                    if time.monotonic() - last_order > 5:
                        last_order = time.monotonic()
                        self.orders += 1
                        price = float(ORDER["limitPrice"]) - self.orders % 50
                        sent = await bot.send_order(**{**ORDER, "limitPrice": price})
                        await bot.cancel_order(order_id=sent["sendStatus"]["order_id"])
                    self.requests += 1
                except ExchangeError as exc:
                    self.failures.append(f"{key[:5]}: {exc.code}: {exc}")
            await asyncio.sleep(1.0)


@pytest.mark.slow
async def test_keys_rotate_while_a_bot_trades_no_request_fails_and_revoke_ends_the_old_key(
    tmp_path: Path,
) -> None:
    async with running_sim(budget_capacity=1_000_000) as sim:
        done = init(tmp_path, base_url=sim.url, bots=1)
        assert done.returncode == 0, done.stderr
        [(old_key, old_secret)] = printed_bots(done.stdout).values()
        config = with_note(tmp_path)
        daemon = await start_daemon(tmp_path)
        try:
            url = await daemon.url()
            assert (await send_when_judged(url, old_key, old_secret))["sendStatus"]["status"] == "placed"
            async with KrakenClient(url, Credentials(old_key, ApiSecret(old_secret)), timeout_s=5) as bot:
                await bot.cancel_all_orders()
            trader = Rotating(url, (old_key, old_secret))
            task = asyncio.create_task(trader.run())
            await wait_for(lambda: trader.requests >= 3, 10, "the bot trading")

            rotated = keys_cmd(config, "rotate", "--bot", "bot-1")
            assert rotated.returncode == 0, rotated.stderr
            [(new_key, new_secret)] = printed_bots(rotated.stdout).values()
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: events(daemon, "config_reloaded"), 10, "the rotation reloaded")
            count = trader.requests
            await wait_for(lambda: trader.requests >= count + 4, 10, "the old key still working")
            trader.key = (new_key, new_secret)  # the bot switches at its own pace
            count = trader.requests
            await wait_for(
                lambda: trader.orders >= 3 and trader.requests >= count + 6, 20, "the new key trading"
            )

            revoked = keys_cmd(config, "revoke", "--bot", "bot-1", "--key", old_key)
            assert revoked.returncode == 0, revoked.stderr
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: len(events(daemon, "config_reloaded")) == 2, 10, "the revocation reloaded")
            async with KrakenClient(url, Credentials(old_key, ApiSecret(old_secret)), timeout_s=5) as bot:
                with pytest.raises(ExchangeError) as caught:
                    await bot.open_orders()
                assert caught.value.code == "authenticationError"
            count = trader.requests
            await wait_for(lambda: trader.requests >= count + 4, 10, "the new key trading on")
            trader.stop = True
            await task
            assert trader.failures == []
            code, _ = await daemon.signal_and_wait(signal.SIGTERM)
            assert code == 0
        finally:
            await daemon.kill()
    assert NOTE in config.read_text()  # the operator's comment survived both edits
    logged = daemon.output()
    assert old_secret not in logged and new_secret not in logged and TRADE_SECRET not in logged


# ---- what may change in place, and what needs a restart (pure) --------------------------------------------


def parsed(text: str, tmp_path: Path) -> Any:
    (tmp_path / "main.secret").write_text(TRADE_SECRET + "\n")
    return parse_config(text, base_dir=tmp_path, env={})


BASE = "http://127.0.0.1:9"


def test_limits_bots_and_budgets_change_in_place_and_are_named(tmp_path: Path) -> None:
    old = parsed(config_text(BASE, bots=["b1", "b2"], max_position=50), tmp_path)
    new = parsed(
        config_text(BASE, bots=["b1", "b3"], max_position=5, extra_guard="max_open_orders = 7").replace(
            "[journal]", "public_rate_limit = 3\n[journal]"
        ),
        tmp_path,
    )
    assert restart_only(old, new) == []
    assert changed_in_place(old, new) == [
        "server.public_rate_limit",
        "accounts[main].guard.max_position",
        "accounts[main].guard.max_open_orders",
        "accounts[main].clients[b3] added",
        "accounts[main].clients[b2] removed",
    ]
    assert changed_in_place(old, old) == []


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("127.0.0.1:0", "127.0.0.1:8799"), "server.listen"),
        (
            (f'admin_token = "{ADMIN_TOKEN}"', 'admin_token = "another-admin-token-0123456789abcd"'),
            "server.admin_token",
        ),
        (('path = "journal.sqlite3"', 'path = "other.sqlite3"'), "journal.path"),
        (('level = "debug"', 'level = "info"'), "log.level"),
        ((BASE, "http://127.0.0.1:10"), "accounts[main].base_url"),
        ((f'api_key = "{TRADE_KEY}"', 'api_key = "another-exchange-key"'), "accounts[main].api_key"),
        (("timeout_s = 3", "timeout_s = 4"), "accounts[main].switch"),
        (("rate_budget = 100000", "rate_budget = 500"), "accounts[main].guard.rate_budget"),
        (('name = "main"', 'name = "renamed"'), "accounts: 'renamed' added"),
    ],
)
def test_a_change_that_needs_a_restart_is_named(tmp_path: Path, edit: tuple[str, str], named: str) -> None:
    text = config_text(BASE, bots=["b1"], max_position=50)
    assert edit[0] in text
    old, new = parsed(text, tmp_path), parsed(text.replace(edit[0], edit[1], 1), tmp_path)
    assert named in restart_only(old, new)


def test_a_new_exchange_secret_needs_a_restart_and_is_named_never_shown(tmp_path: Path) -> None:
    text = config_text(BASE, bots=["b1"], max_position=50)
    old = parsed(text, tmp_path)
    new = replace(old, accounts=(replace(old.accounts[0], api_secret=ApiSecret(BOTS["b2"][1])),))
    found = restart_only(old, new)
    assert found == ["accounts[main].api_secret"]
    assert BOTS["b2"][1] not in " ".join(found) and TRADE_SECRET not in " ".join(found)


async def test_sighup_under_run_sim_is_refused_in_the_log_and_the_daemon_keeps_running(
    tmp_path: Path,
) -> None:
    """Without a file there is nothing to re-read; a SIGHUP (log rotation scripts send them) never stops it."""
    daemon = await Daemon.start("run", "--sim", "--listen", "127.0.0.1:0", env=clean_env(), cwd=tmp_path)
    try:
        await daemon.wait_event("guardian_ready", timeout_s=30)
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await daemon.wait_event("config_reload_failed")
        assert "--sim" in failed["error"]
        assert daemon.proc.returncode is None
        async with aiohttp.ClientSession() as http:
            status, _ = await get_json(http, await daemon.url() + "/readyz")
        assert status == 200
        code, _ = await daemon.signal_and_wait(signal.SIGTERM)
        assert code == 0
    finally:
        await daemon.kill()
