"""A market maker's book: what guardian adds to an order as the orders resting in the account grow from 10
to 5,000 (issue 20: the cost of an order must not depend on how many rest).

One run, for each layout of the resting book: `one` (every order in PF_XBTUSD) and `spread` (over 20
symbols; the simulator's wide instrument set, or every symbol it has if it has fewer). For each layout: a
fresh simulator and `guardian run`, separate processes as in production, with one account per size (the
sizes are 10, 100, 1,000 and 5,000 resting orders by default): each account its own exchange key at the
simulator and its own bot (local key) at guardian. guardian has every exposure limit on and none binding
in each account (max_position and max_open_orders for the account and each symbol, max_open_orders_total,
the bot's own max_open_orders and order rate, max_gross_notional, max_daily_loss, max_orders_per_minute,
duplicate_window_s, max_fills_per_minute), follows each account's WebSocket as in production, and
journals; both rate budgets (guardian's and the simulator's) are out of the way.

Each account's book is placed first, through guardian by that account's bot (batchorder of 20 sends), at
distinct prices 2-18 % from the mark (buys below, sells above; prices are frozen, so nothing fills), and
guardian's own count of each account's open orders (/metrics, per account) is waited for. Then the sizes
are measured side by side, in rounds: each round visits every size once, in an order shuffled anew each
round (seeded), so that every size sees the same machine. On a shared machine the load drifts over
minutes; measured one after the other, the sizes would compare the drift, not the book. At each visit:

- `sendorder`: one resting limit order straight to the simulator (`direct`, that account's exchange key)
  and the same through guardian (that account's bot), each on its own keep-alive connection, one at a
  time; only the send is timed, and each order is cancelled after it (untimed), so the book stays at its
  size. The orders rest 0.5-2 % from the mark, a minimal lot, at prices that do not repeat within
  guardian's duplicate window. `--orders` rounds;
- `batchorder`: the same with a batch of 20 sends, then a batch of their 20 cancels. `--batches` rounds,
  after the `sendorder` rounds; 200 by default, since a batch's time varies by milliseconds from one to
  the next: with 50, the ratio below still wandered over 0.8-1.35 between runs of the same tree (over
  0.95-1.05 with 200).

"Added" is guardian's p50 (p99) minus direct's, as in bench/proxy_floor.py and bench/gateway_latency.py.
Whatever the simulator's own time does with the book (this tree's keeps running figures; older ones,
`--sim-tree`, walked the account's open orders on every order), `direct` measures it at each size and the
subtraction removes it; its p50 per size is printed with the rest. The verdict: added p50 at the largest
size over added p50 at the smallest, at most 1.15 (the issue's bound).

guardian's CPU: with the sizes interleaved, its process's CPU time (/proc/PID/stat, 10 ms ticks) can only
be had over many rounds, so it is given per round of every size together (each size's send and cancel on
both paths and the stream's news of them). Per size, the table gives the CPU guardian's threads used from
just before guardian's send to just after guardian's cancel was answered (/proc/PID/task/*/schedstat, in
ns), p50 and p99 over the visits: the two requests and whatever the stream brought meanwhile (the direct
path's orders' news, usually that of guardian's own send), but not the news of guardian's cancel, which
comes after, nor work its journal's thread finished later.

`--tree DIR` runs guardian from another source tree (e.g. `git archive HEAD | tar -x -C DIR`), so that a
before and an after can be measured; the simulator comes from this tree, or from `--sim-tree DIR` (to
hold it still while this tree changes); this client always from this one.

Usage: .venv/bin/python bench/book_scale.py [--orders 300] [--batches 200] [--sizes 10,100,1000,5000]
    [--layouts one,spread] [--tree DIR] [--sim-tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BOOK_FROM,
    BOOK_TO,
    PRICE_BAND_PCT,
    Key,
    MachineMeter,
    Symbol,
    call,
    cpu_seconds,
    daemon_toml_accounts,
    free_port,
    judge,
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
    threads_cpu_ns,
    tree_env,
    wait_account_open_orders,
    wait_http,
)

from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.signing import ParamValue
from guardian.secret import ApiSecret

ONE_SYMBOL = "PF_XBTUSD"
SPREAD_SYMBOLS = 20
BATCH = 20
BOUND = 1.15  # the issue's: added p50 at 5,000 resting at most 1.15 times that at 10
DUPLICATE_WINDOW_S = 2
MANY = 1_000_000
WARMUP_ROUNDS, WARMUP_BATCHES = 10, 2
SEED = 20  # the order the sizes are visited in, round after round


@dataclass
class Timings:
    """One kind of request at one size: each path's latencies (ms), and the CPU guardian used in each of its
    windows, from its send to its cancel's answer (s)."""

    direct: list[float] = field(default_factory=list)
    guardian: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)

    def p(self, path: str, q: float) -> float:
        values = self.direct if path == "direct" else self.guardian
        return statistics.median(values) if q == 0.5 else quantile(values, q)

    def added(self, q: float) -> float:
        return self.p("guardian", q) - self.p("direct", q)


