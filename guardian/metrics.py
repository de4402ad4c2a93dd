"""Prometheus metrics: one registry per daemon, with the contract's names.

What describes the switch *now* (armed, state, time left, trigger time, clock skew) is read from the
keepers at scrape time, so `/metrics` is as truthful as `/guardian/state`: a gauge set on the last
refresh would keep saying 40 s left after the daemon stopped counting. What accumulates (refreshes by
outcome, their durations) is counted as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from guardian import __version__
from guardian.push.hub import DROP_REASONS
from guardian.stream.account import AccountStream
from guardian.stream.state import Fill
from guardian.switch import Switch, SwitchState
from guardian.tls import CertInfo

MODES = ("active", "reduce_only", "halted")
DRIFT_KINDS = ("open_orders", "positions")
# Error codes the exchange documents: an `error:<code>` outcome outside these is counted as `error:other`,
# so an exchange inventing codes cannot grow the number of series without bound (the journal keeps it).
KNOWN_ERROR_CODES = frozenset(
    {
        "accountInactive", "apiLimitExceeded", "authenticationError", "insufficientFunds", "invalidAccount",
        "invalidAmount", "invalidArgument", "invalidUnit", "Json Parse Error", "marketUnavailable",
        "nonceBelowThreshold", "nonceDuplicate", "notFound", "requiredArgumentMissing", "Server Error",
        "Unavailable", "unknownError",
    }
)  # fmt: skip


TRIP_LIMITS = ("max_fills_per_minute", "max_daily_loss")


class AccountView(Protocol):
    """What the account gauges read."""

    @property
    def name(self) -> str: ...
    @property
    def mode_value(self) -> str: ...
    @property
    def budget_capacity(self) -> float: ...
    def budget_available(self) -> float: ...
    def instrument_counts(self) -> Mapping[str, int] | None: ...


# The classic text format, which generate_latest writes and every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# `*_created` series double every counter and histogram and no dashboard or alert here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REFRESH_OUTCOMES = ("success", "authentication", "rate_limited", "unavailable", "error")
# A refresh normally takes tens of milliseconds; the top buckets show a struggling exchange.
REFRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A healthy loop wakes a timer within a millisecond; issue 20 holds any one piece of work under 5 ms.
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A healthy loop starts a beat within a millisecond or two of its schedule.
BEAT_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class SwitchCollector(Collector):
    """The switch gauges, computed from the keepers when Prometheus scrapes."""

    def __init__(self, switches: Callable[[], Iterable[Switch]]) -> None:
        self._switches = switches

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families without samples: lets the registry check names before the switches exist."""
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        armed, state, remaining, last_success, trigger, skew, failures, rearms, timeout, floor = (
            self._families()
        )
        for switch in self._switches():
            name = switch.account
            current = switch.state
            armed.add_metric([name], 1.0 if current is SwitchState.ARMED else 0.0)
            for each in SwitchState:
                state.add_metric([name, each.value], 1.0 if each is current else 0.0)
            remaining.add_metric([name], switch.remaining() or 0.0)
            last_success.add_metric([name], switch.last_success_wall or 0.0)
            status = switch.last_status
            running = current in (SwitchState.ARMED, SwitchState.DEGRADED)
            trigger_time = status.trigger_time if status is not None and running else None
            trigger.add_metric([name], trigger_time or 0.0)
            clock_skew = None if status is None else status.clock_skew_s
            if clock_skew is not None:
                skew.add_metric([name], clock_skew)
            failures.add_metric([name], switch.consecutive_failures)
            rearms.add_metric([name], switch.rearms_after_expiry)
            timeout.add_metric([name], switch.settings.timeout_s)
            floor.add_metric([name], switch.settings.min_remaining_s)
        yield from (armed, state, remaining, last_success, trigger, skew, failures, rearms, timeout, floor)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        armed = GaugeMetricFamily(
            "guardian_switch_armed",
            "1 while the account's switch is armed (refreshed, timer running), else 0",
            labels=["account"],
        )
        state = GaugeMetricFamily(
            "guardian_switch_state",
            "1 for the switch's current state, 0 for the others",
            labels=["account", "state"],
        )
        remaining = GaugeMetricFamily(
            "guardian_switch_remaining_seconds",
            "Seconds left on the exchange's timer by guardian's conservative count (0 when not running)",
            labels=["account"],
        )
        last_success = GaugeMetricFamily(
            "guardian_switch_last_success_timestamp_seconds",
            "Unix time of the last successful refresh (0: never)",
            labels=["account"],
        )
        trigger = GaugeMetricFamily(
            "guardian_switch_trigger_timestamp_seconds",
            "The exchange's triggerTime as it last reported it, Unix time (0: timer not running)",
            labels=["account"],
        )
        skew = GaugeMetricFamily(
            "guardian_exchange_clock_skew_seconds",
            "Exchange serverTime minus local time at the last answer (absent until one arrives)",
            labels=["account"],
        )
        failures = GaugeMetricFamily(
            "guardian_switch_consecutive_failures",
            "Refreshes failed in a row since the last success",
            labels=["account"],
        )
        rearms = CounterMetricFamily(
            "guardian_switch_rearms_after_expiry",
            "Times the switch was armed again after guardian had counted it expired",
            labels=["account"],
        )
        timeout = GaugeMetricFamily(
            "guardian_switch_timeout_seconds",
            "The timer armed on the exchange at each refresh (accounts.switch.timeout_s)",
            labels=["account"],
        )
        floor = GaugeMetricFamily(
            "guardian_switch_min_remaining_seconds",
            "Below this much time left no new risk goes out (accounts.switch.min_remaining_s)",
            labels=["account"],
        )
        return armed, state, remaining, last_success, trigger, skew, failures, rearms, timeout, floor


