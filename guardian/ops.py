"""Operations endpoints on the local server (contract paths): `/healthz`, `/readyz`, `/guardian/state`,
`/metrics`, `/openapi.json` (guardian.openapi). Read-only, no secrets in any of them, so no authentication: the server listens on loopback.
"""

from __future__ import annotations

from aiohttp import web

from guardian import openapi
from guardian.metrics import CONTENT_TYPE
from guardian.service import SERVICE_KEY

_NO_STORE = {"Cache-Control": "no-store"}


async def healthz(request: web.Request) -> web.Response:
    """200 while the event loop answers and every switch task is alive."""
    problems = request.app[SERVICE_KEY].health_problems()
    if problems:
        return web.json_response({"status": "unhealthy", "reasons": problems}, status=503, headers=_NO_STORE)
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    """200 only when every account's switch is armed; 503 naming each account that is not."""
    problems = request.app[SERVICE_KEY].readiness_problems()
    if problems:
        return web.json_response({"status": "not ready", "reasons": problems}, status=503, headers=_NO_STORE)
    return web.json_response({"status": "ready"}, headers=_NO_STORE)


MAX_ORDERS_LISTED = 1000


async def state(request: web.Request) -> web.Response:
    """Counts and totals, whatever the size of the book; `?orders=N` (at most 1,000) lists that many open
    orders per account too."""
    raw = request.query.get("orders", "0")
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_ORDERS_LISTED:
        return web.json_response(
            {
                "error": "invalidArgument",
                "message": f"orders must be a whole number from 0 to {MAX_ORDERS_LISTED}",
            },
            status=400,
            headers=_NO_STORE,
        )
    return web.json_response(request.app[SERVICE_KEY].state_json(orders=int(raw)), headers=_NO_STORE)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, **_NO_STORE})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=True),
        web.get("/readyz", readyz, allow_head=True),
        web.get("/guardian/state", state),
        web.get("/metrics", metrics),
        web.get(openapi.PATH, openapi.serve),
    ]
