"""What the exposure guard costs per order, and what one stream delta costs, as the book grows: CPU time
of the gateway's exposure step for one `sendorder`, and of applying one `open_orders` delta to the account
state (with the running figures it updates), with 10, 100, 1,000 and 5,000 open orders and 50 positions,
every exposure limit on. A sweep in one run (issue 20: the step's p99 at most 60 us at 5,000 open orders
and 50 positions, and the same at 5,000 as at 5).

Per order, exactly what `guardian.gateway.app` does on the request path: the account as the request sees
it (`Book.trial`: the bot's rate and duplicate windows, the holds settled by reconciliations), the
candidate, the check and the hold in one step (`Book.judge`, every rule), and the exchange's answer
settled (`Book.answered`: an ioc that left nothing, so the hold ends and the book stays the same size run
after run). The account state is fed Kraken-shaped WebSocket messages (an `open_orders_snapshot` spread
over the 50 symbols, `open_positions` for them), as the stream would; its marks come from a `Marks`
object fed ticker messages. The bot sends 50 orders a second by the book's clock (about the most Kraken's
rate budget lets through), so its rate and duplicate windows hold what they would. Single-threaded,
in-process: CPU time by `time.thread_time_ns`, per order, after a warm-up.

Three figures per size:
- `judge`: the state unchanged between orders;
- `judge, changing`: before each order the stream changes one open order (outside the timed part), so the
  figures the order is judged against have just moved;
- `delta`: one stream message changing one open order (its remaining size), applied to the state, which
  tells the running figures.

Usage: .venv/bin/python bench/exposure.py [--orders 20000] [--sizes 10,100,1000,5000] [--positions 50]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

from _common import machine

from guardian.config import GuardConfig, SymbolLimits
from guardian.gateway import exposure
from guardian.gateway.marks import Marks
from guardian.stream.state import AccountState


def symbols(count: int) -> list[str]:
    return [f"PF_S{i:02d}USD" for i in range(count)]


def open_orders(count: int, names: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "instrument": names[i % len(names)],
            "time": 1_700_000_000_000,
            "last_update_time": 1_700_000_000_000,
            "qty": 1.0,
            "filled": 0.0,
            "limit_price": 90.0 - (i % 500) / 100 if i % 2 == 0 else 110.0 + (i % 500) / 100,
            "stop_price": 0.0,
            "type": "limit",
            "order_id": f"order-{i:05d}",
            "cli_ord_id": f"cli-{i:05d}",
            "direction": i % 2,
            "reduce_only": False,
        }
        for i in range(count)
    ]


def guard(names: list[str]) -> GuardConfig:
    """Every exposure limit on, none binding, so each order runs every rule to the end."""
    return GuardConfig(
        max_position=1_000_000,
        max_open_orders=100_000,
        max_open_orders_total=100_000,
        max_gross_notional=1e12,
        max_orders_per_minute=10**9,
        max_fills_per_minute=10**9,
        max_daily_loss=1e12,
        duplicate_window_s=2.0,
        per_symbol={names[0]: SymbolLimits(max_position=500_000)},
    )


class World:
    """One account's state, marks and exposure book, fed as the daemon feeds them."""

    def __init__(self, resting: int, positions: int) -> None:
        self.names = symbols(positions)
        self.now = [1_000.0]
        self.marks = Marks(None, interval_s=1.0, max_age_s=1e9, clock=lambda: self.now[0])  # type: ignore[arg-type]
        self.book = exposure.Book(clock=lambda: self.now[0], marks=self.marks)
        self.marks.listeners.append(self.book.ledger.mark_changed)
        owners = {f"order-{i:05d}": f"bot-{i % 3}" for i in range(resting)}
        self.book.ledger.owner = lambda order_id, _cli: owners.get(order_id or "")
        self.state = AccountState(observer=self.book.ledger)
        for symbol in self.names:
            self.marks.push({"product_id": symbol, "markPrice": 100.0})
        self.orders = open_orders(resting, self.names)
        self.state.apply({"feed": "open_orders_snapshot", "account": "bench", "orders": self.orders})
        self.state.apply(
            {
                "feed": "open_positions",
                "positions": [
                    {
                        "instrument": s,
                        "balance": 2.0 if i % 2 else -2.0,
                        "entry_price": 100.0,
                        "mark_price": 100.0,
                    }
                    for i, s in enumerate(self.names)
                ],
            }
        )
        self.state.apply({"feed": "fills_snapshot", "fills": []})
        assert self.state.order_count() == resting and self.book.ledger.total == resting
        self.limits = exposure.Limits(guard(self.names))
        self.n = 0

    def delta(self) -> None:
        """The stream changes one open order's remaining size."""
        i = self.n % len(self.orders)
        update = {**self.orders[i], "qty": 1.0 + (self.n % 7) / 10}
        self.state.apply({"feed": "open_orders", "order": update, "is_cancel": False, "reason": "edited"})

    def order(self) -> None:
        """One sendorder's exposure step: judged, held, and settled as an ioc that left nothing."""
        n, names = self.n, self.names
        trial = self.book.trial("bot-0", reconciles=0, daily_pnl=self.state.daily_pnl(), window_s=2.0)
        candidate = exposure.Candidate(
            symbol=names[n % len(names)],
            side="buy" if n % 2 else "sell",
            size=Decimal(1),
            reduce_only=False,
            price=Decimal(100),
            bot="bot-0",
            content=(names[n % len(names)], "buy", "ioc", Decimal(1), Decimal(n), None, None),
            cli_ord_id=f"bench-{n}",
        )
        hold = self.book.judge(trial, [(0, candidate)], self.limits, fresh=True)
        self.book.answered(hold, [(None, False)], 0)


def run(world: World, count: int, what: str) -> list[int]:
    """CPU ns per step."""
    spent: list[int] = []
    for _ in range(count):
        world.now[0] += 0.02
        world.n += 1
        if what == "judge, changing":
            world.delta()
        started = time.thread_time_ns()
        if what == "delta":
            world.delta()
        else:
            world.order()
        spent.append(time.thread_time_ns() - started)
    assert len(world.book) == 0
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--positions", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine())
    print(
        f"the exposure step per order and one stream delta, {args.positions} positions, {args.orders} each; "
        "CPU by thread time, every exposure limit on, none binding"
    )
    print()
    print("| open orders | what | mean | p50 | p99 | max |")
    print("|---|---|---|---|---|---|")
    worst: dict[str, float] = {}
    for size in sizes:
        for what in ("judge", "judge, changing", "delta"):
            world = World(size, args.positions)
            run(world, 2_000, what)  # warm-up
            gc.collect()
            spent = sorted(run(world, args.orders, what))

            def q(p: float, spent: list[int] = spent) -> float:
                return spent[min(len(spent) - 1, int(p * len(spent)))] / 1000

            worst[what] = q(0.99)
            print(
                f"| {size:,} | {what} | {statistics.fmean(spent) / 1000:.1f} us | {q(0.5):.1f} us | "
                f"{q(0.99):.1f} us | {spent[-1] / 1000:.0f} us |"
            )
    verdict = "PASS" if worst["judge"] <= 60 and worst["judge, changing"] <= 60 else "FAIL"
    print()
    print(
        f"judge p99 at {sizes[-1]:,} open orders: {worst['judge']:.1f} us (changing: "
        f"{worst['judge, changing']:.1f} us); the issue's bound is 60 us: {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
