"""The status page (`GET /`), in a real headless browser: Debian's chromium, driven by Playwright.

A running daemon in front of the simulator on loopback. The page renders every account, its countdown
moves between refreshes, a switch that expires at the simulator turns it red within 2 s, and a daemon that
stops is shown as not answering. It loads nothing but itself and `/guardian/state`, runs no script the
Content-Security-Policy would refuse, and shows no secret. Each test saves a screenshot in its tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, Request, Route, async_playwright

from guardian.config import SwitchConfig
from guardian.sim.app import Simulator
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import FAST, account_config, get_json, serving, wait_for

# A slow beat and a long timer: between two refreshes the time left only goes down.
SLOW = SwitchConfig(refresh_min_s=20, refresh_max_s=25, timeout_s=60, min_remaining_s=10)
ADMIN_TOKEN = "status-page-admin-token-0001"
# Flags for a machine without a network beyond loopback: no background fetches, no component updates.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (`make tools` does this as root)")
    return path


@dataclass
class Browsing:
    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def text(self, selector: str) -> str:
        return (await self.page.locator(selector).first.text_content()) or ""

    async def level(self) -> str:
        return str(await self.page.evaluate("document.body.dataset.level"))


@contextlib.asynccontextmanager
async def browsing(url: str) -> AsyncIterator[Browsing]:
    """A fresh headless chromium on `url`, recording every request it makes and every error it reports."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 760})
            seen = Browsing(page)

            def on_request(request: Request) -> None:
                seen.requests.append(request.url)

            page.on("request", on_request)
            page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
            await page.goto(url)
            yield seen
        finally:
            await browser.close()


async def left_s(seen: Browsing, account: str) -> float:
    text = await seen.text(f"section[data-account={account}] [data-role=left]")
    found = re.fullmatch(r"([\d.]+) s left", text)
    assert found, text
    return float(found[1])


async def bar_pct(seen: Browsing, account: str) -> float:
    width = await seen.page.locator(f"section[data-account={account}] [data-role=bar]").evaluate(
        "bar => bar.style.width"
    )
    return float(str(width).rstrip("%"))


async def test_the_page_renders_every_account_with_its_switch_mode_link_and_marks(tmp_path: Path) -> None:
    async with (
        running_sim() as first,
        running_sim(seed=11) as second,
        serving(
            account_config(first.url, name="main", switch=SLOW),
            account_config(second.url, name="spare", switch=SLOW),
            admin_token=ADMIN_TOKEN,
        ) as service,
    ):
        await wait_for(lambda: all(a.switch.state.value == "armed" for a in service.accounts), 5, "armed")
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector("section[data-account=spare][data-state=armed]")
            await seen.page.locator("section[data-account=main] [data-role=marks] td").first.wait_for()
            await seen.page.screenshot(path=tmp_path / "accounts.png", full_page=True)
            cards = await seen.page.locator("section.card").evaluate_all(
                "cs => cs.map(c => c.dataset.account)"
            )
            assert cards == ["main", "spare"]
            for name in cards:
                card = f"section[data-account={name}]"
                assert await seen.text(f"{card} h2") == f"{name}armedmode: active"
                assert "Linkdisabled" in await seen.text(f"{card} dl")  # its stream is off in this test
                assert 0 < await left_s(seen, name) <= SLOW.timeout_s
                assert 0 < await bar_pct(seen, name) <= 100
            marks = await seen.text("section[data-account=main] [data-role=marks] table")
            assert "PF_XBTUSD" in marks and "PF_ETHUSD" in marks
            assert await seen.level() == "green"
            assert await seen.text("#overall") == "ready"
            html = await seen.page.content()
            shown = await seen.text("body")
            for secret in (TRADE_KEY, TRADE_SECRET, ADMIN_TOKEN):
                assert secret not in html and secret not in shown
            # Self-contained: the page itself, then only the state it reads (with the first 50 open orders).
            assert {url.removeprefix(service.url) for url in seen.requests} == {
                "/",
                "/guardian/state?orders=50",
            }
            assert seen.errors == []


