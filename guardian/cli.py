"""The `guardian` command. Parses arguments, builds what was asked for, runs it, turns errors into exit
codes (78 for a bad configuration, as sysexits' EX_CONFIG). Nothing below `main()` exits the process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog

from guardian import __version__, logs, tls
from guardian.config import (
    DEFAULT_BASE_URL,
    Config,
    load_config,
    load_journal_config,
    load_status_target,
    parse_listen,
)
from guardian.errors import ConfigError
from guardian.journal import JournalError, read_journal
from guardian.keys import SetupError
from guardian.kraken.times import parse_iso
from guardian.reload import ConfigFile

FULL_COLLECTION_EVERY = 100  # collections of the middle generation per full one (Python's default: 10)
EX_OK = 0
# What was asked could not be done: an on_shutdown policy (the exchange timer was left armed), reading
# the journal.
EX_FAILED = 1
EX_USAGE = 64
EX_CONFIG = 78
# The whole ordered shutdown must end well inside systemd's and Docker's default stop timeouts (10 s).
SHUTDOWN_LIMIT_S = 9.0

log = structlog.get_logger("guardian.cli")


def _host_port(text: str) -> tuple[str, int]:
    """--listen takes what `server.listen` takes in the config file, checked by the same parser."""
    try:
        return parse_listen(text, "--listen")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. 127.0.0.1:8788 or [::1]:8788), got {text!r}"
        ) from None


_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str) -> float:
    """--since: an ISO 8601 time (UTC unless it says otherwise) or a duration ago (30s, 15m, 2h, 3d)."""
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return time.time() - float(ago[1]) * _UNIT_S[ago[2]]
    try:
        return parse_iso(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (e.g. 2026-11-21T10:00:00Z) or a duration ago (30s, 15m, 2h, 3d), "
            f"got {text!r}"
        ) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows, at least 1, got {text!r}")
    return int(text)


def _fraction(text: str) -> Decimal:
    """A decimal option (a fee, a depth): finite, written plainly."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardian", description=__doc__)
    parser.add_argument("--version", action="version", version=f"guardian {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run the built-in Kraken Futures simulator")
    sim.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8788), metavar="HOST:PORT")
    sim.add_argument("--key", help="API key the simulator accepts (generated if omitted)")
    sim.add_argument("--secret", help="its base64 API secret (generated if omitted)")
    sim.add_argument("--account", default="main", help="account name for that key")
    sim.add_argument("--seed", type=int, default=None, help="seed for the price walk")
    sim.add_argument("--tick", type=float, default=1.0, help="seconds between price steps (0: frozen)")
    sim.add_argument("--control-token", default=None, help="require this bearer token on /_sim/")
    sim.add_argument(
        "--budget",
        type=float,
        default=500.0,
        help="cost units per 10 s per account, as Kraken's (raise it for benchmarks)",
    )
    sim.add_argument(
        "--maker-fee", type=_fraction, default=Decimal("0.0002"), help="fee per maker fill, a fraction"
    )
    sim.add_argument(
        "--taker-fee", type=_fraction, default=Decimal("0.0005"), help="fee per taker fill, a fraction"
    )
    sim.add_argument(
        "--book-depth",
        type=_fraction,
        default=None,
        help="contracts per price level of the simulated book until the market moves (default: unlimited)",
    )
    sim.add_argument(
        "--instruments",
        default="default",
        choices=("default", "wide"),
        help="default: PF_XBTUSD, PF_ETHUSD, PF_SOLUSD, PI_XBTUSD, PI_ETHUSD, an FI_XBTUSD_ and an FF_XBTUSD_ "
        "fixed maturity; wide: 24 linear perpetuals, for benchmarks",
    )
    sim.add_argument("--log-level", default="info", choices=logs.LEVELS)
    sim.add_argument("--log-format", default="auto", choices=logs.FORMATS)

    run = sub.add_parser(
        "run", help="keep every account's dead man's switch armed and serve the local API (the daemon)"
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="the TOML configuration")
    source.add_argument(
        "--sim",
        action="store_true",
        help="run against the built-in simulator with a generated demo account and demo bot key",
    )
    run.add_argument(
        "--listen",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="where the local API listens (default: server.listen; with --sim 127.0.0.1:8787)",
    )
    run.add_argument("--seed", type=int, default=None, help="with --sim: seed for the price walk")
    run.add_argument("--log-level", default=None, choices=logs.LEVELS, help="overrides log.level")
    run.add_argument("--log-format", default=None, choices=logs.FORMATS, help="overrides log.format")

    check = sub.add_parser(
        "check-config", help="validate a configuration file, print a summary and every protection that is off"
    )
    check.add_argument("--config", type=Path, required=True, metavar="FILE", help="the TOML configuration")
    check.add_argument(
        "--online",
        action="store_true",
        help="also sign read-only requests to the exchange (no order, no switch call): the key, the clock, the "
        "nonce, the collateral and positions, every configured symbol, the secret files' modes",
    )
    check.add_argument(
        "--max-skew",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --online: the clock skew against the exchange that fails the check (default 1)",
    )

    notify_test = sub.add_parser(
        "notify-test", help="send one test message to each [[notify]] notifier and say which failed"
    )
    notify_test.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the TOML configuration"
    )

    journal = sub.add_parser(
        "journal", help="print the audit journal, oldest first (read-only: the daemon may keep running)"
    )
    journal.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the TOML configuration; only its [journal] table is read (no secret is needed)",
    )
    journal.add_argument("--json", action="store_true", help="one JSON object per line, every field")
    journal.add_argument(
        "--limit", type=_count, default=100, metavar="N", help="the last N rows (default 100)"
    )
    journal.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="T",
        help="only rows at or after T: ISO 8601 (2026-11-21T10:00:00Z) or a duration ago (30s, 15m, 2h, 3d)",
    )
    status_help = (
        "a running daemon's switches, links, modes, positions, orders, margin and notices; exit 0 only when "
        "every account is armed and its state fresh"
    )
    health_help = (
        "GET a running daemon's /healthz (the container's HEALTHCHECK): http or https as its configuration "
        "says, on its port; exit 0 on 200"
    )
    status = _add_target_arguments(sub.add_parser("status", help=status_help))
    status.add_argument("--json", action="store_true", help="print the state document as it is")
    health = _add_target_arguments(sub.add_parser("healthcheck", help=health_help))
    health.add_argument("--path", default="/healthz", help="the path asked (default /healthz; /readyz too)")
    _add_setup_parsers(sub)
    return parser


