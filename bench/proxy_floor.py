"""How much of what guardian adds to an order is the price of any proxy built like it.

Up to five paths to the same `guardian sim`, interleaved request by request in one run, each on its own
keep-alive connection, concurrency 1:

- `direct`: the client signs with the exchange key and talks to the simulator;
- `bare`: the same signed request through a pass-through proxy made of the same parts as guardian (an
  aiohttp server, an aiohttp client session) and nothing else: no authentication, no checks, no journal;
- `signed`: the issue's floor. The client signs with a local bot key; the proxy verifies that signature
  (guardian's own `verify`, with a nonce), re-signs the same bytes with the exchange key and forwards:
  still no checks and no journal;
- `bare+journal`: that proxy, but it first commits an intent row with guardian's own `Journal` (the
  writer thread, WAL) and hands it the outcome afterwards, as the gateway does;
- `guardian`: `guardian run` with every limit on, the journal on, a local bot key.

The proxies run as their own processes, like guardian. `bare` minus `direct` is the floor set by two
more HTTP hops through aiohttp; `signed` minus `bare` is verifying and re-signing; `bare+journal` minus
`bare` is the price of an intent committed before the order leaves; `guardian` minus `signed` is
guardian's own work (parsing, limits, budget, journal, metrics). With both `signed` and `guardian` in the
run, the last line is the issue's goal: guardian's added p50 over the floor's (at most 1.2) and
guardian's added p99 (at most 2 ms).

Every path added to a run makes each of the others colder between its turns (more processes on the two
cores), so compare figures of one run only; `--paths direct,bare` measures one pair the way
bench/gateway_latency.py measures guardian.

`--baseline DIR` adds one more path, `baseline`: `guardian run` from another source tree (e.g. `git archive
main guardian | tar -x -C DIR`), configured the same, for a before/after measured side by side.

`--resting N` first rests N limit orders through guardian (and the baseline), so that the exposure guard
judges each order against a book (issue 20 asks for the ratio with 10 resting).

Usage: .venv/bin/python bench/proxy_floor.py [--orders 2000] [--paths direct,bare,signed,bare+journal,guardian]
    [--baseline DIR] [--resting N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    IOC_ORDER,
    Key,
    cpu_seconds,
    daemon_toml,
    free_port,
    guardian_env,
    machine,
    markdown_table,
    quantile,
    secrets_env,
    start_daemon,
    start_sim,
    stop,
    wait_http,
)
from aiohttp import web
from gateway_latency import rest_orders
from yarl import URL

from guardian.journal import Intent, Journal
from guardian.kraken.client import Credentials, KrakenClient
from guardian.kraken.signing import post_data_candidates, sign, verify
from guardian.secret import ApiSecret

PATHS = ("direct", "bare", "signed", "bare+journal", "guardian")
PASSED_HEADERS = ("APIKey", "Authent", "Nonce", "Content-Type")
# The signed proxy's keys come from the environment, never the command line.
BOT_SECRET_ENV, EXCHANGE_KEY_ENV, EXCHANGE_SECRET_ENV = (
    "FLOOR_BOT_SECRET",
    "FLOOR_EXCHANGE_KEY",
    "FLOOR_EXCHANGE_SECRET",
)


async def serve_proxy(port: int, upstream: str, journal_path: str | None, signed: bool) -> None:
    """The bare proxy: forward every request's bytes and signature headers, answer what came back. With
    `signed`, verify the bot's signature first and send the exchange key's own instead."""
    bot_key = ApiSecret(os.environ[BOT_SECRET_ENV]).key_bytes() if signed else b""
    exchange_api_key = os.environ.get(EXCHANGE_KEY_ENV, "")
    exchange_key = ApiSecret(os.environ[EXCHANGE_SECRET_ENV]).key_bytes() if signed else b""
    journal = Journal(Path(journal_path)) if journal_path else None
    if journal is not None:
        await journal.open()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    timeout = aiohttp.ClientTimeout(total=10)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        row = None
        if journal is not None:
            row = await journal.record(
                Intent(
                    account="bench",
                    bot="bench",
                    endpoint=request.match_info["name"],
                    params={"body": body.decode()},
                    verdict="forwarded",
                    received_at=time.time(),
                )
            )
        if signed:
            query, text = request.rel_url.raw_query_string, body.decode()
            if not verify(
                bot_key,
                post_data_candidates(query, text),
                request.headers.get("Nonce"),
                request.path,
                request.headers.get("Authent"),
            ):
                return web.json_response({"result": "error", "error": "authenticationError"}, status=401)
            headers = {
                "APIKey": exchange_api_key,
                "Authent": sign(exchange_key, query + text, None, request.path),
            }
            if "Content-Type" in request.headers:
                headers["Content-Type"] = request.headers["Content-Type"]
        else:
            headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
        url = URL(upstream + request.path_qs, encoded=True)
        async with session.request(
            request.method, url, data=body or None, headers=headers, timeout=timeout, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            status, content_type = answer.status, answer.content_type
        if journal is not None and row is not None:
            journal.finish(
                row, outcome="success", http_status=status, answer=None, upstream_s=None, total_s=None
            )
        return web.Response(status=status, body=payload, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/derivatives/api/v3/{name:.+}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        if journal is not None:
            await journal.close()


async def main(count: int, paths: list[str], baseline: Path | None = None, resting: int = 0) -> int:
    exchange, bot = Key.make("exchange", 64), Key.make("bot")
    sim, sim_url = await start_sim(exchange, budget=1e9)
    ports = {name: free_port() for name in (*PATHS[1:], "baseline")}
    procs: list[asyncio.subprocess.Process] = [sim]
    pids: dict[str, int] = {}  # each proxy's process, for the CPU it spends per order
    floor_env = {
        BOT_SECRET_ENV: bot.secret,
        EXCHANGE_KEY_ENV: exchange.api_key,
        EXCHANGE_SECRET_ENV: exchange.secret,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("bare", "signed", "bare+journal"):
            extra = ["--journal", str(Path(tmp) / "bare.sqlite3")] if name == "bare+journal" else []
            extra += ["--signed"] if name == "signed" else []
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--serve-proxy",
                    str(ports[name]),
                    "--upstream",
                    sim_url,
                    *extra,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=guardian_env(**(floor_env if name == "signed" else {})),
                )
            )
            pids[name] = procs[-1].pid
        config = Path(tmp) / "bench.toml"
        config.write_text(
            daemon_toml(
                ports["guardian"],
                Path(tmp) / "journal.sqlite3",
                sim_url,
                exchange,
                [bot],
                symbols=["PF_XBTUSD", "PF_ETHUSD"],
                guard="dedupe_window_s = 0\n",
            )
        )
        procs.append(await start_daemon(config, guardian_env(**secrets_env([exchange, bot]))))
        pids["guardian"] = procs[-1].pid
        if baseline is not None:
            base_dir = Path(tmp) / "baseline"
            base_dir.mkdir()
            (base_dir / "bench.toml").write_text(
                daemon_toml(
                    ports["baseline"],
                    base_dir / "journal.sqlite3",
                    sim_url,
                    exchange,
                    [bot],
                    symbols=["PF_XBTUSD", "PF_ETHUSD"],
                    guard="dedupe_window_s = 0\n",
                )
            )
            env = guardian_env(**secrets_env([exchange, bot]), PYTHONPATH=str(baseline))
            procs.append(await start_daemon(base_dir / "bench.toml", env))
            pids["baseline"] = procs[-1].pid
            paths = [*paths, "baseline"]
        try:
            await wait_http(f"http://127.0.0.1:{ports['guardian']}/readyz")
            if baseline is not None:
                await wait_http(f"http://127.0.0.1:{ports['baseline']}/readyz")
            await asyncio.sleep(2.5)  # the first marks
            exchange_credentials = Credentials(exchange.api_key, ApiSecret(exchange.secret))
            clients = {
                "direct": KrakenClient(sim_url, exchange_credentials, use_nonce=False, pool_size=1),
                "bare": KrakenClient(
                    f"http://127.0.0.1:{ports['bare']}", exchange_credentials, use_nonce=False, pool_size=1
                ),
                "signed": KrakenClient(
                    f"http://127.0.0.1:{ports['signed']}",
                    Credentials(bot.api_key, ApiSecret(bot.secret)),
                    pool_size=1,
                ),
                "bare+journal": KrakenClient(
                    f"http://127.0.0.1:{ports['bare+journal']}",
                    exchange_credentials,
                    use_nonce=False,
                    pool_size=1,
                ),
                "guardian": KrakenClient(
                    f"http://127.0.0.1:{ports['guardian']}",
                    Credentials(bot.api_key, ApiSecret(bot.secret)),
                    pool_size=1,
                ),
                "baseline": KrakenClient(
                    f"http://127.0.0.1:{ports['baseline']}",
                    Credentials(bot.api_key, ApiSecret(bot.secret)),
                    pool_size=1,
                ),
            }
            for client in clients.values():
                await client.start()
            try:
                for name in set(clients) - set(paths):
                    await clients.pop(name).close()
                for name in ("guardian", "baseline"):
                    if name in clients:
                        await rest_orders(clients[name], resting, name)
                for client in clients.values():  # warm up the connections and the code paths
                    for _ in range(50):
                        await client.send_order(**IOC_ORDER)
                times: dict[str, list[float]] = {name: [] for name in clients}
                cpu = {name: cpu_seconds(pid) for name, pid in pids.items() if name in clients}
                for _ in range(count):
                    for name, client in clients.items():
                        started = time.perf_counter()
                        answer = await client.send_order(**IOC_ORDER)
                        times[name].append((time.perf_counter() - started) * 1000)
                        assert answer["sendStatus"]["status"] == "iocWouldNotExecute", answer
                cpu = {name: (cpu_seconds(pids[name]) - used) / count for name, used in cpu.items()}
            finally:
                for client in clients.values():
                    await client.close()
        finally:
            for proc in reversed(procs):
                await stop(proc)
    p50 = {name: statistics.median(values) for name, values in times.items()}
    p99 = {name: quantile(values, 0.99) for name, values in times.items()}
    print(
        f"{count} sendorder per path, interleaved, concurrency 1, keep-alive; {resting} orders resting at "
        f"guardian's account; {machine()}\n"
    )
    rows = [
        [
            name,
            f"{p50[name]:.3f}",
            f"{p99[name]:.3f}",
            f"{p50[name] - p50['direct']:+.3f}",
            f"{p99[name] - p99['direct']:+.3f}",
            f"{cpu[name] * 1e6:.0f}" if name in cpu else "-",
        ]
        for name in times
    ]
    headers = ["path", "p50 ms", "p99 ms", "p50 added", "p99 added", "proxy CPU/order us"]
    print(markdown_table(headers, rows))
    if "signed" in times and "guardian" in times:
        ratio = (p50["guardian"] - p50["direct"]) / max(p50["signed"] - p50["direct"], 1e-9)
        print(
            f"\nguardian's added p50 / the signed floor's: {ratio:.2f} (goal: at most 1.2); "
            f"guardian's added p99: {p99['guardian'] - p99['direct']:.3f} ms (goal: at most 2 ms)"
        )
    if "signed" in times and "baseline" in times:
        ratio = (p50["baseline"] - p50["direct"]) / max(p50["signed"] - p50["direct"], 1e-9)
        print(f"the baseline's added p50 / the signed floor's: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000, help="orders sent on each path")
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="the paths to compare, comma-separated (direct is always one)",
    )
    parser.add_argument(
        "--baseline", metavar="DIR", help="also run guardian from the source tree in DIR, as `baseline`"
    )
    parser.add_argument("--resting", type=int, default=0, help="limit orders rested through guardian first")
    parser.add_argument("--serve-proxy", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    parser.add_argument("--signed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        asyncio.run(serve_proxy(args.serve_proxy, args.upstream, args.journal, args.signed))
        sys.exit(0)
    chosen = ["direct"] + [p for p in args.paths.split(",") if p != "direct"]
    unknown = set(chosen) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))} (choose from {', '.join(PATHS)})")
    baseline = Path(args.baseline).resolve() if args.baseline else None
    if args.resting and "guardian" not in chosen and baseline is None:
        parser.error("--resting rests orders through guardian: add it to --paths")
    if baseline is not None and not (baseline / "guardian" / "__main__.py").is_file():
        parser.error(f"--baseline {baseline}: no guardian source tree there (expected guardian/__main__.py)")
    sys.exit(asyncio.run(main(args.orders, chosen, baseline, args.resting)))
