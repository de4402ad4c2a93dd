"""The notify protocol against real unix datagram sockets (path and abstract), and the watchdog beat."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def receive_all(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return messages


def test_ready_status_and_stopping_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("armed: main 59.8s left")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=armed: main 59.8s left"
    assert notifier.status("degraded:\nmain")
    assert sock.recv(4096).decode() == "STATUS=degraded: main"  # one line: newlines would split fields
    assert notifier.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"
    assert notifier.sent == 3
    notifier.close()


def test_abstract_socket_names_are_supported() -> None:
    name = f"guardian-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_interval_s is None
    assert notifier.sent == notifier.failed == 0


def test_a_missing_listener_is_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert not notifier.ready("x")
    assert notifier.failed == 1
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_interval_s == interval


async def test_watchdog_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    task = asyncio.create_task(notifier.run_watchdog())
    await asyncio.sleep(0.55)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = receive_all(sock)
    assert set(pings) == {"WATCHDOG=1"}
    assert 4 <= len(pings) <= 7  # 6 on an idle machine; fewer only if the loop was starved
    notifier.close()


async def test_watchdog_stops_while_the_event_loop_is_blocked(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # every 0.05 s
    task = asyncio.create_task(notifier.run_watchdog())
    await asyncio.sleep(0.12)
    before = len(receive_all(sock))
    time.sleep(0.5)  # noqa: ASYNC251 - blocking the loop on purpose: ten beats with no chance to ping
    during = len(receive_all(sock))
    await asyncio.sleep(0.12)
    after = receive_all(sock)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert before >= 2
    assert during == 0
    assert 1 <= len(after) <= 4  # resumes without a catch-up burst
    notifier.close()


async def test_watchdog_is_withheld_while_unhealthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    healthy = [True]
    task = asyncio.create_task(notifier.run_watchdog(lambda: healthy[0]))
    await asyncio.sleep(0.12)
    assert receive_all(sock)
    healthy[0] = False
    await asyncio.sleep(0.2)
    assert receive_all(sock) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()


async def test_run_watchdog_returns_at_once_without_a_watchdog() -> None:
    await asyncio.wait_for(Notifier({"NOTIFY_SOCKET": "/x"}).run_watchdog(), timeout=1)
    await asyncio.wait_for(Notifier({"WATCHDOG_USEC": "100000"}).run_watchdog(), timeout=1)
