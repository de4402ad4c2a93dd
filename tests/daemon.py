"""Helpers shared by the daemon's tests: configurations with short intervals, a running service, polling."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from guardian.config import (
    AccountConfig,
    ClientConfig,
    Config,
    GuardConfig,
    JournalConfig,
    OnShutdown,
    ServerConfig,
    StreamConfig,
    SwitchConfig,
)
from guardian.kraken.signing import sign
from guardian.notify import Notifier
from guardian.secret import ApiSecret, Secret
from guardian.service import Service
from tests.conftest import TRADE_KEY, TRADE_SECRET

# Short intervals, as a failure drill would use: a beat of 0.3-0.5 s, a 3 s exchange timer.
FAST = SwitchConfig(refresh_min_s=0.3, refresh_max_s=0.5, timeout_s=3, min_remaining_s=1.0)
# FAST costs 50-83 of the exchange's 500 per 10 s each second (25 a refresh): against the simulator's real
# budget it runs out after about 8 s and the switch degrades. A test that runs longer uses this beat (at
# most 275 per 10 s), or raises the simulator's budget.
STEADY = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=10, min_remaining_s=1.0)
# The account-state stream is on in production by default; the tests of other features leave it off, so
# that its REST reconciliation does not mix with the requests they count (tests/test_stream*.py turn it on).
NO_STREAM = StreamConfig(enabled=False)


def account_config(
    base_url: str,
    *,
    name: str = "main",
    key: str = TRADE_KEY,
    secret: str = TRADE_SECRET,
    policy: OnShutdown = OnShutdown.KEEP,
    switch: SwitchConfig = FAST,
    guard: GuardConfig | None = None,
    clients: tuple[ClientConfig, ...] = (),
    stream: StreamConfig = NO_STREAM,
) -> AccountConfig:
    return AccountConfig(
        name=name,
        api_key=key,
        api_secret=ApiSecret(secret),
        base_url=base_url,
        switch=SwitchConfig(
            switch.refresh_min_s, switch.refresh_max_s, switch.timeout_s, switch.min_remaining_s, policy
        ),
        guard=guard or GuardConfig(),
        clients=clients,
        stream=stream,
    )


@contextlib.asynccontextmanager
async def serving(
    *accounts: AccountConfig,
    notifier: Notifier | None = None,
    journal: Path | None = None,
    admin_token: str | None = None,
    commit_on_loop: bool = True,
) -> AsyncIterator[Service]:
    """A started service on a free loopback port, its journal in a fresh temporary directory unless
    `journal` names one; stopped (with each account's policy) on exit."""
    with tempfile.TemporaryDirectory(prefix="guardian-test-") as tmp:
        config = Config(
            accounts=accounts,
            server=ServerConfig("127.0.0.1", 0, None if admin_token is None else Secret(admin_token)),
            journal=JournalConfig(journal or Path(tmp) / "journal.sqlite3", commit_on_loop=commit_on_loop),
        )
        service = Service(config, notifier=notifier or Notifier({}))
        await service.start()
        try:
            yield service
        finally:
            await service.stop()


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`. A coroutine function's
    result is awaited (a scrape, a journal read)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


# ---- appended for the fault-injection suite (tests/test_faults_*.py) ------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    """Every sample of `url`/metrics by (name, labels), read with Prometheus' own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(found: Samples, name: str, **labels: str) -> float:
    """One sample's value; a KeyError names the series that is missing."""
    return found[(name, frozenset(labels.items()))]


async def signed_post(
    http: aiohttp.ClientSession, base_url: str, key: str, secret: str, path: str, body: str
) -> tuple[int, dict[str, str], Any]:
    """A raw POST signed with a bot's key (Authent over the body, no nonce), for the status, headers and
    body a client library would hide or turn into an exception."""
    headers = {
        "APIKey": key,
        "Authent": sign(base64.b64decode(secret), body, None, path.removeprefix("/derivatives")),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with http.post(base_url + path, data=body.encode(), headers=headers) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)
