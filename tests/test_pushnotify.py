"""Push notifications (issue 22) against real receivers on loopback that speak each dialect (a JSON
webhook, Slack's incoming webhook, Telegram's `sendMessage`), with the simulator and a real daemon: an
expiry is heard within 2 s, a receiver that fails and recovers gets the message once, a hung one delays
no order and no beat, a storm is folded with its count, the last messages leave at stop within its bound,
no secret is told or logged, and `guardian notify-test` says which notifier failed. The `[[notify]]`
table's validation names the key."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guardian import logs
from guardian.config import (
    NOTIFY_EVENTS,
    ClientConfig,
    Config,
    GuardConfig,
    JournalConfig,
    NotifyConfig,
    ServerConfig,
    StreamConfig,
    SwitchConfig,
)
from guardian.errors import ConfigError
from guardian.notify import Notifier
from guardian.push import Note
from guardian.push.messages import TITLES
from guardian.secret import Secret
from guardian.service import NOTIFY_FLUSH_S, Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.switch import SwitchState
from tests.daemon import FAST, NO_STREAM, account_config, wait_for
from tests.test_config import doc, parse
from tests.test_exposure import ADMIN, BASE, MKT, STREAM, below, bot, client, exchange, limit_buy

__all__ = ["exchange"]  # the fixture

HOOK_SECRET = "hook-query-token-4b1d0c9e"
SLACK_SECRET = "slackPathSecret7f3e2a1b"
TG_TOKEN = "123456789:AAtelegramTokenSecret-x_91c"
SECRETS = (HOOK_SECRET, SLACK_SECRET, TG_TOKEN, ADMIN)


# ---- receivers that speak each dialect -----------------------------------------------------------------


@dataclass
class Got:
    dialect: str
    body: dict[str, Any]
    at: float  # monotonic

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))

    @property
    def event(self) -> str:
        if self.dialect == "webhook":
            return str(self.body["event"])
        headline = self.text.splitlines()[0]
        return next(event for event, title in TITLES.items() if headline.endswith(f": {title}"))


@dataclass
class Receiver:
    """One HTTP server for all three dialects, by path: `/hook` (webhook), `/services/...` (Slack),
    `/bot<token>/sendMessage` (Telegram, which refuses another token as Telegram does)."""

    fail: int = 0  # answer this many requests with 500 first
    throttle: int = 0  # then this many with 429, "retry after 1 s" (Telegram in its body, others in a header)
    hang: bool = False  # never answer (until closed)
    got: list[Got] = field(default_factory=list)
    attempts: int = 0
    attempted_at: list[float] = field(default_factory=list)
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.add_routes([web.post("/{tail:.*}", self.handle)])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        self.attempted_at.append(time.monotonic())
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500, text="<html>upstream broke</html>")
        if self.throttle > 0:
            self.throttle -= 1
            if request.path.endswith("/sendMessage"):
                body = {"ok": False, "description": "Too Many Requests", "parameters": {"retry_after": 1}}
                return web.json_response(body, status=429)
            return web.Response(status=429, headers={"Retry-After": "1"})
        body = await request.json()
        path = request.path
        if path.startswith("/bot") and path.endswith("/sendMessage"):
            if path != f"/bot{TG_TOKEN}/sendMessage":
                description = (
                    f"Unauthorized: no bot {path[4:-12]}"  # echoes the token, as a careless one might
                )
                return web.json_response({"ok": False, "description": description}, status=401)
            assert set(body) == {"chat_id", "text"}
            self.got.append(Got("telegram", body, time.monotonic()))
            return web.json_response({"ok": True, "result": {"message_id": len(self.got)}})
        if path.startswith("/services/"):
            assert set(body) == {"text"} and path.endswith(SLACK_SECRET)
            self.got.append(Got("slack", body, time.monotonic()))
            return web.Response(text="ok")
        assert path == "/hook" and request.query.get("token") == HOOK_SECRET
        self.got.append(Got("webhook", body, time.monotonic()))
        return web.Response(status=204)

    def of(self, event: str, dialect: str | None = None) -> list[Got]:
        return [g for g in self.got if g.event == event and (dialect is None or g.dialect == dialect)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    try:
        yield found
    finally:
        await found.close()


def webhook(receiver: Receiver, name: str = "hook", **settings: Any) -> NotifyConfig:
    url = Secret(f"{receiver.url}/hook?token={HOOK_SECRET}")
    return NotifyConfig(name, "webhook", url=url, **{"min_interval_s": 0.0, **settings})


def slack(receiver: Receiver, name: str = "slack", **settings: Any) -> NotifyConfig:
    url = Secret(f"{receiver.url}/services/T0001/B0001/{SLACK_SECRET}")
    return NotifyConfig(name, "slack", url=url, **{"min_interval_s": 0.0, **settings})


def telegram(
    receiver: Receiver, name: str = "telegram", token: str = TG_TOKEN, **settings: Any
) -> NotifyConfig:
    return NotifyConfig(
        name,
        "telegram",
        bot_token=Secret(token),
        chat_id="-100200300",
        api_url=receiver.url,
        **{"min_interval_s": 0.0, **settings},
    )


DIALECTS = {"webhook": webhook, "slack": slack, "telegram": telegram}


@contextlib.asynccontextmanager
async def daemon(
    base_url: str,
    tmp_path: Path,
    *notify: NotifyConfig,
    switch: SwitchConfig = FAST,
    guard: GuardConfig | None = None,
    clients: tuple[ClientConfig, ...] = (),
    stream: StreamConfig = NO_STREAM,
) -> AsyncIterator[Service]:
    """A started daemon with these notifiers and an admin token, its secrets registered as the CLI does."""
    account = account_config(base_url, switch=switch, guard=guard, clients=clients, stream=stream)
    config = Config(
        accounts=(account,),
        server=ServerConfig("127.0.0.1", 0, Secret(ADMIN)),
        journal=JournalConfig(tmp_path / "journal.sqlite3", commit_on_loop=True),
        notify=notify,
    )
    logs.REDACTOR.register(config.all_secrets())
    service = Service(config, notifier=Notifier({}))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def admin(service: Service, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(service.url + path, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


def sample(service: Service, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def armed(service: Service) -> bool:
    return service.accounts[0].switch.state is SwitchState.ARMED


def ready(service: Service) -> bool:
    """Armed, the account's link up and fresh, a mark: a bot's order can be judged."""
    stream = service.streams[0]
    marked = service.accounts[0].marks.mark("PF_XBTUSD") is not None
    return armed(service) and stream.link.up and stream.fresh() and marked


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked: {text[:400]}"


# ---- the switch -----------------------------------------------------------------------------------------


async def test_a_switch_expiry_at_the_simulator_reaches_every_dialect_within_2_s(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    notifiers = (
        webhook(receiver, degraded_for_s=0.5),
        slack(receiver, degraded_for_s=0.5),
        telegram(receiver, degraded_for_s=60.0),  # a short failure is not worth its while
    )
    async with daemon(sim.url, tmp_path, *notifiers) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallordersafter", "error", code="authenticationError"))
        await wait_for(lambda: sim.switch_remaining("main") is None, 6.0, "the exchange's timer running out")
        expired_at = time.monotonic()  # (give or take the 20 ms poll)
        await wait_for(lambda: len(receiver.of("switch_expired")) == 3, 2.0, "the expiry, in three dialects")
        for got in receiver.of("switch_expired"):
            assert got.at - expired_at < 2.0
            assert "main: switch EXPIRED" in got.text and "authentication" in got.text
            assert "assume the exchange cancelled every open order" in got.text
            assert f"Look: guardian status --url {service.url}" in got.text
        [hook] = receiver.of("switch_expired", "webhook")
        assert set(hook.body) == {"event", "account", "bot", "text", "time", "count"}
        assert (hook.body["account"], hook.body["bot"], hook.body["count"]) == ("main", None, 1)
        assert sorted(g.dialect for g in receiver.of("switch_degraded")) == ["slack", "webhook"]
        assert receiver.of("switch_degraded")[0].at < hook.at

        sim.faults.clear()
        await wait_for(lambda: len(receiver.of("switch_rearmed")) == 3, 5.0, "the re-arm, in three dialects")
        assert all("armed again after it was expired" in g.text for g in receiver.of("switch_rearmed"))
    assert len(receiver.of("switch_expired")) == 3  # told once each


async def test_a_short_degraded_episode_tells_nobody_and_its_end_neither(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    async with daemon(sim.url, tmp_path, webhook(receiver, degraded_for_s=5.0)) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallordersafter", "status", status=503, times=2))
        await wait_for(lambda: service.accounts[0].switch.state is SwitchState.DEGRADED, 3.0, "degraded")
        await wait_for(lambda: armed(service) and not sim.faults.snapshot(), 3.0, "armed again")
        await asyncio.sleep(0.5)
        assert [g.event for g in receiver.got] == ["daemon_started"]


async def test_maintenance_its_mode_change_and_a_stale_account_state_are_told(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    guard = GuardConfig(**{**_fields(BASE), "maintenance_reduce_only_s": 1.0})
    events = frozenset({"maintenance_notice", "mode_changed", "account_state_stale"})
    async with daemon(
        exchange.url, tmp_path, webhook(receiver, events=events), guard=guard, stream=STREAM
    ) as service:
        stream = service.streams[0]
        await wait_for(lambda: armed(service) and stream.link.up and stream.fresh(), 10.0, "armed and fresh")
        exchange.exchange.post_notice(
            note="database upgrade",
            notice_type="maintenance",
            priority="high",
            effective_time_ms=int((time.time() + 2.0) * 1000),
        )
        await wait_for(lambda: receiver.of("maintenance_notice"), 3.0, "the notice told")
        [notice] = receiver.of("maintenance_notice")
        assert "the exchange announced maintenance at" in notice.text and "database upgrade" in notice.text
        assert "will move the account to reduce_only 1 s before it" in notice.text
        await wait_for(lambda: receiver.of("mode_changed"), 3.0, "reduce_only ahead of it, told")
        moved = receiver.of("mode_changed")[0]
        assert "went from active to reduce_only (by maintenance: " in moved.text
        assert moved.body["account"] == "main" and moved.body["bot"] is None

        exchange.stream.stall()  # no data, no heartbeat: the link goes down
        exchange.faults.add(Fault("openorders", "error", code="Unavailable", status=503))  # REST cannot say
        await wait_for(lambda: receiver.of("account_state_stale"), 8.0, "the stale state told")
        stale = receiver.of("account_state_stale")[0].text
        assert "main: account state STALE" in stale and "accountStateUnavailable" in stale
    assert len(receiver.of("maintenance_notice")) == 1  # each notice once


# ---- delivery ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DIALECTS))
async def test_a_receiver_that_answers_500_then_recovers_gets_the_message_once(
    sim: Simulator, receiver: Receiver, tmp_path: Path, kind: str
) -> None:
    receiver.fail = 2
    async with daemon(sim.url, tmp_path, DIALECTS[kind](receiver, kind)) as service:
        await wait_for(lambda: receiver.of("daemon_started"), 5.0, "the start, after two failures")
        await asyncio.sleep(0.3)
        assert len(receiver.of("daemon_started")) == 1 and receiver.attempts == 3
        assert sample(service, "guardian_notify_failures_total", notifier=kind) == 2
        assert sample(service, "guardian_notify_sent_total", notifier=kind) == 1
        [state] = service.pushes.state_json()
        assert (state["sent"], state["failures"], state["dropped"], state["last_error"]) == (1, 2, 0, None)
        [got] = receiver.of("daemon_started")
        assert "all accounts: started" in got.text and "main (active)" in got.text


@pytest.mark.parametrize("kind", ["webhook", "telegram"])
async def test_a_429_is_retried_no_sooner_than_the_receiver_asks(
    sim: Simulator, receiver: Receiver, tmp_path: Path, kind: str
) -> None:
    receiver.throttle = 1
    async with daemon(sim.url, tmp_path, DIALECTS[kind](receiver, kind)):
        await wait_for(lambda: receiver.of("daemon_started"), 5.0, "the start, after a 429")
        first, second = receiver.attempted_at[:2]
        assert second - first >= 0.95  # the backoff alone would have been 0.4 to 0.6 s


async def test_a_hung_receiver_delays_no_order_and_no_switch_beat(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    guard = GuardConfig(**{**_fields(BASE), "max_position": 100, "max_daily_loss": 1e9})
    notifier = webhook(receiver, timeout_s=2.0)
    async with (
        daemon(exchange.url, tmp_path, notifier, guard=guard, clients=(client(0),), stream=STREAM) as service,
        bot(service) as b,
    ):
        await wait_for(lambda: ready(service), 10.0, "armed, link up, a mark")

        async def orders(count: int = 20) -> list[float]:
            took = []
            for _ in range(count):
                started = time.perf_counter()
                answer = await b.send_order(**limit_buy(below(exchange, 5)))
                took.append(time.perf_counter() - started)
                await b.cancel_order(order_id=answer["sendStatus"]["order_id"])
            return took

        def beats() -> tuple[float, float]:
            """Beats so far, and those more than 50 ms late."""
            total = sample(service, "guardian_switch_beat_delay_seconds_count", account="main")
            on_time = sample(service, "guardian_switch_beat_delay_seconds_bucket", account="main", le="0.05")
            return total, total - on_time

        beats_before = beats()
        calm = await orders()
        await asyncio.sleep(1.0)
        beats_calm = beats()

        receiver.hang = True
        for i in range(200):  # every kind and account distinct: nothing folds, the queue fills up
            service.pushes.push(Note("kill", f"acct-{i}", "bot", "what", "did", "look"))
        await wait_for(lambda: receiver.attempts >= 2, 2.0, "the sender stuck on the hung receiver")
        hung = await orders()
        await asyncio.sleep(1.0)
        beats_hung = beats()

        calm_beats, calm_late = beats_calm[0] - beats_before[0], beats_calm[1] - beats_before[1]
        hung_beats, hung_late = beats_hung[0] - beats_calm[0], beats_hung[1] - beats_calm[1]
        assert calm_beats >= 2 and hung_beats >= 2
        assert (calm_late, hung_late) == (0, 0)
        # The same order of magnitude: no order waited behind a notification.
        assert statistics.median(hung) < 5 * statistics.median(calm) + 0.02, (calm, hung)
        assert max(hung) < 0.5
        assert service.loop_watch.longest_s < 0.1
        [state] = service.pushes.state_json()
        assert state["queued"] > 0 and state["dropped"] > 0  # bounded: the rest were dropped, counted
        assert sample(service, "guardian_notify_dropped_total", notifier="hook", reason="queue_full") > 0

        started = time.monotonic()
        await service.stop()  # the hung receiver holds the stop no longer than the flush bound
        assert time.monotonic() - started < NOTIFY_FLUSH_S + 2.0
        assert sample(service, "guardian_notify_dropped_total", notifier="hook", reason="shutdown") > 0


async def test_at_stop_held_messages_are_flushed_with_the_stopping_one(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    notifier = webhook(receiver, min_interval_s=60.0, events=frozenset({"mode_changed", "daemon_stopping"}))
    async with daemon(sim.url, tmp_path, notifier) as service:
        for mode in ("reduce_only", "halted", "active"):
            status, _ = await admin(service, "/guardian/mode", {"account": "main", "mode": mode})
            assert status == 200
        await wait_for(lambda: receiver.of("mode_changed"), 2.0, "the first mode change")
        await asyncio.sleep(0.3)
        assert len(receiver.of("mode_changed")) == 1  # the next two are held for 60 s
        assert (
            "went from active to reduce_only (by admin: admin request)" in receiver.of("mode_changed")[0].text
        )
    held = receiver.of("mode_changed")
    assert len(held) == 2 and held[1].body["count"] == 2  # flushed at the stop, folded
    assert "went from halted to active" in held[1].text and "2 mode_changed events for main" in held[1].text
    [stopping] = receiver.of("daemon_stopping")
    assert "on shutdown: main: keep" in stopping.text


# ---- storms --------------------------------------------------------------------------------------------


async def test_a_storm_of_100_trips_gives_one_message_per_min_interval_with_the_count(
    exchange: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    guard = GuardConfig(**{**_fields(BASE), "max_position": 100, "max_fills_per_minute": 1})
    interval = 1.0
    notifier = webhook(receiver, min_interval_s=interval, events=frozenset({"trip", "mode_changed"}))
    async with (
        daemon(exchange.url, tmp_path, notifier, guard=guard, clients=(client(0),), stream=STREAM) as service,
        bot(service) as b,
    ):
        account = service.accounts[0]
        await wait_for(lambda: ready(service), 10.0, "armed, link up, a mark")
        for i in range(100):  # a fill trips the account; a person lifts it; again
            await b.send_order(**{**MKT, "side": "buy" if i % 2 == 0 else "sell"})
            await wait_for(lambda: account.trip is not None, 3.0, f"trip {i}")
            status, _ = await admin(service, "/guardian/mode", {"account": "main", "mode": "active"})
            assert status == 200
        await wait_for(
            lambda: sum(g.body["count"] for g in receiver.of("trip")) == 100,
            2 * interval + 1,
            "every trip told",
        )
    for event in ("trip", "mode_changed"):
        told = receiver.of(event)
        assert sum(g.body["count"] for g in told) == 100
        assert told[0].body["count"] == 1 and max(g.body["count"] for g in told) > 1
        assert len(told) < 100
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(told)]
        assert min(gaps) > interval * 0.9, gaps  # at most one per min_interval_s
    folded = next(g for g in receiver.of("trip") if g.body["count"] > 1)
    assert f"{folded.body['count']} trip events for main since" in folded.text
    assert (
        "max_fills_per_minute tripped" in folded.text and "halted and cancels its open orders" in folded.text
    )
    assert sample(service, "guardian_notify_folded_total", notifier="hook") > 0


# ---- secrets -------------------------------------------------------------------------------------------


async def test_no_secret_appears_in_a_message_a_log_the_state_or_the_metrics(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    try:
        notifiers = (
            webhook(receiver),
            slack(receiver),
            telegram(receiver),
            telegram(receiver, "wrong-token", token="987654321:BBanotherTelegramSecret_77"),
        )
        async with daemon(sim.url, tmp_path, *notifiers) as service, aiohttp.ClientSession() as http:
            status, _ = await admin(service, "/guardian/kill", {"account": "main"})
            assert status == 200
            await wait_for(lambda: len(receiver.of("kill")) == 3, 3.0, "the kill, in three dialects")

            def refused() -> dict[str, Any]:
                return next(n for n in service.pushes.state_json() if n["name"] == "wrong-token")

            await wait_for(lambda: refused()["dropped"] == 2, 3.0, "the refused token's two messages")
            async with http.get(service.url + "/guardian/state") as response:
                state = await response.text()
            async with http.get(service.url + "/metrics") as response:
                metrics = await response.text()
    finally:
        logs.configure("info", "json", io.StringIO())
    [kill] = receiver.of("kill", "webhook")
    assert "killed by an admin request" in kill.text and "cancelled every open order" in kill.text
    assert [n["name"] for n in json.loads(state)["notify"]] == ["hook", "slack", "telegram", "wrong-token"]
    assert str(refused()["last_error"]).startswith("HTTP 401: Unauthorized: no bot ***")
    assert 'guardian_notify_failures_total{notifier="wrong-token"} 2.0' in metrics
    logged = out.getvalue()
    assert '"notify_dropped"' in logged and '"notify_sent"' in logged
    for text in (logged, state, metrics, *(json.dumps(g.body) for g in receiver.got)):
        assert_clean(text)
        assert "987654321:BBanotherTelegramSecret_77" not in text and "BBanotherTelegramSecret" not in text


# ---- guardian notify-test ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NOTIFY_TEST_CONFIG = """
[[accounts]]
name = "main"
api_key = "notify-test-key-0001"
api_secret = "c2VjcmV0IHNlY3JldCBzZWNyZXQ="

