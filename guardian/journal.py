"""The audit journal: every request a bot sends through guardian, every switch event, every mode change,
in one SQLite file.

A forwarded order's intent is committed before the order leaves and its outcome after, so a crash leaves
a row whose outcome is unknown rather than a silent gap. One thread owns the connection and does every
write (but for `record()` while the thread is idle: see below). Callers hand it jobs through a queue
and, where they must know the write is committed (`record`, `event`, `set_mode`, `flush`), await a
future the thread resolves once the transaction holding it has committed. The thread takes everything
queued at once and writes it in one transaction (group commit): under load many requests share one
commit.

What a commit guarantees: WAL mode with `synchronous=NORMAL` writes each transaction to the WAL before
`record()` returns, so it survives the process being killed (`kill -9`, a crash, the OOM killer), not a
power loss or a kernel panic, which may lose the last transactions (never corrupt the file). That is the
trade the hot path needs: a fully synced commit per order would cost as much as the whole gateway hop.
The fsyncs a checkpoint needs (copying the WAL into the database file) are made by a second thread on its
own connection, which writes no rows, so no commit waits for them; only when writes come faster than it
keeps up (thousands per second, for seconds) does the writer checkpoint by itself, past
WRITER_CHECKPOINT_PAGES. `bench/journal_bench.py` measures all of this.

Outcomes (`finish()`) wait up to OUTCOME_DELAY_S (20 ms) to share the next write's transaction; a crash in
that window leaves those rows "unknown", like any outcome the process did not live to write.

The one exception to "the event loop never touches sqlite" is the hot path's own hand-over: handing an
intent to the thread and waking the loop again costs about 0.15-0.2 ms (two thread wake-ups and the GIL
going back and forth), while the commit itself takes about 25 us. So `record()` commits on the event loop,
on a second connection of its own, when that is safe and cheap, and hands over otherwise:

- only when the writer thread is idle (nothing queued, no transaction of its own), so rows keep the order
  `record()` was called in; outcomes waiting for a ride go in the same transaction, first;
- at most once per turn of the event loop: the rest of a burst is group-committed by the thread;
- never while the journal is unhealthy, while the checkpointer is behind, or while paused: the loop's
  connection never waits for a lock (busy timeout 0: the thread is holding it, so hand over) and never
  checkpoints (that fsyncs); a failure on it is rolled back and the same write handed to the thread,
  which fails closed (or succeeds) exactly as it does for every write;
- a commit on the loop slower than SLOW_COMMIT_S (2 ms; one normally takes 30-80 us) during which the
  thread slept (on the disk or a lock; being preempted on a busy machine does not count) pauses loop
  commits for LOOP_PAUSE_S (30 s, extended while commits stay slow); so does a slow COMMIT in the
  writer thread, the canary that usually sees a slow disk first.

What that bounds, and what it does not: the event loop waits at most one slow commit each time the disk
turns slow after LOOP_PAUSE_S of being fast; how long that one commit takes is the disk's (page cache
writes that the kernel throttles). `loop_commits=False` keeps every write in the thread: the loop then
never waits on the disk at all, for about 0.15 ms more per order.

A forwarded request found without an outcome when the file is opened was in flight when an earlier run
died: it is counted (`unfinished_at_open`), logged, and its outcome set to "unknown".

Nothing secret is stored: parameter and answer keys whose name looks sensitive are masked, and every
secret value the process registered with `logs.REDACTOR` is masked wherever it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import queue
import resource
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeAlias

import structlog

from guardian.errors import GuardianError
from guardian.kraken.times import to_iso
from guardian.kraken.wire import JsonNumber
from guardian.logs import MASK, REDACTOR, SENSITIVE_NAME
from guardian.secret import Secret

log = structlog.get_logger("guardian.journal")

SCHEMA_VERSION: Final = 1
VERDICTS: Final = ("forwarded", "refused", "answered")
UNKNOWN: Final = "unknown"  # the outcome of a forwarded request whose answer was never recorded
PRUNE_EVERY_S: Final = 3600.0  # retention runs at open() and then this often
PRUNE_CHUNK: Final = 5000  # rows deleted per transaction, so a long prune never holds up a commit for long
MAX_BATCH: Final = 1000  # jobs per transaction
RETRY_S: Final = 2.0  # after a failed commit, outcomes not yet written are tried again this often
MAX_RETRY: Final = 100_000  # outcomes kept for another try; beyond that the oldest are dropped
# Outcomes wait this long for the next committed write to ride along with, so an order costs the writer
# thread one wake-up, not two (each wake-up is a thread switch and a GIL hand-over the next order pays
# for). A crash in that window leaves those orders' outcome "unknown", which the journal then says.
OUTCOME_DELAY_S: Final = 0.02
# Commits on the event loop (see the module's docstring): one slower than SLOW_COMMIT_S pauses them for
# LOOP_PAUSE_S. A commit in the thread is measured too, less the GIL's switch interval it may have waited.
SLOW_COMMIT_S: Final = 0.002
LOOP_PAUSE_S: Final = 30.0
FAILURE_LOG_S: Final = 60.0  # while writes keep failing, one error line per this many seconds
BUSY_TIMEOUT_MS: Final = 5000
CHECKPOINT_EVERY_S: Final = 0.5  # the checkpointer copies the WAL into the database this often, when written
# The writer checkpoints by itself only if the WAL grows past this many pages (4 KiB each): a safety valve
# for when the checkpointer cannot keep up or fails.
WRITER_CHECKPOINT_PAGES: Final = 4000
MAX_DEPTH: Final = 8  # deeper than this, parameters and answers are not stored (masked)

_SCHEMA: Final = """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    account TEXT NOT NULL,
    bot TEXT,
    endpoint TEXT NOT NULL,
    params TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    http_status INTEGER,
    outcome TEXT,
    answer TEXT,
    upstream_s REAL,
    total_s REAL,
    finished_at REAL
);
CREATE INDEX requests_received_at ON requests (received_at);
CREATE INDEX requests_unfinished ON requests (id) WHERE outcome IS NULL;
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    account TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE TABLE modes (
    account TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    changed_at REAL NOT NULL,
    "by" TEXT NOT NULL,
    reason TEXT NOT NULL
);
PRAGMA user_version = 1;
"""
_INSERT_REQUEST: Final = (
    "INSERT INTO requests (received_at, account, bot, endpoint, params, verdict, reason, http_status, "
    "outcome, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FINISH_REQUEST: Final = (
    "UPDATE requests SET outcome = ?, http_status = ?, answer = ?, upstream_s = ?, total_s = ?, "
    "finished_at = ? WHERE id = ?"
)
_INSERT_EVENT: Final = "INSERT INTO events (at, kind, account, detail) VALUES (?, ?, ?, ?)"
_UPSERT_MODE: Final = (
    'INSERT INTO modes (account, mode, changed_at, "by", reason) VALUES (?, ?, ?, ?, ?) '
    "ON CONFLICT (account) DO UPDATE SET mode = excluded.mode, changed_at = excluded.changed_at, "
    '"by" = excluded."by", reason = excluded.reason'
)
_PRUNE_REQUESTS: Final = (
    "DELETE FROM requests WHERE id IN "
    "(SELECT id FROM requests WHERE received_at < ? ORDER BY received_at LIMIT ?)"
)
_PRUNE_EVENTS: Final = (
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? ORDER BY at LIMIT ?)"
)


class JournalError(GuardianError):
    """The journal cannot be opened, read or written. The message names the file and the cause, never a
    parameter or a secret. The gateway refuses new risk when `record()` raises it."""


@dataclass(frozen=True, slots=True)
class Intent:
    """One request as guardian decided on it, before the exchange (if at all) has answered."""

    account: str
    bot: str | None  # local client name; None for guardian's own actions
    endpoint: str  # endpoint table name, e.g. "sendorder", "batchorder"
    params: Mapping[str, Any]  # parsed request parameters (str values, or parsed batch JSON)
    verdict: str  # "forwarded" | "refused" | "answered" (answered locally without the exchange)
    reason: str | None = None  # refusal code (e.g. "priceOutsideBand") or a note
    received_at: float = field(default_factory=time.time)  # wall clock
    http_status: int | None = None  # for refused/answered: the status guardian answered with


Write = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Job:
    """One unit of work for the writer thread. `write` None: a barrier (flush) or, with `stop`, the end."""

    write: Write | None
    future: asyncio.Future[Any] | None = None
    keep: bool = False  # written again after a failed commit (finish(): nobody awaits it)
    stop: bool = False
    rows: int = 1  # outcomes it carries, for what is reported lost


class Journal:
    """The journal file and the thread that writes it. `await open()`, use, `await close()`."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: float | None = 90.0,
        prune_every_s: float = PRUNE_EVERY_S,
        loop_commits: bool = True,
    ) -> None:
        if retention_days is not None and not (math.isfinite(retention_days) and retention_days > 0):
            raise ValueError("retention_days must be a positive number of days, or None to keep forever")
        self.path = Path(path)
        self.retention_s = None if retention_days is None else retention_days * 86400.0
        self.prune_every_s = prune_every_s
        self.healthy = True  # False from a failed write until the next successful commit
        self.last_error: str | None = None
        self.unfinished_at_open = 0  # forwarded requests of earlier runs that never got an outcome
        self.thread_commits = 0  # transactions committed by the writer (group commit: far fewer than writes)
        self.loop_commits = 0  # transactions committed on the event loop (record() while the writer is idle)
        self.loop_pauses = 0  # times a slow commit or a failure paused loop commits
        self._loop_commits_on = loop_commits
        self._loop_conn: sqlite3.Connection | None = None  # made by the writer, used only by the loop
        self._loop_paused_until = -math.inf  # monotonic
        self._loop_turn_used = False  # a loop commit in this turn of the event loop already
        self._checkpoints_behind = False  # set by the checkpointer: the WAL outgrows it, let the writer help
        self._submitted = 0  # jobs put on the queue (written by the loop only)
        self._settled = 0  # jobs the writer has taken and finished (written by the writer only)
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._open = False
        self._modes: dict[str, str] = {}
        self._mode_rows: dict[str, dict[str, Any]] = {}  # who set each mode, when, why
        self._failures = 0  # failed transactions since the last success
        self._failure_logged_at = -math.inf
        self._outcomes: list[Write] = []  # finish() writes not yet handed to the writer
        self._outcomes_due: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, healthy={self.healthy})"

    @property
    def commits(self) -> int:
        """Transactions committed, by the writer thread and on the event loop."""
        return self.thread_commits + self.loop_commits

    # ---- the event loop's side ----------------------------------------------------------------------
    async def open(self) -> None:
        """Create or migrate the file, start the writer, apply retention, read the modes. Raises
        JournalError naming the path if the file cannot be opened or written."""
        if self._thread is not None:
            raise JournalError(f"journal {self.path} is already open")
        directory = self.path.parent
        if not directory.is_dir():
            raise JournalError(
                f"cannot open journal {self.path}: directory {directory} does not exist; create it "
                "(under systemd, StateDirectory=) or fix journal.path"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise JournalError(
                f"cannot open journal {self.path}: directory {directory} is not writable by this user "
                "(SQLite writes its WAL beside the file); fix its owner or journal.path"
            )
        opened: asyncio.Future[tuple[int, dict[str, dict[str, Any]]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name="guardian-journal", daemon=True
        )
        self._thread.start()
        try:
            self.unfinished_at_open, self._mode_rows = await opened
            self._modes = {account: str(row["mode"]) for account, row in self._mode_rows.items()}
        except JournalError:
            self._thread.join()
            self._thread = None
            raise
        except asyncio.CancelledError:
            self._put(_Job(None, stop=True))  # the writer closes the file once it has opened it
            raise
        self._open = True
        if self.unfinished_at_open:
            log.warning(
                "journal_outcomes_unknown",
                path=str(self.path),
                count=self.unfinished_at_open,
                note="orders forwarded by an earlier run that never recorded an answer: check them on the "
                "exchange; their outcome is now 'unknown'",
            )

    async def record(self, intent: Intent) -> int:
        """Journal a request; returns its row id once committed. Refused and answered requests are complete
        at once (their outcome is the verdict); a forwarded one waits for `finish()`."""
        if intent.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {intent.verdict!r}")
        forwarded = intent.verdict == "forwarded"
        row = (
            intent.received_at,
            intent.account,
            intent.bot,
            intent.endpoint,
            _json(intent.params),
            intent.verdict,
            _text(intent.reason),
            intent.http_status,
            None if forwarded else intent.verdict,
            None if forwarded else time.time(),
        )
        write: Write = functools.partial(_insert, sql=_INSERT_REQUEST, row=row)
        if self._loop_commit_allowed():
            committed, found = self._commit_on_loop(write)
            if committed:
                return int(found)
        request_id: int = await self._submit(write)
        return request_id

    def finish(
        self,
        request_id: int,
        *,
        outcome: str,
        http_status: int | None,
        answer: Mapping[str, Any] | None,
        upstream_s: float | None,
        total_s: float | None,
    ) -> None:
        """Record a forwarded request's outcome ("success", "error:<code>", "unavailable", "timeout").
        Returns at once; the writer commits it with the next committed write or within OUTCOME_DELAY_S,
        in order after its `record()`. Call it from the event loop's thread."""
        self._check_open()
        row = (
            _text(outcome),
            http_status,
            None if answer is None else _json(answer),
            upstream_s,
            total_s,
            time.time(),
            request_id,
        )
        self._outcomes.append(functools.partial(_insert, sql=_FINISH_REQUEST, row=row))
        if self._outcomes_due is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to wait on (a synchronous caller): hand it over now
                self._hand_over_outcomes()
                return
            self._outcomes_due = loop.call_later(OUTCOME_DELAY_S, self._hand_over_outcomes)

    def _hand_over_outcomes(self) -> None:
        """Queue the waiting outcomes as one job, ahead of whatever is queued next."""
        if self._outcomes_due is not None:
            self._outcomes_due.cancel()
            self._outcomes_due = None
        if not self._outcomes:
            return
        writes, self._outcomes = self._outcomes, []

        def write_all(conn: sqlite3.Connection) -> None:
            for write in writes:
                write(conn)

        self._put(_Job(write_all, keep=True, rows=len(writes)))

    async def event(self, kind: str, account: str | None, detail: Mapping[str, Any]) -> None:
        """Journal an event ("switch_expired", "mode_changed", "admin_kill", ...); committed on return."""
        row = (time.time(), kind, account, _json(detail))
        await self._submit(lambda conn: _insert(conn, _INSERT_EVENT, row))

    async def set_mode(self, account: str, mode: str, *, by: str, reason: str) -> None:
        """Persist an account's trading mode and journal a "mode_changed" event, in one transaction."""
        now = time.time()
        previous = self._modes.get(account)
        mode_row = (account, str(mode), now, _text(by), _text(reason))
        detail = _json({"mode": str(mode), "previous": previous, "by": by, "reason": reason})
        event_row = (now, "mode_changed", account, detail)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_MODE, mode_row)
            conn.execute(_INSERT_EVENT, event_row)

        await self._submit(write)
        self._modes[account] = str(mode)
        self._mode_rows[account] = {"mode": str(mode), "changed_at": now, "by": by, "reason": reason}

    def modes(self) -> dict[str, str]:
        """The last persisted mode of each account: as read at open(), updated by set_mode()."""
        return dict(self._modes)

    def mode_rows(self) -> dict[str, dict[str, Any]]:
        """Each persisted mode with who set it (`by`), when (`changed_at`, epoch s) and why (`reason`)."""
        return {account: dict(row) for account, row in self._mode_rows.items()}

    async def flush(self) -> None:
        """Return once everything enqueued before this call is committed; JournalError if it could not be."""
        await self._submit(None)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and close the file. Idempotent. Raises JournalError (after
        closing) if the last writes could not be committed."""
        if not self._open or self._thread is None:
            return
        self._hand_over_outcomes()
        self._open = False
        self._loop_conn = None  # the writer closes it
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put(_Job(None, stopped, stop=True))
        try:
            await stopped
        finally:
            if stopped.done():
                self._thread.join()
                self._thread = None

    async def events_since(self, kind: str, account: str, since: float) -> list[dict[str, Any]]:
        """The details of `account`'s `kind` events at or after `since` (epoch seconds), oldest first:
        e.g. today's fills, for a restarted daemon's day totals. Read by the writer, in its order."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT detail FROM events WHERE kind = ? AND account = ? AND at >= ? ORDER BY id",
                (kind, account, since),
            ).fetchall()
            return [d for d in (_loads(r[0]) for r in rows) if isinstance(d, dict)]

        found: list[dict[str, Any]] = await self._submit(read)
        return found

    async def answered_since(
        self, account: str, since: float, endpoints: Sequence[str]
    ) -> list[dict[str, Any]]:
        """`account`'s forwarded requests to `endpoints` answered with success at or after `since`."""
        marks = ",".join("?" for _ in endpoints)

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE received_at >= ? AND account = ? "  # noqa: S608
                f"AND verdict = 'forwarded' AND outcome = 'success' AND endpoint IN ({marks}) ORDER BY id",
                (since, account, *endpoints),
            ).fetchall()
            return [_request_row(r) for r in rows]

        found: list[dict[str, Any]] = await self._submit(read)
        return found

    async def unknown_intents(self, since: float, endpoints: Sequence[str]) -> list[dict[str, Any]]:
        """Forwarded requests to `endpoints` received at or after `since` whose outcome is not known: no
        outcome recorded (the process died with them in flight), a timeout or a lost connection. Oldest
        first, as `read_journal` shows requests."""
        marks = ",".join("?" for _ in endpoints)

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE received_at >= ? AND verdict = 'forwarded' "  # noqa: S608
                f"AND endpoint IN ({marks}) AND (outcome IS NULL OR outcome IN ('unknown', 'timeout', 'unavailable')) "
                "ORDER BY id",
                (since, *endpoints),
            ).fetchall()
            return [_request_row(r) for r in rows]

        found: list[dict[str, Any]] = await self._submit(read)
        return found

    async def _call_in_writer(self, write: Write) -> Any:
        """Test and benchmark hook: run `write(connection)` in the writer thread, inside the next batch's
        transaction (e.g. `PRAGMA max_page_count` to make the disk look full, or a sleep to make a commit
        slow). Not for production code."""
        return await self._submit(write)

    async def _set_on_every_connection(self, setting: Write) -> None:
        """Test hook: run `setting` (a PRAGMA SQLite keeps per connection, such as `max_page_count` to make
        the disk look full) in a transaction on the event loop's connection and then, like
        `_call_in_writer`, in the writer's, so both see the same disk. Not for production code."""
        conn = self._loop_conn
        if conn is not None:  # in a transaction, as the writer runs it
            conn.execute("BEGIN IMMEDIATE")
            try:
                setting(conn)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        await self._submit(setting)

    def _check_open(self) -> None:
        if not self._open:
            raise JournalError(f"journal {self.path} is not open")
        if self._thread is None or not self._thread.is_alive():
            raise JournalError(f"journal {self.path}: the writer thread has stopped")

    async def _submit(self, write: Write | None) -> Any:
        self._check_open()
        if self._outcomes:
            self._hand_over_outcomes()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(_Job(write, future))
        return await future

    def _put(self, job: _Job) -> None:
        self._submitted += 1
        self._queue.put(job)

    # ---- commits on the event loop ------------------------------------------------------------------
    def _loop_commit_allowed(self) -> bool:
        """Whether `record()` may commit on the event loop now (see the module's docstring)."""
        return (
            self._loop_conn is not None
            and not self._loop_turn_used
            and self._submitted == self._settled  # the writer is idle: nothing queued or in its hands
            and self.healthy
            and not self._checkpoints_behind
            and time.monotonic() >= self._loop_paused_until
        )

    def _commit_on_loop(self, write: Write) -> tuple[bool, Any]:
        """Commit the waiting outcomes and `write` in one transaction on the loop's own connection; (True,
        its result), or (False, None) with nothing written, for the caller to hand the write to the thread."""
        conn = self._loop_conn
        assert conn is not None
        self._check_open()
        slept = _sleeps()
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")  # busy timeout 0: the thread or another process holds the lock
        except sqlite3.Error:
            return False, None
        loop = asyncio.get_running_loop()
        self._loop_turn_used = True
        loop.call_soon(self._next_turn)
        try:
            for outcome in self._outcomes:
                outcome(conn)
            result = write(conn)
            conn.execute("COMMIT")
        except Exception as exc:  # rolled back; the thread writes it again and fails closed if it must
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._pause_loop_commits("failed", error=str(self._error("write failed", exc)))
            return False, None
        finally:
            took = time.perf_counter() - started
            # Slow because this thread slept (on the disk, or on a lock): pause. Slow only because the
            # kernel ran something else meanwhile (a busy machine): the disk did not make the loop wait.
            if took > SLOW_COMMIT_S and _sleeps() != slept:
                self._pause_loop_commits("slow", took_ms=round(took * 1000, 3))
        self.loop_commits += 1
        if self._outcomes:
            self._outcomes = []
            if self._outcomes_due is not None:
                self._outcomes_due.cancel()
                self._outcomes_due = None
        return True, result

    def _next_turn(self) -> None:
        self._loop_turn_used = False

    def _pause_loop_commits(self, why: str, **detail: Any) -> None:
        """Commit in the thread only, for LOOP_PAUSE_S from now. Called from the loop or the writer."""
        paused = time.monotonic() < self._loop_paused_until
        self._loop_paused_until = time.monotonic() + LOOP_PAUSE_S
        if not paused and self._loop_commits_on:
            self.loop_pauses += 1
            log.warning(
                "journal_loop_commits_paused", path=str(self.path), why=why, pause_s=LOOP_PAUSE_S, **detail
            )

    # ---- the writer thread --------------------------------------------------------------------------
    def _run(self, opened: asyncio.Future[tuple[int, dict[str, dict[str, Any]]]]) -> None:
        try:
            conn = self._connect()
        except JournalError as exc:
            _deliver_soon([(opened, None, exc)])
            return
        stop: _Job | None = None
        lost = 0
        try:
            try:
                found = self._prepare(conn)
            except Exception as exc:  # open() must hear of any failure, or it would wait forever
                error = exc if isinstance(exc, JournalError) else self._error("cannot open", exc)
                _deliver_soon([(opened, None, error)])
                return
            if self._loop_commits_on:
                self._loop_conn = self._connect_for_loop()
            _deliver_soon([(opened, found, None)])
            done = threading.Event()
            checkpointer = threading.Thread(
                target=self._checkpoints, args=(done,), name="guardian-journal-checkpoint", daemon=True
            )
            checkpointer.start()
            try:
                stop, lost = self._serve(conn)
            finally:
                done.set()
                checkpointer.join()
        finally:
            loop_conn, self._loop_conn = self._loop_conn, None
            if loop_conn is not None and stop is not None:  # else the loop may be inside a commit on it
                loop_conn.close()
            conn.close()
            self._open = False
            self._fail_queued()
        if stop is not None and stop.future is not None:
            lost_error = JournalError(
                f"journal {self.path}: {lost} outcome(s) could not be written before closing ({self.last_error})"
            )
            _deliver_soon([(stop.future, None, lost_error if lost else None)])

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from None

    def _connect_for_loop(self) -> sqlite3.Connection | None:
        """The event loop's connection (made here, used only there): it never waits for a lock (busy
        timeout 0) and never checkpoints; its commits are as durable as the writer's (synchronous=NORMAL)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # Read the schema and the pages a record touches now, not in the first commit on the loop.
            conn.execute("SELECT max(id) FROM requests").fetchone()
            conn.execute("SELECT max(received_at) FROM requests").fetchone()
        except sqlite3.Error as exc:
            log.warning("journal_loop_connection_failed", path=str(self.path), error=str(exc))
            return None
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> tuple[int, dict[str, dict[str, Any]]]:
        """WAL, schema, unfinished requests of earlier runs (now marked unknown), retention, the modes."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(
                f"cannot open journal {self.path}: the file system does not support SQLite's WAL mode "
                f"(got {mode!r}); put the journal on a local disk"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"cannot open journal {self.path}: it was written by a newer guardian (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade guardian or point journal.path elsewhere"
            )
        if version < 1:
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        unfinished = conn.execute("SELECT count(*) FROM requests WHERE outcome IS NULL").fetchone()[0]
        conn.execute("UPDATE requests SET outcome = ? WHERE outcome IS NULL", (UNKNOWN,))
        conn.execute("COMMIT")
        while self._prune(conn):
            pass
        rows = conn.execute('SELECT account, mode, changed_at, "by", reason FROM modes').fetchall()
        modes = {r[0]: {"mode": r[1], "changed_at": r[2], "by": r[3], "reason": r[4]} for r in rows}
        return unfinished, modes

    def _serve(self, conn: sqlite3.Connection) -> tuple[_Job | None, int]:
        """Take jobs until the stop job; returns it and the number of outcomes that stayed unwritten."""
        retry: list[_Job] = []  # outcomes of a failed transaction, tried again
        retry_at = next_prune = math.inf
        if self.retention_s is not None:
            next_prune = time.monotonic() + self.prune_every_s
        while True:
            wait = min(retry_at, next_prune) - time.monotonic()
            batch: list[_Job] = []
            try:
                batch.append(
                    self._queue.get(timeout=max(wait, 0.0)) if wait < math.inf else self._queue.get()
                )
                while len(batch) < MAX_BATCH:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            taken = len(batch)
            stop = next((job for job in batch if job.stop), None)
            batch = [job for job in batch if not job.stop]
            # Outcomes from a failed transaction go in a transaction of their own: one that can never be
            # written must not take every new record down with it (that would refuse all new risk forever).
            if retry and (batch or time.monotonic() >= retry_at or stop is not None):
                retry = self._commit(conn, retry, retrying=True)
            if batch:
                retry += self._commit(conn, batch, taken=taken)
            else:
                self._settled += taken
            waiting = sum(job.rows for job in retry)
            if waiting > MAX_RETRY:
                first = dropped = 0
                while waiting - dropped > MAX_RETRY:
                    dropped += retry[first].rows
                    first += 1
                retry = retry[first:]
                log.error("journal_outcomes_dropped", path=str(self.path), count=dropped)
            retry_at = time.monotonic() + RETRY_S if retry else math.inf
            if stop is not None:
                return stop, sum(job.rows for job in retry)
            if time.monotonic() >= next_prune:
                try:
                    more = self._prune(conn)
                except sqlite3.Error as exc:
                    self._failed(self._error("retention failed", exc))
                    more = False
                next_prune = time.monotonic() + (0.0 if more else self.prune_every_s)

    def _checkpoints(self, done: threading.Event) -> None:
        """The checkpointer thread: copy the WAL into the database file in the background, so the fsyncs
        a checkpoint needs never delay a commit (sqlite runs it without the GIL, on its own connection)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            log.warning("journal_checkpointer_failed", path=str(self.path), error=str(exc))
            self._checkpoints_behind = True  # for good: only the writer's own checkpoints are left
            return
        checkpointed = self.commits
        try:
            while not done.wait(CHECKPOINT_EVERY_S):
                if self.commits == checkpointed:
                    continue
                checkpointed = self.commits
                try:
                    _, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the WAL grows until the writer's safety valve checkpoints
                    log.warning("journal_checkpoint_failed", path=str(self.path), error=str(exc))
                    self._checkpoints_behind = True
                else:
                    # Loop commits never checkpoint: while this thread falls behind, the writer takes
                    # every write, and its safety valve (WRITER_CHECKPOINT_PAGES) applies.
                    self._checkpoints_behind = wal_pages - copied > WRITER_CHECKPOINT_PAGES
        finally:
            conn.close()

    def _commit(
        self, conn: sqlite3.Connection, batch: list[_Job], *, retrying: bool = False, taken: int = 0
    ) -> list[_Job]:
        """Write `batch` in one transaction and settle its futures; returns the jobs to try again. `taken`:
        the jobs just taken from the queue, done once this returns (the loop may commit again when every
        job it handed over is done: counted before a waiter hears of it, so its next record() may).

        Only a batch of new work makes the journal healthy again: a small retried outcome that happens
        to fit says nothing about whether the next order's intent will, and `healthy` is what the
        gateway and /readyz go by."""
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                results.append(None if job.write is None else job.write(conn))
            started = time.perf_counter()
            conn.execute("COMMIT")
            took = time.perf_counter() - started
            if took > SLOW_COMMIT_S + sys.getswitchinterval():  # the canary for loop commits
                self._pause_loop_commits("slow", took_ms=round(took * 1000, 3), thread=True)
        except Exception as exc:  # every failure, a bug included, reaches every waiter and the log
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = self._error("write failed", exc)
            self._failed(error, unexpected=not isinstance(exc, sqlite3.Error))
            self._settled += taken
            _deliver_soon(
                [(job.future, None, JournalError(str(error))) for job in batch if job.future is not None]
            )
            return [job for job in batch if job.keep]
        self.thread_commits += 1
        # Neither a retried outcome nor an empty transaction (a flush) says the next write will fit.
        if not retrying and any(job.write is not None for job in batch):
            if not self.healthy:
                log.info("journal_write_recovered", path=str(self.path), failures=self._failures)
            self.healthy = True
            self._failures = 0
        self._settled += taken
        _deliver_soon(
            [(job.future, result, None) for job, result in zip(batch, results, strict=True) if job.future]
        )
        return []

    def _prune(self, conn: sqlite3.Connection) -> bool:
        """Delete up to PRUNE_CHUNK rows of each table older than the retention; True if more are left."""
        if self.retention_s is None:
            return False
        cutoff = time.time() - self.retention_s
        conn.execute("BEGIN IMMEDIATE")
        try:
            requests = conn.execute(_PRUNE_REQUESTS, (cutoff, PRUNE_CHUNK)).rowcount
            events = conn.execute(_PRUNE_EVENTS, (cutoff, PRUNE_CHUNK)).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.thread_commits += 1
        if requests or events:
            log.info("journal_pruned", path=str(self.path), requests=requests, events=events)
        return max(requests, events) >= PRUNE_CHUNK

    def _error(self, what: str, exc: BaseException) -> JournalError:
        # sqlite's messages ("database or disk is full", "disk I/O error") never quote bound values;
        # anything else (a bug) is named by its type only, in case its text carried a parameter.
        cause = str(exc) if isinstance(exc, sqlite3.Error) else type(exc).__name__
        return JournalError(f"journal {self.path}: {what}: {cause}")

    def _failed(self, error: JournalError, *, unexpected: bool = False) -> None:
        self.healthy = False
        self.last_error = str(error)
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1 or now - self._failure_logged_at >= FAILURE_LOG_S:
            self._failure_logged_at = now
            log.error(
                "journal_write_failed",
                path=str(self.path),
                error=str(error),
                failures=self._failures,
                unexpected=unexpected,
                note="new orders are refused while the journal cannot be written",
            )

    def _fail_queued(self) -> None:
        """The writer is ending: whatever is still queued will never be written."""
        error = JournalError(f"journal {self.path} is closed")
        pending: list[Settlement] = []
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._queue.get_nowait()
                if job.future is not None:
                    pending.append((job.future, None, error))
        _deliver_soon(pending)


def _sleeps() -> int:
    """How many times the calling thread has slept so far (voluntary context switches: waiting on I/O or a
    lock, as opposed to the kernel giving its core to someone else). Linux; elsewhere a new value each
    call, so every slow commit counts as one that slept."""
    if _RUSAGE_THREAD is None:
        return time.perf_counter_ns()
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


_RUSAGE_THREAD: Final = getattr(resource, "RUSAGE_THREAD", None)

Settlement: TypeAlias = tuple[asyncio.Future[Any], Any, BaseException | None]


def _deliver_soon(settlements: list[Settlement]) -> None:
    """From the writer thread: settle futures on their loops, one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Settlement]] = {}
    for settlement in settlements:
        by_loop.setdefault(settlement[0].get_loop(), []).append(settlement)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(settlements: list[Settlement]) -> None:
    for future, result, error in settlements:
        if future.done():  # the caller was cancelled; the write stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


