"""Start-up time: from `guardian run` being started to READY=1 on its notify socket and to `/readyz` 200,
over `--runs` restarts; also when it logged `guardian_listening` and how long its SIGTERM stop took.

`guardian sim` runs throughout as a separate process; each run starts a fresh `guardian run` (one account
with its default switch, every guard limit, one bot, the journal in a file that persists from run to run,
as across real restarts) with `NOTIFY_SOCKET` naming an abstract datagram socket this script listens on,
as systemd would. Meanwhile this script asks `/readyz` every `--poll-ms`. Times are on the monotonic
clock from just before the process is spawned, so they include the interpreter's start and guardian's
imports; READY=1 also includes the first `cancelallordersafter` round trip, since guardian is ready only
once the switch is armed.

Usage: .venv/bin/python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    Key,
    MachineMeter,
    bots_toml,
    free_port,
    guardian_env,
    machine,
    markdown_table,
    secrets_env,
    start_sim,
    stop,
)

RUN_LIMIT_S = 60.0
LABELS = {
    "listening": "spawn to `guardian_listening` logged",
    "READY=1": "spawn to READY=1",
    "/readyz 200": "spawn to `/readyz` 200",
    "stop": "SIGTERM to exit (on_shutdown keep)",
}


async def notified(listener: socket.socket, what: str) -> float:
    """When a datagram carrying `what` arrived."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(listener, 4096)
        if what in data.decode(errors="replace").splitlines():
            return time.monotonic()


async def logged(stream: asyncio.StreamReader, event: str) -> float:
    """When the daemon's log line for `event` was read; the rest of the log is drained."""
    at = 0.0
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            if not at and json.loads(line).get("event") == event:
                at = time.monotonic()
    return at


async def ready(url: str, every_s: float) -> float:
    """When `url` first answered 200."""
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return time.monotonic()
            await asyncio.sleep(every_s)


async def one_run(config: Path, env: dict[str, str], url: str, every_s: float) -> dict[str, float]:
    name = f"guardian-bench-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.setblocking(False)
        started = time.monotonic()
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**env, "NOTIFY_SOCKET": "@" + name}, cwd=config.parent,
        )  # fmt: skip
        assert daemon.stderr is not None
        log = asyncio.create_task(logged(daemon.stderr, "guardian_listening"))
        try:
            ready_at, readyz_at = await asyncio.wait_for(
                asyncio.gather(notified(listener, "READY=1"), ready(url + "/readyz", every_s)), RUN_LIMIT_S
            )
            stopping = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = await daemon.wait()
            stopped = time.monotonic()
        finally:
            await stop(daemon)
            listening_at = await log
    if code != 0:
        raise SystemExit(f"guardian run exited {code} after SIGTERM")
    return {
        "listening": listening_at - started,
        "READY=1": ready_at - started,
        "/readyz 200": readyz_at - started,
        "stop": stopped - stopping,
    }


async def main(runs: int, every_s: float) -> int:
    exchange, bot = Key.make("exchange", 64), Key.make("bot")
    sim, sim_url = await start_sim(exchange, budget=1e9)
    port = free_port()
    results: list[dict[str, float]] = []
    meter = MachineMeter()
    with tempfile.TemporaryDirectory(prefix="guardian-startup-") as tmp:
        config = Path(tmp) / "startup.toml"
        config.write_text(
            f"""[server]
listen = "127.0.0.1:{port}"
[journal]
path = "{Path(tmp) / "journal.sqlite3"}"
[log]
level = "info"
format = "json"
[[accounts]]
name = "main"
base_url = "{sim_url}"
api_key = "{exchange.api_key}"
api_secret_env = "{exchange.env}"
[accounts.guard]
symbols = ["PF_XBTUSD"]
max_order_size = 1
max_notional = 100000
price_band_pct = 5
"""
            + bots_toml([bot])
        )
        env = guardian_env(**secrets_env([exchange, bot]))
        try:
            for i in range(runs):
                results.append(await one_run(config, env, f"http://127.0.0.1:{port}", every_s))
                print(
                    f"  run {i + 1}: " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in results[-1].items()),
                    flush=True,
                )
        finally:
            await stop(sim)
    busy = meter.percent()
    print()
    print(
        f"`guardian run` from spawn, {runs} runs, one account, journal on, notify socket, /readyz asked every "
        f"{every_s * 1000:g} ms. {machine()}; the whole machine was {busy:.0f}% busy "
        f"(of {100 * (os.cpu_count() or 1)}%)."
    )
    print()
    print(
        markdown_table(
            ["measure", "p50", "max"],
            [
                [
                    LABELS[what],
                    f"{statistics.median(r[what] for r in results) * 1000:.0f} ms",
                    f"{max(r[what] for r in results) * 1000:.0f} ms",
                ]
                for what in results[0]
            ],
        )
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="restarts measured")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="how often /readyz is asked")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.runs, arguments.poll_ms / 1000)))
