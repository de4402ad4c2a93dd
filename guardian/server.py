"""The local HTTP server's connections: their limits, and Kraken's envelope for what aiohttp refuses itself.

aiohttp parses each request line and header block before any handler or middleware runs; what it cannot
parse (a request line or a header over its limit, too many headers, bytes that are not HTTP) it answers
with a plain-text 400 of its own, through `RequestHandler.handle_error`. Bots read Kraken's envelope, so
guardian's connections override that one method:

| what | status | code |
|---|---|---|
| a request line (method, path and query) over `MAX_REQUEST_LINE` | 413 | `requestTooLarge` |
| a header over `MAX_HEADER_FIELD`, or more than `MAX_HEADERS` headers | 431 | `headersTooLarge` |
| anything else that is not HTTP/1.1 | 400 | `invalidArgument` |
| a handler that failed (guardian's own defect) | 500 | `Server Error` |

The answer never quotes the request: a header that is too long may well be a key or a signature.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from guardian.conns import GuardedConnection
from guardian.gateway.app import MAX_BODY
from guardian.kraken.times import to_iso

log = structlog.get_logger("guardian.server")

# ccxt sends every parameter in the query, a `batchorder`'s JSON included: the request line gets the room a
# body gets. Headers keep aiohttp's own limits. The two limits differ, and must: which one an oversized
# line broke is how its answer tells a request line from a header.
MAX_REQUEST_LINE = MAX_BODY
MAX_HEADER_FIELD = 8190
MAX_HEADERS = 128
LIMITS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_LINE,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
}
# What aiohttp's parser says when a request has more than `max_headers` headers.
_TOO_MANY_HEADERS = "Too many headers"


def classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """The (HTTP status, code, message) of guardian's answer to a request aiohttp's protocol refused."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_REQUEST_LINE,):
            kib = MAX_REQUEST_LINE // 1024
            return 413, "requestTooLarge", f"the request line (method, path and query) is over {kib} KiB"
        return 431, "headersTooLarge", f"a request header is over {MAX_HEADER_FIELD} bytes (name and value)"
    if isinstance(exc, BadHttpMessage) and _TOO_MANY_HEADERS in exc.message:
        return 431, "headersTooLarge", f"the request has more than {MAX_HEADERS} headers"
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        return 400, "invalidArgument", "the request is not well-formed HTTP/1.1"
    return 500, "Server Error", "guardian failed on this request; see its log"


class _Connection(GuardedConnection):
    """One client connection of the local server: aiohttp's with guardian.conns' gate (caps, request
    deadline) when the runner is given one (`gate=`), and Kraken's envelope on its error page."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer has begun: aiohttp closes the connection
            return super().handle_error(request, status, exc, message)
        status, code, text = classify(exc, status)
        if status == 500:
            log.error("request_failed", error=type(exc).__name__ if exc else None, exc_info=exc)
        else:
            log.warning("request_unparseable", status=status, code=code, peer=request.remote)
        body = {"result": "error", "serverTime": to_iso(time.time()), "error": code, "message": text}
        response = web.json_response(body, status=status)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """`web.AppRunner` whose connections have `LIMITS` and answer protocol errors in Kraken's envelope."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **LIMITS, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application's start-up and freeze, as aiohttp does them
        server.__class__ = _Server  # the same server; only the connections it makes are guardian's
        return server
