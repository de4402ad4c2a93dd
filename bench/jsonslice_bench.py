"""How long reading a large Kraken answer holds the event loop: json.loads against guardian.jsonslice.

For 100, 1,000, 5,000 and 20,000 open orders, two documents as Kraken Futures writes them: the REST
`openorders` answer (compact, read as the bytes the client gets from `response.read()`) and the WebSocket
`open_orders_snapshot` (a text frame, read as str). For each, `--runs` times json.loads, then `--runs`
times jsonslice.loads (default slice and threshold), with a watcher task that wakes on every turn of the
loop and records the gaps between its wake-ups: the holds of the loop (json.loads holds it for its whole
parse). Each hold is measured twice: in wall time (what other tasks wait) and in this thread's CPU time
(the work done in it, garbage collection included), which a busy machine's preemption does not inflate;
the noise floor line says how much the machine itself stalls a bare spin loop.

Usage: .venv/bin/python bench/jsonslice_bench.py [--runs 25] [--orders 100,1000,5000,20000] [--gc off]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from _common import machine, markdown_table, quantile

from guardian import jsonslice

SYMBOLS = ("PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", "PF_XRPUSD")


def rest_open_orders(count: int) -> bytes:
    """`openorders` as the simulator (and Kraken) answers it: newest first, compact."""
    orders = []
    for i in range(count):
        order: dict[str, Any] = {
            "order_id": f"{i:08x}-5e6f-4a7b-8c9d-{i * 7919:012x}",
            "symbol": SYMBOLS[i % 4],
            "side": "buy" if i % 2 else "sell",
            "orderType": "lmt",
            "unfilledSize": round(0.001 * (i % 97 + 1), 3),
            "filledSize": 0,
            "receivedTime": "2024-05-01T12:00:00.123Z",
            "lastUpdateTime": "2024-05-01T12:00:01.456Z",
            "status": "untouched",
            "reduceOnly": i % 5 == 0,
            "limitPrice": round(61234.5 + i * 0.5, 1),
        }
        if i % 3:
            order["cliOrdId"] = f"bot-{i % 7}-{i:06d}"
        orders.append(order)
    answer = {"result": "success", "openOrders": orders, "serverTime": "2024-05-01T12:00:02.000Z"}
    return json.dumps(answer, separators=(",", ":")).encode()


def ws_open_orders_snapshot(count: int) -> str:
    """`open_orders_snapshot` as the WebSocket v1 feed sends it after a (re)subscription."""
    orders = [
        {
            "instrument": SYMBOLS[i % 4],
            "time": 1714564800123 + i,
            "last_update_time": 1714564801456 + i,
            "qty": round(0.001 * (i % 97 + 1), 3),
            "filled": 0,
            "limit_price": round(61234.5 + i * 0.5, 1),
            "stop_price": 0,
            "type": "limit",
            "order_id": f"{i:08x}-5e6f-4a7b-8c9d-{i * 7919:012x}",
            "direction": i % 2,
            "reduce_only": i % 5 == 0,
            "cli_ord_id": f"bot-{i % 7}-{i:06d}",
        }
        for i in range(count)
    ]
    return json.dumps({"feed": "open_orders_snapshot", "account": "main", "orders": orders})


@dataclass
class Run:
    elapsed: float  # wall seconds of the whole parse
    holds: list[tuple[float, float]]  # (wall, CPU) seconds between two turns of the loop during it


async def watched(parse: Callable[[], Awaitable[Any]]) -> Run:
    """`parse()` timed, with the holds of the loop a task woken on every turn saw while it ran."""
    parsing = False
    holds: list[tuple[float, float]] = []

    async def watch() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0)
            now_wall, now_cpu = time.perf_counter(), time.thread_time()
            if parsing:
                holds.append((now_wall - wall, now_cpu - cpu))
            wall, cpu = now_wall, now_cpu

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    started = time.perf_counter()
    parsing = True
    result = await parse()
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0)  # the last hold: from the watcher's previous turn to the end of the parse
    parsing = False
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    del result  # freeing thousands of orders takes milliseconds too, but it is not the parse's
    return Run(elapsed, holds)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def noise_floor(seconds: float = 2.0, stall_s: float = 0.001) -> list[float]:
    """The stalls (longer than `stall_s`) a bare spin loop sees in `seconds`: what the machine itself takes
    from a busy process (other processes, the hypervisor), with no Python work in between."""
    stalls = []
    started = last = time.perf_counter()
    while last - started < seconds:
        now = time.perf_counter()
        if now - last > stall_s:
            stalls.append(now - last)
        last = now
    return stalls


async def main(args: argparse.Namespace) -> int:
    if args.gc == "off":
        gc.disable()
    stalls = noise_floor()
    rows = []
    for count in (int(n) for n in args.orders.split(",")):
        for shape, doc in (
            ("REST openorders (bytes)", rest_open_orders(count)),
            ("WS open_orders_snapshot (str)", ws_open_orders_snapshot(count)),
        ):

            async def plain(doc: str | bytes = doc) -> Any:
                return json.loads(doc)

            async def sliced(doc: str | bytes = doc) -> Any:
                return await jsonslice.loads(doc)

            if not await sliced() == json.loads(doc):
                raise AssertionError(f"jsonslice.loads differs from json.loads on {shape} x {count}")
            plain_s = statistics.median([(await watched(plain)).elapsed for _ in range(args.runs)])
            runs = [await watched(sliced) for _ in range(args.runs)]
            sliced_s = statistics.median(run.elapsed for run in runs)
            walls = sorted(wall for run in runs for wall, _ in run.holds)
            cpus = sorted(cpu for run in runs for _, cpu in run.holds)
            rows.append(
                [
                    f"{count:,}",
                    shape,
                    f"{len(doc) / 1e6:.2f}",
                    ms(plain_s),
                    ms(sliced_s),
                    f"{sliced_s / plain_s:.2f}",
                    f"{statistics.median(len(run.holds) - 1 for run in runs):.0f}",
                    ms(statistics.median(walls)),
                    ms(walls[-1]),
                    ms(statistics.median(cpus)),
                    ms(quantile(cpus, 0.99)),
                    ms(cpus[-1]),
                    f"{sum(1 for run in runs if max(cpu for _, cpu in run.holds) > 0.005)}/{args.runs}",
                ]
            )
    print(f"Machine: {machine()}, load average {os.getloadavg()[0]:.2f}; garbage collector {args.gc}")
    print(
        f"Noise floor: a bare spin loop stalled {len(stalls)} times over 1 ms in 2 s, the longest "
        f"{ms(max(stalls, default=0.0))} ms."
    )
    print(
        f"{args.runs} runs each; jsonslice slice_s={jsonslice.SLICE_S * 1e3:g} ms, "
        f"threshold={jsonslice.THRESHOLD:,} characters. Times in ms (medians for the totals). A hold is a "
        "gap between two turns of the loop seen by a watcher task, in wall time and in CPU time."
    )
    print()
    headers = [
        "orders",
        "document",
        "MB",
        "json.loads",
        "sliced total",
        "sliced / json.loads",
        "loop turns",
        "hold p50",
        "hold max",
        "CPU hold p50",
        "CPU hold p99",
        "CPU hold max",
        "runs with a CPU hold > 5 ms",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--orders", default="100,1000,5000,20000")
    parser.add_argument("--gc", choices=["on", "off"], default="on", help="off: gc.disable() for the run")
    sys.exit(asyncio.run(main(parser.parse_args())))
