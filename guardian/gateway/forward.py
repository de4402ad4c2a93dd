"""The gateway's last stage (`guardian.gateway.app`): journal and forward.

What passed the guard spends the local rate budget (the bot's own share, then the account's, which
always keeps the switch's share and room for one more cancel-all), is journaled (its intent committed
before it leaves), takes a last look at the mode and the switch (journaling was a wait), is registered as
in flight (a halt follows it to its end), is re-signed with the account's exchange key over the same bytes
and forwarded; its outcome is journaled after the bot has its answer.

A batch some of whose edit items guardian answers itself (`guardian.gateway.notfound`) leaves without them
and costs what leaves; their statuses are put into the exchange's answer at their places.

A request carrying cliOrdIds goes through the retried-order memory (`guardian.gateway.dedupe`): a retry
gets its first attempt's answer and is never a second order; another use of those ids is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from guardian.account import Account
from guardian.errors import ExchangeError, ExchangeTimeout
from guardian.gateway import checks, notfound
from guardian.gateway.auth import Caller
from guardian.gateway.dedupe import Outcome
from guardian.gateway.intake import afford_lookup
from guardian.gateway.orders import CancelAllIntent, CancelIntent
from guardian.gateway.passage import (
    REPLAYED_HEADER,
    Decision,
    Outbound,
    Passage,
    Trail,
    local_error,
    response,
)
from guardian.gateway.refusal import Refusal
from guardian.journal import Intent, JournalError
from guardian.kraken import endpoints as ep
from guardian.kraken.client import RawAnswer
from guardian.kraken.times import to_iso
from guardian.stream.account import PLACING, placed_ids

if TYPE_CHECKING:
    from guardian.gateway.app import Gateway

log = structlog.get_logger("guardian.gateway")

HISTORY_WINDOW_S = 600.0  # the account-history pool refills its 100 tokens over 10 minutes
_PLACING = frozenset(PLACING)


async def forward(gw: Gateway, p: Passage) -> None:
    """Budget, journal, forward: what follows the guard's decision."""
    account, decision = p.account, p.decision
    out = p.outbound()
    cost = p.endpoint.cost_for(p.fields, decision.items - len(decision.answered))  # what leaves
    if p.endpoint.pool is ep.Pool.HISTORY:
        spend_history(gw, account, cost)
        p.answer = response(await forward_journaled(gw, out, decision, p.trail))
    elif decision.keys and account.config.guard.dedupe_window_s > 0:
        p.answer = await _send_once(gw, p, out, cost)
    else:
        spend(gw, account, p.bot, cost, decision)
        p.answer = response(await forward_journaled(gw, out, decision, p.trail))


def spend(gw: Gateway, account: Account, caller: Caller, cost: float, decision: Decision) -> None:
    """The local rate budget: the bot's own share (if it has one), then the account's, which always
    keeps the switch's share and, from everything but cancels, room for one more cancel-all."""
    mine = gw.bot_budgets.get((caller.account, caller.bot))
    if mine is not None and mine.available() < cost:
        raise Refusal(
            "apiLimitExceeded",
            f"bot {caller.bot!r} has used its own rate budget ({mine.capacity:g} per {mine.window_s:g} s, "
            f"accounts.clients.rate_budget); retry in {mine.seconds_until(cost):.1f} s",
        )
    # The switch's share is never lent, not even to cancels: a loop of cancels must not starve the
    # refreshes (tests/test_load.py caught exactly that). Cancels may use the room kept for a cancel-all.
    reserve = account.switch_reserve
    if not (decision.intents and _only_cancels(decision)):
        reserve += account.bot_reserve
    if not account.budget.try_spend(cost, reserve=reserve):
        wait = account.budget.seconds_until(cost, reserve=reserve)
        raise Refusal(
            "apiLimitExceeded",
            f"this request costs {cost:g} of the account's budget ({account.budget.capacity:g} per "
            f"{account.budget.window_s:g} s, part of it kept for the switch); retry in {wait:.1f} s",
        )
    if mine is not None:
        mine.spend(cost)


def spend_history(gw: Gateway, account: Account, cost: float) -> None:
    pool = gw.history[account.name]
    if not pool.try_spend(cost):
        raise Refusal(
            "apiLimitExceeded",
            f"the account-history pool is spent ({pool.capacity:g} tokens per {HISTORY_WINDOW_S / 60:g} "
            f"minutes, as at the exchange); retry in {pool.seconds_until(cost):.0f} s",
        )


