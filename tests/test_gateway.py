"""The gateway against the simulator on loopback, through guardian's real HTTP server: bots sign with
their local keys (guardian's own KrakenClient is the raw-HTTP bot here), guardian re-signs with the
account key. Every refusal is checked twice: the answer, and that nothing reached the exchange."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from guardian import logs
from guardian.config import ClientConfig, GuardConfig, SwitchConfig, SymbolLimits
from guardian.errors import AuthenticationFailed, ExchangeError, ExchangeRejected
from guardian.gateway import app as gateway_app
from guardian.journal import JournalError, read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import sign
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY, running_sim
from tests.daemon import account_config, get_json, serving, wait_for

BOT_KEY = "grid-bot-local-key-01"
BOT_SECRET = base64.b64encode(b"grid bot local secret, 32 bytes!").decode()
READER_KEY = "reader-bot-local-key-1"
READER_SECRET = base64.b64encode(b"reader bot local secret 32 bytes").decode()
ADMIN = "admin-token-for-the-gateway-tests"
# A beat slow enough to leave the exchange's budget to the bots (a refresh costs 25 of 500 per 10 s).
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
GUARD = GuardConfig(
    symbols=("PF_XBTUSD", "PF_ETHUSD"),
    max_order_size=5,
    max_notional=250_000,
    price_band_pct=5,
    per_symbol={"PF_ETHUSD": SymbolLimits(max_order_size=50)},
    mark_poll_s=0.1,
    mark_max_age_s=2.0,
    upstream_timeout_s=1.0,
)
CLIENTS = (
    ClientConfig("grid-bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE})),
    ClientConfig("reader", READER_KEY, ApiSecret(READER_SECRET), frozenset({Permission.READ})),
)
LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 59000}


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    # A budget larger than Kraken's, so that tests raising guardian's own see guardian refuse first.
    async with running_sim(budget_capacity=20_000) as simulator:
        yield simulator


@contextlib.asynccontextmanager
async def gateway(
    exchange: Simulator,
    tmp_path: Path,
    guard: GuardConfig = GUARD,
    clients: tuple[ClientConfig, ...] = CLIENTS,
    *,
    admin_token: str | None = None,
) -> AsyncIterator[Service]:
    """guardian in front of `exchange`, its journal in `tmp_path` (the same file on every call), ready:
    the switch armed and the marks read."""
    account = account_config(exchange.url, switch=SWITCH, guard=guard, clients=clients)
    async with serving(account, journal=tmp_path / "journal.sqlite3", admin_token=admin_token) as service:
        await until_ready(service)
        yield service


def bot_client(service: Service, *, timeout_s: float = 5, pool_size: int = 16) -> KrakenClient:
    """The grid bot's client: guardian's own KrakenClient, signing with the bot's local key."""
    return KrakenClient(
        service.url, Credentials(BOT_KEY, ApiSecret(BOT_SECRET)), timeout_s=timeout_s, pool_size=pool_size
    )


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    async with gateway(exchange, tmp_path, admin_token=ADMIN) as service:
        yield service


async def until_ready(service: Service) -> None:
    account = service.accounts[0]
    await wait_for(
        lambda: account.switch.state is SwitchState.ARMED and account.marks.mark("PF_XBTUSD") is not None,
        what="switch armed and marks polled",
    )


@pytest.fixture
async def bot(guardian: Service) -> AsyncIterator[KrakenClient]:
    async with bot_client(guardian) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def reached(exchange: Simulator, endpoint: str) -> list[dict[str, Any]]:
    return exchange.requests_for(endpoint)


async def refused(call: Any, code: str) -> ExchangeError:
    """Our KrakenClient as the bot: it classifies by status (503 as unavailable, 401/403 as
    authentication) but always keeps the code, which is what matters here."""
    with pytest.raises(ExchangeError) as caught:
        await call
    assert caught.value.code == code, caught.value
    return caught.value


