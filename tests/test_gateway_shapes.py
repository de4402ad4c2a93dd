"""Kraken's own answers where guardian used to be stricter than it needs to be (issue 24), against the
simulator on loopback through guardian's real server, with real clients and real signatures:

- an edit of an order the exchange does not have gets Kraken's success-with-status shape
  (`orderForEditNotFound`), answered by guardian and never forwarded; a cancel of one is forwarded and gets
  the exchange's `notFound`; a batch answers such an item at its place and forwards the rest;
- a field that does not apply to the order type (a `lmt` with a `stopPrice`) is forwarded unchanged and
  the order judged as its type says; a value that cannot be read is still refused."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import ccxt.async_support as ccxt
import pytest
from kraken.futures import Trade

from guardian.config import ClientConfig
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import sign
from guardian.kraken.wire import parse_batch
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.faults import Fault
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import wait_for
from tests.relay_helpers import OWN_KEY, OWN_SECRET, exchange_and_guardian, rest
from tests.test_gateway import (
    BOT_KEY,
    BOT_SECRET,
    LMT,
    bot_client,
    gateway,
    raw_post,
    reached,
    refused,
)

OTHER_KEY = "second-trading-bot-key-1"
OTHER_SECRET = base64.b64encode(b"second trading bot secret, 32 b!").decode()
TRADERS = (
    ClientConfig("grid-bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE})),
    ClientConfig(
        "scalper", OTHER_KEY, ApiSecret(OTHER_SECRET), frozenset({Permission.READ, Permission.TRADE})
    ),
)
BTC = "BTC/USD:USD"


@pytest.fixture
async def guardian(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    async with gateway(exchange, tmp_path, clients=TRADERS) as service:
        yield service


@pytest.fixture
async def exchange() -> AsyncIterator[Simulator]:
    async with running_sim(budget_capacity=20_000) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bot(guardian: Service) -> AsyncIterator[KrakenClient]:
    async with bot_client(guardian) as client:
        yield client


@pytest.fixture
async def direct(exchange: Simulator) -> AsyncIterator[KrakenClient]:
    """The account's own key straight at the simulator: what the exchange itself answers."""
    async with KrakenClient(exchange.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as c:
        yield c


async def post_signed(
    http: aiohttp.ClientSession, service: Service, name: str, body: str
) -> tuple[int, dict[str, Any]]:
    """A raw POST signed with the grid bot's local key (no nonce), as the bytes given."""
    path = "/derivatives/api/v3/" + name
    headers = {"APIKey": BOT_KEY, "Authent": sign(ApiSecret(BOT_SECRET).key_bytes(), body, None, path)}
    return await raw_post(http, service.url + path, body, headers)


def journal_rows(tmp_path: Path, endpoint: str) -> list[dict[str, Any]]:
    return [row for row in read_journal(tmp_path / "journal.sqlite3") if row.get("endpoint") == endpoint]


def assert_not_found(answer: dict[str, Any], *, order_id: str | None) -> None:
    """Kraken's success-with-status shape for an edit of an order it does not have."""
    assert answer["result"] == "success"
    assert isinstance(answer["serverTime"], str)
    status = answer["editStatus"]
    assert status["status"] == "orderForEditNotFound"
    assert status["orderId"] == order_id
    assert isinstance(status["receivedTime"], str) and status["receivedTime"].endswith("Z")
    assert status["orderEvents"] == []


# ---- an edit of an order the exchange does not have ------------------------------------------------------


async def test_an_edit_of_an_unknown_order_gets_krakens_shape_and_is_never_forwarded(
    guardian: Service, exchange: Simulator, bot: KrakenClient, direct: KrakenClient, tmp_path: Path
) -> None:
    order_id = str(uuid.uuid4())
    answer = await bot.edit_order(orderId=order_id, size=2, limitPrice=59000)

    assert_not_found(answer, order_id=order_id)
    assert reached(exchange, "editorder") == []  # an edit guardian cannot judge never leaves
    assert len(reached(exchange, "orders/status")) == 1  # guardian asked first
    # The exchange's own answer to the same edit has the same shape.
    theirs = await direct.edit_order(orderId=order_id, size=2, limitPrice=59000)
    assert set(theirs) == set(answer)
    assert set(theirs["editStatus"]) == set(answer["editStatus"])
    assert theirs["editStatus"]["status"] == answer["editStatus"]["status"]

    by_cli = await bot.edit_order(cliOrdId="never-placed", size=2)
    assert_not_found(by_cli, order_id=None)
    assert by_cli["editStatus"]["cliOrdId"] == "never-placed"

    await asyncio.sleep(0.2)  # the journal's writer
    rows = journal_rows(tmp_path, "editorder")
    assert [(r["verdict"], r["reason"], r["http_status"]) for r in rows] == [
        ("answered", "orderForEditNotFound", 200)
    ] * 2
    assert rows[0]["params"]["orderId"] == order_id


async def test_an_edit_by_an_order_id_that_spells_another_orders_cliordid_is_not_that_order(
    tmp_path: Path,
) -> None:
    """Found by the fuzzing: a resting order with cliOrdId "0" the stream shows, then an edit of orderId
    "0". Order ids and cliOrdIds are two name spaces: the exchange has no order with id "0", and guardian
    says so as it does (it answered 503, taking the resting order for the one named)."""
    async with (
        exchange_and_guardian(tmp_path) as (exchange, service),
        rest(service, OWN_KEY, OWN_SECRET) as bot,
    ):
        placed = await bot.send_order(**{**LMT, "cliOrdId": "0"})
        assert placed["sendStatus"]["status"] == "placed"
        ledger = service.accounts[0].exposure.ledger
        await wait_for(lambda: any(e.order for e in ledger.named("0")), what="the stream showing it")
        answer = await bot.edit_order(orderId="0", size=2, limitPrice=59000)
        assert_not_found(answer, order_id="0")
        assert reached(exchange, "editorder") == []
        # By its cliOrdId it is the resting order: judged and forwarded.
        edited = await bot.edit_order(cliOrdId="0", size=2, limitPrice=59000)
        assert edited["editStatus"]["status"] == "edited"


async def test_an_edit_of_an_unknown_order_by_raw_http_is_answered_200(
    guardian: Service, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    status, doc = await post_signed(http, guardian, "editorder", f"orderId={uuid.uuid4()}&size=1")
    assert status == 200
    assert (doc["result"], doc["editStatus"]["status"]) == ("success", "orderForEditNotFound")
    assert reached(exchange, "editorder") == []


@pytest.mark.compat
async def test_ccxt_edit_order_of_an_unknown_order_raises_order_not_found(
    guardian: Service, exchange: Simulator
) -> None:
    """ccxt reads `orderForEditNotFound` in editStatus and raises OrderNotFound (krakenfutures'
    verify_order_action_success): the shape, not an error envelope, is what it understands."""
    ex = ccxt.krakenfutures({"apiKey": BOT_KEY, "secret": BOT_SECRET, "enableRateLimit": False})
    ex.urls["api"] = {name: guardian.url + "/derivatives/api/" for name in ("public", "private")}
    try:
        await ex.load_markets()
        with pytest.raises(ccxt.OrderNotFound, match="orderForEditNotFound"):
            await ex.edit_order(str(uuid.uuid4()), BTC, "limit", "buy", 0.02, 58500)
    finally:
        await ex.close()
    assert reached(exchange, "editorder") == []


@pytest.mark.compat
async def test_python_kraken_sdk_edit_of_an_unknown_order_gets_the_status(guardian: Service) -> None:
    trade = Trade(key=BOT_KEY, secret=BOT_SECRET, url=guardian.url)
    try:
        answer = await asyncio.to_thread(trade.edit_order, orderId=str(uuid.uuid4()), size=0.02)
    finally:
        trade._FuturesClient__session.close()
    assert (answer["result"], answer["editStatus"]["status"]) == ("success", "orderForEditNotFound")


async def test_two_bots_editing_unknown_orders_at_once_and_retrying_each_get_the_shape(
    guardian: Service, exchange: Simulator
) -> None:
    placed_before = len(reached(exchange, "sendorder"))
    other = KrakenClient(guardian.url, Credentials(OTHER_KEY, ApiSecret(OTHER_SECRET)), timeout_s=5)
    async with bot_client(guardian) as grid, other:
        mine = await grid.send_order(**LMT, cliOrdId="grid-open-1")
        open_id = mine["sendStatus"]["order_id"]
        ids = [str(uuid.uuid4()) for _ in range(6)]
        edits = [
            (grid if n % 2 else other).edit_order(orderId=order_id, size=2) for n, order_id in enumerate(ids)
        ]
        real = grid.edit_order(orderId=open_id, size=2)  # a known order among them: judged and forwarded
        *answers, edited = await asyncio.gather(*edits, real)
        for order_id, answer in zip(ids, answers, strict=True):
            assert_not_found(answer, order_id=order_id)
        assert edited["editStatus"]["status"] == "edited"
        # A retry of the same edit: the same answer, still nothing forwarded for it.
        again = await asyncio.gather(
            other.edit_order(orderId=ids[0], size=2), grid.edit_order(orderId=ids[1], size=2)
        )
        assert [a["editStatus"]["status"] for a in again] == ["orderForEditNotFound"] * 2
    forwarded = [r["fields"].get("orderId") for r in reached(exchange, "editorder")]
    assert forwarded == [open_id]
    assert len(reached(exchange, "sendorder")) == placed_before + 1


async def test_an_edit_of_a_cancelled_order_gets_the_shape_whether_or_not_orders_status_still_reports_it(
    guardian: Service, exchange: Simulator, bot: KrakenClient
) -> None:
    first = (await bot.send_order(**LMT))["sendStatus"]["order_id"]
    second = (await bot.send_order(**{**LMT, "limitPrice": 58900}))["sendStatus"]["order_id"]
    await bot.cancel_order(order_id=first)
    assert_not_found(await bot.edit_order(orderId=first, size=2), order_id=first)  # reported CANCELLED
    await bot.cancel_order(order_id=second)
    exchange.exchange.status_retention_s = 0  # orders/status has forgotten it: no one knows it now
    assert_not_found(await bot.edit_order(orderId=second, size=2), order_id=second)
    assert reached(exchange, "editorder") == []


async def test_an_edit_of_an_order_still_on_its_way_is_refused_not_answered_not_found(
    guardian: Service, exchange: Simulator, bot: KrakenClient
) -> None:
    """orders/status does not know it yet, but guardian let it out and its answer is not in: which of the
    two pictures is right is not for guardian to guess. Nothing is sent; the retry after the answer is
    judged as every edit is."""
    exchange.faults.add(Fault("sendorder", "latency", latency_s=0.8, times=1))
    sending = asyncio.create_task(bot.send_order(**LMT, cliOrdId="on-its-way"))
    await asyncio.sleep(0.3)
    error = await refused(bot.edit_order(cliOrdId="on-its-way", size=2), "accountStateUnavailable")
    assert error.http_status == 503
    assert (await sending)["sendStatus"]["status"] == "placed"
    assert reached(exchange, "editorder") == []
    edited = await bot.edit_order(cliOrdId="on-its-way", size=2)
    assert edited["editStatus"]["status"] == "edited"


async def test_a_cancel_of_an_unknown_order_is_forwarded_and_gets_the_exchanges_not_found(
    guardian: Service, exchange: Simulator, bot: KrakenClient
) -> None:
    order_id = str(uuid.uuid4())
    by_id = await bot.cancel_order(order_id=order_id)
    by_cli = await bot.cancel_order(cli_ord_id="never-placed")
    assert (by_id["result"], by_id["cancelStatus"]["status"]) == ("success", "notFound")
    assert by_id["cancelStatus"]["order_id"] == order_id
    assert (by_cli["cancelStatus"]["status"], by_cli["cancelStatus"]["cliOrdId"]) == (
        "notFound",
        "never-placed",
    )
    assert [r["fields"] for r in reached(exchange, "cancelorder")] == [
        {"order_id": order_id},
        {"cliOrdId": "never-placed"},
    ]


# ---- batches ---------------------------------------------------------------------------------------------


def forwarded_items(exchange: Simulator) -> list[list[dict[str, Any]]]:
    """The items of each batch the exchange received, numbers as the digits sent (`JsonNumber.text`)."""
    return [parse_batch(r["fields"])[0] for r in reached(exchange, "batchorder")]


async def test_a_batch_answers_an_edit_of_an_unknown_order_at_its_place_and_forwards_the_rest(
    guardian: Service, exchange: Simulator, bot: KrakenClient, direct: KrakenClient, tmp_path: Path
) -> None:
    unknown = str(uuid.uuid4())
    items = [
        {
            "order": "send",
            "order_tag": "a",
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": 0.10,
            "limitPrice": 59000,
        },
        {"order": "edit", "order_id": unknown, "size": 2},
        {"order": "cancel", "order_id": unknown},
        {"order": "edit", "order_id": "a", "limitPrice": 58900},
        {"order": "edit", "cliOrdId": "never-placed", "size": 2},
    ]
    answer = await bot.batch_order(items)

    statuses = answer["batchStatus"]
    assert answer["result"] == "success"
    assert [s["status"] for s in statuses] == [
        "placed",
        "orderForEditNotFound",
        "notFound",
        "edited",
        "orderForEditNotFound",
    ]
    assert statuses[1] == {"status": "orderForEditNotFound", "order_id": unknown, "orderEvents": []}
    assert statuses[4] == {"status": "orderForEditNotFound", "cliOrdId": "never-placed", "orderEvents": []}
    # What left: the three other items, as sent (the size's digits too), in their order.
    [sent] = forwarded_items(exchange)
    assert [i["order"] for i in sent] == ["send", "cancel", "edit"]
    assert sent[0]["size"].text == "0.1" and sent[2]["order_id"] == "a"
    assert exchange.requests_for("batchorder")[0]["api_key"] == TRADE_KEY
    # The simulator's own status for such an item is shaped the same.
    theirs = await direct.batch_order([{"order": "edit", "order_id": unknown, "size": 2}])
    assert set(theirs["batchStatus"][0]) == set(statuses[1])
    await asyncio.sleep(0.2)
    rows = journal_rows(tmp_path, "batchorder")
    forwarded = [r for r in rows if r["verdict"] == "forwarded"]
    answered = [r for r in rows if r["verdict"] == "answered"]
    assert [len(r["params"]["batchOrder"]) for r in forwarded] == [3]
    assert [(r["reason"], [i["order"] for i in r["params"]["batchOrder"]]) for r in answered] == [
        ("orderForEditNotFound", ["edit", "edit"])
    ]


async def test_a_raw_json_batch_keeps_its_numbers_digits_when_an_item_is_answered_locally(
    guardian: Service, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    """ccxt's way: `json=` followed by raw JSON. The batch leaves without the edit, every number written
    with the digits the bot sent (the exchange reads digits, not doubles)."""
    raw = (
        '{"batchOrder":[{"order":"edit","order_id":"' + str(uuid.uuid4()) + '","size":2},'
        '{"order":"send","order_tag":"0","orderType":"lmt","symbol":"PF_XBTUSD","side":"buy",'
        '"size":0.0100,"limitPrice":59000.50,"reduceOnly":false}]}'
    )
    status, doc = await post_signed(http, guardian, "batchorder", "json=" + raw)
    assert status == 200, doc
    assert [s["status"] for s in doc["batchStatus"]] == ["orderForEditNotFound", "placed"]
    [[sent]] = forwarded_items(exchange)
    assert (sent["size"].text, sent["limitPrice"].text, sent["reduceOnly"]) == ("0.0100", "59000.50", False)


async def test_a_batch_of_only_unknown_edits_is_answered_whole_and_nothing_leaves(
    guardian: Service, exchange: Simulator, bot: KrakenClient, tmp_path: Path
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    answer = await bot.batch_order([{"order": "edit", "order_id": i, "limitPrice": 59000} for i in ids])
    assert answer["result"] == "success"
    assert answer["batchStatus"] == [
        {"status": "orderForEditNotFound", "order_id": i, "orderEvents": []} for i in ids
    ]
    assert reached(exchange, "batchorder") == []
    await asyncio.sleep(0.2)
    assert [(r["verdict"], r["reason"]) for r in journal_rows(tmp_path, "batchorder")] == [
        ("answered", "orderForEditNotFound")
    ]


async def test_a_refusal_in_a_batch_with_a_locally_answered_item_names_the_item_by_its_place(
    guardian: Service, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    items = [
        {"order": "edit", "order_id": str(uuid.uuid4()), "size": 2},
        {
            "order": "send",
            "order_tag": "big",
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": 50,
            "limitPrice": 59000,
        },
    ]
    status, doc = await post_signed(
        http, guardian, "batchorder", "json=" + quote(json.dumps({"batchOrder": items}))
    )
    assert (status, doc["error"], doc["item"], doc["order_tag"]) == (403, "orderSizeTooLarge", 1, "big")
    assert doc["message"].startswith("batchOrder[1] (order_tag 'big'): size 50 is above max_order_size")
    assert reached(exchange, "batchorder") == []


async def test_a_retried_batch_with_a_locally_answered_item_replays_the_whole_answer(
    guardian: Service, exchange: Simulator, bot: KrakenClient
) -> None:
    items = [
        {
            "order": "send",
            "order_tag": "a",
            "cliOrdId": "batch-retry-1",
            "orderType": "lmt",
            "symbol": "PF_XBTUSD",
            "side": "buy",
            "size": 1,
            "limitPrice": 59000,
        },
        {"order": "edit", "order_id": str(uuid.uuid4()), "size": 2},
    ]
    first = await bot.batch_order(items)
    again = await bot.batch_order(items)
    assert [s["status"] for s in first["batchStatus"]] == ["placed", "orderForEditNotFound"]
    assert again["batchStatus"] == first["batchStatus"]
    assert len(reached(exchange, "batchorder")) == 1


# ---- fields the exchange ignores or judges itself ----------------------------------------------------------


async def test_a_lmt_with_an_extra_stop_price_is_forwarded_unchanged_and_judged_at_its_limit(
    guardian: Service, exchange: Simulator, bot: KrakenClient
) -> None:
    """stopPrice 1 is far outside the 5 % band: judged, it would be refused. A lmt has no trigger, so it is
    not judged; the exchange gets it as sent."""
    answer = await bot.send_order(**LMT, stopPrice=1)
    assert answer["sendStatus"]["status"] == "placed"
    [sent] = reached(exchange, "sendorder")
    assert sent["fields"]["stopPrice"] == "1" and sent["fields"]["orderType"] == "lmt"
    batch = await bot.batch_order(
        [{"order": "send", "order_tag": "x", **LMT, "limitPrice": 58800, "stopPrice": 1}]
    )
    assert batch["batchStatus"][0]["status"] == "placed"
    [[item]] = forwarded_items(exchange)
    assert item["stopPrice"] == 1


@pytest.mark.parametrize(
    "extra",
    [
        {"orderType": "post", "stopPrice": "100000"},
        {"orderType": "ioc", "trailingStopMaxDeviation": "99", "trailingStopDeviationUnit": "PERCENT"},
        {"limitPriceOffsetValue": "-1", "limitPriceOffsetUnit": "PERCENT"},
    ],
)
async def test_a_field_that_does_not_apply_to_the_order_type_reaches_the_exchange_as_sent(
    guardian: Service, exchange: Simulator, bot: KrakenClient, extra: dict[str, str]
) -> None:
    await bot.send_order(**{**LMT, **extra})  # whatever the exchange makes of it, it is its own answer
    [sent] = reached(exchange, "sendorder")
    assert {k: sent["fields"][k] for k in extra} == extra


async def test_a_stop_price_that_cannot_be_read_is_still_refused_and_never_forwarded(
    guardian: Service, exchange: Simulator, http: aiohttp.ClientSession
) -> None:
    body = "orderType=lmt&symbol=PF_XBTUSD&side=buy&size=1&limitPrice=59000&stopPrice=abc"
    status, doc = await post_signed(http, guardian, "sendorder", body)
    assert (status, doc["error"]) == (400, "invalidArgument")
    assert doc["message"].startswith("stopPrice 'abc' is not valid")
    assert reached(exchange, "sendorder") == []
