"""The retried-order memory as a property, through the real gateway in front of the simulator (issue 15):
for any two requests sharing a cliOrdId (two bots of one account, single orders and batch items, the
same or another order), the second is answered again if and only if it is the same request from the same
bot; otherwise it is refused `clientOrderIdAlreadyExist` and never forwarded. No answer carries an order
another bot placed."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.config import ClientConfig, GuardConfig
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from tests.conftest import running_sim
from tests.daemon import account_config, serving, signed_post, wait_for
from tests.test_gateway import SWITCH

TRADE = frozenset({Permission.READ, Permission.TRADE})
BOTS = {
    "bot-a": ("property-bot-a-local-key", base64.b64encode(b"property bot A local secret 32 b!").decode()),
    "bot-b": ("property-bot-b-local-key", base64.b64encode(b"property bot B local secret 32 b!").decode()),
}
# Orders that rest, well inside the guard's limits (the simulator's marks: XBT 60000, ETH 3000).
ORDERS = [
    {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1", "limitPrice": "59000"},
    {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "2", "limitPrice": "59000"},
    {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "sell", "size": "1", "limitPrice": "61000"},
    {"orderType": "post", "symbol": "PF_XBTUSD", "side": "buy", "size": "1", "limitPrice": "59000"},
    {"orderType": "lmt", "symbol": "PF_ETHUSD", "side": "buy", "size": "3", "limitPrice": "2950"},
    # The same order as the one above in other words: reduceOnly is false unless sent true.
    {
        "orderType": "lmt",
        "symbol": "pf_ethusd",
        "side": "buy",
        "size": "3.0",
        "limitPrice": "2950",
        "reduceOnly": "false",
    },
]
MEANING = {5: 4}  # orders that say the same thing: content is compared by what the order does
SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=80,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one daemon for every example, on purpose
)
REQUEST = st.tuples(
    st.sampled_from(sorted(BOTS)), st.integers(0, len(ORDERS) - 1), st.sampled_from(["single", "batch"])
)
SERIAL = itertools.count()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Simulator, Service, aiohttp.ClientSession]]:
    clients = tuple(ClientConfig(name, key, ApiSecret(secret), TRADE) for name, (key, secret) in BOTS.items())
    guard = GuardConfig(mark_poll_s=0.1, rate_budget=100_000, price_band_pct=5)
    async with running_sim(budget_capacity=1_000_000) as sim:
        account = account_config(sim.url, switch=SWITCH, guard=guard, clients=clients)
        async with (
            serving(account, journal=tmp_path / "journal.sqlite3") as service,
            aiohttp.ClientSession() as http,
        ):
            main = service.accounts[0]
            await wait_for(
                lambda: main.switch.allows_new_risk() and main.marks.mark("PF_XBTUSD"), what="ready"
            )
            yield sim, service, http


async def post(
    http: aiohttp.ClientSession, service: Service, bot: str, endpoint: str, fields: dict[str, str]
) -> tuple[int, dict[str, str], dict[str, Any]]:
    key, secret = BOTS[bot]
    return await signed_post(
        http, service.url, key, secret, f"/derivatives/api/v3/{endpoint}", urlencode(fields)
    )


async def place(
    http: aiohttp.ClientSession, service: Service, request: tuple[str, int, str], cli_ord_id: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    bot, order, via = request
    fields = {**ORDERS[order], "cliOrdId": cli_ord_id}
    if via == "single":
        return await post(http, service, bot, "sendorder", fields)
    items = [{"order": "send", "order_tag": "t1", **fields}]
    return await post(http, service, bot, "batchorder", {"json": json.dumps({"batchOrder": items})})


def orders_received(sim: Simulator) -> int:
    """Order requests the exchange received (the switch and the mark polling go on meanwhile)."""
    return len(sim.requests_for("sendorder")) + len(sim.requests_for("batchorder"))


def order_ids(answer: dict[str, Any]) -> set[str]:
    statuses = [answer.get("sendStatus"), *(answer.get("batchStatus") or [])]
    return {s["order_id"] for s in statuses if isinstance(s, dict) and s.get("order_id")}


@SETTINGS
@given(first=REQUEST, second=REQUEST, same=st.booleans())
async def test_the_second_request_is_replayed_iff_it_is_the_same_request_from_the_same_bot(
    setup: tuple[Simulator, Service, aiohttp.ClientSession],
    first: tuple[str, int, str],
    second: tuple[str, int, str],
    same: bool,
) -> None:
    sim, service, http = setup
    if same:  # half the pairs are exact retries, which random draws alone would rarely make
        second = first
    cli_ord_id = f"prop-{next(SERIAL)}"
    status, _, answer = await place(http, service, first, cli_ord_id)
    assert status == 200, answer
    placed_by = {order_id: first[0] for order_id in order_ids(answer)}
    forwarded = orders_received(sim)

    again, headers, second_answer = await place(http, service, second, cli_ord_id)

    def meaning(request: tuple[str, int, str]) -> tuple[str, int, str]:
        return request[0], MEANING.get(request[1], request[1]), request[2]

    if meaning(second) == meaning(first):
        assert (again, headers.get("X-Guardian-Replayed")) == (200, "true"), second_answer
        assert second_answer == answer
    else:
        assert (again, second_answer["error"]) == (409, "clientOrderIdAlreadyExist"), second_answer
        assert "X-Guardian-Replayed" not in headers
    assert orders_received(sim) == forwarded  # the second request never reached the exchange
    assert all(placed_by.get(order_id) == second[0] for order_id in order_ids(second_answer))
