"""Soak: guardian's memory and file descriptors under a steady load for a long stretch (issue 6: RSS growth
under 5 MB after warm-up, no file-descriptor growth).

`guardian sim` (frozen prices, a budget large enough not to refuse) and `guardian run` are separate
processes, as in production; the daemon keeps its default switch beat, polls marks, journals to a file
and has every guard limit on, with its local rate budget raised to match the simulator's. Several bots
(`--bots`) share a paced load of `--rate` requests per second, each on its own keep-alive connection:
sendorder (a resting limit order with a cliOrdId, so the retry memory works too), editorder,
cancelorder, batchorder (a send and a cancel) and openorders. Each bot keeps at most MAX_OPEN orders
open, so nothing piles up at the exchange. Prices never move, so every request should succeed.

Every `--sample-s` the daemon's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd), threads and CPU
time are read. Printed: at rest (before any load), after the warm-up, at the end, the growth between
the last two, its trend and the growth over the last half (a leak keeps growing there, a memory that
fills up to a bound does not); every answer that was not a success, by kind; and whether the journal
holds a forwarded row, with its outcome, for every request guardian forwarded.
Exit status 1 if RSS grew more than `--max-growth-mb` after the warm-up, if the open fds grew, or if
the journal misses a forwarded request, so it can gate.

Two bounded memories fill for minutes at this rate and count as growth until they are full: the
retried-order memory (every cliOrdId forwarded within `dedupe_window_s`, 300 s by default, with its
answer) and each bot key's nonce history (the last 4096 nonces); the C heap settles a few minutes after
them. At the default rate RSS stops growing after about 10 minutes, so the warm-up is 10 minutes by
default (twice the retry window): a shorter one counts the filling as growth.

Usage: .venv/bin/python bench/soak.py [--minutes 30] [--rate 50] [--bots 4] [--warmup-minutes 10] [--csv F]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import (
    CpuMeter,
    Key,
    call,
    cpu_seconds,
    daemon_toml,
    free_port,
    guardian_env,
    judge,
    machine,
    markdown_table,
    open_fds,
    rss_kb,
    secrets_env,
    start_daemon,
    start_sim,
    status_kb,
    stop,
    wait_http,
)

from guardian.errors import ExchangeError
from guardian.journal import read_journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret

SYMBOL = "PF_XBTUSD"
MAX_OPEN = 20  # per bot
# The mix, by weight: most of a trading bot's traffic is placing, moving and pulling orders.
ACTIONS = {"send": 30, "edit": 20, "cancel": 25, "batch": 10, "read": 15}


@dataclass
class Sample:
    t_s: float
    phase: str
    rss_kb: int
    fds: int
    threads: int
    cpu_s: float
    requests: int
    not_ok: int


class Load:
    """What the bots sent and heard."""

    def __init__(self) -> None:
        self.requests = 0
        self.verdicts: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()  # per endpoint: answered by the exchange through guardian
        self.late = 0  # beats a bot started late because the previous answer took longer than the pace

    @property
    def not_ok(self) -> int:
        return sum(n for verdict, n in self.verdicts.items() if verdict != "ok")


class Bot:
    """One trading bot: its own key, connection and open orders."""

    def __init__(self, key: Key, url: str, mark: float, seed: int, load: Load) -> None:
        self.key = key
        self.client = KrakenClient(url, Credentials(key.api_key, ApiSecret(key.secret)), pool_size=1)
        self.rng = random.Random(seed)
        self.mark = mark
        self.load = load
        self.open: list[str] = []
        self.sent = 0

    def _order(self) -> dict[str, str | float]:
        self.sent += 1
        buy = self.rng.random() < 0.5
        away = self.rng.uniform(0.01, 0.03)
        price = round(self.mark * (1 - away if buy else 1 + away))
        return {
            "orderType": "lmt",
            "symbol": SYMBOL,
            "side": "buy" if buy else "sell",
            "size": self.rng.choice((0.01, 0.02, 0.03)),
            "limitPrice": price,
            "cliOrdId": f"{self.key.name}-{self.sent}",
        }

    async def act(self) -> None:
        action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        if action in ("edit", "cancel") and not self.open:
            action = "send"
        elif action == "send" and len(self.open) >= MAX_OPEN:
            action = "cancel"
        if action == "send":
            name, params = "sendorder", self._order()
        elif action == "edit":
            name, params = (
                "editorder",
                {"orderId": self.rng.choice(self.open), "size": self.rng.choice((0.01, 0.02))},
            )
        elif action == "cancel":
            name, params = "cancelorder", {"order_id": self.open.pop(0)}
        elif action == "batch":
            items: list[dict[str, object]] = [{"order": "send", "order_tag": "new", **self._order()}]
            if self.open:
                items.append({"order": "cancel", "order_id": self.open.pop(0)})
            name, params = "batchorder", {"json": json.dumps({"batchOrder": items}, separators=(",", ":"))}
        else:
            name, params = "openorders", {}
        self.load.requests += 1
        try:
            status, doc = await call(self.client, name, params)
        except ExchangeError as exc:
            self.load.verdicts[f"no answer ({type(exc).__name__})"] += 1
            return
        verdict = judge(name, status, doc)
        self.load.verdicts[verdict] += 1
        if status < 400 or status in (502, 504):  # guardian forwarded it (a 502/504 is its own, after)
            self.load.forwarded[name] += 1
        if doc is None or verdict != "ok":
            return
        if name == "sendorder":
            self.open.append(doc["sendStatus"]["order_id"])
        elif name == "batchorder":
            self.open += [item["order_id"] for item in doc["batchStatus"] if item.get("status") == "placed"]

    async def run(self, interval_s: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while next_at < until:
            await self.act()
            next_at += interval_s
            now = loop.time()
            if next_at < now:  # the answer took longer than the pace: go on at once, never burst
                self.load.late += 1
                next_at = now
            await asyncio.sleep(next_at - now)


def sample(pid: int, t_s: float, phase: str, load: Load) -> Sample:
    return Sample(
        round(t_s, 1), phase, rss_kb(pid), open_fds(pid), status_kb(pid, "Threads"), cpu_seconds(pid),
        load.requests, load.not_ok,
    )  # fmt: skip


def trend_kb_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return 0.0
    return statistics.linear_regression([s.t_s for s in samples], [s.rss_kb for s in samples]).slope * 60


def write_csv(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)


def log_levels(path: Path) -> Counter[str]:
    """The daemon's log lines by level; warnings and errors by event too, so a surprise has a name."""
    levels: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            levels["not JSON"] += 1
            continue
        level = str(event.get("level", "?"))
        levels[f"{level} {event.get('event')}" if level in ("warning", "error", "critical") else level] += 1
    return levels


