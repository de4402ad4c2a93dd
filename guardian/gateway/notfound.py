"""Edits of orders that are not there, answered in Kraken's own shape (`guardian.gateway.intake` asks,
`guardian.gateway.forward` puts a batch's answer together).

Kraken answers an edit of an order it does not have (never placed, or already filled or cancelled) with
HTTP 200, `result: success` and `editStatus.status = orderForEditNotFound`; in a batch, that item's status
is `orderForEditNotFound` and the other items are carried out. Clients rely on that shape: ccxt raises
its `OrderNotFound` from it, python-kraken-sdk hands it to the caller. guardian cannot judge such an edit
(there is no order to merge it with), so it must not leave; an error envelope in its place would break
those clients. So guardian answers it itself, in Kraken's shape, when it knows the exchange would:

- `orders/status` (asked for every edit of an order not in the same batch) reports the order closed
  (`FULLY_EXECUTED`, `CANCELLED`, `REJECTED`): the exchange's own word; or
- `orders/status` does not report it at all, and guardian's own picture does not know it either: no open
  order the account's stream shows, and no order let out and not answered yet, has that order id or
  cliOrdId.

When the two disagree (`orders/status` does not know an order the stream shows open, or one guardian let
out moments ago whose answer is not in yet; or it reports the order with a status guardian does not know,
or open without what the limits need), guardian cannot tell what the edit would change: it is refused
`accountStateUnavailable` (503: retry shortly) and nothing is sent.

- **editorder**: `{"result": "success", "editStatus": {"status": "orderForEditNotFound", "orderId",
  "receivedTime", "orderEvents": []}, "serverTime"}`, the simulator's shape and the exchange's
  (`orderId` is null for an edit by cliOrdId, which is named in `cliOrdId`).
- **batchorder**: each such edit item gets `{"status": "orderForEditNotFound", "order_id",
  "orderEvents": []}` at its place in `batchStatus`. The other items are judged as ever, by their place
  in the batch as the bot sent it, and forwarded without it: the `json` field is written again with the
  rest, each number with the digits it was sent with (`wire.dumps_exact`), the form in the body. guardian
  puts its items into the exchange's answer at their places (an error envelope or an unreadable answer
  goes back as it came). If no item is left, the whole answer is guardian's.
- Each local answer is journaled as a decision: verdict `answered`, reason `orderForEditNotFound`, with
  the request (or the batch items) it answered; a batch's forwarded row holds the items that left.
- A cancel of an unknown order always passes (cancels always do): the exchange answers it
  `cancelStatus.status = notFound`, and guardian relays that.

Only the exchange's own status names are used (`guardian.gateway.halt.CLOSED_STATUSES` counts
`orderForEditNotFound` among those that leave nothing open).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

import structlog
from aiohttp import web

from guardian.account import Account
from guardian.gateway.orders import OrderIntent
from guardian.gateway.passage import Decision, Passage, Trail
from guardian.gateway.refusal import Refusal
from guardian.kraken.client import RawAnswer
from guardian.kraken.times import to_iso
from guardian.kraken.wire import BATCH_FIELD, dumps_exact, loads_strict, parse_batch

if TYPE_CHECKING:
    from guardian.gateway.app import Gateway

log = structlog.get_logger("guardian.gateway")

NOT_FOUND: Final = "orderForEditNotFound"
OPEN_STATUSES: Final = frozenset({"ENTERED_BOOK", "TRIGGER_PLACED"})  # orders/status: still open
CLOSED_STATUSES: Final = frozenset({"FULLY_EXECUTED", "CANCELLED", "REJECTED"})  # gone: nothing to edit


@dataclass
class Lookup:
    """What `orders/status` said of the orders some edits name, by order id and by cliOrdId."""

    open: dict[str, OrderIntent] = field(default_factory=dict)  # open, as the limits judge it
    closed: dict[str, str] = field(default_factory=dict)  # gone: its status
    unclear: dict[str, str] = field(default_factory=dict)  # reported, but not judgeable: why


def unknown(account: Account, lookup: Lookup, edit: OrderIntent) -> bool:
    """Whether `edit` names an order the exchange does not have (answer it locally); False when the lookup
    found it open (judge it). Refusal(accountStateUnavailable) when guardian cannot tell."""
    key = edit.order_id or edit.cli_ord_id or ""
    if key in lookup.open:
        return False
    if key in lookup.closed:
        return True
    why = lookup.unclear.get(key) or _known_to_guardian(
        account, key, "order_id" if edit.order_id else "cli_ord_id"
    )
    if why is None:
        return True
    raise Refusal(
        "accountStateUnavailable",
        f"guardian cannot tell what the edit of {_named(edit)} would change: {why}; nothing is sent, retry "
        "in a moment",
    )


def _known_to_guardian(account: Account, key: str, by: str) -> str | None:
    """Why guardian's own picture says the order may be there: the stream shows it open, or an order with
    that id was let out and its answer is not in yet. None: guardian knows nothing of it either. `by`
    ("order_id" or "cli_ord_id"): what the edit names it by (a cliOrdId "0" is not the order id "0")."""
    for entry in account.exposure.ledger.named(key, by=by):
        if entry.order is not None:
            return "orders/status does not know it, but the account's stream still shows it open"
        if any(not held.answered for held in entry.holds or ()):
            return (
                "orders/status does not know it, but guardian let it out moments ago and the exchange has "
                "not answered yet"
            )
    return None


def _named(edit: OrderIntent) -> str:
    return f"orderId {edit.order_id!r}" if edit.order_id else f"cliOrdId {edit.cli_ord_id!r}"


# ---- editorder -------------------------------------------------------------------------------------------


async def answer_edit(gw: Gateway, p: Passage, edit: OrderIntent) -> web.Response:
    """An editorder of an order the exchange does not have, answered as the exchange would answer it."""
    status: dict[str, Any] = {
        "status": NOT_FOUND,
        "orderId": edit.order_id,
        "receivedTime": to_iso(p.trail.received_at),
        "orderEvents": [],
    }
    if edit.cli_ord_id is not None:
        status["cliOrdId"] = edit.cli_ord_id
    p.trail.outcome = "answered"
    await _journaled(gw, p.trail, p.trail.params, [edit])
    return web.json_response({"result": "success", "editStatus": status, "serverTime": to_iso(time.time())})


# ---- batchorder ------------------------------------------------------------------------------------------


def answer_items(p: Passage, lookup: Lookup) -> None:
    """Mark the batch's edit items of orders the exchange does not have (`Decision.answered`), and make the
    batch leave without them. An edit of an earlier send item, or of an order `orders/status` found
    open, is judged as ever. Refusal (naming the item) when guardian cannot tell."""
    decision = p.decision
    sends = {i.cli_ord_id for i in decision.intents if isinstance(i, OrderIntent) and i.kind == "send"}
    for index, intent in enumerate(decision.intents):
        if not isinstance(intent, OrderIntent) or intent.kind != "edit":
            continue
        key = intent.order_id or intent.cli_ord_id or ""
        if key in decision.originals or key in sends:
            continue  # an open order, or one of the batch's own sends (by order_tag or cliOrdId)
        try:
            gone = unknown(p.account, lookup, intent)
        except Refusal as refusal:
            raise refusal.for_item(index, None) from None
        if gone:
            decision.answered[index] = item_status(intent)
    if decision.answered and len(decision.answered) < decision.items:
        p.query, p.body = "", _without(p.fields, decision.answered)


def item_status(edit: OrderIntent) -> dict[str, Any]:
    """A batch edit item's status when its order is not there, as the exchange shapes it."""
    status: dict[str, Any] = {"status": NOT_FOUND}
    if edit.order_id is not None:
        status["order_id"] = edit.order_id
    if edit.cli_ord_id is not None:
        status["cliOrdId"] = edit.cli_ord_id
    status["orderEvents"] = []
    return status