DEFAULT_URL = "http://127.0.0.1:8787"


def _add_target_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """How `status` and `healthcheck` find a running daemon, and speak TLS to it."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the TOML configuration: its server.listen is asked, over https when it has tls_cert_file",
    )
    where.add_argument("--url", metavar="URL", help=f"the daemon's base URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--cacert",
        type=Path,
        metavar="FILE",
        help="trust the CA in FILE for an https:// daemon (default: with --config, the daemon's own "
        "server.tls_cert_file, exactly; with --url, the system's CAs)",
    )
    parser.add_argument(
        "--cert", type=Path, metavar="FILE", help="a client certificate (PEM), for a mutual-TLS daemon"
    )
    parser.add_argument("--key", type=Path, metavar="FILE", help="its key, when not in the --cert file")
    return parser


async def _ask(args: argparse.Namespace, path: str) -> tuple[str, int, bytes] | str:
    """GET `path` of the daemon `args` name: (its base URL, the status, the body), or why there is no
    answer (a line for stderr)."""
    import aiohttp

    pinned, mutual = None, False
    if args.config is not None:
        target = load_status_target(args.config)
        base, pinned, mutual = target.url, target.tls_cert_file, target.mutual
    else:
        base = (args.url or DEFAULT_URL).rstrip("/")
    context = None
    if base.startswith("https://"):
        try:
            context = tls.status_client_context(
                pinned=pinned, cafile=args.cacert, cert=args.cert, key=args.key
            )
        except tls.TlsError as exc:
            return str(exc)
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5), connector=aiohttp.TCPConnector(ssl=context or True)
            ) as http,
            http.get(base + path) as response,
        ):
            return base, response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        hint = _status_hint(exc, base, pinned=pinned, mutual=mutual, given_cert=args.cert is not None)
        return f"no answer from {base} ({type(exc).__name__}: {exc}){hint}"


async def _status(args: argparse.Namespace) -> int:
    from guardian.status import render

    answer = await _ask(args, "/guardian/state")
    if isinstance(answer, str):
        print(f"guardian status: {answer}", file=sys.stderr)
        return EX_FAILED
    base, code, body = answer
    if code != 200:
        print(f"guardian status: {base} answered HTTP {code}", file=sys.stderr)
        return EX_FAILED
    try:
        state = json.loads(body)
    except ValueError:
        print(f"guardian status: {base} answered something that is not JSON", file=sys.stderr)
        return EX_FAILED
    text, ok = render(state)
    print(json.dumps(state, indent=2) if args.json else text)
    return EX_OK if ok else EX_FAILED


async def _healthcheck(args: argparse.Namespace) -> int:
    path = "/" + args.path.lstrip("/")
    answer = await _ask(args, path)
    if isinstance(answer, str):
        print(f"guardian healthcheck: {answer}", file=sys.stderr)
        return EX_FAILED
    base, code, body = answer
    said = body[:200].decode("utf-8", "replace").strip()
    print(f"{base}{path}: HTTP {code} {said}", file=sys.stdout if code == 200 else sys.stderr)
    return EX_OK if code == 200 else EX_FAILED


def _status_hint(
    exc: BaseException, base: str, *, pinned: Path | None, mutual: bool, given_cert: bool
) -> str:
    """What to do about a failed `guardian status` over TLS, when the failure says."""
    import aiohttp

    if not base.startswith("https://"):
        return ""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        if pinned is not None:
            return f": the daemon's certificate is not the one in {pinned} (server.tls_cert_file)"
        return ": give the CA that signed its certificate with --cacert"
    if given_cert:
        return ""
    if mutual:
        return ": it asks for a client certificate (server.tls_client_ca_file): give --cert and --key"
    return ": if it asks for a client certificate (mutual TLS), give --cert and --key"


async def _check_config(args: argparse.Namespace) -> int:
    files: list[tuple[str, Path]] = []
    config = load_config(args.config, secret_files=files)
    logs.REDACTOR.register(config.all_secrets())
    print(f"{args.config}: valid")
    print(config.summary())
    for line in tls.describe(config.server):
        print(line)
    for warning in config.warnings():
        print(f"warning: {warning}")
    if not args.online:
        return EX_OK
    from guardian import online

    print(f"online checks (read-only: no order, no switch call; clock skew allowed {args.max_skew:g} s):")
    checks = await online.online_checks(config, files, max_skew_s=args.max_skew)
    for check in checks:
        print(logs.REDACTOR.scrub(check.line()))
    code = online.exit_code(checks)
    failed = sum(1 for check in checks if not check.ok)
    summary = f"{len(checks)} checks, {failed} failed" + (f" (exit {code})" if failed else "")
    print(f"guardian check-config --online: {summary}", file=sys.stderr if failed else sys.stdout)
    return code


async def _notify_test(args: argparse.Namespace) -> int:
    from guardian.push import send_tests

    config = load_config(args.config)
    logs.REDACTOR.register(config.all_secrets())
    if not config.notify:
        print(
            f"guardian notify-test: {args.config} has no [[notify]] table: nothing to test", file=sys.stderr
        )
        return EX_FAILED
    results = await send_tests(config.notify)
    for result in results:
        outcome = "sent" if result.problem is None else f"FAILED: {result.problem}"
        print(logs.REDACTOR.scrub(f"notify {result.name} ({result.kind}): {outcome}"))
    failed = [result.name for result in results if result.problem is not None]
    if failed:
        print(f"guardian notify-test: failed: {', '.join(failed)}", file=sys.stderr)
    return EX_FAILED if failed else EX_OK


async def _show_journal(args: argparse.Namespace) -> int:
    config = load_journal_config(args.config)
    rows = read_journal(config.path, since=args.since, limit=args.limit)
    try:
        for row in rows:
            print(
                json.dumps(row, separators=(",", ":"), ensure_ascii=False)
                if args.json
                else _journal_line(row)
            )
        sys.stdout.flush()
    except BrokenPipeError:  # `guardian journal ... | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EX_OK


def _journal_line(row: Mapping[str, Any]) -> str:
    """One readable line: time, type, account, bot, endpoint (or event kind), verdict, reason, outcome."""

    def shown(value: object) -> str:
        return "-" if value is None else str(value)

    if row["type"] == "event":
        detail = json.dumps(row["detail"], separators=(",", ":"), ensure_ascii=False)
        fields = [row["time"], f"event #{row['id']}", shown(row["account"]), "-", row["kind"], detail]
        return "  ".join(fields)
    timings = [
        f"{name} {row[key] * 1000:.1f} ms"
        for name, key in (("upstream", "upstream_s"), ("total", "total_s"))
        if row[key] is not None
    ]
    fields = [
        row["time"],
        f"request #{row['id']}",
        shown(row["account"]),
        shown(row["bot"]),
        row["endpoint"],
        row["verdict"],
        shown(row["reason"]),
        row["outcome"],
        f"http {shown(row['http_status'])}",
        ", ".join(timings) or "-",
    ]
    return "  ".join(fields)


async def _run_sim(args: argparse.Namespace) -> int:
    from guardian.secret import ApiSecret
    from guardian.sim.app import SimKey, Simulator
    from guardian.sim.market import INSTRUMENT_SETS, Market

    if (args.key is None) != (args.secret is None):
        raise ConfigError("--key and --secret go together (or leave both out to generate a pair)")
    if args.key is not None:
        key = SimKey(args.key, ApiSecret(args.secret, name="--secret"), account=args.account)
    else:
        key = SimKey.generate(account=args.account)
    logs.REDACTOR.register([key.secret])
    if args.budget <= 0:
        raise ConfigError("--budget must be positive")
    if not 0 <= args.taker_fee < 1 or not -1 < args.maker_fee < 1:
        raise ConfigError("--maker-fee and --taker-fee are fractions (0.0005 is 0.05%)")
    if args.book_depth is not None and args.book_depth <= 0:
        raise ConfigError("--book-depth must be positive")
    sim = Simulator(
        [key],
        market=Market(instruments=INSTRUMENT_SETS[args.instruments], seed=args.seed),
        tick_s=args.tick or None,
        control_token=args.control_token,
        budget_capacity=args.budget,
        maker_fee=args.maker_fee,
        taker_fee=args.taker_fee,
        book_depth=args.book_depth,
    )
    host, port = args.listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    url = await sim.start(host, port)
    try:
        if args.key is None:
            print(f"sim api_key={key.api_key} api_secret={key.secret.reveal()}", flush=True)
        print(f"sim base_url={url}", flush=True)
        print(f"sim ws_url={sim.ws_url}", flush=True)
        await stop.wait()
    finally:
        await sim.close()
    return EX_OK


async def _run(args: argparse.Namespace) -> int:
    from guardian.demo import Demo, how_to, start_demo
    from guardian.service import Service

    demo: Demo | None = None
    config: Config
    source: ConfigFile | None = None
    digest: str | None = None
    if args.sim:
        host, port = args.listen or ("127.0.0.1", 8787)
        demo = await start_demo(host, port, seed=args.seed)
        config = demo.config
        logs.REDACTOR.register(demo.secrets())
    else:
        source = ConfigFile(Path(args.config), args.listen)
        config, digest = source.load()
        logs.REDACTOR.register(config.all_secrets())
    logs.configure(args.log_level or config.log.level, args.log_format or config.log.format)
    for warning in config.warnings():
        log.warning("config_warning", warning=warning)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("signal_ignored", signal=name, reason="already stopping")
            return
        log.info("signal_received", signal=name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signal.Signals(signum).name)

    service = Service(config, source=source, config_hash=digest)
    reloads: set[asyncio.Task[Any]] = set()

    def on_hangup() -> None:
        """SIGHUP (`systemctl reload`, log rotation scripts): re-read the configuration; never a stop."""
        if stop.is_set():
            log.warning("signal_ignored", signal="SIGHUP", reason="already stopping")
            return
        log.info("signal_received", signal="SIGHUP")
        task = asyncio.create_task(service.reload("SIGHUP"), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            await service.start()
            # A full garbage collection walks every object and holds the event loop meanwhile (100-180 ms
            # with 10,000 orders resting, bench/many_accounts.py). Everything made so far (modules,
            # configuration, clients: most of the heap at start) lives as long as the daemon: frozen out
            # of the collector's reach. And a full collection runs after 100 young-generation ones, not
            # 10: cycles in long-lived objects (rare here: reference counting frees the rest) wait longer.
            gc.collect()
            gc.freeze()
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        except OSError:
            await service.stop()
            raise
        if demo is not None:
            bot = demo.bot
            print(f"demo bot api_key={bot.api_key} api_secret={bot.api_secret.reveal()}", flush=True)
            print(how_to(demo, service.url), flush=True)
        await stop.wait()
        try:
            async with asyncio.timeout(SHUTDOWN_LIMIT_S):
                done = await service.stop()
        except TimeoutError:
            log.error("shutdown_overran", limit_s=SHUTDOWN_LIMIT_S)
            done = False
    finally:
        if demo is not None:
            await demo.close()
    return EX_OK if done else EX_FAILED


# ---- guardian init, guardian keys: a configuration and bots' keys without hand-editing --------------------


def _bots(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of bots, got {text!r}")
    return int(text)


def _add_setup_parsers(sub: Any) -> None:
    init = sub.add_parser(
        "init",
        help="write a working configuration for a real account: config.toml with low limits, its credentials "
        "(mode 0600) and bots' keys; nothing that exists is overwritten",
    )
    init.add_argument(
        "--dir",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="where config.toml and credentials/ go (default .)",
    )
    init.add_argument("--account", default="main", metavar="NAME", help="the account's name (default main)")
    init.add_argument("--bots", type=_bots, default=1, metavar="N", help="bot keys to generate (default 1)")
    init.add_argument("--api-key-file", type=Path, metavar="FILE", help="a file holding the exchange API key")
    init.add_argument("--api-secret-file", type=Path, metavar="FILE", help="a file holding its secret")
    init.add_argument(
        "--non-interactive",
        action="store_true",
        help="never prompt (else the key and secret not given as files are asked for, without echo)",
    )
    init.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"the exchange (default {DEFAULT_BASE_URL})",
    )
    init.add_argument(
        "--symbols", default="PF_XBTUSD,PF_ETHUSD", metavar="S,S", help="the only symbols bots may trade"
    )
    init.add_argument(
        "--permissions", default="read,trade", help="the bots' permissions (read,trade,settings)"
    )
    init.add_argument(
        "--listen", type=_host_port, default=("127.0.0.1", 8787), metavar="HOST:PORT", help="server.listen"
    )

    keys = sub.add_parser(
        "keys",
        help="list, add, rotate or revoke bots' keys in a configuration, keeping its comments and layout",
    )
    keys.add_argument("action", choices=("list", "add", "rotate", "revoke"))
    keys.add_argument("--config", type=Path, required=True, metavar="FILE", help="the TOML configuration")
    keys.add_argument("--account", metavar="NAME", help="the account (needed when the file has several)")
    keys.add_argument("--bot", metavar="NAME", help="the bot (needed by add, rotate and revoke)")
    keys.add_argument(
        "--permissions", default=None, help="add: the new bot's permissions (default read,trade)"
    )
    keys.add_argument("--key", metavar="API_KEY", help="revoke: the key to remove (default the bot's oldest)")


async def _init(args: argparse.Namespace) -> int:
    from guardian import init
    from guardian.keys import parse_permissions

    account, base_url = init.check_name(args.account), init.check_base_url(args.base_url)
    init.check_bots(args.bots)  # every argument checked before the key is asked for
    symbols, permissions = init.parse_symbols(args.symbols), parse_permissions(args.permissions)
    api_key, api_secret = init.exchange_key(
        args.api_key_file, args.api_secret_file, interactive=not args.non_interactive
    )
    logs.REDACTOR.register([api_secret])
    options = init.InitOptions(
        args.dir, account, args.bots, base_url, api_key, api_secret, symbols, permissions, args.listen
    )
    print(init.report(init.initialise(options)), flush=True)
    return EX_OK


async def _keys(args: argparse.Namespace) -> int:
    from guardian import config_edit
    from guardian.keys import DEFAULT_PERMISSIONS, UsageError, parse_permissions

    if args.key is not None and args.action != "revoke":
        raise UsageError("--key names the key to revoke: it goes with guardian keys revoke")
    if args.permissions is not None and args.action != "add":
        raise UsageError(
            "--permissions goes with guardian keys add (a rotated key keeps the bot's permissions)"
        )
    if args.action == "list":
        for line in config_edit.iter_lines(
            config_edit.list_keys(args.config, account=args.account, bot=args.bot)
        ):
            print(line)
        return EX_OK
    if args.bot is None:
        raise UsageError(f"guardian keys {args.action} needs --bot NAME")
    permissions = parse_permissions(args.permissions or ",".join(DEFAULT_PERMISSIONS))

    def waiting() -> None:
        print(
            f"guardian keys: waiting for another edit of {args.config} to finish", file=sys.stderr, flush=True
        )

    editor = config_edit.KeyEditor(args.config, on_wait=waiting)  # waits while another edit is made
    try:
        logs.REDACTOR.register(editor.before.all_secrets())
        if args.action == "add":
            change = editor.add(args.account, args.bot, permissions)
        elif args.action == "rotate":
            change = editor.rotate(args.account, args.bot)
        else:
            change = editor.revoke(args.account, args.bot, args.key)
        if change.made is not None:
            logs.REDACTOR.register([change.made.api_secret])
        editor.commit()
    finally:
        editor.close()
    print(config_edit.describe(change, args.config, args.account), flush=True)
    return EX_OK


COMMANDS = {
    "sim": _run_sim,
    "run": _run,
    "check-config": _check_config,
    "notify-test": _notify_test,
    "journal": _show_journal,
    "status": _status,
    "healthcheck": _healthcheck,
    "init": _init,
    "keys": _keys,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.configure(
            getattr(args, "log_level", None) or "info", getattr(args, "log_format", None) or "auto"
        )
        return asyncio.run(COMMANDS[args.command](args))
    except SetupError as exc:
        print(f"guardian {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"guardian: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except JournalError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return EX_FAILED
    except OSError as exc:
        print(f"guardian: {exc}", file=sys.stderr)
        return 1
