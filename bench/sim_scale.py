"""What the simulator's exchange model costs per call as the resting book grows: a sweep over 10, 100,
1,000 and 5,000 resting orders in one run, with the orders on one symbol and spread over many.

In-process and single-threaded, as the tests build it (`Exchange(Market(...))`, no HTTP): CPU time by
`time.process_time_ns` per call, after the book is built and a warm-up. One stream listener follows the
account, as guardian's stream does, so every change renders its `open_orders`, `open_positions` and
`balances` messages; the account holds a small position in the first symbol, so the positions message
has a row (and with it the margin its symbol's orders hold). The book stays at its size: a measured send
is followed by an unmeasured cancel, a batch of 20 sends by an unmeasured cancel of the 20.

The calls:
  sendorder   a limit order that rests (a new price, never crossing)
  cancelorder a resting order, by order_id (then sent again, unmeasured)
  editorder   a resting order's limit price, one tick away and back
  batchorder  20 resting sends in one batch
  price move  `on_prices` after the first symbol's mark moved one tick (nothing crosses)
  openorders  the REST `openorders` payload (a read: it lists every order)

A last table puts 50 accounts of 200 resting orders each (10,000 in all) behind the same calls, made by
one of the accounts.

Usage: .venv/bin/python bench/sim_scale.py [--sizes 10,100,1000,5000] [--calls 200]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from _common import machine, quantile

from guardian.sim import market as sim_market
from guardian.sim.exchange import Account, Exchange
from guardian.sim.market import Instrument, Market

OPS = ("sendorder", "cancelorder", "editorder", "batchorder", "price move", "openorders")
BALANCE = Decimal(10) ** 12  # margin is never what limits the book here
WIDE = sim_market.WIDE_INSTRUMENTS


class Bench:
    """One exchange, its accounts' books built to size, and the calls measured against it."""

    def __init__(self, instruments: tuple[Instrument, ...], symbols: int, accounts: int, per_account: int):
        self.ex = Exchange(Market(instruments=instruments, seed=1), max_open_orders=per_account + 100)
        self.symbols = [i.symbol for i in instruments[:symbols]]
        self.depth: dict[tuple[str, str], int] = {}  # (symbol, side) -> orders placed there so far
        self.accounts = [self.ex.account(f"acct{n:02d}") for n in range(accounts)]
        for acct in self.accounts:
            acct.balance = BALANCE
            for k in range(per_account):
                self.rest(acct, self.symbols[k % len(self.symbols)], "buy" if k % 4 < 2 else "sell")
        self.me = self.accounts[0]
        first = self.instrument(self.symbols[0])
        lot = str(Decimal(1).scaleb(-first.size_precision))
        answer = self.ex.send_order(
            self.me, {"orderType": "mkt", "symbol": first.symbol, "side": "buy", "size": lot}
        )
        assert answer["status"] == "placed", answer
        self.listener = self.ex.bus.subscribe(maxsize=10**8)
        self.listener.accounts.add(self.me.name)

    def instrument(self, symbol: str) -> Instrument:
        found = self.ex.market.instrument(symbol)
        assert found is not None
        return found

    def fields(self, symbol: str, side: str) -> dict[str, str]:
        """A limit order that rests: each new one a tick further from the touch than the last."""
        inst = self.instrument(symbol)
        quote = self.ex.market.quotes[symbol]
        k = self.depth.get((symbol, side), 0) + 2
        self.depth[(symbol, side)] = k
        price = quote.bid - inst.tick_size * k if side == "buy" else quote.ask + inst.tick_size * k
        size = Decimal(1).scaleb(-inst.size_precision)
        return {
            "orderType": "lmt",
            "symbol": symbol,
            "side": side,
            "size": str(size),
            "limitPrice": str(price),
        }

    def rest(self, acct: Account, symbol: str, side: str) -> str:
        answer = self.ex.send_order(acct, self.fields(symbol, side))
        assert answer["status"] == "placed", answer
        return str(answer["order_id"])

    def drain(self) -> None:
        while len(self.listener):
            self.listener._items.popleft()  # nobody reads this listener's queue: keep it short

    def measure(self, op: str, calls: int) -> list[float]:
        """Microseconds of CPU time per call of `op`."""
        ex, me, spent = self.ex, self.me, []
        symbol = self.symbols[0]

        def timed(call: Callable[..., Any], *args: Any) -> Any:
            self.drain()
            start = time.process_time_ns()
            result = call(*args)
            spent.append((time.process_time_ns() - start) / 1000)
            return result

        for n in range(calls):
            where = self.symbols[n % len(self.symbols)]
            side = "buy" if n % 2 else "sell"
            if op == "sendorder":
                answer = timed(ex.send_order, me, self.fields(where, side))
                ex.cancel_order(me, {"order_id": answer["order_id"]})
            elif op == "cancelorder":
                timed(ex.cancel_order, me, {"order_id": self.rest(me, where, side)})
            elif op == "editorder":
                order = me.orders[next(iter(me.open_ids))]
                assert order.limit_price is not None
                tick = self.instrument(order.symbol).tick_size
                step = -tick if order.side == "buy" else tick
                price = order.limit_price + (step if n % 2 == 0 else -step)
                answer = timed(ex.edit_order, me, {"orderId": order.order_id, "limitPrice": str(price)})
                assert answer["status"] == "edited", answer
            elif op == "batchorder":
                items = [
                    {
                        "order": "send",
                        "order_tag": str(k),
                        **self.fields(self.symbols[(n + k) % len(self.symbols)], side),
                    }
                    for k in range(20)
                ]
                results = timed(ex.batch, me, items)
                assert all(r["status"] == "placed" for r in results), results
                ex.batch(me, [{"order": "cancel", "order_id": r["order_id"]} for r in results])
            elif op == "price move":
                inst = self.instrument(symbol)
                ex.market.set_mark(symbol, inst.initial_price + (inst.tick_size if n % 2 == 0 else 0))
                timed(ex.on_prices)
            elif op == "openorders":
                timed(ex.open_orders_payload, me)
        self.drain()
        return spent