@dataclass
class Layout:
    name: str
    symbols: list[Symbol] = field(default_factory=list)
    send: dict[int, Timings] = field(default_factory=dict)
    batch: dict[int, Timings] = field(default_factory=dict)
    send_cpu_s: float = 0.0  # guardian's CPU per round of sends (every size once), its whole process
    batch_cpu_s: float = 0.0  # the same per round of batches
    seconds: float = 0.0
    machine_percent: float = 0.0
    build_s: dict[int, float] = field(default_factory=dict)
    placing_s: float = 0.0  # every account's book, placed at the same time


class Book:
    """One account (one size): its keys, its book, the orders measured against it, and its two paths."""

    def __init__(self, layout: str, size: int) -> None:
        self.layout = layout
        self.size = size
        self.name = f"book{size}"
        self.exchange, self.bot = Key.make(self.name, 64), Key.make(f"maker{size}")
        self.symbols: list[Symbol] = []  # once the simulator has told them (in_symbols)
        self.resting = 0  # orders of the book placed so far
        self.measured: list[int] = []  # measured orders sent per symbol (each on both paths)
        self.next_symbol = 0
        self.clients: list[KrakenClient] = []  # direct, through guardian

    def in_symbols(self, symbols: list[Symbol]) -> None:
        """The symbols the book and the measured orders go to."""
        self.symbols = symbols
        self.measured = [0] * len(symbols)

    def connect(self, url: str, sim_url: str) -> None:
        exchange, bot = self.exchange, self.bot
        self.clients = [
            KrakenClient(
                sim_url,
                Credentials(exchange.api_key, ApiSecret(exchange.secret)),
                use_nonce=False,
                pool_size=1,
            ),
            KrakenClient(url, Credentials(bot.api_key, ApiSecret(bot.secret)), pool_size=1, timeout_s=60),
        ]

    def book_symbol(self, index: int) -> tuple[Symbol, int]:
        """The symbol of the book's `index`-th order and its index within that symbol."""
        if self.layout == "one":
            return self.symbols[0], index
        return self.symbols[index % len(self.symbols)], index // len(self.symbols)

    def measured_orders(self, count: int) -> list[dict[str, ParamValue]]:
        """The next `count` measured orders (both paths send the same ones in a round): in `one` all in its
        symbol, in `spread` each in the next symbol."""
        orders = []
        for _ in range(count):
            position = self.next_symbol
            symbol = self.symbols[position]
            orders.append(order_params(symbol, *symbol.working_order(self.measured[position])))
            self.measured[position] += 1
            self.next_symbol = (position + 1) % len(self.symbols)
        return orders

    async def grow(self) -> float:
        """Place the book's orders through guardian until `size` rest; the seconds it took."""
        started = time.monotonic()
        while self.resting < self.size:
            items = []
            for index in range(self.resting, min(self.size, self.resting + BATCH)):
                symbol, within = self.book_symbol(index)
                side, price = symbol.book_order(within)
                items.append(
                    {
                        "order": "send",
                        "order_tag": str(index),
                        **order_params(symbol, side, price, symbol.lot),
                    }
                )
            await place_batch(self.clients[1], items)
            self.resting += len(items)
        return time.monotonic() - started


