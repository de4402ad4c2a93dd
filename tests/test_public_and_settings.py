"""Public data within a budget and a short cache, and the settings, assignment-program and RFQ-offer
endpoints through the guard: each risk-changing one refused, and never reaching the exchange, for the
account's mode, the switch gate, the bot's permission and its limit (issue 16)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.account import Mode
from guardian.config import ClientConfig, GuardConfig, ServerConfig, SwitchConfig
from guardian.kraken import endpoints as ep
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import encode_params
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.sim.preferences import SUBACCOUNT_UID
from guardian.switch import SwitchState
from tests.conftest import running_sim
from tests.daemon import account_config, serving, wait_for

SETTER_KEY, SETTER_SECRET = (
    "settings-bot-key-0001",
    base64.b64encode(b"settings bot secret of 32 bytes!").decode(),
)
TRADER_KEY, TRADER_SECRET = (
    "trade-only-bot-key-01",
    base64.b64encode(b"trade-only bot secret, 32 bytes!").decode(),
)
SWITCH = SwitchConfig(refresh_min_s=0.5, refresh_max_s=0.7, timeout_s=5, min_remaining_s=1.0)
GUARD = GuardConfig(
    symbols=("PF_XBTUSD", "PF_ETHUSD"),
    max_order_size=2,
    max_notional=150_000,
    price_band_pct=5,
    max_leverage=10,
    mark_poll_s=0.1,
    rate_budget=20_000,  # a beat of 0.5 s would keep all of Kraken's 500 for the switch
)
CLIENTS = (
    ClientConfig(
        "setter",
        SETTER_KEY,
        ApiSecret(SETTER_SECRET),
        frozenset({Permission.READ, Permission.TRADE, Permission.SETTINGS}),
    ),
    ClientConfig(
        "trader", TRADER_KEY, ApiSecret(TRADER_SECRET), frozenset({Permission.READ, Permission.TRADE})
    ),
)


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    async with running_sim(budget_capacity=20_000) as simulator:
        yield simulator


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    account = account_config(exchange.url, switch=SWITCH, guard=GUARD, clients=CLIENTS)
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(
            lambda: main.switch.state is SwitchState.ARMED and main.marks.mark("PF_ETHUSD") is not None,
            what="ready",
        )
        yield service


async def call(
    service: Service,
    name: str,
    params: dict[str, Any],
    *,
    key: str = SETTER_KEY,
    secret: str = SETTER_SECRET,
    **path: str,
) -> tuple[int, dict[str, Any]]:
    """One signed request to guardian for the endpoint row `name`, parameters in the query as ccxt sends."""
    row = ep.endpoint(name)
    real = row.path.format(**path) if path else row.path
    async with KrakenClient(service.url, Credentials(key, ApiSecret(secret)), timeout_s=5) as bot:
        answer = await bot.send(row, encode_params(params), "", method=row.method, path=real)
    import json

    return answer.status, json.loads(answer.body)


def rfq_uid(exchange: Simulator, symbol: str = "PF_XBTUSD") -> str:
    return next(uid for uid, rfq in exchange.market_data.rfqs.items() if rfq.symbol == symbol)


# Each risk-changing endpoint with a call that passes every rule, and one that breaks its limit.
RISKY: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "leveragepreferences:put": (
        {"symbol": "PF_XBTUSD", "maxLeverage": 5},
        {"symbol": "PF_XBTUSD", "maxLeverage": 20},
        "leverageTooHigh",
    ),
    "pnlpreferences:put": (
        {"symbol": "PF_XBTUSD", "pnlPreference": "USD"},
        {"symbol": "PF_SOLUSD", "pnlPreference": "USD"},
        "symbolNotAllowed",
    ),
    "self-trade-strategy:put": ({"strategy": "CANCEL_MAKER_SELF"}, {}, ""),
    "rfq-assignment/max-leverage:put": ({"maxLeverage": 3}, {"maxLeverage": 50}, "leverageTooHigh"),
    "rfq-assignment/max-leverage:delete": ({}, {}, "leverageTooHigh"),
    "assignmentprogram/add": (
        {
            "contractType": "flex",
            "contract": "PF_XBTUSD",
            "maxSize": 1,
            "acceptLong": "true",
            "acceptShort": "true",
            "timeFrame": "all",
            "enabled": "true",
        },
        {
            "contractType": "flex",
            "contract": "PF_XBTUSD",
            "maxSize": 5,
            "acceptLong": "true",
            "acceptShort": "true",
            "timeFrame": "all",
            "enabled": "true",
        },
        "orderSizeTooLarge",
    ),
    "subaccount/{uid}/trading-enabled:put": ({"tradingEnabled": "true"}, {}, ""),
    "rfqs/{rfqUid}/place-offer": ({"bid": 59500}, {"bid": 50000}, "priceOutsideBand"),
}


def path_for(exchange: Simulator, name: str) -> dict[str, str]:
    if "{rfqUid}" in name:
        return {"rfqUid": rfq_uid(exchange)}
    if "{uid}" in name:
        return {"uid": SUBACCOUNT_UID}
    return {}


def reached(exchange: Simulator, name: str) -> list[dict[str, Any]]:
    return exchange.requests_for(name)


@pytest.mark.parametrize("name", sorted(RISKY))
async def test_each_risky_endpoint_passes_within_its_rules(
    guardian: Service, exchange: Simulator, name: str
) -> None:
    good, _, _ = RISKY[name]
    if name == "rfq-assignment/max-leverage:delete":
        pytest.skip("removing the cap is refused while max_leverage is set: see the limit test")
    status, answer = await call(guardian, name, good, **path_for(exchange, name))
    assert (status, answer["result"]) == (200, "success"), answer
    assert len(reached(exchange, name)) == 1


@pytest.mark.parametrize("name", sorted(RISKY))
async def test_each_risky_endpoint_is_refused_over_its_limit_and_never_reaches_the_exchange(
    guardian: Service, exchange: Simulator, name: str
) -> None:
    _, bad, code = RISKY[name]
    if not code:
        pytest.skip(f"{name} has no limit of its own: mode, gate and permission hold it")
    status, answer = await call(guardian, name, bad, **path_for(exchange, name))
    assert (status, answer["error"]) == (403, code), answer
    assert reached(exchange, name) == []


@pytest.mark.parametrize("mode", [Mode.HALTED, Mode.REDUCE_ONLY])
@pytest.mark.parametrize("name", sorted(RISKY))
async def test_each_risky_endpoint_is_refused_unless_active_and_never_reaches_the_exchange(
    guardian: Service, exchange: Simulator, name: str, mode: Mode
) -> None:
    guardian.accounts[0].mode = mode
    status, answer = await call(guardian, name, RISKY[name][0], **path_for(exchange, name))
    assert answer["error"] == ("tradingHalted" if mode is Mode.HALTED else "reduceOnlyMode"), answer
    assert status == 403 and reached(exchange, name) == []


@pytest.mark.parametrize("name", sorted(RISKY))
async def test_each_risky_endpoint_is_refused_while_the_switch_is_not_armed(
    guardian: Service, exchange: Simulator, name: str
) -> None:
    exchange.faults.add(
        Fault(endpoint="cancelallordersafter", kind="error", code="Unavailable", status=503, times=1000)
    )
    account = guardian.accounts[0]
    await wait_for(lambda: not account.switch.allows_new_risk(), timeout_s=10, what="the gate to close")
    status, answer = await call(guardian, name, RISKY[name][0], **path_for(exchange, name))
    assert (status, answer["error"]) == (409, "switchNotArmed"), answer
    assert reached(exchange, name) == []


@pytest.mark.parametrize("name", sorted(RISKY))
async def test_each_risky_endpoint_needs_its_permission(
    guardian: Service, exchange: Simulator, name: str
) -> None:
    row = ep.endpoint(name)
    status, answer = await call(
        guardian, name, RISKY[name][0], key=TRADER_KEY, secret=TRADER_SECRET, **path_for(exchange, name)
    )
    if row.permission is Permission.TRADE:  # RFQ offers: the trader may; a read-only key may not
        assert status == 200, answer
        return
    assert (status, answer["error"]) == (403, "permissionDenied"), answer
    assert "settings" in answer["message"]
    assert reached(exchange, name) == []


async def test_what_only_takes_risk_away_passes_even_when_halted(
    guardian: Service, exchange: Simulator
) -> None:
    uid = rfq_uid(exchange)
    status, _ = await call(guardian, "rfqs/{rfqUid}/place-offer", {"bid": 59500}, rfqUid=uid)
    assert status == 200
    add = RISKY["assignmentprogram/add"][0]
    status, added = await call(guardian, "assignmentprogram/add", add)
    assert status == 200
    guardian.accounts[0].mode = Mode.HALTED
    status, answer = await call(guardian, "rfqs/{rfqUid}/cancel-offer", {}, rfqUid=uid)
    assert (status, answer["result"]) == (200, "success"), answer
    status, answer = await call(guardian, "assignmentprogram/delete", {"id": added["id"]})
    assert (status, answer["result"]) == (200, "success"), answer
    status, answer = await call(
        guardian, "subaccount/{uid}/trading-enabled:put", {"tradingEnabled": "false"}, uid=SUBACCOUNT_UID
    )
    assert (status, answer["result"]) == (200, "success"), answer
    assert exchange.market_data.rfqs[uid].offers == {}


async def test_an_rfq_offer_is_judged_as_an_order_of_the_rfqs_size(
    guardian: Service, exchange: Simulator
) -> None:
    # The ETH RFQ is for 10 contracts: over max_order_size (2) at any price.
    status, answer = await call(
        guardian, "rfqs/{rfqUid}/place-offer", {"ask": 3000}, rfqUid=rfq_uid(exchange, "PF_ETHUSD")
    )
    assert (status, answer["error"]) == (403, "orderSizeTooLarge"), answer
    # SOL is not an allowed symbol.
    status, answer = await call(
        guardian, "rfqs/{rfqUid}/place-offer", {"bid": 150}, rfqUid=rfq_uid(exchange, "PF_SOLUSD")
    )
    assert (status, answer["error"]) == (403, "symbolNotAllowed"), answer
    status, answer = await call(
        guardian, "rfqs/{rfqUid}/place-offer", {"bid": 1}, rfqUid="00000000-0000-4000-8000-00000000dead"
    )
    assert (status, answer["error"]) == (400, "invalidArgument"), answer
    assert reached(exchange, "rfqs/{rfqUid}/place-offer") == []


async def test_a_leverage_preference_changes_the_margin_the_simulator_computes(
    guardian: Service, exchange: Simulator
) -> None:
    acct = exchange.exchange.accounts["main"]
    before = exchange.exchange.available_margin(acct)
    await call(
        guardian,
        "sendorder",
        {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 59000},
        key=TRADER_KEY,
        secret=TRADER_SECRET,
    )
    at_50x = before - exchange.exchange.available_margin(acct)
    status, _ = await call(guardian, "leveragepreferences:put", {"symbol": "PF_XBTUSD", "maxLeverage": 5})
    assert status == 200
    at_5x = before - exchange.exchange.available_margin(acct)
    assert (at_50x, at_5x) == (59000 / 50, 59000 / 5)


async def test_an_unknown_path_is_refused_naming_the_nearest_and_never_forwarded(
    guardian: Service, exchange: Simulator
) -> None:
    async with aiohttp.ClientSession() as http:
        for path in (
            "/api/history/v2/order",
            "/derivatives/api/v3/leveragepreference",
            "/derivatives/api/v9/x",
        ):
            async with http.get(guardian.url + path) as response:
                answer = await response.json()
            assert (response.status, answer["error"]) == (404, "notFound"), answer
            assert "nearest" in answer["message"] and path in answer["message"]
        async with http.get(guardian.url + "/api/history/v2/order") as response:
            assert "/api/history/v2/orders" in (await response.json())["message"]
    assert not [
        r
        for r in exchange.requests
        if r["endpoint"] not in ("tickers", "cancelallordersafter", "instruments")
    ]


async def test_the_history_pool_is_modelled_and_refuses_before_the_exchange(
    guardian: Service, exchange: Simulator
) -> None:
    pool = guardian.gateway.history["main"]
    pool.spend(pool.capacity - 1)
    status, _ = await call(guardian, "history/v2/orders", {})
    assert status == 200
    status, answer = await call(guardian, "history/v2/orders", {})
    assert (status, answer["error"]) == (429, "apiLimitExceeded"), answer
    assert len(reached(exchange, "history/v2/orders")) == 1


# ---- the public budget and cache ------------------------------------------------------------------------


async def test_identical_public_reads_within_a_second_are_one_upstream_call(
    guardian: Service, exchange: Simulator
) -> None:
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> int:
            async with http.get(guardian.url + path) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(get("/derivatives/api/v3/tickers/PF_ETHUSD") for _ in range(8)))
        assert statuses == [200] * 8
        assert len(reached(exchange, "tickers/{symbol}")) == 1
        await asyncio.sleep(1.1)
        assert await get("/derivatives/api/v3/tickers/PF_ETHUSD") == 200
        assert len(reached(exchange, "tickers/{symbol}")) == 2


async def test_an_answer_from_the_cache_tells_the_time_now_not_when_it_was_fetched(
    guardian: Service, exchange: Simulator
) -> None:
    """The fee schedules are cached for a minute; a client that reads the exchange's clock from an
    answer's serverTime must not be told a time that old."""
    path = "/derivatives/api/v3/feeschedules"
    async with aiohttp.ClientSession() as http:
        async with http.get(guardian.url + path) as response:
            first = await response.json()
        await asyncio.sleep(1.2)
        async with http.get(guardian.url + path) as response:
            again = await response.json()
    assert len(reached(exchange, "feeschedules")) == 1  # from the cache
    assert {k: v for k, v in again.items() if k != "serverTime"} == {
        k: v for k, v in first.items() if k != "serverTime"
    }
    gap = parse_iso(again["serverTime"]) - parse_iso(first["serverTime"])
    assert 1.0 <= gap < 5.0, (first["serverTime"], again["serverTime"])


