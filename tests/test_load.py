"""Several bots trading through guardian at once for a sustained stretch, against the simulator with
Kraken's own budget (500 per 10 s): every request gets exactly one answer, the exchange never answers
guardian `apiLimitExceeded` (guardian's local budget refuses first), the switch's beat holds, and the
journal holds every forwarded request with its outcome."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from guardian.config import ClientConfig, GuardConfig, SwitchConfig
from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.endpoints import Permission
from guardian.kraken.times import parse_iso
from guardian.secret import ApiSecret
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY, running_sim
from tests.daemon import account_config, serving, wait_for

pytestmark = pytest.mark.slow

BOTS = 8
SECONDS = 15.0
SWITCH = SwitchConfig(refresh_min_s=2.0, refresh_max_s=3.0, timeout_s=10, min_remaining_s=2.0)
GUARD = GuardConfig(max_order_size=1, price_band_pct=5, mark_poll_s=0.2)
# What a bot may hear from guardian or the exchange under load: nothing else is acceptable.
EXPECTED_CODES = {"apiLimitExceeded", "orderSizeTooLarge", "priceOutsideBand"}


def bot_config(i: int) -> ClientConfig:
    secret = base64.b64encode(f"load bot {i:02d} secret, 32 bytes!".encode()[:32]).decode()
    return ClientConfig(
        f"bot-{i}", f"load-bot-key-{i:04d}", ApiSecret(secret), frozenset({Permission.READ, Permission.TRADE})
    )


async def trade(client: KrakenClient, rng: random.Random, until: float, tally: Counter[str]) -> None:
    """Sends, edits, cancels, batches and reads, at random, until `until`; counts every answer."""
    mine: list[str] = []
    while time.monotonic() < until:
        action = rng.choice(("send", "send", "edit", "cancel", "batch", "read"))
        price = rng.choice((58500, 59000, 59500, 60500))
        try:
            if action == "send" or (action in ("edit", "cancel") and not mine):
                side = "buy" if price < 60000 else "sell"
                answer = await client.send_order(
                    orderType="lmt", symbol="PF_XBTUSD", side=side, size=0.01, limitPrice=price
                )
                if answer["sendStatus"]["status"] == "placed":
                    mine.append(answer["sendStatus"]["order_id"])
            elif action == "edit":
                await client.edit_order(orderId=mine[-1], size=0.02)
            elif action == "cancel":
                await client.cancel_order(order_id=mine.pop())
            elif action == "batch":
                items = [
                    {"order": "send", "order_tag": f"t{n}", "orderType": "lmt", "symbol": "PF_XBTUSD",
                     "side": "buy", "size": 0.01, "limitPrice": 58000 + n}
                    for n in range(2)
                ]  # fmt: skip
                await client.batch_order(items)
            else:
                await client.open_orders()
            tally["answered"] += 1
        except ExchangeError as exc:
            tally[f"refused:{exc.code}"] += 1
            if exc.code not in EXPECTED_CODES:
                raise
            await asyncio.sleep(0.05)


async def test_many_bots_at_once(tmp_path: Path) -> None:
    async with running_sim(seed=11) as simulator:  # Kraken's own budget: 500 per 10 s
        bots = tuple(bot_config(i) for i in range(BOTS))
        account = account_config(simulator.url, switch=SWITCH, guard=GUARD, clients=bots)
        async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
            main = service.accounts[0]
            await wait_for(lambda: main.switch.state is SwitchState.ARMED and main.marks.mark("PF_XBTUSD"))
            started = time.monotonic()
            tally: Counter[str] = Counter()
            clients = [
                KrakenClient(service.url, Credentials(b.api_key, b.api_secret), timeout_s=15) for b in bots
            ]
            for client in clients:
                await client.start()
            try:
                await asyncio.gather(
                    *(
                        trade(client, random.Random(i), started + SECONDS, tally)
                        for i, client in enumerate(clients)
                    )
                )
            finally:
                for client in clients:
                    await client.close()
            assert main.switch.state is SwitchState.ARMED
            await service.journal.flush()
            rows = read_journal(service.config.journal.path, limit=1_000_000)

    assert tally["answered"] > 40, tally  # about 325 units per 10 s are left to the bots
    # The exchange never had to refuse guardian for its rate: guardian's own budget refused first.
    from_guardian = [r for r in simulator.requests if r["api_key"] == TRADE_KEY]
    assert not [r for r in from_guardian if r.get("error") == "apiLimitExceeded"]
    assert tally["refused:apiLimitExceeded"] > 0  # and it did have to
    # The beat held: refreshes every 2-3 s, never a gap that would let the 10 s timer run low.
    refreshes = [r for r in from_guardian if r["endpoint"] == "cancelallordersafter"]
    stamps = [parse_iso(r["time"]) for r in refreshes]
    assert all(r["outcome"] == "success" for r in refreshes)
    assert max(b - a for a, b in itertools.pairwise(stamps)) <= SWITCH.refresh_max_s + 1.5
    # The journal holds every forwarded request, each with its outcome.
    forwarded = [r for r in rows if r.get("type") == "request" and r["verdict"] == "forwarded"]
    journaled = Counter(r["endpoint"] for r in forwarded)
    at_exchange = Counter(r["endpoint"] for r in from_guardian if r["endpoint"] in journaled)
    for name in ("sendorder", "editorder", "cancelorder", "batchorder", "openorders"):
        assert journaled[name] == at_exchange[name], (name, journaled, at_exchange)
    assert all(r["outcome"] not in (None, "unknown") for r in forwarded)
