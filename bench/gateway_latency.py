"""What guardian adds to an order: `sendorder` through guardian against the same request sent straight to
the exchange simulator, interleaved in one run, one at a time, each path on its own keep-alive session.

`guardian sim` and `guardian run` are separate processes, as in production. The daemon runs with the
journal on (a file in a temporary directory), every guard limit on, and its switch armed; the direct
path signs with the account key (no nonce, so the two signers never collide), the guardian path with
a local bot key. Orders are `ioc` buys below the ask: the guard checks all limits, the exchange answers
`iocWouldNotExecute` and nothing accumulates, so every request costs the exchange the same.
Usage: .venv/bin/python bench/gateway_latency.py [--orders 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    IOC_ORDER,
    Key,
    daemon_toml,
    free_port,
    guardian_env,
    quantile,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
    wait_http,
)

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret


async def main(count: int) -> int:
    exchange, bot = Key.make("exchange", 64), Key.make("bot")
    sim, sim_url = await start_sim(exchange, budget=1e9)
    guardian_port = free_port()
    guardian_url = f"http://127.0.0.1:{guardian_port}"
    exchange_key, exchange_secret = exchange.api_key, exchange.secret
    bot_key, bot_secret = bot.api_key, bot.secret
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            daemon_toml(
                guardian_port,
                Path(tmp) / "journal.sqlite3",
                sim_url,
                exchange,
                [bot],
                symbols=["PF_XBTUSD", "PF_ETHUSD"],
                guard="dedupe_window_s = 0\n",
            )
        )
        daemon = await start_daemon(config, guardian_env(**secrets_env([exchange, bot])))
        try:
            await wait_http(guardian_url + "/readyz")
            await asyncio.sleep(2.5)  # the first marks
            direct = KrakenClient(
                sim_url, Credentials(exchange_key, ApiSecret(exchange_secret)), use_nonce=False, pool_size=1
            )
            via = KrakenClient(guardian_url, Credentials(bot_key, ApiSecret(bot_secret)), pool_size=1)
            async with direct, via:
                for client in (direct, via):  # warm up the connections and the code paths
                    for _ in range(50):
                        await client.send_order(**IOC_ORDER)
                times: dict[str, list[float]] = {"direct": [], "guardian": []}
                for i in range(count * 2):
                    name, client = ("direct", direct) if i % 2 == 0 else ("guardian", via)
                    started = time.perf_counter()
                    answer = await client.send_order(**IOC_ORDER)
                    times[name].append((time.perf_counter() - started) * 1000)
                    assert answer["sendStatus"]["status"] == "iocWouldNotExecute", answer
            p50 = {k: statistics.median(v) for k, v in times.items()}
            p99 = {k: quantile(v, 0.99) for k, v in times.items()}
            print(
                f"{count} sendorder each way, interleaved, concurrency 1, journal on, {os.cpu_count()} CPUs"
            )
            for name in ("direct", "guardian"):
                print(
                    f"{name:9} p50={p50[name]:.3f} ms  p99={p99[name]:.3f} ms  max={max(times[name]):.3f} ms"
                )
            print(
                f"added by guardian: p50={p50['guardian'] - p50['direct']:.3f} ms  "
                f"p99={p99['guardian'] - p99['direct']:.3f} ms  (goal: p99 at most 2 ms; the p50 goal is a "
                "ratio to a signing proxy's, which bench/proxy_floor.py measures)"
            )
        finally:
            for proc in (daemon, sim):
                await stop(proc)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000, help="orders sent each way")
    sys.exit(asyncio.run(main(parser.parse_args().orders)))
