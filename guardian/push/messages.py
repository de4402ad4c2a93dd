"""What each event says. A `Note` names the account, the bot where there is one, what happened, what
guardian did about it, and the one command (or page) to look at; `render` makes the text a person reads.

The builders take plain values (names, reasons, figures), not the daemon's objects: the service hands
over what it knows, and the words live here, in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from guardian import logs

MAX_TEXT_CHARS: Final = 3500  # Telegram takes 4096 characters, Slack more: room for the fold's note
TEST: Final = "notify_test"  # `guardian notify-test`'s message (not an event a notifier chooses)

STOPPED_LOOK: Final = "docs/runbook.md#guardiandown, if nobody meant to stop it"
TITLES: Final = {
    "switch_degraded": "switch DEGRADED",
    "switch_expired": "switch EXPIRED",
    "switch_rearmed": "switch re-armed",
    "trip": "limit TRIPPED",
    "kill": "KILLED",
    "mode_changed": "mode changed",
    "account_state_stale": "account state STALE",
    "maintenance_notice": "maintenance announced",
    "relay_dropped": "relay connection DROPPED",
    "daemon_started": "started",
    "daemon_stopping": "stopping",
    TEST: "test message",
}


@dataclass(frozen=True, slots=True)
class Note:
    """One event, as every notifier may be told it."""

    event: str
    account: str | None  # None: the daemon as a whole (started, stopping)
    bot: str | None
    what: str  # what happened
    did: str  # what guardian did
    look: str  # the one command or page to look at
    at: float = field(default_factory=time.time)  # epoch seconds
    since: float | None = None  # switch_degraded: when the episode began (loop time)
    after: str | None = None  # switch_rearmed: "expired" or "degraded"


def render(note: Note, *, host: str, count: int = 1, first_at: float | None = None) -> str:
    """The text a person reads. `count` > 1: this message stands for that many events of its kind and
    account (the latest shown), folded together since `first_at`."""
    who = note.account or "all accounts"
    if note.bot is not None:
        who += f", bot {note.bot}"
    lines = [
        f"guardian@{host}: {who}: {TITLES.get(note.event, note.event)}",
        f"What happened: {note.what}",
        f"What guardian did: {note.did}",
        f"Look: {note.look}",
    ]
    if count > 1:
        since = _clock(first_at if first_at is not None else note.at)
        lines.append(
            f"({count} {note.event} events for {who} since {since}, folded into this message; the latest is shown)"
        )
    text = logs.REDACTOR.scrub("\n".join(lines))  # a secret in an exchange's error text never leaves
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 3] + "..."


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")


def _error(last_error: str | None) -> str:
    return f" (last error: {last_error})" if last_error else ""


# ---- the switch -----------------------------------------------------------------------------------------


def switch_degraded(
    account: str,
    *,
    for_s: float,
    remaining_s: float | None,
    last_error: str | None,
    since: float,
    never_armed: bool = False,
    look: str,
) -> Note:
    left = "none (not armed)" if remaining_s is None else f"{remaining_s:.0f} s"
    failing = "could not arm" if never_armed else "has not been refreshed"
    return Note(
        "switch_degraded",
        account,
        None,
        f"the dead man's switch {failing} for {for_s:.0f} s{_error(last_error)}; time left on the "
        f"exchange's timer: {left}",
        "keeps retrying; new risk is refused while the switch is not armed, cancels still pass",
        look,
        since=since,
    )


def switch_expired(account: str, *, last_error: str | None, look: str) -> Note:
    return Note(
        "switch_expired",
        account,
        None,
        f"the dead man's switch EXPIRED{_error(last_error)}: assume the exchange cancelled every open order",
        "refuses new risk and keeps trying to re-arm",
        look,
    )


def switch_rearmed(account: str, *, after: str, remaining_s: float | None, look: str) -> Note:
    left = "" if remaining_s is None else f" ({remaining_s:.0f} s on the exchange's timer)"
    what = f"the dead man's switch is armed again after it was {after}{left}"
    if after == "expired":
        what += "; orders open before the expiry were cancelled by the exchange"
    return Note("switch_rearmed", account, None, what, "lets new risk out again", look, after=after)


# ---- the guard ------------------------------------------------------------------------------------------


def trip(account: str, *, limit: str, reason: str, mode: str, cancels: bool, look: str) -> Note:
    did = f"moved the account to {mode}" + (" and cancels its open orders" if cancels else "")
    return Note(
        "trip",
        account,
        None,
        f"{limit} tripped: {reason}",
        did + "; latched until a person sets the mode (POST /guardian/mode)",
        look,
    )


def kill(account: str, bot: str | None, answer: Mapping[str, Any], *, ok: bool, look: str) -> Note:
    """From the admin kill's answer (contract fields: in_flight, exchange or cancelled/failed, error)."""
    target = f"bot {bot}" if bot is not None else "the account"
    in_flight = int(answer.get("in_flight") or 0)
    if bot is None:
        cancelled = "cancelled every open order at the exchange" if ok else "could NOT cancel the open orders"
    else:
        done, failed = len(answer.get("cancelled") or ()), len(answer.get("failed") or ())
        cancelled = f"cancelled {done} of its open orders" + (f", {failed} FAILED" if failed else "")
        if "error" in answer:
            cancelled = "could NOT read its open orders to cancel them"
    error = f" ({answer['error']})" if not ok and answer.get("error") else ""
    return Note(
        "kill",
        account,
        bot,
        f"{target} was killed by an admin request (POST /guardian/kill)",
        f"halted {target}, {cancelled}{error}; {in_flight} request(s) in flight are followed and cancelled",
        look,
    )