async def main(args: argparse.Namespace) -> int:
    exchange = Key.make("exchange", 64)
    bots = [Key.make(f"bot{i}") for i in range(args.bots)]
    sim, sim_url = await start_sim(exchange, budget=1e9, tick_s=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="guardian-soak-") as tmp:
        journal = Path(tmp) / "journal.sqlite3"
        config = Path(tmp) / "soak.toml"
        config.write_text(
            daemon_toml(
                port, journal, sim_url, exchange, bots, account="soak", log_level="info", symbols=[SYMBOL]
            )
        )
        log = Path(tmp) / "daemon.log"
        daemon = await start_daemon(config, guardian_env(**secrets_env([exchange, *bots])), log=log)
        load = Load()
        samples: list[Sample] = []
        clients: list[Bot] = []
        try:
            await wait_http(url + "/readyz")
            async with KrakenClient(sim_url) as public:
                mark = float(next(t for t in await public.tickers() if t["symbol"] == SYMBOL)["markPrice"])
            await asyncio.sleep(args.rest_s)  # the first marks, the journal's first checkpoint
            pid = daemon.pid
            seconds, warmup_s = args.minutes * 60, args.warmup_minutes * 60
            print(
                f"soak: {args.rate:g} req/s from {args.bots} bots for {args.minutes:g} min; {machine()}",
                flush=True,
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            samples.append(sample(pid, 0, "rest", load))
            clients = [Bot(bot, url, mark, seed, load) for seed, bot in enumerate(bots)]
            for bot in clients:
                await bot.client.start()
            cpu = CpuMeter(pid)
            workers = [
                asyncio.create_task(bot.run(args.bots / args.rate, started + seconds)) for bot in clients
            ]
            k = 1
            while (t := k * args.sample_s) <= seconds:
                await asyncio.sleep(max(0.0, started + t - loop.time()))
                samples.append(sample(pid, t, "warmup" if t < warmup_s else "steady", load))
                s = samples[-1]
                print(
                    f"  {s.t_s:7.0f} s  RSS {s.rss_kb / 1024:7.2f} MB  fds {s.fds:3d}  threads {s.threads}  "
                    f"requests {s.requests}  not ok {s.not_ok}",
                    flush=True,
                )
                k += 1
            cpu_percent = cpu.percent()
            await asyncio.gather(*workers)
            elapsed = loop.time() - started
            await asyncio.sleep(2)  # outcomes are journaled just after each answer
            rows = read_journal(journal)
        finally:
            for bot in clients:
                await bot.client.close()
            code = await stop(daemon)
            await stop(sim)
        levels = log_levels(log)

    if args.csv:
        write_csv(args.csv, samples)

    rest = samples[0]
    warmed = next(s for s in samples if s.t_s >= warmup_s)
    end = samples[-1]
    steady = [s for s in samples if s.t_s >= warmup_s]
    growth_kb, fd_growth = end.rss_kb - warmed.rss_kb, end.fds - warmed.fds
    forwarded = [r for r in rows if r["type"] == "request" and r["verdict"] == "forwarded"]
    journaled = Counter(r["endpoint"] for r in forwarded)
    unfinished = sum(r["outcome"] in (None, "unknown") for r in forwarded)
    journal_ok = journaled == load.forwarded and unfinished == 0

    def mb(kb: int) -> str:
        return f"{kb / 1024:.2f} MB"

    print()
    print(
        f"Soak: {load.requests} requests in {elapsed / 60:.1f} min ({load.requests / elapsed:.1f} req/s) from "
        f"{args.bots} bots, mixed sendorder/editorder/cancelorder/batchorder/openorders; guardian used "
        f"{cpu_percent:.1f}% of one core under load. {machine()}."
    )
    print()
    print(
        markdown_table(
            ["point", "time", "RSS", "open fds", "threads"],
            [
                ["at rest (before load)", "0 s", mb(rest.rss_kb), str(rest.fds), str(rest.threads)],
                [
                    "after warm-up",
                    f"{warmed.t_s:.0f} s",
                    mb(warmed.rss_kb),
                    str(warmed.fds),
                    str(warmed.threads),
                ],
                ["end", f"{end.t_s:.0f} s", mb(end.rss_kb), str(end.fds), str(end.threads)],
                [
                    "**growth after warm-up**",
                    "",
                    f"**{growth_kb / 1024:+.2f} MB**",
                    f"**{fd_growth:+d}**",
                    "",
                ],
            ],
        )
    )
    print()
    half = next(s for s in steady if s.t_s >= (warmed.t_s + end.t_s) / 2)
    print(
        f"After warm-up: RSS {mb(min(s.rss_kb for s in steady))} to {mb(max(s.rss_kb for s in steady))}, "
        f"trend {trend_kb_per_min(steady):+.1f} kB/min; over the last half ({half.t_s:.0f} s to the end) "
        f"{(end.rss_kb - half.rss_kb) / 1024:+.2f} MB. Open fds {min(s.fds for s in steady)} to "
        f"{max(s.fds for s in steady)}."
    )
    not_ok = {v: n for v, n in load.verdicts.items() if v != "ok"}
    print(f"Answers that were not a success: {load.not_ok} {not_ok or ''}".rstrip())
    print(f"Bots that fell behind their pace: {load.late} times.")
    print(
        f"Journal: {sum(journaled.values())} forwarded requests with {unfinished} outcomes missing; "
        f"the bots had {sum(load.forwarded.values())} answered through guardian: "
        + (
            "every one journaled."
            if journal_ok
            else f"MISMATCH journal {dict(journaled)} bots {dict(load.forwarded)}"
        )
    )
    print(f"Daemon log lines by level: {dict(levels)}; exit status {code}.")
    failures = []
    if growth_kb > args.max_growth_mb * 1024:
        failures.append(f"RSS grew {growth_kb / 1024:.2f} MB after warm-up (limit {args.max_growth_mb:g} MB)")
    if fd_growth > 0:
        failures.append(f"open fds grew by {fd_growth}")
    if not journal_ok:
        failures.append("the journal misses forwarded requests")
    print("FAIL: " + "; ".join(failures) if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second, all bots together")
    parser.add_argument("--bots", type=int, default=4, help="bots sharing the load, each with its own key")
    parser.add_argument("--warmup-minutes", type=float, default=10.0, help="growth is counted from here")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between /proc samples")
    parser.add_argument("--rest-s", type=float, default=10.0, help="idle seconds before the at-rest sample")
    parser.add_argument("--max-growth-mb", type=float, default=5.0, help="RSS growth allowed after warm-up")
    parser.add_argument("--csv", type=Path, default=None, help="write every sample to this CSV file")
    arguments = parser.parse_args()
    if arguments.warmup_minutes >= arguments.minutes:
        parser.error("--warmup-minutes must be shorter than --minutes")
    sys.exit(asyncio.run(main(arguments)))
