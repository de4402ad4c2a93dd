"""The Kraken-compatible local API: every Kraken Futures REST path (`/derivatives/api/v3|v4/...`,
`/api/history/...`, `/api/charts/...`) that the endpoint table lists, as at the exchange.

A bot changes only its base URL and key. For each request, in this order (the issue's contract):
authentication and permission (local key), validation, the account's mode, the switch gate, the
limits, the rate budget. Whatever fails answers in Kraken's error envelope with a 4xx status and is
never sent. What passes is journaled (intent committed first), re-signed with the account's exchange
key over the same bytes, forwarded, and the exchange's answer goes back unchanged.

- Public endpoints pass through without authentication, within the public budget and through a short
  cache of identical reads (guardian.gateway.public).
- Settings, the assignment program and RFQ offers are judged by guardian.gateway.settings.
- Endpoints that move funds are never forwarded; a path the table does not list is refused `notFound`
  naming the nearest one it does, and never forwarded.
- A bot's `cancelallordersafter` is answered from guardian's own switch (`timeout > 0`) or refused
  (`timeout = 0`): guardian owns the switch.
- Cancels always pass the mode and the gate: taking risk away is never refused for safety reasons.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from aiohttp import web

from guardian.account import RATE_WINDOW_MARGIN_S, Account, Mode
from guardian.config import ServerConfig
from guardian.errors import ExchangeError, ExchangeRejected, ExchangeTimeout
from guardian.gateway import exposure, orders, rules, settings
from guardian.gateway.auth import Caller, LocalKeys
from guardian.gateway.dedupe import Outcome
from guardian.gateway.halt import CLOSED_STATUSES
from guardian.gateway.http import read_capped
from guardian.gateway.orders import CancelAllIntent, CancelIntent, OrderIntent
from guardian.gateway.public import PublicGate
from guardian.gateway.refusal import Refusal
from guardian.journal import Intent, Journal, JournalError
from guardian.kraken import endpoints as ep
from guardian.kraken.client import RawAnswer, classify
from guardian.kraken.times import to_iso
from guardian.kraken.wire import LIST_FIELDS, WireError, parse_batch, request_fields
from guardian.ratelimit import CostBudget
from guardian.stream.account import PLACING, placed_ids
from guardian.switch import SwitchState

log = structlog.get_logger("guardian.gateway")

MAX_BODY = 64 * 1024
REPLAYED_HEADER = "X-Guardian-Replayed"
ORDER_ENDPOINTS = frozenset({"sendorder", "editorder", "cancelorder", "cancelallorders", "batchorder"})
# The account-history pool, modelled like the derivatives budget: 100 tokens, refilled 100 per 10 minutes.
HISTORY_CAPACITY = 100.0
HISTORY_WINDOW_S = 600.0
ANSWER_KEPT = 64 * 1024  # the journal keeps an exchange answer up to this size (see _read_answer)
SETTLE_WAIT_S = 2.0  # the longest an order waits for the exposure figures to settle before it is refused

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
    hold: exposure.Hold | None = None  # what the exposure guard holds for this request until it settles
    # The orders the exposure guard judges, kept when the judgement waits: a retry of an attempt in flight
    # or answered adds no risk (it gets that attempt's answer), and is judged only if it is sent after all.
    deferred: Sequence[tuple[int, OrderIntent, bool]] | None = None
    bot: str | None = None  # the bot that sent it (its own mode applies too)


class Gateway:
    """The local API's order path for every account. `routes()` go on the daemon's server."""

    def __init__(
        self,
        accounts: Sequence[Account],
        keys: LocalKeys,
        journal: Journal,
        *,
        observe: Any = None,
        public_rate_limit: float | None = None,
    ) -> None:
        self.accounts = {account.name: account for account in accounts}
        self._public = accounts[0]
        self._bot_budgets = {
            client.api_key: CostBudget(client.rate_budget, account.config.guard.rate_window_s)
            for account in accounts
            for client in account.config.clients
            if client.rate_budget is not None
        }
        clients = [client for account in accounts for client in account.config.clients]
        total = public_rate_limit if public_rate_limit is not None else ServerConfig().public_rate_limit
        self.public = PublicGate(total, clients)
        # The history pool's local model, per account (the derivatives one is `account.budget`).
        self._history = {
            account.name: CostBudget(HISTORY_CAPACITY, HISTORY_WINDOW_S + RATE_WINDOW_MARGIN_S)
            for account in accounts
        }
        self.keys = keys
        self.journal = journal
        self._observe = (
            observe  # metrics sink: observe(account, endpoint, outcome, reason, total_s, upstream_s)
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", prefix + "{tail:.*}", self.handle) for prefix in ep.PREFIXES]

    # ---- the request ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        trail = Trail(received_at=time.time())
        try:
            response = await self._handle(request, trail)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Refusal as refusal:
            trail.outcome, trail.raw = "refused", None
            trail.reason = refusal.code
            response = self._refused(refusal)
            await self._journal_local(trail, "refused", refusal.code, refusal.http_status)
            log.info(
                "request_refused",
                account=trail.account or None,
                bot=trail.bot,
                endpoint=trail.endpoint,
                code=refusal.code,
                reason=refusal.message,
            )
        except Exception:  # a bug: say so in Kraken's shape rather than aiohttp's text page
            log.exception(
                "gateway_error", account=trail.account or None, bot=trail.bot, endpoint=trail.endpoint
            )
            trail.outcome, trail.raw = "error", None
            body = {"result": "error", "serverTime": to_iso(time.time()), "error": "Server Error"}
            response = web.json_response(
                {**body, "message": "guardian failed on this request; see its log"}, status=500
            )
        if self._observe is not None:
            asyncio.get_running_loop().call_soon(self._observed, trail, time.perf_counter() - started)
        return response

    def _observed(self, trail: Trail, total_s: float) -> None:
        trail.read_answer()
        self._observe(trail, total_s)

    async def _handle(self, request: web.Request, trail: Trail) -> web.StreamResponse:
        routed = ep.match(request.path, request.method)
        if routed is None:
            raise Refusal(
                "notFound",
                f"{request.path} is not a Kraken Futures endpoint guardian knows, so it is not forwarded; "
                f"the nearest one it knows is {ep.nearest(request.path)}",
            )
        endpoint, path_params = routed
        trail.endpoint = endpoint.name
        if request.method not in endpoint.methods:
            taken = " or ".join(sorted(set(ep.methods_at(request.path))))
            raise Refusal("notFound", f"{request.path} takes {taken}, not {request.method}")
        raw = await read_capped(request, MAX_BODY)
        if raw is None:
            raise Refusal("requestTooLarge", f"the request body is over {MAX_BODY // 1024} KiB")
        try:
            body = raw.decode()
        except UnicodeDecodeError:
            raise Refusal("invalidArgument", "the request body is not UTF-8") from None
        query = request.rel_url.raw_query_string
        if endpoint.permission is ep.Permission.PUBLIC:
            trail.outcome = "public"
            trail.bot = self.public.bot_for(request.headers)
            out = Outbound(self._public, endpoint, query, body, request.method, request.path)
            answer = await self.public.answer(
                endpoint, request.path, query, request.headers, lambda: self._forward(out, trail)
            )
            return _response(answer)

        caller = self.keys.authenticate(request.headers, endpoint, query, body, request.path)
        trail.account, trail.bot = caller.account, caller.bot
        account = self.accounts[caller.account]
        if endpoint.permission is ep.Permission.FUNDS or endpoint.risk is ep.Risk.FUNDS:
            raise Refusal("endpointNotAllowed", f"{endpoint.name} moves funds: guardian never forwards it")
        is_json = body.lstrip().startswith("{") and endpoint.name not in ORDER_ENDPOINTS
        try:
            fields = request_fields(query, "" if is_json else body, LIST_FIELDS)
        except WireError as exc:
            raise Refusal(_wire_code(exc), str(exc)) from None
        if is_json:
            fields = settings.fields_with_json(fields, body)
        trail.params = dict(fields)
        trail.body = body
        if endpoint.name == "cancelallordersafter":
            return await self._switch_answer(account, fields, trail)

        decision = await self._guard(account, caller, endpoint, fields, trail)
        if decision.hold is None and decision.deferred is None:
            return await self._send(account, caller, endpoint, fields, path_params, request, decision, trail)
        try:
            response = await self._send(
                account, caller, endpoint, fields, path_params, request, decision, trail
            )
        except Refusal:
            if decision.hold is not None:
                account.exposure.release(decision.hold)
            raise
        except BaseException:
            if decision.hold is not None:
                self._settle(account, decision.hold, None)
            raise
        if decision.hold is not None:  # a replayed retry holds nothing: its first attempt's hold counts
            self._settle(account, decision.hold, trail)
        return response

    async def _send(
        self,
        account: Account,
        caller: Caller,
        endpoint: ep.Endpoint,
        fields: dict[str, str],
        path_params: Mapping[str, str],
        request: web.Request,
        decision: Decision,
        trail: Trail,
    ) -> web.StreamResponse:
        """Budget, journal, forward: what follows the guard's decision."""
        query = request.rel_url.raw_query_string
        body = trail.body
        if endpoint.name not in ORDER_ENDPOINTS and endpoint.risk is not ep.Risk.NONE:
            decision.new_risk = await settings.judge(
                account,
                endpoint,
                fields,
                path_params,
                lambda uid: self._rfq(account, uid),
                mode=account.mode_for(caller.bot),
            )
            decision.mode = account.mode_for(caller.bot)
        out = Outbound(account, endpoint, query, body, request.method, request.path)
        cost = endpoint.cost_for(fields, decision.items)
        if endpoint.pool is ep.Pool.HISTORY:
            self._spend_history(account, cost)
            return _response(await self._forward_journaled(out, decision, trail))
        if decision.keys and account.config.guard.dedupe_window_s > 0:
            return await self._send_once(out, decision, trail, caller, cost)
        self._spend(account, caller, cost, decision)
        return _response(await self._forward_journaled(out, decision, trail))

    def _spend(self, account: Account, caller: Caller, cost: float, decision: Decision) -> None:
        """The local rate budget: the bot's own share (if it has one), then the account's, which always
        keeps the switch's share and, from everything but cancels, room for one more cancel-all."""
        mine = self._bot_budgets.get(caller.client.api_key)
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

    def _spend_history(self, account: Account, cost: float) -> None:
        pool = self._history[account.name]
        if not pool.try_spend(cost):
            raise Refusal(
                "apiLimitExceeded",
                f"the account-history pool is spent ({pool.capacity:g} tokens per {HISTORY_WINDOW_S / 60:g} "
                f"minutes, as at the exchange); retry in {pool.seconds_until(cost):.0f} s",
            )

    async def _rfq(self, account: Account, rfq_uid: str) -> dict[str, Any]:
        """An open RFQ as the exchange describes it (public `rfqs/{rfqUid}`), for judging an offer on it."""
        row = ep.endpoint("rfqs/{rfqUid}")
        try:
            raw = await account.gateway_client.send(row, path=ep.V3 + "rfqs/" + rfq_uid)
            doc = classify(row.name, raw.status, raw.body)
        except ExchangeRejected as exc:
            raise Refusal(
                "invalidArgument", f"RFQ {rfq_uid} is not open at the exchange ({exc.code})"
            ) from None
        except ExchangeError as exc:
            raise Refusal(
                "upstreamUnavailable", f"the RFQ an offer is for could not be read at the exchange: {exc}"
            ) from None
        found = doc.get("rfq")
        if not isinstance(found, dict):
            raise Refusal("invalidArgument", f"RFQ {rfq_uid} is not open at the exchange")
        return found

    # ---- the guard --------------------------------------------------------------------------------
    async def _guard(
        self, account: Account, caller: Caller, endpoint: ep.Endpoint, fields: dict[str, str], trail: Trail
    ) -> Decision:
        name = endpoint.name
        decision = Decision(bot=caller.bot)
        if name not in ORDER_ENDPOINTS:
            return decision  # reads: authentication and permission were the whole check
        if name == "sendorder":
            send = orders.parse_send(fields)
            decision.intents = [send]
            if send.cli_ord_id is not None:
                decision.keys, decision.key_items, decision.content = (send.cli_ord_id,), (0,), send
        elif name == "editorder":
            decision.intents = [orders.parse_edit(fields)]
        elif name == "cancelorder":
            decision.intents = [orders.parse_cancel(fields)]
        elif name == "cancelallorders":
            decision.intents = [orders.parse_cancel_all(fields)]
        else:
            try:
                items, doc = parse_batch(fields)
            except WireError as exc:
                raise Refusal(_wire_code(exc), str(exc)) from None
            before = orders.parse_batch_envelope(fields, doc)
            trail.params = {"batchOrder": items, **{k: v for k, v in fields.items() if k != "json"}}
            decision.intents = list(orders.parse_batch(items))
            decision.items = len(items)
            sends = [
                (index, i.cli_ord_id)
                for index, i in enumerate(decision.intents)
                if isinstance(i, OrderIntent) and i.kind == "send" and i.cli_ord_id is not None
            ]
            if sends:
                decision.key_items = tuple(index for index, _ in sends)
                decision.keys = tuple(key for _, key in sends)
                decision.content = (tuple(decision.intents), before)
        decision.new_risk = any(isinstance(i, OrderIntent) for i in decision.intents)
        if any(isinstance(i, OrderIntent) and i.kind == "edit" for i in decision.intents):
            # Edits are judged as they will be once merged with the open order, which takes an exchange
            # call. What needs no merge to be refused is refused first, without that call: a halted
            # account, and the switch gate (checked again after the lookup, which may take a while).
            self._halted(account, decision)
            self._gate(account, decision)
        if name == "editorder":
            [edit] = decision.intents
            assert isinstance(edit, OrderIntent)
            original = await self._original(account, edit)
            decision.intents = [rules.merge_edit(original, edit) if original is not None else edit]
        if name == "batchorder":
            originals = await self._batch_originals(account, decision.intents)
            await self._settled(account)  # the last wait: from here to the hold, one synchronous step
            marks = {s: account.marks.mark(s) for s in _symbols(decision.intents, originals)}
            self._gate(account, decision)
            decision.mode = account.mode_for(caller.bot)
            self._suspended(account, decision)
            try:
                rules.check_batch(decision.intents, decision.mode, account.config.guard, marks, originals)
            except Refusal as refusal:
                raise _named(account, caller.bot, refusal) from None
            self._judge(account, caller, decision, _merged_batch(decision.intents, originals))
            return decision
        [intent] = decision.intents
        if isinstance(intent, OrderIntent):
            await self._settled(account)  # the last wait: from here to the hold, one synchronous step
        decision.mode = account.mode_for(caller.bot)
        _check_mode(account, caller.bot, intent)
        self._gate(account, decision)
        self._suspended(account, decision)
        if isinstance(intent, OrderIntent):
            if not intent.merged:
                raise Refusal(
                    "invalidArgument",
                    "the order to edit is not open at the exchange (orders/status does not know it)",
                )
            symbol = intent.symbol or ""
            rules.check_limits(
                intent,
                account.config.guard,
                account.marks.mark(symbol),
                reducible=_reducible(account, intent),
            )
            self._judge(account, caller, decision, [(0, intent, intent.kind == "edit")])
        return decision

    def _judge(
        self,
        account: Account,
        caller: Caller,
        decision: Decision,
        judged: Sequence[tuple[int, OrderIntent, bool]],
    ) -> None:
        """The exposure limits now, or, for a retry of an attempt in flight or answered, only if it is
        sent after all (`_send_once`): the attempt's own hold already counts that order, and counting it
        twice would refuse the retry (or another bot's order) for an order that exists once."""
        if decision.keys and account.config.guard.dedupe_window_s > 0:
            earlier = account.recent.get(decision.keys[0])
            if (
                earlier is not None
                and earlier.outcome is not Outcome.UNKNOWN
                and earlier.is_retry(caller.bot, decision.content, decision.keys)
            ):
                decision.deferred = judged
                return
        decision.hold = self._hold(account, caller, decision, judged)

    @staticmethod
    def _hold(
        account: Account,
        caller: Caller,
        decision: Decision,
        judged: Sequence[tuple[int, OrderIntent, bool]],
    ) -> exposure.Hold | None:
        """The exposure limits, checked and held in one step (nothing is awaited here): None when the
        request has no order to hold. The running figures must be settled (`_settled`) just before."""
        if not judged:
            return None
        stream = account.stream
        trial = account.exposure.trial(
            caller.bot,
            reconciles=stream.reconciles if stream is not None else 0,
            daily_pnl=stream.state.daily_pnl() if stream is not None else Decimal(0),
            window_s=account.config.guard.duplicate_window_s,
        )
        candidates = []
        for index, intent, replaces in judged:
            found = exposure.candidate(intent, caller.bot)
            if not replaces:
                found = dataclasses.replace(found, replaces=None)
            candidates.append((index, found))
        tags = [i.order_tag if isinstance(i, OrderIntent) else None for i in decision.intents]
        return account.exposure.judge(
            trial,
            candidates,
            exposure.Limits(account.config.guard, caller.client),
            fresh=stream is not None and stream.fresh(),
            item=lambda index, refusal: refusal.for_item(index, tags[index]) if decision.items else refusal,
        )

    @staticmethod
    async def _settled(account: Account) -> None:
        """Until the running figures are not between two pictures (a large snapshot or reconciliation
        being applied in slices: tens of milliseconds at most); at once otherwise."""
        ledger = account.exposure.ledger
        if ledger.settling:
            try:
                async with asyncio.timeout(SETTLE_WAIT_S):
                    await ledger.settled()
            except TimeoutError:
                raise Refusal(
                    "accountStateUnavailable",
                    "guardian is still taking in a large change of the account's picture (a snapshot or a "
                    f"reconciliation) after {SETTLE_WAIT_S:g} s: no new order until it has; cancels pass",
                ) from None

    @staticmethod
    def _settle(account: Account, hold: exposure.Hold, trail: Trail | None) -> None:
        """The answer is in: release what it shows was not placed, bind the rest to its order ids."""
        stream = account.stream
        reconciles = stream.reconciles if stream is not None else 0
        if trail is not None:
            trail.read_answer()  # what was placed: the hold needs it now, not after the bot has its answer
        if trail is not None and trail.outcome == "replayed":  # the first attempt holds the orders
            account.exposure.release(hold)
            return
        placed = None if trail is None else _placed(trail, hold)
        account.exposure.answered(hold, placed, reconciles)

    @staticmethod
    def _suspended(account: Account, decision: Decision) -> None:
        """No new order or edit to a market the exchange's ticker reports suspended (reduce-only ones
        included: the exchange would refuse them too)."""
        for index, intent in enumerate(decision.intents):
            if isinstance(intent, OrderIntent) and intent.symbol and account.marks.suspended(intent.symbol):
                refusal = Refusal(
                    "marketSuspended",
                    f"{intent.symbol} is suspended (the exchange's ticker says so): no new orders until it "
                    "trades again; cancels still pass",
                )
                raise (refusal.for_item(index, intent.order_tag) if decision.items else refusal)

    @staticmethod
    def _halted(account: Account, decision: Decision) -> None:
        if account.mode_for(decision.bot) is not Mode.HALTED:
            return
        for index, intent in enumerate(decision.intents):
            if isinstance(intent, OrderIntent):
                try:
                    _check_mode(account, decision.bot, intent)
                except Refusal as refusal:
                    raise (refusal.for_item(index, intent.order_tag) if decision.items else refusal) from None

    @staticmethod
    def _still_allowed(account: Account, decision: Decision, endpoint: ep.Endpoint) -> None:
        """The last look before new risk leaves (journaling it was a wait): a halt, a stricter mode or a
        switch no longer armed that took effect meanwhile still stops it. The caller registers the
        request as in flight right after, with no wait between: a halt either refuses it here or sees it."""
        mode = account.mode_for(decision.bot)
        if mode is not decision.mode and endpoint.name not in ORDER_ENDPOINTS:
            settings.check_mode_and_gate(account, endpoint, mode)  # a setting or an RFQ offer
        elif mode is not decision.mode:
            for index, intent in enumerate(decision.intents):
                if isinstance(intent, OrderIntent):
                    try:
                        _check_mode(account, decision.bot, intent)
                    except Refusal as refusal:
                        raise (
                            refusal.for_item(index, intent.order_tag) if decision.items else refusal
                        ) from None
        Gateway._gate(account, decision)

    @staticmethod
    def _gate(account: Account, decision: Decision) -> None:
        """No new risk unless the switch is armed with at least `min_remaining_s` left."""
        if not decision.new_risk or account.switch.allows_new_risk():
            return
        switch = account.switch
        remaining = switch.remaining()
        left = "not running" if remaining is None else f"{remaining:.1f} s left"
        raise Refusal(
            "switchNotArmed",
            f"the dead man's switch of account {account.name!r} is {switch.state.value} ({left}; new risk "
            f"needs armed with at least {account.config.switch.min_remaining_s:g} s): cancels still pass",
        )

    async def _original(self, account: Account, edit: OrderIntent) -> OrderIntent | None:
        """The open order an edit changes, from the exchange (`orders/status`), as an OrderIntent."""
        found = await self._lookup(account, [edit])
        key = edit.order_id or edit.cli_ord_id or ""
        return found.get(key)

    async def _batch_originals(
        self, account: Account, intents: Sequence[GuardedIntent]
    ) -> dict[str, OrderIntent]:
        tags = {
            i.order_tag: i for i in intents if isinstance(i, OrderIntent) and i.kind == "send" and i.order_tag
        }
        edits = [
            i
            for i in intents
            if isinstance(i, OrderIntent) and i.kind == "edit" and (i.order_id or "") not in tags
        ]
        found = await self._lookup(account, edits) if edits else {}
        return {**found, **{tag: intent for tag, intent in tags.items() if tag is not None}}

    @staticmethod
    def _afford_lookup(account: Account, refused: str) -> None:
        """Spend an `orders/status` from the account's budget, keeping the switch's share and a cancel-all's
        room as every non-cancel does; Refusal(apiLimitExceeded, `refused`) if it does not fit."""
        if not account.budget.try_spend(
            ep.endpoint("orders/status").cost, reserve=account.switch_reserve + account.bot_reserve
        ):
            raise Refusal("apiLimitExceeded", refused)

    async def _lookup(self, account: Account, edits: Sequence[OrderIntent]) -> dict[str, OrderIntent]:
        params: list[tuple[str, str]] = []
        for edit in edits:
            if edit.order_id:
                params.append(("orderIds", edit.order_id))
            elif edit.cli_ord_id:
                params.append(("cliOrdIds", edit.cli_ord_id))
        if not params:
            return {}
        self._afford_lookup(account, "no budget left to look up the order being edited; retry shortly")
        try:
            rows = await account.gateway_client.order_status(
                [v for k, v in params if k == "orderIds"], [v for k, v in params if k == "cliOrdIds"]
            )
        except ExchangeError as exc:
            raise Refusal(
                "upstreamUnavailable", f"the order being edited could not be looked up at the exchange: {exc}"
            ) from None
        found: dict[str, OrderIntent] = {}
        for row in rows:
            original = order_from_status(row)
            if original is None:
                continue
            if original.order_id:
                found[original.order_id] = original
            if original.cli_ord_id:
                found[original.cli_ord_id] = original
        return found

    # ---- answering from guardian's own switch -----------------------------------------------------
    async def _switch_answer(self, account: Account, fields: Mapping[str, str], trail: Trail) -> web.Response:
        raw = fields.get("timeout")
        if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
            raise Refusal("invalidArgument", "timeout must be whole seconds")
        if int(raw) == 0:
            raise Refusal(
                "endpointNotAllowed",
                "guardian keeps this account's dead man's switch armed for every bot: timeout=0 would switch it "
                'off, so it is refused (stop guardian with on_shutdown = "disarm" to switch it off)',
            )
        switch = account.switch
        remaining = switch.remaining()
        if remaining is None or switch.state not in (SwitchState.ARMED, SwitchState.DEGRADED):
            raise Refusal(
                "switchNotArmed",
                f"guardian's dead man's switch for account {account.name!r} is {switch.state.value}",
            )
        now = time.time()
        payload = {
            "result": "success",
            "status": {"currentTime": to_iso(now), "triggerTime": to_iso(now + remaining)},
            "serverTime": to_iso(now),
        }
        trail.outcome = "answered"
        await self._journal_local(trail, "answered", None, 200)
        return web.json_response(payload)

    # ---- forwarding -------------------------------------------------------------------------------
    async def _send_once(
        self, out: Outbound, decision: Decision, trail: Trail, caller: Caller, cost: float
    ) -> web.StreamResponse:
        """A sendorder with a cliOrdId, or a batch with send items that carry them: a retry (the same
        request from the same bot) gets the first attempt's answer, never a second order; any other use
        of those cliOrdIds is refused (`clientOrderIdAlreadyExist`). Only what reaches the exchange spends
        the budget: a replayed answer costs nothing, asking the exchange about an unknown outcome costs an
        `orders/status`."""
        account = out.account
        attempt, first = account.recent.claim(
            decision.keys, caller.bot, decision.content, items=decision.key_items if decision.items else None
        )
        if not first:
            await attempt.wait()
            if attempt.outcome is Outcome.ANSWERED and attempt.answer is not None:
                trail.outcome = "replayed"
                await self._journal_local(trail, "answered", "replayed", attempt.answer.status)
                response = _response(attempt.answer)
                response.headers[REPLAYED_HEADER] = "true"
                return response
            if out.endpoint.name == "sendorder":
                known = await self._known_order(account, decision.keys[0])
                if known is not None:
                    trail.outcome = "replayed"
                    await self._journal_local(trail, "answered", "recovered", 200)
                    response = web.json_response(known)
                    response.headers[REPLAYED_HEADER] = "recovered"
                    return response
            else:
                await self._none_known(account, decision.keys)
            account.recent.forget(attempt)
            # A first attempt again, unless another retry got there first (then this one waits for it).
            return await self._send_once(out, decision, trail, caller, cost)
        try:
            if decision.deferred is not None and decision.hold is None:
                # A retry whose first attempt turned out not to exist (or was refused): new risk after
                # all, judged now as a first attempt is, before it spends or leaves.
                await self._settled(account)
                decision.hold = self._hold(account, caller, decision, decision.deferred)
            self._spend(account, caller, cost, decision)
            answer = await self._forward_journaled(out, decision, trail)
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
        return _response(answer)

    async def _none_known(self, account: Account, cli_ord_ids: Sequence[str]) -> None:
        """After a batch whose outcome is unknown, before it is sent again: Refusal unless the exchange
        knows none of its cliOrdIds. A batch answer cannot be rebuilt honestly from orders/status, so a
        batch that did reach the exchange is not answered again: the bot reads openorders instead."""
        self._afford_lookup(
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

    async def _known_order(self, account: Account, cli_ord_id: str) -> dict[str, Any] | None:
        """After an attempt whose outcome is unknown: does the exchange have the order? If so, answer the
        retry in sendorder's shape from what the exchange says."""
        self._afford_lookup(
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

    async def _forward_journaled(self, out: Outbound, decision: Decision, trail: Trail) -> RawAnswer:
        """Journal the intent (committed), forward, journal the outcome."""
        endpoint = out.endpoint
        request_id: int | None = None
        try:
            request_id = await self.journal.record(
                Intent(
                    account=out.account.name,
                    bot=trail.bot,
                    endpoint=endpoint.name,
                    params=trail.params,
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
                self._still_allowed(out.account, decision, endpoint)
            except Refusal as refusal:
                if request_id is not None:
                    self._withheld(request_id, refusal, trail)
                raise
            in_flight = out.account.in_flight
            flight = in_flight.begin(trail.bot, endpoint.name, tuple(decision.intents), out.path)
            answer: RawAnswer | None = None
            try:
                answer = await self._forward(out, trail)
            finally:
                lost = answer is None or trail.outcome in ("timeout", "unavailable")
                in_flight.end(flight, None if lost else answer)
        else:
            answer = await self._forward(out, trail)
        if request_id is not None:
            # After the answer is on its way: the outcome's JSON and redaction are not the bot's wait.
            total_s = time.time() - trail.received_at
            asyncio.get_running_loop().call_soon(self._finish, request_id, trail, answer.status, total_s)
        return answer

    def _withheld(self, request_id: int, refusal: Refusal, trail: Trail) -> None:
        """The intent was journaled but a halt (or a stricter mode, or the switch) stopped it before it
        left: its row says so, and the refusal is journaled as every refusal is."""
        try:
            self.journal.finish(
                request_id,
                outcome="withheld",
                http_status=refusal.http_status,
                answer={"error": refusal.code},
                upstream_s=None,
                total_s=time.time() - trail.received_at,
            )
        except JournalError as exc:
            log.error("journal_write_failed", endpoint=trail.endpoint, error=str(exc))

    def _finish(self, request_id: int, trail: Trail, http_status: int, total_s: float) -> None:
        trail.read_answer()
        stream = self.accounts[trail.account].stream if trail.account in self.accounts else None
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
        )
        try:
            self.journal.finish(
                request_id,
                outcome=trail.outcome,
                http_status=http_status,
                answer=trail.answer,
                upstream_s=trail.upstream_s,
                total_s=total_s,
            )
        except JournalError as exc:
            log.error("journal_write_failed", endpoint=trail.endpoint, error=str(exc))

    async def _forward(self, out: Outbound, trail: Trail) -> RawAnswer:
        started = time.perf_counter()
        try:
            answer = await out.account.gateway_client.send(
                out.endpoint, out.query, out.body, method=out.method, path=out.path
            )
        except ExchangeTimeout as exc:
            trail.upstream_s = time.perf_counter() - started
            trail.outcome = "timeout"
            return _local_error(
                504, "Unavailable", f"no answer from the exchange in time; outcome unknown ({exc})"
            )
        except ExchangeError as exc:
            trail.upstream_s = time.perf_counter() - started
            trail.outcome = "unavailable"
            return _local_error(502, "Unavailable", f"the exchange could not be reached ({exc})")
        trail.upstream_s = time.perf_counter() - started
        trail.raw = answer  # read after the bot has it (Trail.read_answer): the bot does not wait for that
        return answer

    # ---- answers ----------------------------------------------------------------------------------
    def _refused(self, refusal: Refusal) -> web.Response:
        return web.json_response(refusal.envelope(to_iso(time.time())), status=refusal.http_status)

    async def _journal_local(self, trail: Trail, verdict: str, reason: str | None, status: int) -> None:
        try:
            await self.journal.record(
                Intent(
                    account=trail.account,
                    bot=trail.bot,
                    endpoint=trail.endpoint,
                    params=trail.params,
                    verdict=verdict,
                    reason=reason,
                    received_at=trail.received_at,
                    http_status=status,
                )
            )
        except JournalError as exc:
            log.error("journal_write_failed", endpoint=trail.endpoint, verdict=verdict, error=str(exc))


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
    upstream_s: float | None = None
    answer: dict[str, Any] | None = None  # the exchange's answer, parsed, for the journal
    body: str = field(default="", repr=False)  # the request's body as the bot sent it
    raw: RawAnswer | None = None  # the exchange's answer until read_answer() has read it

    def read_answer(self) -> None:
        """The outcome and the journal's copy of the exchange's answer, from one parse of its body, once."""
        if self.raw is not None:
            self.outcome, self.answer = _read_answer(self.raw, keep_all=self.endpoint in ORDER_ENDPOINTS)
            self.raw = None


def _response(answer: RawAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type or None)


def _local_error(status: int, code: str, message: str) -> RawAnswer:
    body = {"result": "error", "serverTime": to_iso(time.time()), "error": code, "message": message}
    return RawAnswer(status, json.dumps(body).encode(), "application/json")


def _read_answer(answer: RawAnswer, *, keep_all: bool = False) -> tuple[str, dict[str, Any]]:
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


def _wire_code(exc: WireError) -> str:
    return exc.code if exc.code in ("invalidArgument", "requiredArgumentMissing") else "invalidArgument"


_PLACING = frozenset(PLACING)


def _only_cancels(decision: Decision) -> bool:
    return all(isinstance(i, CancelIntent | CancelAllIntent) for i in decision.intents)


def _symbols(intents: Sequence[GuardedIntent], originals: Mapping[str, OrderIntent]) -> set[str]:
    found: set[str] = set()
    for intent in intents:
        if isinstance(intent, OrderIntent):
            if intent.symbol:
                found.add(intent.symbol)
            original = originals.get(intent.order_id or intent.cli_ord_id or "")
            if original is not None and original.symbol:
                found.add(original.symbol)
    return found


def order_from_status(row: Mapping[str, Any]) -> OrderIntent | None:
    """An open order as `orders/status` reports it, as the OrderIntent an edit is merged into; None for
    a closed order (it cannot be edited) or one whose report lacks what the limits need."""
    if row.get("status") not in ("ENTERED_BOOK", "TRIGGER_PLACED"):
        return None
    order = row.get("order")
    if not isinstance(order, Mapping):
        return None
    trigger = order.get("priceTriggerOptions")
    stop = _decimal(trigger.get("triggerPrice")) if isinstance(trigger, Mapping) else None
    size, symbol, side = _decimal(order.get("quantity")), order.get("symbol"), order.get("side")
    if size is None or not isinstance(symbol, str) or side not in ("buy", "sell"):
        return None
    limit = _decimal(order.get("limitPrice"))
    order_type = str(order.get("orderType") or ("stp" if stop is not None else "lmt"))
    if stop is not None and order_type not in orders.TRIGGER_TYPES:
        order_type = "stp"
    return OrderIntent(
        kind="send",
        order_type=order_type,
        symbol=symbol,
        side=str(side),
        size=size,
        limit_price=limit,
        stop_price=stop,
        reduce_only=order.get("reduceOnly") is True,
        cli_ord_id=order.get("cliOrdId") if isinstance(order.get("cliOrdId"), str) else None,
        order_id=order.get("orderId") if isinstance(order.get("orderId"), str) else None,
        filled=_decimal(order.get("filled")) or Decimal(0),
    )


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _check_mode(account: Account, bot: str | None, intent: GuardedIntent) -> None:
    """The mode check for `bot`'s request: the stricter of the account's mode and the bot's own."""
    try:
        rules.check_mode(account.mode_for(bot), intent)
    except Refusal as refusal:
        raise _named(account, bot, refusal) from None


def _named(account: Account, bot: str | None, refusal: Refusal) -> Refusal:
    """A mode refusal that the bot's own mode caused says so (rather than "this account")."""
    if refusal.code not in ("tradingHalted", "reduceOnlyMode") or account.mode_for(bot) is account.mode:
        return refusal
    mode = account.mode_for(bot).value
    return Refusal(
        refusal.code,
        f"bot {bot!r} is {mode} (POST /guardian/mode with its name sets it back); other bots are not: "
        + ("only cancels pass" if mode == "halted" else "only reduce-only orders and cancels pass"),
        item=refusal.item,
        order_tag=refusal.order_tag,
    )


def _reducible(account: Account, intent: OrderIntent) -> Decimal | None:
    """How much a reduce-only order may close: the position's size, from a fresh account state (None
    otherwise, and for orders that are not reduce-only)."""
    stream = account.stream
    if intent.reduce_only is not True or stream is None or not stream.fresh() or intent.symbol is None:
        return None
    feed, fills = stream.state.position_readings(intent.symbol.upper())
    return min(abs(feed), abs(fills))  # the smaller reading: never more than is surely there


def _merged_batch(
    intents: Sequence[GuardedIntent], originals: Mapping[str, OrderIntent]
) -> list[tuple[int, OrderIntent, bool]]:
    """A batch's sends and edits as whole orders (an edit merged with what it changes), with whether
    each replaces an open order (an edit of an earlier item of the batch is counted as one more)."""
    tags = {i.order_tag for i in intents if isinstance(i, OrderIntent) and i.kind == "send" and i.order_tag}
    judged: list[tuple[int, OrderIntent, bool]] = []
    for index, intent in enumerate(intents):
        if not isinstance(intent, OrderIntent):
            continue
        if intent.kind == "send":
            judged.append((index, intent, False))
            continue
        original = originals.get(intent.order_id or intent.cli_ord_id or "")
        if original is not None:
            judged.append((index, rules.merge_edit(original, intent), intent.order_id not in tags))
    return judged


_STATUS_KEYS = {"sendorder": "sendStatus", "editorder": "editStatus", "batchorder": "batchStatus"}


def _placed(trail: Trail, hold: exposure.Hold) -> list[tuple[str | None, bool] | None] | None:
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
