"""One request's passage through the gateway (`guardian.gateway.app`): what each stage found out about
it (`Passage`), what the guard decided (`Decision`), what leaves for the exchange (`Outbound`), what the
journal, the logs and the metrics read of it (`Trail`), and the answers that go back."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from guardian.account import Account, Mode
from guardian.config import GuardConfig
from guardian.gateway import exposure
from guardian.gateway.auth import Caller
from guardian.gateway.halt import CLOSED_STATUSES
from guardian.gateway.orders import CancelAllIntent, CancelIntent, OrderIntent
from guardian.gateway.refusal import Refusal
from guardian.kraken import endpoints as ep
from guardian.kraken.client import RawAnswer
from guardian.kraken.times import to_iso

MAX_BODY: Final = 64 * 1024
REPLAYED_HEADER: Final = "X-Guardian-Replayed"
ORDER_ENDPOINTS: Final = frozenset({"sendorder", "editorder", "cancelorder", "cancelallorders", "batchorder"})
ANSWER_KEPT: Final = 64 * 1024  # the journal keeps an exchange answer up to this size (see read_answer)

GuardedIntent = OrderIntent | CancelIntent | CancelAllIntent


@dataclass(frozen=True, slots=True)
class Outbound:
    """One request as it will leave for the exchange: the exact bytes the bot sent, its method and path."""

    account: Account
    endpoint: ep.Endpoint
    query: str
    body: str
    method: str
    path: str | None = None  # the real path of a templated endpoint


@dataclass
class Decision:
    """What the guard made of a request that may go out."""

    intents: list[GuardedIntent] = field(default_factory=list)
    items: int = 0  # batch items, for the cost
    new_risk: bool = False  # sends or edits: the switch gate applied
    mode: Mode | None = None  # the account's mode the guard judged by
    # The cliOrdIds of a sendorder or of a batch's send items (at `key_items` in the batch), and what the
    # request says, for the retried-order memory (guardian.gateway.dedupe).
    keys: tuple[str, ...] = ()
    key_items: tuple[int, ...] = ()
    content: Hashable = None
    # A batch's orders as they will be: edits merged with the orders they change, by order id or tag.
    originals: Mapping[str, OrderIntent] = field(default_factory=dict)
    hold: exposure.Hold | None = None  # what the exposure guard holds for this request until it settles
    # The orders the exposure guard judges, kept when the judgement waits: a retry of an attempt in flight
    # or answered adds no risk (it gets that attempt's answer), and is judged only if it is sent after all.
    deferred: Sequence[tuple[int, OrderIntent, bool]] | None = None
    bot: str | None = None  # the bot that sent it (its own mode applies too)
    # A batch's edit items of orders that are not there, which guardian answers itself (never forwarded):
    # index -> the item's status as Kraken shapes it (guardian.gateway.notfound).
    answered: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Trail:
    """What one request did, for the journal, the logs and the metrics."""

    received_at: float
    endpoint: str = "unknown"
    account: str = ""
    bot: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    outcome: str = "unknown"
    reason: str | None = None
    message: str | None = None  # a refusal's message (the status page shows the last ones)
    upstream_s: float | None = None
    answer: dict[str, Any] | None = None  # the exchange's answer, parsed, for the journal
    body: str = field(default="", repr=False)  # the request's body as the bot sent it
    raw: RawAnswer | None = None  # the exchange's answer until read_answer() has read it
    stages: list[tuple[str, float]] = field(default_factory=list)  # each stage's wall time, when measured

    def read_answer(self) -> None:
        """The outcome and the journal's copy of the exchange's answer, from one parse of its body, once."""
        if self.raw is not None:
            self.outcome, self.answer = read_answer(self.raw, keep_all=self.endpoint in ORDER_ENDPOINTS)
            self.raw = None


@dataclass(eq=False)
class Passage:
    """One request on its way: each stage reads what the earlier ones found and adds its own. A stage that
    answers the request itself sets `answer`, and the way ends there."""

    request: web.Request
    trail: Trail
    route: ep.Endpoint | None = None  # the endpoint (receive)
    path_params: Mapping[str, str] = field(default_factory=dict)
    # The query and body as they will leave: the bot's own bytes, but for a batch some of whose items
    # guardian answers itself (guardian.gateway.notfound), which leaves without them.
    query: str = ""
    body: str = ""
    caller: Caller | None = None  # the bot, by its local key (authenticate)
    on: Account | None = None  # its account
    # The account's guard as it was when the request was authenticated: a reload that lands while the
    # request waits (for the contracts, a settling order) leaves it judged by the rules it started with.
    guard: GuardConfig | None = None
    fields: dict[str, str] = field(default_factory=dict)  # the request's parameters (parse)
    decision: Decision = field(default_factory=Decision)
    answer: web.StreamResponse | None = None

    @property
    def endpoint(self) -> ep.Endpoint:
        assert self.route is not None, "the passage has not been received"
        return self.route

    @property
    def account(self) -> Account:
        assert self.on is not None, "the passage has not been authenticated"
        return self.on

    @property
    def rules(self) -> GuardConfig:
        assert self.guard is not None, "the passage has not been authenticated"
        return self.guard

    @property
    def bot(self) -> Caller:
        assert self.caller is not None, "the passage has not been authenticated"
        return self.caller

    def outbound(self) -> Outbound:
        return Outbound(
            self.account, self.endpoint, self.query, self.body, self.request.method, self.request.path
        )


# ---- answers ---------------------------------------------------------------------------------------------


def response(answer: RawAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type or None)


def refused(refusal: Refusal) -> web.Response:
    return web.json_response(refusal.envelope(to_iso(time.time())), status=refusal.http_status)


def local_error(status: int, code: str, message: str) -> RawAnswer:
    body = {"result": "error", "serverTime": to_iso(time.time()), "error": code, "message": message}
    return RawAnswer(status, json.dumps(body).encode(), "application/json")


def read_answer(answer: RawAnswer, *, keep_all: bool = False) -> tuple[str, dict[str, Any]]:
    """The outcome (`success`, `error:<code>` or `http_<status>`, for metrics and the journal) and the
    answer as the journal keeps it, from one parse of the exchange's body.

    A read's answer larger than ANSWER_KEPT (thousands of open orders or fills) is not parsed or kept:
    reading and storing it would hold the event loop for tens of milliseconds on every such read. The
    exchange's errors are a few hundred bytes, so a large answer below HTTP 400 is a success; the journal
    says how large it was. An order request's answer (`keep_all`) is always read: it says what was placed."""
    if len(answer.body) > ANSWER_KEPT and not keep_all:
        outcome = "success" if answer.status < 400 else f"http_{answer.status}"
        return outcome, {"http_status": answer.status, "omitted": f"{len(answer.body)} bytes, not kept"}
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return f"http_{answer.status}", {"http_status": answer.status, "body": "(not JSON)"}
    if not isinstance(doc, dict):
        return f"http_{answer.status}", {"answer": doc}
    if doc.get("result") == "success" and answer.status < 400:
        return "success", doc
    if isinstance(doc.get("error"), str):
        return f"error:{doc['error']}", doc
    return f"http_{answer.status}", doc


