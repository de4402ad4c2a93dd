"""What the exposure guard costs per order: CPU time of the gateway's exposure step for one `sendorder`
with 50 open orders and 10 positions in the account state and every exposure limit on.

Per order, exactly what `guardian.gateway.app` does on the request path: the view of the account
(`Book.exposure`: the state's positions and open orders, what is held, the marks, the bot's rate and
duplicate windows), the candidate, the check and the hold in one step (`Book.judge`, every rule), and
the exchange's answer settled (`Book.answered`: an ioc that left nothing, so the hold ends and the book
stays the same size run after run). The account state is fed Kraken-shaped WebSocket messages (an
`open_orders_snapshot` of 50 orders on 10 symbols, `open_positions` for the 10 symbols), as the stream
would. The bot sends 50 orders a second by the book's clock (about the most Kraken's rate budget lets
through), so its rate and duplicate windows hold what they would. Single-threaded, in-process: CPU time
by `time.thread_time_ns`, per order, after a warm-up.

Usage: .venv/bin/python bench/exposure.py [--orders 20000] [--open 50] [--positions 10]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from decimal import Decimal

from guardian.config import GuardConfig, SymbolLimits
from guardian.gateway import exposure
from guardian.stream.state import AccountState

ORDERS: list[dict[str, object]] = []  # the open orders, as the snapshot had them


def symbols(count: int) -> list[str]:
    return [f"PF_S{i:02d}USD" for i in range(count)]


def account_state(open_orders: int, positions: int) -> AccountState:
    state = AccountState()
    names = symbols(positions)
    ORDERS[:] = [
        {
            "instrument": names[i % len(names)],
            "time": 1_700_000_000_000,
            "last_update_time": 1_700_000_000_000,
            "qty": 1.0,
            "filled": 0.0,
            "limit_price": 99.0 if i % 2 == 0 else 101.0,
            "stop_price": 0.0,
            "type": "limit",
            "order_id": f"order-{i:04d}",
            "cli_ord_id": f"cli-{i:04d}",
            "direction": i % 2,
            "reduce_only": False,
        }
        for i in range(open_orders)
    ]
    state.apply({"feed": "open_orders_snapshot", "account": "bench", "orders": ORDERS})
    state.apply(
        {
            "feed": "open_positions",
            "positions": [
                {
                    "instrument": s,
                    "balance": 2.0 if i % 2 else -2.0,
                    "entry_price": 100.0,
                    "mark_price": 100.0,
                }
                for i, s in enumerate(names)
            ],
        }
    )
    state.apply({"feed": "fills_snapshot", "fills": []})
    return state


def guard(names: list[str]) -> GuardConfig:
    """Every exposure limit on, none binding, so each order runs every rule to the end."""
    return GuardConfig(
        max_position=1_000,
        max_open_orders=1_000,
        max_open_orders_total=10_000,
        max_gross_notional=1e12,
        max_orders_per_minute=10**9,
        max_fills_per_minute=10**9,
        max_daily_loss=1e12,
        duplicate_window_s=2.0,
        per_symbol={names[0]: SymbolLimits(max_position=500)},
    )


def run(count: int, open_orders: int, positions: int, *, changing: bool = False) -> list[int]:
    """Per order CPU ns. `changing`: before each order the stream changes one open order (an update
    message, outside the timed part), so the state guardian judges against is new for every order."""
    names = symbols(positions)
    state = account_state(open_orders, positions)
    view_of_state = state.view()
    assert len(view_of_state.orders) == open_orders and len(view_of_state.positions) == positions
    now = [1_000.0]
    book = exposure.Book(clock=lambda: now[0])  # 50 orders a second: the most Kraken's budget lets through
    limits = exposure.Limits(guard(names))
    marks = {s: Decimal(100) for s in names}
    owners = {f"order-{i:04d}": f"bot-{i % 3}" for i in range(open_orders)}

    def owner(order_id: str | None, _cli: str | None) -> str | None:
        return owners.get(order_id or "")

    spent: list[int] = []
    for n in range(count):
        now[0] += 0.02
        if changing:
            i = n % open_orders
            update = {**ORDERS[i], "qty": 1.0 + (n % 7) / 10}
            state.apply({"feed": "open_orders", "order": update, "is_cancel": False, "reason": "edited"})
            view_of_state = state.view()
        started = time.thread_time_ns()
        view = book.exposure(
            view_of_state,
            marks=marks.get,
            owner=owner,
            reconciles=0,
            bot="bot-0",
            window_s=2.0,
            symbols={names[n % positions]},
        )
        candidate = exposure.Candidate(
            symbol=names[n % positions],
            side="buy" if n % 2 else "sell",
            size=Decimal(1),
            reduce_only=False,
            price=Decimal(100),
            bot="bot-0",
            content=(names[n % positions], "buy", "ioc", Decimal(1), Decimal(n), None, None),
            cli_ord_id=f"bench-{n}",
        )
        hold = book.judge(view, [(0, candidate)], limits, fresh=True)
        book.answered(hold, [(None, False)], 0)  # an ioc that left nothing: the hold ends
        spent.append(time.thread_time_ns() - started)
    assert len(book) == 0
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--open", type=int, default=50)
    parser.add_argument("--positions", type=int, default=10)
    args = parser.parse_args()
    print(
        f"exposure step per order, {args.open} open orders, {args.positions} positions, {args.orders} orders"
    )
    print("(CPU by thread time; every exposure limit on, none binding)")
    for changing, what in (
        (False, "state unchanged between orders"),
        (True, "one order changed before each"),
    ):
        run(2_000, args.open, args.positions, changing=changing)  # warm-up
        gc.collect()
        spent = sorted(run(args.orders, args.open, args.positions, changing=changing))

        def q(p: float, spent: list[int] = spent) -> float:
            return spent[min(len(spent) - 1, int(p * len(spent)))] / 1000

        print(
            f"  {what:34} mean {statistics.fmean(spent) / 1000:5.1f} µs  p50 {q(0.5):5.1f} µs  "
            f"p99 {q(0.99):5.1f} µs  max {spent[-1] / 1000:6.1f} µs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
