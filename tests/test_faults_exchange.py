"""Issue 6, exchange faults: a running guardian (FAST switch: a 0.3-0.5 s beat, a 3 s exchange timer) in
front of the simulator while the exchange hangs, answers 5xx, resets connections, answers
`apiLimitExceeded` in a storm, answers slower than the refresh window, or reports a skewed clock; and
while only the order endpoints fail.

Everything is judged from outside: guardian's `/guardian/state`, `/readyz`, `/healthz` and `/metrics`
over HTTP, the simulator's own timer, order book and request log, and guardian's journal file. A watcher
reads guardian's state every 50 ms beside the simulator's timer, so "truthful" is checked at every
reading, not once: guardian never reports the switch armed or degraded while the exchange's timer is off,
never counts more time left than the exchange has, and (where nothing re-arms the exchange behind its
back) counts it out within a quarter of a second of the exchange.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from guardian.config import ClientConfig, GuardConfig, SwitchConfig
from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from tests.conftest import TRADE_KEY, running_sim
from tests.daemon import FAST, Samples, account_config, get_json, metric, scrape, serving, wait_for

BOT_KEY = "fault-bot-local-key-01"
BOT_SECRET = base64.b64encode(b"fault bot's local secret, 32 b!!").decode()
BOT = ClientConfig(
    "fault-bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE})
)
# No price limits (a fault that takes the tickers down must not be what refuses an order), a budget far
# above what the FAST beat spends, and a short wait for the exchange's answer to a forwarded request.
GUARD = GuardConfig(rate_budget=100_000, mark_poll_s=0.2, upstream_timeout_s=1.0)
LMT: dict[str, str | int] = {
    "orderType": "lmt",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": 1,
    "limitPrice": 50000,
}
SEND_ITEM = {"order": "send", "order_tag": "risk", **LMT}
CANCELS = ("cancelorder", "batchorder", "cancelallorders")
EPSILON_S = 0.05  # one reading's own imprecision (an HTTP round trip on loopback, rounding to 1 ms)
TRACKS_WITHIN_S = 0.25  # guardian's count of the exchange timer against the exchange's, when both are known
# After a fault clears, the next beat comes within refresh_max_s, and an attempt already under way ends
# within its call deadline (1 s once expired): re-armed within both, plus the watcher's own step.
REARM_BOUND_S = FAST.refresh_max_s + 1.0 + 0.25
OUTCOME_OF_STATUS = {200: "success", 502: "unavailable", 503: "http_503", 504: "timeout"}
SIM_CONTROL = "/_sim"


@dataclass(frozen=True)
class Scenario:
    """One exchange fault, as the simulator's control API takes it, and what it must do to guardian."""

    faults: tuple[dict[str, Any], ...]
    clock_offset_s: float = 0.0
    breaks_switch: bool = True  # refreshes cannot succeed while the fault lasts
    cancel_status: int = 200  # what guardian answers a cancel with (502/504: the fault covers cancels)
    late_arming: bool = False  # the slow exchange still acts on refreshes guardian gave up on
    storm: bool = False  # every refresh is answered apiLimitExceeded (HTTP 429)


SCENARIOS = {
    "hang": Scenario(({"endpoint": "cancelallordersafter", "kind": "hang"},)),
    # An answer is relayed as it came, a 503 included; a reset or no answer at all is guardian's 502 / 504.
    "5xx-everywhere": Scenario(({"endpoint": "*", "kind": "status", "status": 503},), cancel_status=503),
    "reset-everywhere": Scenario(({"endpoint": "*", "kind": "drop"},), cancel_status=502),
    "hang-everywhere": Scenario(({"endpoint": "*", "kind": "hang"},), cancel_status=504),
    "rate-limit-storm": Scenario(
        ({"endpoint": "cancelallordersafter", "kind": "error", "code": "apiLimitExceeded", "status": 429},),
        storm=True,
    ),
    # Slower than the refresh window (0.3-0.5 s) and than the whole timer (3 s).
    "slower-than-the-timer": Scenario(
        ({"endpoint": "cancelallordersafter", "kind": "latency", "latency_s": 3.5},), late_arming=True
    ),
    "clock-skew": Scenario((), clock_offset_s=-3600.0, breaks_switch=False),
    "order-endpoints-reset": Scenario(
        tuple(
            {"endpoint": name, "kind": "drop"}
            for name in ("sendorder", "editorder", "cancelorder", "cancelallorders", "batchorder")
        ),
        breaks_switch=False,
        cancel_status=502,
    ),
}


