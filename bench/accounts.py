"""What each additional account costs an idle guardian: CPU and memory with 1, 10 and 50 accounts.

With `--stream on` (the default, as in production) each account has its private WebSocket to the
simulator's ws/v1 (and its REST reconciliation every reconcile_s), and all of them share one public ticker
link; `--stream off` measures without them, for comparison.

One simulator holds every account, each with its own exchange key (as `guardian sim` builds its one key,
here `--accounts` of them), in this script's process; `guardian run` is a separate process. Each account
has the default switch beat (15-20 s), mark polling (every 2 s), every guard limit and one bot, and the
journal is on. For each count: start the daemon, wait for `/readyz` 200 (every switch armed), let it
settle, then measure over `--seconds`: its CPU (user + system, /proc/PID/stat, as a percentage of one
core), RSS (/proc/PID/status VmRSS) at the end, open fds, and what it asked of the exchange. Then per
additional account: the difference between the counts divided by the accounts added.

Usage: .venv/bin/python bench/accounts.py [--accounts 1,10,50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import (
    CpuMeter,
    Key,
    MachineMeter,
    bots_toml,
    free_port,
    guardian_env,
    machine,
    markdown_table,
    open_fds,
    rss_kb,
    secrets_env,
    start_daemon,
    status_kb,
    stop,
    wait_http,
)

from guardian import logs
from guardian.secret import ApiSecret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.market import Market


@dataclass
class Figures:
    accounts: int
    cpu_percent: float
    rss_kb: int
    fds: int
    threads: int
    exchange_calls: Counter[str]
    seconds: float
    machine_percent: float
    websockets: int


def config_text(
    port: int, journal: Path, sim_url: str, accounts: list[tuple[Key, Key]], *, stream: bool = True
) -> str:
    text = f"""[server]
listen = "127.0.0.1:{port}"
[journal]
path = "{journal}"
[log]
level = "warning"
format = "json"
"""
    for exchange, bot in accounts:
        text += f"""[[accounts]]
name = "{exchange.name}"
base_url = "{sim_url}"
api_key = "{exchange.api_key}"
api_secret_env = "{exchange.env}"
[accounts.guard]
symbols = ["PF_XBTUSD", "PF_ETHUSD"]
max_order_size = 1
max_notional = 100000
price_band_pct = 5
[accounts.stream]
enabled = {"true" if stream else "false"}
""" + bots_toml([bot])
    return text


async def measure(
    count: int, keys: list[tuple[Key, Key]], sim: Simulator, args: argparse.Namespace
) -> Figures:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="guardian-accounts-") as tmp:
        config = Path(tmp) / "accounts.toml"
        config.write_text(
            config_text(
                port, Path(tmp) / "journal.sqlite3", sim.url, keys[:count], stream=args.stream == "on"
            )
        )
        env = guardian_env(**secrets_env([key for pair in keys[:count] for key in pair]))
        daemon = await start_daemon(config, env, log=Path(tmp) / "daemon.log")
        try:
            await wait_http(url + "/readyz", timeout_s=120)
            await asyncio.sleep(args.settle_s)
            assert daemon.pid is not None
            cpu, whole = CpuMeter(daemon.pid), MachineMeter()
            since = sim.requests[-1]["seq"] if sim.requests else 0
            await asyncio.sleep(args.seconds)
            figures = Figures(
                accounts=count,
                cpu_percent=cpu.percent(),
                rss_kb=rss_kb(daemon.pid),
                fds=open_fds(daemon.pid),
                threads=status_kb(daemon.pid, "Threads"),
                exchange_calls=Counter(r["endpoint"] for r in sim.requests if r["seq"] > since),
                seconds=args.seconds,
                machine_percent=whole.percent(),
                websockets=len(sim.stream.state()["connections"]),
            )
        finally:
            code = await stop(daemon)
        if code != 0:
            raise SystemExit(f"guardian run with {count} accounts exited {code}; its log: {tmp}/daemon.log")
    return figures


async def main(args: argparse.Namespace) -> int:
    logs.configure("warning")  # the simulator runs in this process
    counts = sorted(args.accounts)
    keys = [(Key.make(f"acct{i}", 64), Key.make(f"bot{i}")) for i in range(max(counts))]
    sim = Simulator(
        [SimKey(exchange.api_key, ApiSecret(exchange.secret), account=exchange.name) for exchange, _ in keys],
        market=Market(seed=1),
    )
    await sim.start("127.0.0.1", 0)
    results: list[Figures] = []
    try:
        for count in counts:
            results.append(await measure(count, keys, sim, args))
            r = results[-1]
            print(
                f"  {count:3d} accounts: CPU {r.cpu_percent:.2f}%  RSS {r.rss_kb / 1024:.1f} MB  fds {r.fds}  "
                f"websockets {r.websockets}  exchange calls {dict(r.exchange_calls)}",
                flush=True,
            )
    finally:
        await sim.close()

    print()
    print(
        f"Idle guardian (no bot traffic), default switch beat 15-20 s, marks polled every 2 s (while the "
        f"ticker feed does not cover them), stream {args.stream}, journal on; "
        f"{args.seconds:g} s measured per count after {args.settle_s:g} s settling. {machine()}."
    )
    print()
    print(
        markdown_table(
            [
                "accounts",
                "guardian CPU (of one core)",
                "RSS",
                "open fds",
                "threads",
                "calls to the exchange",
                "websockets",
                "whole machine",
            ],
            [
                [
                    str(r.accounts),
                    f"{r.cpu_percent:.2f}%",
                    f"{r.rss_kb / 1024:.1f} MB",
                    str(r.fds),
                    str(r.threads),
                    f"{sum(r.exchange_calls.values()) / r.seconds:.1f}/s",
                    str(r.websockets),
                    f"{r.machine_percent:.0f}%",
                ]
                for r in results
            ],
        )
    )
    print()
    base = results[0]
    for r in results[1:]:
        added = r.accounts - base.accounts
        calls = (sum(r.exchange_calls.values()) - sum(base.exchange_calls.values())) / r.seconds
        print(
            f"Per additional account, {base.accounts} to {r.accounts}: "
            f"CPU {(r.cpu_percent - base.cpu_percent) / added:+.3f}% of one core, "
            f"RSS {(r.rss_kb - base.rss_kb) / added:+.0f} kB, "
            f"fds {(r.fds - base.fds) / added:+.2f}, "
            f"calls to the exchange {calls / added:+.2f}/s."
        )
    return 0


def counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError("give at least two account counts, each at least 1")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=counts, default=[1, 10, 50], help="account counts, e.g. 1,10,50")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per count")
    parser.add_argument("--settle-s", type=float, default=10.0, help="seconds after ready before measuring")
    parser.add_argument("--stream", choices=("on", "off"), default="on", help="each account's private feed")
    sys.exit(asyncio.run(main(parser.parse_args())))
