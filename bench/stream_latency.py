"""How long a change at the exchange takes to reach guardian's account state, with the stream up.

The simulator and guardian run in this process (one event loop, as the stream's own path is what is
measured: the exchange's event, its WebSocket frame, guardian's link reading it, the state applying it).
Each sample: an order placed directly in the simulated exchange's engine (not through guardian: a change
guardian did not cause), then `/guardian/state` (the same function the endpoint serves) read until it
shows that order; then the order cancelled, and read until it is gone. Prints p50, p90, p99 and max for
both, and the memory the state holds after the run (fills kept in memory are capped; the journal keeps
all).

Usage: .venv/bin/python bench/stream_latency.py [--samples 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

from _common import machine, markdown_table, quantile

from guardian import logs
from guardian.config import AccountConfig, Config, GuardConfig, JournalConfig, ServerConfig, StreamConfig
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import SimKey, Simulator
from guardian.sim.market import Market
from guardian.sim.ws import StreamSettings
from guardian.stream.state import MAX_FILLS_KEPT


async def until(predicate: object, timeout_s: float = 5.0) -> float:
    """Seconds until `predicate()` is true, looked at on every turn of the loop."""
    assert callable(predicate)
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError("the change never reached the state")
        await asyncio.sleep(0)
    return time.perf_counter() - started


def shown(service: Service, order_id: str) -> bool:
    accounts = service.state_json()["accounts"]
    assert isinstance(accounts, list)
    return (
        service.streams[0].view().orders.get(order_id) is not None and accounts[0]["open_orders"]["count"] > 0
    )


async def main(args: argparse.Namespace) -> int:
    logs.configure("warning")
    key = SimKey.generate(account="main")
    sim = Simulator(
        [key],
        market=Market(seed=3),
        tick_s=None,
        budget_capacity=1e9,
        stream=StreamSettings(heartbeat_s=1.0),
    )
    await sim.start("127.0.0.1", 0)
    placed: list[float] = []
    cancelled: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="guardian-stream-bench-") as tmp:
            account = AccountConfig(
                "main",
                key.api_key,
                ApiSecret(key.secret.reveal()),
                sim.url,
                guard=GuardConfig(rate_budget=1e9),
                stream=StreamConfig(link_timeout_s=15, reconcile_s=60, state_max_age_s=10),
            )
            config = Config(
                accounts=(account,),
                server=ServerConfig("127.0.0.1", 0),
                journal=JournalConfig(Path(tmp) / "journal.sqlite3"),
            )
            service = Service(config)
            await service.start()
            try:
                await until(lambda: service.streams[0].link.up, 10)
                engine, acct = sim.exchange, sim.exchange.accounts["main"]
                tracemalloc.start()
                for i in range(args.samples):
                    fields = {"orderType": "lmt", "symbol": "PF_XBTUSD", "side": "buy", "size": "1"}
                    fields["limitPrice"] = str(Decimal(50000) + i % 100)
                    answer = engine.send_order(acct, fields)
                    order_id = answer["order_id"]
                    placed.append(await until(lambda oid=order_id: shown(service, oid)))
                    engine.cancel_order(acct, {"order_id": order_id})
                    cancelled.append(await until(lambda oid=order_id: not shown(service, oid)))
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            finally:
                await service.stop()
    finally:
        await sim.close()

    def row(name: str, values: list[float]) -> list[str]:
        ms = sorted(v * 1000 for v in values)
        return [
            name,
            f"{statistics.median(ms):.2f} ms",
            f"{quantile(ms, 0.90):.2f} ms",
            f"{quantile(ms, 0.99):.2f} ms",
            f"{ms[-1]:.2f} ms",
        ]

    print(
        f"A change at the exchange to guardian's state, stream up, {args.samples} samples each, simulator and "
        f"guardian in one process. {machine()}."
    )
    print()
    print(
        markdown_table(
            ["change", "p50", "p90", "p99", "max"],
            [row("order placed", placed), row("order cancelled", cancelled)],
        )
    )
    print()
    print(
        f"Memory allocated by the whole process during the run (tracemalloc): {current / 1024:.0f} kB held at the "
        f"end, {peak / 1024:.0f} kB at the peak; fills kept in memory per account are capped at {MAX_FILLS_KEPT}."
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=500)
    sys.exit(asyncio.run(main(parser.parse_args())))