async def timed(client: KrakenClient, name: str, params: dict[str, ParamValue]) -> tuple[float, Any]:
    started = time.perf_counter()
    status, doc = await call(client, name, params)
    elapsed = (time.perf_counter() - started) * 1000
    verdict = judge(name, status, doc)
    if verdict != "ok":
        raise SystemExit(f"{name} {params}: {verdict} {str(doc)[:300]}")
    return elapsed, doc


# One visit to one size: the timed send on each path, each cancelled after; `pid` is guardian's.
Visit = Callable[[Book, int, Timings | None], Awaitable[None]]


async def send_visit(book: Book, pid: int, into: Timings | None) -> None:
    """One sendorder per path (timed), each cancelled after (untimed)."""
    order = book.measured_orders(1)[0]
    for path, client in enumerate(book.clients):
        cpu = threads_cpu_ns(pid)
        elapsed, doc = await timed(client, "sendorder", order)
        await timed(client, "cancelorder", {"order_id": doc["sendStatus"]["order_id"]})
        if into is not None:
            (into.direct if path == 0 else into.guardian).append(elapsed)
            if path == 1:
                into.cpu_s.append((threads_cpu_ns(pid) - cpu) / 1e9)


async def batch_visit(book: Book, pid: int, into: Timings | None) -> None:
    """One batch of 20 sends per path (timed), then a batch of their cancels (untimed)."""
    items = [
        {"order": "send", "order_tag": str(i), **order} for i, order in enumerate(book.measured_orders(BATCH))
    ]
    for path, client in enumerate(book.clients):
        cpu = threads_cpu_ns(pid)
        elapsed, doc = await timed(client, "batchorder", {"json": json.dumps({"batchOrder": items})})
        cancels = [{"order": "cancel", "order_id": s["order_id"]} for s in doc["batchStatus"]]
        await timed(client, "batchorder", {"json": json.dumps({"batchOrder": cancels})})
        if into is not None:
            (into.direct if path == 0 else into.guardian).append(elapsed)
            if path == 1:
                into.cpu_s.append((threads_cpu_ns(pid) - cpu) / 1e9)


async def rounds(
    visit: Visit, books: list[Book], count: int, pid: int, rng: random.Random, into: dict[int, Timings] | None
) -> float:
    """`count` rounds, each visiting every size once in a shuffled order; guardian's CPU per round (s)."""
    cpu = cpu_seconds(pid)
    for _ in range(count):
        for book in rng.sample(books, len(books)):
            await visit(book, pid, None if into is None else into[book.size])
    return (cpu_seconds(pid) - cpu) / count


def guard_toml(symbols: list[Symbol]) -> str:
    """What daemon_toml's guard lacks for this benchmark: the per-symbol limits, the duplicate window."""
    text = f"max_open_orders = {MANY}\nduplicate_window_s = {DUPLICATE_WINDOW_S}\n"
    for symbol in symbols:
        text += f"""[accounts.guard.symbol.{symbol.name}]
max_position = {MANY}
max_open_orders = {MANY}
price_band_pct = {PRICE_BAND_PCT}
"""
    return text


def bot_toml(bot: Key) -> str:
    """The market maker's bot, with its own limits on (and far off)."""
    return f"""[[accounts.clients]]
name = "{bot.name}"
api_key = "{bot.api_key}"
api_secret_env = "{bot.env}"
permissions = ["read", "trade"]
max_open_orders = {MANY}
max_orders_per_minute = {MANY * 1000}
"""


