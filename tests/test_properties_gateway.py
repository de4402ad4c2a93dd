"""The inputs the property tests (tests/test_properties_*.py) found guardian answering with a 500 (or
misjudging), sent to the real gateway in front of the simulator as raw HTTP bytes: each is now a
Kraken-shaped refusal with its code, and nothing reaches the exchange. Also the nonce tolerance, which
was a tenth of its 3 s for any nonce signed a moment before it arrived."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from guardian.config import ClientConfig, GuardConfig, SwitchConfig
from guardian.kraken.endpoints import Permission
from guardian.kraken.signing import sign
from guardian.secret import ApiSecret
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.switch import SwitchState
from tests.conftest import TRADE_KEY, TRADE_SECRET
from tests.daemon import account_config, serving, wait_for

BOT_KEY = "property-bot-local-key"
BOT_SECRET = base64.b64encode(b"property bot local secret, 32 b!").decode()
SWITCH = SwitchConfig(refresh_min_s=1.0, refresh_max_s=1.5, timeout_s=5, min_remaining_s=1.0)
V3 = "/derivatives/api/v3/"


@pytest.fixture
async def guardian(sim: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    bot = ClientConfig("bot", BOT_KEY, ApiSecret(BOT_SECRET), frozenset({Permission.READ, Permission.TRADE}))
    account = account_config(sim.url, switch=SWITCH, guard=GuardConfig(mark_poll_s=0.1), clients=(bot,))
    async with serving(account, journal=tmp_path / "journal.sqlite3") as service:
        main = service.accounts[0]
        await wait_for(lambda: main.switch.state is SwitchState.ARMED, what="switch armed")
        yield service


async def send(
    service: Service, method: str, endpoint: str, body: bytes = b"", headers: dict[str, bytes] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request as raw bytes (so headers may hold bytes no client library would send)."""
    where = urlsplit(service.url)
    assert where.hostname is not None and where.port is not None
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        head = [f"{method} {V3}{endpoint} HTTP/1.1".encode(), b"Host: guardian", b"Connection: close"]
        head += [name.encode() + b": " + value for name, value in (headers or {}).items()]
        head += [b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body)]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def signed(endpoint: str, body: bytes, nonce: bytes | None) -> dict[str, bytes]:
    """The bot's headers: Authent over the bytes sent (body, then the Nonce header's bytes, then path)."""
    key = base64.b64decode(BOT_SECRET)
    authent = sign(key, body + (nonce or b""), None, V3 + endpoint).encode()
    return {"APIKey": BOT_KEY.encode(), "Authent": authent} | ({} if nonce is None else {"Nonce": nonce})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    ("endpoint", "body", "nonce", "authent", "status", "code"),
    [
        pytest.param(
            "batchorder", b"json=" + b"[" * 5000, None, None, 400, "invalidArgument", id="deep JSON"
        ),
        pytest.param(
            "sendorder",
            b"orderType=lmt&symbol=PF_XBTUSD&side=buy&size=1e999999999999999999999&limitPrice=50000",
            None,
            None,
            400,
            "invalidArgument",
            id="exponent beyond Decimal",
        ),
        pytest.param(
            "sendorder", b"size=1", None, b"\xff" * 88, 401, "authenticationError", id="Authent not UTF-8"
        ),
        pytest.param(
            "sendorder",
            b"size=1",
            "\u00b9".encode(),
            None,
            401,
            "authenticationError",
            id="Nonce superscript 1",
        ),
        pytest.param(
            "sendorder",
            b"size=1",
            "\u0661\u0662".encode(),
            None,
            401,
            "authenticationError",
            id="Nonce Arabic 12",
        ),
    ],
)
async def test_input_that_was_a_500_is_refused_with_its_code_and_never_forwarded(
    guardian: Service,
    sim: Simulator,
    endpoint: str,
    body: bytes,
    nonce: bytes | None,
    authent: bytes | None,
    status: int,
    code: str,
) -> None:
    headers = signed(endpoint, body, nonce)
    if authent is not None:
        headers["Authent"] = authent

    answer_status, answer = await send(guardian, "POST", endpoint, body, headers)

    assert (answer_status, answer["result"], answer["error"]) == (status, "error", code), answer
    assert sim.requests_for(endpoint) == []


async def test_a_nonce_signed_a_second_before_the_last_one_still_passes(
    guardian: Service, sim: Simulator
) -> None:
    """Two bots' threads sharing a key may deliver nonces out of order; 3 s of reordering is tolerated
    (in the nonce's own unit). With the unit misread it was 0.3 s: the second request was refused."""
    latest = now_ms()
    for nonce in (latest, latest - 1_000):
        status, answer = await send(
            guardian, "GET", "openorders", headers=signed("openorders", b"", b"%d" % nonce)
        )
        assert (status, answer["result"]) == (200, "success"), answer
    status, answer = await send(
        guardian, "GET", "openorders", headers=signed("openorders", b"", b"%d" % (latest - 4_000))
    )
    assert (status, answer["error"]) == (401, "nonceBelowThreshold")
    assert len(sim.requests_for("openorders")) == 2


async def test_the_simulator_refuses_a_nonce_that_is_not_ascii_digits_instead_of_failing(
    sim: Simulator,
) -> None:
    """KNOWN DEFECT (guardian/sim/app.py, not fixed here): the simulator checks `nonce.isdigit()`, which
    `¹` passes, then `int(nonce)` raises ValueError: a 500. Arabic-Indic digits are read as a number."""
    where = urlsplit(sim.url)
    assert where.hostname is not None and where.port is not None
    key = base64.b64decode(TRADE_SECRET)
    for nonce in ("\u00b9".encode(), "\u0661\u0662".encode()):
        authent = sign(key, nonce, None, V3 + "openorders").encode()
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        head = [f"GET {V3}openorders HTTP/1.1".encode(), b"Host: sim", b"Connection: close"]
        head += [b"APIKey: " + TRADE_KEY.encode(), b"Authent: " + authent, b"Nonce: " + nonce]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        status_line, _, rest = answer.partition(b"\r\n")
        assert int(status_line.split()[1]) != 500, nonce
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "invalidArgument", nonce
