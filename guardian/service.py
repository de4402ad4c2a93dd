"""The daemon behind `guardian run`: every account's switch, the local HTTP server, the service manager.

Start order: bind the local server first (a busy port fails before anything touches the exchange), then
start each account's switch. `READY=1` goes to systemd once the server listens and every switch is
armed. Stop order (SIGTERM/SIGINT): `STOPPING=1`, readiness drops, the server stops accepting and gives
in-flight requests `SHUTDOWN_GRACE_S` to finish, the switch beats end, then each account's `on_shutdown`
runs (keep, disarm, or cancel then disarm) as the very last calls to the exchange, all within 10 s.
The push notifiers (`[[notify]]`) hear of the stop as it begins; at its end their last messages get
`NOTIFY_FLUSH_S` to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from guardian import __version__, conns, logs, tls
from guardian.account import Account, Mode, bot_mode_key
from guardian.config import Config, ServerConfig, host_port
from guardian.errors import ConfigError
from guardian.gateway import exposure
from guardian.gateway.admin import Admin, AdminError
from guardian.gateway.app import Gateway, Trail
from guardian.gateway.auth import LocalKeys
from guardian.gateway.halt import Halts
from guardian.gateway.trips import Trips
from guardian.journal import Journal, JournalError
from guardian.kraken.times import to_iso
from guardian.loopwatch import LoopWatch
from guardian.metrics import Metrics
from guardian.notify import Notifier
from guardian.push import Pushes
from guardian.push.watch import Watch
from guardian.recent import Recent
from guardian.relay.fanout import AccountFeeds, PublicFeeds
from guardian.relay.server import Relay
from guardian.reload import ConfigFile, ReloadOutcome, changed_in_place, restart_only
from guardian.server import Runner
from guardian.stream.account import OWNERS_LOOKBACK_S, PLACING, AccountStream, placed_ids
from guardian.stream.account import state_json as stream_json
from guardian.stream.link import TickerLink
from guardian.stream.maintenance import MaintenancePolicy
from guardian.stream.settle import settle_unknown
from guardian.stream.state import Event, Fill, Settlement
from guardian.switch import Switch, SwitchState
from guardian.switchloop import SwitchLoop

log = structlog.get_logger("guardian.service")

SHUTDOWN_GRACE_S = 3.0  # in-flight local requests get this long to finish
SHUTDOWN_ACTION_S = 4.0  # each account's on_shutdown calls together (accounts run in parallel)
STREAMS_STOP_S = 2.0  # the links' close handshakes, all at once
REPORT_INTERVAL_S = 0.25  # how often state changes are looked for (logs, STATUS=, READY=)
JOURNAL_PROBE_S = 5.0  # while the journal cannot be written, how often a small write tries it again
INSTRUMENTS_WAIT_S = 5.0  # at start, the streams wait this long at most for the contracts' first read
NOTIFY_FLUSH_S = 2.0  # at the end of the stop, the notifiers' last messages get this long to leave

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")


class Service:
    """`await start()`, then `await stop()`; `run(stop_event)` does both around a wait."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        source: ConfigFile | None = None,
        config_hash: str | None = None,
    ) -> None:
        self.config = config
        # Where a reload reads the configuration again (None: started without a file, e.g. --sim), and the
        # identity and time of the configuration in force.
        self.source = source
        self.config_hash = config_hash
        self.config_loaded_at = time.time()
        self.last_reload: ReloadOutcome | None = None
        self._reload_lock = asyncio.Lock()
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(self.switches, accounts=lambda: self.accounts)
        # Push notifications: their own queues, tasks and HTTP session; telling never waits.
        self.pushes = Pushes(config.notify, observer=self.metrics)
        self.metrics.config_loaded.set(self.config_loaded_at)
        for pusher in config.notify:
            self.metrics.add_notifier(pusher.name)
        self._wake = asyncio.Event()
        # Every account's switch beats on a loop of its own (a thread): no work of this loop delays it; it
        # stops refreshing if this loop stops turning (the loop watch says when it last did).
        self.loop_watch = LoopWatch(on_lag=self.metrics.on_loop_lag)
        self.switch_loop = SwitchLoop()
        self.switch_loop.main_turned = lambda: self.loop_watch.last_wake
        self.accounts = [
            Account(
                account,
                on_refresh=self._on_refresh,
                on_beat=self.metrics.on_beat,
                switch_loop=self.switch_loop,
            )
            for account in config.accounts
        ]
        for account in self.accounts:
            self.metrics.add_account(account.name)
        # Each account's last refusals, trips and kills, for /guardian/state (bounded, in memory).
        self.recent = {a.name: Recent(c.name for c in a.config.clients) for a in self.accounts}
        self.journal = Journal(
            config.journal.path,
            retention_days=config.journal.retention_days,
            loop_commits=config.journal.commit_on_loop,
        )
        self.metrics.watch_journal(lambda: self.journal.healthy)
        self.gateway = Gateway(
            self.accounts,
            LocalKeys(config.accounts),
            self.journal,
            observe=self._observe,
            server=config.server,
        )
        self.halts = Halts(self.journal)  # the kill's follow-up watches, and the trips'
        self.trips = Trips(self.journal, self.halts, on_trip=self._on_trip)
        # Each account's picture of itself (its private WebSocket, reconciled with REST), and one public
        # ticker link per exchange URL, shared by the accounts on it.
        self.streams = [self._stream(account) for account in self.accounts]
        self.watch = Watch(self.pushes, self.accounts, lambda: self.url)  # what the notifiers are told
        self.metrics.watch_streams(lambda: self.streams)
        self.metrics.watch_limits(self.limit_records)
        self.tickers = self._ticker_links()
        self.maintenance = [MaintenancePolicy(account, self.journal) for account in self.accounts]
        self.relay = self._relay()
        self.relay.on_source_refused = self.metrics.on_source_refused
        # The local server's connections: caps, the request deadline, accept errors (guardian.conns).
        self.gate = conns.Gate(config.server, self.metrics.registry)
        # TLS (guardian.tls): the live context is made by start(); the subject check reads each bot's own
        # configuration at request time, so a reload's new one counts at once.
        self.tls: tls.ServerTls | None = None
        self.tls_subjects = tls.SubjectCheck(self.metrics.on_tls_subject_mismatch)
        self.gateway.tls_subjects = self.relay.tls_subjects = self.tls_subjects
        self.metrics.watch_tls(lambda: None if self.tls is None else self.tls.info, _bound(config))
        self._ws_session: aiohttp.ClientSession | None = None
        self._stream_tasks: list[asyncio.Task[None]] = []
        self.url = ""
        self.started_at: float | None = None
        self.ready_sent = False
        self.stopping = False
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_states: dict[str, SwitchState] = {}
        self._probe_at = 0.0  # monotonic time of the next journal probe, while it cannot be written
        self._rearms_seen: dict[str, int] = {}  # rearms_after_expiry at the reporter's last look
        self.app = self._build_app()

    def _stream(self, account: Account) -> AccountStream:
        stream = AccountStream(
            account.config,
            account.gateway_client,
            self.journal,
            budget=account.budget,
            reserve=lambda: account.switch_reserve + account.bot_reserve,
            on_drift=lambda kind, _detail: self.metrics.on_drift(account.name, kind),
            on_fill=lambda fill: self.metrics.on_fill(account.name, fill),
            on_events=lambda events: self._stream_events(account, events),
            contracts=account.instruments.contract,
            rate=account.rate,
            observer=account.exposure.ledger,
            on_learned=account.exposure.ledger.learned,
        )
        account.exposure.ledger.owner = stream.owner
        account.instruments.listeners.append(stream.state.contracts_changed)
        account.stream = stream
        return stream

    def _stream_events(self, account: Account, events: list[Event]) -> None:
        account.exposure.observe(events)
        self.trips.on_events(account, events)
        if any(isinstance(e, Fill | Settlement) for e in events):
            self.trips.check_loss(account)

    def _ticker_links(self) -> list[TickerLink]:
        """One public ticker link per exchange WebSocket URL, for the symbols in use by its accounts."""
        by_url: dict[str, list[Account]] = {}
        for account in self.accounts:
            if account.config.stream.enabled:
                by_url.setdefault(account.config.ws_url, []).append(account)
        links = []
        for url, group in by_url.items():

            def symbols(group: list[Account] = group) -> set[str]:
                wanted: set[str] = set()
                for account in group:
                    marks = account.marks
                    configured = set(account.config.guard.symbols or ())
                    held = account.stream.state.position_symbols() if account.stream else set()
                    wanted |= (marks.wanted | configured | held) & marks.known
                return wanted

            def push(message: Mapping[str, Any], group: list[Account] = group) -> None:
                if message.get("feed") == "ticker":
                    for account in group:
                        account.marks.push(message)

            link = TickerLink(
                url,
                url,
                symbols,
                link_timeout_s=min(a.config.stream.link_timeout_s for a in group),
                liveness_timeout_s=min(a.config.stream.liveness_timeout_s for a in group),
                on_message=push,
            )
            for account in group:
                account.marks.stream_up = lambda link=link: link.up  # type: ignore[misc]
            links.append(link)
        return links

    def _relay(self) -> Relay:
        """Bots' ws/v1: each account's private feeds from its stream, public ones from its exchange's link
        (products checked against what that exchange lists, so no bot's typo reaches the shared link)."""
        private = {s.name: AccountFeeds(s) for s in self.streams if s.enabled}
        public: dict[str, PublicFeeds] = {}
        for link in self.tickers:
            group = [a for a in self.accounts if a.config.stream.enabled and a.config.ws_url == link.url]

            def known(group: list[Account] = group) -> set[str]:
                return set().union(*(account.marks.known for account in group))

            feeds = PublicFeeds(link, known)
            public.update({account.name: feeds for account in group})
        return Relay(self.config, private, public, self.metrics.registry, on_dropped=self.watch.relay_dropped)

    def _on_refresh(self, switch: Switch, outcome: str, duration_s: float) -> None:
        self.metrics.on_refresh(switch, outcome, duration_s)
        self._wake.set()  # the reporter looks at once: READY=1 right after the first arming

    def switches(self) -> Iterable[Switch]:
        return [account.switch for account in self.accounts]

    def account(self, name: str) -> Account | None:
        return next((account for account in self.accounts if account.name == name), None)

    # ---- the local server ---------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        from guardian import ops, statuspage

        app = web.Application(client_max_size=64 * 1024)
        app[SERVICE_KEY] = self
        app.add_routes(ops.routes())
        app.add_routes(statuspage.routes())
        app.add_routes(self.gateway.routes())
        app.add_routes(self.relay.routes())
        token = self.config.server.admin_token
        if token is not None:
            accounts = {account.name: account for account in self.accounts}
            admin = _TellingAdmin(
                token,
                accounts,
                self.journal,
                self.halts,
                self.trips,
                told=self._admin_acted,
                reload=self.reload,
            )
            app.add_routes(admin.routes())
        return app

    def _observe(self, trail: Trail, total_s: float) -> None:
        self.metrics.on_request(
            trail.account, trail.endpoint, trail.outcome, trail.reason, total_s, trail.upstream_s
        )
        if trail.reason == conns.SOURCE_REFUSED and trail.bot is not None:
            self.metrics.on_source_refused(trail.account, trail.bot)
        recent = self.recent.get(trail.account)
        if trail.outcome == "refused" and trail.reason is not None and recent is not None:
            symbol = trail.params.get("symbol")
            recent.refused(
                trail.bot,
                trail.endpoint,
                trail.reason,
                trail.message or "",
                symbol if isinstance(symbol, str) else None,
            )

    def _admin_acted(
        self, action: str, status: int, doc: Mapping[str, Any], answer: Mapping[str, Any]
    ) -> None:
        recent = self.recent.get(str(answer.get("account")))
        if action == "kill" and recent is not None:
            bot = answer.get("bot")
            reason = "By a person (POST /guardian/kill)" + (
                "" if status < 300 else "; a cancel failed: see the log"
            )
            recent.stopped("kill", reason, str(answer.get("mode")), bot=bot if isinstance(bot, str) else None)
        self.watch.admin_acted(action, status, doc, answer)

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        # TlsError (exit 78) before anything is opened; a handshake the server ends is counted by the gate.
        self.tls = tls.ServerTls.of(self.config.server, self.gate.tls_handshake_failed)
        await self.journal.open()  # JournalError: nothing else starts without an audit trail
        modes = self.journal.modes()
        for account in self.accounts:
            stored = modes.get(account.name, Mode.ACTIVE.value)
            try:
                account.mode = Mode(stored)
            except ValueError:
                log.error("mode_unreadable", account=account.name, stored=stored, now="halted")
                account.mode = Mode.HALTED
            if account.mode is not Mode.ACTIVE:
                log.warning("mode_restored", account=account.name, mode=account.mode.value)
            self.trips.restore(account, self.journal.mode_rows().get(account.name))
            _restore_bot_modes(account, (client.name for client in account.config.clients), modes)
        server = self.config.server
        # The file limit raised, and bots' connections capped below it: the exchange's keep their room.
        self.gate.fit(
            conns.raise_file_limit(), conns.reserve_fds(len(self.accounts), len(self.config.notify))
        )
        self.gate.watch_accepts(asyncio.get_running_loop())
        self._runner = Runner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            keepalive_timeout=server.keepalive_timeout_s,
            gate=self.gate,
        )
        await self._runner.setup()
        try:
            context = None if self.tls is None else self.tls.context
            await web.TCPSite(
                self._runner, server.host, server.port, ssl_context=context, backlog=conns.LISTEN_BACKLOG
            ).start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            self.gate.close()
            await self.journal.close()
            raise
        host, port = self._runner.addresses[0][:2]
        scheme = "http" if self.tls is None else "https"
        self.url = f"{scheme}://{host_port(host, port)}"
        self.started_at = time.time()
        await self.pushes.start()
        log.info(
            "guardian_listening",
            url=self.url,
            version=__version__,
            accounts=[account.name for account in self.accounts],
        )
        self._log_tls()
        self._tasks = [asyncio.create_task(self.loop_watch.run(), name="loop-watch")]
        self.loop_watch.last_wake = time.monotonic()
        await self._record_start()
        self.switch_loop.start()
        for account in self.accounts:
            await account.start()
        self._tasks += [
            asyncio.create_task(self._report(), name="report"),
            asyncio.create_task(self.notifier.run_watchdog(self.healthy), name="watchdog"),
            asyncio.create_task(self.relay.run(), name="relay"),
        ]
        await self._start_streams()
        self.watch.started(__version__)

    async def _start_streams(self) -> None:
        """Today's fills from the journal (so a restart does not reset the day), then the links (once the
        contracts have been read, or `INSTRUMENTS_WAIT_S` has passed: fills are valued by them)."""
        await asyncio.gather(*(a.instruments.wait_loaded(INSTRUMENTS_WAIT_S) for a in self.accounts))
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        for stream in self.streams:
            if stream.enabled:
                try:
                    stream.state.restore_day(await self.journal.events_since("fill", stream.name, midnight))
                    stream.state.restore_settlements(
                        await self.journal.events_since("settlement", stream.name, midnight)
                    )
                    account = self.account(stream.name)
                    for lift in await self.journal.events_since("trip_lifted", stream.name, midnight):
                        if account is not None:
                            self.trips.restore_lift(account, str(lift.get("limit")), midnight)
                    since = time.time() - OWNERS_LOOKBACK_S
                    for row in await self.journal.answered_since(stream.name, since, PLACING):
                        stream.placed(row["bot"], placed_ids(row["answer"] or {}, row["params"] or {}))
                except JournalError as exc:
                    log.error("account_state_not_restored", account=stream.name, error=str(exc))
        started = time.time()
        for account in self.accounts:  # what the last run left unknown, asked of the exchange once
            self._stream_tasks.append(
                self._supervised(
                    settle_unknown(
                        account.name,
                        account.gateway_client,
                        self.journal,
                        account.budget,
                        account.switch_reserve + account.bot_reserve,
                        delay_s=account.config.guard.upstream_timeout_s,
                        before=started,
                    ),
                    f"settle-{account.name}",
                )
            )
        if not any(stream.enabled for stream in self.streams):
            return
        self._ws_session = aiohttp.ClientSession()
        for stream in self.streams:
            if stream.enabled:
                self._stream_tasks.append(
                    self._supervised(stream.run(self._ws_session), f"stream-{stream.name}")
                )
        for link in self.tickers:
            self._stream_tasks.append(self._supervised(link.run(self._ws_session), f"ticker-{link.url}"))

    def _supervised(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[None]:
        """A stream task: it runs until cancelled; if a bug ends it, that is logged loudly."""

        async def supervise() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream_task_failed", task=name)
                raise

        return asyncio.create_task(supervise(), name=name)

    async def _stop_streams(self) -> None:
        """Every link closes at once (each waits at most a second for the exchange's close answer)."""
        for task in self._stream_tasks:
            task.cancel()
        if self._stream_tasks:
            _, pending = await asyncio.wait(self._stream_tasks, timeout=STREAMS_STOP_S)
            if pending:
                log.warning("stream_tasks_not_stopped", count=len(pending))
            for task in self._stream_tasks:  # collected: a failure was logged when it happened
                if task.done() and not task.cancelled():
                    task.exception()
        self._stream_tasks = []
        for stream in self.streams:
            await stream.settle()
        if self._ws_session is not None:
            await self._ws_session.close()
            self._ws_session = None

    async def run(self, stop: asyncio.Event) -> bool:
        """Start, wait for `stop`, stop. True if every account's shutdown policy was carried out."""
        await self.start()
        try:
            await stop.wait()
        finally:
            done = await self.stop()
        return done

    async def stop(self) -> bool:
        """The ordered shutdown. Safe to call once; the second call returns at once."""
        if self.stopping:
            return True
        self.stopping = True
        self.notifier.stopping("stopping: finishing requests, then " + self._policies())
        log.info("guardian_stopping", policies=self._policies())
        self.watch.stopping(self._policies())
        await self.relay.close()  # bots' ws/v1 sockets would hold the server's shutdown
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, waits SHUTDOWN_GRACE_S for in-flight ones
            self._runner = None
        self.gate.close()
        # A kill's follow-up cancels are about money: they finish (bounded) before the clients close.
        await self.halts.drain(SHUTDOWN_ACTION_S)
        await self.trips.drain(SHUTDOWN_ACTION_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_streams()
        for account in self.accounts:
            await account.stop_switch()
        started = [account for account in self.accounts if account.task is not None]
        results = await asyncio.gather(
            *(
                account.apply_shutdown(account.config.switch.on_shutdown, SHUTDOWN_ACTION_S)
                for account in started
            )
        )
        for account in self.accounts:
            await account.close()
        await self.switch_loop.stop()
        try:
            await self.journal.close()
        except JournalError as exc:  # the policies are done; what the journal lost is said, loudly
            log.error("journal_close_failed", error=str(exc))
        await self.pushes.close(NOTIFY_FLUSH_S)  # they have been leaving meanwhile: the last ones, bounded
        self.notifier.close()
        log.info("guardian_stopped", policies_carried_out=all(results))
        return all(results)

    def _policies(self) -> str:
        return ", ".join(f"{a.name}: {a.config.switch.on_shutdown.value}" for a in self.accounts)

    # ---- what the endpoints and the service manager are told ----------------------------------------
    def healthy(self) -> bool:
        return not self.health_problems()

    def health_problems(self) -> list[str]:
        """Empty while the loop runs (it answered) and every switch task is alive."""
        return [
            f"{account.name}: the switch task has stopped ({account.death()})"
            for account in self.accounts
            if not account.alive
        ]

    def readiness_problems(self) -> list[str]:
        """Empty only when every account's switch is armed."""
        if self.stopping:
            return ["guardian is shutting down"]
        problems = []
        if not self.journal.healthy:
            problems.append(f"journal: cannot write ({self.journal.last_error}); no new risk goes out")
        for account in self.accounts:
            switch = account.switch
            state = switch.state
            if state is not SwitchState.ARMED:
                why = f" ({switch.last_error})" if switch.last_error else ""
                problems.append(f"{account.name}: switch {state.value}{why}")
        return problems

    def state_json(self, *, orders: int = 0) -> dict[str, object]:
        """`/guardian/state`. Counts and totals whatever the book's size; `orders` > 0 lists that many open
        orders per account too (the first guardian knows)."""
        return {
            "version": __version__,
            "started_at": None if self.started_at is None else to_iso(self.started_at),
            "ready": not self.readiness_problems(),
            "stopping": self.stopping,
            "journal": {
                "path": str(self.config.journal.path),
                "healthy": self.journal.healthy,
                "last_error": self.journal.last_error,
            },
            "accounts": [
                {
                    **account.as_json(),
                    **(stream_json(account.stream, orders=orders) if account.stream else {}),
                    **self.limits_json(account),
                    **self.recent[account.name].as_json(),
                }
                for account in self.accounts
            ],
            "relay": self.relay.state_json(),
            "server": tls.state_json(self.config.server, self.tls),
            "event_loop": {"longest_stall_s": round(self.loop_watch.longest_s, 4)},
            "notify": self.pushes.state_json(),
            "config": self.config_json(),
        }

    # ---- reload ------------------------------------------------------------------------------------
    def reload_tls(self, server: ServerConfig | None = None) -> tls.CertInfo | None:
        """Read the TLS certificate and key again (from `server`'s paths, if given) into the live context:
        new handshakes use them. None while TLS is off; `TlsError` (a `ConfigError`) if the files are bad,
        TLS would be turned on or off, or the client CA changed: the context in force is then unchanged."""
        if self.tls is None:
            if server is not None and server.tls_cert_file is not None:
                raise tls.TlsError("server.tls_cert_file was added: TLS is turned on by a restart only")
            return None
        info = self.tls.reload(server)
        self._log_tls()
        return info

    def _log_tls(self) -> None:
        if self.tls is None:
            if not self.config.server.is_loopback:
                log.warning("plaintext_beyond_loopback", listen=self.config.server.listen)
            return
        info = self.tls.info
        log.info("tls_on", subject=info.subject, mutual=self.tls.mutual, days_left=info.days_left())
        if info.days_left() < tls.EXPIRY_WARNING_DAYS:
            log.warning("tls_certificate_expiring", subject=info.subject, days_left=info.days_left())

    async def reload(self, via: str, given: tuple[Config, str] | None = None) -> ReloadOutcome:
        """Read the configuration file again and apply it in place, or refuse it whole (the rules in force
        stay). One reload at a time; `via` (SIGHUP, http) is what the journal and the log say asked.
        `given` (a configuration and its hash) is applied instead of the file's: for tests and embedders."""
        async with self._reload_lock:
            self.notifier.send(RELOADING="1", STATUS="reloading the configuration")
            try:
                outcome = await self._reload(via, given)
            finally:
                self.notifier.send(READY="1", STATUS=self.status_line(self._current_states()))
            self.last_reload = outcome
            return outcome

    async def _reload(self, via: str, given: tuple[Config, str] | None) -> ReloadOutcome:
        if self.stopping:
            return await self._refused(via, "guardian is stopping")
        if given is not None:
            new, digest = given
        elif self.source is None:
            return await self._refused(
                via, "guardian was started without a configuration file (--sim): there is nothing to re-read"
            )
        else:
            try:
                new, digest = self.source.load()
            except ConfigError as exc:
                return await self._refused(via, str(exc))
        needs_restart = restart_only(self.config, new)
        if needs_restart:
            return await self._refused(
                via,
                "these keys cannot change without a restart: " + ", ".join(needs_restart),
                needs_restart,
                digest,
            )
        try:  # the certificate and key read again (a renewal keeps their paths): new handshakes use them
            certificate = self.reload_tls(new.server)
        except ConfigError as exc:
            return await self._refused(via, str(exc), None, digest)
        changed = changed_in_place(self.config, new)
        if certificate is not None:
            changed.append(
                f"server TLS certificate: {certificate.subject}, {certificate.days_left():.0f} days left"
            )
        # One step, nothing awaited: no request sees half of the old rules and half of the new.
        logs.REDACTOR.register(new.all_secrets())
        by_name = {account.name: account for account in new.accounts}
        modes = self.journal.modes()
        for account in self.accounts:
            # A bot added back after a restart without it: its last mode (a kill) stands, as a restart has it.
            old_bots = {client.name for client in account.config.clients}
            added = (c.name for c in by_name[account.name].clients if c.name not in old_bots)
            _restore_bot_modes(account, added, modes)
            account.config = by_name[account.name]
            self.recent[account.name].rebind(c.name for c in account.config.clients)
        self.gateway.reconfigure(new)
        self.relay.reconfigure(new)
        for notifier in new.notify:
            self.metrics.add_notifier(notifier.name)
        for account_name, bot in _bound(new):  # a bot bound by this reload: its mismatch series at 0 too
            self.metrics.tls_subject_mismatches.labels(account_name, bot)
        self.config = new
        self.config_hash = digest
        self.config_loaded_at = time.time()
        self.metrics.config_reloads.inc()
        self.metrics.config_loaded.set(self.config_loaded_at)
        for warning in new.warnings():
            log.warning("config_warning", warning=warning)
        log.info("config_reloaded", via=via, hash=digest, changed=changed)
        try:
            await self.journal.event(
                "config_reloaded", None, {"hash": digest, "via": via, "changed": changed}
            )
        except JournalError as exc:  # the reload has taken effect: said in the log, loudly
            log.error("journal_event_failed", kind="config_reloaded", error=str(exc))
        await self.pushes.reconfigure(new.notify, NOTIFY_FLUSH_S)
        return ReloadOutcome(True, via, digest, self.config_loaded_at, changed)

    async def _refused(
        self, via: str, error: str, needs_restart: list[str] | None = None, digest: str | None = None
    ) -> ReloadOutcome:
        error = logs.REDACTOR.scrub(error)
        self.metrics.config_reload_failures.inc()
        log.error("config_reload_failed", via=via, error=error, hash_in_force=self.config_hash)
        detail = {"via": via, "error": error, "hash_refused": digest, "hash_in_force": self.config_hash}
        try:
            await self.journal.event("config_reload_failed", None, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind="config_reload_failed", error=str(exc))
        return ReloadOutcome(
            False, via, self.config_hash, self.config_loaded_at, [], error, needs_restart or []
        )

    def _current_states(self) -> dict[str, SwitchState]:
        return {account.name: account.switch.state for account in self.accounts}

    def config_json(self) -> dict[str, object]:
        """`/guardian/state`'s `config`: the hash of the file in force, when it was loaded, the last reload."""
        last = self.last_reload
        return {
            "path": None if self.source is None else str(self.source.path),
            "hash": self.config_hash,
            "loaded_at": to_iso(self.config_loaded_at),
            "last_reload": None
            if last is None
            else {"ok": last.ok, "via": last.via, "error": last.error, "restart_only": last.restart_only},
        }

    def exposure_book(self, account: Account) -> exposure.Book:
        """The account's exposure book, its holds pruned to the stream's reconciliations (as the guard
        sees it when it next judges)."""
        stream = account.stream
        account.exposure.prune(stream.reconciles if stream is not None else 0)
        return account.exposure

    def limits(self, account: Account) -> list[exposure.Usage]:
        stream = account.stream
        return exposure.usage(
            self.exposure_book(account).ledger,
            account.config.guard,
            daily_pnl=stream.state.daily_pnl() if stream is not None else Decimal(0),
            fills_in_window=self.trips.fills_in_window(account),
        )

    def limits_json(self, account: Account) -> dict[str, object]:
        """The exposure fields of `/guardian/state` (contract names): `limits`, `daily_pnl`, and each bot's
        mode, own limits, orders in the last minute, open orders and last refusal under `bots`."""
        book = self.exposure_book(account)
        recent = self.recent[account.name]
        bots = []
        for client in account.config.clients:
            own = exposure.bot_usage(book, exposure.Limits(account.config.guard, client), client.name)
            bots.append(
                {
                    "name": client.name,
                    "mode": account.bot_modes.get(client.name, Mode.ACTIVE).value,
                    "limits": [u.as_json() for u in own],
                    "orders_last_minute": book.orders_in_window(client.name),
                    "open_orders": book.ledger.bot_count(client.name),
                    "last_refusal": recent.bot_json(client.name),
                }
            )
        stream = account.stream
        fresh = stream is not None and stream.fresh()
        return {
            "limits": [u.as_json() for u in self.limits(account)],
            "daily_pnl": _float(stream.state.daily_pnl()) if stream is not None and fresh else None,
            "daily_pnl_gap": _gap(stream.state.pnl_gap()) if stream is not None and fresh else None,
            "bots": bots,
        }

    def limit_records(self) -> list[tuple[str, list[exposure.Usage], float | None, dict[str, str]]]:
        """For the metrics, at scrape time: each account's limits' usage, daily PnL, and bots' modes."""
        found = []
        for account in self.accounts:
            stream = account.stream
            pnl = stream.state.daily_pnl() if stream is not None and stream.fresh() else None
            modes = {c.name: account.bot_modes.get(c.name, Mode.ACTIVE).value for c in account.config.clients}
            found.append((account.name, self.limits(account), None if pnl is None else float(pnl), modes))
        return found

    def status_line(self, states: Mapping[str, SwitchState] | None = None) -> str:
        """One line for systemd's STATUS=: each account's switch state (as observed, or now)."""
        seen = states if states is not None else {a.name: a.switch.state for a in self.accounts}
        return "switch: " + ", ".join(f"{name} {state.value}" for name, state in seen.items())

    async def _report(self) -> None:
        """Log every switch state change, keep STATUS= current, send READY=1 once all are armed.

        Each pass works from one look at every switch, taken before anything is awaited, so the line
        sent to systemd is the states that were seen, in order, even if a switch moves on meanwhile."""
        while True:
            observed = {account.name: self._observe_switch(account) for account in self.accounts}
            changes = self._changes(observed)
            line = self.status_line(observed)
            armed = all(state is SwitchState.ARMED for state in observed.values())
            # Ready may come with a change, or later with none (a journal that could not be written at
            # first and now can).
            if not self.ready_sent and armed and self.journal.healthy and not self.stopping:
                self.ready_sent = True
                self.notifier.ready(line)
                log.info("guardian_ready", url=self.url, status=line)
            elif changes:
                self.notifier.status(line)
            if changes:
                for account, previous, state in changes:
                    await self._journal_switch(account, previous, state)
            await self._probe_journal()
            for policy in self.maintenance:
                before = policy.account.mode
                await policy.check()
                if policy.account.mode is not before:
                    self.watch.maintenance_moved(policy.account, before)
            self.watch.each_pass(observed)
            for account in self.accounts:
                if account.stream is not None:
                    account.stream.state.roll_day()  # a new UTC day: today's PnL starts again at 0
                self.trips.check_loss(account)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that arrives
            # as the wait ends, and stop() would wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()

    def _on_trip(self, name: str, limit: str) -> None:
        """A trip took effect: called by `Trips` right after the mode and the latch are set."""
        self.metrics.on_trip(name, limit)
        account = self.account(name)
        if account is not None:
            trip = account.trip
            if trip is not None:
                self.recent[name].stopped("trip", trip.reason, trip.mode.value, limit=trip.limit, at=trip.at)
            self.watch.tripped(account)

    def _changes(
        self, observed: Mapping[str, SwitchState]
    ) -> list[tuple[Account, SwitchState | None, SwitchState]]:
        """The switches whose state moved since the last look: logged and told to the watch now (the
        journal rows are the caller's, after systemd has heard)."""
        changes = [
            (account, self._last_states.get(account.name), observed[account.name])
            for account in self.accounts
            if observed[account.name] is not self._last_states.get(account.name)
        ]
        if changes:
            self._last_states.update(observed)
            for account, previous, state in changes:
                self._log_change(account, previous, state)
                self.watch.switch_changed(account, previous, state)
        return changes

    async def _record_start(self) -> None:
        """Every switch's first state (`starting`: no beat has run yet), seen, told to systemd (STATUS=) and
        journaled before the switch thread starts, so the story of each switch begins where the switch did,
        however fast the first refresh arms it."""
        observed = {account.name: self._observe_switch(account) for account in self.accounts}
        changes = self._changes(observed)
        self.notifier.status(self.status_line(observed))
        for account, previous, state in changes:
            await self._journal_switch(account, previous, state)

    async def _probe_journal(self) -> None:
        """While the journal cannot be written, try a small write now and then: it is healthy again (and
        /readyz, the metric and the alert say so) as soon as one commits, not only when a bot next sends
        an order. The one row that commits marks the moment it came back."""
        now = time.monotonic()
        if self.journal.healthy or now < self._probe_at:
            return
        self._probe_at = now + JOURNAL_PROBE_S
        with contextlib.suppress(JournalError):  # still failing: already logged by the journal
            await self.journal.event("journal_writable", None, {"after": self.journal.last_error})

    def _observe_switch(self, account: Account) -> SwitchState:
        """The switch's state now, except when it expired and was re-armed since the last look: then
        `expired`, and (the reporter looks again at once) the present state on the next pass. An expiry
        is when the operator must assume every order was cancelled: however short, it is reported."""
        switch = account.switch
        seen = self._rearms_seen.get(account.name, 0)
        self._rearms_seen[account.name] = switch.rearms_after_expiry
        if (
            switch.rearms_after_expiry > seen
            and self._last_states.get(account.name) is not SwitchState.EXPIRED
        ):
            self._wake.set()
            return SwitchState.EXPIRED
        return switch.state

    async def _journal_switch(
        self, account: Account, previous: SwitchState | None, state: SwitchState
    ) -> None:
        switch = account.switch
        detail = {
            "state": state.value,
            "previous": None if previous is None else previous.value,
            "remaining_s": 0.0 if state is SwitchState.EXPIRED else switch.remaining(),
            "last_error": switch.last_error,
        }
        try:
            await self.journal.event("switch_state", account.name, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind="switch_state", error=str(exc))

    @staticmethod
    def _log_change(account: Account, previous: SwitchState | None, state: SwitchState) -> None:
        switch = account.switch
        level = (
            log.info
            if state in (SwitchState.ARMED, SwitchState.STARTING, SwitchState.DISARMED)
            else log.warning
        )
        remaining = 0.0 if state is SwitchState.EXPIRED else switch.remaining()
        level(
            "switch_state_changed",
            account=account.name,
            state=state.value,
            previous=None if previous is None else previous.value,
            remaining_s=None if remaining is None else round(remaining, 3),
            last_error=switch.last_error,
        )


class _TellingAdmin(Admin):
    """The admin routes; what a person did through them (a kill, a mode change) is told to the notifiers."""

    def __init__(
        self,
        *args: Any,
        told: Callable[[str, int, Mapping[str, Any], Mapping[str, Any]], None],
        reload: Callable[[str], Coroutine[Any, Any, ReloadOutcome]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._told = told
        self._reload = reload

    def routes(self) -> list[web.RouteDef]:
        return [*super().routes(), web.post("/guardian/reload", self._guarded(self.reload))]

    async def reload(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /guardian/reload: 200 with the new hash and what changed, or 422 with why the file was
        refused (the configuration in force is unchanged)."""
        if doc:
            raise AdminError(400, "invalidArgument", "POST /guardian/reload takes no parameters")
        outcome = await self._reload("http")
        return (200 if outcome.ok else 422), outcome.as_json()

    async def kill(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, answer = await super().kill(doc)
        self._told("kill", status, doc, answer)
        return status, answer

    async def set_mode(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, answer = await super().set_mode(doc)
        self._told("mode", status, doc, answer)
        return status, answer


def _restore_bot_modes(account: Account, bots: Iterable[str], modes: Mapping[str, str]) -> None:
    """Each bot's own mode as the journal last persisted it (a kill halts it until POST /guardian/mode);
    a mode this process already holds for the bot is the same or newer, and stays."""
    for bot in bots:
        own = modes.get(bot_mode_key(account.name, bot))
        if own is not None and own != Mode.ACTIVE.value and bot not in account.bot_modes:
            account.bot_modes[bot] = Mode(own) if own in tuple(Mode) else Mode.HALTED
            log.warning("mode_restored", account=account.name, bot=bot, mode=own)


def _bound(config: Config) -> list[tuple[str, str]]:
    """The (account, bot) pairs whose key is bound to a client certificate's subject."""
    return [(a.name, c.name) for a in config.accounts for c in a.clients if c.tls_client_subject]


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _gap(found: tuple[str, str] | None) -> dict[str, str] | None:
    """Why the day's PnL cannot be valued now, as `/guardian/state` shows it."""
    return None if found is None else {"code": found[0], "reason": found[1]}
