"""`guardian status` against a live daemon, as a person (or a script) runs it: a real subprocess."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from guardian.sim.app import Simulator
from guardian.status import render
from tests.daemon import account_config, serving, wait_for


async def guardian(*args: str) -> tuple[int, str, str]:
    """`python -m guardian ARGS` as a subprocess: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status(*args: str) -> tuple[int, str, str]:
    return await guardian("status", *args)


async def test_status_summarises_a_live_daemon_and_exits_1_while_an_account_is_not_fresh(
    sim: Simulator,
) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: service.accounts[0].switch.state.value == "armed", what="armed")
        code, out, _ = await status("--url", service.url)
    assert code == 1  # armed, but its stream is off in this configuration: never fresh
    assert "account main: NOT OK" in out and "switch  armed" in out and "mode    active" in out
    assert "link    disabled" in out and "state   STALE" in out


async def test_status_reads_the_listen_address_from_the_config_file(sim: Simulator, tmp_path: Path) -> None:
    async with serving(account_config(sim.url)) as service:
        host, port = service.url.removeprefix("http://").split(":")
        config = tmp_path / "guardian.toml"
        config.write_text(
            f'[server]\nlisten = "{host}:{port}"\n[[accounts]]\nname = "x"\napi_key_env = "UNSET"\n'
        )
        code, out, _ = await status("--config", str(config))
    assert code == 1 and "account main" in out  # no secret was needed to ask


async def test_status_of_a_daemon_that_does_not_answer_exits_1_and_says_so() -> None:
    code, out, err = await status("--url", "http://127.0.0.1:9")
    assert (code, out) == (1, "")
    assert "no answer from http://127.0.0.1:9" in err


def test_render_says_ok_only_when_every_account_is_armed_and_fresh() -> None:
    fresh = {"name": "a", "mode": "active", "switch": {"state": "armed", "remaining_s": 50.0}, "fresh": True}
    stale = {**fresh, "name": "b", "fresh": False}
    text, ok = render({"version": "1", "accounts": [fresh]})
    assert ok and "account a: OK" in text
    text, ok = render({"version": "1", "accounts": [fresh, stale]})
    assert not ok and "account b: NOT OK" in text
    assert render({"accounts": [{**fresh, "switch": {"state": "degraded", "remaining_s": 30.0}}]})[1] is False
    assert render({"accounts": []})[1] is False


def test_render_names_contracts_not_judged_an_unknown_pnl_and_settlements() -> None:
    account = {
        "name": "main",
        "switch": {"state": "armed", "remaining_s": 50.0},
        "fresh": True,
        "positions": [{"symbol": "PI_XBTUSD", "size": 3000, "unrealized_pnl": 0.01, "pnl_currency": "XBT"}],
        "daily_pnl_gap": {"code": "markPriceUnavailable", "reason": "today's realised PnL in PI_XBTUSD ..."},
        "settlements": [
            {
                "symbol": "FI_XBTUSD_270226",
                "size": -7000,
                "price": 65000,
                "realized_pnl": 0.00769,
                "currency": "XBT",
            }
        ],
        "instruments": {
            "loaded_at": "x",
            "unjudged": {"PV_XRPUSD": "type 'futures_vanilla'"},
            "unjudged_count": 1,
        },
    }
    text, _ = render({"version": "1", "accounts": [account]})
    assert "upnl 0.01 XBT" in text
    assert "NOT KNOWN (markPriceUnavailable)" in text
    assert "settled FI_XBTUSD_270226 -7,000 at 65,000: 0.00769 XBT" in text
    assert "1 not judged (new risk in them refused): PV_XRPUSD" in text
    text, _ = render({"version": "1", "accounts": [{**account, "instruments": {"loaded_at": None}}]})
    assert "contracts NOT READ YET" in text
