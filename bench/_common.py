"""What the benchmark scripts share. They run as `python bench/<name>.py`, which puts this folder on
the import path.

Besides ports and quantiles: starting `guardian sim` and `guardian run` as the separate processes they
are in production, local bot keys for a configuration, what /proc says about a process (CPU time, RSS,
open file descriptors), and the machine a figure was measured on, since a figure means little without it.
For the benchmarks of big books and many accounts: a simulator process with many accounts and room for
thousands of orders each (`start_bench_sim`; run as `python bench/_common.py serve-sim`), the prices of a
market maker's orders, reading /metrics, and running guardian from another source tree.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import aiohttp

from guardian.kraken.client import KrakenClient
from guardian.kraken.endpoints import endpoint
from guardian.kraken.signing import ParamValue, encode_params

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quantile(values: list[float], q: float) -> float:
    """The value at quantile `q` (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the machine ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming what the figures were measured on."""
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- what /proc says about a process -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, all its threads together."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def status_kb(pid: int, field: str) -> int:
    """A figure of /proc/PID/status, e.g. VmRSS (in kB) or Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads_cpu_ns(pid: int) -> int:
    """CPU time used so far by the process's threads (those alive now), in nanoseconds, from each thread's
    /proc/PID/task/TID/schedstat: fine enough to attribute a single request's work, which cpu_seconds'
    clock ticks (10 ms) are not. A thread's figure is brought up to date when it leaves the CPU, so read it
    while the process waits for something; a thread that ended between two readings takes its time away."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # the thread has just ended
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total


class CpuMeter:
    """CPU used by a process over a window, as a percentage of one core (200% is both of two cores)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reset()

    def reset(self) -> None:
        self._cpu = cpu_seconds(self.pid)
        self._at = time.monotonic()

    def percent(self) -> float:
        return 100 * (cpu_seconds(self.pid) - self._cpu) / max(time.monotonic() - self._at, 1e-9)


class MachineMeter:
    """CPU used by everything on the machine over a window (/proc/stat), as a percentage of one core: what
    other work took from the processes being measured, on a machine that is shared."""

    def __init__(self) -> None:
        self.reset()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields[:8]) - idle, sum(fields[:8])  # busy, total (guest time is inside user time)

    def reset(self) -> None:
        self._busy, self._total = self._read()

    def percent(self) -> float:
        busy, total = self._read()
        return 100 * (os.cpu_count() or 1) * (busy - self._busy) / max(total - self._total, 1)


# ---- keys ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """A key pair made up for one run; `env` names the variable the daemon reads the secret from, so the
    secret is never in the configuration file."""

    name: str
    api_key: str
    secret: str
    env: str

    @classmethod
    def make(cls, name: str, secret_bytes: int = 32) -> Key:
        env = "BENCH_SECRET_" + name.upper().replace("-", "_")
        return cls(
            name,
            f"bench-{name}-{os.urandom(4).hex()}",
            base64.b64encode(os.urandom(secret_bytes)).decode(),
            env,
        )


def bots_toml(bots: list[Key]) -> str:
    """`[[accounts.clients]]` tables for the last `[[accounts]]` table: bots that may read and trade."""
    return "".join(
        f"""[[accounts.clients]]