def mode_changed(
    account: str, bot: str | None, *, mode: str, previous: str, by: str, reason: str, look: str
) -> Note:
    target = f"bot {bot}" if bot is not None else "the account"
    return Note(
        "mode_changed",
        account,
        bot,
        f"{target} went from {previous} to {mode} (by {by}: {reason})",
        {
            "active": "lets new risk out again",
            "reduce_only": "lets only orders that reduce a position out",
            "halted": "lets no new order out; cancels still pass",
        }.get(mode, f"applies {mode}"),
        look,
    )


# ---- the account's picture ------------------------------------------------------------------------------


def account_state_stale(account: str, *, link: str, max_age_s: float, look: str) -> Note:
    return Note(
        "account_state_stale",
        account,
        None,
        f"the account's state is stale: the exchange link is {link} and REST has not confirmed it for "
        f"{max_age_s:g} s",
        "refuses new risk its limits would judge (accountStateUnavailable) until the state is fresh; "
        "reconnecting",
        look,
    )


def maintenance_notice(
    account: str, *, starts: float | None, downtime_min: float | None, text: str, lead_s: float, look: str
) -> Note:
    when = "at an unannounced time" if starts is None else f"at {_clock(starts)} ({_date(starts)})"
    length = "" if downtime_min is None else f", about {downtime_min:g} min of downtime"
    did = (
        f"will move the account to reduce_only {lead_s:g} s before it, and back after"
        if lead_s > 0
        else "nothing on its own (accounts.guard.maintenance_reduce_only_s is 0)"
    )
    return Note(
        "maintenance_notice",
        account,
        None,
        f"the exchange announced maintenance {when}{length}: {text[:200]}",
        did,
        look,
    )


def _date(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


# ---- the ws/v1 relay ------------------------------------------------------------------------------------

# Why the relay closes a bot's connection, as a person is told it (the relay's reasons; the others, such as
# a reload that removed the bot, are a person's own doing and not told).
RELAY_DROPS: Final = {
    "slow_consumer": (
        "its ws/v1 relay connection fell too far behind ({detail})",
        "closed that connection (1013, try again later) and dropped its backlog, so that the exchange link "
        "and the other bots never wait for it; its orders and other connections are untouched, and a "
        "reconnect gets fresh snapshots",
    ),
    "bot_connection_limit": (
        "a new ws/v1 relay connection was refused: {detail}",
        "closed the new connection (1013, try again later) and kept the others; raise the bot's "
        "ws_max_connections if it needs more, or find why it does not close its old ones",
    ),
}


def relay_dropped(account: str | None, bot: str | None, *, reason: str, detail: str, look: str) -> Note:
    what, did = RELAY_DROPS[reason]
    who = "" if bot is not None else "a connection that named no bot (public feeds only): "
    return Note("relay_dropped", account, bot, who + what.format(detail=detail[:200]), did, look)


# ---- the daemon -----------------------------------------------------------------------------------------


def daemon_started(version: str, modes: Iterable[tuple[str, str]], *, look: str) -> Note:
    listed = ", ".join(f"{name} ({mode})" for name, mode in modes)
    return Note(
        "daemon_started",
        None,
        None,
        f"guardian {version} started for {listed}",
        "arms every account's dead man's switch and serves the bots",
        look,
    )


def daemon_stopping(policies: str, *, look: str) -> Note:
    return Note(
        "daemon_stopping",
        None,
        None,
        "guardian is stopping (a signal from the service manager or a person)",
        f"finishes the requests in flight, then on shutdown: {policies}",
        look,
    )


def trial(name: str) -> Note:
    """`guardian notify-test`'s message."""
    return Note(
        TEST,
        None,
        None,
        f"a test message to notifier {name} (`guardian notify-test`)",
        "nothing: this is only a test",
        "docs/notifications.md",
    )
