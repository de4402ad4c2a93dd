"""The guard's stages (`guardian.gateway.app`): the mode and switch gate, the limits, the exposure hold,
and, once the exchange has answered, settling what was held.

- `gate`: the account's mode and the bot's (the stricter applies), the switch (no new risk unless it is
  armed with `min_remaining_s` left), a market the ticker reports suspended. Cancels always pass.
- `limits`: each order's own limits (`guardian.gateway.rules`: symbols, size, notional, price band), a
  setting's limits (`guardian.gateway.settings`).
- `hold`: the exposure guard (`guardian.gateway.exposure`): judged against the account's running figures
  and held, in one synchronous step with the two above (nothing between them waits); a retry of an
  attempt in flight or answered is judged only if it is sent after all.
- `settle` / `release`: the exchange's answer binds the hold to what was placed, or nothing left ends it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import structlog

from guardian.account import Account, Mode
from guardian.errors import ExchangeError, ExchangeRejected
from guardian.gateway import exposure, rules, settings
from guardian.gateway.dedupe import Outcome
from guardian.gateway.orders import OrderIntent
from guardian.gateway.passage import ORDER_ENDPOINTS, Decision, GuardedIntent, Passage, placed
from guardian.gateway.refusal import Refusal
from guardian.kraken import endpoints as ep
from guardian.kraken.client import classify

if TYPE_CHECKING:
    from guardian.gateway.app import Gateway

log = structlog.get_logger("guardian.gateway")

SETTLE_WAIT_S: Final = 2.0  # the longest an order waits for the exposure figures to settle, then refused


# ---- the stages ------------------------------------------------------------------------------------------


async def gate(gw: Gateway, p: Passage) -> None:
    """The mode and the switch gate (and a suspended market). From the wait for settled figures on, the
    gate, the limits and the hold are one synchronous step."""
    account, decision, bot = p.account, p.decision, p.bot.bot
    if p.endpoint.name not in ORDER_ENDPOINTS:
        if p.endpoint.risk is not ep.Risk.NONE:
            decision.mode = account.mode_for(bot)  # a setting or an RFQ offer: judged with its limits
        return
    if any(isinstance(i, OrderIntent) for i in decision.intents):
        await account.instruments.wait_loaded(SETTLE_WAIT_S)  # just started: the contracts' first read
        await settled(account)  # the last wait before the hold
    if p.endpoint.name == "batchorder":
        switch_gate(account, decision)
        decision.mode = account.mode_for(bot)
        suspended(account, decision)
        return
    [intent] = decision.intents
    decision.mode = account.mode_for(bot)
    check_mode(account, bot, intent)
    switch_gate(account, decision)
    suspended(account, decision)


async def limits(gw: Gateway, p: Passage) -> None:
    """Each order's own limits; a setting's (which judges its mode and the switch with them)."""
    account, decision, bot = p.account, p.decision, p.bot.bot
    name = p.endpoint.name
    if name not in ORDER_ENDPOINTS:
        if p.endpoint.risk is not ep.Risk.NONE:
            decision.new_risk = await settings.judge(
                account,
                p.endpoint,
                p.fields,
                p.path_params,
                lambda uid: _rfq(account, uid),
                mode=account.mode_for(bot),
            )
            decision.mode = account.mode_for(bot)
        return
    if name == "batchorder":
        originals = decision.originals
        marks = {s: account.marks.mark(s) for s in _symbols(decision.intents, originals)}
        mode = decision.mode if decision.mode is not None else account.mode_for(bot)
        # The items guardian answers itself (edits of orders that are not there) do not leave: the rest are
        # judged, each named by its place in the batch as the bot sent it.
        kept = [index for index in range(len(decision.intents)) if index not in decision.answered]
        try:
            rules.check_batch(
                [decision.intents[index] for index in kept],
                mode,
                p.rules,
                marks,
                originals,
                account.instruments.contract,
            )
        except Refusal as refusal:
            if refusal.item is not None and decision.answered:
                refusal = refusal.for_item(kept[refusal.item], refusal.order_tag)
            raise named(account, bot, refusal) from None
        tags = [i.order_tag if isinstance(i, OrderIntent) else None for i in decision.intents]
        for index, merged, _ in _merged_batch(decision.intents, originals):
            contract_gate(account, merged, functools.partial(_item, index, tags[index]))
        return
    [intent] = decision.intents
    if isinstance(intent, OrderIntent):
        if not intent.merged:  # an edit is merged at parse, or answered there (guardian.gateway.notfound)
            raise Refusal("accountStateUnavailable", "the order to edit could not be read; retry in a moment")
        contract_gate(account, intent, lambda refusal: refusal)
        rules.check_limits(
            intent,
            p.rules,
            account.marks.mark(intent.symbol or ""),
            reducible=_reducible(account, intent),
            contract=account.instruments.contract(intent.symbol or ""),
        )


async def hold(gw: Gateway, p: Passage) -> None:
    """The exposure limits now, or, for a retry of an attempt in flight or answered, only if it is sent
    after all (`guardian.gateway.forward`): the attempt's own hold already counts that order, and counting
    it twice would refuse the retry (or another bot's order) for an order that exists once."""
    decision, name = p.decision, p.endpoint.name
    if name == "batchorder":
        judged = _merged_batch(decision.intents, decision.originals)
    elif name in ORDER_ENDPOINTS and isinstance(decision.intents[0], OrderIntent):
        [intent] = decision.intents
        assert isinstance(intent, OrderIntent)
        judged = [(0, intent, intent.kind == "edit")]
    else:
        return
    account, bot = p.account, p.bot.bot
    if decision.keys and p.rules.dedupe_window_s > 0:
        earlier = account.recent.get(decision.keys[0])
        if (
            earlier is not None
            and earlier.outcome is not Outcome.UNKNOWN
            and earlier.is_retry(bot, decision.content, decision.keys)
        ):
            decision.deferred = judged
            return
    decision.hold = judge(p, judged)


def judge(p: Passage, judged: Sequence[tuple[int, OrderIntent, bool]]) -> exposure.Hold | None:
    """The exposure limits, checked and held in one step (nothing is awaited here): None when the
    request has no order to hold. The running figures must be settled (`settled`) just before."""
    if not judged:
        return None
    account, decision, caller = p.account, p.decision, p.bot
    stream = account.stream
    loss_on = p.rules.max_daily_loss is not None
    trial = account.exposure.trial(
        caller.bot,
        reconciles=stream.reconciles if stream is not None else 0,
        daily_pnl=stream.state.daily_pnl() if stream is not None and loss_on else Decimal(0),
        window_s=p.rules.duplicate_window_s,
    )
    if stream is not None and loss_on and trial.daily_pnl is None:
        trial.pnl_gap = stream.state.pnl_gap()
    candidates = [
        (index, exposure.candidate(intent, caller.bot, replaces_open=replaces))
        for index, intent, replaces in judged
    ]
    tags = [i.order_tag if isinstance(i, OrderIntent) else None for i in decision.intents]
    return account.exposure.judge(
        trial,
        candidates,
        exposure.Limits(p.rules, caller.client),
        fresh=stream is not None and stream.fresh(),
        item=lambda index, refusal: refusal.for_item(index, tags[index]) if decision.items else refusal,
    )


def settle(p: Passage, *, answered: bool) -> None:
    """After the forward: the hold bound to what the answer shows placed, the rest released; with no answer
    (`answered` false: the request failed on its way) every outcome is unknown, and held until the stream
    or two reconciliations say. A replayed retry holds nothing: its first attempt's hold counts."""
    found = p.decision.hold
    if found is None:
        return
    account, trail = p.account, p.trail
    stream = account.stream
    reconciles = stream.reconciles if stream is not None else 0
    if not answered:
        account.exposure.answered(found, None, reconciles)
        return
    trail.read_answer()  # what was placed: the hold needs it now, not after the bot has its answer
    if trail.outcome == "replayed":  # the first attempt holds the orders
        account.exposure.release(found)
        return
    account.exposure.answered(found, placed(trail, found), reconciles)


def release(p: Passage) -> None:
    """Refused before it left: nothing of it is at the exchange, so nothing stays held."""
    if p.decision.hold is not None and p.on is not None:
        p.account.exposure.release(p.decision.hold)


# ---- the checks the stages are made of -------------------------------------------------------------------


async def settled(account: Account) -> None:
    """Until the running figures are not between two pictures (a large snapshot or reconciliation being
    applied in slices: tens of milliseconds at most); at once otherwise."""
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


def _item(index: int, tag: str | None, refusal: Refusal) -> Refusal:
    return refusal.for_item(index, tag)


def contract_gate(account: Account, intent: OrderIntent, name: Callable[[Refusal], Refusal]) -> None:
    """No new risk in a contract guardian cannot judge (unknown, or of a type it does not know) or past
    its last trading time; a reduce-only order passes (`guardian.gateway.instruments`)."""
    if intent.reduce_only is True or not intent.symbol:
        return
    refusal = account.instruments.judge(intent.symbol)
    if refusal is not None:
        log.warning("order_contract_refused", symbol=intent.symbol.upper(), code=refusal.code)
        raise name(refusal)


def switch_gate(account: Account, decision: Decision) -> None:
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


def suspended(account: Account, decision: Decision) -> None:
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


def halted(account: Account, decision: Decision) -> None:
    """A halted account or bot: every send and edit refused (before anything is looked up)."""
    if account.mode_for(decision.bot) is Mode.HALTED:
        _each_mode(account, decision)


def still_allowed(account: Account, decision: Decision, endpoint: ep.Endpoint) -> None:
    """The last look before new risk leaves (journaling it was a wait): a halt, a stricter mode or a
    switch no longer armed that took effect meanwhile still stops it. The caller registers the request as
    in flight right after, with no wait between: a halt either refuses it here or sees it."""
    mode = account.mode_for(decision.bot)
    if mode is not decision.mode and endpoint.name not in ORDER_ENDPOINTS:
        settings.check_mode_and_gate(account, endpoint, mode)  # a setting or an RFQ offer
    elif mode is not decision.mode:
        _each_mode(account, decision)
    switch_gate(account, decision)


def _each_mode(account: Account, decision: Decision) -> None:
    """The mode check for each send and edit of the request, naming the batch item at fault."""
    for index, intent in enumerate(decision.intents):
        if isinstance(intent, OrderIntent) and index not in decision.answered:
            try:
                check_mode(account, decision.bot, intent)
            except Refusal as refusal:
                raise (refusal.for_item(index, intent.order_tag) if decision.items else refusal) from None


def check_mode(account: Account, bot: str | None, intent: GuardedIntent) -> None:
    """The mode check for `bot`'s request: the stricter of the account's mode and the bot's own."""
    try:
        rules.check_mode(account.mode_for(bot), intent)
    except Refusal as refusal:
        raise named(account, bot, refusal) from None


def named(account: Account, bot: str | None, refusal: Refusal) -> Refusal:
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


async def _rfq(account: Account, rfq_uid: str) -> dict[str, Any]:
    """An open RFQ as the exchange describes it (public `rfqs/{rfqUid}`), for judging an offer on it."""
    row = ep.endpoint("rfqs/{rfqUid}")
    try:
        raw = await account.gateway_client.send(row, path=ep.V3 + "rfqs/" + rfq_uid)
        doc = classify(row.name, raw.status, raw.body)
    except ExchangeRejected as exc:
        raise Refusal("invalidArgument", f"RFQ {rfq_uid} is not open at the exchange ({exc.code})") from None
    except ExchangeError as exc:
        raise Refusal(
            "upstreamUnavailable", f"the RFQ an offer is for could not be read at the exchange: {exc}"
        ) from None
    found = doc.get("rfq")
    if not isinstance(found, dict):
        raise Refusal("invalidArgument", f"RFQ {rfq_uid} is not open at the exchange")
    return found
