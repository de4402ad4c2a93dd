"""Overlapping requests (issue 15), through guardian's real HTTP server in front of the simulator:

- a reused cliOrdId: only the same request from the same bot is a retry and gets the first answer; the
  same id with other content, or from another bot of the account, is refused `clientOrderIdAlreadyExist`
  and never forwarded (single orders and batch items alike); other accounts are unaffected;
- the kill with new risk in flight: when the kill has answered and the requests in flight have settled,
  nothing the bots sent before it is open at the exchange (a send, a batch, an edit, an answer lost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from guardian.config import ClientConfig, GuardConfig
from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import SimKey, Simulator
from guardian.sim.faults import Fault
from guardian.sim.market import Market
from tests.conftest import TRADE_KEY, TRADE_SECRET
from tests.daemon import account_config, serving, wait_for
from tests.daemon import signed_post as daemon_signed_post
from tests.test_gateway import ADMIN, CLIENTS, GUARD, SWITCH, admin, refused, until_ready

BOT_B_KEY = "second-bot-local-key-1"
BOT_B_SECRET = base64.b64encode(b"second bot local secret 32 bytes").decode()
OTHER_BOT_KEY = "other-account-bot-key1"
OTHER_BOT_SECRET = base64.b64encode(b"other account bot secret 32 byte").decode()
OTHER_KEY = "sim-trade-key-other-1"
OTHER_SECRET = base64.b64encode(bytes(range(100, 164))).decode()
TRADE = frozenset({Permission.READ, Permission.TRADE})
BOT_A = CLIENTS[0]  # grid-bot
BOT_B = ClientConfig("second-bot", BOT_B_KEY, ApiSecret(BOT_B_SECRET), TRADE)
ORDER_A = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": 1, "limitPrice": 59000}
ORDER_B = {"orderType": "lmt", "symbol": "PF_ETHUSD", "side": "sell", "size": 3, "limitPrice": 3100}


@contextlib.asynccontextmanager
async def two_accounts(
    tmp_path: Path, guard: GuardConfig = GUARD
) -> AsyncIterator[tuple[Simulator, Service]]:
    """A simulator with accounts main and other; guardian with bots A and B on main, one bot on other."""
    keys = [
        SimKey(TRADE_KEY, ApiSecret(TRADE_SECRET), account="main", permissions=frozenset({"read", "trade"})),
        SimKey(OTHER_KEY, ApiSecret(OTHER_SECRET), account="other", permissions=frozenset({"read", "trade"})),
    ]
    simulator = Simulator(keys, market=Market(seed=7), tick_s=None, budget_capacity=20_000)
    await simulator.start("127.0.0.1", 0)
    try:
        main = account_config(simulator.url, switch=SWITCH, guard=guard, clients=(BOT_A, BOT_B))
        other_bot = ClientConfig("other-bot", OTHER_BOT_KEY, ApiSecret(OTHER_BOT_SECRET), TRADE)
        other = account_config(
            simulator.url,
            name="other",
            key=OTHER_KEY,
            secret=OTHER_SECRET,
            switch=SWITCH,
            guard=guard,
            clients=(other_bot,),
        )
        async with serving(main, other, journal=tmp_path / "journal.sqlite3", admin_token=ADMIN) as service:
            await until_ready(service)
            await wait_for(lambda: service.accounts[1].switch.allows_new_risk(), what="other account armed")
            yield simulator, service
    finally:
        await simulator.close()


def client(service: Service, key: str, secret: str, *, timeout_s: float = 5) -> KrakenClient:
    return KrakenClient(service.url, Credentials(key, ApiSecret(secret)), timeout_s=timeout_s)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service]]:
    async with two_accounts(tmp_path) as pair:
        yield pair


async def signed_post(
    http: aiohttp.ClientSession, service: Service, key: str, secret: str, path: str, body: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A raw signed POST, to see the status and headers a client library would hide."""
    return await daemon_signed_post(http, service.url, key, secret, path, body)


