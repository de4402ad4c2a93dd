"""Halt and cancel: after a kill answers, or very soon after, nothing the account's bots sent through
guardian before it may be left open at the exchange.

A kill halts first (nothing new is forwarded from that instant), takes a snapshot of the new-risk
requests already forwarded (`guardian.gateway.inflight`), and cancels everything at once. Those requests
were beyond the cancel's reach: the exchange may act on them after it. So each one is watched to its end:
- its answer shows an order placed or an edit applied: that order is cancelled by its id at once;
- its answer shows nothing placed (a rejection, an error envelope): nothing to do;
- its outcome is unknown (no answer within `upstream_timeout_s`, a lost connection, an answer that cannot
  be read): one more `cancelallorders` then, and a last one `upstream_timeout_s` later, for an exchange
  that acts on a request later than it answers it.
Every follow-up cancel is journaled (`kill_follow_up`) and logged. The same mechanism serves every
automatic halt-and-cancel (a fill-burst or loss-limit trip, a per-bot kill: `bot` narrows the watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

import structlog

from guardian.account import Account, Mode
from guardian.errors import ExchangeError
from guardian.gateway.inflight import Flight
from guardian.gateway.orders import OrderIntent
from guardian.journal import Journal, JournalError
from guardian.kraken.client import RawAnswer, classify
from guardian.kraken.endpoints import endpoint

log = structlog.get_logger("guardian.halt")

# Order statuses (sendorder, editorder, batch items) after which nothing is left open by that request.
# Anything else with an order id is cancelled: an unknown status is never taken for a harmless one.
CLOSED_STATUSES: Final = frozenset(
    {
        "filled",
        "cancelled",
        "notFound",
        "noOrdersToCancel",
        "insufficientAvailableFunds",
        "invalidPrice",
        "invalidSize",
        "postWouldExecute",
        "iocWouldNotExecute",
        "selfFill",
        "wouldCauseLiquidation",
        "outsidePriceCollar",
        "clientOrderIdAlreadyExist",
        "wouldNotReducePosition",
        "wouldProcessAfterSpecifiedTime",
        "marketSuspended",
        "tooManyOrders",
        "tooManySmallOrders",
        "orderForEditNotFound",
        "orderForEditNotAStop",
        "cannotEditTriggerPriceOfTrailingStop",
        "cannotEditLimitPriceOfTrailingStop",
    }
)
OPEN_STATUSES: Final = frozenset({"placed", "partiallyFilled", "edited"})
RFQ_OFFERS: Final = frozenset({"rfqs/{rfqUid}/place-offer", "rfqs/{rfqUid}/replace-offer"})
_STATUS_KEYS: Final = {"sendorder": "sendStatus", "editorder": "editStatus", "batchorder": "batchStatus"}

Target = tuple[str, str]  # ("order_id" | "cliOrdId", the id): what cancelorder takes


def left_open(flight: Flight, answer: RawAnswer) -> list[Target] | None:
    """The orders `flight`'s answer shows placed or changed (to cancel by id); [] when it shows nothing
    left open; None when it cannot say (a 5xx, a body that is not Kraken's, an open order without an id):
    the outcome is unknown."""
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return None
    if not isinstance(doc, Mapping) or answer.status >= 500:
        return None
    if doc.get("result") != "success":
        return [] if isinstance(doc.get("error"), str) else None
    if flight.endpoint in RFQ_OFFERS:  # an offer now stands on the RFQ: its own cancel takes it down
        return [("rfq_offer", flight.path)] if flight.path else None
    statuses = doc.get(_STATUS_KEYS.get(flight.endpoint, ""))
    if isinstance(statuses, Mapping):
        statuses = [statuses]
    if not isinstance(statuses, list):
        return None
    edits = [i for i in flight.intents if isinstance(i, OrderIntent) and i.kind == "edit"]
    targets: list[Target] = []
    for status in statuses:
        if not isinstance(status, Mapping):
            return None
        word = status.get("status")
        if word in CLOSED_STATUSES:
            continue
        if word not in OPEN_STATUSES:
            log.warning("halt_unknown_order_status", endpoint=flight.endpoint, status=str(word)[:64])
        target = _target(status, edits if flight.endpoint == "editorder" else [])
        if target is None:
            return None
        if target not in targets:
            targets.append(target)
    return targets


def _target(status: Mapping[str, Any], edits: Sequence[OrderIntent]) -> Target | None:
    for key in ("order_id", "orderId"):
        if isinstance(status.get(key), str) and status[key]:
            return ("order_id", status[key])
    if isinstance(status.get("cliOrdId"), str) and status["cliOrdId"]:
        return ("cliOrdId", status["cliOrdId"])
    if len(edits) == 1:  # editorder's answer may leave out the id it was sent
        edit = edits[0]
        if edit.order_id:
            return ("order_id", edit.order_id)
        if edit.cli_ord_id:
            return ("cliOrdId", edit.cli_ord_id)
    return None


class Halts:
    """Halts accounts and owns the follow-up watches (each a task, collected when it ends)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def halt(self, account: Account, *, bot: str | None = None) -> list[Flight]:
        """Halt `account` (or only its bot `bot`) now, before any other request can be let through, and
        return the new-risk requests already forwarded (only `bot`'s, if given). Synchronous on purpose: the halt and the
        snapshot are one step, so each request is either refused by the halt or in the snapshot."""
        if bot is None:
            account.mode = Mode.HALTED
            account.mode_by = "halt"
        else:  # that bot alone: the others keep trading
            account.bot_modes[bot] = Mode.HALTED
        return account.in_flight.snapshot(bot)

    async def cancel_everything(self, account: Account) -> tuple[Any, str | None]:
        """`cancelallorders` at the exchange, now: (what the exchange said, None), or (what it said, the
        error) when it failed or refused. Cancels always go out: the budget is spent, never asked."""
        cancel = endpoint("cancelallorders")
        doc: Any = None
        try:
            raw = await account.gateway_client.send(cancel)
            account.budget.spend(cancel.cost)
            doc = json.loads(raw.body) if raw.body else None
            classify("cancelallorders", raw.status, raw.body)  # raises on an error answer
        except (ExchangeError, ValueError) as exc:
            return doc, str(exc)
        return doc, None

    async def cancel_bot(self, account: Account, bot: str) -> dict[str, Any]:
        """Cancel exactly the open orders `bot` placed (the exchange's openorders, attributed by the
        account stream's record of who placed what); other bots' orders are left alone. What it did:
        `cancelled` and `failed` (order ids), `error` if the open orders could not be read."""
        done: dict[str, Any] = {"cancelled": [], "failed": [], "others_left": 0}
        stream = account.stream
        read = endpoint("openorders")
        account.budget.spend(read.cost)
        try:
            rows = await account.gateway_client.open_orders()
        except ExchangeError as exc:
            done["error"] = f"the open orders could not be read: {exc}"
            return done
        for row in rows:
            order_id, cli = row.get("order_id"), row.get("cliOrdId")
            owner = None if stream is None else stream.owner(order_id, cli)
            if owner != bot or not isinstance(order_id, str):
                done["others_left"] += 1
                continue
            cancel = endpoint("cancelorder")
            account.budget.spend(cancel.cost)
            try:
                raw = await account.gateway_client.send(cancel, body=urlencode({"order_id": order_id}))
                status = _status(raw, "cancelStatus")
            except ExchangeError as exc:
                status = f"failed: {exc}"
            done["cancelled" if status == "cancelled" else "failed"].append(order_id)
        return done

    def follow(self, account: Account, flights: Sequence[Flight], *, why: str, one_bot: bool = False) -> None:
        """Watch each flight to its end and cancel what it left open (see the module's doc). `one_bot`:
        a per-bot halt, whose unknown outcomes are cancelled by cliOrdId where every order of the request
        has one, so that other bots' orders are left alone."""
        for flight in flights:
            task = asyncio.create_task(
                self._follow(account, flight, why, one_bot), name=f"halt-follow-{account.name}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._collect)

    def _collect(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("halt_follow_up_failed", error=repr(task.exception()))

    async def drain(self, limit_s: float) -> bool:
        """Let the watches finish within `limit_s` (the ordered shutdown); cancel what is left. True if
        every watch finished."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=limit_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pending:
            log.error("halt_follow_ups_abandoned", count=len(pending))
        return not pending

    async def _follow(self, account: Account, flight: Flight, why: str, one_bot: bool = False) -> None:
        upstream_timeout_s = account.config.guard.upstream_timeout_s
        try:
            # The gateway's own client gives up after upstream_timeout_s; the margin is a backstop only.
            async with asyncio.timeout(upstream_timeout_s + 1.0):  # not wait_for: see Service._report
                answer = await flight.wait()
        except TimeoutError:
            answer = None
        targets = None if answer is None else left_open(flight, answer)
        base = {"why": why, "bot": flight.bot, "endpoint": flight.endpoint}
        named = _named_orders(flight) if one_bot else None
        if targets is None and named is not None:  # a per-bot halt: that bot's orders, by name, twice
            for sweep in ("outcome unknown", "outcome unknown: the last sweep"):
                for field, order_id in named:
                    await self._cancel(account, field, order_id, {**base, "because": sweep})
                if sweep == "outcome unknown":
                    await asyncio.sleep(upstream_timeout_s)
            return
        if targets is None:
            because = "outcome unknown" if not one_bot else "outcome unknown, and an order without a cliOrdId"
            await self._cancel_all(account, {**base, "because": because})
            await asyncio.sleep(upstream_timeout_s)
            await self._cancel_all(account, {**base, "because": "outcome unknown: the last sweep"})
            return
        for field, order_id in targets:
            if field == "rfq_offer":
                await self._cancel_offer(account, order_id, base)
            else:
                await self._cancel(account, field, order_id, base)
        if not targets:
            log.info("halt_follow_up_nothing_open", account=account.name, **base)

    async def _cancel(self, account: Account, field: str, order_id: str, base: dict[str, Any]) -> None:
        detail: dict[str, Any] = {**base, "action": "cancelorder", field: order_id}
        cancel = endpoint("cancelorder")
        account.budget.spend(cancel.cost)  # cancels always go out
        try:
            raw = await account.gateway_client.send(cancel, body=urlencode({field: order_id}))
            detail["result"] = _status(raw, "cancelStatus")
        except ExchangeError as exc:
            detail["result"] = "failed"
            detail["error"] = str(exc)
        await self._record(account, detail)

    async def _cancel_offer(self, account: Account, offer_path: str, base: dict[str, Any]) -> None:
        """DELETE rfqs/<uid>/cancel-offer for an offer placed (or replaced) by a request in flight."""
        path = offer_path.rsplit("/", 1)[0] + "/cancel-offer"
        detail: dict[str, Any] = {**base, "action": "cancel-offer", "path": path}
        cancel = endpoint("rfqs/{rfqUid}/cancel-offer")
        account.budget.spend(cancel.cost)
        try:
            raw = await account.gateway_client.send(cancel, method="DELETE", path=path)
            detail["result"] = (
                "cancelled" if raw.status < 400 and b'"success"' in raw.body else _status(raw, "")
            )
        except ExchangeError as exc:
            detail["result"] = "failed"
            detail["error"] = str(exc)
        await self._record(account, detail)

    async def _cancel_all(self, account: Account, detail: dict[str, Any]) -> None:
        detail = {**detail, "action": "cancelallorders"}
        cancel = endpoint("cancelallorders")
        account.budget.spend(cancel.cost)
        try:
            raw = await account.gateway_client.send(cancel)
            detail["result"] = _status(raw, "cancelStatus")
        except ExchangeError as exc:
            detail["result"] = "failed"
            detail["error"] = str(exc)
        await self._record(account, detail)

    async def _record(self, account: Account, detail: dict[str, Any]) -> None:
        failed = detail["result"] == "failed" or str(detail["result"]).startswith("error")
        (log.error if failed else log.warning)("kill_follow_up", account=account.name, **detail)
        try:
            await self._journal.event("kill_follow_up", account.name, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind="kill_follow_up", error=str(exc))


def _named_orders(flight: Flight) -> list[Target] | None:
    """The orders a request would have placed or changed, by cliOrdId (sends) or id (edits); None when
    one of them has no name (then only a cancel of everything is sure to reach it)."""
    found: list[Target] = []
    for intent in flight.intents:
        if not isinstance(intent, OrderIntent):
            continue
        if intent.kind == "edit" and intent.order_id:
            found.append(("order_id", intent.order_id))
        elif intent.cli_ord_id:
            found.append(("cliOrdId", intent.cli_ord_id))
        else:
            return None
    return found or None


def _status(raw: RawAnswer, key: str) -> str:
    """What a cancel's answer says, in a word: its status, `error:<code>`, or `http_<status>`."""
    try:
        doc = json.loads(raw.body)
    except ValueError:
        return f"http_{raw.status}"
    if isinstance(doc, Mapping):
        status = doc.get(key)
        if isinstance(status, Mapping) and isinstance(status.get("status"), str):
            return str(status["status"])
        if isinstance(doc.get("error"), str):
            return f"error:{doc['error']}"
    return f"http_{raw.status}"
