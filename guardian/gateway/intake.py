"""The gateway's first stages (`guardian.gateway.app`): receive a request, authenticate its bot, and parse
what it asks for.

- `receive`: the path must be a Kraken Futures endpoint the table lists, with a method it takes, and the
  body at most 64 KiB of UTF-8; else `notFound`, `requestTooLarge`, `invalidArgument`, never forwarded.
- `authenticate`: a public endpoint passes without a key (the public budget and cache answer it); any
  other needs a local key's signature, nonce and permission; endpoints that move funds are refused.
- `parse`: the parameters as Kraken reads them (form, query, or JSON for settings); a bot's
  `cancelallordersafter` is answered from guardian's own switch; an order request becomes its intents,
  an edit merged with the order it changes (read from the exchange's `orders/status`, after the checks
  that need no lookup: a halted account or bot, the switch). An edit of an order the exchange does not
  have is answered in Kraken's own shape and never forwarded (guardian.gateway.notfound).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from guardian import conns
from guardian.account import Account
from guardian.errors import ExchangeError
from guardian.gateway import checks, notfound, orders, rules, settings
from guardian.gateway.http import read_capped
from guardian.gateway.orders import OrderIntent
from guardian.gateway.passage import MAX_BODY, ORDER_ENDPOINTS, GuardedIntent, Passage, response
from guardian.gateway.refusal import Refusal
from guardian.kraken import endpoints as ep
from guardian.kraken.times import to_iso
from guardian.kraken.wire import LIST_FIELDS, WireError, parse_batch, request_fields
from guardian.stream.state import number
from guardian.switch import SwitchState

if TYPE_CHECKING:
    from guardian.gateway.app import Gateway


async def receive(gw: Gateway, p: Passage) -> None:
    request, trail = p.request, p.trail
    routed = ep.match(request.path, request.method)
    if routed is None:
        raise Refusal(
            "notFound",
            f"{request.path} is not a Kraken Futures endpoint guardian knows, so it is not forwarded; "
            f"the nearest one it knows is {ep.nearest(request.path)}",
        )
    p.route, p.path_params = routed
    trail.endpoint = p.endpoint.name
    if request.method not in p.endpoint.methods:
        taken = " or ".join(sorted(set(ep.methods_at(request.path))))
        raise Refusal("notFound", f"{request.path} takes {taken}, not {request.method}")
    caller = gw.keys.lookup(request.headers.get("APIKey", ""))
    if caller is not None and not conns.allowed(caller.client, conns.request_source(request)):
        trail.account, trail.bot = caller.account, caller.bot
        raise conns.source_refusal(request)  # before the body is read
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise Refusal("requestTooLarge", f"the request body is over {MAX_BODY // 1024} KiB")
    try:
        p.body = raw.decode()
    except UnicodeDecodeError:
        raise Refusal("invalidArgument", "the request body is not UTF-8") from None
    p.query = request.rel_url.raw_query_string
    trail.body = p.body


async def authenticate(gw: Gateway, p: Passage) -> None:
    request, trail, endpoint = p.request, p.trail, p.endpoint
    if endpoint.permission is ep.Permission.PUBLIC:
        trail.outcome = "public"
        trail.bot = gw.public.bot_for(request.headers)
        p.on = gw.public_account
        out = p.outbound()
        answer = await gw.public.answer(
            endpoint, request.path, p.query, request.headers, lambda: gw.forward(out, trail)
        )
        p.answer = response(answer)
        return
    p.caller = gw.keys.authenticate(request.headers, endpoint, p.query, p.body, request.path)
    trail.account, trail.bot = p.caller.account, p.caller.bot
    if gw.tls_subjects.problem(request.transport, p.caller.account, p.caller.client) is not None:
        raise Refusal(
            "authenticationError",
            "this key is bound to a client certificate (accounts.clients.tls_client_subject) that this "
            "connection's certificate does not name",
        )
    p.on = gw.accounts[p.caller.account]
    p.guard = p.on.config.guard
    p.decision.bot = p.caller.bot
    if endpoint.permission is ep.Permission.FUNDS or endpoint.risk is ep.Risk.FUNDS:
        raise Refusal("endpointNotAllowed", f"{endpoint.name} moves funds: guardian never forwards it")


async def parse(gw: Gateway, p: Passage) -> None:
    endpoint, body = p.endpoint, p.body
    is_json = body.lstrip().startswith("{") and endpoint.name not in ORDER_ENDPOINTS
    try:
        fields = request_fields(p.query, "" if is_json else body, LIST_FIELDS)
    except WireError as exc:
        raise Refusal(wire_code(exc), str(exc)) from None
    if is_json:
        fields = settings.fields_with_json(fields, body)
    p.fields = fields
    p.trail.params = dict(fields)
    if endpoint.name == "cancelallordersafter":
        p.answer = await _switch_answer(gw, p)
    elif endpoint.name in ORDER_ENDPOINTS:
        _intents(p)
        await _merge_edits(gw, p)


def _intents(p: Passage) -> None:
    """An order request as intents: what to send, edit or cancel; its cliOrdIds for the retry memory."""
    name, fields, decision = p.endpoint.name, p.fields, p.decision
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
            raise Refusal(wire_code(exc), str(exc)) from None
        before = orders.parse_batch_envelope(fields, doc)
        p.trail.params = {"batchOrder": items, **{k: v for k, v in fields.items() if k != "json"}}
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


async def _merge_edits(gw: Gateway, p: Passage) -> None:
    """Edits are judged as they will be once merged with the open order, which takes an exchange call.
    What needs no merge to be refused is refused first, without that call: a halted account or bot, and
    the switch gate (checked again after the lookup, which may take a while)."""
    account, decision = p.account, p.decision
    if any(isinstance(i, OrderIntent) and i.kind == "edit" for i in decision.intents):
        checks.halted(account, decision)
        checks.switch_gate(account, decision)
    if p.endpoint.name == "editorder":
        [edit] = decision.intents
        assert isinstance(edit, OrderIntent)
        found = await _lookup(account, [edit])
        if notfound.unknown(account, found, edit):
            p.answer = await notfound.answer_edit(gw, p, edit)
            return
        decision.intents = [rules.merge_edit(found.open[edit.order_id or edit.cli_ord_id or ""], edit)]
    elif p.endpoint.name == "batchorder":
        found, decision.originals = await _batch_originals(account, decision.intents)
        notfound.answer_items(p, found)
        if decision.answered and len(decision.answered) == decision.items:
            p.answer = await notfound.answer_batch(gw, p)


async def _batch_originals(
    account: Account, intents: Sequence[GuardedIntent]
) -> tuple[notfound.Lookup, dict[str, OrderIntent]]:
    """What a batch's edits change: open orders at the exchange, or the batch's own sends (by tag); with
    what the exchange said of the orders it was asked about."""
    tags = {
        i.order_tag: i for i in intents if isinstance(i, OrderIntent) and i.kind == "send" and i.order_tag
    }
    edits = [
        i
        for i in intents
        if isinstance(i, OrderIntent) and i.kind == "edit" and (i.order_id or "") not in tags
    ]
    found = await _lookup(account, edits) if edits else notfound.Lookup()
    return found, {**found.open, **{tag: intent for tag, intent in tags.items() if tag is not None}}


def afford_lookup(account: Account, refused: str) -> None:
    """Spend an `orders/status` from the account's budget, keeping the switch's share and a cancel-all's
    room as every non-cancel does; Refusal(apiLimitExceeded, `refused`) if it does not fit."""
    if not account.budget.try_spend(
        ep.endpoint("orders/status").cost, reserve=account.switch_reserve + account.bot_reserve
    ):
        raise Refusal("apiLimitExceeded", refused)


async def _lookup(account: Account, edits: Sequence[OrderIntent]) -> notfound.Lookup:
    """What the exchange's `orders/status` says of the orders `edits` name."""
    params: list[tuple[str, str]] = []
    for edit in edits:
        if edit.order_id:
            params.append(("orderIds", edit.order_id))
        elif edit.cli_ord_id:
            params.append(("cliOrdIds", edit.cli_ord_id))
    if not params:
        return notfound.Lookup()
    afford_lookup(account, "no budget left to look up the order being edited; retry shortly")
    try:
        rows = await account.gateway_client.order_status(
            [v for k, v in params if k == "orderIds"], [v for k, v in params if k == "cliOrdIds"]
        )
    except ExchangeError as exc:
        raise Refusal(
            "upstreamUnavailable", f"the order being edited could not be looked up at the exchange: {exc}"
        ) from None
    found = notfound.Lookup()
    for row in rows:
        order = row.get("order") if isinstance(row, Mapping) else None
        if not isinstance(order, Mapping):
            continue
        keys = [k for k in (order.get("orderId"), order.get("cliOrdId")) if isinstance(k, str) and k]
        status = row.get("status")
        original = order_from_status(row)
        for key in keys:
            if original is not None:
                found.open[key] = original
            elif status in notfound.CLOSED_STATUSES:
                found.closed[key] = str(status)
            elif status in notfound.OPEN_STATUSES:
                found.unclear[key] = "orders/status reports it open without what the limits need"
            else:
                found.unclear[key] = f"orders/status reports it as {str(status)[:32]!r}"
    return found