name = "{bot.name}"
api_key = "{bot.api_key}"
api_secret_env = "{bot.env}"
permissions = ["read", "trade"]
"""
        for bot in bots
    )


def daemon_toml(
    port: int,
    journal: Path,
    sim_url: str,
    exchange: Key,
    bots: list[Key],
    *,
    account: str = "bench",
    log_level: str = "warning",
    symbols: Sequence[str] = ("PF_XBTUSD",),
    guard: str = "",
    commit_on_loop: bool = os.environ.get("GUARDIAN_BENCH_COMMIT_ON_LOOP", "1") != "0",
) -> str:
    """A configuration for `guardian run` on `port` in front of the simulator at `sim_url`: one account with
    every guard limit on (the exposure limits too, far from binding: their checks run on every order) and
    its local rate budget out of the way (benchmarks raise the simulator's too),
    `guard` appended to `[accounts.guard]`, then `bots`. Intents are committed on the loop (the figures in
    docs/benchmarks.md) unless GUARDIAN_BENCH_COMMIT_ON_LOOP=0 asks for the default, the writer thread.
    Secrets come from the environment (secrets_env)."""
    return f"""[server]
listen = "127.0.0.1:{port}"
[journal]
path = "{journal}"
commit_on_loop = {"true" if commit_on_loop else "false"}
[log]
level = "{log_level}"
format = "json"
[[accounts]]
name = "{account}"
base_url = "{sim_url}"
api_key = "{exchange.api_key}"
api_secret_env = "{exchange.env}"
[accounts.guard]
symbols = {json.dumps(list(symbols))}
max_order_size = 1
max_notional = 100000
price_band_pct = 5
rate_budget = 1000000000
max_position = 1000000
max_open_orders_total = 100000
max_gross_notional = 1000000000000
max_orders_per_minute = 1000000000
max_fills_per_minute = 1000000000
max_daily_loss = 1000000000000
{guard}""" + bots_toml(bots)


def daemon_toml_accounts(
    port: int, journal: Path, sim_url: str, accounts: Sequence[tuple[str, Key, str]], **options: Any
) -> str:
    """daemon_toml with several accounts in one `guardian run`, all in front of the simulator at `sim_url`:
    for each item (the account's name, its exchange key, and what follows its `[accounts.guard]`: more guard
    limits, its sub-tables, its `[[accounts.clients]]`) the account tables daemon_toml writes, with the same
    limits; the server, journal and log tables once. `options` are daemon_toml's (symbols, log_level,
    commit_on_loop)."""
    text = ""
    for index, (name, exchange, tail) in enumerate(accounts):
        one = daemon_toml(port, journal, sim_url, exchange, [], account=name, guard=tail, **options)
        text += one if index == 0 else one[one.index("[[accounts]]\n") :]
    return text


def secrets_env(keys: list[Key]) -> dict[str, str]:
    return {key.env: key.secret for key in keys}


# ---- processes -----------------------------------------------------------------------------------------


def guardian_env(**extra: str) -> dict[str, str]:
    """The environment for a guardian process: no systemd variables leak in from the caller's."""
    drop = ("NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


async def start_sim(
    exchange: Key, *, budget: float = 500.0, tick_s: float = 0.0
) -> tuple[asyncio.subprocess.Process, str]:
    """`guardian sim` on a free loopback port with `exchange` as its key; the process and its base URL."""
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "sim", "--listen", "127.0.0.1:0", "--key", exchange.api_key,
        "--secret", exchange.secret, "--tick", f"{tick_s:g}", "--budget", f"{budget:g}",
        "--log-format", "json", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=guardian_env(),
    )  # fmt: skip
    assert sim.stdout is not None
    while True:
        line = (await sim.stdout.readline()).decode()
        if not line:
            raise SystemExit("guardian sim did not start")
        if line.startswith("sim base_url="):
            return sim, line.strip().split("=", 1)[1]


