"""The switches beat on a loop of their own (`guardian/switchloop.py`): work that holds the daemon's main
loop does not hold a refresh, and a main loop that stops turning for good stops the refreshes (fail
closed: the exchange's timer runs out and cancels every order).

The simulator runs on a thread and loop of its own here, so that holding the test's (the daemon's) main
loop holds guardian alone, as a busy daemon would be held."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.account import Account
from guardian.journal import read_journal
from guardian.kraken.times import parse_iso
from guardian.sim.app import Simulator
from guardian.sim.market import Market
from guardian.switch import SwitchState
from tests.conftest import sim_keys
from tests.daemon import account_config, serving, wait_for


@contextlib.contextmanager
def sim_on_its_own_thread() -> Iterator[Simulator]:
    """A simulator serving from another thread's event loop."""
    loop = asyncio.new_event_loop()
    simulator = Simulator(sim_keys(), market=Market(seed=7), tick_s=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(simulator.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()
        loop.run_until_complete(simulator.close())
        loop.close()

    thread = threading.Thread(target=serve, name="test-sim", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield simulator
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def refreshes_between(simulator: Simulator, start: float, end: float) -> int:
    """The switch refreshes the simulator received between two wall-clock moments."""
    return sum(
        1
        for r in list(simulator.requests)
        if r["endpoint"] == "cancelallordersafter" and start <= parse_iso(r["time"]) <= end
    )


async def test_a_main_loop_held_for_a_second_does_not_hold_the_switchs_beat() -> None:
    with sim_on_its_own_thread() as simulator:
        async with serving(account_config(simulator.url)) as service:  # a 0.3-0.5 s beat
            account = service.accounts[0]
            await wait_for(lambda: account.switch.state is SwitchState.ARMED, what="armed")
            before = account.switch.refreshes
            held_from = time.time()
            time.sleep(1.5)  # noqa: ASYNC251 (the main loop held for 1.5 s, on purpose: a burst of work)
            held_to = time.time()
            # Refreshes went out, and were answered, while the main loop was held.
            assert refreshes_between(simulator, held_from + 0.1, held_to) >= 2
            assert account.switch.refreshes - before >= 2
            assert account.switch.state is SwitchState.ARMED
            await asyncio.sleep(0.2)  # the refreshes' news reaches the main loop once it turns again
            assert service.metrics.refreshes.labels(account.name, "success")._value.get() >= before + 2


async def test_a_main_loop_that_stops_turning_stops_the_refreshes_and_they_resume_after() -> None:
    with sim_on_its_own_thread() as simulator:
        async with serving(account_config(simulator.url)) as service:
            account = service.accounts[0]
            service.switch_loop.main_silent_s = 0.5  # "wedged" after half a second, for the test
            await wait_for(lambda: account.switch.state is SwitchState.ARMED, what="armed")
            held_from = time.time()
            time.sleep(2.5)  # noqa: ASYNC251 (the main loop wedged, on purpose)
            held_to = time.time()
            # Beyond the silence allowed (and a beat), nothing went out: the exchange's timer runs down.
            assert refreshes_between(simulator, held_from + 1.2, held_to) == 0
            assert account.switch.last_error is not None and "main loop" in account.switch.last_error
            assert account.switch.state is not SwitchState.ARMED
            # Turning again, the main loop lets the refreshes go out: armed within a beat or two.
            await wait_for(lambda: account.switch.state is SwitchState.ARMED, 5.0, "armed again")
            assert refreshes_between(simulator, held_to, time.time()) >= 1


async def test_the_journal_tells_each_switch_from_its_start_however_fast_it_arms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The switch thread can arm a switch before the main loop's reporter first looks (here an account's
    start takes half a second, as a slow first read would): the journal still begins with `starting`."""
    slow = Account.start

    async def slow_start(self: Account) -> None:
        await slow(self)
        time.sleep(0.5)  # noqa: ASYNC251 (the main loop held while the switch thread arms, on purpose)

    monkeypatch.setattr(Account, "start", slow_start)
    journal = tmp_path / "journal.sqlite3"
    with sim_on_its_own_thread() as simulator:
        async with serving(account_config(simulator.url), journal=journal) as service:
            account = service.accounts[0]
            await wait_for(lambda: account.switch.state is SwitchState.ARMED, what="armed")
            assert refreshes_between(simulator, 0, time.time()) >= 1

            def states() -> list[str]:
                rows = read_journal(journal)
                return [r["detail"]["state"] for r in rows if r.get("kind") == "switch_state"]

            await wait_for(lambda: len(states()) >= 2, what="two journaled states")
            assert states()[:2] == ["starting", "armed"]