async def _switch_answer(gw: Gateway, p: Passage) -> web.Response:
    """A bot's `cancelallordersafter`, answered from guardian's own switch: guardian owns it."""
    account, trail = p.account, p.trail
    raw = p.fields.get("timeout")
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
    await gw.journal_local(trail, "answered", None, 200)
    return web.json_response(payload)


def wire_code(exc: WireError) -> str:
    return exc.code if exc.code in ("invalidArgument", "requiredArgumentMissing") else "invalidArgument"


def order_from_status(row: Mapping[str, Any]) -> OrderIntent | None:
    """An open order as `orders/status` reports it, as the OrderIntent an edit is merged into; None for
    a closed order (it cannot be edited) or one whose report lacks what the limits need."""
    if row.get("status") not in notfound.OPEN_STATUSES:
        return None
    order = row.get("order")
    if not isinstance(order, Mapping):
        return None
    trigger = order.get("priceTriggerOptions")
    stop = number(trigger.get("triggerPrice")) if isinstance(trigger, Mapping) else None
    size, symbol, side = number(order.get("quantity")), order.get("symbol"), order.get("side")
    if size is None or not isinstance(symbol, str) or side not in ("buy", "sell"):
        return None
    limit = number(order.get("limitPrice"))
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
        filled=number(order.get("filled")) or Decimal(0),
    )
