"""Connection hygiene (issue 23, guardian.conns) on a real loopback server: the caps in total and per
source address, the request deadline for headers and body, the idle keep-alive timeout, the file limit
and accept errors. A small application on guardian's own Runner and Gate; 127.0.0.2 stands in for
another host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from guardian import conns
from guardian.config import ServerConfig
from guardian.server import Runner

DEADLINE_S = 0.5


@dataclass
class Served:
    gate: conns.Gate
    registry: CollectorRegistry
    port: int
    cancelled: list[str] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        self.writers.append(writer)
        return reader, writer

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def served(**limits: float) -> AsyncIterator[Served]:
    settings = {"request_timeout_s": DEADLINE_S, "max_connections": 64, "max_connections_per_source": 64}
    server = ServerConfig(**{**settings, **limits})  # type: ignore[arg-type]
    registry = CollectorRegistry()
    gate = conns.Gate(server, registry)
    found = Served(gate, registry, 0)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(DEADLINE_S * 2)  # longer than the deadline: the handler's time is its own
        return web.json_response({"slow": True})

    async def echo(request: web.Request) -> web.Response:
        try:
            return web.json_response({"length": len(await request.read())})
        except asyncio.CancelledError:
            found.cancelled.append(request.path)
            raise

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    runner = Runner(app, access_log=None, keepalive_timeout=server.keepalive_timeout_s, gate=gate)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.port = runner.addresses[0][1]
    try:
        yield found
    finally:
        for writer in found.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await runner.cleanup()
        gate.close()


async def answer(reader: asyncio.StreamReader, timeout_s: float = 2.0) -> tuple[int, dict[str, object]]:
    """One whole answer: its status and its JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
    return int(lines[0].split()[1]), json.loads(body)