# ---- what is stored ----------------------------------------------------------------------------------


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json(value: Mapping[str, Any]) -> str:
    """Compact JSON of `value` with every secret masked."""
    return _ENCODER.encode(_redacted(value))


@functools.lru_cache(maxsize=4096)
def _sensitive(key: str) -> bool:
    """Parameter names repeat (orderType, symbol, ...): each is matched against the pattern once."""
    return SENSITIVE_NAME.search(key) is not None


def _insert(conn: sqlite3.Connection, sql: str, row: tuple[Any, ...]) -> int | None:
    """Run one statement of a batch; the new row's id (of an INSERT) is the job's result."""
    return conn.execute(sql, row).lastrowid


def _text(value: str | None) -> str | None:
    return None if value is None else REDACTOR.scrub(value)


def _redacted(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON data: keys that look sensitive (logs.SENSITIVE_NAME) masked, registered secret
    values masked inside every string (logs.REDACTOR), anything nested deeper than MAX_DEPTH masked whole."""
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    if isinstance(value, float):
        return _number(value)
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, Secret) or depth >= MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return {
            str(key): MASK if _sensitive(str(key)) else _redacted(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redacted(item, depth + 1) for item in value]
    return REDACTOR.scrub(str(value))


def _number(value: float) -> float | str:
    """A float as JSON: itself when its digits say exactly what was sent; otherwise the text that was sent
    (a batch's `10.0000000000000001`, which a double would store as 10.0) or, for what JSON cannot hold
    (`1e400` read as infinity), its text."""
    if isinstance(value, JsonNumber):
        try:
            same = math.isfinite(value) and Decimal(repr(float(value))) == Decimal(value.text)
        except InvalidOperation:
            same = False
        return float(value) if same else value.text
    return value if math.isfinite(value) else repr(value)


# ---- reading -----------------------------------------------------------------------------------------

_REQUEST_COLUMNS: Final = (
    "id, received_at, account, bot, endpoint, params, verdict, reason, http_status, outcome, answer, "
    "upstream_s, total_s, finished_at"
)
_READ_REQUESTS: Final = (
    f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE received_at >= ? "  # noqa: S608 (constants only)
    "ORDER BY received_at DESC, id DESC LIMIT ?"
)
_READ_EVENTS: Final = (
    "SELECT id, at, kind, account, detail FROM events WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?"
)


def read_journal(path: Path, *, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The journal's rows at or after `since` (epoch seconds), the last `limit` of them, oldest first:
    requests and events merged in time order, each with "type" ("request" or "event") and ISO 8601 UTC
    times. Opens the file read-only; the daemon may keep writing meanwhile."""
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    path = Path(path)
    if not path.is_file():
        raise JournalError(f"no journal at {path}: check journal.path (relative to the daemon's directory)")
    bound = -1 if limit is None else limit
    start = -math.inf if since is None else since
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise JournalError(
                f"cannot read journal {path}: "
                + ("it is not a guardian journal" if version == 0 else f"unknown schema version {version}")
            )
        requests = conn.execute(_READ_REQUESTS, (start, bound)).fetchall()
        events = conn.execute(_READ_EVENTS, (start, bound)).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None
    finally:
        conn.close()
    rows = [(r[1], 0, r[0], _request_row(r)) for r in requests] + [
        (e[1], 1, e[0], _event_row(e)) for e in events
    ]
    rows.sort(key=lambda row: row[:3])
    if limit is not None:
        rows = rows[-limit:]
    return [row[3] for row in rows]


def _request_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "type": "request",
        "id": r[0],
        "time": to_iso(r[1]),
        "account": r[2],
        "bot": r[3],
        "endpoint": r[4],
        "params": _loads(r[5]),
        "verdict": r[6],
        "reason": r[7],
        "http_status": r[8],
        "outcome": r[9] or UNKNOWN,
        "answer": _loads(r[10]),
        "upstream_s": r[11],
        "total_s": r[12],
        "finished_at": None if r[13] is None else to_iso(r[13]),
    }


def _event_row(e: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "type": "event",
        "id": e[0],
        "time": to_iso(e[1]),
        "kind": e[2],
        "account": e[3],
        "detail": _loads(e[4]),
    }


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
