"""Journal write latency: how long `await journal.record(intent)` takes, as the gateway will call it.

A fresh journal file in a temporary directory (WAL, synchronous=NORMAL, the writer thread), a typical
`sendorder` intent, and:
- paced: one record() + finish() every 1 ms, then every 5 ms, 3 s each: far more than an account's rate
  budget lets through (about 5 orders per second), so the background checkpointer does the checkpoints;
- concurrency 1: one task recording one intent after another, flat out (the writer never idles, so now
  and then a commit pays for a checkpoint: see `max`);
- concurrency 50: fifty tasks doing the same at once, each also calling finish() for its row (a burst);
- finish() throughput: N outcomes enqueued back to back, then flush(): rows per second until committed,
  and what one finish() call costs the event loop.

`record()` commits on the event loop when the writer is idle and nothing else was committed on it in the
same turn of the loop (guardian.journal): the paced phases show that path, the flat-out and burst ones
mostly the writer's. `--thread-only` keeps every write in the writer thread (`journal.commit_on_loop =
false`), to compare.

Usage: .venv/bin/python bench/journal_bench.py [--records 5000] [--thread-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from guardian.journal import Intent, Journal

PARAMS = {
    "orderType": "lmt",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": "0.01",
    "limitPrice": "59000",
    "cliOrdId": "grid-7f3a-000123",
}
ANSWER = {
    "result": "success",
    "sendStatus": {"order_id": "2ce038ae-c144-4de7-a0f1-82f7f4fca864", "status": "placed"},
    "serverTime": "2026-11-21T10:00:00.123Z",
}


def intent() -> Intent:
    return Intent(account="main", bot="grid-bot", endpoint="sendorder", params=PARAMS, verdict="forwarded")


async def timed_records(journal: Journal, count: int, *, finish: bool, every_s: float = 0.0) -> list[float]:
    latencies = []
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for _ in range(count):
        if every_s:
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        started = time.perf_counter()
        request_id = await journal.record(intent())
        latencies.append(time.perf_counter() - started)
        if finish:
            journal.finish(
                request_id, outcome="success", http_status=200, answer=ANSWER, upstream_s=0.02, total_s=0.021
            )
    return latencies


def line(label: str, latencies: list[float], commits: int) -> str:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99)] * 1000
    return (
        f"{label:<16} {len(ordered):>6} records  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  "
        f"max {ordered[-1] * 1000:7.3f} ms  mean {statistics.fmean(ordered) * 1000:6.3f} ms  "
        f"{len(ordered) / max(commits, 1):5.1f} records/commit"
    )


async def main(records: int, loop_commits: bool) -> None:
    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"{records} records per phase, commits on the loop {'on' if loop_commits else 'off'}"
    )
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as directory:
        journal = Journal(Path(directory) / "journal.sqlite3", loop_commits=loop_commits)
        await journal.open()
        try:
            await timed_records(journal, 500, finish=True)  # warm up: schema pages, statement cache

            # Paced first: flat out, the writer's own checkpoints (past WRITER_CHECKPOINT_PAGES) make some
            # of its commits slow, which pauses commits on the loop for LOOP_PAUSE_S, as meant.
            for every_s in (0.001, 0.005):
                commits, on_loop = journal.commits, journal.loop_commits
                paced = await timed_records(journal, int(3 / every_s), finish=True, every_s=every_s)
                label = f"every {every_s * 1000:g} ms"
                print(
                    line(label, paced, journal.commits - commits)
                    + f" (record + finish; {journal.loop_commits - on_loop} on the loop)"
                )

            commits = journal.commits
            single = await timed_records(journal, records, finish=False)
            print(line("concurrency 1", single, journal.commits - commits))

            commits = journal.commits
            workers = 50
            results = await asyncio.gather(
                *(timed_records(journal, records // workers, finish=True) for _ in range(workers))
            )
            burst = [latency for result in results for latency in result]
            await journal.flush()
            print(line("concurrency 50", burst, journal.commits - commits) + " (record + finish)")

            ids = [await journal.record(intent()) for _ in range(records)]
            commits = journal.commits
            started = time.perf_counter()
            for request_id in ids:
                journal.finish(
                    request_id,
                    outcome="success",
                    http_status=200,
                    answer=ANSWER,
                    upstream_s=0.02,
                    total_s=0.021,
                )
            enqueued = time.perf_counter() - started
            await journal.flush()
            total = time.perf_counter() - started
            print(
                f"finish()         {records:>6} outcomes committed in {total * 1000:.1f} ms: "
                f"{records / total:,.0f} per second; one call costs the loop {enqueued / records * 1e6:.1f} us; "
                f"{journal.commits - commits} commits"
            )
        finally:
            await journal.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--thread-only", action="store_true", help="every write in the writer thread")
    args = parser.parse_args()
    asyncio.run(main(args.records, not args.thread_only))
