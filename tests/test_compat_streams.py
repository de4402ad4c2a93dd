"""Real third-party WebSocket clients against the simulator's `ws/v1`, pointed at it by URL alone.

ccxt.pro's `krakenfutures` speaks plain `ws://`. python-kraken-sdk's `FuturesWSClient` hard-codes
`wss://`, so the simulator serves TLS with a throwaway self-signed certificate made here (with
`cryptography`, already installed for ccxt) and the client trusts it through `SSL_CERT_FILE`, which the
default SSL context reads: verification stays on, for this test process only, and only this
certificate is trusted. Orders go through REST on the simulator directly.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kraken.futures import FuturesWSClient

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret
from guardian.sim.app import Simulator
from guardian.sim.market import Market
from tests.conftest import TRADE_KEY, TRADE_SECRET, sim_keys

pytestmark = pytest.mark.compat

BTC = "BTC/USD:USD"
SYM = "PF_XBTUSD"


@pytest.fixture
async def kraken(sim: Simulator) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as client:
        yield client


async def order(kraken: KrakenClient, **fields: str) -> dict[str, Any]:
    params = {"orderType": "lmt", "symbol": SYM, "side": "buy", "size": "0.01", **fields}
    return dict((await kraken.request("sendorder", params))["sendStatus"])


@pytest.fixture
async def pro(sim: Simulator) -> AsyncIterator[ccxtpro.krakenfutures]:
    """ccxt.pro aimed at the simulator: only the URLs change."""
    exchange = ccxtpro.krakenfutures(
        {
            "apiKey": TRADE_KEY,
            "secret": TRADE_SECRET,
            "enableRateLimit": False,
            "timeout_on_exit": 0,
            "urls": {
                "api": {
                    "ws": sim.ws_url,
                    "public": sim.url + "/derivatives/api/",
                    "private": sim.url + "/derivatives/api/",
                }
            },
        }
    )
    try:
        yield exchange
    finally:
        await exchange.close()


# ---- ccxt.pro -----------------------------------------------------------------------------------------
async def test_ccxt_pro_watch_orders_sees_the_snapshot_a_new_order_and_its_cancel(
    sim: Simulator, pro: ccxtpro.krakenfutures, kraken: KrakenClient
) -> None:
    first = await order(kraken, limitPrice="59000")  # ccxt does not resolve on an empty snapshot

    snapshot = await asyncio.wait_for(pro.watch_orders(), 10)
    assert [(o["id"], o["symbol"], o["side"], o["price"], o["remaining"]) for o in snapshot] == [
        (first["order_id"], BTC, "buy", 59000, 0.01)
    ]

    second = await order(kraken, side="sell", limitPrice="61000")
    updated = await asyncio.wait_for(pro.watch_orders(), 10)
    assert updated[-1]["id"] == second["order_id"] and updated[-1]["side"] == "sell"

    await kraken.request("cancelorder", {"order_id": second["order_id"]})
    cancelled = await asyncio.wait_for(pro.watch_orders(), 10)
    assert {o["id"]: o["status"] for o in cancelled}[second["order_id"]] == "canceled"


async def test_ccxt_pro_watch_my_trades_positions_and_balance_follow_a_fill(
    sim: Simulator, pro: ccxtpro.krakenfutures, kraken: KrakenClient
) -> None:
    before = await asyncio.wait_for(pro.watch_my_trades(), 10)  # an empty fills snapshot
    assert before == []
    watching = asyncio.ensure_future(pro.watch_my_trades())
    await asyncio.sleep(0.1)
    bought = await order(kraken, orderType="mkt", size="0.02")
    trades = await asyncio.wait_for(watching, 10)
    assert [
        (t["order"], t["symbol"], t["side"], t["amount"], t["price"], t["takerOrMaker"]) for t in trades
    ] == [(bought["order_id"], BTC, "buy", 0.02, 60000, "taker")]
    assert trades[0]["id"] == sim.exchange.accounts["main"].fills[-1]["fill_id"]

    positions = await asyncio.wait_for(pro.watch_positions(), 10)
    assert [(p["symbol"], p["side"], p["contracts"], p["entryPrice"], p["markPrice"]) for p in positions] == [
        (BTC, "long", 0.02, 60000, 60000)
    ]

    cash = await asyncio.wait_for(pro.watch_balance(), 10)  # the snapshot resolves the cash group first
    assert cash["USD"]["total"] == 0
    flex = await asyncio.wait_for(pro.watch_balance({"account": "flex_futures"}), 10)
    account = (await kraken.request("accounts"))["accounts"]["flex"]
    assert flex["USD"]["total"] == account["currencies"]["USD"]["quantity"] == 100_000
    assert flex["USD"]["free"] == account["availableMargin"] == 100_000 - 0.02 * 60000 / 50


async def test_ccxt_pro_watch_ticker_reads_mark_and_index(sim: Simulator, pro: ccxtpro.krakenfutures) -> None:
    ticker = await asyncio.wait_for(pro.watch_ticker(BTC), 10)
    quote = sim.exchange.market.quotes[SYM]
    assert (ticker["symbol"], ticker["bid"], ticker["ask"], ticker["markPrice"], ticker["indexPrice"]) == (
        BTC,
        float(quote.bid),
        float(quote.ask),
        float(quote.mark),
        float(quote.index),
    )


async def test_ccxt_pro_refused_auth_fails_the_watch_with_the_reason(
    sim: Simulator, pro: ccxtpro.krakenfutures
) -> None:
    sim.stream.refuse("Failed to subscribe to authenticated feed")
    with pytest.raises(ccxtpro.ExchangeError, match="Failed to subscribe to authenticated feed"):
        await asyncio.wait_for(pro.watch_my_trades(), 10)


# ---- python-kraken-sdk over TLS -----------------------------------------------------------------------
def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (IP SAN) and its key, valid for an hour."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "guardian-sim-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "sim.crt", directory / "sim.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Simulator]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this certificate, and verifies
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    simulator = Simulator(sim_keys(), market=Market(seed=7), tick_s=None)
    await simulator.start("127.0.0.1", 0, ssl_context=context)
    try:
        yield simulator
    finally:
        await simulator.close()


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.queue.put(message)

    async def next(self, predicate: Any, wait_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                message = await self.queue.get()
                if predicate(message):
                    return message


async def test_python_kraken_sdk_streams_private_and_public_feeds_over_tls(tls_sim: Simulator) -> None:
    assert tls_sim.ws_url.startswith("wss://127.0.0.1:")
    inbox = Inbox()
    client = FuturesWSClient(
        key=TRADE_KEY, secret=TRADE_SECRET, url=tls_sim.ws_url.removeprefix("wss://"), callback=inbox
    )
    try:
        await client.start()
        assert await inbox.next(lambda m: m.get("event") == "info") == {"event": "info", "version": 1}

        await client.subscribe(feed="open_orders")
        assert await inbox.next(lambda m: "event" in m) == {"event": "subscribed", "feed": "open_orders"}
        assert (await inbox.next(lambda m: "feed" in m))["feed"] == "open_orders_snapshot"
        await client.subscribe(feed="fills")
        await inbox.next(lambda m: m.get("feed") == "fills_snapshot")
        await client.subscribe(feed="ticker", products=[SYM])
        assert await inbox.next(lambda m: m.get("event") == "subscribed" and m["feed"] == "ticker") == {
            "event": "subscribed",
            "feed": "ticker",
            "product_ids": [SYM],
        }
        assert (await inbox.next(lambda m: m.get("feed") == "ticker"))["markPrice"] == 60000

        account = tls_sim.exchange.accounts["main"]
        params = {"orderType": "lmt", "symbol": SYM, "side": "buy", "size": "1", "limitPrice": "59000"}
        placed = tls_sim.exchange.send_order(account, params)
        new = await inbox.next(lambda m: m.get("feed") == "open_orders")
        assert (new["order"]["order_id"], new["reason"]) == (placed["order_id"], "new_placed_order_by_user")
        tls_sim.exchange.send_order(account, {**params, "orderType": "mkt", "side": "sell"})
        fill = await inbox.next(lambda m: m.get("feed") == "fills")
        assert fill["username"] == "main" and fill["fills"][0]["buy"] is False

        # The link drops: the client reconnects by itself, takes a fresh challenge, resubscribes, and
        # gets new snapshots.
        assert tls_sim.stream.drop_all() == 1
        again = await inbox.next(lambda m: m.get("feed") == "open_orders_snapshot", wait_s=20)
        assert [o["order_id"] for o in again["orders"]] == [placed["order_id"]]
    finally:
        await client.close()


async def test_python_kraken_sdk_bad_secret_gets_the_alert(tls_sim: Simulator) -> None:
    inbox = Inbox()
    wrong = "A" * 86 + "=="
    client = FuturesWSClient(
        key=TRADE_KEY, secret=wrong, url=tls_sim.ws_url.removeprefix("wss://"), callback=inbox
    )
    try:
        await client.start()
        await client.subscribe(feed="balances")
        assert await inbox.next(lambda m: m.get("event") == "alert") == {
            "event": "alert",
            "message": "Failed to subscribe to authenticated feed",
        }
    finally:
        await client.close()