async def test_a_flood_of_public_requests_from_several_bots_is_bounded_and_the_switch_keeps_its_beat(
    exchange: Simulator, tmp_path: Path
) -> None:
    bots = tuple(
        ClientConfig(
            f"bot-{i}",
            f"public-flood-bot-{i:04d}",
            ApiSecret(SETTER_SECRET),
            frozenset({Permission.READ}),
            public_rate_limit=8,
        )
        for i in range(3)
    )
    account = account_config(
        exchange.url, switch=SWITCH, guard=GuardConfig(mark_poll_s=1.0, rate_budget=20_000), clients=bots
    )
    paths = [
        "/derivatives/api/v3/orderbook?symbol=PF_XBTUSD&n={n}",
        "/derivatives/api/v3/history?symbol=PF_ETHUSD&n={n}",
        "/api/charts/v1/trade/PF_XBTUSD/1m?n={n}",
        "/derivatives/api/v4/historicalfundingrates?symbol=PF_XBTUSD&n={n}",
    ]
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(lambda: main.switch.state is SwitchState.ARMED, what="armed")
        total = service.gateway.public.total
        assert (total.rate, total.burst) == (
            ServerConfig().public_rate_limit,
            ServerConfig().public_burst_size,
        )
        assert (total.rate, total.burst) == (20, 60)
        refreshes_before = len(exchange.requests_for("cancelallordersafter"))
        seq_before = exchange.requests[-1]["seq"]
        counts: dict[int, int] = {}
        stop_at = time.monotonic() + 3.0

        async def flood(bot: ClientConfig, http: aiohttp.ClientSession) -> None:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                url = service.url + paths[n % len(paths)].format(n=n)  # distinct queries: no cache help
                async with http.get(url, headers={"APIKey": bot.api_key}) as response:
                    await response.read()
                    counts[response.status] = counts.get(response.status, 0) + 1

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(flood(bot, http) for bot in bots for _ in range(4)))
        public = [
            r
            for r in exchange.requests
            if r["seq"] > seq_before
            and ep.BY_NAME[r["endpoint"]].permission is Permission.PUBLIC
            and r["endpoint"] != "tickers"
        ]
        refreshes = len(exchange.requests_for("cancelallordersafter")) - refreshes_before
        assert main.switch.state is SwitchState.ARMED
    assert counts.get(429, 0) > 0, counts  # refused locally, never sent
    # 3 bots x 8 per second (each after its burst of 40), capped in total at a burst of 60 and 20 per
    # second, over 3 s (and the answers in flight at the end).
    assert len(public) <= 60 + 20 * 3.5, len(public)
    assert counts[200] >= len(public)  # the rest were identical reads, answered from the cache
    assert len(public) >= 20, len(public)  # and the budget was used, not just refused
    assert refreshes >= 3, refreshes  # a beat of 0.5-0.7 s kept through 3 s of flood


