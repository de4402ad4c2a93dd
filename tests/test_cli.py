"""`guardian sim` as a real subprocess: it serves, prints its demo credentials, stops on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from guardian.cli import EX_CONFIG
from guardian.kraken.client import Credentials, KrakenClient
from guardian.secret import ApiSecret


def start_sim(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "guardian", "sim", "--listen", "127.0.0.1:0", "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def proc() -> Iterator[subprocess.Popen[str]]:
    process = start_sim("--tick", "0.2", "--seed", "3")
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(5)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def read_banner(process: subprocess.Popen[str]) -> dict[str, str]:
    assert process.stdout is not None
    found: dict[str, str] = {}
    while "base_url" not in found:
        line = process.stdout.readline()
        assert line, "the simulator exited before printing its address"
        for part in line.split()[1:]:
            key, _, value = part.partition("=")
            found[key] = value
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_sim_serves_generated_credentials_and_exits_zero_on_signal(
    proc: subprocess.Popen[str], signum: int
) -> None:
    banner = read_banner(proc)
    credentials = Credentials(banner["api_key"], ApiSecret(banner["api_secret"]))
    async with KrakenClient(banner["base_url"], credentials) as client:
        assert (await client.cancelallordersafter(60)).armed
        assert len(await client.instruments()) == 3
    proc.send_signal(signum)
    assert proc.wait(10) == 0
    assert proc.stderr is not None
    logged = proc.stderr.read()
    assert "sim_listening" in logged
    assert banner["api_secret"] not in logged  # the secret is printed once, on stdout, never logged


async def test_sim_control_api_is_reachable(proc: subprocess.Popen[str]) -> None:
    banner = read_banner(proc)
    async with (
        aiohttp.ClientSession() as session,
        session.get(banner["base_url"] + "/_sim/state") as response,
    ):
        state = await response.json()
    assert set(state["marks"]) == {"PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD"}
    proc.terminate()
    assert proc.wait(10) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "abc"], "--key and --secret go together"),
        (["--key", "abc", "--secret", "not base64!"], "--secret is not valid base64"),
    ],
)
def test_bad_credentials_exit_78_with_a_message(args: list[str], message: str) -> None:
    process = start_sim(*args)
    _, err = process.communicate(timeout=20)
    assert process.returncode == EX_CONFIG
    assert message in err
    assert "not base64!" not in err


@pytest.mark.parametrize("listen", ["nowhere", "bad host:8788", "::1:8788", "127.0.0.1:70000"])
def test_listen_must_be_host_port(listen: str) -> None:
    """The flag is checked by the same parser as `server.listen` in the config file."""
    result = subprocess.run(
        [sys.executable, "-m", "guardian", "sim", "--listen", listen],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