[[notify]]
kind = "webhook"
name = "hook"
url = "{hook}"

[[notify]]
kind = "telegram"
bot_token_env = "GUARDIAN_TEST_TG_TOKEN"
chat_id = "-100200300"
api_url = "{api}"

[[notify]]
kind = "slack"
url_env = "GUARDIAN_TEST_SLACK_URL"
"""


async def notify_test(tmp_path: Path, slack_url: str, receiver: Receiver) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(
        NOTIFY_TEST_CONFIG.format(hook=f"{receiver.url}/hook?token={HOOK_SECRET}", api=receiver.url)
    )
    env = {**os.environ, "GUARDIAN_TEST_TG_TOKEN": TG_TOKEN, "GUARDIAN_TEST_SLACK_URL": slack_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "notify-test", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_notify_test_sends_one_message_to_each_notifier_and_exits_0(
    receiver: Receiver, tmp_path: Path
) -> None:
    slack_url = f"{receiver.url}/services/T0001/B0001/{SLACK_SECRET}"
    code, out, err = await notify_test(tmp_path, slack_url, receiver)
    assert code == 0, err
    assert out.splitlines() == [
        "notify hook (webhook): sent",
        "notify telegram (telegram): sent",
        "notify slack (slack): sent",
    ]
    assert sorted(g.dialect for g in receiver.of("notify_test")) == ["slack", "telegram", "webhook"]
    assert_clean(out + err + "".join(g.text for g in receiver.got))


async def test_notify_test_says_which_notifier_failed_and_exits_1(receiver: Receiver, tmp_path: Path) -> None:
    slack_url = f"http://127.0.0.1:{closed_port()}/services/T0001/B0001/{SLACK_SECRET}"
    receiver.fail = 1  # the first to arrive (whichever it is) gets a 500: one attempt only
    code, out, err = await notify_test(tmp_path, slack_url, receiver)
    assert code == 1
    lines = out.splitlines()
    assert "notify slack (slack): FAILED: ClientConnectorError" in lines
    assert sum("FAILED: HTTP 500" in line for line in lines) == 1 and len(lines) == 3
    assert err.startswith("guardian notify-test: failed: ") and "slack" in err
    assert_clean(out + err)


# ---- the [[notify]] table ------------------------------------------------------------------------------

SLACK = f'[[notify]]\nkind = "slack"\nurl = "https://hooks.slack.com/services/T0/B0/{SLACK_SECRET}"\n'
TELEGRAM = f'[[notify]]\nkind = "telegram"\nbot_token = "{TG_TOKEN}"\nchat_id = "42"\n'


def test_notifiers_are_read_with_their_defaults_and_their_secrets_masked() -> None:
    config = parse(doc(tail=SLACK + TELEGRAM + 'min_interval_s = 5\nevents = ["trip", "kill"]\n'))
    hook, tg = config.notify
    assert (hook.name, hook.kind, hook.events, hook.min_interval_s) == (
        "slack",
        "slack",
        frozenset(NOTIFY_EVENTS),
        60.0,
    )
    assert (hook.degraded_for_s, hook.timeout_s) == (10.0, 5.0)
    assert (tg.name, tg.chat_id, tg.api_url, tg.events) == (
        "telegram",
        "42",
        "https://api.telegram.org",
        {"trip", "kill"},
    )
    assert tg.min_interval_s == 5.0
    assert set(config.all_secrets()) >= {Secret(TG_TOKEN), hook.url}
    summary = config.summary()
    assert "notify slack: slack, url ***; every event" in summary
    assert (
        "notify telegram: telegram, chat 42 via https://api.telegram.org, bot_token ***; trip, kill"
        in summary
    )
    assert_clean(summary + repr(config) + "\n".join(config.warnings()))


def test_notifier_secrets_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "tg.token").write_text(TG_TOKEN + "\n")
    text = doc(
        tail='[[notify]]\nkind = "telegram"\nbot_token_file = "tg.token"\nchat_id_env = "CHAT"\n'
        '[[notify]]\nkind = "webhook"\nurl_env = "HOOK"\n'
    )
    config = parse(text, tmp_path, env={"CHAT": "-1001", "HOOK": f"https://example.org/h?t={HOOK_SECRET}"})
    tg, hook = config.notify
    assert tg.bot_token == Secret(TG_TOKEN) and tg.chat_id == "-1001"
    assert hook.url == Secret(f"https://example.org/h?t={HOOK_SECRET}")


def test_plain_http_to_another_machine_is_warned_about() -> None:
    config = parse(doc(tail=f'[[notify]]\nkind = "webhook"\nurl = "http://10.1.2.3/h?t={HOOK_SECRET}"\n'))
    assert (
        "notify[0] (webhook): plain http to another machine: messages travel unencrypted" in config.warnings()
    )
    assert_clean("\n".join(config.warnings()))


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        ('[[notify]]\nurl = "https://x.org"\n', "notify[0].kind is missing: one of 'webhook', 'slack', 'telegram'"),
        ('[[notify]]\nkind = "pager"\n', "notify[0].kind must be one of webhook, slack, telegram, got 'pager'"),
        ('[[notify]]\nkind = "slack"\n', "notify[0].url is missing: set url_file"),
        ('[[notify]]\nkind = "telegram"\nchat_id = "1"\n', "notify[0].bot_token is missing"),
        (TELEGRAM.replace('chat_id = "42"\n', ""), "notify[0].chat_id is missing"),
        (SLACK + f'bot_token = "{TG_TOKEN}"\n', "notify[0].bot_token is not for kind = 'slack': a slack notifier takes url"),
        (TELEGRAM + 'url = "https://x.org"\n', "notify[0].url is not for kind = 'telegram'"),
        (SLACK + "events = []\n", "notify[0].events is empty, so nothing would be sent"),
        (SLACK + 'events = ["trip", "switch_expird"]\n', "notify[0].events[1] ('switch_expird') is not an event: did you mean switch_expired?"),
        (SLACK + "min_interval_s = -1\n", "notify[0].min_interval_s must be at least 0, got -1"),
        (SLACK + 'degraded_for_s = "soon"\n', "notify[0].degraded_for_s must be a number, not a string"),
        (SLACK + "timeout_s = 0\n", "notify[0].timeout_s must be greater than 0"),
        (SLACK + "timeout_s = 600\n", "notify[0].timeout_s must be at most 60"),
        (SLACK + "min_intervall_s = 1\n", "unknown key notify[0].min_intervall_s: did you mean min_interval_s?"),
        (SLACK + SLACK, "notify[1].name ('slack') is already used by notify[0].name: give each notifier its own name"),
        (f'[[notify]]\nkind = "webhook"\nurl = "ftp://x/{HOOK_SECRET}"\n', "notify[0].url must be an http(s) URL with a host (the value is not repeated here: it is a secret)"),
        (TELEGRAM + 'api_url = "localhost:8080"\n', "notify[0].api_url must be an http(s) URL with a host, got 'localhost:8080'"),
        (TELEGRAM.replace(TG_TOKEN, "12:ab/cd"), "notify[0].bot_token has characters a Telegram bot token does not"),
        ('notify = "slack"\n', "notify must be an array of tables: write each entry as [[notify]]"),
    ],
)  # fmt: skip
def test_a_bad_notify_table_is_refused_naming_the_key(tail: str, fragment: str) -> None:
    text = tail + doc() if tail.startswith("notify =") else doc(tail=tail)  # a top-level key goes first
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert fragment in str(caught.value)
    assert_clean(str(caught.value))


def _fields(guard: GuardConfig) -> dict[str, Any]:
    return {f.name: getattr(guard, f.name) for f in dataclasses.fields(guard) if f.init}