async def run_layout(name: str, args: argparse.Namespace) -> Layout:
    layout = Layout(name)
    started = time.monotonic()
    books = [Book(name, size) for size in args.sizes]
    # The wide set for both layouts (where the simulator has it), so guardian is configured alike in both.
    sim, sim_url = await start_bench_sim(
        [book.exchange for book in books], max_open_orders=MANY, instruments="wide", tree=args.sim_tree
    )
    try:
        symbols = layout.symbols = await symbols_of(sim_url, SPREAD_SYMBOLS, first=ONE_SYMBOL)
        used = symbols[:1] if name == "one" else symbols
        for book in books:
            book.in_symbols(used)
        per_symbol = -(-max(args.sizes) // len(used))
        for symbol in used:
            if symbol.book_room() < per_symbol:
                raise SystemExit(
                    f"{symbol.name}: {per_symbol} resting orders do not fit at distinct prices "
                    f"{BOOK_FROM:.0%}-{BOOK_TO:.0%} from the mark (room for {symbol.book_room()})"
                )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="guardian-book-") as tmp:
            config = Path(tmp) / "book.toml"
            config.write_text(
                daemon_toml_accounts(
                    port,
                    Path(tmp) / "journal.sqlite3",
                    sim_url,
                    [(book.name, book.exchange, guard_toml(symbols) + bot_toml(book.bot)) for book in books],
                    symbols=[s.name for s in symbols],
                )
            )
            log = Path(tmp) / "daemon.log"
            keys = [key for book in books for key in (book.exchange, book.bot)]
            daemon = await start_daemon(config, tree_env(args.tree, **secrets_env(keys)), log=log)
            try:
                await measure(layout, books, url, sim_url, daemon, args)
            except BaseException:
                print(f"guardian's log ({name}):\n" + "\n".join(log.read_text().splitlines()[-20:]))
                raise
            finally:
                code = await stop(daemon)
            if code != 0:
                print(f"guardian run exited {code}; the end of its log:\n{log.read_text()[-3000:]}")
    finally:
        await stop(sim)
    layout.seconds = time.monotonic() - started
    return layout


async def measure(
    layout: Layout,
    books: list[Book],
    url: str,
    sim_url: str,
    daemon: asyncio.subprocess.Process,
    args: argparse.Namespace,
) -> None:
    await wait_http(url + "/readyz")
    await asyncio.sleep(2.5)  # the first marks
    pid = daemon.pid
    assert pid is not None
    for book in books:
        book.connect(url, sim_url)
        for client in book.clients:
            await client.start()
    try:
        counts = {book.name: book.size for book in books}
        placing = time.monotonic()
        async with asyncio.TaskGroup() as group:
            growing = {book.size: group.create_task(book.grow()) for book in books}
        await wait_account_open_orders(url, counts)
        layout.placing_s = time.monotonic() - placing
        layout.build_s = {size: task.result() for size, task in growing.items()}

        rng = random.Random(SEED)
        whole = MachineMeter()
        await rounds(send_visit, books, WARMUP_ROUNDS, pid, rng, None)
        layout.send = {book.size: Timings() for book in books}
        layout.send_cpu_s = await rounds(send_visit, books, args.orders, pid, rng, layout.send)
        await rounds(batch_visit, books, WARMUP_BATCHES, pid, rng, None)
        layout.batch = {book.size: Timings() for book in books}
        layout.batch_cpu_s = await rounds(batch_visit, books, args.batches, pid, rng, layout.batch)
        layout.machine_percent = whole.percent()
        await wait_account_open_orders(url, counts)  # every book is still what it was
    finally:
        for book in books:
            for client in book.clients:
                await client.close()
    for size in args.sizes:
        send, batch = layout.send[size], layout.batch[size]
        print(
            f"  {layout.name:6} {size:5d} resting: sendorder direct p50 {send.p('direct', 0.5):6.3f} ms, "
            f"added p50 {send.added(0.5):6.3f} ms; batchorder direct p50 {batch.p('direct', 0.5):7.3f} ms, "
            f"added p50 {batch.added(0.5):6.3f} ms (placing took {layout.build_s[size]:.1f} s)",
            flush=True,
        )


def cell(timings: Timings, path: str) -> str:
    if path == "added":
        return f"{timings.added(0.5):.3f} / {timings.added(0.99):.3f}"
    return f"{timings.p(path, 0.5):.3f} / {timings.p(path, 0.99):.3f}"