async def answer_batch(gw: Gateway, p: Passage) -> web.Response:
    """A batch every item of which guardian answers itself: nothing leaves."""
    decision = p.decision
    statuses = [decision.answered[index] for index in range(decision.items)]
    p.trail.outcome = "answered"
    await _journaled(gw, p.trail, p.trail.params, _edits(decision))
    return web.json_response(
        {"result": "success", "batchStatus": statuses, "serverTime": to_iso(time.time())}
    )


def forwarded_params(params: Mapping[str, Any], answered: Mapping[int, Any]) -> dict[str, Any]:
    """A batch's parameters as they left: without the items guardian answered itself."""
    items = params.get("batchOrder")
    if not answered or not isinstance(items, list):
        return dict(params)
    return {**params, "batchOrder": [item for i, item in enumerate(items) if i not in answered]}


async def spliced(gw: Gateway, answer: RawAnswer, decision: Decision, trail: Trail) -> RawAnswer:
    """The exchange's answer to what left, with guardian's own items put in at their places; journaled.
    An answer that is not a success with a `batchStatus` list goes back as it came (nothing to put in)."""
    try:
        doc = loads_strict(answer.body, exact_numbers=True)
    except ValueError:
        return answer
    if (
        answer.status >= 400
        or not isinstance(doc, dict)
        or doc.get("result") != "success"
        or not isinstance(doc.get("batchStatus"), list)
    ):
        return answer
    theirs: list[Any] = doc["batchStatus"]
    statuses: list[Any] = []
    taken = 0
    for index in range(decision.items):
        if index in decision.answered:
            statuses.append(decision.answered[index])
        elif taken < len(theirs):
            statuses.append(theirs[taken])
            taken += 1
    statuses += theirs[taken:]  # (an exchange that answered more rows than it was sent: kept, at the end)
    doc["batchStatus"] = statuses
    items = trail.params.get("batchOrder")
    local = [items[i] for i in sorted(decision.answered)] if isinstance(items, list) else []
    await _journaled(gw, trail, {**trail.params, "batchOrder": local}, _edits(decision))
    return dataclasses.replace(answer, body=dumps_exact(doc).encode(), content_type="application/json")


def _without(fields: Mapping[str, str], answered: Mapping[int, Any]) -> str:
    """The batch's form as it leaves: the `json` document without the answered items, every other field
    as sent, URL-encoded in the body."""
    items, doc = parse_batch(dict(fields))  # read the same way a moment ago: it reads
    doc = {**doc, "batchOrder": [item for i, item in enumerate(items) if i not in answered]}
    return urlencode([(k, dumps_exact(doc) if k == BATCH_FIELD else v) for k, v in fields.items()])


def _edits(decision: Decision) -> list[OrderIntent]:
    return [
        i for n, i in enumerate(decision.intents) if n in decision.answered and isinstance(i, OrderIntent)
    ]


async def _journaled(gw: Gateway, trail: Trail, params: Mapping[str, Any], edits: list[OrderIntent]) -> None:
    """Journaled as a decision, like every local answer; logged once."""
    local = dataclasses.replace(trail, params=dict(params))
    await gw.journal_local(local, "answered", NOT_FOUND, 200)
    log.info(
        "edit_of_unknown_order_answered",
        account=trail.account,
        bot=trail.bot,
        endpoint=trail.endpoint,
        orders=[_named(e) for e in edits],
    )