async def _send_once(gw: Gateway, p: Passage, out: Outbound, cost: float) -> web.StreamResponse:
    """A sendorder with a cliOrdId, or a batch with send items that carry them: a retry (the same request
    from the same bot) gets the first attempt's answer, never a second order; any other use of those
    cliOrdIds is refused (`clientOrderIdAlreadyExist`). Only what reaches the exchange spends the budget: a
    replayed answer costs nothing, asking the exchange about an unknown outcome costs an `orders/status`."""
    account, decision, trail, caller = out.account, p.decision, p.trail, p.bot
    attempt, first = account.recent.claim(
        decision.keys, caller.bot, decision.content, items=decision.key_items if decision.items else None
    )
    if not first:
        await attempt.wait()
        if attempt.outcome is Outcome.ANSWERED and attempt.answer is not None:
            trail.outcome = "replayed"
            await gw.journal_local(trail, "answered", "replayed", attempt.answer.status)
            found = response(attempt.answer)
            found.headers[REPLAYED_HEADER] = "true"
            return found
        if out.endpoint.name == "sendorder":
            known = await _known_order(account, decision.keys[0])
            if known is not None:
                trail.outcome = "replayed"
                await gw.journal_local(trail, "answered", "recovered", 200)
                recovered = web.json_response(known)
                recovered.headers[REPLAYED_HEADER] = "recovered"
                return recovered
        else:
            await _none_known(account, decision.keys)
        account.recent.forget(attempt)
        # A first attempt again, unless another retry got there first (then this one waits for it).
        return await _send_once(gw, p, out, cost)
    try:
        if decision.deferred is not None and decision.hold is None:
            # A retry whose first attempt turned out not to exist (or was refused): new risk after all,
            # judged now as a first attempt is, before it spends or leaves.
            await checks.settled(account)
            decision.hold = checks.judge(p, decision.deferred)
        spend(gw, account, caller, cost, decision)
        answer = await forward_journaled(gw, out, decision, trail)
    except Refusal:
        account.recent.forget(attempt)
        raise
    except BaseException:
        account.recent.unknown(attempt)
        raise
    if trail.outcome in ("timeout", "unavailable"):
        account.recent.unknown(attempt)
    else:
        account.recent.answered(attempt, answer)
    return response(answer)


async def _none_known(account: Account, cli_ord_ids: Sequence[str]) -> None:
    """After a batch whose outcome is unknown, before it is sent again: Refusal unless the exchange knows
    none of its cliOrdIds. A batch answer cannot be rebuilt honestly from orders/status, so a batch that
    did reach the exchange is not answered again: the bot reads openorders instead."""
    afford_lookup(
        account,
        "an earlier attempt of this batch has an unknown outcome and there is no budget left to ask the "
        "exchange about it; retry shortly",
    )
    try:
        rows = await account.gateway_client.order_status(cli_ord_ids=list(cli_ord_ids))
    except ExchangeError as exc:
        raise Refusal(
            "upstreamUnavailable",
            f"an earlier attempt of this batch has an unknown outcome and the exchange could not be asked "
            f"about it ({exc}); retry shortly",
        ) from None
    wanted = set(cli_ord_ids)
    for row in rows:
        order = row.get("order") if isinstance(row, dict) else None
        if isinstance(order, dict) and order.get("cliOrdId") in wanted:
            raise Refusal(
                "clientOrderIdAlreadyExist",
                f"an earlier attempt of this batch had an unknown outcome, and the exchange has an order "
                f"with cliOrdId {order['cliOrdId']!r}: it is not sent again (see openorders or "
                "orders/status for what it did)",
            )


async def _known_order(account: Account, cli_ord_id: str) -> dict[str, Any] | None:
    """After an attempt whose outcome is unknown: does the exchange have the order? If so, answer the
    retry in sendorder's shape from what the exchange says."""
    afford_lookup(
        account,
        f"an earlier attempt with cliOrdId {cli_ord_id!r} has an unknown outcome and there is no budget "
        "left to ask the exchange about it; retry shortly",
    )
    try:
        rows = await account.gateway_client.order_status(cli_ord_ids=[cli_ord_id])
    except ExchangeError as exc:
        raise Refusal(
            "upstreamUnavailable",
            f"an earlier attempt with cliOrdId {cli_ord_id!r} has an unknown outcome and the exchange could "
            f"not be asked about it ({exc}); retry shortly",
        ) from None
    for row in rows:
        order = row.get("order") if isinstance(row, dict) else None
        if isinstance(order, dict) and order.get("cliOrdId") == cli_ord_id:
            status = {"ENTERED_BOOK": "placed", "TRIGGER_PLACED": "placed", "FULLY_EXECUTED": "filled"}
            return {
                "result": "success",
                "sendStatus": {
                    "order_id": order.get("orderId"),
                    "cliOrdId": cli_ord_id,
                    "status": status.get(str(row.get("status")), str(row.get("status", "")).lower()),
                    "receivedTime": order.get("timestamp"),
                    "orderEvents": [],
                },
                "serverTime": to_iso(time.time()),
            }
    return None