_STATUS_KEYS = {"sendorder": "sendStatus", "editorder": "editStatus", "batchorder": "batchStatus"}


def placed(trail: Trail, hold: exposure.Hold) -> list[tuple[str | None, bool] | None] | None:
    """For each held item: the order id the answer names and whether the item left anything at the
    exchange (a rejection leaves nothing); None for an item the answer does not say (unknown). The whole
    result is None when the outcome is unknown."""
    if trail.outcome in ("timeout", "unavailable", "unknown") or trail.answer is None:
        return None
    if trail.outcome.startswith("error:"):
        return [(None, False)] * len(hold.items)  # an error envelope: nothing placed
    if trail.outcome != "success":
        return None
    statuses = trail.answer.get(_STATUS_KEYS.get(trail.endpoint, ""))
    if isinstance(statuses, Mapping):
        statuses = [statuses]
    if not isinstance(statuses, list):
        return None
    rows = [s for s in statuses if isinstance(s, Mapping)]
    found: list[tuple[str | None, bool] | None] = []
    for held in hold.items:
        if trail.endpoint != "batchorder":
            row = rows[0] if rows else None
        elif held.tag is not None:
            row = next((r for r in rows if str(r.get("order_tag")) == held.tag), None)
        else:  # an edit item: its status names the order it edited
            row = next((r for r in rows if held.order_id and _order_id(r) == held.order_id), None)
        if row is None:
            found.append(None)
            continue
        word = row.get("status")
        found.append((_order_id(row), word == "filled" or word not in CLOSED_STATUSES))
    return found


def _order_id(row: Mapping[str, Any]) -> str | None:
    found = row.get("order_id") or row.get("orderId")
    return found if isinstance(found, str) else None