def report(layout: Layout, args: argparse.Namespace) -> bool:
    used = layout.symbols[:1] if layout.name == "one" else layout.symbols
    where = f"all in {used[0].name}" if layout.name == "one" else f"spread over {len(used)} symbols"
    print(f"\n### {layout.name}: the book {where}, one account per size, the sizes interleaved\n")
    if layout.name == "spread" and len(used) < SPREAD_SYMBOLS:
        print(
            f"(the simulator has {len(used)} symbols, not {SPREAD_SYMBOLS}: "
            "guardian.sim.market has no WIDE_INSTRUMENTS in this tree)\n"
        )
    passed = True
    for kind, results, count, cpu_s in (
        ("sendorder", layout.send, args.orders, layout.send_cpu_s),
        ("batchorder", layout.batch, args.batches, layout.batch_cpu_s),
    ):
        what = "one send" if kind == "sendorder" else f"a batch of {BATCH} sends"
        print(f"`{kind}` ({what}; {count} per path and size), p50 / p99 in ms:\n")
        rows = [
            [
                f"{size:,}",
                cell(t, "direct"),
                cell(t, "guardian"),
                cell(t, "added"),
                f"{statistics.median(t.cpu_s) * 1e6:,.0f} / {quantile(t.cpu_s, 0.99) * 1e6:,.0f} us",
            ]
            for size, t in results.items()
        ]
        headers = [
            "resting",
            "direct",
            "guardian",
            "added",
            "guardian CPU in its send+cancel, p50 / p99",
        ]
        print(markdown_table(headers, rows))
        low, high = min(results), max(results)
        ratio = results[high].added(0.5) / max(results[low].added(0.5), 1e-9)
        verdict = "PASS" if ratio <= BOUND else "FAIL"
        passed = passed and ratio <= BOUND
        print(
            f"\n{kind}: added p50 at {high:,} / at {low:,} = {ratio:.2f} "
            f"(bound: at most {BOUND}): **{verdict}**"
        )
        sends = f"{len(results)} {'sends' if kind == 'sendorder' else f'batches of {BATCH} sends'}"
        print(
            f"guardian's CPU per round (every size once: {sends} and their cancels per path, and the "
            f"stream's news of them), its whole process: {cpu_s * 1e6:,.0f} us, "
            f"{cpu_s / len(results) * 1e6:,.0f} us per size on average (the sizes interleaved, "
            "/proc/PID/stat's ticks cannot tell them apart)\n"
        )
    print(
        f"{layout.name}: {layout.seconds:.0f} s; the books placed at the same time in {layout.placing_s:.1f} s ("
        + ", ".join(f"{n:,}: {s:.1f} s" for n, s in layout.build_s.items())
        + f"); the whole machine's CPU while measuring {layout.machine_percent:.0f}% of one core"
    )
    return passed


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    load_at_start = load_average()
    layouts = []
    for name in args.layouts:
        layouts.append(await run_layout(name, args))
    print(
        f"\nguardian from {args.tree or 'this tree'}, the simulator from {args.sim_tree or 'this tree'}. "
        f"One account per size; each round visits every size in a shuffled order (seed {SEED}); at each "
        f"visit one send (a batch of {BATCH}) per path at a time, keep-alive; journal on, every exposure "
        f"limit on, the account streams on. {machine()}"
    )
    passed = [report(layout, args) for layout in layouts]
    print(
        f"\nthe whole run: {time.monotonic() - started:.0f} s; load average at the start {load_at_start}, "
        f"at the end {load_average()}"
    )
    return 0 if all(passed) else 1


def sizes(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if len(values) < 2 or values[0] < 1:
        raise argparse.ArgumentTypeError("give at least two sizes, each at least 1")
    return values


def layouts(text: str) -> list[str]:
    values = text.split(",")
    if not values or set(values) - {"one", "spread"}:
        raise argparse.ArgumentTypeError("layouts are one and/or spread, e.g. one,spread")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=300, help="sendorder rounds measured (every size each)")
    parser.add_argument(
        "--batches", type=int, default=200, help="batchorder rounds measured (every size each)"
    )
    parser.add_argument("--sizes", type=sizes, default=[10, 100, 1000, 5000], help="resting orders")
    parser.add_argument("--layouts", type=layouts, default=["one", "spread"], help="one and/or spread")
    parser.add_argument("--tree", type=source_tree, metavar="DIR", help="run guardian from this source tree")
    parser.add_argument("--sim-tree", type=source_tree, metavar="DIR", help="run the simulator from this one")
    sys.exit(asyncio.run(main(parser.parse_args())))
