"""What guardian adds to an order: `sendorder` through guardian against the same request sent straight to
the exchange simulator, interleaved in one run, one at a time, each path on its own keep-alive session.

`guardian sim` and `guardian run` are separate processes, as in production. The daemon runs with the
journal on (a file in a temporary directory), every guard limit on, and its switch armed; the direct
path signs with the account key (no nonce, so the two signers never collide), the guardian path with
a local bot key. Orders are `ioc` buys below the ask: the guard checks all limits, the exchange answers
`iocWouldNotExecute` and nothing accumulates, so every request costs the exchange the same.

`--resting N` first rests N limit orders through guardian (a book to judge against: issue 20 asks for the
figures at 10). `--stages` runs guardian at the debug log level, which times each stage of an order's way
through the gateway (`request_forwarded` lines, `stages_ms`), and prints each stage's p50 and p99: the
per-stage breakdown. Debug logging costs some tens of microseconds per line, so compare latencies only
between runs with the same setting.

Usage: .venv/bin/python bench/gateway_latency.py [--orders 2000] [--resting N] [--stages]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    markdown_table,
    quantile,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
    wait_http,
)

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret


async def rest_orders(client: KrakenClient, count: int, prefix: str = "rest") -> None:
    """`count` resting limit buys on PF_XBTUSD at distinct prices 1-4 % below the simulator's mark (60,000:
    inside guardian's 5 % price band, far from the ask), one at a time."""
    for i in range(count):
        price = 59_400 - (i % 3_000) * 0.5
        answer = await client.send_order(
            orderType="lmt",
            symbol="PF_XBTUSD",
            side="buy",
            size=0.0001,
            limitPrice=price,
            cliOrdId=f"{prefix}-{i}",
        )
        assert answer["sendStatus"]["status"] == "placed", answer


def stage_table(log: Path, endpoint: str = "sendorder") -> str:
    """Each stage's p50 / p99 (ms) over the `request_forwarded` lines of `endpoint` in guardian's log."""
    spent: dict[str, list[float]] = {}
    for text in log.read_text().splitlines():
        if '"request_forwarded"' not in text:
            continue
        line = json.loads(text)
        if line.get("endpoint") != endpoint or not line.get("stages_ms"):
            continue
        for name, ms in line["stages_ms"]:
            spent.setdefault(name, []).append(ms)
        spent.setdefault("(upstream: the exchange's round trip)", []).append(line["upstream_ms"])
        spent.setdefault("(the whole handler)", []).append(line["total_ms"])
    rows = [
        [name, f"{statistics.median(v):.3f}", f"{quantile(v, 0.99):.3f}", str(len(v))]
        for name, v in spent.items()
    ]
    return markdown_table(["stage", "p50 ms", "p99 ms", "orders"], rows)


async def main(count: int, resting: int = 0, stages: bool = False) -> int:
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
                log_level="debug" if stages else "warning",
            )
        )
        log = Path(tmp) / "guardian.log"
        daemon = await start_daemon(config, guardian_env(**secrets_env([exchange, bot])), log=log)
        try:
            await wait_http(guardian_url + "/readyz")
            await asyncio.sleep(2.5)  # the first marks
            direct = KrakenClient(
                sim_url, Credentials(exchange_key, ApiSecret(exchange_secret)), use_nonce=False, pool_size=1
            )
            via = KrakenClient(guardian_url, Credentials(bot_key, ApiSecret(bot_secret)), pool_size=1)
            async with direct, via:
                await rest_orders(via, resting)
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
                f"{count} sendorder each way, interleaved, concurrency 1, journal on, {resting} orders resting, "
                f"{os.cpu_count()} CPUs, log level {'debug (stages timed)' if stages else 'warning'}"
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
            if stages:
                print("\nguardian's stages, wall time per sendorder (request_forwarded lines):\n")
                print(stage_table(log))
        finally:
            for proc in (daemon, sim):
                await stop(proc)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000, help="orders sent each way")
    parser.add_argument("--resting", type=int, default=0, help="limit orders rested through guardian first")
    parser.add_argument("--stages", action="store_true", help="time each stage (guardian at the debug level)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.orders, args.resting, args.stages)))
