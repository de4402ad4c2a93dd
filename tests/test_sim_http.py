"""The simulator's HTTP face through the real client and through raw aiohttp: authentication, parameter
placement, batch encodings, nonces, permissions, the cost budget, the dead man's switch in real time,
fault injection and the rest of the control API, public data, and refusal of money movement."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from guardian.errors import (
    AuthenticationFailed,
    ExchangeRejected,
    ExchangeTimeout,
    ExchangeUnavailable,
    NonceRejected,
    RateLimited,
)
from guardian.kraken.client import Credentials, KrakenClient, classify
from guardian.kraken.endpoints import endpoint
from guardian.kraken.signing import encode_params
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.market import Market
from tests.conftest import READ_SECRET, TRADE_KEY, TRADE_SECRET, sim_keys

V3 = "/derivatives/api/v3/"
LMT = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1", "limitPrice": "59000"}
STP = {"orderType": "stp", "symbol": "PF_XBTUSD", "side": "sell", "size": "1", "stopPrice": "59000"}


def authent(secret: str, post_data: str, nonce: str | None, path: str) -> str:
    """Kraken's signature written out from the reference, independent of guardian's signer; `path` is
    used exactly as given (so a test can sign the wrong one)."""
    message = (post_data + (nonce or "") + path).encode()
    digest = hashlib.sha256(message).digest()
    return base64.b64encode(hmac.new(base64.b64decode(secret), digest, hashlib.sha512).digest()).decode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw(
    http: aiohttp.ClientSession,
    sim: Simulator,
    name: str,
    *,
    query: str = "",
    body: str = "",
    method: str | None = None,
    key: str | None = TRADE_KEY,
    secret: str | None = TRADE_SECRET,
    nonce: str | None = None,
    signed: str | None = None,
    signed_path: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5,
) -> tuple[int, dict[str, Any]]:
    """One request as sent by hand: signed over `signed` (default query + body) and `signed_path`
    (default the endpoint path without /derivatives). Returns the HTTP status and the JSON body."""
    row = endpoint(name)
    sent: dict[str, str] = {}
    if key is not None:
        sent["APIKey"] = key
    if secret is not None:
        data = query + body if signed is None else signed
        sent["Authent"] = authent(secret, data, nonce, signed_path or row.signed_path)
    if nonce is not None:
        sent["Nonce"] = nonce
    if body:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    sent.update(headers or {})
    url = sim.url + row.path + (f"?{query}" if query else "")
    async with http.request(
        method or row.method,
        url,
        data=body.encode() if body else None,
        headers=sent,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        return response.status, await response.json(content_type=None)


async def control(
    http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, doc: Any = None
) -> dict[str, Any]:
    async with http.request(method, sim.url + "/_sim" + path, json=doc) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def state(http: aiohttp.ClientSession, sim: Simulator) -> dict[str, Any]:
    main: dict[str, Any] = (await control(http, sim, "GET", "/state"))["accounts"]["main"]
    return main


def open_ids(sim: Simulator) -> list[str]:
    return list(sim.exchange.accounts["main"].open_ids)


def error_of(answer: tuple[int, dict[str, Any]]) -> str | None:
    return answer[1].get("error") if answer[1].get("result") == "error" else None


# ---- authentication -------------------------------------------------------------------------------


async def test_a_correctly_signed_raw_request_is_accepted(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    status, doc = await raw(http, sim, "sendorder", body=encode_params(LMT))
    assert status == 200
    assert doc["result"] == "success"
    assert doc["sendStatus"]["status"] == "placed"


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param({"key": None}, id="no APIKey"),
        pytest.param({"secret": None}, id="no Authent"),
        pytest.param({"key": "sim-unknown-key"}, id="unknown key"),
        pytest.param({"secret": READ_SECRET}, id="wrong secret"),
        pytest.param({"signed": encode_params({**LMT, "size": "2"})}, id="other bytes signed"),
        pytest.param({"signed_path": V3 + "sendorder"}, id="path with /derivatives signed"),
        pytest.param(
            {"nonce": "1700000000000", "headers": {"Nonce": "1700000000001"}}, id="other nonce signed"
        ),
        pytest.param({"headers": {"Authent": "x" * 88}}, id="garbage Authent"),
    ],
)
async def test_a_bad_signature_or_key_is_authentication_error(
    http: aiohttp.ClientSession, sim: Simulator, spoil: dict[str, Any]
) -> None:
    answer = await raw(http, sim, "sendorder", body=encode_params(LMT), **spoil)
    assert error_of(answer) == "authenticationError"
    with pytest.raises(AuthenticationFailed):
        classify("sendorder", answer[0], json.dumps(answer[1]).encode())
    assert sim.exchange.accounts["main"].orders == {}


async def test_the_client_with_a_wrong_secret_raises_authentication_failed(sim: Simulator) -> None:
    async with KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(READ_SECRET)), timeout_s=5) as wrong:
        with pytest.raises(AuthenticationFailed) as caught:
            await wrong.open_orders()
    assert caught.value.code == "authenticationError"


async def test_parameters_in_the_query_only_are_accepted(client: KrakenClient) -> None:
    answer = await client.send(endpoint("sendorder"), query=encode_params(LMT))
    doc = classify("sendorder", answer.status, answer.body)
    assert doc["sendStatus"]["status"] == "placed"
    [row] = await client.open_orders()
    assert (row["limitPrice"], row["unfilledSize"], row["side"]) == (59000, 1, "buy")


async def test_parameters_in_the_body_only_are_accepted(client: KrakenClient) -> None:
    answer = await client.send(endpoint("sendorder"), body=encode_params(LMT))
    assert classify("sendorder", answer.status, answer.body)["sendStatus"]["status"] == "placed"


async def test_parameters_split_between_query_and_body_are_accepted_signed_query_then_body(
    http: aiohttp.ClientSession, client: KrakenClient, sim: Simulator
) -> None:
    query = encode_params({"orderType": "lmt", "symbol": "PF_XBTUSD"})
    body = encode_params({"side": "buy", "size": "2", "limitPrice": "59000"})
    answer = await client.send(endpoint("sendorder"), query=query, body=body)
    assert classify("sendorder", answer.status, answer.body)["sendStatus"]["status"] == "placed"
    [row] = await client.open_orders()
    assert row["unfilledSize"] == 2
    # Body first, then query, is not what Kraken signs.
    wrong = await raw(http, sim, "sendorder", query=query, body=body, signed=body + query)
    assert error_of(wrong) == "authenticationError"


async def test_a_parameter_given_in_both_query_and_body_is_refused(client: KrakenClient) -> None:
    answer = await client.send(endpoint("sendorder"), query="size=1", body=encode_params(LMT))
    with pytest.raises(ExchangeRejected) as caught:
        classify("sendorder", answer.status, answer.body)
    assert caught.value.code == "invalidArgument"


BATCH_ITEMS: list[dict[str, Any]] = [
    {
        "order": "send",
        "order_tag": "1",
        "orderType": "lmt",
        "symbol": "PF_XBTUSD",
        "side": "buy",
        "size": 1,
        "limitPrice": 59000,
        "cliOrdId": "a&b=c%20d",
        "reduceOnly": False,
    },
    {"order": "cancel", "cliOrdId": "nobody"},
]


async def test_a_raw_json_batch_body_with_ampersand_and_percent_is_accepted(client: KrakenClient) -> None:
    body = "json=" + json.dumps({"batchOrder": BATCH_ITEMS})  # as ccxt sends it: not URL-encoded
    answer = await client.send(endpoint("batchorder"), body=body)
    doc = classify("batchorder", answer.status, answer.body)
    assert [r["status"] for r in doc["batchStatus"]] == ["placed", "notFound"]
    assert doc["batchStatus"][0]["cliOrdId"] == "a&b=c%20d"
    [row] = await client.open_orders()
    assert row["cliOrdId"] == "a&b=c%20d"


async def test_a_url_encoded_batch_body_is_accepted(client: KrakenClient) -> None:
    doc = await client.batch_order(BATCH_ITEMS)
    assert [r["status"] for r in doc["batchStatus"]] == ["placed", "notFound"]
    [row] = await client.open_orders()
    assert row["cliOrdId"] == "a&b=c%20d"


async def test_a_batch_whose_json_does_not_parse_is_json_parse_error(client: KrakenClient) -> None:
    with pytest.raises(ExchangeRejected) as caught:
        await client.request("batchorder", {"json": '{"batchOrder": [}'})
    assert caught.value.code == "Json Parse Error"


# ---- nonces ---------------------------------------------------------------------------------------


async def test_no_nonce_at_all_is_fine(sim: Simulator) -> None:
    creds = Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET))
    async with KrakenClient(sim.url, creds, use_nonce=False, timeout_s=5) as plain:
        await plain.accounts()
        await plain.accounts()
        await plain.send_order(**LMT)
    assert len(open_ids(sim)) == 1


async def test_increasing_13_digit_then_18_digit_nonces_are_accepted(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    for nonce in ("1700000000000", "1700000000001", "170000000000000000", "170000000000000001"):
        status, doc = await raw(http, sim, "openorders", nonce=nonce)
        assert (status, doc["result"]) == (200, "success"), nonce


async def test_the_same_nonce_twice_is_nonce_duplicate(http: aiohttp.ClientSession, sim: Simulator) -> None:
    assert error_of(await raw(http, sim, "openorders", nonce="1700000000000")) is None
    again = await raw(http, sim, "openorders", nonce="1700000000000")
    assert error_of(again) == "nonceDuplicate"
    with pytest.raises(NonceRejected):
        classify("openorders", again[0], json.dumps(again[1]).encode())


async def test_a_much_smaller_nonce_is_nonce_below_threshold(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    assert error_of(await raw(http, sim, "openorders", nonce="1700000000000")) is None
    assert error_of(await raw(http, sim, "openorders", nonce="1600000000000")) == "nonceBelowThreshold"


async def test_after_an_18_digit_nonce_the_clients_millisecond_nonces_are_refused(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    assert error_of(await raw(http, sim, "openorders", nonce="170000000000000000")) is None
    with pytest.raises(NonceRejected) as caught:
        await client.open_orders()
    assert caught.value.code == "nonceBelowThreshold"


async def test_a_key_used_with_18_digit_nonces_is_taken_over_with_nanosecond_nonces(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    key = SimKey("sim-nanosecond-key-01", ApiSecret(TRADE_SECRET), account="main")
    sim.add_key(key)
    sdk_nonce = str(int(time.time() * 100_000_000))  # python-kraken-sdk's scale
    assert error_of(await raw(http, sim, "openorders", nonce=sdk_nonce, key=key.api_key)) is None
    creds = Credentials(key.api_key, ApiSecret(TRADE_SECRET))
    async with KrakenClient(sim.url, creds, nonce_unit="nanoseconds", timeout_s=5) as nanos:
        await nanos.open_orders()
        await nanos.accounts()
    assert [r["outcome"] for r in sim.requests if r["api_key"] == key.api_key] == ["success"] * 3


async def test_a_nonce_that_is_not_a_number_is_refused(http: aiohttp.ClientSession, sim: Simulator) -> None:
    assert error_of(await raw(http, sim, "openorders", nonce="12ab")) is not None


# ---- permissions ----------------------------------------------------------------------------------


async def test_a_read_only_key_cannot_send_orders_but_can_read(
    read_client: KrakenClient, sim: Simulator
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await read_client.send_order(**LMT)
    assert caught.value.code == "authenticationError"
    with pytest.raises(AuthenticationFailed):
        await read_client.cancelallordersafter(60)
    assert await read_client.open_orders() == []
    assert sim.exchange.accounts["main"].orders == {}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("withdrawal", {"currency": "USD", "amount": "1"}),
        ("transfer", {"fromAccount": "flex", "toAccount": "cash", "unit": "USD", "amount": "1"}),
    ],
)
async def test_money_movement_needs_the_funds_permission(
    sim: Simulator, client: KrakenClient, name: str, params: dict[str, str]
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await client.request(name, params)
    assert caught.value.code == "authenticationError"
    funds = SimKey("sim-funds-key", ApiSecret(TRADE_SECRET), permissions=frozenset({"read", "funds"}))
    sim.add_key(funds)
    async with KrakenClient(sim.url, Credentials(funds.api_key, funds.secret), timeout_s=5) as mover:
        assert (await mover.request(name, params))["result"] == "success"


# ---- the cost budget ------------------------------------------------------------------------------


async def test_over_the_budget_requests_are_api_limit_exceeded_until_the_window_passes(
    sim: Simulator, client: KrakenClient
) -> None:
    sim.budget_capacity = 30
    sim.budget_window_s = 0.5
    for price in ("59000", "58000", "57000"):  # 10 each
        await client.send_order(**{**LMT, "limitPrice": price})
    with pytest.raises(RateLimited) as caught:
        await client.send_order(**{**LMT, "limitPrice": "56000"})
    assert (caught.value.code, caught.value.http_status) == ("apiLimitExceeded", 200)
    assert len(open_ids(sim)) == 3  # the refused order was not placed
    await asyncio.sleep(0.6)
    await client.send_order(**{**LMT, "limitPrice": "56000"})
    assert len(open_ids(sim)) == 4


async def test_a_batch_costs_nine_plus_its_item_count(sim: Simulator, client: KrakenClient) -> None:
    sim.budget_capacity = 30
    cancels = [{"order": "cancel", "cliOrdId": f"c{i}"} for i in range(22)]
    with pytest.raises(RateLimited):
        await client.batch_order(cancels)  # 9 + 22 = 31
    doc = await client.batch_order(cancels[:21])  # 9 + 21 = 30: exactly the budget
    assert len(doc["batchStatus"]) == 21
    assert sim.budget("main").available() == 0
    with pytest.raises(RateLimited):
        await client.order_status(["x"])  # costs 1


async def test_rate_limit_status_429_answers_http_429(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    sim.budget_capacity = 10
    sim.rate_limit_status = 429
    await client.send_order(**LMT)
    status, doc = await raw(http, sim, "sendorder", body=encode_params(LMT))
    assert (status, doc["error"]) == (429, "apiLimitExceeded")
    with pytest.raises(RateLimited) as caught:
        await client.send_order(**LMT)
    assert caught.value.http_status == 429


async def test_public_endpoints_cost_nothing(sim: Simulator, client: KrakenClient) -> None:
    sim.budget_capacity = 10
    for _ in range(5):
        await client.tickers()
    assert sim.budget("main").available() == 10


# ---- the dead man's switch in real time -----------------------------------------------------------


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def test_the_switch_cancels_resting_and_trigger_orders_when_it_runs_out_and_stays_off(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    started = time.monotonic()
    answer = await client.cancelallordersafter(2)
    assert answer.armed
    assert answer.timeout_granted_s == pytest.approx(2, abs=0.002)
    lmt = (await client.send_order(**LMT))["sendStatus"]["order_id"]
    stp = (await client.send_order(**STP))["sendStatus"]["order_id"]
    assert (await state(http, sim))["switch"]["armed"] is True

    await sleep_until(started + 1.2)
    assert {r["order_id"] for r in await client.open_orders()} == {lmt, stp}

    await sleep_until(started + 2.5)
    assert await client.open_orders() == []
    rows = await client.order_status([lmt, stp])
    assert {r["order"]["orderId"] for r in rows} == {lmt, stp}
    for row in rows:
        assert (row["status"], row["updateReason"]) == ("CANCELLED", "DEAD_MAN_SWITCH")
    switch = (await state(http, sim))["switch"]
    assert (switch["armed"], switch["trigger_time"], switch["fired"]) == (False, None, 1)


async def test_rearming_pushes_the_deadline_back(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    started = time.monotonic()
    first = await client.cancelallordersafter(2)
    lmt = (await client.send_order(**LMT))["sendStatus"]["order_id"]
    await sleep_until(started + 1.2)
    second = await client.cancelallordersafter(2)
    assert second.trigger_time is not None and first.trigger_time is not None
    assert second.trigger_time - first.trigger_time == pytest.approx(1.2, abs=0.2)
    await sleep_until(started + 2.5)
    assert [r["order_id"] for r in await client.open_orders()] == [lmt]
    assert (await state(http, sim))["switch"]["fired"] == 0
    await sleep_until(started + 3.5)
    assert await client.open_orders() == []
    assert (await state(http, sim))["switch"]["fired"] == 1


async def test_timeout_zero_disarms_and_then_nothing_is_cancelled(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    started = time.monotonic()
    await client.cancelallordersafter(1)
    lmt = (await client.send_order(**LMT))["sendStatus"]["order_id"]
    off = await client.cancelallordersafter(0)
    assert (off.armed, off.trigger_time, off.timeout_granted_s) == (False, None, 0.0)
    assert (await state(http, sim))["switch"]["armed"] is False
    await sleep_until(started + 1.5)
    assert [r["order_id"] for r in await client.open_orders()] == [lmt]
    assert (await state(http, sim))["switch"]["fired"] == 0


async def test_the_switch_answer_is_off_in_raw_form_as_trigger_time_zero(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    status, doc = await raw(http, sim, "cancelallordersafter", body="timeout=0")
    assert status == 200
    assert doc["status"]["triggerTime"] == "0"
    parse_iso(doc["status"]["currentTime"])
    assert error_of(await raw(http, sim, "cancelallordersafter", body="timeout=-1")) == "invalidArgument"
    assert error_of(await raw(http, sim, "cancelallordersafter")) == "requiredArgumentMissing"


# ---- fault injection ------------------------------------------------------------------------------


async def add_fault(http: aiohttp.ClientSession, sim: Simulator, **fault: Any) -> None:
    await control(http, sim, "POST", "/faults", fault)


async def test_latency_fault_answers_late_but_correctly(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await client.send_order(**LMT)
    await add_fault(http, sim, endpoint="openorders", kind="latency", latency_s=0.3)
    began = time.monotonic()
    rows = await client.open_orders()
    assert time.monotonic() - began >= 0.3
    assert [r["limitPrice"] for r in rows] == [59000]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("authenticationError", AuthenticationFailed),
        ("apiLimitExceeded", RateLimited),
        ("nonceDuplicate", NonceRejected),
        ("Unavailable", ExchangeUnavailable),
        ("invalidArgument", ExchangeRejected),
    ],
)
async def test_error_fault_answers_the_code_and_the_client_raises_its_class(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient, code: str, kind: type[Exception]
) -> None:
    await add_fault(http, sim, endpoint="sendorder", kind="error", code=code)
    with pytest.raises(kind) as caught:
        await client.send_order(**LMT)
    assert getattr(caught.value, "code", None) == code
    assert sim.exchange.accounts["main"].orders == {}


async def test_status_fault_503_is_exchange_unavailable(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="openorders", kind="status", status=503)
    with pytest.raises(ExchangeUnavailable) as caught:
        await client.open_orders()
    assert caught.value.http_status == 503
    assert not isinstance(caught.value, ExchangeTimeout)


async def test_hang_fault_times_out_and_clearing_faults_releases_it(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="openorders", kind="hang")
    with pytest.raises(ExchangeTimeout):
        await client.request("openorders", timeout_s=0.5)
    waiting = asyncio.create_task(client.request("openorders", timeout_s=5))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await control(http, sim, "DELETE", "/faults")
    with pytest.raises(ExchangeUnavailable) as caught:
        await asyncio.wait_for(waiting, 2)
    assert not isinstance(caught.value, ExchangeTimeout)
    assert await client.open_orders() == []


async def test_drop_fault_is_exchange_unavailable(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="accounts", kind="drop")
    with pytest.raises(ExchangeUnavailable) as caught:
        await client.accounts()
    assert not isinstance(caught.value, ExchangeTimeout)


async def test_a_fault_with_times_one_applies_once(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="openorders", kind="error", code="Unavailable", times=1)
    with pytest.raises(ExchangeUnavailable):
        await client.open_orders()
    assert await client.open_orders() == []
    assert (await control(http, sim, "GET", "/state"))["faults"] == []


async def test_a_fault_on_one_endpoint_leaves_the_others_alone(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="sendorder", kind="status", status=503)
    assert await client.open_orders() == []
    assert len(await client.tickers()) == len(sim.exchange.market.instruments)
    await client.cancelallordersafter(0)
    with pytest.raises(ExchangeUnavailable):
        await client.send_order(**LMT)
    faults = (await control(http, sim, "GET", "/state"))["faults"]
    assert [(f["endpoint"], f["kind"]) for f in faults] == [("sendorder", "status")]


async def test_a_wildcard_fault_applies_to_every_endpoint_and_a_bad_fault_is_refused(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await add_fault(http, sim, endpoint="*", kind="status", status=502)
    with pytest.raises(ExchangeUnavailable):
        await client.tickers()
    with pytest.raises(ExchangeUnavailable):
        await client.open_orders()
    for bad in (
        {"kind": "explode"},
        {"endpoint": "nosuch", "kind": "drop"},
        {"kind": "latency", "latency_s": -1},
    ):
        async with http.post(sim.url + "/_sim/faults", json=bad) as response:
            assert response.status == 400


# ---- the rest of the control API ------------------------------------------------------------------


async def test_clock_offset_shifts_exchange_times_but_not_the_real_countdown(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    answer = await control(http, sim, "POST", "/clock", {"offset_s": 120})
    assert answer["clock_offset_s"] == 120
    _, doc = await raw(http, sim, "tickers", key=None, secret=None)
    assert parse_iso(doc["serverTime"]) - time.time() == pytest.approx(120, abs=2)
    switch = await client.cancelallordersafter(30)
    assert switch.current_time - time.time() == pytest.approx(120, abs=2)
    assert switch.timeout_granted_s == pytest.approx(30, abs=0.002)
    assert switch.clock_skew_s == pytest.approx(120, abs=2)
    remaining = sim.switch_remaining("main")
    assert remaining is not None and 29 < remaining <= 30
    assert switch.deadline is not None and switch.deadline - time.monotonic() == pytest.approx(30, abs=1)
    await client.cancelallordersafter(0)


async def test_setting_a_mark_moves_the_price_and_fires_a_resting_stop(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    stop = (await client.send_order(**STP))["sendStatus"]["order_id"]
    answer = await control(http, sim, "POST", "/mark", {"symbol": "PF_XBTUSD", "price": 58000})
    assert answer["mark"] == 58000
    tickers = {t["symbol"]: t for t in await client.tickers()}
    assert tickers["PF_XBTUSD"]["markPrice"] == 58000
    assert await client.open_orders() == []
    [fill] = await client.fills()
    assert (fill["order_id"], fill["price"], fill["side"]) == (stop, 58000, "sell")
    [held] = await client.open_positions()
    assert (held["side"], held["size"]) == ("short", 1)


async def test_the_request_log_lists_requests_with_endpoint_and_api_key(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await client.tickers()
    await client.send_order(**LMT)
    with pytest.raises(ExchangeRejected):
        await client.request("orderbook")
    log = (await control(http, sim, "GET", "/requests"))["requests"]
    assert [(r["endpoint"], r["api_key"], r["outcome"]) for r in log] == [
        ("tickers", None, "success"),
        ("sendorder", TRADE_KEY, "success"),
        ("orderbook", None, "error"),
    ]
    assert log[2]["error"] == "requiredArgumentMissing"
    assert "error" not in log[1]
    since = log[1]["seq"]
    later = (await control(http, sim, "GET", f"/requests?since={since}"))["requests"]
    assert [r["endpoint"] for r in later] == ["orderbook"]


async def test_suspend_and_step_through_the_control_api(
    http: aiohttp.ClientSession, sim: Simulator, client: KrakenClient
) -> None:
    await control(http, sim, "POST", "/suspend", {"symbol": "PF_XBTUSD"})
    assert (await client.send_order(**LMT))["sendStatus"]["status"] == "marketSuspended"
    tickers = {t["symbol"]: t for t in await client.tickers()}
    assert tickers["PF_XBTUSD"]["suspended"] is True
    before = (await control(http, sim, "GET", "/state"))["marks"]
    after = (await control(http, sim, "POST", "/step", {"steps": 50}))["marks"]
    assert after != before


async def test_a_control_token_guards_the_control_api() -> None:
    guarded = Simulator(sim_keys(), market=Market(seed=7), tick_s=None, control_token="t")
    await guarded.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(guarded.url + "/_sim/state") as response:
                assert response.status == 401
            wrong = {"Authorization": "Bearer u"}
            async with session.get(guarded.url + "/_sim/state", headers=wrong) as response:
                assert response.status == 401
            async with session.post(guarded.url + "/_sim/faults", json={"kind": "drop"}) as response:
                assert response.status == 401
            assert guarded.faults.snapshot() == []
            right = {"Authorization": "Bearer t"}
            async with session.get(guarded.url + "/_sim/state", headers=right) as response:
                assert response.status == 200
                assert "main" in (await response.json())["accounts"]
    finally:
        await guarded.close()


# ---- routing and public endpoints -----------------------------------------------------------------


async def test_an_unknown_path_is_404_and_a_wrong_method_405(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    async with http.get(sim.url + V3 + "nosuchendpoint") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "notFound"
    async with http.get(sim.url + V3 + "sendorder") as response:
        assert response.status == 405
    async with http.post(sim.url + V3 + "tickers") as response:
        assert response.status == 405


async def test_public_endpoints_need_no_authentication(http: aiohttp.ClientSession, sim: Simulator) -> None:
    async with KrakenClient(sim.url, None, timeout_s=5) as public:
        listed = {i.symbol for i in sim.exchange.market.instruments}
        assert {"PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", "PI_XBTUSD", "PI_ETHUSD"} <= listed
        instruments = await public.instruments()
        assert {i["symbol"] for i in instruments} == listed
        tickers = await public.tickers()
        assert {t["symbol"] for t in tickers} == listed
        xbt = next(t for t in tickers if t["symbol"] == "PF_XBTUSD")
        assert (xbt["markPrice"], xbt["bid"], xbt["ask"], xbt["suspended"]) == (60000, 59994, 60006, False)
        book = await public.orderbook("PF_XBTUSD")
        assert book["bids"][0][0] == 59994 and book["asks"][0][0] == 60006
        assert [b[0] for b in book["bids"]] == sorted((b[0] for b in book["bids"]), reverse=True)
        assert [a[0] for a in book["asks"]] == sorted(a[0] for a in book["asks"])
        with pytest.raises(ExchangeRejected) as caught:
            await public.request("orderbook")
        assert caught.value.code == "requiredArgumentMissing"
    async with http.get(sim.url + V3 + "tickers/PF_XBTUSD") as response:
        doc = await response.json()
        assert doc["result"] == "success"
        assert doc["ticker"]["symbol"] == "PF_XBTUSD"
    async with http.get(sim.url + V3 + "tickers/PF_NOPEUSD") as response:
        assert (await response.json())["error"] == "invalidArgument"


async def test_private_reads_through_the_client(client: KrakenClient, sim: Simulator) -> None:
    await client.send_order(**{**LMT, "cliOrdId": "mine"})
    accounts = await client.accounts()
    assert accounts["flex"]["balanceValue"] == 100_000
    [row] = await client.order_status(cli_ord_ids=["mine"])
    assert (row["status"], row["order"]["cliOrdId"]) == ("ENTERED_BOOK", "mine")
    cancelled = await client.cancel_order(cli_ord_id="mine")
    assert cancelled["cancelStatus"]["status"] == "cancelled"
    assert (await client.cancel_all_orders())["cancelStatus"]["status"] == "noOrdersToCancel"


def test_the_charts_follow_the_market_the_exchange_trades_on() -> None:
    """The market data (candles, history) read the exchange's own market and clock, not a second market
    made beside it (the simulator once built two, so candles never moved when the marks did)."""
    simulator = Simulator(sim_keys(), market=None, tick_s=None, clock=lambda: 1_700_000_000.0)
    simulator.exchange.market.set_mark("PF_XBTUSD", Decimal(61_234))
    simulator.market_data.record()
    latest = simulator.market_data.points["PF_XBTUSD"][-1]
    assert latest.mark == Decimal(61_234)
    assert latest.at == 1_700_000_000.0