# ---- the public budget's burst (issue 24) ----------------------------------------------------------------

# A client's start-up reads: 30 different public requests, none of which the cache can answer for another.
START_UP = [
    "/derivatives/api/v3/instruments",
    "/derivatives/api/v3/instruments/status",
    "/derivatives/api/v3/tickers",
    "/derivatives/api/v3/feeschedules",
    "/derivatives/api/v3/rfqs",
    "/api/charts/v1/",
    "/api/charts/v1/trade",
    *(
        path.format(symbol=symbol)
        for symbol in ("PF_XBTUSD", "PF_ETHUSD")
        for path in (
            "/derivatives/api/v3/tickers/{symbol}",
            "/derivatives/api/v3/orderbook?symbol={symbol}",
            "/derivatives/api/v3/instruments/{symbol}/status",
            "/derivatives/api/v3/history?symbol={symbol}",
            "/derivatives/api/v3/historicalfundingrates?symbol={symbol}",
            "/derivatives/api/v4/historicalfundingrates?symbol={symbol}",
            "/api/charts/v1/trade/{symbol}",
            "/api/charts/v1/trade/{symbol}/1m",
            "/api/charts/v1/mark/{symbol}/1h",
            "/api/history/v2/market/{symbol}/executions",
            "/api/history/v2/market/{symbol}/price",
        )
    ),
    "/api/charts/v1/spot/PF_XBTUSD/1d",
]


