"""Shared fixtures: a simulator on an ephemeral loopback port and a real client signed for it."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.market import Market

# A trade key, a read-only key and a funds key of the simulated exchange (base64 of fixed bytes).
TRADE_KEY = "sim-trade-key-0001"
TRADE_SECRET = base64.b64encode(bytes(range(64))).decode()
READ_KEY = "sim-read-key-0001"
READ_SECRET = base64.b64encode(bytes(range(64, 128))).decode()


def sim_keys() -> list[SimKey]:
    return [
        SimKey(TRADE_KEY, ApiSecret(TRADE_SECRET), account="main", permissions=frozenset({"read", "trade"})),
        SimKey(READ_KEY, ApiSecret(READ_SECRET), account="main", permissions=frozenset({"read"})),
    ]


@contextlib.asynccontextmanager
async def running_sim(*, seed: int = 7, **settings: Any) -> AsyncIterator[Simulator]:
    """A simulator with this module's keys and frozen prices (no random walk) on a free loopback port;
    `settings` go to Simulator (e.g. budget_capacity)."""
    simulator = Simulator(sim_keys(), market=Market(seed=seed), tick_s=None, **settings)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A simulator with frozen prices: tests move marks through the control API."""
    async with running_sim() as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(sim.url, Credentials(TRADE_KEY, ApiSecret(TRADE_SECRET)), timeout_s=5) as kraken:
        yield kraken


@pytest.fixture
async def read_client(sim: Simulator) -> AsyncIterator[KrakenClient]:
    async with KrakenClient(sim.url, Credentials(READ_KEY, ApiSecret(READ_SECRET)), timeout_s=5) as kraken:
        yield kraken


# The files that take minutes go first. `make test` runs two xdist workers, each taking whole files in
# collection order: the market maker's drill alone takes 4-7 minutes, and started last it would run on
# one worker while the other sat idle (the suite took 17 minutes so; `--durations` shows the figures).
FIRST = ("test_market_maker.py", "test_fuzz.py", "test_stream_differential.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