def sends(exchange: Simulator, account_key: str = TRADE_KEY) -> list[dict[str, Any]]:
    return [r for r in exchange.requests_for("sendorder") if r["api_key"] == account_key]


async def journal_rows(service: Service) -> list[dict[str, Any]]:
    await service.journal.flush()
    return read_journal(service.config.journal.path, limit=10_000)


# ---- a reused cliOrdId --------------------------------------------------------------------------------


async def test_the_issue_scenario_another_bot_and_other_content_are_refused_never_answered_with_order_x(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with (
        client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a,
        client(service, BOT_B_KEY, BOT_B_SECRET) as b,
        aiohttp.ClientSession() as http,
    ):
        placed = await a.send_order(**ORDER_A, cliOrdId="same-id")
        order_x = placed["sendStatus"]["order_id"]
        # Bot B, another order under the same id: refused in Kraken's envelope, naming A and when, not what.
        body = urlencode({**ORDER_B, "cliOrdId": "same-id"})
        status, headers, doc = await signed_post(
            http, service, BOT_B_KEY, BOT_B_SECRET, "/derivatives/api/v3/sendorder", body
        )
        assert status == 409
        assert (doc["result"], doc["error"]) == ("error", "clientOrderIdAlreadyExist")
        assert "grid-bot" in doc["message"] and "serverTime" in doc
        for content in (order_x, "PF_XBTUSD", "59000", "buy"):
            assert content not in json.dumps(doc)
        assert "X-Guardian-Replayed" not in headers
        # Bot A, a different order under the same id: refused too.
        await refused(
            a.send_order(
                symbol="PF_XBTUSD", orderType="lmt", side="sell", size=3, limitPrice=61000, cliOrdId="same-id"
            ),
            "clientOrderIdAlreadyExist",
        )
        # Bot B, exactly bot A's order and id: still another bot's, refused.
        await refused(b.send_order(**ORDER_A, cliOrdId="same-id"), "clientOrderIdAlreadyExist")
        # Bot A, the same request: a retry, answered with the first answer and marked so.
        body = urlencode({**ORDER_A, "cliOrdId": "same-id"})
        status, headers, doc = await signed_post(
            http, service, BOT_A.api_key, BOT_A.api_secret.reveal(), "/derivatives/api/v3/sendorder", body
        )
        assert (status, headers.get("X-Guardian-Replayed")) == (200, "true")
        assert doc["sendStatus"]["order_id"] == order_x
    assert len(sends(exchange)) == 1
    rows = await journal_rows(service)
    reused = [
        r for r in rows if r.get("type") == "request" and r.get("reason") == "clientOrderIdAlreadyExist"
    ]
    assert [(r["bot"], r["verdict"], r["http_status"]) for r in reused] == [
        ("second-bot", "refused", 409),
        ("grid-bot", "refused", 409),
        ("second-bot", "refused", 409),
    ]


async def test_the_same_content_in_other_spellings_is_still_the_same_request(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        first = await a.send_order(**ORDER_A, cliOrdId="spelled")
        again = await a.send_order(**{**ORDER_A, "size": "1.0", "symbol": "pf_xbtusd"}, cliOrdId="spelled")
    assert again == first
    assert len(sends(exchange)) == 1


async def test_a_concurrent_reuse_is_refused_at_once_while_the_retry_waits_for_the_first_answer(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    exchange.faults.add(Fault("sendorder", "latency", latency_s=0.6, times=1))
    async with (
        client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a,
        client(service, BOT_B_KEY, BOT_B_SECRET) as b,
    ):
        first = asyncio.create_task(a.send_order(**ORDER_A, cliOrdId="racing"))
        await asyncio.sleep(0.15)  # the first attempt is at the exchange
        retry = asyncio.create_task(a.send_order(**ORDER_A, cliOrdId="racing"))
        await refused(b.send_order(**ORDER_B, cliOrdId="racing"), "clientOrderIdAlreadyExist")
        assert not first.done() and not retry.done()  # refused without waiting for the first attempt
        assert (await first) == (await retry)
    assert len(sends(exchange)) == 1


async def test_other_accounts_are_unaffected_by_a_cli_ord_id_used_on_this_one(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with (
        client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a,
        client(service, OTHER_BOT_KEY, OTHER_BOT_SECRET) as other,
    ):
        mine = await a.send_order(**ORDER_A, cliOrdId="shared-name")
        theirs = await other.send_order(**ORDER_B, cliOrdId="shared-name")
    assert theirs["sendStatus"]["status"] == "placed"
    assert theirs["sendStatus"]["order_id"] != mine["sendStatus"]["order_id"]
    assert len(sends(exchange, OTHER_KEY)) == 1 and len(sends(exchange)) == 1


def batch_item(order: dict[str, Any], tag: str, cli_ord_id: str | None = None) -> dict[str, Any]:
    item = {"order": "send", "order_tag": tag, **order}
    if cli_ord_id is not None:
        item["cliOrdId"] = cli_ord_id
    return item


async def test_batch_items_reusing_an_id_are_refused_naming_the_item_and_the_same_batch_is_replayed(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with (
        client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a,
        client(service, BOT_B_KEY, BOT_B_SECRET) as b,
        aiohttp.ClientSession() as http,
    ):
        await a.send_order(**ORDER_A, cliOrdId="single-one")
        # A's batch whose second item reuses A's single order's id (even with the same content).
        reuse = [batch_item(ORDER_B, "1", "fresh-1"), batch_item(ORDER_A, "2", "single-one")]
        body = urlencode({"json": json.dumps({"batchOrder": reuse})})
        status, _, doc = await signed_post(
            http, service, BOT_A.api_key, BOT_A.api_secret.reveal(), "/derivatives/api/v3/batchorder", body
        )
        assert (status, doc["error"], doc["item"]) == (409, "clientOrderIdAlreadyExist", 1)
        assert doc["message"].startswith("batchOrder[1]")
        # A batch of A's, then the same batch from B, then the same ids in another batch of A's.
        batch = [batch_item(ORDER_A, "1", "b-1"), batch_item(ORDER_B, "2", "b-2")]
        answered = await a.batch_order(batch)
        await refused(b.batch_order(batch), "clientOrderIdAlreadyExist")
        await refused(a.batch_order([batch[1], batch[0]]), "clientOrderIdAlreadyExist")
        await refused(a.send_order(**ORDER_B, cliOrdId="b-2"), "clientOrderIdAlreadyExist")  # a single reuse
        assert await a.batch_order(batch) == answered  # the same batch again: replayed
        # "fresh-1" was never forwarded: it is free for a first use.
        assert (await b.send_order(**ORDER_B, cliOrdId="fresh-1"))["sendStatus"]["status"] == "placed"
    assert len(exchange.requests_for("batchorder")) == 1
    assert len(sends(exchange)) == 2


async def test_a_retry_after_a_local_refusal_is_a_first_attempt(setup: tuple[Simulator, Service]) -> None:
    exchange, service = setup
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        await refused(a.send_order(**{**ORDER_A, "size": 6}, cliOrdId="too-big"), "orderSizeTooLarge")
        async with client(service, BOT_B_KEY, BOT_B_SECRET) as b:  # never forwarded: anyone may use it
            assert (await b.send_order(**ORDER_A, cliOrdId="too-big"))["sendStatus"]["status"] == "placed"
    assert len(sends(exchange)) == 1


# ---- the kill with new risk in flight -----------------------------------------------------------------


async def kill(service: Service) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        status, doc = await admin(http, service, "/guardian/kill", {"account": "main"})
    assert status == 200, doc
    return doc


async def nothing_open(exchange: Simulator, service: Service) -> list[dict[str, Any]]:
    """Waits until the kill's follow-ups are done; the simulator's open orders then, and the events."""
    await wait_for(lambda: service.halts.pending == 0, timeout_s=10, what="the kill's follow-ups")
    rows = await journal_rows(service)
    return [r for r in rows if r.get("type") == "event" and r["kind"] == "kill_follow_up"]


async def test_a_send_in_flight_when_the_kill_answers_is_cancelled_once_it_is_placed(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        await a.send_order(**{**ORDER_A, "limitPrice": 58000})  # resting before the kill
        # The exchange acts 0.7 s late, within guardian's 1 s upstream timeout.
        exchange.faults.add(Fault("sendorder", "latency", latency_s=0.7, times=1))
        in_flight = asyncio.create_task(a.send_order(**ORDER_A))
        await asyncio.sleep(0.3)
        doc = await kill(service)
        assert doc["in_flight"] == 1 and doc["exchange"]["cancelStatus"]["status"] == "cancelled"
        placed = await in_flight  # the exchange placed it after the kill's cancel-all
        assert placed["sendStatus"]["status"] == "placed"
        order_id = placed["sendStatus"]["order_id"]
        events = await nothing_open(exchange, service)
    assert exchange.exchange.accounts["main"].open_orders() == []
    [follow_up] = events
    assert follow_up["detail"]["order_id"] == order_id
    assert (follow_up["detail"]["action"], follow_up["detail"]["result"]) == ("cancelorder", "cancelled")
    assert follow_up["detail"]["bot"] == "grid-bot"
    assert len(exchange.requests_for("cancelallorders")) == 1  # the kill's own: no sweep was needed


async def test_a_batch_in_flight_is_cancelled_item_by_item(setup: tuple[Simulator, Service]) -> None:
    exchange, service = setup
    exchange.faults.add(Fault("batchorder", "latency", latency_s=0.7, times=1))
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        items = [
            batch_item(ORDER_A, "1"),
            batch_item(ORDER_B, "2"),
            batch_item({**ORDER_A, "limitPrice": 58500}, "3"),
        ]
        in_flight = asyncio.create_task(a.batch_order(items))
        await asyncio.sleep(0.3)
        assert (await kill(service))["in_flight"] == 1
        answer = await in_flight
        assert [s["status"] for s in answer["batchStatus"]] == ["placed"] * 3
        events = await nothing_open(exchange, service)
    assert exchange.exchange.accounts["main"].open_orders() == []
    assert sorted(e["detail"]["order_id"] for e in events) == sorted(
        s["order_id"] for s in answer["batchStatus"]
    )


async def test_an_edit_in_flight_leaves_nothing_open(setup: tuple[Simulator, Service]) -> None:
    exchange, service = setup
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        placed = await a.send_order(**ORDER_A)
        exchange.faults.add(Fault("editorder", "latency", latency_s=0.7, times=1))
        in_flight = asyncio.create_task(
            a.edit_order(orderId=placed["sendStatus"]["order_id"], size=2, limitPrice=59500)
        )
        await asyncio.sleep(0.3)
        assert (await kill(service))["in_flight"] == 1
        edited = await in_flight  # the kill's cancel-all came first: nothing left to edit
        assert edited["editStatus"]["status"] == "orderForEditNotFound"
        events = await nothing_open(exchange, service)
    assert exchange.exchange.accounts["main"].open_orders() == []
    assert events == []  # nothing was left open, so nothing needed a follow-up


async def test_an_answer_lost_to_the_timeout_gets_a_cancel_all_then_a_last_sweep(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    # The exchange places the order 1.5 s after it arrives: after guardian's 1 s upstream timeout, and
    # after the kill's cancel-all and the first follow-up.
    exchange.faults.add(Fault("sendorder", "latency", latency_s=1.5, times=1))
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        in_flight = asyncio.create_task(a.send_order(**ORDER_A))
        await asyncio.sleep(0.3)
        assert (await kill(service))["in_flight"] == 1
        with pytest.raises(ExchangeError) as caught:
            await in_flight
        assert caught.value.http_status == 504  # outcome unknown, as the bot is told
        events = await nothing_open(exchange, service)
    assert exchange.exchange.accounts["main"].open_orders() == []
    assert [e["detail"]["action"] for e in events] == ["cancelallorders", "cancelallorders"]
    assert [e["detail"]["because"] for e in events] == ["outcome unknown", "outcome unknown: the last sweep"]
    assert len(exchange.requests_for("cancelallorders")) == 3


async def test_an_answer_the_exchange_acted_on_and_then_lost(setup: tuple[Simulator, Service]) -> None:
    exchange, service = setup
    exchange.faults.add(Fault("sendorder", "lose", times=1))
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        in_flight = asyncio.create_task(a.send_order(**ORDER_A))
        await wait_for(lambda: exchange.exchange.accounts["main"].open_orders(), what="the order placed")
        # The kill's own cancel-all gets this one; the follow-up sweeps make sure of it all the same.
        assert (await kill(service))["in_flight"] == 1
        with pytest.raises(ExchangeError):
            await in_flight
        events = await nothing_open(exchange, service)
    exchange.release_hangs()
    assert exchange.exchange.accounts["main"].open_orders() == []
    assert [e["detail"]["result"] for e in events] == ["noOrdersToCancel", "noOrdersToCancel"]


async def test_an_order_being_journaled_when_the_halt_takes_effect_is_withheld(
    setup: tuple[Simulator, Service],
) -> None:
    exchange, service = setup
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        # The journal's writer is busy for a while: the order's intent waits for its commit.
        busy = asyncio.create_task(service.journal._call_in_writer(lambda conn: time.sleep(0.6)))
        await asyncio.sleep(0.05)
        order = asyncio.create_task(a.send_order(**ORDER_A, cliOrdId="withheld"))
        await asyncio.sleep(0.2)
        kill_done = asyncio.create_task(kill(service))
        await refused(order, "tradingHalted")
        assert (await kill_done)["in_flight"] == 0
        await busy
    assert sends(exchange) == []
    rows = await journal_rows(service)
    [intent] = [r for r in rows if r.get("type") == "request" and r.get("verdict") == "forwarded"]
    assert (intent["outcome"], intent["http_status"]) == ("withheld", 403)


async def test_a_kill_with_nothing_in_flight_says_zero(setup: tuple[Simulator, Service]) -> None:
    exchange, service = setup
    assert (await kill(service))["in_flight"] == 0
    assert service.halts.pending == 0
    assert len(exchange.requests_for("cancelallorders")) == 1


async def test_an_rfq_offer_in_flight_is_taken_down_by_its_own_cancel(
    setup: tuple[Simulator, Service],
) -> None:
    from guardian.kraken import endpoints as ep
    from guardian.kraken.signing import encode_params

    exchange, service = setup
    uid = next(u for u, rfq in exchange.market_data.rfqs.items() if rfq.symbol == "PF_XBTUSD")
    row = ep.endpoint("rfqs/{rfqUid}/place-offer")
    exchange.faults.add(Fault(row.name, "latency", latency_s=0.7, times=1))
    async with client(service, BOT_A.api_key, BOT_A.api_secret.reveal()) as a:
        offer = asyncio.create_task(
            a.send(row, encode_params({"bid": 59500}), "", method="POST", path=row.path.format(rfqUid=uid))
        )
        await asyncio.sleep(0.3)
        assert (await kill(service))["in_flight"] == 1
        assert (await offer).status == 200  # the offer stood, after the kill's cancel-all
        events = await nothing_open(exchange, service)
    assert exchange.market_data.rfqs[uid].offers == {}
    [follow_up] = events
    assert (follow_up["detail"]["action"], follow_up["detail"]["result"]) == ("cancel-offer", "cancelled")
