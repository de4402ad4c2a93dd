"""What TLS adds to an order: `sendorder` through guardian over plain HTTP, over TLS, and over mutual TLS,
interleaved in one run (order i goes to mode i mod 3), one at a time.

Each mode has its own `guardian sim` and `guardian run` (separate processes, as in production: a daemon
speaks TLS or not), with the journal on, every guard limit on and the switch armed. The certificates are
made for the run with the `openssl` command: a CA, the server's (EC P-256, for 127.0.0.1) and a bot's.
Orders are `ioc` buys below the ask (`iocWouldNotExecute`, nothing accumulates), signed with a local key
as a bot signs them, on aiohttp (ccxt's transport).

Two connection policies, the sweep:
- `reuse`: one keep-alive connection per mode, as every client library keeps it: TLS costs its record
  encryption only, the handshake was paid once;
- `new`: a fresh connection per order (TCP, then the handshake: a full TLS 1.3 handshake each time; a
  client that resumes sessions pays less).

Usage: .venv/bin/python bench/tls.py [--orders 1500] [--new 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    IOC_ORDER,
    Key,
    daemon_toml,
    free_port,
    guardian_env,
    load_average,
    machine,
    markdown_table,
    quantile,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
)

from guardian.kraken.signing import encode_params, sign

MODES = ("plain", "tls", "mtls")
PATH = "/derivatives/api/v3/sendorder"


def openssl(where: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=where)


def make_certificates(where: Path) -> None:
    """ca.pem; server.pem/.key for 127.0.0.1; bot.pem/.key (CN bench-bot), keys mode 600."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(where, "req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench-ca", "-addext",
            "basicConstraints=critical,CA:TRUE", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("bot", "extendedKeyUsage=clientAuth")):
        (where / f"{name}.ext").write_text(ext + "\n")
        openssl(
            where, "req", *ec, "-subj", f"/CN=bench-{name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"
        )
        openssl(where, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")  # fmt: skip
        os.chmod(where / f"{name}.key", 0o600)


def server_lines(mode: str, pki: Path) -> str:
    if mode == "plain":
        return ""
    lines = f'tls_cert_file = "{pki / "server.pem"}"\ntls_key_file = "{pki / "server.key"}"\n'
    return lines + (f'tls_client_ca_file = "{pki / "ca.pem"}"\n' if mode == "mtls" else "")


def client_ssl(mode: str, pki: Path) -> ssl.SSLContext | bool:
    if mode == "plain":
        return False
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if mode == "mtls":
        context.load_cert_chain(pki / "bot.pem", pki / "bot.key")
    return context


class Bot:
    """A bot's signed `sendorder` to one guardian, on aiohttp, reusing its connection or not."""

    def __init__(self, url: str, key: Key, context: ssl.SSLContext | bool, *, reuse: bool) -> None:
        self.url = url + PATH
        self.key = key
        connector = aiohttp.TCPConnector(ssl=context, limit=1, force_close=not reuse)
        self.http = aiohttp.ClientSession(connector=connector)

    async def until_marked(self, timeout_s: float = 60.0) -> None:
        """Until guardian has the mark its price band needs (refused markPriceUnavailable before)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.order()
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
            else:
                return

    async def order(self) -> float:
        body = encode_params(IOC_ORDER)
        authent = sign(base64.b64decode(self.key.secret), body, None, PATH.removeprefix("/derivatives"))
        headers = {
            "APIKey": self.key.api_key,
            "Authent": authent,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        started = time.perf_counter()
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            doc = await response.json(content_type=None)
        spent = (time.perf_counter() - started) * 1000
        assert doc.get("sendStatus", {}).get("status") == "iocWouldNotExecute", doc
        return spent


async def ready(url: str, context: ssl.SSLContext | bool, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        while True:
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} was not ready within {timeout_s:g} s")
            await asyncio.sleep(0.1)


async def sweep(bots: dict[str, Bot], count: int) -> dict[str, list[float]]:
    for bot in bots.values():  # the first marks; then warm up the connections and the code paths
        await bot.until_marked()
        for _ in range(30):
            await bot.order()
    times: dict[str, list[float]] = {mode: [] for mode in bots}
    for i in range(count * len(bots)):
        mode = MODES[i % len(MODES)]
        times[mode].append(await bots[mode].order())
    return times


async def main(count: int, fresh: int) -> int:
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_certificates(pki)
        bot = Key.make("bot")
        urls: dict[str, str] = {}
        try:
            for mode in MODES:
                exchange = Key.make(f"exchange-{mode}", 64)
                sim, sim_url = await start_sim(exchange, budget=1e9)
                processes.append(sim)
                port = free_port()
                config = pki / f"{mode}.toml"
                text = daemon_toml(
                    port, pki / f"{mode}.sqlite3", sim_url, exchange, [bot], guard="dedupe_window_s = 0\n"
                )
                config.write_text(text.replace("[journal]\n", server_lines(mode, pki) + "[journal]\n", 1))
                processes.append(await start_daemon(config, guardian_env(**secrets_env([exchange, bot]))))
                urls[mode] = f"{'http' if mode == 'plain' else 'https'}://127.0.0.1:{port}"
            for mode in MODES:
                await ready(urls[mode], client_ssl(mode, pki))
            results: dict[str, dict[str, list[float]]] = {}
            for policy, n in (("reuse", count), ("new", fresh)):
                bots = {
                    mode: Bot(urls[mode], bot, client_ssl(mode, pki), reuse=policy == "reuse")
                    for mode in MODES
                }
                try:
                    results[policy] = await sweep(bots, n)
                finally:
                    for each in bots.values():
                        await each.http.close()
        finally:
            for proc in processes:
                await stop(proc)
    print(f"{machine()}; load {load_average()}")
    print("sendorder through guardian, interleaved plain / TLS / mTLS, concurrency 1, journal on")
    rows = []
    for policy, times in results.items():
        base50, base99 = statistics.median(times["plain"]), quantile(times["plain"], 0.99)
        for mode in MODES:
            p50, p99 = statistics.median(times[mode]), quantile(times[mode], 0.99)
            added = "" if mode == "plain" else f"{p50 - base50:+.3f} / {p99 - base99:+.3f}"
            rows.append([policy, mode, str(len(times[mode])), f"{p50:.3f}", f"{p99:.3f}", added])
    print(markdown_table(["connection", "mode", "orders", "p50 ms", "p99 ms", "added p50 / p99 ms"], rows))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1500, help="orders per mode on a kept connection")
    parser.add_argument("--new", type=int, default=300, help="orders per mode on a new connection each")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.orders, args.new)))
