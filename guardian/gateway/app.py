"""The Kraken-compatible local API: every Kraken Futures REST path (`/derivatives/api/v3|v4/...`,
`/api/history/...`, `/api/charts/...`) that the endpoint table lists, as at the exchange.

A bot changes only its base URL and key. Each request takes one way, the stages of `STAGES` in order, each a
small function over the request's `Passage` in its own module:

    receive               route, method, body                              guardian.gateway.intake
    authenticate          local key, permission (public endpoints pass)    guardian.gateway.intake
    parse                 parameters, intents, an edit merged with its order
    mode and switch gate  the account's and the bot's mode, the switch     guardian.gateway.checks
    limits                each order's own limits, a setting's
    exposure hold         judged against the running figures, and held
    journal and forward   budget, retried cliOrdIds, intent, last look     guardian.gateway.forward
  then, whatever happened, settle: the hold bound to what was placed, or released.

Whatever a stage refuses answers in Kraken's error envelope with a 4xx status and is never sent. What
passes is journaled (intent committed first), re-signed with the account's exchange key over the same
bytes, forwarded, and the exchange's answer goes back unchanged. A stage may answer itself (a public read,
a bot's `cancelallordersafter` answered from guardian's own switch, a retry's replayed answer, an edit of
an order the exchange does not have, in Kraken's own `orderForEditNotFound` shape: guardian.gateway.notfound):
the way ends there. From the gate to the hold nothing waits: orders judged at the same moment see each other.

- Public endpoints pass through without authentication, within the public budget (a token bucket: a
  client's start-up burst at once, the long run at the rate) and through a short cache of identical reads
  (guardian.gateway.public).
- Settings, the assignment program and RFQ offers are judged by guardian.gateway.settings.
- Endpoints that move funds are never forwarded; a path the table does not list is refused `notFound`
  naming the nearest one it does, and never forwarded.
- Cancels always pass the mode and the gate: taking risk away is never refused for safety reasons.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web

from guardian import logs
from guardian.account import RATE_WINDOW_MARGIN_S, Account
from guardian.config import AccountConfig, Config, ServerConfig
from guardian.gateway import checks, forward, intake
from guardian.gateway.auth import LocalKeys
from guardian.gateway.passage import (
    MAX_BODY,
    ORDER_ENDPOINTS,
    REPLAYED_HEADER,
    Outbound,
    Passage,
    Trail,
    refused,
)
from guardian.gateway.public import PublicGate
from guardian.gateway.refusal import Refusal
from guardian.journal import Intent, Journal, JournalError
from guardian.kraken import endpoints as ep
from guardian.kraken.client import RawAnswer
from guardian.kraken.times import to_iso
from guardian.ratelimit import CostBudget
from guardian.tls import SubjectCheck

__all__ = ["MAX_BODY", "ORDER_ENDPOINTS", "REPLAYED_HEADER", "STAGES", "Gateway", "Trail"]

log = structlog.get_logger("guardian.gateway")

# The account-history pool, modelled like the derivatives budget: 100 tokens, refilled 100 per 10 minutes.
HISTORY_CAPACITY = 100.0


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    run: Callable[[Gateway, Passage], Awaitable[None]]


STAGES: Final[tuple[Stage, ...]] = (
    Stage("receive", intake.receive),
    Stage("authenticate", intake.authenticate),
    Stage("parse", intake.parse),
    Stage("mode and switch gate", checks.gate),
    Stage("limits", checks.limits),
    Stage("exposure hold", checks.hold),
    Stage("journal and forward", forward.forward),
)


def _bot_budgets(
    accounts: Iterable[AccountConfig], kept: Mapping[tuple[str, str], CostBudget]
) -> dict[tuple[str, str], CostBudget]:
    """Each bot's own rate budget, by (account, bot), for the bots that have one: a budget in `kept` (a
    reload's) keeps what was spent in its window and takes the new capacity."""
    budgets: dict[tuple[str, str], CostBudget] = {}
    for account in accounts:
        for client in account.clients:
            if client.rate_budget is None:
                continue
            who = (account.name, client.name)
            budget = kept.get(who)
            if budget is None:
                budget = CostBudget(client.rate_budget, account.guard.rate_window_s)
            budget.capacity = client.rate_budget
            budgets[who] = budget
    return budgets