async def test_the_page_shows_account_state_when_the_daemon_gives_it(sim: Simulator, tmp_path: Path) -> None:
    """`link`, `fresh`, `positions`, `balances`, `limits`, a trip, notices and a PnL that cannot be valued come
    with the account-state and exposure work; the page shows them, in words, when `/guardian/state` carries
    them. The real answer (its stream off) is extended on its way to the page."""
    extra = {
        "link": {"state": "down", "last_message_age_s": 12.5, "reconnects": 3, "last_error": "ping timeout"},
        "fresh": False,
        "state_age_s": 12.5,
        "positions": [
            {
                "symbol": "PF_XBTUSD",
                "size": 0.5,
                "entry_price": 60000,
                "mark_price": 61000,
                "unrealized_pnl": 500,
            }
        ],
        "balances": {"available_margin": 48799.5, "portfolio_value": 50000},
        "limits": [{"name": "max_gross_notional", "used": 41000, "limit": 100000, "ratio": 0.41}],
        "daily_pnl_gap": {"code": "markPriceUnavailable", "reason": "no mark for PF_ETHUSD"},
        "trip": {
            "limit": "max_daily_loss",
            "reason": "today's PnL -1000 reached -1000",
            "at": "2026-12-05T10:00:00Z",
            "mode": "reduce_only",
        },
        "notices": [
            {
                "type": "maintenance",
                "priority": "high",
                "note": "engine upgrade",
                "effective_time": None,
                "expected_downtime_minutes": 30,
            }
        ],
    }

    async def extended(route: Route) -> None:
        answer = await route.fetch()
        state = await answer.json()
        state["accounts"][0].update(extra)
        await route.fulfill(response=answer, body=json.dumps(state))

    async with serving(account_config(sim.url, switch=SLOW)) as service, browsing("about:blank") as seen:
        await seen.page.route("**/guardian/state?*", extended)
        await seen.page.goto(service.url + "/")
        await seen.page.wait_for_selector("section[data-account=main][data-state=armed]")
        await seen.page.screenshot(path=tmp_path / "account-state.png", full_page=True)
        card = await seen.text("section[data-account=main]")
        for shown in (
            "Linkdown, last message 12.5 s ago, 3 reconnects (ping timeout)",
            "Account statestale, 12.5 s old",
            "PF_XBTUSD0.560,00061,000500",
            "Available margin48,799.5",
            "Gross notional41,000 of 100,000 · 41 %",
            "Today's PnL is not known (markPriceUnavailable): no mark for PF_ETHUSD",
            "Tripped: Today's loss at 10:00:00 UTC. today's PnL -1000 reached -1000. The account stays reduce only",
            "high priority maintenance, no time given, 30 min down: engine upgrade",
        ):
            assert shown in card, (shown, card)
        assert seen.errors == []


async def test_the_countdown_moves_between_refreshes(sim: Simulator, tmp_path: Path) -> None:
    async with serving(account_config(sim.url, switch=SLOW)) as service:
        await wait_for(lambda: service.accounts[0].switch.state.value == "armed", 5, "armed")
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector("section[data-account=main][data-state=armed]")
            first, first_bar = await left_s(seen, "main"), await bar_pct(seen, "main")
            await seen.page.wait_for_timeout(1500)
            then, then_bar = await left_s(seen, "main"), await bar_pct(seen, "main")
            await seen.page.screenshot(path=tmp_path / "countdown.png")
    assert 1.0 <= first - then <= 2.5, (first, then)  # 1.5 s, read to a tenth, with a browser's own jitter
    assert then_bar < first_bar


async def test_a_switch_expiry_at_the_simulator_turns_the_page_red_within_2_s(tmp_path: Path) -> None:
    async with (
        running_sim(budget_capacity=1_000_000) as exchange,
        serving(account_config(exchange.url, switch=FAST)) as service,
        aiohttp.ClientSession() as http,
    ):
        await wait_for(lambda: service.accounts[0].switch.state.value == "armed", 5, "armed")
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector("section[data-account=main][data-state=armed]")
            assert await seen.level() == "green"
            fault = {"endpoint": "cancelallordersafter", "kind": "hang"}  # refreshes never come back
            async with http.post(exchange.url + "/_sim/faults", json=fault) as response:
                assert response.status == 200
            await wait_for(
                lambda: exchange.exchange.accounts["main"].switch_fired, 10, "the sim's switch firing"
            )
            fired = time.monotonic()
            await seen.page.locator("body[data-level=red]").wait_for(timeout=2000)
            took = time.monotonic() - fired
            await seen.page.screenshot(path=tmp_path / "expired.png", full_page=True)
            assert await seen.page.locator("section[data-account=main].red[data-state=expired]").count() == 1
            status, state = await get_json(http, service.url + "/guardian/state")
            assert status == 200
            assert state["accounts"][0]["switch"]["state"] == "expired"
            async with http.delete(exchange.url + "/_sim/faults") as response:  # release the hung refresh
                assert response.status == 200
    assert took <= 2.0, took


async def test_a_stopped_daemon_is_shown_as_not_answering(sim: Simulator, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as daemon:
        service = await daemon.enter_async_context(serving(account_config(sim.url, switch=SLOW)))
        await wait_for(lambda: service.accounts[0].switch.state.value == "armed", 5, "armed")
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector("section[data-account=main][data-state=armed]")
            await daemon.aclose()  # the daemon stops (keep: the exchange timer runs on)
            stopped = time.monotonic()
            await seen.page.locator("body[data-level=down]").wait_for(timeout=4000)
            took = time.monotonic() - stopped
            banner = await seen.text("#banner")
            before = await left_s(seen, "main")
            await seen.page.wait_for_timeout(600)
            await seen.page.screenshot(path=tmp_path / "down.png", full_page=True)
            assert await seen.page.locator("#banner").is_visible()
            assert await seen.text("#overall") == "not answering"
            after = await left_s(seen, "main")
    assert banner.startswith("guardian is not answering"), banner
    assert after < before  # its last word on the exchange's timer still counts down
    assert took < 3.5, took  # the next refresh (within 1 s) fails at once on a closed port


async def test_the_page_is_served_with_a_policy_that_runs_only_its_own_script(sim: Simulator) -> None:
    async with serving(account_config(sim.url, switch=SLOW)) as service, aiohttp.ClientSession() as http:
        async with http.get(service.url + "/") as response:
            assert response.status == 200
            html = await response.text()
            headers: Any = response.headers
        async with http.head(service.url + "/") as response:
            assert response.status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*';", policy)
    assert not re.search(r"""(src|href)\s*=|url\(|@import|https?://""", html), "an external asset"
    assert html.count("<script>") == 1 and html.count("<style>") == 1
