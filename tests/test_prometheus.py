"""A real Prometheus scrapes the daemon's `/metrics`: the exposition is accepted (`promtool check
metrics` too), every contract series is stored under its contract name, and the values are the ones
the daemon reports. `.ci/run` installs Debian's `prometheus` package, which brings both programs."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardian.sim.app import Simulator
from tests.daemon import STEADY, account_config, serving, wait_for

CONTRACT = (
    "guardian_switch_armed",
    "guardian_switch_state",
    "guardian_switch_remaining_seconds",
    "guardian_switch_last_success_timestamp_seconds",
    "guardian_switch_trigger_timestamp_seconds",
    "guardian_switch_refreshes_total",
    "guardian_switch_refresh_duration_seconds_bucket",
    "guardian_exchange_clock_skew_seconds",
    "guardian_build_info",
)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: `apt-get install prometheus` (.ci/run does this)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str, rules: Sequence[Path] = ()) -> AsyncIterator[str]:
    """A Prometheus server on loopback scraping `target` (host:port) every 200 ms, evaluating the rule
    files `rules` as often; yields its URL."""
    config = tmp_path / "prometheus.yml"
    rule_files = "".join(f"  - '{path}'\n" for path in rules)
    config.write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n  evaluation_interval: 200ms\n"
        + (f"rule_files:\n{rule_files}" if rules else "")
        + f"scrape_configs:\n  - job_name: guardian\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        need("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def query(http: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    try:
        async with http.get(f"{base}/api/v1/query", params={"query": promql}) as response:
            if response.status == 503:
                return []  # listening, but its storage not ready yet ("Service Unavailable", plain text)
            doc = await response.json()
    except aiohttp.ClientConnectionError:
        return []  # not listening yet
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


async def test_a_real_prometheus_scrapes_every_contract_series(sim: Simulator, tmp_path: Path) -> None:
    async with (
        serving(account_config(sim.url, switch=STEADY)) as service,
        aiohttp.ClientSession() as http,
        prometheus(tmp_path, service.url.removeprefix("http://")) as base,
    ):
        up: list[dict[str, Any]] = []

        async def scraped() -> bool:
            up[:] = await query(http, base, 'up{job="guardian"}')
            return bool(up) and up[0]["value"][1] == "1"

        for _ in range(150):  # Prometheus starts in about a second
            if await scraped():
                break
            await asyncio.sleep(0.1)
        assert up and up[0]["value"][1] == "1", f"Prometheus did not scrape guardian: {up}"
        await asyncio.sleep(0.5)  # a couple more scrapes after the switch armed
        stored = {item["metric"]["__name__"] for item in await query(http, base, '{__name__=~"guardian_.+"}')}
        missing = set(CONTRACT) - stored
        assert not missing, missing
        armed = await query(http, base, 'guardian_switch_armed{account="main"}')
        assert armed[0]["value"][1] == "1"
        state = await query(http, base, 'guardian_switch_state{account="main"} == 1')
        assert [item["metric"]["state"] for item in state] == ["armed"]
        remaining = float(
            (await query(http, base, 'guardian_switch_remaining_seconds{account="main"}'))[0]["value"][1]
        )
        assert 0 < remaining <= STEADY.timeout_s
        refreshes = await query(http, base, 'guardian_switch_refresh_duration_seconds_count{account="main"}')
        assert float(refreshes[0]["value"][1]) >= 1
        # One query, so both sides are read at one instant (two queries straddled a scrape once: 15 vs 14).
        differ = await query(
            http,
            base,
            'guardian_switch_refresh_duration_seconds_bucket{account="main", le="+Inf"}'
            ' - ignoring(le) guardian_switch_refresh_duration_seconds_count{account="main"}',
        )
        assert [item["value"][1] for item in differ] == ["0"]
        assert await query(http, base, 'guardian_build_info{version!=""}')


async def test_promtool_accepts_the_exposition(sim: Simulator) -> None:
    async with serving(account_config(sim.url)) as service, aiohttp.ClientSession() as http:
        await wait_for(lambda: service.accounts[0].switch.refreshes >= 1, what="a refresh")
        async with http.get(service.url + "/metrics") as response:
            text = await response.read()
    proc = await asyncio.create_subprocess_exec(
        need("promtool"),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said, _ = await asyncio.wait_for(proc.communicate(text), 30)
    assert proc.returncode == 0, said.decode()
    assert said.decode().strip() == "", said.decode()  # no lint remark either
