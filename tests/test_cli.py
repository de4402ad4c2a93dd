"""`guardian sim` as a real subprocess: it serves, prints its demo credentials, stops on signals.
`guardian journal` as a real subprocess: reads the journal named by the configuration, read-only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from guardian.cli import EX_CONFIG
from guardian.journal import Intent, Journal
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
        listed = {i["symbol"] for i in await client.instruments()}
        assert {"PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", "PI_XBTUSD", "PI_ETHUSD"} <= listed
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
    assert {"PF_XBTUSD", "PF_ETHUSD", "PF_SOLUSD", "PI_XBTUSD", "PI_ETHUSD"} <= set(state["marks"])
    proc.terminate()
    assert proc.wait(10) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "abc"], "--key and --secret go together"),
        (["--key", "abc", "--secret", "not base64!"], "--secret is not valid base64"),
        (["--budget", "0"], "--budget must be positive"),
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


# --- guardian journal ------------------------------------------------------------------------------------

# The secrets come from variables that are not set: `guardian journal` reads only [journal].
JOURNAL_CONFIG = """
[journal]
path = "journal.sqlite3"

[[accounts]]
name = "main"
api_key_env = "GUARDIAN_TEST_UNSET_API_KEY"
api_secret_env = "GUARDIAN_TEST_UNSET_API_SECRET"
"""


def write_journal(path: Path, now: float) -> None:
    """Three requests (2 h, 30 min and 1 s ago) and an event (now), written by the real journal."""

    async def write() -> None:
        journal = Journal(path)
        await journal.open()
        try:
            params = {"symbol": "PF_XBTUSD", "side": "buy", "size": "1"}
            old = await journal.record(
                Intent("main", "grid", "sendorder", params, "forwarded", received_at=now - 7200)
            )
            journal.finish(
                old,
                outcome="success",
                http_status=200,
                answer={"result": "success"},
                upstream_s=0.0123,
                total_s=0.0134,
            )
            await journal.record(
                Intent("main", "grid", "sendorder", params, "refused", "priceOutsideBand", now - 1800, 400)
            )
            await journal.record(
                Intent("main", "grid", "cancelorder", {"order_id": "abc"}, "forwarded", received_at=now - 1)
            )
            await journal.event("switch_expired", "main", {"remaining_s": 0})
        finally:
            await journal.close()

    asyncio.run(write())


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    (tmp_path / "guardian.toml").write_text(JOURNAL_CONFIG)
    write_journal(tmp_path / "journal.sqlite3", time.time())
    return tmp_path


def guardian_journal(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`guardian journal` run in `directory`, so that the relative journal.path resolves there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDIAN_")}
    return subprocess.run(
        [sys.executable, "-m", "guardian", "journal", "--config", "guardian.toml", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=directory,
        env=env,
    )


def test_journal_prints_one_json_object_per_row_oldest_first(journal_dir: Path) -> None:
    result = guardian_journal(journal_dir, "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["type"], row.get("endpoint", row.get("kind"))) for row in rows] == [
        ("request", "sendorder"),
        ("request", "sendorder"),
        ("request", "cancelorder"),
        ("event", "switch_expired"),
    ]
    assert [row.get("outcome") for row in rows] == ["success", "refused", "unknown", None]
    assert rows[0]["answer"] == {"result": "success"} and rows[0]["total_s"] == 0.0134
    assert rows[1]["reason"] == "priceOutsideBand" and rows[1]["http_status"] == 400
    assert all(row["time"].endswith("Z") for row in rows)


def test_journal_prints_readable_lines(journal_dir: Path) -> None:
    result = guardian_journal(journal_dir)
    assert result.returncode == 0, result.stderr
    first, refused, unknown, event = result.stdout.splitlines()
    assert first.endswith(
        "request #1  main  grid  sendorder  forwarded  -  success  http 200  upstream 12.3 ms, total 13.4 ms"
    )
    assert "request #2  main  grid  sendorder  refused  priceOutsideBand  refused  http 400  -" in refused
    assert "cancelorder  forwarded  -  unknown  http -  -" in unknown
    assert event.endswith('event #1  main  -  switch_expired  {"remaining_s":0}')


def test_journal_limit_keeps_the_last_rows(journal_dir: Path) -> None:
    result = guardian_journal(journal_dir, "--json", "--limit", "2")
    assert [json.loads(line)["type"] for line in result.stdout.splitlines()] == ["request", "event"]


@pytest.mark.parametrize(
    ("since", "count"),
    [("1h", 3), ("45m", 3), ("10s", 2), ("3h", 4), ("1d", 4), ("2.5h", 4)],
)
def test_journal_since_takes_a_duration_ago(journal_dir: Path, since: str, count: int) -> None:
    result = guardian_journal(journal_dir, "--json", "--since", since)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == count


def test_journal_since_takes_an_iso_time(journal_dir: Path) -> None:
    hour_ago = datetime.fromtimestamp(time.time() - 3600, tz=UTC)
    for text in (hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ"), hour_ago.isoformat()):
        result = guardian_journal(journal_dir, "--json", "--since", text)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 3


@pytest.mark.parametrize(
    "args", [["--since", "yesterday"], ["--since", "5w"], ["--limit", "0"], ["--limit", "x"]]
)
def test_journal_bad_arguments_are_usage_errors(journal_dir: Path, args: list[str]) -> None:
    result = guardian_journal(journal_dir, *args)
    assert result.returncode == 2
    assert "usage: guardian journal" in result.stderr
    assert "Traceback" not in result.stderr


def test_journal_missing_file_exits_1_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "guardian.toml").write_text(JOURNAL_CONFIG)
    result = guardian_journal(tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "guardian: no journal at journal.sqlite3: check journal.path (relative to the daemon's directory)\n"
    )


async def test_journal_reads_while_the_daemon_writes(tmp_path: Path) -> None:
    """A WAL reader: the daemon keeps the file open and writing, `guardian journal` sees what is committed."""
    (tmp_path / "guardian.toml").write_text(JOURNAL_CONFIG)
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    try:
        await journal.record(Intent("main", "grid", "openpositions", {}, "forwarded"))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guardian",
            "journal",
            "--config",
            "guardian.toml",
            "--json",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err
        [row] = [json.loads(line) for line in out.splitlines()]
        assert (row["endpoint"], row["outcome"]) == ("openpositions", "unknown")
        assert (
            await journal.record(Intent("main", "grid", "openorders", {}, "answered")) == 2
        )  # still writing
    finally:
        await journal.close()