# ---- the watcher ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One look at guardian's switch (over HTTP) between two looks at the simulator's timer. Times are
    the event loop's monotonic clock, which is also the clock of the simulator's countdown."""

    at: float
    state: str
    consecutive_failures: int
    last_error: str | None
    guardian_deadline_low: float | None  # a lower bound of guardian's deadline: sent-time + remaining
    sim_deadline: float | None  # the exchange's deadline (the later of the two looks); None: timer off
    sim_fired: int
    healthz: int


@dataclass
class Watch:
    """Reads `/guardian/state` and `/healthz` every 50 ms beside the simulator's own timer."""

    http: aiohttp.ClientSession
    url: str
    sim: Simulator
    readings: list[Reading] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run(), name="watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = self.sim.switch_remaining("main")
            sent = loop.time()
            status, state = await get_json(self.http, self.url + "/guardian/state")
            assert status == 200
            now = loop.time()
            after = self.sim.switch_remaining("main")
            health, _ = await get_json(self.http, self.url + "/healthz")
            deadlines = [t + left for t, left in ((sent, before), (now, after)) if left is not None]
            switch = state["accounts"][0]["switch"]
            remaining = switch["remaining_s"]
            self.readings.append(
                Reading(
                    at=now,
                    state=switch["state"],
                    consecutive_failures=switch["consecutive_failures"],
                    last_error=switch["last_error"],
                    guardian_deadline_low=None if remaining is None else sent + remaining,
                    sim_deadline=max(deadlines) if deadlines else None,
                    sim_fired=self.sim.exchange.accounts["main"].switch_fired,
                    healthz=health,
                )
            )
            await asyncio.sleep(0.05)

    async def until(self, state: str, timeout_s: float = 6.0) -> Reading:
        """The first reading from now on that shows `state`."""
        start = len(self.readings)
        found: Reading = await wait_for(
            lambda: next((r for r in self.readings[start:] if r.state == state), None),
            timeout_s,
            what=f"guardian to report {state}",
        )
        return found

    def untruths(self) -> list[str]:
        """Every reading in which guardian claimed more than the exchange's timer really had, or in which
        /healthz was not 200."""
        found = []
        for r in self.readings:
            if r.healthz != 200:
                found.append(f"at {r.at:.3f}: /healthz answered {r.healthz}")
            if r.state not in ("armed", "degraded"):
                continue
            if r.sim_deadline is None or r.guardian_deadline_low is None:
                found.append(f"at {r.at:.3f}: guardian said {r.state} while the exchange timer was off")
            elif r.guardian_deadline_low > r.sim_deadline + EPSILON_S:
                late = r.guardian_deadline_low - r.sim_deadline
                found.append(f"at {r.at:.3f}: guardian counted {late:.3f} s more than the exchange has")
            if r.state == "armed" and (r.consecutive_failures or r.last_error):
                found.append(f"at {r.at:.3f}: armed with failures {r.consecutive_failures} ({r.last_error})")
        return found


# ---- looking from outside ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    switch: dict[str, Any]  # the account's switch, from /guardian/state
    ready: tuple[int, dict[str, Any]]
    metrics: Samples
    sim_trigger_time: str | None


async def look(http: aiohttp.ClientSession, service: Service, sim: Simulator) -> Look:
    """/guardian/state, /readyz, /metrics and the simulator's own state, read while both stood still (the
    same switch state, refreshes, failures and trigger time before and after): one consistent view."""
    keys = ("state", "refreshes", "consecutive_failures", "trigger_time")
    for _ in range(20):
        sim_first = (await get_json(http, sim.url + SIM_CONTROL + "/state"))[1]["accounts"]["main"]["switch"]
        first = (await get_json(http, service.url + "/guardian/state"))[1]["accounts"][0]["switch"]
        ready = await get_json(http, service.url + "/readyz")
        found = await scrape(http, service.url)
        second = (await get_json(http, service.url + "/guardian/state"))[1]["accounts"][0]["switch"]
        sim_second = (await get_json(http, sim.url + SIM_CONTROL + "/state"))[1]["accounts"]["main"]["switch"]
        if (
            all(first[k] == second[k] for k in keys)
            and sim_first["trigger_time"] == sim_second["trigger_time"]
        ):
            return Look(second, ready, found, sim_second["trigger_time"])
        await asyncio.sleep(0.01)
    raise AssertionError("guardian's switch never stood still long enough for one consistent look")


