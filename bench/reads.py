"""What guardian's reads cost as the book grows (issue 20: `/guardian/state`, `/metrics`, the status page
and `guardian status` answer within 50 ms at 5,000 open orders, and never list thousands of orders by
default).

One simulator (its own process, the wide instrument set, more than Kraken's 500 open orders allowed) and
`guardian run` (the account stream on, every limit on), then, at each size, the book grows to N resting
orders placed through guardian by its bot (batches of 20 over 20 symbols, far from the frozen marks) and
each read is timed `--reads` times, one at a time on a keep-alive connection: `GET /guardian/state`,
`GET /guardian/state?orders=50`, `GET /metrics`, `GET /` (the status page: the page itself; it then reads
`/guardian/state` every second), and `guardian status` as a person runs it (a new process each time:
Python's start-up is most of it, so its figure is printed apart). Printed: p50, p99, max and the answer's
size per read and size, and the machine.

Usage: .venv/bin/python bench/reads.py [--sizes 10,1000,5000] [--reads 200] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    PRICE_BAND_PCT,
    Key,
    daemon_toml,
    free_port,
    load_average,
    machine,
    markdown_table,
    order_params,
    place_batch,
    quantile,
    secrets_env,
    source_tree,
    start_bench_sim,
    start_daemon,
    stop,
    symbols_of,
    tree_env,
    wait_http,
    wait_open_orders,
)

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret

READS = (
    ("/guardian/state", "GET /guardian/state"),
    ("/guardian/state?orders=50", "GET /guardian/state?orders=50"),
    ("/metrics", "GET /metrics"),
    ("/", "GET / (the status page)"),
)


async def timed_reads(http: aiohttp.ClientSession, url: str, count: int) -> tuple[list[float], int]:
    spent, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(url) as response:
            body = await response.read()
            assert response.status == 200, (url, response.status)
        spent.append((time.perf_counter() - started) * 1000)
        size = len(body)
    return spent, size


async def status_cli(base_url: str, env: dict[str, str], count: int) -> list[float]:
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "status", "--url", base_url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        await proc.wait()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


async def main(args: argparse.Namespace) -> int:
    exchange, bot = Key.make("exchange", 64), Key.make("bot")
    sizes = [int(s) for s in args.sizes.split(",")]
    sim, sim_url = await start_bench_sim([exchange], max_open_orders=max(sizes) + 100, instruments="wide")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    rows: list[list[str]] = []
    cli_rows: list[list[str]] = []
    try:
        symbols = await symbols_of(sim_url, 20)
        with tempfile.TemporaryDirectory() as tmp:
            guard = "dedupe_window_s = 0\n" + "".join(
                f"[accounts.guard.symbol.{s.name}]\nprice_band_pct = {PRICE_BAND_PCT}\n" for s in symbols
            )
            config = Path(tmp) / "bench.toml"
            config.write_text(
                daemon_toml(
                    port,
                    Path(tmp) / "journal.sqlite3",
                    sim_url,
                    exchange,
                    [bot],
                    symbols=[s.name for s in symbols],
                    guard=guard,
                )
            )
            env = tree_env(args.tree, **secrets_env([exchange, bot]))
            daemon = await start_daemon(config, env)
            try:
                await wait_http(base_url + "/readyz")
                async with (
                    KrakenClient(
                        base_url, Credentials(bot.api_key, ApiSecret(bot.secret)), pool_size=1
                    ) as client,
                    aiohttp.ClientSession() as http,
                ):
                    placed = 0
                    for size in sizes:
                        while placed < size:
                            items = []
                            for _ in range(min(20, size - placed)):
                                symbol = symbols[placed % len(symbols)]
                                side, price = symbol.book_order(placed // len(symbols))
                                order = order_params(symbol, side, price, symbol.lot)
                                items.append({"order": "send", "order_tag": str(placed), **order})
                                placed += 1
                            await place_batch(client, items)
                        await wait_open_orders(base_url, size)
                        for path, name in READS:
                            spent, body = await timed_reads(http, base_url + path, args.reads)
                            rows.append([f"{size:,}", name, f"{statistics.median(spent):.2f}",
                                         f"{quantile(spent, 0.99):.2f}", f"{max(spent):.2f}", f"{body:,}"])  # fmt: skip
                        spent = await status_cli(base_url, env, args.cli)
                        cli_rows.append([f"{size:,}", f"{statistics.median(spent):.0f}", f"{max(spent):.0f}"])
            finally:
                await stop(daemon)
    finally:
        await stop(sim)
    print(f"{machine()}; load average at the end {load_average()}\n")
    print(f"Each read {args.reads} times, one at a time, keep-alive; ms:\n")
    print(markdown_table(["open orders", "read", "p50", "p99", "max", "bytes"], rows))
    print(f"\n`guardian status` as a new process ({args.cli} runs; Python's start-up included), ms:\n")
    print(markdown_table(["open orders", "p50", "max"], cli_rows))
    worst = max(float(r[3]) for r in rows)
    verdict = "PASS" if worst <= 50 else "FAIL"
    print(f"\nthe worst p99 of a read: {worst:.2f} ms (bound: at most 50 ms): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,1000,5000")
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--cli", type=int, default=5, help="runs of `guardian status`")
    parser.add_argument("--tree", type=source_tree, help="run guardian from this source tree")
    sys.exit(asyncio.run(main(parser.parse_args())))