async def public_get(
    http: aiohttp.ClientSession, service: Service, path: str, api_key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"APIKey": api_key} if api_key else {}
    async with http.get(service.url + path, headers=headers) as response:
        body = await response.read()
        doc = json.loads(body) if response.content_type == "application/json" else {}
        return response.status, doc if isinstance(doc, dict) else {}


@contextlib.asynccontextmanager
async def public_guardian(
    exchange: Simulator, tmp_path: Path, clients: tuple[ClientConfig, ...] = ()
) -> AsyncIterator[Service]:
    """guardian with `clients` (read-only bots, for their public budgets), its switch armed."""
    account = account_config(
        exchange.url, switch=SWITCH, guard=GuardConfig(rate_budget=20_000), clients=clients
    )
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(lambda: main.switch.state is SwitchState.ARMED, what="armed")
        yield service


def reader(name: str, key: str, **public: float) -> ClientConfig:
    return ClientConfig(name, key, ApiSecret(SETTER_SECRET), frozenset({Permission.READ}), **public)  # type: ignore[arg-type]


async def test_a_clients_start_up_burst_of_30_different_public_reads_is_answered(
    exchange: Simulator, tmp_path: Path
) -> None:
    """Unlabelled (no APIKey header: a bot's first reads before it loads a key, or a public-only client),
    30 different reads spread over 300 ms, each its own upstream call: every one answered."""
    assert len(set(START_UP)) == 30
    async with public_guardian(exchange, tmp_path) as service, aiohttp.ClientSession() as http:
        calls_before = service.gateway.public.upstream_calls
        started = time.monotonic()

        async def later(n: int, path: str) -> tuple[int, dict[str, Any]]:
            await asyncio.sleep(n * 0.01)
            return await public_get(http, service, path)

        answers = await asyncio.gather(*(later(n, path) for n, path in enumerate(START_UP)))
        sent_within = time.monotonic() - started
        assert [status for status, _ in answers] == [200] * 30, [
            (path, doc) for path, (status, doc) in zip(START_UP, answers, strict=True) if status != 200
        ]
        assert service.gateway.public.upstream_calls - calls_before == 30  # none from the cache
    assert sent_within < 1.0  # (a slow machine's margin: the reads themselves went out within 300 ms)