def assert_consistent(seen: Look, state: str) -> None:
    """Every outside view says the same thing about the switch, and it is `state`."""
    assert seen.switch["state"] == state
    status, doc = seen.ready
    if state == "armed":
        assert (status, doc) == (200, {"status": "ready"})
    else:
        assert status == 503
        assert doc["reasons"][0].startswith(f"main: switch {state}"), doc
    found = seen.metrics
    assert metric(found, "guardian_switch_armed", account="main") == (1.0 if state == "armed" else 0.0)
    for each in ("starting", "armed", "degraded", "expired", "disarmed"):
        assert metric(found, "guardian_switch_state", account="main", state=each) == float(each == state)
    assert metric(found, "guardian_switch_consecutive_failures", account="main") == float(
        seen.switch["consecutive_failures"]
    )


@dataclass(frozen=True)
class Answer:
    """What a bot got back: guardian's HTTP status and the error code (None for success)."""

    status: int
    code: str | None


async def attempt(call: Awaitable[Any]) -> Answer:
    try:
        await call
    except ExchangeError as exc:
        return Answer(exc.http_status or 0, exc.code)
    return Answer(200, None)


def received(sim: Simulator, endpoint: str, after: int) -> int:
    """How many `endpoint` requests signed with the account's exchange key the simulator received."""
    return sum(
        1
        for r in sim.requests
        if r["seq"] > after and r["endpoint"] == endpoint and r["api_key"] == TRADE_KEY
    )


@dataclass
class Ledger:
    """What the bot was answered, to compare with the journal."""

    refused: Counter[tuple[str, str | None, int]] = field(default_factory=Counter)
    forwarded: Counter[tuple[str, str, int]] = field(default_factory=Counter)


def cancels(bot: KrakenClient, order_ids: list[str]) -> list[Awaitable[Answer]]:
    """A cancel, a batch of cancels and a cancel-all (in CANCELS' order)."""
    return [
        attempt(bot.cancel_order(order_id=order_ids[0])),
        attempt(bot.batch_order([{"order": "cancel", "order_id": order_ids[1]}])),
        attempt(bot.cancel_all_orders()),
    ]


def cancels_went_out(
    sim: Simulator, mark: int, answers: list[Answer], scenario: Scenario, ledger: Ledger
) -> None:
    """Each cancel reached the exchange exactly once, and guardian relayed the exchange's answer (or
    502 / 504 when the fault covers cancels)."""
    expected = scenario.cancel_status
    for name, answer in zip(CANCELS, answers, strict=True):
        assert received(sim, name, mark) == 1, f"{name} did not reach the exchange exactly once"
        assert answer.status == expected, (name, answer)
        if expected in (502, 504):  # guardian's own answer: the exchange's never came
            assert answer.code == "Unavailable"
        ledger.forwarded[(name, OUTCOME_OF_STATUS[expected], expected)] += 1


async def while_not_armed(
    bot: KrakenClient, sim: Simulator, order_ids: list[str], scenario: Scenario, ledger: Ledger
) -> Answer:
    """All at once: a send, an edit and a batch with a send, which are new risk and must not reach the
    exchange, and the three cancels, which must. Returns the edit's answer (its code is judged last)."""
    mark = sim.requests[-1]["seq"]
    send, edit, risky_batch, *answers = await asyncio.gather(
        attempt(bot.send_order(**LMT)),
        attempt(bot.edit_order(orderId=order_ids[0], limitPrice=49000)),
        attempt(bot.batch_order([SEND_ITEM, {"order": "cancel", "order_id": order_ids[0]}])),
        *cancels(bot, order_ids),
    )
    assert send == Answer(409, "switchNotArmed")
    assert risky_batch == Answer(409, "switchNotArmed")
    assert edit.status >= 400
    assert received(sim, "sendorder", mark) == 0
    assert received(sim, "editorder", mark) == 0
    cancels_went_out(sim, mark, answers, scenario, ledger)  # one batchorder only: the batch of cancels
    ledger.refused.update(
        [
            ("sendorder", send.code, send.status),
            ("editorder", edit.code, edit.status),
            ("batchorder", risky_batch.code, risky_batch.status),
        ]
    )
    return edit