# A local request takes well under a millisecond when refused, a few when forwarded.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AccountCollector(Collector):
    """Per-account gauges read at scrape time: the trading mode and the rate budget left."""

    def __init__(self, accounts: Callable[[], Iterable[AccountView]]) -> None:
        self._accounts = accounts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mode, budget, capacity, instruments = self._families()
        for account in self._accounts():
            current = account.mode_value
            for each in MODES:
                mode.add_metric([account.name, each], 1.0 if each == current else 0.0)
            budget.add_metric([account.name], account.budget_available())
            capacity.add_metric([account.name], account.budget_capacity)
            counts = account.instrument_counts()
            if counts is not None:  # (absent until the contracts have been read once)
                for state, count in counts.items():
                    instruments.add_metric([account.name, state], float(count))
        yield from (mode, budget, capacity, instruments)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        mode = GaugeMetricFamily(
            "guardian_mode", "1 for the account's trading mode, 0 for the others", labels=["account", "mode"]
        )
        budget = GaugeMetricFamily(
            "guardian_rate_budget_available",
            "Cost units of the local model of the exchange's rate budget available now (switch reserve included)",
            labels=["account"],
        )
        capacity = GaugeMetricFamily(
            "guardian_rate_budget_capacity",
            "The local rate budget's capacity: cost units per rate_window_s (accounts.guard.rate_budget)",
            labels=["account"],
        )
        instruments = GaugeMetricFamily(
            "guardian_instruments",
            "Contracts the exchange lists, by state: judged (guardian knows their arithmetic), unjudged (new "
            "risk in them is refused instrumentUnknown), expired (past lastTradingTime)",
            labels=["account", "state"],
        )
        return mode, budget, capacity, instruments


LimitRecord = tuple[str, Sequence[Any], float | None, Mapping[str, str]]  # account, usages, pnl, bot modes


class LimitCollector(Collector):
    """The exposure limits' usage, the day's PnL and each bot's mode, read at scrape time."""

    def __init__(self, records: Callable[[], Iterable[LimitRecord]]) -> None:
        self._records = records

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio, pnl, bot_mode = self._families()
        for account, usages, daily, modes in self._records():
            for usage in usages:
                if usage.bot is None:
                    ratio.add_metric([account, usage.name, usage.symbol], usage.ratio)
            if daily is not None:
                pnl.add_metric([account], daily)
            for bot, current in modes.items():
                for each in MODES:
                    bot_mode.add_metric([account, bot, each], 1.0 if each == current else 0.0)
        yield from (ratio, pnl, bot_mode)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "guardian_limit_usage_ratio",
                'How much of an exposure limit is used, worst case (1 = at the limit); symbol "" for account-wide',
                labels=["account", "limit", "symbol"],
            ),
            GaugeMetricFamily(
                "guardian_daily_pnl",
                "Realised PnL since 00:00 UTC plus unrealised, net of fees (absent while the state is stale)",
                labels=["account"],
            ),
            GaugeMetricFamily(
                "guardian_bot_mode",
                "1 for the bot's own mode, 0 for the others",
                labels=["account", "bot", "mode"],
            ),
        )


