"""What aiohttp refuses before any handler runs is answered in Kraken's envelope (guardian.server).

Raw sockets against a running daemon on loopback: an oversized request line, an oversized header, too
many headers, bytes that are not HTTP. Each gets Kraken's JSON envelope with its status and code, the
connection is closed, nothing of the request is quoted back or logged, and the daemon goes on serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from guardian.gateway.refusal import CODES
from guardian.server import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE, Runner
from guardian.service import Service
from guardian.sim.app import Simulator
from tests.daemon import account_config, serving

# Looks like what a bot puts in a header: it must never come back in an answer or a log line.
SECRETISH = "Authent-9f8e7d6c5b4a"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange_raw(url: str, request: bytes) -> Answer:
    """Send `request` as it is on a fresh connection; read the whole answer until the server closes."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server must close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return Answer(int(status_line.split()[1]), headers, body)


def get(target: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers]) + "\r\n\r\n").encode()


@pytest.fixture
async def daemon(sim: Simulator) -> AsyncIterator[Service]:
    async with serving(account_config(sim.url)) as service:
        yield service


def assert_envelope(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert set(body) == {"result", "serverTime", "error", "message"}
    assert body["result"] == "error" and body["error"] == code
    assert CODES.get(code, 500) == status  # every code but "Server Error" is a refusal code
    assert SECRETISH not in answer.body.decode()
    return body


async def test_a_request_line_over_the_limit_is_413_request_too_large(daemon: Service) -> None:
    target = "/derivatives/api/v3/batchorder?json=" + "x" * MAX_REQUEST_LINE
    body = assert_envelope(await exchange_raw(daemon.url, get(target)), 413, "requestTooLarge")
    assert "request line" in body["message"] and "64 KiB" in body["message"]


async def test_a_request_line_as_long_as_a_body_may_be_is_served(daemon: Service) -> None:
    # ccxt puts a batch's JSON in the query: a long request line within the limit is an ordinary request.
    target = "/healthz?pad=" + "x" * (MAX_REQUEST_LINE - 1024)
    answer = await exchange_raw(daemon.url, get(target, "Connection: close"))
    assert answer.status == 200 and answer.json() == {"status": "ok"}


async def test_a_header_over_the_limit_is_431_headers_too_large_and_never_quoted(daemon: Service) -> None:
    with capture_logs() as logged:
        answer = await exchange_raw(
            daemon.url, get("/healthz", f"Authent: {SECRETISH}" + "A" * MAX_HEADER_FIELD)
        )
    body = assert_envelope(answer, 431, "headersTooLarge")
    assert f"{MAX_HEADER_FIELD} bytes" in body["message"]
    refused = [line for line in logged if line["event"] == "request_unparseable"]
    assert [(line["status"], line["code"]) for line in refused] == [(431, "headersTooLarge")]
    assert SECRETISH not in repr(logged)


async def test_a_header_name_over_the_limit_is_431_too(daemon: Service) -> None:
    answer = await exchange_raw(daemon.url, get("/healthz", "X" * (MAX_HEADER_FIELD + 1) + ": 1"))
    assert_envelope(answer, 431, "headersTooLarge")


async def test_too_many_headers_is_431_headers_too_large(daemon: Service) -> None:
    headers = [f"X-Pad-{i}: {i}" for i in range(MAX_HEADERS + 1)]
    body = assert_envelope(await exchange_raw(daemon.url, get("/healthz", *headers)), 431, "headersTooLarge")
    assert f"more than {MAX_HEADERS} headers" in body["message"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",  # TLS to a plain port
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: 1\r\n\r\n",  # a space in a name
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["tls-hello", "space-in-header-name", "negative-content-length"],
)
async def test_bytes_that_are_not_http_are_400_invalid_argument(daemon: Service, garbage: bytes) -> None:
    body = assert_envelope(await exchange_raw(daemon.url, garbage), 400, "invalidArgument")
    assert body["message"] == "the request is not well-formed HTTP/1.1"


async def test_the_daemon_serves_on_after_every_refusal(daemon: Service) -> None:
    for request in (get("/healthz", "X-Big: " + "b" * (MAX_HEADER_FIELD + 1)), b"\x00\x01\x02\r\n\r\n"):
        assert (await exchange_raw(daemon.url, request)).status in (400, 431)
    answer = await exchange_raw(daemon.url, get("/readyz", "Connection: close"))
    assert answer.status in (200, 503) and "status" in answer.json()


async def test_a_failing_handler_is_500_server_error_in_the_envelope() -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a defect")

    app = web.Application()
    app.router.add_get("/broken", broken)
    runner = Runner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        with capture_logs() as logged:
            answer = await exchange_raw(f"http://{host}:{port}", get("/broken"))
    finally:
        await runner.cleanup()
    body = assert_envelope(answer, 500, "Server Error")
    assert body["message"] == "guardian failed on this request; see its log"
    assert [(line["event"], line["log_level"]) for line in logged] == [("request_failed", "error")]