def reported(logged: list[MutableMapping[str, Any]], state: str) -> bool:
    """guardian's reporter has logged (and journaled) the switch's change to `state`."""
    return any(e["event"] == "switch_state_changed" and e["state"] == state for e in logged)


async def control(
    http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, doc: Any = None
) -> None:
    """The simulator's control API, as an operator of a test rig would use it."""
    async with http.request(method, sim.url + SIM_CONTROL + path, json=doc) as response:
        assert response.status == 200, await response.text()


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    # A budget far above Kraken's 500 per 10 s: the FAST beat alone spends about 60 a second.
    async with running_sim(budget_capacity=1_000_000) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def guarded(exchange: Simulator, journal: Path) -> AsyncIterator[tuple[Service, KrakenClient]]:
    """guardian (FAST switch) in front of `exchange`, and the bot's client."""
    account = account_config(exchange.url, guard=GUARD, clients=(BOT,))
    async with (
        serving(account, journal=journal) as service,
        KrakenClient(service.url, Credentials(BOT_KEY, ApiSecret(BOT_SECRET)), timeout_s=10) as bot,
    ):
        yield service, bot


async def place(bot: KrakenClient, sim: Simulator, count: int) -> list[str]:
    """`count` resting buy orders through guardian; their ids."""
    ids = []
    for i in range(count):
        answer = await bot.send_order(**{**LMT, "limitPrice": 50000 - 100 * i})
        assert answer["sendStatus"]["status"] == "placed"
        ids.append(answer["sendStatus"]["order_id"])
    assert {o.order_id for o in sim.exchange.accounts["main"].open_orders()} >= set(ids)
    return ids


