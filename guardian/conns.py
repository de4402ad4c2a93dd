"""The local server's connections: who may hold one, for how long, and how many (docs/network.md).

aiohttp's server closes idle keep-alive connections and nothing else; nginx and uvicorn do more, and so
does guardian's one server (the gateway, the relay, the status page, metrics):

- **a deadline per request** (`[server] request_timeout_s`): from a request's first byte (a connection's
  opening, for its first request) its headers and its body must have arrived within it, else the
  connection is closed (a 408 in Kraken's envelope when the headers never finished). A connection that
  sends nothing, or one byte a minute, holds a file descriptor for that long at most;
- **an idle keep-alive timeout** (`keepalive_timeout_s`): aiohttp's own, configured;
- **caps** (`max_connections`, `max_connections_per_source`): a connection beyond either is answered a
  503 (`Unavailable`) and closed at once, before anything of it is read, and counted;
- **file descriptors kept for the exchange**: at start the soft `RLIMIT_NOFILE` is raised to the hard one
  and `max_connections` is fitted below it, `reserve_fds()` short of it, so that the switch's refreshes,
  the stream and the gateway's own connections to the exchange can always open one;
- **accept errors** (EMFILE "Too many open files" and its kin, which asyncio reports through the loop's
  exception handler with a traceback) become one `accept_failed` event per minute with a count.

And per bot (`[[accounts.clients]] allow_from`): a key is accepted only from the listed networks, checked
on the gateway before a request's body is read (`check_source`) and at the relay's login (`allowed`).
Each is read from the client's configuration at the request, so a reloaded entry applies at once.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import resource
import time
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge

from guardian.config import ClientConfig, ServerConfig
from guardian.gateway.refusal import Refusal
from guardian.kraken.times import to_iso
from guardian.tls import HANDSHAKE_FAILURES

log = structlog.get_logger("guardian.conns")

SOURCE_REFUSED: Final = "sourceNotAllowed"
REFUSAL_REASONS: Final = ("total", "per_source")
DEADLINE_PHASES: Final = ("headers", "body")
# What asyncio's accept loop reports through the loop's exception handler (it then waits a second).
ACCEPT_ERRNOS: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_MESSAGES: Final = ("socket.accept() out of system resource", "Error on transport creation")
# File descriptors kept out of the connection cap: the process's own (standard streams, the two event
# loops, the journal's database, WAL and shared memory, listening sockets, DNS, sd_notify, spares) and
# each account's way to the exchange (the switch's pool of 2, the gateway's of 32, the stream, the ticker
# link, spares), and each notifier's.
RESERVE_BASE_FDS: Final = 64
# The listening socket's backlog. asyncio accepts up to this many connections at each turn before any of
# them is refused and closed, so a flood at the cap holds that many descriptors for a moment beyond it:
# they are kept in the reserve (the drill found EMFILE in about half its runs without them).
LISTEN_BACKLOG: Final = 64
RESERVE_PER_ACCOUNT_FDS: Final = 40
RESERVE_PER_NOTIFIER_FDS: Final = 4
NOFILE_WHEN_UNLIMITED: Final = 1 << 20
MIN_CONNECTIONS: Final = 1
TALLY_WINDOW_S: Final = 60.0


# ---- source addresses -------------------------------------------------------------------------------
def source_of(peername: Any) -> str:
    """A peer's address as one string per host: an IPv4-mapped IPv6 address as IPv4, no zone or port;
    "" when it is not an IP socket."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return ""
    try:
        address = ipaddress.ip_address(peername[0].split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def allowed(client: ClientConfig, source: str) -> bool:
    """Whether `client`'s keys are accepted from `source` (its allow_from; absent: from anywhere)."""
    networks = client.allow_from
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    return any(address in network for network in networks)


def request_source(request: web.BaseRequest) -> str:
    transport = request.transport
    return source_of(transport.get_extra_info("peername") if transport is not None else None)


def source_refusal(request: web.BaseRequest) -> Refusal:
    """Refusal(`sourceNotAllowed`) for a known bot's key from outside its allow_from. The gateway asks
    before the body is read, with the key looked up but not yet verified: the answer is the same for a
    valid and a forged signature, and tells nothing a holder of the key does not know."""
    return Refusal(
        SOURCE_REFUSED,
        f"this key is not accepted from {request_source(request) or 'this address'}: its bot's "
        "accounts.clients.allow_from does not list it",
    )


# ---- the file limit ---------------------------------------------------------------------------------
def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (logged); the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("file_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("file_limit_raised", was=soft, soft=target, hard=hard)
        return target
    log.info("file_limit", soft=soft, hard=hard)
    return NOFILE_WHEN_UNLIMITED if soft == resource.RLIM_INFINITY else soft


def reserve_fds(accounts: int, notifiers: int = 0) -> int:
    """File descriptors kept below the limit for everything but bots' connections."""
    return (
        RESERVE_BASE_FDS
        + LISTEN_BACKLOG
        + RESERVE_PER_ACCOUNT_FDS * accounts
        + RESERVE_PER_NOTIFIER_FDS * notifiers
    )


# ---- logs for bursts ----------------------------------------------------------------------------------
class Tally:
    """One log event for a burst of the same thing: the first at once, then at most one a window with
    the count since the last (what a flood of refusals or accept errors is worth in a log)."""

    def __init__(self, event: str, window_s: float = TALLY_WINDOW_S) -> None:
        self.event = event
        self.window_s = window_s
        self.total = 0
        self._pending = 0
        self._fields: dict[str, Any] = {}
        self._next_at = 0.0
        self._flush: asyncio.TimerHandle | None = None

    def add(self, **fields: Any) -> None:
        self.total += 1
        self._pending += 1
        self._fields = fields
        now = time.monotonic()
        if now >= self._next_at:
            self._log()
            self._next_at = now + self.window_s
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._next_at - now, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        if self._pending:
            self._log()
            self._next_at = time.monotonic() + self.window_s

    def _log(self) -> None:
        log.warning(self.event, count=self._pending, total=self.total, **self._fields)
        self._pending = 0

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._pending:
            self._log()


# ---- the gate -----------------------------------------------------------------------------------------
class Gate:
    """Admission for the local server's connections: the caps, the request deadline, the counts."""

    def __init__(self, server: ServerConfig, registry: CollectorRegistry | None = None) -> None:
        self.request_timeout_s = server.request_timeout_s
        self.configured_max = server.max_connections
        self.max_connections = server.max_connections  # fitted below the file limit by fit()
        self.max_per_source = server.max_connections_per_source
        self.open = 0
        self.by_source: dict[str, int] = {}
        self.refused_tally = Tally("connections_refused")
        self.late_tally = Tally("request_deadline_passed")
        self.accept_tally = Tally("accept_failed")
        self.handshake_tallies: dict[str, Tally] = {}
        self._restore: tuple[asyncio.AbstractEventLoop, Any] | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.refused = Counter(
            "guardian_connections_refused",
            "Connections to guardian refused at once (503, closed): over max_connections (total) or "
            "max_connections_per_source (per_source)",
            ["reason"],
            registry=registry,
        )
        self.late = Counter(
            "guardian_request_deadline_closes",
            "Connections closed because a request's headers or body had not arrived within request_timeout_s",
            ["phase"],
            registry=registry,
        )
        self.accept_errors = Counter(
            "guardian_accept_errors",
            "Errors accepting a connection (EMFILE: out of file descriptors), by errno",
            ["errno"],
            registry=registry,
        )
        self.handshake_failures = Counter(
            "guardian_tls_handshake_failures",
            "TLS handshakes guardian's server ended with an error, by kind (no_client_certificate, "
            "client_certificate_refused, server_certificate_refused, protocol_version, plain_http, other)",
            ["reason"],
            registry=registry,
        )
        open_gauge = Gauge("guardian_connections", "Connections to guardian open now", registry=registry)
        open_gauge.set_function(lambda: float(self.open))
        cap = Gauge(
            "guardian_connections_max",
            "The connection cap in force: max_connections, or less when the file limit leaves less room",
            registry=registry,
        )
        cap.set_function(lambda: float(self.max_connections))
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for phase in DEADLINE_PHASES:
            self.late.labels(phase)
        for number in ACCEPT_ERRNOS:
            self.accept_errors.labels(errno.errorcode[number])
        for kind in HANDSHAKE_FAILURES:
            self.handshake_failures.labels(kind)

    def tls_handshake_failed(self, kind: str, reason: str) -> None:
        """A handshake the server ended (guardian.tls.watched_sslobject): counted by kind, and one
        `tls_handshake_failed` line per kind a minute with OpenSSL's reason and the count."""
        kind = kind if kind in HANDSHAKE_FAILURES else "other"
        self.handshake_failures.labels(kind).inc()
        tally = self.handshake_tallies.get(kind)
        if tally is None:
            tally = self.handshake_tallies[kind] = Tally("tls_handshake_failed")
        tally.add(kind=kind, openssl_reason=reason)

    def fit(self, file_limit: int, reserve: int) -> int:
        """Fit the total cap below `file_limit`, `reserve` descriptors short of it; the cap."""
        room = max(MIN_CONNECTIONS, file_limit - reserve)
        self.max_connections = min(self.configured_max, room)
        if self.max_connections < self.configured_max:
            log.warning(
                "max_connections_lowered",
                configured=self.configured_max,
                max_connections=self.max_connections,
                file_limit=file_limit,
                reserved=reserve,
                fix="raise the file limit (LimitNOFILE= under systemd, ulimit -n) or lower server.max_connections",
            )
        else:
            log.info("connection_limits", max_connections=self.max_connections, file_limit=file_limit)
        return self.max_connections

    def admit(self, source: str, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in, or answer it 503 and close it (counted, logged in tallies)."""
        held = self.by_source.get(source, 0)
        if self.open >= self.max_connections:
            reason = "total"
        elif held >= self.max_per_source:
            reason = "per_source"
        else:
            self.open += 1
            self.by_source[source] = held + 1
            return True
        self.refused.labels(reason).inc()
        self.refused_tally.add(reason=reason, source=source, open=self.open)
        limit = self.max_connections if reason == "total" else self.max_per_source
        _answer_and_close(
            transport,
            503,
            "Service Unavailable",
            "Unavailable",
            f"guardian holds {limit} connections{'' if reason == 'total' else ' from this address'}, "
            "its most: try again shortly",
        )
        return False

    def release(self, source: str) -> None:
        self.open -= 1
        held = self.by_source.get(source, 0) - 1
        if held > 0:
            self.by_source[source] = held
        else:
            self.by_source.pop(source, None)

    def passed(self, phase: str, source: str) -> None:
        self.late.labels(phase).inc()
        self.late_tally.add(phase=phase, source=source, request_timeout_s=self.request_timeout_s)

    # ---- accept errors ------------------------------------------------------------------------------
    def watch_accepts(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take asyncio's accept errors from the loop's exception handler: counted, logged in tallies,
        never a traceback. Everything else goes on to the handler that was there."""
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            message = str(context.get("message", ""))
            if (
                isinstance(exc, OSError)
                and exc.errno in ACCEPT_ERRNOS
                and message.startswith(_ACCEPT_MESSAGES)
            ):
                name = errno.errorcode[exc.errno]
                self.accept_errors.labels(name).inc()
                self.accept_tally.add(errno=name, error=exc.strerror, open=self.open)
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        self._restore = (loop, previous)

    def close(self) -> None:
        """Put the loop's exception handler back; say what the tallies still hold."""
        if self._restore is not None:
            loop, previous = self._restore
            loop.set_exception_handler(previous)
            self._restore = None
        for tally in (
            self.refused_tally,
            self.late_tally,
            self.accept_tally,
            *self.handshake_tallies.values(),
        ):
            tally.close()


def _answer_and_close(
    transport: asyncio.BaseTransport, status: int, reason: str, code: str, text: str
) -> None:
    """A whole HTTP/1.1 answer in Kraken's envelope, written straight to the transport, then closed."""
    body = json.dumps({"result": "error", "serverTime": to_iso(time.time()), "error": code, "message": text})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
        transport.write(head.encode() + body.encode())
    transport.close()


# ---- a connection -------------------------------------------------------------------------------------
class GuardedConnection(RequestHandler):
    """aiohttp's connection with the gate: admitted or refused when it opens, released when it ends, and
    closed when a request's headers and body have not all arrived within the gate's request_timeout_s.
    Without a gate it is aiohttp's own."""

    def __init__(self, manager: Any, *, gate: Gate | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._source = ""
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the body of the request being received, once its headers are

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate is not None:
            self._source = source_of(transport.get_extra_info("peername"))
            if not gate.admit(self._source, transport):
                self._manager = None  # never known to the server: its connection_lost does nothing
                return
            self._admitted = True
        super().connection_made(transport)
        self._arm()  # the first request, from the connection's first moment

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._admitted and self._gate is not None:
            self._admitted = False
            self._gate.release(self._source)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._gate is None:
            super().data_received(data)
            return
        if self._deadline is None and data and self._receiving_http():
            self._arm()  # a request's first byte
        queued = len(self._messages)
        super().data_received(data)
        if not self._receiving_http():  # a WebSocket now: the relay's own heartbeat watches it
            self._body = None
            self._disarm()
            return
        if len(self._messages) > queued:
            self._body = self._messages[-1][1]
        if self._body is not None and self._body.is_eof():
            self._body = None  # all of it arrived: what the handler does with it takes what it takes
            self._disarm()

    def _receiving_http(self) -> bool:
        return not self._upgraded and self._payload_parser is None

    def _arm(self) -> None:
        if self._gate is None or self._force_close:
            return
        self._disarm()
        self._deadline = self._loop.call_later(self._gate.request_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        """The request's deadline passed: headers missing (a 408, closed), or a body still coming (closed,
        and the handler waiting for it cancelled before it has done anything with it)."""
        self._deadline = None
        assert self._gate is not None
        phase = "headers" if self._body is None else "body"
        self._gate.passed(phase, self._source)
        transport = self.transport
        if phase == "headers" and transport is not None and not self._request_in_progress:
            self.transport = None  # the answer is written here, not by aiohttp
            self._force_close = True
            _answer_and_close(
                transport,
                408,
                "Request Timeout",
                "requestTimeout",
                f"the request's headers did not arrive within {self._gate.request_timeout_s:g} s",
            )
        task = self._task_handler
        self.force_close()
        if phase == "body" and task is not None:
            task.cancel()