class StreamCollector(Collector):
    """The account-state gauges (the link, freshness, positions, open orders, margin, maintenance), read
    from each account's stream at scrape time. Symbols come from the account, never from bots' input."""

    def __init__(self, streams: Callable[[], Iterable[AccountStream]]) -> None:
        self._streams = streams

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up, reconnects, stalls, age, fresh, position, orders, available, portfolio, maintenance = (
            self._families()
        )
        now, wall = time.monotonic(), time.time()
        for stream in self._streams():
            if not stream.enabled:  # no stream, no series: its alerts would only cry wolf
                continue
            name, status, view = stream.name, stream.link.status, stream.view()
            up.add_metric([name], 1.0 if stream.link.up else 0.0)
            reconnects.add_metric([name], status.reconnects)
            stalls.add_metric([name], status.stalls)
            if status.last_message_at is not None:
                age.add_metric([name], now - status.last_message_at)
            fresh.add_metric([name], 1.0 if stream.fresh(now) else 0.0)
            for symbol, held in sorted(view.positions.items()):
                position.add_metric([name, symbol], float(held.size))
            for symbol, count in sorted(stream.state.orders_by_symbol().items()):
                orders.add_metric([name, symbol], count)
            if view.balances.available_margin is not None:
                available.add_metric([name], float(view.balances.available_margin))
            if view.balances.portfolio_value is not None:
                portfolio.add_metric([name], float(view.balances.portfolio_value))
            notice = stream.state.next_maintenance(wall)
            if notice is not None and notice.effective_time is not None:
                maintenance.add_metric([name], max(0.0, notice.effective_time - wall))
        yield from (up, reconnects, stalls, age, fresh, position, orders, available, portfolio, maintenance)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        account = ["account"]
        return (
            GaugeMetricFamily(
                "guardian_exchange_link_up",
                "1 while the account's private WebSocket is subscribed",
                labels=account,
            ),
            CounterMetricFamily(
                "guardian_exchange_link_reconnects",
                "Connections of the account's private WebSocket made after the first",
                labels=account,
            ),
            CounterMetricFamily(
                "guardian_exchange_link_stalls",
                "Times the account's private WebSocket was declared down for silence (no message, no pong "
                "within accounts.stream.liveness_timeout_s)",
                labels=account,
            ),
            GaugeMetricFamily(
                "guardian_exchange_last_message_age_seconds",
                "Seconds since the account's private WebSocket last sent a message",
                labels=account,
            ),
            GaugeMetricFamily(
                "guardian_account_state_fresh",
                "1 while the account state is fresh (link up, or reconciled within state_max_age_s)",
                labels=account,
            ),
            GaugeMetricFamily(
                "guardian_position_contracts",
                "The account's net position per symbol, in contracts (negative: short)",
                labels=["account", "symbol"],
            ),
            GaugeMetricFamily(
                "guardian_open_orders", "The account's open orders per symbol", labels=["account", "symbol"]
            ),
            GaugeMetricFamily(
                "guardian_account_available_margin",
                "Available margin (flex account, quote currency)",
                labels=account,
            ),
            GaugeMetricFamily(
                "guardian_account_portfolio_value",
                "Portfolio value (flex account, quote currency)",
                labels=account,
            ),
            GaugeMetricFamily(
                "guardian_exchange_maintenance_seconds",
                "Seconds until the next announced maintenance (absent when none is announced)",
                labels=account,
            ),
        )


class TlsCollector(Collector):
    """`guardian_tls_cert_expiry_seconds`: the server certificate's time left, read at scrape time (so a
    reloaded certificate shows at once); the family without a sample while TLS is off."""

    def __init__(self, certificate: Callable[[], CertInfo | None]) -> None:
        self._certificate = certificate

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter([self._family()])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        info = self._certificate()
        if info is not None:
            family.add_metric([], info.seconds_left())
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "guardian_tls_cert_expiry_seconds",
            "Seconds until the local server's TLS certificate expires (negative once expired); absent without TLS",
        )


