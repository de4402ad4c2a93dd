"""What the benchmark scripts share. They run as `python bench/<name>.py`, which puts this folder on
the import path.

Besides ports and quantiles: starting `guardian sim` and `guardian run` as the separate processes they
are in production, local bot keys for a configuration, what /proc says about a process (CPU time, RSS,
open file descriptors), and the machine a figure was measured on, since a figure means little without it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
