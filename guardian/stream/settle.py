"""After a crash (or a timeout, or a lost connection), some forwarded orders' outcomes are unknown: the
journal has the intent and no answer. At start guardian asks the exchange how each ended, by the ids it
has (cliOrdId: openorders, orders/status, recent fills), and journals the answer (`intent_settled`) and
the request row's outcome (`settled:<result>`).

Results per order: `open` (resting now), `filled`, `cancelled`, `not_found` (the exchange knows no order
with that cliOrdId: never placed, or closed long enough ago that it no longer reports it, without a
recent fill), `unresolvable` (no cliOrdId to ask by: guardian cannot tell that order apart from others).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog

from guardian.errors import ExchangeError
from guardian.journal import Journal, JournalError
from guardian.kraken.client import KrakenClient
from guardian.kraken.endpoints import endpoint
from guardian.kraken.times import parse_iso
from guardian.ratelimit import CostBudget

log = structlog.get_logger("guardian.settle")

LOOKBACK_S: Final = 24 * 3600.0  # intents older than a day are history, not in flight
ENDPOINTS: Final = ("sendorder", "editorder", "batchorder")
STATUS_WORDS: Final = {
    "ENTERED_BOOK": "open",
    "TRIGGER_PLACED": "open",
    "FULLY_EXECUTED": "filled",
    "CANCELLED": "cancelled",
    "REJECTED": "rejected",
}


def _cli_ids(row: Mapping[str, Any]) -> list[str | None]:
    """One entry per order the request could have placed: its cliOrdId, or None."""
    params = row.get("params") or {}
    if row["endpoint"] == "batchorder":
        items = params.get("batchOrder") if isinstance(params, Mapping) else None
        return [
            i.get("cliOrdId") if isinstance(i.get("cliOrdId"), str) else None
            for i in (items or [])
            if isinstance(i, Mapping) and i.get("order") == "send"
        ]
    if row["endpoint"] == "editorder":
        return [None]  # an edit's effect cannot be told from the order alone
    value = params.get("cliOrdId") if isinstance(params, Mapping) else None
    return [value if isinstance(value, str) else None]


async def settle_unknown(
    account: str,
    client: KrakenClient,
    journal: Journal,
    budget: CostBudget,
    reserve: float,
    *,
    delay_s: float = 0.0,
    before: float | None = None,
) -> int:
    """Settle `account`'s unknown intents of the last day; the number settled. `delay_s` (the upstream
    timeout) first: a request sent just before the crash may still be on its way to being acted on, and
    asked about too early it would read `not_found`. Only intents received before `before` (this run's
    start) are settled: this run's own unknown outcomes are the retry path's to ask about."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    rows = [
        r
        for r in await journal.unknown_intents(time.time() - LOOKBACK_S, ENDPOINTS)
        if r["account"] == account and (before is None or parse_iso(r["time"]) < before)
    ]
    if not rows:
        return 0
    wanted = sorted({c for r in rows for c in _cli_ids(r) if c})
    cost = sum(endpoint(n).cost for n in ("openorders", "fills")) + endpoint("orders/status").cost
    if not budget.try_spend(cost, reserve=reserve):
        log.warning("unknown_intents_not_settled", account=account, count=len(rows), why="no rate budget")
        return 0
    try:
        open_orders = await client.open_orders()
        fills = await client.fills()
        statuses = await client.order_status(cli_ord_ids=wanted) if wanted else []
    except ExchangeError as exc:
        log.warning("unknown_intents_not_settled", account=account, count=len(rows), error=str(exc))
        return 0
    known = _known(open_orders, fills, statuses)
    settled = 0
    for row in rows:
        results = [_result(cli, known) for cli in _cli_ids(row)]
        word = _summary([r["result"] for r in results])
        detail = {"request_id": row["id"], "endpoint": row["endpoint"], "bot": row["bot"], "results": results}
        log.warning("intent_settled", account=account, request_id=row["id"], result=word, orders=results)
        try:
            await journal.event("intent_settled", account, detail)
            journal.finish(
                row["id"],
                outcome=f"settled:{word}",
                http_status=row["http_status"],
                answer={"settled": results},
                upstream_s=row["upstream_s"],
                total_s=row["total_s"],
            )
        except JournalError as exc:
            log.error("journal_write_failed", what="intent_settled", error=str(exc))
            continue
        settled += 1
    return settled


def _known(
    open_orders: Sequence[Mapping[str, Any]],
    fills: Sequence[Mapping[str, Any]],
    statuses: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[str, str | None]]:
    """cliOrdId -> (result, order id), best evidence last: a fill, then orders/status, then open now."""
    known: dict[str, tuple[str, str | None]] = {}
    for fill in fills:
        cli = fill.get("cliOrdId")
        if isinstance(cli, str):
            known[cli] = ("filled", fill.get("order_id") if isinstance(fill.get("order_id"), str) else None)
    for row in statuses:
        order = row.get("order") if isinstance(row, Mapping) else None
        if isinstance(order, Mapping) and isinstance(order.get("cliOrdId"), str):
            word = STATUS_WORDS.get(str(row.get("status")), str(row.get("status", "unknown")).lower())
            order_id = order.get("orderId")
            known[order["cliOrdId"]] = (word, order_id if isinstance(order_id, str) else None)
    for order in open_orders:
        cli = order.get("cliOrdId")
        if isinstance(cli, str):
            order_id = order.get("order_id")
            known[cli] = ("open", order_id if isinstance(order_id, str) else None)
    return known


def _result(cli: str | None, known: Mapping[str, tuple[str, str | None]]) -> dict[str, Any]:
    if cli is None:
        return {"cliOrdId": None, "result": "unresolvable", "order_id": None}
    result, order_id = known.get(cli, ("not_found", None))
    return {"cliOrdId": cli, "result": result, "order_id": order_id}


def _summary(results: Sequence[str]) -> str:
    distinct = sorted(set(results))
    return distinct[0] if len(distinct) == 1 else "mixed"