class Metrics:
    """The daemon's registry. Other parts (the gateway) add their own families to `registry`."""

    def __init__(
        self,
        switches: Callable[[], Iterable[Switch]],
        *,
        accounts: Callable[[], Iterable[AccountView]] | None = None,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._loop_stall_max = 0.0
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        Gauge(
            "guardian_build_info",
            "guardian's version, as a label; always 1",
            ["version"],
            registry=self.registry,
        ).labels(__version__).set(1)
        self.refreshes = Counter(
            "guardian_switch_refreshes",
            "Switch refresh attempts by outcome",
            ["account", "outcome"],
            registry=self.registry,
        )
        self.refresh_duration = Histogram(
            "guardian_switch_refresh_duration_seconds",
            "Time from sending a switch refresh to its answer (or failure)",
            ["account"],
            buckets=REFRESH_BUCKETS,
            registry=self.registry,
        )
        self.beat_delay = Histogram(
            "guardian_switch_beat_delay_seconds",
            "How late each switch beat started against its schedule (event loop starvation shows here)",
            ["account"],
            buckets=BEAT_DELAY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(SwitchCollector(switches))
        self.loop_lag: Histogram = Histogram(
            "guardian_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer: how long it was busy with other work then",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_stall_max: Gauge = Gauge(
            "guardian_event_loop_stall_seconds_max",
            "The longest the event loop kept a 10 ms timer waiting since the daemon started",
            registry=self.registry,
        )
        self.requests = Counter(
            "guardian_requests",
            "Requests to the local Kraken API by account, endpoint and outcome",
            ["account", "endpoint", "outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "guardian_rejections",
            "Requests guardian refused, by account and reason (the refusal code)",
            ["account", "reason"],
            registry=self.registry,
        )
        self.source_refused = Counter(
            "guardian_client_source_refused",
            "Requests and relay logins with a bot's key from an address outside its allow_from, refused",
            ["account", "bot"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "guardian_request_duration_seconds",
            "Time from a local request's arrival to guardian's answer",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "guardian_upstream_request_duration_seconds",
            "Time the exchange took to answer a forwarded request",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        if accounts is not None:
            self.registry.register(AccountCollector(accounts))
        self.fills = Counter(
            "guardian_fills",
            "Fills of the account's orders seen on the exchange's fills feed",
            ["account", "symbol", "side"],
            registry=self.registry,
        )
        self.trips = Counter(
            "guardian_limit_trips",
            "Latched limit trips (max_fills_per_minute halts and cancels; max_daily_loss moves to on_loss_limit)",
            ["account", "limit"],
            registry=self.registry,
        )
        self.drift = Counter(
            "guardian_account_drift",
            "Reconciliations that found the stream's picture differing from REST (REST wins), by kind",
            ["account", "kind"],
            registry=self.registry,
        )
        # Push notifications ([[notify]]), by notifier name (from the configuration, never a URL).
        self.notify_sent = Counter(
            "guardian_notify_sent", "Notification messages delivered", ["notifier"], registry=self.registry
        )
        self.notify_failures = Counter(
            "guardian_notify_failures",
            "Notification delivery attempts that failed (no answer, refused, 4xx/5xx); retried with backoff",
            ["notifier"],
            registry=self.registry,
        )
        self.notify_dropped = Counter(
            "guardian_notify_dropped",
            "Notification messages never delivered, by reason: queue_full, failed (given up), shutdown",
            ["notifier", "reason"],
            registry=self.registry,
        )
        self.notify_folded = Counter(
            "guardian_notify_folded",
            "Events folded into another message of their kind and account (one per min_interval_s)",
            ["notifier"],
            registry=self.registry,
        )
        # Reloads of the configuration (SIGHUP, systemctl reload, POST /guardian/reload).
        self.config_reloads = Counter(
            "guardian_config_reloads",
            "Configuration reloads that took effect",
            registry=self.registry,
        )
        self.config_reload_failures = Counter(
            "guardian_config_reload_failures",
            "Configuration reloads refused (invalid, unreadable, or a change that needs a restart): the "
            "configuration in force did not change",
            registry=self.registry,
        )
        self.config_loaded = Gauge(
            "guardian_config_loaded_timestamp_seconds",
            "When the configuration in force was loaded (start or the last reload that took effect)",
            registry=self.registry,
        )

    def watch_tls(self, certificate: Callable[[], CertInfo | None], bound: Iterable[tuple[str, str]]) -> None:
        """The certificate's expiry, and a mismatch counter at 0 for each (account, bot) bound to a subject."""
        self.registry.register(TlsCollector(certificate))
        self.tls_subject_mismatches = Counter(
            "guardian_tls_subject_mismatch",
            "Requests and ws/v1 logins refused: a bot's key on a connection whose client certificate does not "
            "name its tls_client_subject",
            ["account", "bot"],
            registry=self.registry,
        )
        for account, bot in bound:
            self.tls_subject_mismatches.labels(account, bot)

    def on_tls_subject_mismatch(self, account: str, bot: str) -> None:
        self.tls_subject_mismatches.labels(account, bot).inc()

    def watch_limits(self, records: Callable[[], Iterable[LimitRecord]]) -> None:
        self.registry.register(LimitCollector(records))

    def watch_streams(self, streams: Callable[[], Iterable[AccountStream]]) -> None:
        self.registry.register(StreamCollector(streams))
        for stream in streams():
            for kind in DRIFT_KINDS:
                self.drift.labels(stream.name, kind)

    def on_fill(self, account: str, fill: Fill) -> None:
        self.fills.labels(account, fill.symbol, fill.side).inc()

    def on_drift(self, account: str, kind: str) -> None:
        self.drift.labels(account, kind).inc()

    def watch_journal(self, healthy: Callable[[], bool]) -> None:
        """`guardian_journal_healthy`: 1 while journal writes succeed (read at scrape time)."""
        gauge = Gauge(
            "guardian_journal_healthy",
            "1 while the audit journal can be written; 0 means no new risk goes out",
            registry=self.registry,
        )
        gauge.set_function(lambda: 1.0 if healthy() else 0.0)

    def add_account(self, account: str) -> None:
        """Create every series of an account at 0, so rates and alerts see it before the first event."""
        for outcome in REFRESH_OUTCOMES:
            self.refreshes.labels(account, outcome)
        self.refresh_duration.labels(account)
        self.beat_delay.labels(account)
        for limit in TRIP_LIMITS:
            self.trips.labels(account, limit)

    def on_trip(self, account: str, limit: str) -> None:
        self.trips.labels(account, limit).inc()

    def add_notifier(self, notifier: str) -> None:
        """Every series of a notifier at 0, so its alert sees the first failure."""
        for counter in (self.notify_sent, self.notify_failures, self.notify_folded):
            counter.labels(notifier)
        for reason in DROP_REASONS:
            self.notify_dropped.labels(notifier, reason)

    def on_notify_sent(self, notifier: str) -> None:
        self.notify_sent.labels(notifier).inc()

    def on_notify_failure(self, notifier: str) -> None:
        self.notify_failures.labels(notifier).inc()

    def on_notify_dropped(self, notifier: str, reason: str) -> None:
        self.notify_dropped.labels(notifier, reason).inc()

    def on_notify_folded(self, notifier: str) -> None:
        self.notify_folded.labels(notifier).inc()

    def on_loop_lag(self, late_s: float) -> None:
        self.loop_lag.observe(late_s)
        if late_s > self._loop_stall_max:
            self._loop_stall_max = late_s
            self.loop_stall_max.set(late_s)

    def on_refresh(self, switch: Switch, outcome: str, duration_s: float) -> None:
        """The keeper's callback after every attempt."""
        self.refreshes.labels(switch.account, outcome).inc()
        self.refresh_duration.labels(switch.account).observe(duration_s)

    def on_beat(self, switch: Switch, late_s: float) -> None:
        self.beat_delay.labels(switch.account).observe(max(0.0, late_s))

    def on_source_refused(self, account: str, bot: str) -> None:
        """A bot's key used from outside its allow_from (the gateway or the relay's login)."""
        self.source_refused.labels(account, bot).inc()

    def on_request(
        self,
        account: str,
        endpoint: str,
        outcome: str,
        reason: str | None,
        total_s: float,
        upstream_s: float | None,
    ) -> None:
        """The gateway's callback after every local request."""
        if outcome.startswith("error:") and outcome[6:] not in KNOWN_ERROR_CODES:
            outcome = "error:other"
        self.requests.labels(account or "-", endpoint, outcome).inc()
        if reason is not None:
            self.rejections.labels(account or "-", reason).inc()
        self.request_duration.labels(endpoint).observe(total_s)
        if upstream_s is not None:
            self.upstream_duration.labels(endpoint).observe(upstream_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