async def closed(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> float:
    """Seconds until the server closes the connection (everything it still sends is read and dropped)."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(4096), timeout_s):
            pass
    return time.monotonic() - started


def ping(extra: str = "") -> bytes:
    return f"GET /ping HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def ping_ok(s: Served, source: str = "127.0.0.1") -> bool:
    reader, writer = await s.connect(source)
    writer.write(ping("Connection: close\r\n"))
    return (await answer(reader))[0] == 200


# ---- the caps ---------------------------------------------------------------------------------------
async def test_one_connection_over_the_total_cap_is_answered_503_and_closed_at_once_and_counted() -> None:
    async with served(max_connections=16, max_connections_per_source=16) as s:
        held = [await s.connect() for _ in range(16)]
        await asyncio.sleep(0.05)
        assert s.gate.open == 16
        started = time.monotonic()
        reader, writer = await s.connect()
        status, body = await answer(reader)
        assert (status, body["error"]) == (503, "Unavailable")
        assert await closed(reader) < 0.5 and time.monotonic() - started < 0.5
        assert s.metric("guardian_connections_refused_total", reason="total") == 1
        assert s.metric("guardian_connections") == 16
        writer.close()
        held.pop()[1].close()  # one leaves: the next one is let in
        await asyncio.sleep(0.05)
        assert await ping_ok(s)
        for _, w in held:
            w.close()


async def test_a_source_over_its_own_cap_is_refused_while_another_source_still_gets_in() -> None:
    async with served(max_connections=64, max_connections_per_source=3) as s:
        held = [await s.connect("127.0.0.2") for _ in range(3)]
        await asyncio.sleep(0.05)
        reader, writer = await s.connect("127.0.0.2")
        assert (await answer(reader))[0] == 503
        writer.close()
        assert await ping_ok(s, "127.0.0.1")
        assert s.metric("guardian_connections_refused_total", reason="per_source") == 1
        assert s.gate.by_source == {"127.0.0.2": 3}
        for _, w in held:
            w.close()
        await asyncio.sleep(0.05)
        assert s.gate.open == 0 and s.gate.by_source == {}  # every one released


# ---- the request deadline ---------------------------------------------------------------------------
async def test_headers_that_never_finish_are_answered_408_and_closed_at_the_deadline() -> None:
    async with served() as s:
        silent = await s.connect()  # sends nothing at all
        reader, writer = await s.connect()
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        status, body = await answer(reader)
        assert (status, body["error"]) == (408, "requestTimeout")
        assert await closed(silent[0]) < DEADLINE_S * 2
        assert s.metric("guardian_request_deadline_closes_total", phase="headers") == 2
        assert s.gate.open == 0


async def test_a_body_that_never_finishes_is_cut_at_the_deadline_its_handler_cancelled_without_a_traceback() -> (
    None
):
    async with served() as s:
        reader, writer = await s.connect()
        with capture_logs() as logged:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            took = await closed(reader)
        assert DEADLINE_S * 0.8 < took < DEADLINE_S * 3
        assert s.cancelled == ["/echo"]
        assert s.metric("guardian_request_deadline_closes_total", phase="body") == 1
        assert [line["event"] for line in logged] == ["request_deadline_passed"]
        assert not any("exc_info" in line or "exception" in line for line in logged)


async def test_slow_but_complete_requests_and_slow_handlers_are_never_cut() -> None:
    async with served() as s:
        reader, writer = await s.connect()
        for chunk in (b"POST /echo HTTP/1.1\r\nHost: x\r\n", b"Content-Length: 4\r\n\r\n", b"ab", b"cd"):
            writer.write(chunk)
            await asyncio.sleep(DEADLINE_S / 5)  # the whole request within the deadline, in pieces
        assert await answer(reader) == (200, {"length": 4})
        await asyncio.sleep(DEADLINE_S * 1.5)  # idle on keep-alive: not the request deadline's business
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # answered after twice the deadline
        assert await answer(reader, timeout_s=5) == (200, {"slow": True})
        writer.write(ping())
        assert (await answer(reader))[0] == 200
        assert s.metric("guardian_request_deadline_closes_total", phase="headers") == 0
        assert s.metric("guardian_request_deadline_closes_total", phase="body") == 0
        writer.close()


async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout_s() -> None:
    async with served(keepalive_timeout_s=1.0, request_timeout_s=5.0) as s:
        reader, writer = await s.connect()
        writer.write(ping())
        assert (await answer(reader))[0] == 200
        assert 0.8 < await closed(reader, timeout_s=4) < 2.5
        writer.close()


# ---- the file limit and accept errors -----------------------------------------------------------------
def test_the_soft_file_limit_is_raised_to_the_hard_one_and_the_cap_fitted_below_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with capture_logs() as logged:
            assert conns.raise_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert logged[0]["event"] == "file_limit_raised" and logged[0]["was"] == lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    gate = conns.Gate(ServerConfig(max_connections=4096))
    with capture_logs() as logged:
        assert gate.fit(1024, conns.reserve_fds(accounts=2, notifiers=1)) == 1024 - 64 - 64 - 80 - 4
    assert logged[0]["event"] == "max_connections_lowered"
    assert gate.fit(1 << 20, conns.reserve_fds(accounts=2)) == 4096  # room enough: as configured


async def test_accept_errors_are_one_event_with_a_count_never_asyncios_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served(request_timeout_s=10) as s:
        loop = asyncio.get_running_loop()
        s.gate.watch_accepts(loop)
        # Clients whose connections the kernel completes and queues, while guardian cannot accept them.
        waiting = [socket.socket() for _ in range(5)]
        try:
            for sock in waiting:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", s.port))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            with capture_logs() as logged, caplog.at_level(logging.DEBUG, logger="asyncio"):
                # Not one descriptor spare: the kernel gives the lowest free number, and the limit is on
                # numbers, not on the count (a process that closed some has holes below its highest).
                lowest_free = os.open(os.devnull, os.O_RDONLY)
                os.close(lowest_free)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
                try:  # the accept loop tries, fails with EMFILE, retries in a second
                    await wait_until(
                        lambda: s.metric("guardian_accept_errors_total", errno="EMFILE") >= 1, 10
                    )
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                await wait_until(lambda: s.gate.open == 5)  # and then takes them in
            errors = s.metric("guardian_accept_errors_total", errno="EMFILE")
            assert errors >= 1
            said = [line for line in logged if line["event"] == "accept_failed"]
            assert said == [
                {**said[0], "count": 1, "total": 1, "errno": "EMFILE"}
            ]  # more within the minute: later
            assert "exc_info" not in said[0]
            assert [r for r in caplog.records if r.name == "asyncio"] == []  # no raw traceback
            with capture_logs() as logged:
                s.gate.close()
            assert [(x["event"], x["count"]) for x in logged] == [
                ("accept_failed", errors - 1)
            ] or errors == 1
            assert loop.get_exception_handler() is None  # put back as it was
        finally:
            for sock in waiting:
                sock.close()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_burst_is_logged_once_then_once_a_window_with_the_count() -> None:
    tally = conns.Tally("connections_refused", window_s=0.2)
    with capture_logs() as logged:
        for _ in range(5):
            tally.add(reason="total")
        await asyncio.sleep(0.3)
        tally.close()
    assert [(line["count"], line["total"]) for line in logged] == [(1, 1), (4, 5)]