def cell(values: list[float]) -> str:
    return f"{quantile(values, 0.5):.0f} / {quantile(values, 0.99):.0f} / {statistics.fmean(values):.0f}"


def table(title: str, columns: list[str], rows: dict[str, list[str]]) -> None:
    width = 2 + max(22, *(len(c) for cells in rows.values() for c in cells))
    print(f"\n{title}")
    print(f"{'':<12}" + "".join(f"{c:>{width}}" for c in columns))
    for op, cells in rows.items():
        print(f"{op:<12}" + "".join(f"{c:>{width}}" for c in cells))


def run(
    instruments: tuple[Instrument, ...], symbols: int, accounts: int, per_account: int, calls: int
) -> dict[str, str]:
    started = time.perf_counter()
    bench = Bench(instruments, symbols, accounts, per_account)
    built = time.perf_counter() - started
    out = {}
    gc.collect()
    for op in OPS:
        bench.measure(op, max(5, calls // 10))  # warm-up
        out[op] = cell(bench.measure(op, calls))
    out["(book built)"] = f"{built:.1f} s wall"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000", help="resting orders, comma-separated")
    parser.add_argument("--calls", type=int, default=200, help="measured calls per operation and size")
    parser.add_argument("--no-accounts", action="store_true", help="leave out the 50-account table")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}; {len(os.sched_getaffinity(0))} cores usable by this process")
    print(f"CPU time per call in microseconds: p50 / p99 / mean, {args.calls} calls each")
    columns = [f"{n:,} resting" for n in sizes]
    for title, instruments, symbols in (
        ("one account, one symbol (PF_XBTUSD)", sim_market.DEFAULT_INSTRUMENTS, 1),
        (f"one account, spread over {len(WIDE)} symbols (the wide set)", WIDE, len(WIDE)),
    ):
        results = [run(instruments, symbols, 1, n, args.calls) for n in sizes]
        table(title, columns, {op: [r[op] for r in results] for op in results[0]})
    if not args.no_accounts:
        result = run(WIDE, len(WIDE), 50, 200, args.calls)
        table(
            f"50 accounts x 200 resting orders over {len(WIDE)} symbols, calls by one",
            ["10,000 resting"],
            {op: [v] for op, v in result.items()},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