# ---- the scenarios -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_exchange_fault_keeps_the_switch_truthful_gates_risk_passes_cancels_and_recovers(
    name: str, exchange: Simulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    ledger = Ledger()
    edits: list[Answer] = []
    with capture_logs() as logged:
        async with guarded(exchange, tmp_path / "journal.sqlite3") as (service, bot):
            async with Watch(http, service.url, exchange) as watch:
                await watch.until("armed")
                ids = await place(bot, exchange, 3)
                assert_consistent(await look(http, service, exchange), "armed")
                injected_wall = time.time()
                injected = exchange.requests[-1]["seq"]
                if scenario.clock_offset_s:
                    await control(http, exchange, "POST", "/clock", {"offset_s": scenario.clock_offset_s})
                for fault in scenario.faults:
                    await control(http, exchange, "POST", "/faults", fault)

                if scenario.breaks_switch:
                    degraded = await watch.until("degraded")
                    seen = await look(http, service, exchange)
                    if seen.switch["state"] == "degraded":  # (unless it has run out meanwhile)
                        assert_consistent(seen, "degraded")
                        assert seen.switch["last_error"] is not None
                        if not scenario.late_arming:  # the exchange's own trigger time, to the ms
                            assert seen.switch["trigger_time"] == seen.sim_trigger_time
                    edits.append(await while_not_armed(bot, exchange, ids, scenario, ledger))

                    expired = await watch.until("expired")
                    assert expired.at - degraded.at < FAST.timeout_s + EPSILON_S
                    seen = await look(http, service, exchange)
                    assert_consistent(seen, "expired")
                    assert metric(seen.metrics, "guardian_switch_remaining_seconds", account="main") == 0
                    edits.append(await while_not_armed(bot, exchange, ids, scenario, ledger))
                    # Said in the logs (and so in the journal) while it lasts; a short expiry may not be:
                    # see test_a_brief_expiry_is_still_in_the_journal.
                    await wait_for(lambda: reported(logged, "expired"), 1.0, "the expiry logged")
                    if not scenario.late_arming:
                        # The exchange's timer really did run out, and it cancelled what was left.
                        await wait_for(
                            lambda: exchange.switch_remaining("main") is None, 1.0, "the sim firing"
                        )
                        assert exchange.exchange.accounts["main"].switch_fired == 1
                        assert exchange.exchange.accounts["main"].open_orders() == []
                else:
                    # Longer than the exchange timer: only a switch refreshed throughout keeps it running.
                    await asyncio.sleep(FAST.timeout_s + 0.5)
                    seen = await look(http, service, exchange)
                    assert_consistent(seen, "armed")
                    assert (
                        seen.switch["trigger_time"] == seen.sim_trigger_time
                    )  # the exchange's, skew and all
                    mark = exchange.requests[-1]["seq"]
                    sent, *answers = await asyncio.gather(attempt(bot.send_order(**LMT)), *cancels(bot, ids))
                    assert received(exchange, "sendorder", mark) == 1  # armed as it is: forwarded
                    assert sent.status == scenario.cancel_status
                    ledger.forwarded[("sendorder", OUTCOME_OF_STATUS[sent.status], sent.status)] += 1
                    cancels_went_out(exchange, mark, answers, scenario, ledger)

                cleared = asyncio.get_running_loop().time()
                await control(http, exchange, "DELETE", "/faults")
                rearmed = await watch.until("armed")
                assert rearmed.at - cleared < REARM_BOUND_S
                seen = await look(http, service, exchange)
                assert_consistent(seen, "armed")
                rearms = 1 if scenario.breaks_switch else 0
                assert seen.switch["rearms_after_expiry"] == rearms
                assert (
                    metric(seen.metrics, "guardian_switch_rearms_after_expiry_total", account="main")
                    == rearms
                )
                mark = exchange.requests[-1]["seq"]
                placed = await bot.send_order(**LMT)  # orders pass again
                assert placed["sendStatus"]["status"] == "placed"
                assert received(exchange, "sendorder", mark) == 1
                ledger.forwarded[("sendorder", "success", 200)] += 1
                await asyncio.sleep(0.1)  # one more reading after the last order

            # Nothing died: the switch's and the marks' tasks run, and /healthz said 200 at every reading.
            assert service.health_problems() == []
            marks_task = service.accounts[0].marks_task
            assert marks_task is not None and not marks_task.done()
            found = await scrape(http, service.url)
            refusals = sum(n for (_, code, _), n in ledger.refused.items() if code == "switchNotArmed")
            rejections = (
                "guardian_rejections_total",
                frozenset({("account", "main"), ("reason", "switchNotArmed")}),
            )
            assert found.get(rejections, 0.0) == refusals  # (a counter nobody has touched is not shown)
            await service.journal.flush()
            rows = read_journal(service.config.journal.path, since=injected_wall, limit=100_000)

    # Truthful at every reading, and in step with the exchange.
    assert watch.untruths() == []
    first_armed = next(i for i, r in enumerate(watch.readings) if r.state == "armed")
    states = [r.state for r in watch.readings[first_armed:]]
    if scenario.breaks_switch:
        assert "degraded" in states and "expired" in states
        if not scenario.late_arming:
            lags = [
                r.sim_deadline - r.guardian_deadline_low
                for r in watch.readings
                if r.state == "degraded"
                and r.sim_deadline is not None
                and r.guardian_deadline_low is not None
            ]
            assert min(lags) < TRACKS_WITHIN_S  # guardian's count is not needlessly pessimistic either
    else:
        assert set(states) == {"armed"}
        assert all(r.sim_fired == 0 and r.sim_deadline is not None for r in watch.readings[first_armed:])

    if scenario.clock_offset_s:
        assert seen.switch["clock_skew_s"] == pytest.approx(scenario.clock_offset_s, abs=1)
        skew = metric(seen.metrics, "guardian_exchange_clock_skew_seconds", account="main")
        assert skew == pytest.approx(scenario.clock_offset_s, abs=1)
        assert 2.0 < seen.switch["remaining_s"] <= FAST.timeout_s  # the skew changes nothing else

    if scenario.storm:
        refreshes = [
            r for r in exchange.requests if r["seq"] > injected and r["endpoint"] == "cancelallordersafter"
        ]
        storm = [r for r in refreshes if r.get("http_status") == 429]
        assert len(storm) >= FAST.timeout_s / FAST.refresh_max_s  # many refreshes in a row, all refused
        assert refreshes[: len(storm)] == storm
        span = parse_iso(storm[-1]["time"]) - parse_iso(storm[0]["time"])
        assert len(storm) <= span / FAST.refresh_min_s + 2  # and guardian did not hammer harder for it
        limited = metric(found, "guardian_switch_refreshes_total", account="main", outcome="rate_limited")
        assert limited >= len(storm)

    # The journal holds every refusal and every forwarded order request with what the bot was answered.
    requests = [r for r in rows if r["type"] == "request"]
    refused = Counter(
        (r["endpoint"], r["reason"], r["http_status"]) for r in requests if r["verdict"] == "refused"
    )
    forwarded = Counter(
        (r["endpoint"], r["outcome"], r["http_status"]) for r in requests if r["verdict"] == "forwarded"
    )
    assert refused == ledger.refused
    assert forwarded == ledger.forwarded
    if scenario.breaks_switch:
        changes = [r["detail"]["state"] for r in rows if r["type"] == "event" and r["kind"] == "switch_state"]
        assert changes[-3:] == ["degraded", "expired", "armed"]

    # No request or refresh crashed (a bug is logged with its traceback, and answered 500).
    crashes = [
        e for e in logged if e.get("exc_info") or e["event"] in ("gateway_error", "switch_refresh_crashed")
    ]
    assert crashes == []

    # An edit is new risk: refused as switchNotArmed like a send, whatever else the exchange is doing.
    assert edits == [Answer(409, "switchNotArmed")] * len(edits)