class Gateway:
    """The local API's order path for every account. `routes()` go on the daemon's server."""

    def __init__(
        self,
        accounts: Sequence[Account],
        keys: LocalKeys,
        journal: Journal,
        *,
        observe: Any = None,
        server: ServerConfig | None = None,
    ) -> None:
        self.accounts = {account.name: account for account in accounts}
        self.public_account = accounts[0]  # public reads go out on the first account's connections
        # Each bot's own share, by (account, bot): one budget whichever of its keys it signs with.
        self.bot_budgets = _bot_budgets((account.config for account in accounts), {})
        clients = [client for account in accounts for client in account.config.clients]
        server = server or ServerConfig()  # the public budget in total: its rate and burst
        self.public = PublicGate(server.public_rate_limit, server.public_burst_size, clients)
        # The history pool's local model, per account (the derivatives one is `account.budget`).
        self.history = {
            account.name: CostBudget(HISTORY_CAPACITY, forward.HISTORY_WINDOW_S + RATE_WINDOW_MARGIN_S)
            for account in accounts
        }
        self.keys = keys
        self.tls_subjects = SubjectCheck()  # tls_client_subject; the daemon's counts mismatches
        self.journal = journal
        self._observe = observe  # metrics sink: observe(trail, total_s)

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's bots: their keys, their own rate budgets (a budget kept keeps what
        was spent in its window) and the public budgets. The accounts' own configurations are swapped by
        the caller, in the same step (nothing is awaited in between)."""
        self.keys.reconfigure(config.accounts)
        self.bot_budgets = _bot_budgets(config.accounts, self.bot_budgets)
        clients = [client for account in config.accounts for client in account.clients]
        self.public.reconfigure(config.server.public_rate_limit, config.server.public_burst_size, clients)

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", prefix + "{tail:.*}", self.handle) for prefix in ep.PREFIXES]

    # ---- the request ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        trail = Trail(received_at=time.time())
        try:
            response = await self.conduct(Passage(request, trail))
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Refusal as refusal:
            trail.outcome, trail.raw = "refused", None
            trail.reason, trail.message = refusal.code, refusal.message
            response = refused(refusal)
            await self.journal_local(trail, "refused", refusal.code, refusal.http_status)
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

    async def conduct(self, p: Passage) -> web.StreamResponse:
        """Every stage in order until one answers; then the hold settled, whatever happened. At the debug
        log level each stage's wall time goes in the `request_forwarded` line (`stages_ms`)."""
        timed = logs.debugging
        try:
            for stage in STAGES:
                started = time.perf_counter() if timed else 0.0
                await stage.run(self, p)
                if timed:
                    p.trail.stages.append((stage.name, time.perf_counter() - started))
                if p.answer is not None:
                    break
        except Refusal:
            checks.release(p)  # nothing of it left: it holds nothing
            raise
        except BaseException:
            if p.on is not None:
                checks.settle(p, answered=False)  # it may have left: every outcome unknown
            raise
        started = time.perf_counter() if timed else 0.0
        checks.settle(p, answered=True)
        if timed:
            p.trail.stages.append(("settle", time.perf_counter() - started))
        assert p.answer is not None, "the last stage answers"
        return p.answer

    def _observed(self, trail: Trail, total_s: float) -> None:
        trail.read_answer()
        self._observe(trail, total_s)

    # ---- what the stages share ----------------------------------------------------------------------
    async def forward(self, out: Outbound, trail: Trail) -> RawAnswer:
        return await forward.send(out, trail)

    async def journal_local(self, trail: Trail, verdict: str, reason: str | None, status: int) -> None:
        """A request guardian answered itself (refused, or answered from its own switch or memory)."""
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