async def start_daemon(
    config: Path, env: dict[str, str], *, log: Path | None = None
) -> asyncio.subprocess.Process:
    """`guardian run --config` in the configuration's directory; its log (stderr) to `log` if given."""
    stderr = log.open("ab") if log is not None else asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr, env=env, cwd=config.parent,
        )  # fmt: skip
    finally:
        if log is not None and not isinstance(stderr, int):
            stderr.close()  # the child has its own copy


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then the exit status (guardian's ordered shutdown takes at most 9 s)."""
    if proc.returncode is None:
        proc.terminate()
    return await proc.wait()


async def wait_http(url: str, timeout_s: float = 60.0, every_s: float = 0.1) -> None:
    """Until `url` answers 200; SystemExit after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer 200 within {timeout_s:g} s")
            await asyncio.sleep(every_s)


# An `ioc` buy below the simulator's ask: checked against every limit, answered `iocWouldNotExecute`,
# nothing accumulates, so every one costs the exchange the same (the latency scripts send it).
IOC_ORDER: dict[str, ParamValue] = {
    "orderType": "ioc",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": 0.01,
    "limitPrice": 59000,
}


# ---- answers -------------------------------------------------------------------------------------------

# What each endpoint answers when it did what a bot asked, in the nested status Kraken puts the outcome in.
DONE = {"sendorder": "placed", "editorder": "edited", "cancelorder": "cancelled"}
STATUS_KEY = {"sendorder": "sendStatus", "editorder": "editStatus", "cancelorder": "cancelStatus"}


async def call(
    client: KrakenClient, name: str, params: Mapping[str, ParamValue] | Sequence[tuple[str, ParamValue]]
) -> tuple[int, dict[str, Any] | None]:
    """One signed request; the HTTP status and the JSON object answered (None if it was not one).
    Raises ExchangeUnavailable/ExchangeTimeout only when no answer came at all."""
    ep = endpoint(name)
    encoded = encode_params(params)
    query, body = (encoded, "") if ep.method == "GET" else ("", encoded)
    answer = await client.send(ep, query, body)
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    return answer.status, doc if isinstance(doc, dict) else None


def judge(name: str, status: int, doc: dict[str, Any] | None) -> str:
    """The verdict on one answer: "ok" when the request did what was asked, else what went wrong, short
    enough to count answers by."""
    if status // 100 != 2:
        code = doc.get("error") if doc else None
        return f"http {status}" + (f" {code}" if code else "")
    if doc is None or doc.get("result") != "success":
        return f"result {doc.get('error') if doc else 'not JSON'}"
    if name in DONE:
        found = (doc.get(STATUS_KEY[name]) or {}).get("status")
        return "ok" if found == DONE[name] else f"{name} {found}"
    if name == "batchorder":
        bad = [
            item.get("status")
            for item in doc.get("batchStatus", [])
            if item.get("status") not in DONE.values()
        ]
        return f"batchorder {bad[0]}" if bad else "ok"
    return "ok"


# ---- another source tree -------------------------------------------------------------------------------


def source_tree(value: str) -> Path:
    """An argparse type for `--tree DIR`: a directory holding a guardian package (e.g. `git archive HEAD |
    tar -x -C DIR`), to run `guardian run` from for a before/after."""
    tree = Path(value).resolve()
    if not (tree / "guardian" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{tree}: no guardian source tree there (expected guardian/__main__.py)"
        )
    return tree


def tree_env(tree: Path | None, **extra: str) -> dict[str, str]:
    """guardian_env for a daemon run from `tree` (its package first on the path), or from this one."""
    return guardian_env(**extra, **({"PYTHONPATH": str(tree)} if tree is not None else {}))


# ---- a simulator built here: many accounts, a larger book, more instruments ----------------------------

SIM_KEYS_ENV = "BENCH_SIM_KEYS"  # the exchange keys, as JSON, for the simulator's process
THIS_TREE = Path(__file__).resolve().parent.parent


async def start_bench_sim(
    exchanges: Sequence[Key],
    *,
    budget: float = 1e9,
    max_open_orders: int = 500,
    instruments: str = "default",
    tick_s: float = 0.0,
    tree: Path | None = None,
) -> tuple[asyncio.subprocess.Process, str]:
    """The simulator as its own process, as `guardian sim` is, but with what `guardian sim` cannot be told:
    one account per key of `exchanges` (named after the key), `max_open_orders` per account (the
    simulator's default is 500), and `instruments` "default" (three symbols) or "wide" (guardian.sim.market's
    WIDE_INSTRUMENTS where that exists; otherwise the default three, and the process's line says so). It
    runs the simulator of `tree` (a source tree, as `--tree`; default this one); the keys reach it in the
    environment, never on the command line. The process and its base URL."""
    keys = [{"api_key": k.api_key, "secret": k.secret, "account": k.name} for k in exchanges]
    sim = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve-sim", "--budget", f"{budget:g}", "--max-open-orders",
        str(max_open_orders), "--instruments", instruments, "--tick", f"{tick_s:g}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env=guardian_env(**{SIM_KEYS_ENV: json.dumps(keys)}, PYTHONPATH=str(tree or THIS_TREE)),
    )  # fmt: skip
    assert sim.stdout is not None
    while True:
        line = (await sim.stdout.readline()).decode()
        if not line:
            raise SystemExit("the benchmark's simulator did not start")
        if line.startswith("sim base_url="):
            return sim, line.strip().split("=", 1)[1]


async def _serve_sim(budget: float, max_open_orders: int, instruments: str, tick_s: float) -> None:
    """The simulator's process (`python bench/_common.py serve-sim`), until SIGTERM."""
    from guardian import logs
    from guardian.secret import ApiSecret
    from guardian.sim import market as sim_market
    from guardian.sim.app import SimKey, Simulator

    logs.configure("warning", "json")
    chosen = sim_market.DEFAULT_INSTRUMENTS
    if instruments == "wide":
        chosen = getattr(sim_market, "WIDE_INSTRUMENTS", chosen)
    keys = [
        SimKey(k["api_key"], ApiSecret(k["secret"]), account=k["account"])
        for k in json.loads(os.environ.pop(SIM_KEYS_ENV))
    ]
    sim = Simulator(
        keys,
        market=sim_market.Market(instruments=chosen, seed=1),
        tick_s=tick_s or None,
        budget_capacity=budget,
    )
    sim.exchange.max_open_orders = max_open_orders
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    url = await sim.start("127.0.0.1", 0)
    try:
        print(f"sim instruments={len(chosen)}", flush=True)
        print(f"sim base_url={url}", flush=True)
        await stopping.wait()
    finally:
        await sim.close()


# ---- /metrics ------------------------------------------------------------------------------------------


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` (exactly that name: a histogram's `_bucket`, `_sum` and `_count` are
    names of their own) in a Prometheus text exposition, each with its labels."""
    found = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if metric != name:
            continue
        pairs = {}
        for part in labels.rstrip("}").split('",'):
            if "=" in part:
                key, _, raw = part.partition("=")
                pairs[key.strip()] = raw.strip().strip('"')
        found.append((pairs, float(value)))
    return found


async def scrape(base_url: str) -> str:
    """The daemon's /metrics, as text."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/metrics") as response:
        return await response.text()


async def wait_open_orders(base_url: str, count: int, timeout_s: float = 120.0) -> None:
    """Until the daemon's own count of open orders (`guardian_open_orders`, all accounts and symbols
    together) is `count`: what it was sent has reached its account state. SystemExit after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    seen = -1.0
    while time.monotonic() < deadline:
        seen = sum(value for _, value in metric_samples(await scrape(base_url), "guardian_open_orders"))
        if seen == count:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"guardian counts {seen:g} open orders, not {count}, after {timeout_s:g} s")


async def wait_account_open_orders(
    base_url: str, counts: Mapping[str, int], timeout_s: float = 120.0
) -> None:
    """Until the daemon's own count of open orders (`guardian_open_orders`, its symbols together) is, for
    each account of `counts`, that account's count. SystemExit after `timeout_s`, naming the accounts that
    differ."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = dict.fromkeys(counts, 0.0)
        for labels, value in metric_samples(await scrape(base_url), "guardian_open_orders"):
            account = labels.get("account", "")
            if account in seen:
                seen[account] += value
        if all(seen[account] == count for account, count in counts.items()):
            return
        await asyncio.sleep(0.2)
    differ = ", ".join(
        f"{account} {seen.get(account, 0):g} not {count}"
        for account, count in counts.items()
        if seen.get(account) != count
    )
    raise SystemExit(f"guardian's count of open orders after {timeout_s:g} s: {differ}")


# ---- a market maker's orders ---------------------------------------------------------------------------

# Where orders go, as fractions of the mark either side (buys below, sells above; with the simulator's prices
# frozen nothing ever fills): a resting book 2-18 % away, and the orders a bot works (sends, edits and
# cancels again) 0.5-1.9 % away, between the book and the mark. guardian's price band must then be
# PRICE_BAND_PCT (the default symbols' ticks are too coarse for 5,000 distinct prices within 5 %); the
# simulator's collar is 25 %.
BOOK_FROM, BOOK_TO = Decimal("0.02"), Decimal("0.18")
WORKING_FROM, WORKING_TO = Decimal("0.005"), Decimal("0.019")
PRICE_BAND_PCT = 20
WORKING_PRICES = 500  # distinct prices per side for working orders, at most
LOTS = 8  # and sizes of 1 to LOTS lots where max_order_size allows, so an order comes back only after many
MAX_ORDER_SIZE = Decimal(1)  # daemon_toml's max_order_size


@dataclass(frozen=True, slots=True)
class Symbol:
    """An instrument of the simulator, with its mark (frozen), and the prices orders in it are given."""

    name: str
    tick: Decimal
    lot: Decimal  # the smallest size
    mark: Decimal

    def book_order(self, index: int) -> tuple[str, Decimal]:
        """The side and price of this symbol's `index`-th resting order: buys and sells in turn, each pair a
        tick further from the mark."""
        level = index // 2
        if index % 2 == 0:
            return "buy", self._below(BOOK_FROM) - level * self.tick
        return "sell", self._above(BOOK_FROM) + level * self.tick

    def book_room(self) -> int:
        """How many resting orders fit at distinct prices between BOOK_FROM and BOOK_TO."""
        return 2 * int((self.mark * (BOOK_TO - BOOK_FROM)) / self.tick)

    def working_order(self, count: int, shift: int = 0) -> tuple[str, Decimal, Decimal]:
        """The side, price and size of the `count`-th working order in this symbol: both sides in turn, one
        tick further each time across the band, then the next size, so that the same order (which
        guardian's duplicate window would refuse) comes back only after thousands. `shift` ticks further
        (within the band) give an edit's new price."""
        prices = max(1, min(WORKING_PRICES, int(self.mark * (WORKING_TO - WORKING_FROM) / self.tick)))
        sizes = max(1, min(LOTS, int(MAX_ORDER_SIZE / self.lot)))
        side = "buy" if count % 2 == 0 else "sell"
        step = (count // 2 + shift) % prices
        lots = 1 + (count // (2 * prices)) % sizes
        if side == "buy":
            return side, self._below(WORKING_FROM) - step * self.tick, lots * self.lot
        return side, self._above(WORKING_FROM) + step * self.tick, lots * self.lot

    def _below(self, fraction: Decimal) -> Decimal:
        return (self.mark * (1 - fraction) / self.tick).to_integral_value(ROUND_FLOOR) * self.tick

    def _above(self, fraction: Decimal) -> Decimal:
        return (self.mark * (1 + fraction) / self.tick).to_integral_value(ROUND_CEILING) * self.tick


def decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def order_params(symbol: Symbol, side: str, price: Decimal, size: Decimal) -> dict[str, ParamValue]:
    """A resting limit order's parameters, as a bot sends them."""
    return {
        "orderType": "lmt",
        "symbol": symbol.name,
        "side": side,
        "size": decimal_text(size),
        "limitPrice": decimal_text(price),
    }


async def symbols_of(sim_url: str, count: int, *, first: str = "PF_XBTUSD") -> list[Symbol]:
    """The simulator's first `count` instruments (`first` first), with their ticks, lots and marks."""
    async with KrakenClient(sim_url) as public:
        instruments = await public.instruments()
        marks = {t["symbol"]: Decimal(str(t["markPrice"])) for t in await public.tickers()}
    symbols = [
        Symbol(
            i["symbol"],
            Decimal(str(i["tickSize"])),
            Decimal(1).scaleb(-int(i["contractValueTradePrecision"])),
            marks[i["symbol"]],
        )
        for i in instruments
        if i["symbol"] in marks
    ]
    symbols.sort(key=lambda s: s.name != first)
    return symbols[:count]


# Refusals that pass: guardian cannot judge yet (no mark, the account state not fresh: 503), or a switch
# refresh failed a moment ago (409) and the next one will put it right.
NOT_READY = {503: ("markPriceUnavailable", "accountStateUnavailable"), 409: ("switchNotArmed",)}


async def place_batch(
    client: KrakenClient, items: Sequence[Mapping[str, Any]], *, patience_s: float = 60.0
) -> dict[str, Any]:
    """A batchorder of `items` that must succeed whole (a book being placed). While guardian refuses it for a
    passing reason (NOT_READY: no mark price or the account state not fresh yet, as just after its start;
    a switch refresh that just failed), the batch is sent again every 0.5 s for up to `patience_s`.
    SystemExit on any other answer but success."""
    deadline = time.monotonic() + patience_s
    body = {"json": json.dumps({"batchOrder": list(items)})}
    while True:
        status, doc = await call(client, "batchorder", body)
        verdict = judge("batchorder", status, doc)
        if verdict == "ok" and doc is not None:
            return doc
        passing = doc is not None and doc.get("error") in NOT_READY.get(status, ())
        if not passing or time.monotonic() > deadline:
            raise SystemExit(f"batchorder: {verdict} {str(doc)[:300]}")
        await asyncio.sleep(0.5)


def load_average() -> str:
    """The machine's load averages (1, 5, 15 min) from /proc/loadavg: how busy other work kept it."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":  # the simulator's process of start_bench_sim
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve-sim"])
    parser.add_argument("--budget", type=float, default=1e9)
    parser.add_argument("--max-open-orders", type=int, default=500)
    parser.add_argument("--instruments", choices=["default", "wide"], default="default")
    parser.add_argument("--tick", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(_serve_sim(args.budget, args.max_open_orders, args.instruments, args.tick))
