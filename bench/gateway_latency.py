"""What guardian adds to an order: `sendorder` through guardian against the same request sent straight to
the exchange simulator, interleaved in one run, one at a time, each path on its own keep-alive session.

`guardian sim` and `guardian run` are separate processes, as in production. The daemon runs with the
journal on (a file in a temporary directory), every guard limit on, and its switch armed; the direct
path signs with the account key (no nonce, so the two signers never collide), the guardian path with
a local bot key. Orders are `ioc` buys below the ask: the guard checks all limits, the exchange answers
`iocWouldNotExecute` and nothing accumulates, so every request costs the exchange the same.
Usage: .venv/bin/python bench/gateway_latency.py [--orders 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, quantile

from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret

ORDER = {"orderType": "ioc", "symbol": "PF_XBTUSD", "side": "buy", "size": 0.01, "limitPrice": 59000}


async def wait_http(url: str, timeout_s: float = 30.0) -> None:
    import aiohttp

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
                raise SystemExit(f"{url} did not become ready")
            await asyncio.sleep(0.1)


async def main(count: int) -> int:
    exchange_secret = base64.b64encode(os.urandom(64)).decode()
    exchange_key = "bench-exchange-" + os.urandom(4).hex()
    bot_secret = base64.b64encode(os.urandom(32)).decode()
    bot_key = "bench-bot-" + os.urandom(4).hex()
    sim_port, guardian_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BENCH_EXCHANGE_SECRET": exchange_secret,
        "BENCH_BOT_SECRET": bot_secret,
    }
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "sim", "--listen", f"127.0.0.1:{sim_port}", "--key", exchange_key,
        "--secret", exchange_secret, "--tick", "0", "--budget", "1000000000", "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    sim_url = f"http://127.0.0.1:{sim_port}"
    guardian_url = f"http://127.0.0.1:{guardian_port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f"""[server]
listen = "127.0.0.1:{guardian_port}"
[journal]
path = "{Path(tmp) / "journal.sqlite3"}"
[log]
level = "warning"
format = "json"
[[accounts]]
name = "bench"
base_url = "{sim_url}"
api_key = "{exchange_key}"
api_secret_env = "BENCH_EXCHANGE_SECRET"
[accounts.guard]
symbols = ["PF_XBTUSD", "PF_ETHUSD"]
max_order_size = 1
max_notional = 100000
price_band_pct = 5
rate_budget = 1000000000
dedupe_window_s = 0
[[accounts.clients]]
name = "bench-bot"
api_key = "{bot_key}"
api_secret_env = "BENCH_BOT_SECRET"
permissions = ["read", "trade"]
"""
        )
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=tmp,
        )  # fmt: skip
        try:
            await wait_http(sim_url + "/derivatives/api/v3/instruments")
            await wait_http(guardian_url + "/readyz")
            await asyncio.sleep(2.5)  # the first marks
            direct = KrakenClient(
                sim_url, Credentials(exchange_key, ApiSecret(exchange_secret)), use_nonce=False, pool_size=1
            )
            via = KrakenClient(guardian_url, Credentials(bot_key, ApiSecret(bot_secret)), pool_size=1)
            async with direct, via:
                for client in (direct, via):  # warm up the connections and the code paths
                    for _ in range(50):
                        await client.send_order(**ORDER)
                times: dict[str, list[float]] = {"direct": [], "guardian": []}
                for i in range(count * 2):
                    name, client = ("direct", direct) if i % 2 == 0 else ("guardian", via)
                    started = time.perf_counter()
                    answer = await client.send_order(**ORDER)
                    times[name].append((time.perf_counter() - started) * 1000)
                    assert answer["sendStatus"]["status"] == "iocWouldNotExecute", answer
            p50 = {k: statistics.median(v) for k, v in times.items()}
            p99 = {k: quantile(v, 0.99) for k, v in times.items()}
            print(
                f"{count} sendorder each way, interleaved, concurrency 1, journal on, {os.cpu_count()} CPUs"
            )
            for name in ("direct", "guardian"):
                print(
                    f"{name:9} p50={p50[name]:.3f} ms  p99={p99[name]:.3f} ms  max={max(times[name]):.3f} ms"
                )
            print(
                f"added by guardian: p50={p50['guardian'] - p50['direct']:.3f} ms  "
                f"p99={p99['guardian'] - p99['direct']:.3f} ms  (target: 0.5 / 2 ms)"
            )
        finally:
            for proc in (daemon, sim):
                proc.terminate()
                await proc.wait()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000, help="orders sent each way")
    sys.exit(asyncio.run(main(parser.parse_args().orders)))
