"""Nonce checking as the exchange does it, shared by the simulator and the gateway's local keys."""

from __future__ import annotations

import pytest

from guardian.kraken.nonces import RECENT_KEPT, NonceWindow, tolerance_for

NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("nonce", "expected"),
    [
        pytest.param(int(NOW * 1_000), 3_000, id="milliseconds"),
        pytest.param(int(NOW * 1_000_000), 3_000_000, id="microseconds"),
        pytest.param(int(NOW * 100_000_000), 300_000_000, id="python-kraken-sdk"),
        pytest.param(int(NOW * 1_000_000_000), 3_000_000_000, id="nanoseconds"),
        pytest.param(int(NOW), 0, id="seconds"),
        pytest.param(17, 0, id="a counter"),
    ],
)
def test_tolerance_is_three_seconds_in_the_nonces_own_unit(nonce: int, expected: int) -> None:
    assert tolerance_for(nonce, 3.0, now=NOW) == expected


def test_repeats_and_stale_nonces_are_refused_and_not_recorded() -> None:
    window = NonceWindow()
    assert window.check(10_000, 3_000) is None
    assert window.check(10_000, 3_000) == "nonceDuplicate"
    assert window.check(9_000, 3_000) is None  # brief reordering is fine
    assert window.check(7_000, 3_000) == "nonceBelowThreshold"
    assert window.highest == 10_000
    assert window.check(7_001, 3_000) is None


def test_zero_tolerance_means_never_below_the_highest() -> None:
    window = NonceWindow()
    assert window.check(5, 0) is None
    assert window.check(4, 0) == "nonceBelowThreshold"
    assert window.check(5, 0) == "nonceDuplicate"
    assert window.check(6, 0) is None


def test_memory_is_bounded() -> None:
    window = NonceWindow()
    for nonce in range(RECENT_KEPT * 2):
        assert window.check(nonce, 10**9) is None
    assert len(window.recent) == len(window.order) == RECENT_KEPT
