"""`GET /`: the status page, one self-contained HTML file (`status.html`, beside this module).

Per account, in words rather than field names: the switch and a bar of the time left, the link and the
state's freshness, the mode and trips, each limit as a bar (amber from 80 %, red from 100 %), each bot's mode,
orders in the last minute, open orders and last refusal, the last refusals, trips and kills, notices,
positions, margin, marks and the first 50 open orders. It fits a 1280 px screen and a 390 px phone (its
tables stack there). The page reads `/guardian/state?orders=50` every second and says plainly when guardian
stops answering. It has no form, no admin action and nothing that is not already in `/guardian/state`,
which holds no secret. Its inline style and script are the only ones the browser will run: the
Content-Security-Policy names them by hash, and allows nothing else to load.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from aiohttp import web

PATH = "/"


def _csp_hash(html: str, tag: str) -> str:
    """The CSP source (`'sha256-...'`) of the one inline `<tag>` element of `html`."""
    (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


PAGE = resources.files("guardian").joinpath("status.html").read_text(encoding="utf-8")
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src {_csp_hash(PAGE, 'style')}; script-src {_csp_hash(PAGE, 'script')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_BODY = PAGE.encode()


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, headers=HEADERS)


def routes() -> list[web.RouteDef]:
    return [web.get(PATH, serve, allow_head=True)]
