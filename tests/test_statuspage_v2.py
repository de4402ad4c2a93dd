"""The status page an operator works from (issue 22), in Debian's chromium at 1280 and 390 px, against a daemon
in front of the simulator on loopback with the account stream on, bots, limits and real refusals.

Nothing on the page is wider than its card, and the page never scrolls sideways, at either width. A refused
order shows with its bot and code within 2 s, a bot's kill on the bot's row, a limit's bar turns amber at
80 % and red at 100 %. Labels are a person's words, not field names. `/guardian/state` carries what the page
shows (each bot's orders in the last minute, open orders and last refusal; the last 20 refusals, trips and
kills) at a bounded cost, and no secret. Each test saves its screenshots in its tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from guardian.config import GuardConfig
from guardian.kraken.endpoints import endpoint
from guardian.kraken.times import to_iso
from guardian.recent import KEPT, MESSAGE_MAX, Recent
from guardian.service import Service
from guardian.sim.app import Simulator
from guardian.sim.ws import StreamSettings
from tests.conftest import TRADE_KEY, TRADE_SECRET, running_sim
from tests.daemon import account_config, get_json, serving, wait_for
from tests.test_exposure import (
    ADMIN,
    BASE,
    MKT,
    STREAM,
    SWITCH,
    below,
    bot,
    bot_key,
    client,
    exchange,
    guarded,
    limit_buy,
    refused,
)
from tests.test_statuspage import Browsing, browsing
from tests.test_trips import admin

__all__ = ["exchange"]  # the simulator fixture, with its account stream

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
# Field names a person should never have to read (the page's own labels replace them).
RAW_NAMES = (
    "available_margin",
    "max_open_orders_total",
    "max_orders_per_minute",
    "portfolio_value",
    "state_age_s",
)

# Every element of every card against its card's box, and the page against the viewport. A table cut off by
# its card, or a row that runs past it, shows here even where `overflow: hidden` would hide it on screen; an
# element that scrolls sideways inside the card is reported too.
OVERFLOWS = """() => {
  const found = [], slack = 0.5, view = document.documentElement.clientWidth;
  const name = e => e.tagName.toLowerCase() + (e.dataset.role ? "[" + e.dataset.role + "]" : "") +
    (e.className && typeof e.className === "string" ? "." + e.className.split(" ").join(".") : "");
  if (document.documentElement.scrollWidth > view) {
    found.push("the page scrolls sideways: " + document.documentElement.scrollWidth + " > " + view);
  }
  for (const card of document.querySelectorAll("section.card")) {
    const c = card.getBoundingClientRect();
    if (c.left < -slack || c.right > view + slack) found.push(card.dataset.account + ": the card leaves the page");
    for (const e of card.querySelectorAll("*")) {
      const r = e.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (r.left < c.left - slack || r.right > c.right + slack) {
        found.push(card.dataset.account + ": " + name(e) + " spans " + Math.round(r.left) + "-" + Math.round(r.right) +
          ", its card " + Math.round(c.left) + "-" + Math.round(c.right));
      }
      if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== "visible") {
        found.push(card.dataset.account + ": " + name(e) + " scrolls sideways inside its card");
      }
    }
  }
  return found;
}"""


async def overflows(seen: Browsing) -> list[str]:
    found: list[str] = await seen.page.evaluate(OVERFLOWS)
    return found


async def at_width(seen: Browsing, width: str) -> None:
    w, h = WIDTHS[width]
    await seen.page.set_viewport_size({"width": w, "height": h})
    await seen.page.wait_for_timeout(100)  # the layout at the new width (the next refresh keeps it)


def row(account: str, bot_name: str) -> str:
    return f"section[data-account={account}] [data-role=bots] tr[data-bot='{bot_name}']"


async def send(service: Service, i: int, params: dict[str, Any]) -> dict[str, Any]:
    """A sendorder from bot `i`, and the answer it gets (a refusal too)."""
    async with bot(service, i) as b:
        raw = await b.send(endpoint("sendorder"), body=urlencode(params))
    answer: dict[str, Any] = json.loads(raw.body)
    return answer


@contextlib.asynccontextmanager
async def two_accounts(exchange: Simulator, tmp_path: Path) -> AsyncIterator[Service]:
    """`main`: two bots, every kind of limit, the exchange `exchange`. `spare`: a bot and a fill-burst trip at
    two fills, on a second simulator. Both streams on; a maintenance notice on both."""
    guard = GuardConfig(
        **{
            **{f: getattr(BASE, f) for f in ("mark_poll_s", "rate_budget", "upstream_timeout_s")},
            "max_order_size": 5,
            "max_position": 200,
            "max_open_orders_total": 100,
            "max_orders_per_minute": 200,
            "max_gross_notional": 10_000_000,
            "max_daily_loss": 50_000,
        }
    )
    spare_guard = GuardConfig(mark_poll_s=0.2, rate_budget=20_000, max_fills_per_minute=2, max_position=50)
    async with running_sim(
        seed=11, budget_capacity=100_000, stream=StreamSettings(heartbeat_s=0.5, ticker_s=0.2)
    ) as second:
        main = account_config(
            exchange.url,
            switch=SWITCH,
            guard=guard,
            clients=(client(0), client(1, max_open_orders=80)),
            stream=STREAM,
        )
        spare = account_config(
            second.url, name="spare", switch=SWITCH, guard=spare_guard, clients=(client(2),), stream=STREAM
        )
        async with (
            serving(main, spare, journal=tmp_path / "journal.sqlite3", admin_token=ADMIN) as service,
            aiohttp.ClientSession() as http,
        ):
            await wait_for(
                lambda: (
                    all(s.link.up for s in service.streams)
                    and all(a.marks.mark("PF_XBTUSD") is not None for a in service.accounts)
                ),
                10,
                "both links up, with marks",
            )
            soon = to_iso(time.time() + 1800)
            note = "Scheduled maintenance of the trading engine: " + "orders may be rejected meanwhile. " * 6
            for sim in (exchange, second):
                doc = {"note": note, "type": "maintenance", "priority": "high", "effective_time": soon}
                doc["expected_downtime_minutes"] = 30
                async with http.post(sim.url + "/_sim/notices", json=doc) as answer:
                    assert answer.status == 200, await answer.text()
            yield service


async def test_nothing_is_wider_than_its_card_at_1280_and_390_px(exchange: Simulator, tmp_path: Path) -> None:
    async with two_accounts(exchange, tmp_path) as service:
        # main: 80 resting orders, then a kill of the bot that placed 20 of them (60 left, the page lists 50);
        # refusals of several kinds, one quoting a 150-character symbol, unbroken. spare: a trip.
        for n in range(80):
            price = below(exchange, 3 + n / 100)
            assert (await send(service, 0 if n < 60 else 1, limit_buy(price)))["result"] == "success"
        for code_params in (
            {**MKT, "size": 50},
            {**MKT, "symbol": "PF_" + "X" * 150},
            {**limit_buy(below(exchange)), "size": 0.5, "reduceOnly": "maybe"},
        ):
            assert (await send(service, 0, code_params))["result"] == "error"
        assert (await admin(service, "/guardian/kill", {"account": "main", "bot": "bot-1"}))[0] == 200
        for _ in range(2):
            await send(service, 2, MKT)
        await wait_for(lambda: service.accounts[1].trip is not None, 5, "the fill-burst trip on spare")
        await wait_for(lambda: all(s.view().notices for s in service.streams), 5, "the notices")
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector("section[data-account=spare] [data-role=trip]")
            await seen.page.wait_for_selector("section[data-account=main] [data-role=notices] li")
            for width in WIDTHS:
                await at_width(seen, width)
                await seen.page.screenshot(path=tmp_path / f"busy-{width}.png", full_page=True)
                assert await overflows(seen) == [], width
                main = "section[data-account=main]"
                # What is measured is there: not an empty page that fits by having nothing in it.
                assert await seen.page.locator(f"{main} [data-role=orders] tbody tr").count() == 50
                assert "60 open" in await seen.text(f"{main} [data-role=orders] [data-role=count]")
                assert await seen.page.locator(f"{main} [data-role=refusals] tbody tr").count() == 3
                assert await seen.page.locator(f"{main} [data-role=bots] tbody tr").count() == 2
                assert await seen.page.locator(f"{main} [data-role=limits] .limit").count() == 4
                assert "Tripped: Fills in the last minute" in await seen.text(
                    "section[data-account=spare] [data-role=trip]"
                )
                body = await seen.page.inner_text("body")  # what is rendered, not the script
                for raw in RAW_NAMES:
                    assert raw not in body, raw
                for label in (
                    "Available margin",
                    "Open orders, all contracts",
                    "Today's loss",
                    "Account state",
                ):
                    assert label in body, label
            html = await seen.page.content()
            assert seen.errors == []
        async with aiohttp.ClientSession() as http:
            status, state = await get_json(http, service.url + "/guardian/state?orders=50")
        assert status == 200
        text = str(state)
        for secret in (TRADE_KEY, TRADE_SECRET, ADMIN, *bot_key(0), *bot_key(1), *bot_key(2)):
            assert secret not in html and secret not in text


async def test_a_refused_order_shows_with_its_bot_and_code_within_2_s(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with (
        guarded(exchange, tmp_path, max_order_size=5) as service,
        browsing(service.url + "/") as seen,
    ):
        await seen.page.wait_for_selector(row("main", "bot-1"))
        for width, (i, code, params) in zip(
            WIDTHS,
            [
                (1, "orderSizeTooLarge", {**MKT, "size": 50}),
                (0, "invalidArgument", {**MKT, "side": "up"}),
            ],
            strict=True,
        ):
            await at_width(seen, width)
            name = f"bot-{i}"
            answer = await send(service, i, params)
            assert answer["error"] == code, answer
            answered = time.monotonic()
            cell = f"{row('main', name)} [data-role=last-refusal] [data-role=code]"
            await seen.page.locator(f"{cell}:text-is('{code}')").wait_for(timeout=2000)
            newest = f"section[data-account=main] [data-role=refusals] tr:first-child[data-code={code}]"
            await seen.page.locator(f"{newest}[data-bot='{name}']").wait_for(timeout=500)
            took = time.monotonic() - answered
            await seen.page.screenshot(path=tmp_path / f"refused-{width}.png", full_page=True)
            assert took <= 2.0, took
            message = await seen.text(f"{row('main', name)} [data-role=last-refusal] [data-role=message]")
            assert message == answer["message"], (message, answer)
            assert await overflows(seen) == [], width
        # Each bot's row keeps its own last refusal.
        first = await seen.text(f"{row('main', 'bot-1')} [data-role=last-refusal] [data-role=code]")
        assert first == "orderSizeTooLarge"
        assert seen.errors == []


async def test_a_bots_kill_shows_on_its_row(exchange: Simulator, tmp_path: Path) -> None:
    async with guarded(exchange, tmp_path) as service:
        assert (await send(service, 1, limit_buy(below(exchange))))["result"] == "success"
        async with browsing(service.url + "/") as seen:
            await seen.page.wait_for_selector(f"{row('main', 'bot-1')}[data-mode=active]")
            assert await seen.text(f"{row('main', 'bot-1')} [data-role=open]") == "1"
            status, _ = await admin(service, "/guardian/kill", {"account": "main", "bot": "bot-1"})
            assert status == 200
            for width in WIDTHS:
                await at_width(seen, width)
                killed = f"{row('main', 'bot-1')}[data-mode=halted]"
                await seen.page.locator(killed).wait_for(timeout=2000)
                assert await seen.text(f"{killed} [data-role=mode]") == "halted"
                open_orders = await seen.text(f"{row('main', 'bot-1')} [data-role=open]")
                assert open_orders == "0"  # its resting order cancelled with it
                assert await seen.page.locator(f"{row('main', 'bot-0')}[data-mode=active]").count() == 1
                kill = "section[data-account=main] [data-role=trips] [data-kind=kill][data-bot='bot-1']"
                assert "Kill of bot bot-1 → halted" in await seen.text(kill)
                assert await seen.text("section[data-account=main] h2 [data-role=mode]") == "mode: active"
                await seen.page.screenshot(path=tmp_path / f"killed-{width}.png", full_page=True)
                assert await overflows(seen) == [], width
            assert seen.errors == []


async def limit_level(seen: Browsing, name: str) -> tuple[str, str, float]:
    """The limit's level, its bar's colour and its bar's width (% of the track), read in one step (the page
    replaces its cards at every refresh: a style read from a card already replaced would be empty)."""
    found = await seen.page.evaluate(
        """selector => {
          const row = document.querySelector(selector), fill = row.querySelector("[data-role=fill]");
          return [row.dataset.level, getComputedStyle(fill).backgroundColor,
                  100 * fill.getBoundingClientRect().width / fill.parentElement.getBoundingClientRect().width];
        }""",
        f"section[data-account=main] [data-limit={name}]",
    )
    return str(found[0]), str(found[1]), float(found[2])


GREEN, AMBER, RED = "rgb(31, 122, 58)", "rgb(168, 100, 0)", "rgb(179, 38, 30)"


async def test_a_limit_bar_turns_amber_at_80_and_red_at_100_percent(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with (
        guarded(exchange, tmp_path, max_open_orders_total=5) as service,
        browsing(service.url + "/") as seen,
    ):
        limit = "section[data-account=main] [data-limit=max_open_orders_total]"
        placed = 0
        for n, expected in ((3, ("green", GREEN)), (4, ("amber", AMBER)), (5, ("red", RED))):
            while placed < n:
                answer = await send(service, 0, limit_buy(below(exchange, 3 + placed / 100)))
                assert answer["result"] == "success", answer
                placed += 1
            shown = seen.page.locator(f"{limit}[data-level={expected[0]}]", has_text=f"{n} of 5 · ")
            await shown.wait_for(timeout=2000)
            for width in WIDTHS:
                await at_width(seen, width)
                found = await limit_level(seen, "max_open_orders_total")
                assert found[:2] == expected, (n, width, found)
                assert abs(found[2] - n * 20) < 1, found
                assert f"{n} of 5 · {n * 20} %" in await seen.text(limit)
                await seen.page.screenshot(path=tmp_path / f"limit-{n}-of-5-{width}.png", full_page=True)
                assert await overflows(seen) == [], width
        assert "Open orders, all contracts" in await seen.text(limit)
        assert seen.errors == []


async def test_the_state_carries_each_bots_figures_and_the_last_20_refusals(
    exchange: Simulator, tmp_path: Path
) -> None:
    async with guarded(exchange, tmp_path, max_order_size=5) as service, aiohttp.ClientSession() as http:
        for _ in range(3):
            assert (await send(service, 0, limit_buy(below(exchange))))["result"] == "success"
        async with bot(service, 1) as b:
            for size in range(6, 6 + KEPT + 5):  # 25 refusals, each naming its size
                await refused(exchange, b, {**MKT, "size": size}, "orderSizeTooLarge")
        status, state = await get_json(http, service.url + "/guardian/state")
    assert status == 200
    [account] = state["accounts"]
    bots = {b["name"]: b for b in account["bots"]}
    assert (bots["bot-0"]["orders_last_minute"], bots["bot-0"]["open_orders"]) == (3, 3)
    assert bots["bot-0"]["last_refusal"] is None
    assert (bots["bot-1"]["orders_last_minute"], bots["bot-1"]["open_orders"]) == (0, 0)
    last = bots["bot-1"]["last_refusal"]
    assert (last["bot"], last["code"], last["endpoint"], last["symbol"]) == (
        "bot-1",
        "orderSizeTooLarge",
        "sendorder",
        "PF_XBTUSD",
    )
    assert "size 30 " in last["message"]
    refusals = account["refusals"]
    assert len(refusals) == KEPT
    assert [int(r["message"].split()[1]) for r in refusals] == list(range(30, 10, -1))  # newest first
    assert refusals[0] == last
    assert account["trips"] == []


def test_recent_is_bounded_newest_first_and_keeps_each_configured_bots_last() -> None:
    now = [1_000.0]
    recent = Recent(["a", "b"], clock=lambda: now[0])
    for n in range(KEPT * 50):
        now[0] += 1
        recent.refused("a" if n % 2 else "stranger", "sendorder", "orderSizeTooLarge", f"#{n} " + "x" * 400)
    recent.stopped("kill", "kill", "halted", bot="b")
    recent.stopped("trip", "5 fills within 60 s", "halted", limit="max_fills_per_minute", at=5.0)
    found = recent.as_json()
    assert len(recent.refusals) == KEPT and len(found["refusals"]) == KEPT  # type: ignore[arg-type]
    messages = [r["message"] for r in found["refusals"]]  # type: ignore[attr-defined]
    assert messages[0].startswith(f"#{KEPT * 50 - 1} ") and all(len(m) == MESSAGE_MAX for m in messages)
    assert recent.bot_json("a") is not None and recent.bot_json("b") is None
    assert "stranger" not in recent.last_refusal  # only the account's own bots: bounded by the configuration
    trips = found["trips"]
    assert [t["kind"] for t in trips] == ["trip", "kill"]  # type: ignore[index]
    assert trips[0]["at"] == to_iso(5.0)  # type: ignore[index]
