"""`guardian check-config --online` as a user runs it: a real subprocess on a configuration `guardian init`
wrote, against the simulator on loopback. A good key passes every line; a wrong secret, a skewed clock, an
unknown symbol, an unreachable exchange and a secret file others can read each fail with their own line and
exit code; nothing it sends is an order or a switch call."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import sys
from pathlib import Path

import pytest

from guardian.sim.app import Simulator
from tests.conftest import TRADE_SECRET, running_sim
from tests.test_daemon import clean_env
from tests.test_init_keys import init

READ_ONLY = {"instruments", "accounts", "openpositions"}


async def check_online(config: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardian", "check-config", "--online", "--config", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def configured(tmp_path: Path, sim_url: str) -> Path:
    done = init(tmp_path, base_url=sim_url, bots=1)
    assert done.returncode == 0, done.stderr
    return tmp_path / "g" / "config.toml"


def failing(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


def endpoints_used(sim: Simulator) -> set[str]:
    return {str(r["endpoint"]) for r in sim.requests}


async def test_a_good_key_passes_every_check_and_sends_nothing_but_reads(tmp_path: Path) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        code, out, err = await check_online(config)
        assert code == 0, out + err
        assert failing(out) == []
        for what in (
            "exchange at",
            "clock: skew",
            "exchange key: accepted",
            "nonce: accepted",
            "collateral: read",
        ):
            assert f"main: {what}" in out
        assert "main: positions: 0 open" in out
        assert "main: symbol PF_XBTUSD: tradeable" in out and "main: symbol PF_ETHUSD: tradeable" in out
        assert "secret file" in out and "mode 0600" in out
        assert "0 failed" in out
        assert endpoints_used(sim) == READ_ONLY  # no order, no switch call
        assert sim.switch_remaining("main") is None
    assert TRADE_SECRET not in out + err


async def test_a_wrong_secret_fails_77_on_its_own_line(tmp_path: Path) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        (tmp_path / "g" / "credentials" / "main_api_secret").write_text(
            base64.b64encode(b"w" * 64).decode() + "\n"
        )
        code, out, err = await check_online(config)
        assert code == 77, out + err
        [line] = failing(out)
        assert line.startswith("FAIL  main: exchange key: refused (authenticationError)")
        assert endpoints_used(sim) <= READ_ONLY


async def test_a_skewed_clock_fails_71_and_says_by_how_much(tmp_path: Path) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        sim.exchange.clock_offset_s = 30.0  # the exchange's clock 30 s ahead of this machine's
        code, out, err = await check_online(config)
        assert code == 71, out + err
        [line] = failing(out)
        assert re.match(
            r"FAIL  main: clock: skew \+(29\.9|30\.0)\d* s against the exchange's serverTime", line
        )
        assert "synchronise this machine's clock" in line
        # Within --max-skew it passes.
        code, out, _ = await check_online(config, "--max-skew", "60")
        assert code == 0 and failing(out) == []


async def test_an_unknown_symbol_fails_65_naming_it(tmp_path: Path) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        config.write_text(config.read_text().replace('"PF_ETHUSD"]', '"PF_NOSUCHUSD"]'))
        code, out, err = await check_online(config)
        assert code == 65, out + err
        [line] = failing(out)
        assert line == "FAIL  main: symbol PF_NOSUCHUSD: not listed by the exchange: check its spelling"


async def test_an_unreachable_exchange_fails_69(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        config = configured(tmp_path, f"http://127.0.0.1:{port}")
        code, out, err = await check_online(config)
    assert code == 69, out + err
    [line] = failing(out)
    assert line.startswith(f"FAIL  main: exchange at http://127.0.0.1:{port}: no answer")


async def test_a_secret_file_others_can_read_fails_78_naming_the_file(tmp_path: Path) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        secret = tmp_path / "g" / "credentials" / "main_api_secret"
        secret.chmod(0o644)
        code, out, err = await check_online(config)
        assert code == 78, out + err
        [line] = failing(out)
        assert f"secret file {secret}" in line and "chmod 600" in line


@pytest.mark.parametrize("first", ["skew", "symbol"])
async def test_the_first_failure_gives_the_exit_code_and_every_failure_its_line(
    tmp_path: Path, first: str
) -> None:
    async with running_sim() as sim:
        config = configured(tmp_path, sim.url)
        sim.exchange.clock_offset_s = -45.0
        config.write_text(config.read_text().replace('"PF_ETHUSD"]', '"PF_NOSUCHUSD"]'))
        code, out, _ = await check_online(config, *(["--max-skew", "60"] if first == "symbol" else []))
        lines = failing(out)
        if first == "skew":
            assert code == 71 and len(lines) == 2
        else:
            assert code == 65 and len(lines) == 1
