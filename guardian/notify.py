"""systemd's notify protocol, spoken directly (no libsystemd): `READY=1`, `STATUS=...`, `STOPPING=1`, and
`WATCHDOG=1` pings.

The protocol is one datagram per message to the unix socket named by `$NOTIFY_SOCKET` (a path, or an
abstract name written with a leading `@`). The watchdog pings are sent by a coroutine on the event loop
itself, at half of `$WATCHDOG_USEC`: if the loop is blocked, the pings stop and systemd restarts the
service, which is the point. Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("guardian.notify")


def _address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def _clean(value: str) -> str:
    """A value on one line: the protocol separates assignments with newlines."""
    return " ".join(value.split())


class Notifier:
    """Sends notify messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_name = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = self._watchdog_interval(env)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        raw = env.get("WATCHDOG_USEC")
        if not raw:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            usec = int(raw)
        except ValueError:
            log.warning("notify_watchdog_usec_invalid", value=raw)
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    @property
    def enabled(self) -> bool:
        return self.socket_name is not None

    def send(self, **fields: str) -> bool:
        """Send `KEY=value` assignments in one datagram; True if it was handed to the socket."""
        if self.socket_name is None:
            return False
        message = "\n".join(f"{key}={_clean(value)}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, _address(self.socket_name))
        except OSError as exc:  # no listener, queue full, socket gone: say so, never crash the daemon
            self.failed += 1
            log.warning("notify_send_failed", error=type(exc).__name__, fields=sorted(fields))
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    async def run_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping at half the watchdog interval while `healthy()` holds; returns at once if there is no
        watchdog. Runs until cancelled. Scheduled on the monotonic clock, subtracting the work done."""
        interval = self.watchdog_interval_s
        if interval is None or not self.enabled:
            return
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if healthy():
                self.watchdog()
            else:
                log.error("notify_watchdog_withheld", reason="unhealthy")
            next_at += interval
            now = loop.time()
            if next_at < now:  # the loop was blocked past a beat: don't burst to catch up
                next_at = now
            await asyncio.sleep(next_at - now)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