async def raw_post(
    http: aiohttp.ClientSession, url: str, body: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    async with http.post(url, data=body.encode(), headers=sent) as response:
        return response.status, await response.json(content_type=None)


# ---- forwarding ---------------------------------------------------------------------------------------


async def test_an_order_goes_out_signed_with_the_account_key_and_the_answer_comes_back(
    exchange: Simulator, bot: KrakenClient
) -> None:
    answer = await bot.send_order(**LMT, cliOrdId="first-order")
    assert answer["sendStatus"]["status"] == "placed"
    [seen] = reached(exchange, "sendorder")
    assert seen["api_key"] == TRADE_KEY  # re-signed: the bot's key never reaches the exchange
    assert seen["fields"]["cliOrdId"] == "first-order"
    [order] = exchange.exchange.accounts["main"].open_orders()
    assert answer["sendStatus"]["order_id"] == order.order_id
    assert {r["api_key"] for r in exchange.requests if r["api_key"]} == {TRADE_KEY}  # tickers: unsigned


async def test_reads_and_public_endpoints_pass_through(exchange: Simulator, bot: KrakenClient) -> None:
    await bot.send_order(**LMT)
    assert len(await bot.open_orders()) == 1
    assert isinstance(await bot.accounts(), dict)
    tickers = await bot.tickers()
    assert {t["symbol"] for t in tickers} >= {"PF_XBTUSD", "PF_ETHUSD"}
    url = bot.base_url + "/derivatives/api/v3/tickers/PF_XBTUSD"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert (await response.json())["ticker"]["symbol"] == "PF_XBTUSD"


# ---- authentication and permission -------------------------------------------------------------------


async def test_a_wrong_secret_or_unknown_key_is_refused_and_never_forwarded(
    exchange: Simulator, guardian: Service
) -> None:
    wrong = ApiSecret(base64.b64encode(b"not the grid bot's secret at all").decode())
    for key in (BOT_KEY, "no-such-key-000000"):
        async with KrakenClient(guardian.url, Credentials(key, wrong), timeout_s=5) as impostor:
            with pytest.raises(AuthenticationFailed):
                await impostor.send_order(**LMT)
    async with KrakenClient(guardian.url, Credentials(TRADE_KEY, ApiSecret(BOT_SECRET)), timeout_s=5) as c:
        with pytest.raises(AuthenticationFailed):
            await c.open_orders()  # the exchange key itself is not a local key
    assert reached(exchange, "sendorder") == []
    assert reached(exchange, "openorders") == []


async def test_unsigned_requests_get_krakens_envelope_with_a_message(
    guardian: Service, http: aiohttp.ClientSession, exchange: Simulator
) -> None:
    status, doc = await raw_post(http, guardian.url + "/derivatives/api/v3/sendorder", "orderType=lmt")
    assert status == 401
    assert doc["result"] == "error" and doc["error"] == "authenticationError"
    assert "APIKey" in doc["message"] and doc["serverTime"].endswith("Z")
    assert reached(exchange, "sendorder") == []


async def test_a_read_only_bot_cannot_trade(guardian: Service, exchange: Simulator) -> None:
    async with KrakenClient(
        guardian.url, Credentials(READER_KEY, ApiSecret(READER_SECRET)), timeout_s=5
    ) as r:
        assert await r.open_orders() == []
        await refused(r.send_order(**LMT), "permissionDenied")
        await refused(r.cancel_all_orders(), "permissionDenied")
    assert reached(exchange, "sendorder") == [] and reached(exchange, "cancelallorders") == []


async def test_a_repeated_nonce_is_refused(guardian: Service, http: aiohttp.ClientSession) -> None:
    nonce = str(int(time.time() * 1000))
    headers = {
        "APIKey": BOT_KEY,
        "Nonce": nonce,
        "Authent": sign(ApiSecret(BOT_SECRET).key_bytes(), "", nonce, "/api/v3/openorders"),
    }
    url = guardian.url + "/derivatives/api/v3/openorders"
    async with http.get(url, headers=headers) as first:
        assert first.status == 200
    async with http.get(url, headers=headers) as again:
        assert again.status == 401
        assert (await again.json())["error"] == "nonceDuplicate"


async def test_funds_never_move(guardian: Service, bot: KrakenClient, exchange: Simulator) -> None:
    for name in ("transfer", "withdrawal"):
        await refused(
            bot.request(name, {"amount": 1, "fromAccount": "a", "toAccount": "b", "unit": "usd"}),
            "endpointNotAllowed",
        )
    assert not [r for r in exchange.requests if r["endpoint"] in ("transfer", "withdrawal")]


async def test_unknown_paths_and_methods_are_refused(guardian: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(guardian.url + "/derivatives/api/v3/nosuchthing") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "notFound"
    async with http.get(guardian.url + "/derivatives/api/v3/sendorder") as response:
        assert response.status == 404


async def test_a_body_over_64_kib_is_refused_with_413(
    guardian: Service, http: aiohttp.ClientSession, exchange: Simulator
) -> None:
    status, doc = await raw_post(http, guardian.url + "/derivatives/api/v3/sendorder", "x=" + "a" * 70_000)
    assert (status, doc["error"]) == (413, "requestTooLarge")
    assert reached(exchange, "sendorder") == []


async def test_a_bug_answers_500_in_krakens_shape_and_sends_nothing(
    guardian: Service, bot: KrakenClient, exchange: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the guard")

    stages = tuple(gateway_app.Stage(s.name, broken) if s.name == "limits" else s for s in gateway_app.STAGES)
    monkeypatch.setattr(gateway_app, "STAGES", stages)
    with pytest.raises(ExchangeError) as caught:
        await bot.send_order(**LMT)
    assert (caught.value.code, caught.value.http_status) == ("Server Error", 500)
    assert reached(exchange, "sendorder") == []
    monkeypatch.undo()
    await bot.send_order(**LMT)  # the daemon goes on


# ---- the switch is guardian's -------------------------------------------------------------------------


async def test_a_bots_own_switch_call_is_answered_from_guardians_switch(
    guardian: Service, bot: KrakenClient, exchange: Simulator
) -> None:
    before = len(reached(exchange, "cancelallordersafter"))
    status = await bot.cancelallordersafter(60)
    remaining = guardian.accounts[0].switch.remaining()
    assert remaining is not None and status.deadline is not None
    assert abs(status.timeout_granted_s - remaining) < 0.5
    await refused(bot.cancelallordersafter(0), "endpointNotAllowed")
    fields = [r["fields"]["timeout"] for r in reached(exchange, "cancelallordersafter")[before:]]
    assert set(fields) <= {str(SWITCH.timeout_s)}  # only guardian's own refreshes reached the exchange


async def test_no_new_risk_unless_armed_but_cancels_pass(
    guardian: Service, bot: KrakenClient, exchange: Simulator
) -> None:
    placed = await bot.send_order(**LMT)
    exchange.faults.add(Fault("cancelallordersafter", "status", status=503))
    switch = guardian.accounts[0].switch
    await wait_for(lambda: switch.state is SwitchState.DEGRADED, what="degraded")
    sends = len(reached(exchange, "sendorder"))
    assert (await refused(bot.send_order(**LMT), "switchNotArmed")).http_status == 409
    await refused(
        bot.edit_order(orderId=placed["sendStatus"]["order_id"], limitPrice=59500), "switchNotArmed"
    )
    assert len(reached(exchange, "sendorder")) == sends
    assert reached(exchange, "editorder") == []
    answer = await bot.cancel_order(order_id=placed["sendStatus"]["order_id"])
    assert answer["cancelStatus"]["status"] == "cancelled"
    await bot.cancel_all_orders()
    exchange.faults.clear()
    await wait_for(lambda: switch.state is SwitchState.ARMED, what="re-armed")
    await bot.send_order(**LMT)


# ---- validation and limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"symbol": "PF_SOLUSD", "limitPrice": 150}, "symbolNotAllowed"),
        ({"size": 6}, "orderSizeTooLarge"),
        ({"size": 5}, "notionalTooLarge"),  # 5 x 59000 > 250000
        ({"limitPrice": 50000}, "priceOutsideBand"),
        ({"limitPrice": 64000}, "priceOutsideBand"),
        ({"size": 0}, "invalidArgument"),
        ({"orderType": "market"}, "invalidArgument"),
        ({"limitPrice": None}, "requiredArgumentMissing"),
        ({"colour": "red"}, "invalidArgument"),
    ],
)
async def test_each_rule_refuses_before_the_exchange(
    bot: KrakenClient, exchange: Simulator, change: dict[str, Any], code: str
) -> None:
    order = {k: v for k, v in {**LMT, **change}.items() if v is not None}
    error = await refused(bot.request("sendorder", order), code)
    assert error.http_status in (400, 403)
    assert reached(exchange, "sendorder") == []


async def test_per_symbol_limits_apply(bot: KrakenClient) -> None:
    await bot.send_order(orderType="lmt", symbol="PF_ETHUSD", side="buy", size=40, limitPrice=2990)


async def test_a_stale_mark_fails_closed(guardian: Service, bot: KrakenClient, exchange: Simulator) -> None:
    exchange.faults.add(Fault("tickers", "status", status=503))  # the marks stop coming
    marks = guardian.accounts[0].marks
    await wait_for(lambda: marks.mark("PF_XBTUSD") is None, what="mark dropped")
    assert (await refused(bot.send_order(**LMT), "markPriceUnavailable")).http_status == 503
    assert reached(exchange, "sendorder") == []


# ---- modes and the admin endpoints --------------------------------------------------------------------


async def admin(
    http: aiohttp.ClientSession, guardian: Service, path: str, doc: dict[str, Any], token: str = ADMIN
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(guardian.url + path, json=doc, headers=headers) as response:
        return response.status, await response.json()


async def test_reduce_only_and_halted_modes(
    guardian: Service, bot: KrakenClient, http: aiohttp.ClientSession, exchange: Simulator
) -> None:
    placed = await bot.send_order(**LMT)
    assert await admin(http, guardian, "/guardian/mode", {"account": "main", "mode": "reduce_only"}) == (
        200,
        {"account": "main", "mode": "reduce_only", "previous": "active"},
    )
    assert (await refused(bot.send_order(**LMT), "reduceOnlyMode")).http_status == 403
    await bot.send_order(**{**LMT, "side": "sell", "limitPrice": 60500, "reduceOnly": "true"})
    assert (await admin(http, guardian, "/guardian/mode", {"account": "main", "mode": "halted"}))[0] == 200
    assert (
        await refused(bot.send_order(**{**LMT, "reduceOnly": "true"}), "tradingHalted")
    ).http_status == 403
    sends = len(reached(exchange, "sendorder"))
    await bot.cancel_order(order_id=placed["sendStatus"]["order_id"])
    await bot.cancel_all_orders()
    assert len(reached(exchange, "sendorder")) == sends
    state = guardian.state_json()
    assert state["accounts"][0]["mode"] == "halted"  # type: ignore[index]


async def test_admin_needs_the_token(guardian: Service, http: aiohttp.ClientSession) -> None:
    status, doc = await admin(
        http, guardian, "/guardian/mode", {"account": "main", "mode": "active"}, token="wrong"
    )
    assert (status, doc["error"]) == (401, "authenticationError")
    assert ADMIN not in json.dumps(doc)
    status, doc = await admin(http, guardian, "/guardian/mode", {"account": "nope", "mode": "active"})
    assert status == 400
    status, doc = await admin(http, guardian, "/guardian/mode", {"account": "main", "mode": "yolo"})
    assert status == 400


async def test_kill_halts_and_cancels_everything_at_once(
    guardian: Service, bot: KrakenClient, http: aiohttp.ClientSession, exchange: Simulator
) -> None:
    await bot.send_order(**LMT)
    await bot.send_order(**{**LMT, "limitPrice": 58000})
    status, doc = await admin(http, guardian, "/guardian/kill", {"account": "main"})
    assert status == 200
    assert doc["mode"] == "halted"
    assert doc["exchange"]["cancelStatus"]["status"] == "cancelled"
    assert exchange.exchange.accounts["main"].open_orders() == []
    await refused(bot.send_order(**LMT), "tradingHalted")


async def test_halted_survives_a_restart(exchange: Simulator, tmp_path: Path) -> None:
    async with gateway(exchange, tmp_path, admin_token=ADMIN) as first, aiohttp.ClientSession() as http:
        assert (await admin(http, first, "/guardian/kill", {"account": "main"}))[0] == 200
    async with gateway(exchange, tmp_path, admin_token=ADMIN) as second:  # the same journal
        async with bot_client(second) as b:
            await refused(b.send_order(**LMT), "tradingHalted")
        assert second.accounts[0].mode.value == "halted"


# ---- batches ------------------------------------------------------------------------------------------


async def test_a_batch_with_one_bad_item_is_refused_whole_naming_it(
    guardian: Service, bot: KrakenClient, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    items = [
        {
            "order": "send",
            "order_tag": "a",
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": 1,
            "limitPrice": 59000,
        },
        {
            "order": "send",
            "order_tag": "b",
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": 9,
            "limitPrice": 59000,
        },
    ]
    await refused(bot.batch_order(items), "orderSizeTooLarge")
    body = "json=" + quote(json.dumps({"batchOrder": items}))
    nonce = str(int(time.time() * 1000))
    headers = {
        "APIKey": BOT_KEY,
        "Nonce": nonce,
        "Authent": sign(ApiSecret(BOT_SECRET).key_bytes(), body, nonce, "/api/v3/batchorder"),
    }
    status, doc = await raw_post(http, guardian.url + "/derivatives/api/v3/batchorder", body, headers)
    assert (status, doc["error"], doc["item"], doc["order_tag"]) == (403, "orderSizeTooLarge", 1, "b")
    assert doc["message"].startswith("batchOrder[1] (order_tag 'b'): ")
    assert reached(exchange, "batchorder") == []
    answer = await bot.batch_order(items[:1])
    assert answer["batchStatus"][0]["status"] == "placed"


# ---- the rate budget -----------------------------------------------------------------------------------


async def test_the_local_budget_refuses_before_the_exchange_would(
    exchange: Simulator, tmp_path: Path
) -> None:
    # The switch keeps 275 (11 refreshes) and cancels 25: bots get 100 units, ten orders, per 10 s.
    async with (
        gateway(exchange, tmp_path, GuardConfig(rate_budget=400, mark_poll_s=0.1)) as service,
        bot_client(service) as b,
    ):
        codes = []
        for _ in range(20):
            try:
                await b.send_order(**LMT)
                codes.append("ok")
            except ExchangeRejected as exc:
                codes.append(str(exc.code))
        assert "apiLimitExceeded" in codes
        await b.cancel_all_orders()  # cancels keep a reserve of their own
    assert [r for r in exchange.requests if r.get("error") == "apiLimitExceeded"] == []


async def test_a_bot_with_its_own_share_is_held_to_it_while_others_trade(
    exchange: Simulator, tmp_path: Path
) -> None:
    small = ClientConfig(
        "small-bot",
        "small-bot-local-key-1",
        ApiSecret(BOT_SECRET),
        frozenset({Permission.TRADE}),
        rate_budget=30,
    )
    async with gateway(exchange, tmp_path, GUARD, (*CLIENTS, small)) as service:
        creds = Credentials("small-bot-local-key-1", ApiSecret(BOT_SECRET))
        async with (
            KrakenClient(service.url, creds, timeout_s=5) as s,
            bot_client(service) as other,
        ):
            for _ in range(3):
                await s.send_order(**LMT)
            error = await refused(s.send_order(**LMT), "apiLimitExceeded")
            assert error.http_status == 429
            await other.send_order(**LMT)  # the account still has room
    assert len(reached(exchange, "sendorder")) == 4


async def test_with_dedupe_off_a_repeated_cli_ord_id_goes_to_the_exchange(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with (
        gateway(exchange, tmp_path, GuardConfig(mark_poll_s=0.1, dedupe_window_s=0)) as service,
        bot_client(service) as b,
    ):
        await b.send_order(**LMT, cliOrdId="twice")
        second = await b.send_order(**LMT, cliOrdId="twice")
    assert second["sendStatus"]["status"] == "clientOrderIdAlreadyExist"  # the exchange's own answer
    assert len(reached(exchange, "sendorder")) == 2


# ---- the journal can fail: no new risk without an audit trail -----------------------------------------


def disk_full(conn: sqlite3.Connection) -> None:
    """The database may not grow, and the room left in its pages is filled too: no row fits any more,
    however small (otherwise a short refusal row may still fit where an order's intent does not).
    SQLITE_FULL undoes a whole transaction, so each filler row is a transaction of its own; the writer's
    transaction is closed first and a fresh one handed back for it to commit."""
    conn.execute("COMMIT")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    fillers = (  # every table and index a new row goes into; outcome NULL fills the unfinished index
        "INSERT INTO requests (received_at, account, endpoint, params, verdict) VALUES (0, '', 'filler', ?, '')",
        "INSERT INTO events (at, kind, detail) VALUES (0, 'filler', ?)",
    )
    for insert in fillers:
        for size in (1000, 100, 10, 1):
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(insert, ("x" * size,))
                    conn.execute("COMMIT")
                except sqlite3.OperationalError:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    break
    conn.execute("BEGIN IMMEDIATE")


def disk_freed(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")


async def test_an_unwritable_journal_stops_new_risk_but_not_cancels(
    exchange: Simulator, tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("guardian.service.JOURNAL_PROBE_S", 0.2)
    async with (
        gateway(exchange, tmp_path, GuardConfig(mark_poll_s=0.1, rate_budget=20_000)) as service,
        bot_client(service) as b,
    ):
        placed = await b.send_order(**LMT)
        batched = await b.send_order(**{**LMT, "limitPrice": 58800})
        await service.journal._set_on_every_connection(disk_full)
        accepted = 2
        failure: ExchangeError | None = None
        for i in range(200):
            try:
                await b.send_order(**{**LMT, "cliOrdId": f"filling-the-disk-{i:03d}-" + "x" * 70})
            except ExchangeError as exc:
                failure = exc
                break
            accepted += 1
        assert failure is not None, "the journal never filled up"
        assert (failure.code, failure.http_status) == ("journalUnavailable", 503)
        assert len(reached(exchange, "sendorder")) == accepted  # the refused one never left
        assert not service.journal.healthy
        status, doc = await get_json(http, service.url + "/readyz")
        assert status == 503 and doc["reasons"][0].startswith("journal: cannot write")
        assert service.state_json()["journal"]["healthy"] is False  # type: ignore[index]
        async with http.get(service.url + "/metrics") as response:
            assert "guardian_journal_healthy 0.0" in await response.text()
        cancelled = await b.cancel_order(order_id=placed["sendStatus"]["order_id"])
        assert cancelled["cancelStatus"]["status"] == "cancelled"  # cancels pass without a journal
        batch = await b.batch_order([{"order": "cancel", "order_id": batched["sendStatus"]["order_id"]}])
        assert batch["batchStatus"][0]["status"] == "cancelled"  # a batch of cancels too
        # Space comes back, quietly: the hook frees it and then fails its own transaction, so nothing
        # committed says so. (It rides in the next transaction; if an outcome queued with it needs a new
        # page, that transaction fails before the hook runs, and the outcome is retried on its own.)
        with contextlib.suppress(JournalError):  # the cancels' outcomes fail now and wait for a retry
            await service.journal.flush()
        freed: list[bool] = []

        def disk_freed_quietly(conn: sqlite3.Connection) -> None:
            disk_freed(conn)
            if threading.current_thread() is not threading.main_thread():  # the writer's, not the loop's
                freed.append(True)
                raise sqlite3.OperationalError("not this time")

        while not freed:
            with contextlib.suppress(JournalError):
                await service.journal._set_on_every_connection(disk_freed_quietly)
        assert not service.journal.healthy
        # No order needed to find out: guardian tries a small write now and then by itself.
        await wait_for(lambda: service.journal.healthy, what="the journal writing again")
        status, _ = await get_json(http, service.url + "/readyz")
        assert status == 200
        await b.send_order(**LMT)
    events = [r["kind"] for r in read_journal(tmp_path / "journal.sqlite3") if r.get("type") == "event"]
    assert "journal_writable" in events


async def test_a_disk_turning_slow_stalls_the_loop_once_and_the_switch_keeps_its_beat(
    exchange: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy machine can make a commit slow before the test slows the disk (the writer thread's canary
    # waited on the GIL: one CI-like run in the suite): a short pause, so that one lapses within the wait.
    monkeypatch.setattr("guardian.journal.LOOP_PAUSE_S", 5.0)
    async with gateway(exchange, tmp_path) as service, bot_client(service) as b:

        async def committed_on_the_loop() -> bool:
            await b.send_order(**LMT)
            if service.journal.loop_commits > 0:
                return True
            await asyncio.sleep(0.5)  # paused: about ten orders until it lapses, well inside the budget
            return False

        # Intents are committed on the loop while the disk is fast.
        await wait_for(committed_on_the_loop, 15, "an intent committed on the loop")
        pauses = service.journal.loop_pauses

        def slow_insert(conn: sqlite3.Connection, sql: str, row: tuple[Any, ...]) -> int | None:
            time.sleep(0.3)  # from now on every write waits for the disk, wherever it is made
            return conn.execute(sql, row).lastrowid

        monkeypatch.setattr("guardian.journal._insert", slow_insert)
        loop = asyncio.get_running_loop()
        lateness: list[float] = []

        async def beat() -> None:
            while True:
                started = loop.time()
                await asyncio.sleep(0.02)
                lateness.append(loop.time() - started - 0.02)

        refreshed = len(reached(exchange, "cancelallordersafter"))
        ticking = asyncio.create_task(beat())
        started = time.monotonic()
        try:
            sent = 0
            while time.monotonic() - started < 4.0:
                await b.send_order(**LMT)  # each waits 0.3 s or more for its intent: the thread's
                sent += 1
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
        assert sent >= 6 and service.journal.loop_pauses == pauses + 1
        stalls = [late for late in lateness if late > 0.1]
        assert len(stalls) <= 1 and all(late < 0.5 for late in stalls), stalls  # one slow commit, at most
        refreshes = reached(exchange, "cancelallordersafter")[refreshed:]
        assert len(refreshes) >= 2  # every 1.0-1.5 s, as configured, with orders waiting on the disk
        at = [datetime.fromisoformat(r["time"]).timestamp() for r in refreshes]
        assert max(later - earlier for earlier, later in itertools.pairwise(at)) < 1.5 + 0.5, at
        assert service.accounts[0].switch.state is SwitchState.ARMED


async def test_with_commit_on_loop_off_every_intent_is_committed_by_the_writer_thread(
    exchange: Simulator, tmp_path: Path
) -> None:
    account = account_config(exchange.url, switch=SWITCH, guard=GUARD, clients=CLIENTS)
    async with serving(account, journal=tmp_path / "journal.sqlite3", commit_on_loop=False) as service:
        await until_ready(service)
        async with bot_client(service) as b:
            for _ in range(3):
                await b.send_order(**LMT)
        assert service.journal.loop_commits == 0 and service.journal.thread_commits >= 3
    forwarded = [r for r in read_journal(tmp_path / "journal.sqlite3") if r.get("verdict") == "forwarded"]
    assert len(forwarded) == 3


# ---- retries ------------------------------------------------------------------------------------------


async def test_a_retried_cli_ord_id_gets_the_first_answer_not_a_second_order(
    bot: KrakenClient, exchange: Simulator
) -> None:
    first = await bot.send_order(**LMT, cliOrdId="retry-me")
    second = await bot.send_order(**LMT, cliOrdId="retry-me")
    assert second == first
    assert len(reached(exchange, "sendorder")) == 1


async def test_concurrent_retries_wait_for_the_first(bot: KrakenClient, exchange: Simulator) -> None:
    exchange.faults.add(Fault("sendorder", "latency", latency_s=0.3, times=1))
    answers = await asyncio.gather(*(bot.send_order(**LMT, cliOrdId="burst") for _ in range(5)))
    assert len({a["sendStatus"]["order_id"] for a in answers}) == 1
    assert len(reached(exchange, "sendorder")) == 1


async def test_an_unknown_outcome_is_settled_by_asking_the_exchange(
    bot: KrakenClient, exchange: Simulator
) -> None:
    exchange.faults.add(
        Fault("sendorder", "latency", latency_s=1.5, times=1)
    )  # over the 1 s upstream timeout
    with pytest.raises(ExchangeError) as caught:
        await bot.send_order(**LMT, cliOrdId="slow-one")
    assert (caught.value.code, caught.value.http_status) == ("Unavailable", 504)  # outcome unknown
    await asyncio.sleep(0.7)  # the exchange placed it after all
    again = await bot.send_order(**LMT, cliOrdId="slow-one")
    assert again["sendStatus"]["cliOrdId"] == "slow-one"
    assert len(exchange.exchange.accounts["main"].open_orders()) == 1
    assert len(reached(exchange, "sendorder")) == 1


async def test_a_replayed_answer_costs_no_budget_but_asking_about_an_unknown_outcome_does(
    exchange: Simulator, tmp_path: Path
) -> None:
    # As in the budget test above: the bots get room for ten orders per 10 s.
    guard = GuardConfig(rate_budget=400, mark_poll_s=0.1, upstream_timeout_s=0.5)
    async with gateway(exchange, tmp_path, guard) as service, bot_client(service) as b:
        first = await b.send_order(**LMT, cliOrdId="placed-once")
        for _ in range(30):  # three times what the budget would let out: none of them goes out
            assert await b.send_order(**LMT, cliOrdId="placed-once") == first
        exchange.faults.add(Fault("sendorder", "latency", latency_s=1.0, times=1))  # over the timeout
        with pytest.raises(ExchangeError):
            await b.send_order(**LMT, cliOrdId="unknown-one")
        codes = []
        for i in range(12):  # the rest of the window's budget
            try:
                await b.send_order(**{**LMT, "limitPrice": 58000 + i})
                codes.append("ok")
            except ExchangeRejected as exc:
                codes.append(str(exc.code))
        assert codes[-1] == "apiLimitExceeded", codes
        # Settling the unknown outcome needs an orders/status, and there is no budget for it.
        await refused(b.send_order(**LMT, cliOrdId="unknown-one"), "apiLimitExceeded")
        assert reached(exchange, "orders/status") == []
    assert len([r for r in reached(exchange, "sendorder") if "placed-once" in str(r)]) == 1


async def test_a_dropped_connection_is_unavailable_and_a_retry_is_sent_once_more(
    guardian: Service, bot: KrakenClient, exchange: Simulator
) -> None:
    exchange.faults.add(Fault("sendorder", "drop", times=1))  # the exchange never acted on it
    with pytest.raises(ExchangeError) as caught:
        await bot.send_order(**LMT, cliOrdId="dropped")
    assert (caught.value.code, caught.value.http_status) == ("Unavailable", 502)
    again = await bot.send_order(**LMT, cliOrdId="dropped")  # orders/status: not there, so sent again
    assert again["sendStatus"]["status"] == "placed"
    assert len(exchange.exchange.accounts["main"].open_orders()) == 1
    assert len(reached(exchange, "sendorder")) == 2
    assert [r["endpoint"] for r in exchange.requests if r["endpoint"] == "orders/status"] == ["orders/status"]
    await guardian.journal.flush()
    rows = read_journal(guardian.config.journal.path)
    outcomes = [r["outcome"] for r in rows if r.get("type") == "request" and r["endpoint"] == "sendorder"]
    assert outcomes == ["unavailable", "success"]


# ---- the journal and metrics --------------------------------------------------------------------------


async def test_every_forwarded_order_is_journaled_under_concurrent_load(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with gateway(exchange, tmp_path, GuardConfig(mark_poll_s=0.1, rate_budget=20_000)) as guardian:
        async with bot_client(guardian, timeout_s=10, pool_size=64) as bot:
            await asyncio.gather(*(bot.send_order(**{**LMT, "limitPrice": 58000 + i}) for i in range(200)))
        await guardian.journal.flush()
        rows = read_journal(guardian.config.journal.path, limit=10_000)
    sends = [r for r in rows if r.get("type") == "request" and r.get("endpoint") == "sendorder"]
    assert len(sends) == 200 == len(reached(exchange, "sendorder"))
    assert all(r["verdict"] == "forwarded" and r["outcome"] == "success" for r in sends)
    assert BOT_SECRET not in json.dumps(rows)


async def test_state_shows_the_marks_and_the_budget(
    guardian: Service, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    _, state = await get_json(http, guardian.url + "/guardian/state")
    account = state["accounts"][0]
    assert account["marks"]["PF_XBTUSD"]["price"] == "60000"
    assert account["marks"]["PF_XBTUSD"]["fresh"] is True
    assert 0 <= account["marks"]["PF_XBTUSD"]["age_s"] < GUARD.mark_max_age_s
    assert 0 < account["rate_budget_available"] <= GUARD.rate_budget
    assert account["rate_budget_kept_for_switch"] > 0
    assert account["marks_last_error"] is None


async def test_gateway_metrics(guardian: Service, bot: KrakenClient, http: aiohttp.ClientSession) -> None:
    await bot.send_order(**LMT)
    await refused(bot.send_order(**{**LMT, "size": 6}), "orderSizeTooLarge")
    async with http.get(guardian.url + "/metrics") as response:
        text = await response.text()
    assert 'guardian_requests_total{account="main",endpoint="sendorder",outcome="success"} 1.0' in text
    assert 'guardian_rejections_total{account="main",reason="orderSizeTooLarge"} 1.0' in text
    assert 'guardian_mode{account="main",mode="active"} 1.0' in text
    assert 'guardian_rate_budget_available{account="main"}' in text
    assert "guardian_request_duration_seconds_bucket" in text
    assert "guardian_upstream_request_duration_seconds_bucket" in text


async def test_a_suspended_market_refuses_new_orders_locally_and_cancels_pass(
    guardian: Service, bot: KrakenClient, exchange: Simulator
) -> None:
    placed = await bot.send_order(**LMT)
    exchange.exchange.market.set_suspended("PF_XBTUSD", True)
    account = guardian.accounts[0]
    await wait_for(lambda: account.marks.suspended("PF_XBTUSD"), what="the ticker's suspended flag read")
    sends = len(reached(exchange, "sendorder"))
    error = await refused(bot.send_order(**LMT), "marketSuspended")
    assert error.http_status == 503
    items = [{"order": "send", "order_tag": "1", **LMT}]
    await refused(bot.batch_order(items), "marketSuspended")
    assert len(reached(exchange, "sendorder")) == sends and reached(exchange, "batchorder") == []
    await bot.send_order(**{**LMT, "symbol": "PF_ETHUSD", "limitPrice": 2990})  # other markets trade
    cancelled = await bot.cancel_order(order_id=placed["sendStatus"]["order_id"])
    assert cancelled["cancelStatus"]["status"] == "cancelled"
    exchange.exchange.market.set_suspended("PF_XBTUSD", False)
    await wait_for(lambda: not account.marks.suspended("PF_XBTUSD"), what="the market back")
    assert (await bot.send_order(**LMT))["sendStatus"]["status"] == "placed"


async def test_at_the_debug_level_each_stage_of_an_orders_way_is_timed_in_its_log_line(
    guardian: Service, bot: KrakenClient
) -> None:
    out = io.StringIO()
    logs.configure("debug", "json", out)
    try:
        await bot.send_order(**LMT)
        await wait_for(lambda: "request_forwarded" in out.getvalue(), 2.0, "the forwarded line")
    finally:
        logs.configure("info", "json", io.StringIO())
    [line] = [json.loads(t) for t in out.getvalue().splitlines() if '"request_forwarded"' in t]
    stages = dict(line["stages_ms"])
    assert list(stages) == [*(s.name for s in gateway_app.STAGES), "settle"]
    assert all(spent >= 0 for spent in stages.values())
    assert stages["journal and forward"] >= line["upstream_ms"] > 0