async def forward_journaled(gw: Gateway, out: Outbound, decision: Decision, trail: Trail) -> RawAnswer:
    """Journal the intent (committed), take the last look, forward, journal the outcome."""
    endpoint = out.endpoint
    request_id: int | None = None
    try:
        request_id = await gw.journal.record(
            Intent(
                account=out.account.name,
                bot=trail.bot,
                endpoint=endpoint.name,
                params=notfound.forwarded_params(trail.params, decision.answered),
                verdict="forwarded",
                received_at=trail.received_at,
            )
        )
    except JournalError as exc:
        if decision.new_risk:  # a cancel (a batch of cancels too) still goes out, unjournaled
            raise Refusal(
                "journalUnavailable",
                "guardian cannot write its audit journal, so it lets no new risk out (cancels still pass)",
            ) from exc
        log.error("journal_write_failed", endpoint=endpoint.name, error=str(exc))
    if decision.new_risk:
        try:
            checks.still_allowed(out.account, decision, endpoint)
        except Refusal as refusal:
            if request_id is not None:
                _withheld(gw, request_id, refusal, trail)
            raise
        in_flight = out.account.in_flight
        flight = in_flight.begin(trail.bot, endpoint.name, tuple(decision.intents), out.path)
        answer: RawAnswer | None = None
        try:
            answer = await gw.forward(out, trail)
        finally:
            lost = answer is None or trail.outcome in ("timeout", "unavailable")
            in_flight.end(flight, None if lost else answer)
    else:
        answer = await gw.forward(out, trail)
    if request_id is not None:
        # After the answer is on its way: the outcome's JSON and redaction are not the bot's wait.
        total_s = time.time() - trail.received_at
        asyncio.get_running_loop().call_soon(_finish, gw, request_id, trail, answer.status, total_s)
    if decision.answered:  # a batch some of whose items guardian answers itself: put them in
        return await notfound.spliced(gw, answer, decision, trail)
    return answer


def _withheld(gw: Gateway, request_id: int, refusal: Refusal, trail: Trail) -> None:
    """The intent was journaled but a halt (or a stricter mode, or the switch) stopped it before it left:
    its row says so, and the refusal is journaled as every refusal is."""
    try:
        gw.journal.finish(
            request_id,
            outcome="withheld",
            http_status=refusal.http_status,
            answer={"error": refusal.code},
            upstream_s=None,
            total_s=time.time() - trail.received_at,
        )
    except JournalError as exc:
        log.error("journal_write_failed", endpoint=trail.endpoint, error=str(exc))


def _finish(gw: Gateway, request_id: int, trail: Trail, http_status: int, total_s: float) -> None:
    trail.read_answer()
    stream = gw.accounts[trail.account].stream if trail.account in gw.accounts else None
    if stream is not None and trail.answer is not None and trail.endpoint in _PLACING:
        stream.placed(trail.bot, placed_ids(trail.answer, trail.params))
    log.debug(
        "request_forwarded",
        account=trail.account,
        bot=trail.bot,
        endpoint=trail.endpoint,
        outcome=trail.outcome,
        http_status=http_status,
        upstream_ms=None if trail.upstream_s is None else round(trail.upstream_s * 1000, 3),
        total_ms=round(total_s * 1000, 3),
        # pairs, not a mapping: a stage named "authenticate" must not read as a secret's field name
        stages_ms=[[name, round(spent * 1000, 3)] for name, spent in trail.stages] or None,
    )
    try:
        gw.journal.finish(
            request_id,
            outcome=trail.outcome,
            http_status=http_status,
            answer=trail.answer,
            upstream_s=trail.upstream_s,
            total_s=total_s,
        )
    except JournalError as exc:
        log.error("journal_write_failed", endpoint=trail.endpoint, error=str(exc))


async def send(out: Outbound, trail: Trail) -> RawAnswer:
    """Re-signed with the account's exchange key over the same bytes, and forwarded."""
    started = time.perf_counter()
    try:
        answer = await out.account.gateway_client.send(
            out.endpoint, out.query, out.body, method=out.method, path=out.path
        )
    except ExchangeTimeout as exc:
        trail.upstream_s = time.perf_counter() - started
        trail.outcome = "timeout"
        return local_error(
            504, "Unavailable", f"no answer from the exchange in time; outcome unknown ({exc})"
        )
    except ExchangeError as exc:
        trail.upstream_s = time.perf_counter() - started
        trail.outcome = "unavailable"
        return local_error(502, "Unavailable", f"the exchange could not be reached ({exc})")
    trail.upstream_s = time.perf_counter() - started
    trail.raw = answer  # read after the bot has it (Trail.read_answer): the bot does not wait for that
    return answer


def _only_cancels(decision: Decision) -> bool:
    return all(isinstance(i, CancelIntent | CancelAllIntent) for i in decision.intents)
