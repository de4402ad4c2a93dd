"""Installs that reproduce: the lock files, what `make run` and `make test` install, and a clean build.

requirements/run.txt and requirements/test.txt are written by `make lock` (uv, resolved for every platform);
pip installs them with --require-hashes. `make run` installs the runtime lock only, `make test` the test
lock, which holds every runtime pin at the same version. guardian itself builds without a warning, from the
checkout, with the locked setuptools, and its wheel carries the status page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_LOCK = ROOT / "requirements" / "run.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every requirement of a lock file, each checked to be `==` with hashes."""
    found: dict[str, str] = {}
    lines = lock.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("--hash="):
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line.strip()), line
        if not line or line.startswith((" ", "#")):
            continue
        pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+!-]+)( ; [^\\]+)? \\", line)
        assert pinned, f"{lock.name}: not an exact pin: {line!r}"
        assert lines[number + 1].strip().startswith("--hash=sha256:"), f"{lock.name}: no hash for {line!r}"
        found[canonical(pinned[1])] = pinned[2]
    return found


def declared(requirements: list[str]) -> dict[str, str | None]:
    """name -> the exact version pyproject.toml pins (None for a range)."""
    result: dict[str, str | None] = {}
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None, requirement
        exact = re.fullmatch(r"[A-Za-z0-9_.-]+==([\w.]+)", requirement)
        result[canonical(name[0])] = exact[1] if exact else None
    return result


def test_both_locks_are_exact_versions_with_hashes() -> None:
    assert len(pins(RUN_LOCK)) >= 5
    assert len(pins(TEST_LOCK)) > len(pins(RUN_LOCK))


def test_the_runtime_lock_has_the_runtime_dependencies_and_no_test_tool() -> None:
    run = pins(RUN_LOCK)
    runtime = declared(PYPROJECT["project"]["dependencies"])
    assert set(runtime) <= set(run)
    assert "setuptools" in run  # guardian itself is built from hashed files too
    tools = set(declared(PYPROJECT["project"]["optional-dependencies"]["test"]))
    assert tools & set(run) == set(), "test tools in the runtime lock"


def test_the_test_lock_holds_every_runtime_pin_at_the_same_version_and_every_tool_as_pinned() -> None:
    run, test = pins(RUN_LOCK), pins(TEST_LOCK)
    assert {name: test.get(name) for name in run} == run
    for name, version in declared(PYPROJECT["project"]["optional-dependencies"]["test"]).items():
        assert name in test, name
        assert version is None or test[name] == version, (name, version, test[name])


def dry_run(target: str) -> str:
    """What `make <target>` would run on a machine with no virtualenv yet."""
    done = subprocess.run(
        ["make", "--dry-run", "--always-make", target, "VENV=/nonexistent/venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_make_run_installs_the_runtime_lock_only_and_make_test_the_test_lock() -> None:
    run = dry_run("run")
    assert "--require-hashes --no-deps --requirement requirements/run.txt" in run
    assert "test.txt" not in run and "[test]" not in run
    assert "/nonexistent/venv/bin/guardian run --sim" in run
    test = dry_run("test")
    assert "--require-hashes --no-deps --requirement requirements/test.txt" in test
    for gate in (
        "ruff format --check .",
        "ruff check .",
        "mypy guardian",
        "pytest -n 2 --dist loadfile --no-loadscope-reorder --cov",
    ):
        assert gate in test, gate
    for command in (run, test):  # guardian itself: no unhashed build environment, no resolving
        assert "install --no-deps --no-build-isolation --editable ." in command
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec make test")


def test_guardian_builds_without_a_warning_and_its_wheel_carries_the_status_page(tmp_path: Path) -> None:
    """Built as the image builds it: from what .dockerignore lets in, with the locked setuptools."""
    pytest.importorskip("setuptools")  # the test lock has it, as the runtime lock does
    source = tmp_path / "context"
    shutil.copytree(ROOT / "guardian", source / "guardian", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            wheels,
            source,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"warning|deprecat", output, re.IGNORECASE), output
    (wheel,) = wheels.glob("guardian-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
        assert "License-Expression: LicenseRef-Proprietary" in archive.read(metadata).decode()
    assert {"guardian/status.html", "guardian/statuspage.py", "guardian/server.py"} <= names