async def test_a_sustained_unlabelled_flood_is_held_to_the_burst_plus_the_rate(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with public_guardian(exchange, tmp_path) as service, aiohttp.ClientSession() as http:
        bucket = service.gateway.public.unlabelled
        seq_before = exchange.requests[-1]["seq"] if exchange.requests else 0
        counts: dict[int, int] = {}
        started = time.monotonic()
        stop_at = started + 2.5
        n = 0

        async def flood() -> None:
            nonlocal n
            while time.monotonic() < stop_at:
                n += 1
                status, doc = await public_get(
                    http, service, f"/derivatives/api/v3/orderbook?symbol=PF_XBTUSD&n={n}"
                )
                counts[status] = counts.get(status, 0) + 1
                if status == 429:
                    assert doc["error"] == "apiLimitExceeded" and "public_burst" in doc["message"]

        await asyncio.gather(*(flood() for _ in range(6)))
        elapsed = time.monotonic() - started
        upstream = [r for r in exchange.requests if r["seq"] > seq_before and r["endpoint"] == "orderbook"]
    answered = counts.get(200, 0)
    assert counts.get(429, 0) > answered, counts  # a flood: refused locally, never sent
    assert answered == len(upstream)  # every distinct read answered went out once; the refused never did
    assert answered <= bucket.burst + bucket.rate * elapsed + 1, (answered, elapsed)
    assert answered >= bucket.burst + bucket.rate * (elapsed - 1), (answered, elapsed)  # and it was used


async def test_the_public_burst_refills_at_the_rate(exchange: Simulator, tmp_path: Path) -> None:
    bot = reader("refiller", "public-refill-bot-0001", public_rate_limit=20, public_burst=10)
    async with public_guardian(exchange, tmp_path, (bot,)) as service, aiohttp.ClientSession() as http:

        async def burst(count: int, start: int) -> list[int]:
            found = await asyncio.gather(
                *(
                    public_get(
                        http,
                        service,
                        f"/derivatives/api/v3/history?symbol=PF_XBTUSD&n={start + i}",
                        bot.api_key,
                    )
                    for i in range(count)
                )
            )
            return [status for status, _ in found]

        first = await burst(14, 0)
        assert sorted(first).count(200) == 10 and first.count(429) == 4  # the burst, then refused
        await asyncio.sleep(0.6)  # 12 tokens' worth at 20 a second: the bucket holds 10
        again = await burst(14, 100)
        assert again.count(200) >= 10 and again.count(429) >= 2, again


async def test_a_labelled_bots_public_burst_is_its_own(exchange: Simulator, tmp_path: Path) -> None:
    """A bot that spent its burst is refused; another bot, and unlabelled requests, still get theirs."""
    slow = reader("slow", "public-slow-bot-00001", public_rate_limit=1, public_burst=5)
    busy = reader("busy", "public-busy-bot-00001")  # the defaults: 10 a second, bursts of 40
    async with public_guardian(exchange, tmp_path, (slow, busy)) as service, aiohttp.ClientSession() as http:

        async def burst(count: int, tag: str, api_key: str | None) -> list[tuple[int, dict[str, Any]]]:
            return await asyncio.gather(
                *(
                    public_get(
                        http, service, f"/derivatives/api/v3/orderbook?symbol=PF_ETHUSD&{tag}={i}", api_key
                    )
                    for i in range(count)
                )
            )

        mine = await burst(8, "slow", slow.api_key)
        assert sorted(status for status, _ in mine) == [200] * 5 + [429] * 3
        refusal = next(doc for status, doc in mine if status == 429)
        assert "bot 'slow'" in refusal["message"] and "burst of 5" in refusal["message"]
        theirs = await burst(30, "busy", busy.api_key)
        assert [status for status, _ in theirs] == [200] * 30
        unlabelled = await burst(20, "none", None)
        assert [status for status, _ in unlabelled] == [200] * 20  # 55 of the total's 60
        again = await burst(1, "slow-again", slow.api_key)
        assert again[0][0] == 429  # still its own bucket, empty
