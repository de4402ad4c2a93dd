"""Maximum sustained throughput: sendorder then cancelorder through guardian, closed loop, with more
concurrent bots at each step until the rate stops rising.

`guardian sim` (frozen prices, a budget large enough not to refuse anything) and `guardian run` are
separate processes, as in production. The daemon journals to a file, has every guard limit on, and its
local rate budget is raised to match the simulator's, so neither budget limits the rate. Each bot has its
own local key and keep-alive connection and loops: place a resting limit order, cancel it. Each step
runs `--settle-s` unmeasured, then `--seconds` measured: requests per second (a send and a cancel are
two requests), their latency, and the CPU used by guardian, the simulator and this load generator
(percent of one core), all on the same machine, and by the whole machine (anything beyond the three is
other work sharing it, which the figures then also measure). The search stops once `--patience` steps
in a row fail to beat the best rate by `--gain`; the latency is reported at the first step within
`--gain` of the best. Every answer is checked: HTTP 200, result success, `placed` / `cancelled`;
anything else is counted by kind.

Usage: .venv/bin/python bench/throughput.py [--seconds 10] [--max-concurrency 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    CpuMeter,
    Key,
    MachineMeter,
    call,
    daemon_toml,
    free_port,
    guardian_env,
    judge,
    machine,
    markdown_table,
    quantile,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
    wait_http,
)

from guardian.errors import ExchangeError
from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret

SYMBOL = "PF_XBTUSD"


@dataclass
class Step:
    concurrency: int
    measuring: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    verdicts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


async def timed(
    client: KrakenClient, name: str, params: dict[str, str | float], step: Step
) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        status, doc = await call(client, name, params)
        verdict = judge(name, status, doc)
    except ExchangeError as exc:
        doc, verdict = None, f"no answer ({type(exc).__name__})"
    if step.measuring:
        step.latencies_ms.append((time.perf_counter() - started) * 1000)
        step.verdicts[verdict] += 1
    return doc if verdict == "ok" else None


async def trade(client: KrakenClient, price: float, step: Step, stopping: asyncio.Event) -> None:
    order: dict[str, str | float] = {
        "orderType": "lmt",
        "symbol": SYMBOL,
        "side": "buy",
        "size": 0.01,
        "limitPrice": price,
    }
    while not stopping.is_set():
        placed = await timed(client, "sendorder", order, step)
        if placed is not None:
            await timed(client, "cancelorder", {"order_id": placed["sendStatus"]["order_id"]}, step)


async def run_step(
    clients: list[KrakenClient],
    price: float,
    step: Step,
    meters: dict[str, CpuMeter | MachineMeter],
    args: argparse.Namespace,
) -> None:
    stopping = asyncio.Event()
    workers = [asyncio.create_task(trade(c, price, step, stopping)) for c in clients[: step.concurrency]]
    await asyncio.sleep(args.settle_s)
    for meter in meters.values():
        meter.reset()
    step.measuring = True
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    step.measuring = False
    step.seconds = time.monotonic() - started
    step.cpu = {name: meter.percent() for name, meter in meters.items()}
    stopping.set()
    await asyncio.gather(*workers)


async def main(args: argparse.Namespace) -> int:
    exchange = Key.make("exchange", 64)
    bots = [Key.make(f"bot{i}") for i in range(args.max_concurrency)]
    sim, sim_url = await start_sim(exchange, budget=1e9, tick_s=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="guardian-throughput-") as tmp:
        config = Path(tmp) / "throughput.toml"
        config.write_text(
            daemon_toml(port, Path(tmp) / "journal.sqlite3", sim_url, exchange, bots, symbols=[SYMBOL])
        )
        daemon = await start_daemon(config, guardian_env(**secrets_env([exchange, *bots])))
        clients = [
            KrakenClient(url, Credentials(bot.api_key, ApiSecret(bot.secret)), pool_size=1, timeout_s=30)
            for bot in bots
        ]
        try:
            await wait_http(url + "/readyz")
            async with KrakenClient(sim_url) as public:
                mark = float(next(t for t in await public.tickers() if t["symbol"] == SYMBOL)["markPrice"])
            await asyncio.sleep(2.5)  # the first marks
            price = round(mark * 0.98)
            for client in clients:
                await client.start()
            assert sim.pid is not None and daemon.pid is not None
            meters: dict[str, CpuMeter | MachineMeter] = {
                "guardian": CpuMeter(daemon.pid),
                "sim": CpuMeter(sim.pid),
                "load": CpuMeter(os.getpid()),
                "machine": MachineMeter(),
            }
            best, worse = 0.0, 0
            concurrency = 1
            while concurrency <= args.max_concurrency and worse < args.patience:
                step = Step(concurrency)
                await run_step(clients, price, step, meters, args)
                steps.append(step)
                print(
                    f"  concurrency {concurrency:3d}: {step.rate:7.1f} req/s  "
                    f"p50 {statistics.median(step.latencies_ms):6.2f} ms  guardian {step.cpu['guardian']:5.1f}%",
                    flush=True,
                )
                if step.rate > best * (1 + args.gain):
                    worse = 0
                else:
                    worse += 1
                best = max(best, step.rate)
                concurrency *= 2
        finally:
            for client in clients:
                await client.close()
            await stop(daemon)
            await stop(sim)

    best = max(s.rate for s in steps)
    # Where the rate stopped rising: more bots beyond it only queue, and their latency says nothing new.
    top = next(s for s in steps if s.rate * (1 + args.gain) >= best)
    verdicts: Counter[str] = sum((s.verdicts for s in steps), Counter())
    not_ok = {v: n for v, n in verdicts.items() if v != "ok"}
    print()
    print(
        f"sendorder + cancelorder through guardian, closed loop, journal on, every limit on, {args.seconds:g} s "
        f"per step. {machine()}; guardian, the simulator and the load generator share the machine."
    )
    print()
    rows = [
        [
            f"**{s.concurrency}**" if s is top else str(s.concurrency),
            f"{s.rate:,.0f}",
            f"{statistics.median(s.latencies_ms):.2f} ms",
            f"{quantile(s.latencies_ms, 0.99):.2f} ms",
            f"{s.cpu['guardian']:.0f}%",
            f"{s.cpu['sim']:.0f}%",
            f"{s.cpu['load']:.0f}%",
            f"{s.cpu['machine']:.0f}%",
            str(sum(n for v, n in s.verdicts.items() if v != "ok")),
        ]
        for s in steps
    ]
    print(
        markdown_table(
            [
                "bots",
                "req/s",
                "p50",
                "p99",
                "guardian CPU",
                "simulator CPU",
                "load generator CPU",
                "whole machine",
                "not ok",
            ],
            rows,
        )
    )
    print()
    print(
        f"Maximum sustained: {best:,.0f} req/s ({best / 2:,.0f} orders placed and cancelled per second). "
        f"The rate stopped rising at {top.concurrency} bots ({top.rate:,.0f} req/s, within {args.gain:.0%} of "
        f"the best): p50 {statistics.median(top.latencies_ms):.2f} ms, "
        f"p99 {quantile(top.latencies_ms, 0.99):.2f} ms, guardian at {top.cpu['guardian']:.0f}% of one core."
    )
    print(
        f"Answers checked: {sum(verdicts.values())}; not a success: {sum(not_ok.values())} {not_ok or ''}".rstrip()
    )
    return 0 if not not_ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="unmeasured seconds at the start of a step"
    )
    parser.add_argument("--max-concurrency", type=int, default=128, help="the most bots at once")
    parser.add_argument("--gain", type=float, default=0.05, help="a step must beat the best by this fraction")
    parser.add_argument("--patience", type=int, default=2, help="steps without such a gain before stopping")
    sys.exit(asyncio.run(main(parser.parse_args())))