async def test_an_edit_while_not_armed_is_refused_switch_not_armed_without_asking_the_exchange(
    exchange: Simulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The switch gate needs nothing from the exchange, so it answers before guardian looks the order up:
    a 5xx exchange must not turn `switchNotArmed` (409) into `upstreamUnavailable` (503)."""
    async with guarded(exchange, tmp_path / "journal.sqlite3") as (service, bot):
        switch = service.accounts[0].switch
        await wait_for(lambda: switch.allows_new_risk(), what="armed")
        [order_id] = await place(bot, exchange, 1)
        await control(http, exchange, "POST", "/faults", {"endpoint": "*", "kind": "status", "status": 503})
        await wait_for(lambda: switch.state.value == "degraded", what="degraded")
        mark = exchange.requests[-1]["seq"]
        edit = await attempt(bot.edit_order(orderId=order_id, limitPrice=49000))
        looked_up = received(exchange, "orders/status", mark)
        await control(http, exchange, "DELETE", "/faults")
    assert received(exchange, "editorder", 0) == 0
    assert (edit, looked_up) == (Answer(409, "switchNotArmed"), 0)


async def test_a_brief_expiry_is_still_in_the_journal(
    exchange: Simulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`expired` is when guardian tells its operator to assume every order was cancelled, so the audit
    journal must hold it however soon the exchange comes back. Here the fault clears the instant guardian's
    count runs out and the next beat (0.1-0.15 s) re-arms: guardian counts a re-arm after expiry, and the
    journal must show the expiry it followed."""
    brisk = SwitchConfig(refresh_min_s=0.1, refresh_max_s=0.15, timeout_s=3, min_remaining_s=1.0)
    account = account_config(exchange.url, switch=brisk, guard=GUARD, clients=(BOT,))
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        switch = service.accounts[0].switch
        await wait_for(lambda: switch.allows_new_risk(), what="armed")
        started = time.time()
        exchange.faults.add(Fault("cancelallordersafter", "status", status=503))
        await wait_for(lambda: switch.state.value == "degraded", what="degraded")
        left = switch.remaining()
        assert left is not None
        asyncio.get_running_loop().call_later(left, exchange.faults.clear)  # back when the count runs out
        await wait_for(lambda: switch.rearms_after_expiry == 1, timeout_s=left + 2, what="re-armed")
        _, state = await get_json(http, service.url + "/guardian/state")
        await asyncio.sleep(0.3)  # the reporter's next looks
        await service.journal.flush()
        rows = read_journal(service.config.journal.path, since=started)
    assert state["accounts"][0]["switch"]["rearms_after_expiry"] == 1
    changes = [r["detail"]["state"] for r in rows if r["type"] == "event" and r["kind"] == "switch_state"]
    assert changes[changes.index("degraded") :] == ["degraded", "expired", "armed"]
