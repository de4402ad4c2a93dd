"""Admin endpoints (contract), behind `Authorization: Bearer <server.admin_token>`:

- `POST /guardian/mode {"account", "mode"}`: set an account's trading mode (`active`, `reduce_only`,
  `halted`). Persisted in the journal before it is answered: a restarted daemon comes back in the same
  mode, so only a person lifts `halted`.
- `POST /guardian/kill {"account"}`: `halted` first (nothing new slips out), then `cancelallorders` at
  the exchange at once; the answer carries what the exchange said and `in_flight`, how many new-risk
  requests were already forwarded when the halt took effect. Each of those is watched to its end and
  whatever it left open is cancelled (`guardian.gateway.halt`).

Without an admin token in the configuration these routes do not exist. Answers are JSON; errors are
`{"error": code, "message": ...}` with a 4xx/5xx status.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from guardian.account import Account, Mode, bot_mode_key
from guardian.gateway.halt import Halts
from guardian.gateway.http import read_capped
from guardian.gateway.trips import Trips
from guardian.journal import Journal, JournalError
from guardian.secret import Secret

log = structlog.get_logger("guardian.admin")

MAX_ADMIN_BODY = 4096


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Admin:
    """The admin routes of one daemon."""

    def __init__(
        self,
        token: Secret,
        accounts: Mapping[str, Account],
        journal: Journal,
        halts: Halts | None = None,
        trips: Trips | None = None,
    ) -> None:
        self._token = token.reveal().encode()
        self._accounts = accounts
        self._journal = journal
        self._halts = halts or Halts(journal)
        self._trips = trips

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/guardian/mode", self._guarded(self.set_mode)),
            web.post("/guardian/kill", self._guarded(self.kill)),
        ]

    def _guarded(self, handler: Callable[[dict[str, Any]], Any]) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.Response:
            try:
                self._authorize(request)
                doc = await _json_body(request)
                status, answer = await handler(doc)
            except AdminError as exc:
                log.warning("admin_refused", path=request.path, code=exc.code, reason=exc.message)
                return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
            return web.json_response(answer, status=status)

        return guarded

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise AdminError(401, "authenticationError", "send Authorization: Bearer <server.admin_token>")

    def _account(self, doc: Mapping[str, Any]) -> Account:
        name = doc.get("account")
        if not isinstance(name, str) or name not in self._accounts:
            raise AdminError(
                400, "invalidArgument", f"account must be one of {', '.join(sorted(self._accounts))}"
            )
        return self._accounts[name]

    @staticmethod
    def _bot(account: Account, doc: Mapping[str, Any]) -> str | None:
        """The `bot` a request names (None: the whole account); it must be one of the account's."""
        if "bot" not in doc or doc["bot"] is None:
            return None
        names = [client.name for client in account.config.clients]
        bot = doc["bot"]
        if not isinstance(bot, str) or bot not in names:
            raise AdminError(
                400,
                "invalidArgument",
                f"bot must be one of account {account.name}'s: {', '.join(names) or 'none'}",
            )
        return bot

    async def set_mode(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        account = self._account(doc)
        bot = self._bot(account, doc)
        raw = doc.get("mode")
        try:
            mode = Mode(str(raw))
        except ValueError:
            raise AdminError(
                400, "invalidArgument", f"mode must be one of {', '.join(m.value for m in Mode)}"
            ) from None
        reason = str(doc.get("reason") or "admin request")[:200]
        if bot is not None:
            previous = await self._change_bot(account, bot, mode, reason=reason)
            return 200, {"account": account.name, "bot": bot, "mode": mode.value, "previous": previous.value}
        trip = account.trip
        if trip is not None:
            reason = f"{reason}; lifts the {trip.limit} trip ({trip.reason})"
        previous = await self._change(account, mode, reason=reason)
        answer: dict[str, Any] = {"account": account.name, "mode": mode.value, "previous": previous.value}
        if trip is not None and self._trips is not None:
            self._trips.lift(account)
            answer["lifted"] = trip.as_json()
            log.warning("trip_lifted", account=account.name, limit=trip.limit, mode=mode.value, by="admin")
            await self._journal_event(
                "trip_lifted",
                account,
                {"limit": trip.limit, "trip": trip.reason, "mode": mode.value, "by": "admin"},
            )
        return 200, answer

    async def kill(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        account = self._account(doc)
        bot = self._bot(account, doc)
        if bot is not None:
            return await self._kill_bot(account, bot)
        previous = account.mode
        # Halted now, and what was already forwarded is watched: the two in one step (see Halts.halt).
        flights = self._halts.halt(account)
        self._halts.follow(account, flights, why="kill")
        await self._change(account, Mode.HALTED, reason="kill", previous=previous)
        answer: dict[str, Any] = {
            "account": account.name,
            "mode": Mode.HALTED.value,
            "previous": previous.value,
            "in_flight": len(flights),
        }
        answer["exchange"], error = await self._halts.cancel_everything(account)
        if error is not None:
            answer["error"] = error
            log.error("admin_kill_cancel_failed", account=account.name, error=error)
            await self._journal_event(
                "admin_kill", account, {"cancel": "failed", "error": error, "in_flight": len(flights)}
            )
            return 502, answer
        log.warning("admin_kill", account=account.name, exchange=answer["exchange"], in_flight=len(flights))
        await self._journal_event(
            "admin_kill",
            account,
            {"cancel": "done", "exchange": answer["exchange"], "in_flight": len(flights)},
        )
        return 200, answer

    async def _kill_bot(self, account: Account, bot: str) -> tuple[int, dict[str, Any]]:
        """That bot halted, and exactly its open orders cancelled; its requests in flight followed (by
        cliOrdId where their outcome is unknown). Other bots trade on."""
        previous = account.bot_modes.get(bot, Mode.ACTIVE)
        flights = self._halts.halt(account, bot=bot)  # the bot's halt and its in-flight snapshot: one step
        self._halts.follow(account, flights, why=f"kill of bot {bot}", one_bot=True)
        await self._change_bot(account, bot, Mode.HALTED, reason="kill", previous=previous)
        done = await self._halts.cancel_bot(account, bot)
        answer: dict[str, Any] = {
            "account": account.name,
            "bot": bot,
            "mode": Mode.HALTED.value,
            "previous": previous.value,
            "in_flight": len(flights),
            **done,
        }
        failed = "error" in done or done["failed"]
        (log.error if failed else log.warning)("admin_kill", account=account.name, bot=bot, **done)
        await self._journal_event("admin_kill", account, {"bot": bot, "in_flight": len(flights), **done})
        return (502 if failed else 200), answer

    async def _change_bot(
        self, account: Account, bot: str, mode: Mode, *, reason: str, previous: Mode | None = None
    ) -> Mode:
        """One bot's mode, persisted (the journal's modes, under `account/bot`) before it is answered."""
        previous = account.bot_modes.get(bot, Mode.ACTIVE) if previous is None else previous
        if mode is Mode.HALTED:
            account.bot_modes[bot] = mode  # at once
        try:
            await self._journal.set_mode(
                bot_mode_key(account.name, bot), mode.value, by="admin", reason=reason
            )
        except JournalError as exc:
            if mode is not Mode.HALTED:
                raise AdminError(503, "journalUnavailable", f"the mode was not changed: {exc}") from None
            log.error("mode_not_persisted", account=account.name, bot=bot, mode=mode.value, error=str(exc))
        account.bot_modes[bot] = mode
        log.warning(
            "mode_changed",
            account=account.name,
            bot=bot,
            mode=mode.value,
            previous=previous.value,
            reason=reason,
        )
        return previous

    async def _change(
        self, account: Account, mode: Mode, *, reason: str, previous: Mode | None = None
    ) -> Mode:
        previous = account.mode if previous is None else previous
        account.mode_by = "admin"
        if mode is Mode.HALTED:
            account.mode = mode  # at once: requests arriving while it is persisted are refused already
        try:
            await self._journal.set_mode(account.name, mode.value, by="admin", reason=reason)
        except JournalError as exc:
            if mode is not Mode.HALTED:
                raise AdminError(503, "journalUnavailable", f"the mode was not changed: {exc}") from None
            # Halting is never refused: it only takes risk away. It holds until restart.
            log.error("mode_not_persisted", account=account.name, mode=mode.value, error=str(exc))
        account.mode = mode
        log.warning(
            "mode_changed", account=account.name, mode=mode.value, previous=previous.value, reason=reason
        )
        return previous

    async def _journal_event(self, kind: str, account: Account, detail: dict[str, Any]) -> None:
        try:
            await self._journal.event(kind, account.name, detail)
        except JournalError as exc:
            log.error("journal_event_failed", kind=kind, error=str(exc))


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = await read_capped(request, MAX_ADMIN_BODY)
    if body is None:
        raise AdminError(413, "requestTooLarge", f"the body is over {MAX_ADMIN_BODY} bytes")
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise AdminError(400, "invalidArgument", "the body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise AdminError(400, "invalidArgument", "the body must be a JSON object")
    return doc
