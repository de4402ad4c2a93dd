"""Switch beat jitter: how late each refresh starts against its own schedule, idle and under load.

Everything runs as separate processes, as in production: `guardian sim` (the exchange), `guardian run`
(the daemon, with a 0.5-1 s beat: about 60 samples in 45 s, inside the exchange's rate budget) and this script, which
reads the daemon's `switch_beat` log lines (`late_s`: start time minus scheduled time, on the monotonic
clock) and generates the load:
- idle: nothing but the switch;
- load: LOCAL_WORKERS concurrent keep-alive clients hammering the daemon's own HTTP endpoints
  (`/guardian/state`, `/metrics`, `/readyz`) as fast as they answer, and EXCHANGE_WORKERS more hammering
  the exchange's public endpoints, all on this 2-core machine.

It also prints the shortest and longest interval between beat starts (from the log lines' own
timestamps) against the configured window, and the refresh round trip. Usage: .venv/bin/python bench/switch_jitter.py [--seconds 45]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from _common import free_port, quantile

# Each refresh costs 25 of the exchange's 500 per 10 s: a 0.5-1 s beat uses about 330 of them.
REFRESH_MIN_S, REFRESH_MAX_S, TIMEOUT_S = 0.5, 1.0, 5
LOCAL_WORKERS = 16
EXCHANGE_WORKERS = 4
LOCAL_PATHS = ("/guardian/state", "/metrics", "/readyz")


class Beats:
    """The daemon's log, read as it is written; each beat tagged with the phase it fell in."""

    def __init__(self) -> None:
        self.phase = "warmup"
        self.late: dict[str, list[float]] = {}
        self.starts: dict[str, list[float]] = {}
        self.refresh_s: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self.listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            name = event.get("event")
            if name == "guardian_listening" and not self.listening.done():
                self.listening.set_result(str(event["url"]))
            elif name == "switch_beat":
                self.late.setdefault(self.phase, []).append(float(event["late_s"]))
                stamp = datetime.fromisoformat(str(event["timestamp"])).timestamp()
                self.starts.setdefault(self.phase, []).append(stamp)
            elif name == "switch_refresh_failed":
                self.failures[self.phase] = self.failures.get(self.phase, 0) + 1
            elif name == "switch_refreshed":
                self.refresh_s.setdefault(self.phase, []).append(float(event["duration_s"]))


async def hammer(
    session: aiohttp.ClientSession, urls: list[str], stop: asyncio.Event, count: list[int]
) -> None:
    i = 0
    while not stop.is_set():
        async with session.get(urls[i % len(urls)]) as response:
            await response.read()
        count[0] += 1
        i += 1


def report(name: str, beats: Beats, requests: int, seconds: float) -> None:
    late = [max(0.0, value) * 1000 for value in beats.late.get(name, [])]
    refresh = [value * 1000 for value in beats.refresh_s.get(name, [])]
    if not late:
        print(f"{name}: no beats recorded")
        return
    print(
        f"{name:5} beats={len(late):4d}  late p50={statistics.median(late):.3f} ms  "
        f"p99={quantile(late, 0.99):.3f} ms  max={max(late):.3f} ms  "
        f"refresh round trip p50={statistics.median(refresh):.2f} ms p99={quantile(refresh, 0.99):.2f} ms  "
        f"failed refreshes={beats.failures.get(name, 0)}  load={requests / seconds:,.0f} req/s"
    )


async def main(seconds: float) -> int:
    secret = base64.b64encode(os.urandom(64)).decode()
    key = "bench-key-" + os.urandom(4).hex()
    sim_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GUARDIAN_BENCH_SECRET": secret}
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "sim", "--listen", f"127.0.0.1:{sim_port}", "--key", key,
        "--secret", secret, "--tick", "1", "--log-format", "json", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert sim.stdout is not None
    sim_url = ""
    while not sim_url:
        line = (await sim.stdout.readline()).decode()
        if not line:
            raise SystemExit("guardian sim did not start")
        if line.startswith("sim base_url="):
            sim_url = line.strip().split("=", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f"""[server]
listen = "127.0.0.1:0"
[log]
level = "debug"
format = "json"
[[accounts]]
name = "bench"
base_url = "{sim_url}"
api_key = "{key}"
api_secret_env = "GUARDIAN_BENCH_SECRET"
[accounts.switch]
refresh_min_s = {REFRESH_MIN_S}
refresh_max_s = {REFRESH_MAX_S}
timeout_s = {TIMEOUT_S}
min_remaining_s = 1
"""
        )
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp,
        )  # fmt: skip
        assert daemon.stderr is not None
        beats = Beats()
        reader = asyncio.create_task(beats.read(daemon.stderr))
        try:
            url = await asyncio.wait_for(beats.listening, 30)
            await asyncio.sleep(2)
            print(
                f"beat window {REFRESH_MIN_S}-{REFRESH_MAX_S} s, timeout {TIMEOUT_S} s, {seconds:g} s per phase, "
                f"{os.cpu_count()} CPUs; load: {LOCAL_WORKERS} clients on the daemon's endpoints, "
                f"{EXCHANGE_WORKERS} on the exchange's public ones"
            )
            beats.phase = "idle"
            await asyncio.sleep(seconds)
            report("idle", beats, 0, seconds)

            stop = asyncio.Event()
            count = [0]
            local = [url + path for path in LOCAL_PATHS]
            public = [f"{sim_url}/derivatives/api/v3/tickers", f"{sim_url}/derivatives/api/v3/instruments"]
            connector = aiohttp.TCPConnector(limit=LOCAL_WORKERS + EXCHANGE_WORKERS)
            async with aiohttp.ClientSession(connector=connector) as session:
                workers = [
                    asyncio.create_task(hammer(session, local, stop, count)) for _ in range(LOCAL_WORKERS)
                ]
                workers += [
                    asyncio.create_task(hammer(session, public, stop, count)) for _ in range(EXCHANGE_WORKERS)
                ]
                beats.phase = "load"
                started = time.monotonic()
                await asyncio.sleep(seconds)
                beats.phase = "after"
                stop.set()
                await asyncio.gather(*workers)
                report("load", beats, count[0], time.monotonic() - started)
            for phase in ("idle", "load"):
                gaps = [b - a for a, b in itertools.pairwise(beats.starts.get(phase, []))]
                if gaps:
                    print(
                        f"{phase:5} intervals between beat starts: min {min(gaps):.4f} s, max {max(gaps):.4f} s "
                        f"(window {REFRESH_MIN_S}-{REFRESH_MAX_S} s; an interval also carries the lateness of both ends)"
                    )
        finally:
            daemon.terminate()
            await daemon.wait()
            await reader
            sim.terminate()
            await sim.wait()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=45.0, help="length of each phase")
    sys.exit(asyncio.run(main(parser.parse_args().seconds)))
