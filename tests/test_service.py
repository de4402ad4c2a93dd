"""The daemon in-process against simulators on loopback: the local endpoints' contract, metrics, several
accounts, each shutdown policy and its failure, health when a switch task dies, a busy port."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardian import __version__
from guardian.config import Config, OnShutdown, ServerConfig, SwitchConfig
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.times import parse_iso
from guardian.notify import Notifier
from guardian.secret import ApiSecret
from guardian.service import SHUTDOWN_ACTION_S, Service
from guardian.sim.app import SimKey, Simulator
from guardian.sim.faults import Fault
from guardian.sim.market import Market
from guardian.switch import SwitchState
from tests.conftest import TRADE_SECRET
from tests.daemon import FAST, account_config, get_json, serving, wait_for

HEDGE_KEY = "sim-hedge-key-0001"
HEDGE_SECRET = base64.b64encode(bytes(range(128, 192))).decode()
ORDER_KEY = "sim-order-key-0001"  # a second trade key on "main": the test's own orders, own nonces
ORDER = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 50000}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def hedge_sim() -> AsyncIterator[Simulator]:
    """A second exchange (its own faults), for a second account."""
    simulator = Simulator(
        [SimKey(HEDGE_KEY, ApiSecret(HEDGE_SECRET), account="hedge")], market=Market(seed=3), tick_s=None
    )
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def orders(sim: Simulator) -> AsyncIterator[KrakenClient]:
    sim.add_key(SimKey(ORDER_KEY, ApiSecret(TRADE_SECRET), account="main"))
    async with KrakenClient(sim.url, Credentials(ORDER_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


def metrics_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels), parsed with Prometheus' own text parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def scrape(
    http: aiohttp.ClientSession, service: Service
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(service.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return metrics_of(await response.text())


def armed(service: Service, name: str = "main") -> bool:
    account = service.account(name)
    return account is not None and account.switch.state is SwitchState.ARMED


# ---- the endpoints ------------------------------------------------------------------------------------


async def test_starting_then_armed_as_every_endpoint_reports_it(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.add(Fault("cancelallordersafter", "latency", latency_s=0.6, times=1))
    async with serving(account_config(sim.url)) as service:
        status, doc = await get_json(http, service.url + "/readyz")
        assert (status, doc) == (503, {"status": "not ready", "reasons": ["main: switch starting"]})
        status, state = await get_json(http, service.url + "/guardian/state")
        assert status == 200
        assert state["accounts"][0]["switch"]["state"] == "starting"
        assert state["accounts"][0]["switch"]["remaining_s"] is None
        assert (await get_json(http, service.url + "/healthz")) == (200, {"status": "ok"})

        await wait_for(lambda: armed(service), what="armed")
        assert (await get_json(http, service.url + "/readyz")) == (200, {"status": "ready"})
        status, state = await get_json(http, service.url + "/guardian/state")
    assert state["version"] == __version__
    assert state["ready"] is True
    [account] = state["accounts"]
    assert account["name"] == "main"
    assert account["mode"] == "active"
    switch = account["switch"]
    contract = {"state", "timeout_s", "remaining_s", "trigger_time", "last_success", "consecutive_failures"}
    assert contract | {"last_error", "refreshes"} <= set(switch)
    assert switch["state"] == "armed"
    assert switch["timeout_s"] == 3
    assert 2.0 < switch["remaining_s"] <= 3.0
    assert switch["consecutive_failures"] == 0
    assert switch["last_error"] is None
    assert switch["refreshes"] >= 1
    for field in ("trigger_time", "last_success"):
        assert switch[field].endswith("Z")
        assert abs(parse_iso(switch[field]) - time.time()) < 5
    assert parse_iso(switch["trigger_time"]) > parse_iso(switch["last_success"])


async def test_readyz_names_the_failure_while_degraded_and_recovers(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallordersafter", "status", status=503))
        switch = service.accounts[0].switch
        await wait_for(lambda: switch.state is SwitchState.DEGRADED, what="degraded")
        status, doc = await get_json(http, service.url + "/readyz")
        assert status == 503
        [reason] = doc["reasons"]
        assert reason.startswith("main: switch degraded (unavailable: cancelallordersafter: HTTP 503")
        _, state = await get_json(http, service.url + "/guardian/state")
        assert state["accounts"][0]["switch"]["consecutive_failures"] >= 1
        assert state["accounts"][0]["switch"]["last_error"].startswith("unavailable: ")
        assert (await get_json(http, service.url + "/healthz"))[0] == 200  # alive, only not ready
        found = await scrape(http, service)
        assert sample(found, "guardian_switch_armed", account="main") == 0
        assert sample(found, "guardian_switch_state", account="main", state="degraded") == 1
        assert sample(found, "guardian_switch_refreshes_total", account="main", outcome="unavailable") >= 1
        sim.faults.clear()
        await wait_for(lambda: armed(service), what="re-armed")
        assert (await get_json(http, service.url + "/readyz"))[0] == 200


async def test_expired_is_reported_everywhere(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallordersafter", "error", code="authenticationError"))
        switch = service.accounts[0].switch
        await wait_for(lambda: switch.state is SwitchState.EXPIRED, timeout_s=6, what="expired")
        status, doc = await get_json(http, service.url + "/readyz")
        assert status == 503
        assert doc["reasons"][0].startswith("main: switch expired (authentication: ")
        found = await scrape(http, service)
        assert sample(found, "guardian_switch_state", account="main", state="expired") == 1
        assert sample(found, "guardian_switch_remaining_seconds", account="main") == 0
        assert sample(found, "guardian_switch_trigger_timestamp_seconds", account="main") == 0
        assert sample(found, "guardian_switch_refreshes_total", account="main", outcome="authentication") >= 1
        sim.faults.clear()
        await wait_for(lambda: armed(service), what="re-armed after expiry")
        found = await scrape(http, service)
        assert sample(found, "guardian_switch_rearms_after_expiry_total", account="main") == 1


async def test_metrics_carry_every_contract_name_with_truthful_values(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(
            lambda: armed(service) and service.accounts[0].switch.refreshes >= 2, what="two refreshes"
        )
        found = await scrape(http, service)
        switch = service.accounts[0].switch
        sim_remaining = sim.switch_remaining("main")
    assert sample(found, "guardian_build_info", version=__version__) == 1
    assert sample(found, "guardian_switch_armed", account="main") == 1
    states = {
        state.value: sample(found, "guardian_switch_state", account="main", state=state.value)
        for state in SwitchState
    }
    assert states == {"starting": 0, "armed": 1, "degraded": 0, "expired": 0, "disarmed": 0}
    remaining = sample(found, "guardian_switch_remaining_seconds", account="main")
    assert sim_remaining is not None
    assert 0 < remaining <= sim_remaining + 0.05  # never more than the exchange really has left
    last_success = sample(found, "guardian_switch_last_success_timestamp_seconds", account="main")
    assert abs(last_success - time.time()) < 2
    trigger = sample(found, "guardian_switch_trigger_timestamp_seconds", account="main")
    assert 0 < trigger - time.time() <= 3.1
    assert abs(sample(found, "guardian_exchange_clock_skew_seconds", account="main")) < 0.5
    successes = sample(found, "guardian_switch_refreshes_total", account="main", outcome="success")
    assert successes >= 2
    for outcome in ("authentication", "rate_limited", "unavailable", "error"):
        assert sample(found, "guardian_switch_refreshes_total", account="main", outcome=outcome) == 0
    assert sample(found, "guardian_switch_refresh_duration_seconds_count", account="main") == successes
    assert (
        sample(found, "guardian_switch_refresh_duration_seconds_bucket", account="main", le="+Inf")
        == successes
    )
    assert (
        sample(found, "guardian_switch_consecutive_failures", account="main")
        == switch.consecutive_failures
        == 0
    )


async def test_clock_skew_is_measured_and_changes_nothing_else(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.exchange.clock_offset_s = -120.0
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: armed(service), what="armed")
        found = await scrape(http, service)
        _, state = await get_json(http, service.url + "/guardian/state")
    assert -120.5 < sample(found, "guardian_exchange_clock_skew_seconds", account="main") < -119.5
    assert 2.0 < sample(found, "guardian_switch_remaining_seconds", account="main") <= 3.0
    assert -120.5 < state["accounts"][0]["switch"]["clock_skew_s"] < -119.5


async def test_two_accounts_each_have_their_own_switch_state_and_metrics(
    sim: Simulator, hedge_sim: Simulator, http: aiohttp.ClientSession
) -> None:
    main = account_config(sim.url)
    hedge = account_config(hedge_sim.url, name="hedge", key=HEDGE_KEY, secret=HEDGE_SECRET)
    async with serving(main, hedge) as service:
        await wait_for(lambda: armed(service, "main") and armed(service, "hedge"), what="both armed")
        assert (await get_json(http, service.url + "/readyz"))[0] == 200
        hedge_sim.faults.add(Fault("cancelallordersafter", "drop"))
        hedge_switch = service.accounts[1].switch
        await wait_for(lambda: hedge_switch.state is SwitchState.DEGRADED, what="hedge degraded")
        assert armed(service, "main")
        status, doc = await get_json(http, service.url + "/readyz")
        assert status == 503
        assert [reason.split(" (")[0] for reason in doc["reasons"]] == ["hedge: switch degraded"]
        _, state = await get_json(http, service.url + "/guardian/state")
        assert [(a["name"], a["switch"]["state"]) for a in state["accounts"]] == [
            ("main", "armed"),
            ("hedge", "degraded"),
        ]
        found = await scrape(http, service)
        assert sample(found, "guardian_switch_armed", account="main") == 1
        assert sample(found, "guardian_switch_armed", account="hedge") == 0
        assert sample(found, "guardian_switch_refreshes_total", account="main", outcome="unavailable") == 0
        assert sample(found, "guardian_switch_refreshes_total", account="hedge", outcome="unavailable") >= 1
        assert service.status_line() == "switch: main armed, hedge degraded"
    assert sim.switch_remaining("main") is not None  # keep: both timers left running
    assert {r["api_key"] for r in sim.requests if r["api_key"]} == {main.api_key}  # tickers: unsigned
    assert {r["api_key"] for r in hedge_sim.requests if r["api_key"]} == {HEDGE_KEY}


# ---- health ---------------------------------------------------------------------------------------------


async def test_a_dead_switch_task_makes_healthz_fail_and_withholds_the_watchdog(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: armed(service), what="armed")
        assert service.healthy()
        task = service.accounts[0].task
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        await wait_for(lambda: not service.accounts[0].alive, what="task ended")
        status, doc = await get_json(http, service.url + "/healthz")
        assert (status, doc) == (
            503,
            {"status": "unhealthy", "reasons": ["main: the switch task has stopped (cancelled)"]},
        )
        assert not service.healthy()


@pytest.mark.parametrize("policy", list(OnShutdown))
async def test_a_busy_port_fails_before_anything_reaches_the_exchange(
    sim: Simulator, policy: OnShutdown
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(
            accounts=(account_config(sim.url, policy=policy),), server=ServerConfig("127.0.0.1", port)
        )
        service = Service(config, notifier=Notifier({}))
        with pytest.raises(OSError, match="address already in use"):
            await service.start()
        assert await service.stop() is True  # what the command does next: nothing to undo
    assert list(sim.requests) == []
    assert all(account.task is None for account in service.accounts)


# ---- shutdown policies ----------------------------------------------------------------------------------


def endpoints_after(sim: Simulator, seq: int) -> list[tuple[str, Any]]:
    return [
        (r["endpoint"], r.get("fields", {}).get("timeout"))
        for r in sim.requests
        if r["seq"] > seq and r["api_key"] != ORDER_KEY
    ]


async def test_keep_leaves_the_exchange_timer_running(sim: Simulator, orders: KrakenClient) -> None:
    await orders.send_order(**ORDER)
    async with serving(account_config(sim.url, policy=OnShutdown.KEEP)) as service:
        await wait_for(lambda: armed(service), what="armed")
        stop_seq = sim.requests[-1]["seq"]
        assert await service.stop() is True
    assert [name for name, _ in endpoints_after(sim, stop_seq)] in ([], ["cancelallordersafter"])
    remaining = sim.switch_remaining("main")
    assert remaining is not None and remaining > 1.5
    assert len(await orders.open_orders()) == 1
    await asyncio.sleep(remaining + 0.3)  # nobody refreshes: the exchange cancels the order
    assert await orders.open_orders() == []


async def test_disarm_sends_timeout_zero_as_the_very_last_call(sim: Simulator, orders: KrakenClient) -> None:
    await orders.send_order(**ORDER)
    async with serving(account_config(sim.url, policy=OnShutdown.DISARM)) as service:
        await wait_for(lambda: armed(service), what="armed")
        assert await service.stop() is True
        assert service.accounts[0].switch.state is SwitchState.DISARMED
    assert endpoints_after(sim, 0)[-1] == ("cancelallordersafter", "0")
    assert sim.switch_remaining("main") is None
    assert len(await orders.open_orders()) == 1  # disarm only: orders stay (now unprotected)


async def test_cancel_cancels_every_order_then_disarms(sim: Simulator, orders: KrakenClient) -> None:
    await orders.send_order(**ORDER)
    await orders.send_order(**{**ORDER, "limitPrice": 49000})
    async with serving(account_config(sim.url, policy=OnShutdown.CANCEL)) as service:
        await wait_for(lambda: armed(service), what="armed")
        assert await service.stop() is True
    assert endpoints_after(sim, 0)[-2:] == [("cancelallorders", None), ("cancelallordersafter", "0")]
    assert sim.switch_remaining("main") is None
    assert await orders.open_orders() == []


async def test_a_failed_cancel_leaves_the_timer_armed_so_the_exchange_still_cancels(
    sim: Simulator, orders: KrakenClient
) -> None:
    await orders.send_order(**ORDER)
    async with serving(account_config(sim.url, policy=OnShutdown.CANCEL)) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallorders", "status", status=503))
        assert await service.stop() is False
    names = [name for name, _ in endpoints_after(sim, 0)]
    assert names[-1] == "cancelallorders"  # no disarm after the failed cancel
    remaining = sim.switch_remaining("main")
    assert remaining is not None and remaining > 0
    assert len(await orders.open_orders()) == 1
    await asyncio.sleep(remaining + 0.3)
    assert await orders.open_orders() == []


async def test_a_failed_disarm_is_reported_within_the_bound(sim: Simulator) -> None:
    longer = SwitchConfig(refresh_min_s=0.3, refresh_max_s=0.5, timeout_s=10, min_remaining_s=1.0)
    async with serving(account_config(sim.url, policy=OnShutdown.DISARM, switch=longer)) as service:
        await wait_for(lambda: armed(service), what="armed")
        sim.faults.add(Fault("cancelallordersafter", "hang"))
        started = time.monotonic()
        assert await service.stop() is False
        elapsed = time.monotonic() - started
        sim.release_hangs()
    assert elapsed < SHUTDOWN_ACTION_S + 1
    assert sim.switch_remaining("main") is not None  # still armed: the exchange will cancel


async def test_stop_refuses_new_connections_and_readiness_drops(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: armed(service), what="armed")
        url = service.url
        stopping = asyncio.create_task(service.stop())
        await asyncio.sleep(0)
        assert service.readiness_problems() == ["guardian is shutting down"]
        assert await stopping is True
        with pytest.raises(aiohttp.ClientConnectionError):
            await get_json(http, url + "/healthz")
        assert await service.stop() is True  # a second stop is harmless


async def test_fast_settings_are_what_the_switch_uses(sim: Simulator) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: service.accounts[0].switch.refreshes >= 3, what="three refreshes")
    timeouts = {r["fields"]["timeout"] for r in sim.requests_for("cancelallordersafter")}
    assert timeouts == {str(FAST.timeout_s)}
