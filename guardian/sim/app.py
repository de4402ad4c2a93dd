"""The simulator's HTTP face: Kraken Futures' REST API on a loopback port, plus a control API.

Requests go through what the exchange does, in order: route by the endpoint table, injected faults,
parameter parsing, signature check, nonce rules, key permission, the cost budget, then the exchange
logic. Everything a test or a user needs to steer it is under `/_sim/` (faults, clock offset, marks,
the request log) and on the `Simulator` object itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from aiohttp import web

from guardian.kraken import endpoints as ep
from guardian.kraken.nonces import NonceWindow
from guardian.kraken.signing import post_data_candidates, verify
from guardian.kraken.times import parse_iso, to_iso
from guardian.kraken.wire import LIST_FIELDS, WireError, loads_strict, parse_batch, request_fields
from guardian.ratelimit import CostBudget
from guardian.secret import ApiSecret
from guardian.sim import figures, history
from guardian.sim.exchange import DEFAULT_MARGIN_BALANCES, Account, Exchange, SimError
from guardian.sim.faults import WS_ENDPOINT, Fault, FaultTable
from guardian.sim.market import Market, default_instruments
from guardian.sim.market_data import MarketData
from guardian.sim.preferences import Preferences
from guardian.sim.ws import StreamServer, StreamSettings

log = structlog.get_logger("guardian.sim")

PERMISSIONS = ("read", "trade", "funds")
CONTROL_PREFIX = "/_sim"
HISTORY_CAPACITY = 100.0  # the account-history pool: 100 tokens, refilled 100 per 10 minutes
HISTORY_WINDOW_S = 600.0
# Answered without Kraken's result/serverTime envelope, as Kraken answers them.
BARE_PREFIXES = ("charts", "history/")
WS_PATH = "/ws/v1"


@dataclass(frozen=True, slots=True)
class SimKey:
    """An API key the simulated exchange knows: which account it acts for and what it may do."""

    api_key: str
    secret: ApiSecret
    account: str = "main"
    permissions: frozenset[str] = frozenset({"read", "trade"})

    def __post_init__(self) -> None:
        unknown = set(self.permissions) - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permissions: {', '.join(sorted(unknown))}")

    def allows(self, permission: ep.Permission) -> bool:
        if permission is ep.Permission.PUBLIC:
            return True
        if permission is ep.Permission.READ:
            return bool({"read", "trade"} & self.permissions)
        if permission is ep.Permission.SETTINGS:  # Kraken keys have no such scope: a full-access key
            return "trade" in self.permissions
        return permission.value in self.permissions

    @classmethod
    def generate(cls, account: str = "main", permissions: Iterable[str] = ("read", "trade")) -> SimKey:
        import base64

        return cls(
            api_key=secrets.token_urlsafe(40)[:56],
            secret=ApiSecret(base64.b64encode(secrets.token_bytes(64)).decode()),
            account=account,
            permissions=frozenset(permissions),
        )


class Simulator:
    """A Kraken Futures stand-in. `await start()` listens; `await close()` stops everything it began."""

    def __init__(
        self,
        keys: Iterable[SimKey] = (),
        *,
        market: Market | None = None,
        tick_s: float | None = 1.0,
        budget_capacity: float = 500,
        budget_window_s: float = 10.0,
        rate_limit_status: int = 200,
        nonce_tolerance: int = 3000,
        control_token: str | None = None,
        clock: Callable[[], float] = time.time,
        maker_fee: Decimal = Decimal(0),
        taker_fee: Decimal = Decimal(0),
        book_depth: Decimal | None = None,
        stream: StreamSettings | None = None,
        margin_balances: Mapping[str, Decimal] = DEFAULT_MARGIN_BALANCES,
    ) -> None:
        # Without a market: the default set, its fixed maturities dated from this simulator's clock.
        self.exchange = Exchange(
            market or Market(instruments=default_instruments(clock())),
            clock=clock,
            maker_fee=maker_fee,
            taker_fee=taker_fee,
            book_depth=book_depth,
            margin_balances=margin_balances,
        )
        self.market_data = MarketData(self.exchange)  # the same exchange: its market, its clock
        self.preferences = Preferences(self.exchange, self.market_data)
        self.keys: dict[str, SimKey] = {}
        for key in keys:
            self.add_key(key)
        self.faults = FaultTable()
        self.tick_s = tick_s
        self.budget_capacity = budget_capacity
        self.budget_window_s = budget_window_s
        self.rate_limit_status = rate_limit_status
        self.nonce_tolerance = nonce_tolerance
        self._control_token = control_token
        self._budgets: dict[str, CostBudget] = {}
        self._history_budgets: dict[str, CostBudget] = {}
        self.history_capacity = HISTORY_CAPACITY
        self._nonces: dict[str, NonceWindow] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._release = asyncio.Event()
        self.requests: deque[dict[str, Any]] = deque(maxlen=20_000)
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.url = ""
        self.ws_url = ""
        self.stream = StreamServer(self.exchange, self.keys, stream or StreamSettings(), self.faults)
        self.app = self._build_app()

    # ---- lifecycle --------------------------------------------------------------------------------
    def add_key(self, key: SimKey) -> None:
        self.keys[key.api_key] = key
        self.exchange.account(key.account)

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on host:port (0: any free port), over TLS with `ssl_context`; returns the base URL.
        The WebSocket is on the same port: `ws_url`."""
        self._release = asyncio.Event()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[0]
        secure = "s" if ssl_context is not None else ""
        self.url = f"http{secure}://{bound[0]}:{bound[1]}"
        self.ws_url = f"ws{secure}://{bound[0]}:{bound[1]}{WS_PATH}"
        if self.tick_s:
            self._ticker = asyncio.create_task(self._tick_forever(self.tick_s), name="sim-ticker")
        log.info("sim_listening", url=self.url, accounts=sorted(self.exchange.accounts))
        return self.url

    async def close(self) -> None:
        self._release.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _tick_forever(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            self.step()

    def step(self, steps: int = 1) -> None:
        """Move every mark `steps` random-walk steps and let resting and trigger orders react."""
        for _ in range(steps):
            self.exchange.expire_due()  # at the marks of the moment, before they move
            self.exchange.market.step()
            self.exchange.on_prices()
            self.market_data.record()

    # ---- switch timers (the real countdown) -------------------------------------------------------
    def _arm(self, acct: Account, timeout_s: int) -> dict[str, str]:
        answer = self.exchange.arm_switch(acct, timeout_s)
        old = self._timers.pop(acct.name, None)
        if old is not None:
            old.cancel()
        if timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._timers[acct.name] = loop.call_later(timeout_s, self._expire, acct.name)
        return answer

    def _expire(self, account: str) -> None:
        self._timers.pop(account, None)
        acct = self.exchange.accounts[account]
        cancelled = self.exchange.fire_switch(acct)
        log.warning("sim_dead_man_switch_fired", account=account, cancelled=cancelled)

    def switch_remaining(self, account: str) -> float | None:
        """Seconds until the account's countdown fires, on the monotonic clock; None when off."""
        handle = self._timers.get(account)
        if handle is None:
            return None
        return max(0.0, handle.when() - asyncio.get_running_loop().time())

    def budget(self, account: str) -> CostBudget:
        if account not in self._budgets:
            self._budgets[account] = CostBudget(self.budget_capacity, self.budget_window_s)
        return self._budgets[account]

    def history_budget(self, account: str) -> CostBudget:
        if account not in self._history_budgets:
            self._history_budgets[account] = CostBudget(self.history_capacity, HISTORY_WINDOW_S)
        return self._history_budgets[account]

    def release_hangs(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    # ---- HTTP -------------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        for prefix in ep.PREFIXES:
            app.router.add_route("*", prefix + "{tail:.*}", self._handle)
        app.router.add_get(WS_PATH, self.stream.handle)
        control = [
            ("GET", "/state", self._ctl_state),
            ("POST", "/faults", self._ctl_add_fault),
            ("DELETE", "/faults", self._ctl_clear_faults),
            ("POST", "/clock", self._ctl_clock),
            ("POST", "/mark", self._ctl_mark),
            ("POST", "/suspend", self._ctl_suspend),
            ("POST", "/step", self._ctl_step),
            ("GET", "/requests", self._ctl_requests),
            ("POST", "/notices", self._ctl_notice),
            ("DELETE", "/notices", self._ctl_clear_notices),
            ("GET", "/ws", self._ctl_ws),
            ("POST", "/ws/drop", self._ctl_ws_drop),
            ("POST", "/ws/stall", self._ctl_ws_stall),
            ("DELETE", "/ws/stall", self._ctl_ws_stall),
            ("POST", "/ws/refuse", self._ctl_ws_refuse),
            ("DELETE", "/ws/refuse", self._ctl_ws_refuse),
        ]
        for method, path, handler in control:
            app.router.add_route(method, CONTROL_PREFIX + path, self._control(handler))
        return app

    def _envelope(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"result": "success", **payload, "serverTime": self.exchange.server_time()}

    def _error(self, code: str, status: int = 200) -> web.Response:
        body = {"result": "error", "serverTime": self.exchange.server_time(), "error": code}
        return web.json_response(body, status=status)

    def _record(self, entry: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        entry = {"seq": self._seq, "time": to_iso(time.time()), **entry}
        self.requests.append(entry)
        return entry

    def requests_for(self, endpoint: str) -> list[dict[str, Any]]:
        """Requests the simulator received for `endpoint` (by table name), oldest first."""
        return [r for r in self.requests if r["endpoint"] == endpoint]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        routed = ep.match(request.path, request.method)
        if routed is None:
            return self._error("notFound", 404)
        endpoint, path_params = routed
        if request.method not in endpoint.methods:
            return self._error("notFound", 405)
        entry = self._record(
            {
                "endpoint": endpoint.name,
                "method": request.method,
                "api_key": request.headers.get("APIKey"),
                "outcome": None,
            }
        )
        with contextlib.suppress(ConnectionError):
            await request.read()  # received whole before any fault: a slow exchange still acts on it
        response = await self._inject(
            request, endpoint.name, lambda: self._answer(request, endpoint, path_params, entry)
        )
        if response is None:
            response = await self._answer(request, endpoint, path_params, entry)
        entry["http_status"] = response.status
        return response

    async def _inject(
        self, request: web.Request, name: str, act: Callable[[], Awaitable[web.Response]]
    ) -> web.StreamResponse | None:
        fault = self.faults.take(name)
        if fault is None:
            return None
        log.info("sim_fault_injected", endpoint=name, kind=fault.kind)
        if fault.kind == "latency":
            await asyncio.sleep(fault.latency_s)
            return None
        if fault.kind == "lose":
            await act()  # done at the exchange; the answer never leaves
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=3600)
            return self._error("Unavailable", 503)
        if fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=3600)
            return self._error("Unavailable", 503)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("dropped by fault injection")
        if fault.kind == "status":
            return web.Response(
                status=fault.status,
                text="<html>Service Unavailable</html>",
                content_type="text/html",
            )
        return self._error(fault.code, fault.status)

    async def _answer(
        self, request: web.Request, endpoint: ep.Endpoint, path_params: dict[str, str], entry: dict[str, Any]
    ) -> web.Response:
        """One place records the outcome: every refusal below is a SimError or WireError."""
        try:
            payload = await self._serve(request, endpoint, path_params, entry)
        except (SimError, WireError) as exc:
            entry["outcome"] = "error"
            entry["error"] = exc.code
            return self._error(exc.code, exc.http_status if isinstance(exc, SimError) else 200)
        entry["outcome"] = "success"
        if isinstance(payload, str):
            return web.Response(text=payload, content_type="text/csv")
        if not isinstance(payload, dict) or endpoint.name.startswith(BARE_PREFIXES):
            return web.json_response(payload)
        return web.json_response(self._envelope(payload))

    async def _serve(
        self, request: web.Request, endpoint: ep.Endpoint, path_params: dict[str, str], entry: dict[str, Any]
    ) -> dict[str, Any] | list[Any] | str:
        query = request.rel_url.raw_query_string
        try:
            body = (await request.read()).decode()
        except UnicodeDecodeError:
            raise SimError("invalidArgument", "the body is not UTF-8") from None
        is_json = body.lstrip().startswith("{") and endpoint.name != "batchorder"
        fields = request_fields(query, "" if is_json else body, LIST_FIELDS)
        if is_json:
            fields.update(_json_fields(body))
        entry["fields"] = fields
        self.exchange.expire_due()  # a clock that passed a last trading time: settle before answering
        if endpoint.permission is ep.Permission.PUBLIC:
            return self._public(endpoint.name, {**fields, **path_params})
        key = self.keys.get(request.headers.get("APIKey", ""))
        nonce = request.headers.get("Nonce")
        if key is None or not verify(
            key.secret.key_bytes(),
            post_data_candidates(query, body),
            nonce,
            request.path,
            request.headers.get("Authent"),
        ):
            raise SimError("authenticationError")
        if nonce is not None:
            if not (nonce.isascii() and nonce.isdigit()) or len(nonce) > 20:
                raise SimError("invalidArgument", "the nonce is not a number")
            problem = self._nonces.setdefault(key.api_key, NonceWindow()).check(
                int(nonce), self.nonce_tolerance
            )
            if problem is not None:
                raise SimError(problem)
        if not key.allows(endpoint.permission):
            raise SimError("authenticationError")
        acct = self.exchange.accounts[key.account]
        items, doc = parse_batch(fields) if endpoint.name == "batchorder" else ([], {})
        pool = self.history_budget(acct.name) if endpoint.pool is ep.Pool.HISTORY else self.budget(acct.name)
        if not pool.try_spend(endpoint.cost_for(fields, len(items))):
            raise SimError("apiLimitExceeded", http_status=self.rate_limit_status)
        if endpoint.name == "batchorder":
            return {"batchStatus": self._batch(acct, fields, items, doc)}
        if endpoint.pool is ep.Pool.HISTORY:
            return self._history(endpoint.name, acct, fields)
        if endpoint.name in _PREFERENCE_READS:
            return self.preferences.read(endpoint.name, acct, fields, path_params)
        if endpoint.permission is ep.Permission.SETTINGS or endpoint.name.startswith("rfqs/{rfqUid}/"):
            return self.preferences.change(endpoint.name, acct, fields, path_params)
        return self._private(endpoint.name, acct, fields)

    # ---- endpoint payloads ------------------------------------------------------------------------
    def _history(self, name: str, acct: Account, fields: dict[str, str]) -> dict[str, Any] | str:
        kind = name.rsplit("/", 1)[1]
        market = self.exchange.market
        if kind == "accountlogcsv":
            return history.account_log_csv(acct, market)
        if kind == "account-log":
            return history.account_log_payload(acct, market, fields)
        return history.events(acct, market, kind, fields)

    def _public(self, name: str, fields: dict[str, str]) -> dict[str, Any] | list[Any]:
        from guardian.sim import views

        data = self.market_data
        accounts = self.exchange.accounts.values()
        if name == "instruments/status":
            return data.instrument_status()
        if name == "instruments/{symbol}/status":
            return data.instrument_status(fields["symbol"])
        if name == "feeschedules":
            return data.fee_schedules()
        if name in ("historicalfundingrates", "v4/historicalfundingrates"):
            return data.funding_rates(fields.get("symbol"))
        if name == "history":
            return data.trade_history(accounts, fields.get("symbol"))
        if name == "rfqs":
            return data.rfq_list()
        if name == "rfqs/{rfqUid}":
            return {"rfq": data.rfq(fields["rfqUid"]).view()}
        if name.startswith("charts"):
            if name == "charts/{tick_type}/{symbol}/{resolution}":
                return data.candles(fields["tick_type"], fields["symbol"], fields["resolution"], fields)
            return data.charts(fields.get("tick_type"), fields.get("symbol"))
        if name.startswith("history/"):
            return data.market_events(accounts, fields["symbol"], name.rsplit("/", 1)[1], fields)
        market = self.exchange.market
        if name == "instruments":
            return {"instruments": views.instruments(market, self.exchange.now())}
        if name == "tickers":
            return {"tickers": views.tickers(market, self.exchange.now())}
        if name == "tickers/{symbol}":
            wanted = fields["symbol"].upper()
            rows = [t for t in views.tickers(market, self.exchange.now()) if t["symbol"] == wanted]
            if not rows:
                raise SimError("invalidArgument", f"unknown symbol {wanted}")
            return {"ticker": rows[0]}
        symbol = fields.get("symbol")
        if not symbol:
            raise SimError("requiredArgumentMissing", "orderbook needs a symbol")
        book = views.orderbook(market, symbol)
        if book is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol}")
        return {"orderBook": book}

    def _private(self, name: str, acct: Account, fields: dict[str, str]) -> dict[str, Any]:
        exchange = self.exchange
        if name == "sendorder":
            return {"sendStatus": exchange.send_order(acct, fields)}
        if name == "editorder":
            return {"editStatus": exchange.edit_order(acct, fields)}
        if name == "cancelorder":
            return {"cancelStatus": exchange.cancel_order(acct, fields)}
        if name == "cancelallorders":
            return {"cancelStatus": exchange.cancel_all(acct, fields.get("symbol") or None)}
        if name == "cancelallordersafter":
            return {"status": self._arm(acct, _timeout(fields))}
        if name == "accounts":
            return {"accounts": exchange.accounts_payload(acct)}
        if name == "openorders":
            return {"openOrders": exchange.open_orders_payload(acct)}
        if name == "openpositions":
            return {"openPositions": exchange.open_positions_payload(acct)}
        if name == "fills":
            return {"fills": exchange.fills_payload(acct, fields.get("lastFillTime") or None)}
        if name == "notifications":
            return {"notifications": exchange.notifications_payload()}
        if name == "orders/status":
            ids = _id_list(fields, "orderIds"), _id_list(fields, "cliOrdIds")
            return {"orders": exchange.order_status_payload(acct, *ids)}
        if name == "recentorders":
            return {"orderEvents": history.recent_orders(acct)}
        if name in ("transfer", "transfer/subaccount", "withdrawal"):
            return _funds(name, fields)
        raise SimError("notFound")  # pragma: no cover - every table row is handled above

    def _batch(
        self, acct: Account, fields: dict[str, str], items: list[dict[str, Any]], doc: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """A batch, unless its processBefore (form field or JSON, either capitalisation) has passed."""
        given = (
            fields.get("processBefore"),
            fields.get("ProcessBefore"),
            doc.get("processBefore"),
            doc.get("ProcessBefore"),
        )
        deadline = next((str(v) for v in given if v), None)
        if deadline is not None:
            try:
                late = parse_iso(deadline) < self.exchange.now()
            except ValueError:
                raise SimError("invalidArgument", "processBefore is not an ISO 8601 time") from None
            if late:
                keep = ("order_tag", "order_id", "cliOrdId")
                return [
                    {
                        "status": "wouldProcessAfterSpecifiedTime",
                        "orderEvents": [],
                        **{k: item[k] for k in keep if k in item},
                    }
                    for item in items
                ]
        return self.exchange.batch(acct, items)

    # ---- control API ------------------------------------------------------------------------------
    def _control(
        self, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            if self._control_token is not None:
                presented = request.headers.get("Authorization", "")
                if not secrets.compare_digest(presented, f"Bearer {self._control_token}"):
                    return web.json_response({"error": "unauthorized"}, status=401)
            try:
                return await handler(request)
            except (ValueError, KeyError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)

        return guarded

    async def _json(self, request: web.Request) -> dict[str, Any]:
        doc = loads_strict(await request.read() or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        return doc

    async def _ctl_state(self, request: web.Request) -> web.Response:
        self.exchange.expire_due()
        accounts = {}
        for name, acct in self.exchange.accounts.items():
            remaining = self.switch_remaining(name)
            accounts[name] = {
                "switch": {
                    "armed": remaining is not None,
                    "remaining_s": remaining,
                    "trigger_time": to_iso(acct.switch_trigger_at) if acct.switch_trigger_at else None,
                    "fired": acct.switch_fired,
                },
                "open_orders": self.exchange.open_orders_payload(acct),
                "positions": self.exchange.open_positions_payload(acct),
                "budget_available": self.budget(name).available(),
                "balance": float(acct.balance),
                "realized_pnl": float(acct.realized_pnl),
                "fees": float(acct.fees),
                **figures.account_figures(self.exchange, acct),
            }
        marks = {s: float(q.mark) for s, q in self.exchange.market.quotes.items()}
        return web.json_response(
            {
                "serverTime": self.exchange.server_time(),
                "clock_offset_s": self.exchange.clock_offset_s,
                "faults": self.faults.snapshot(),
                "marks": marks,
                "accounts": accounts,
                "instruments": figures.instrument_figures(self.exchange),
                "settlements": figures.settlement_figures(self.exchange),
            }
        )

    async def _ctl_add_fault(self, request: web.Request) -> web.Response:
        fault = Fault.from_json(await self._json(request))
        if fault.endpoint not in ("*", WS_ENDPOINT) and fault.endpoint not in ep.BY_NAME:
            raise ValueError(f"unknown endpoint {fault.endpoint!r}")
        self.faults.add(fault)
        return web.json_response({"faults": self.faults.snapshot()})

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear(request.query.get("endpoint"))
        self.release_hangs()
        return web.json_response({"faults": self.faults.snapshot()})

    async def _ctl_clock(self, request: web.Request) -> web.Response:
        offset = float((await self._json(request))["offset_s"])
        if abs(offset) > 10 * 365 * 86400:
            raise ValueError("offset_s is out of range")
        self.exchange.clock_offset_s = offset
        self.exchange.expire_due()
        return web.json_response({"clock_offset_s": offset, "serverTime": self.exchange.server_time()})

    async def _ctl_mark(self, request: web.Request) -> web.Response:
        from decimal import Decimal

        doc = await self._json(request)
        quote = self.exchange.market.set_mark(str(doc["symbol"]), Decimal(str(doc["price"])))
        self.exchange.on_prices()
        self.market_data.record()
        return web.json_response({"symbol": doc["symbol"], "mark": float(quote.mark)})

    async def _ctl_suspend(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        self.exchange.market.set_suspended(str(doc["symbol"]), bool(doc.get("suspended", True)))
        return web.json_response({"symbol": doc["symbol"], "suspended": bool(doc.get("suspended", True))})

    async def _ctl_step(self, request: web.Request) -> web.Response:
        steps = int((await self._json(request)).get("steps", 1))
        if not 1 <= steps <= 10_000:
            raise ValueError("steps must be between 1 and 10000")
        self.step(steps)
        return web.json_response(
            {"marks": {s: float(q.mark) for s, q in self.exchange.market.quotes.items()}}
        )

    async def _ctl_notice(self, request: web.Request) -> web.Response:
        doc = await self._json(request)
        unknown = set(doc) - {"note", "type", "priority", "effective_time", "expected_downtime_minutes"}
        if unknown:
            raise ValueError(f"unknown notice fields: {', '.join(sorted(unknown))}")
        when = doc.get("effective_time")
        if isinstance(when, str):
            when = int(parse_iso(when) * 1000)
        downtime = doc.get("expected_downtime_minutes")
        notice = self.exchange.post_notice(
            note=str(doc.get("note", "")),
            notice_type=str(doc.get("type", "general")),
            priority=str(doc.get("priority", "low")),
            effective_time_ms=None if when is None else int(when),
            expected_downtime_minutes=None if downtime is None else int(downtime),
        )
        return web.json_response({"notice": notice, "notices": len(self.exchange.notices)})

    async def _ctl_clear_notices(self, request: web.Request) -> web.Response:
        self.exchange.clear_notices()
        return web.json_response({"notices": 0})

    async def _ctl_ws(self, request: web.Request) -> web.Response:
        return web.json_response(self.stream.state())

    async def _ctl_ws_drop(self, request: web.Request) -> web.Response:
        mode = str((await self._json(request)).get("mode", "abort"))
        if mode not in ("abort", "close"):
            raise ValueError("mode must be abort (no close frame) or close (close code 1001)")
        return web.json_response({"dropped": self.stream.drop_all(clean=mode == "close")})

    async def _ctl_ws_stall(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.json_response({"stalled": True, "connections": self.stream.stall()})
        return web.json_response({"stalled": False, "connections": self.stream.resume()})

    async def _ctl_ws_refuse(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.stream.accept()
            return web.json_response({"refusing": None})
        reason = str((await self._json(request)).get("reason", "Failed to subscribe to authenticated feed"))
        if not reason or len(reason) > 500:
            raise ValueError("reason must be 1 to 500 characters")
        self.stream.refuse(reason)
        return web.json_response({"refusing": reason})

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"requests": [r for r in self.requests if r["seq"] > since]})


def _timeout(fields: dict[str, str]) -> int:
    raw = fields.get("timeout")
    if raw is None or raw == "":
        raise SimError("requiredArgumentMissing", "timeout is required")
    if not raw.isdigit() or int(raw) > 2**32 - 1:
        raise SimError("invalidArgument", "timeout must be whole seconds (0 to 4294967295)")
    return int(raw)


def _id_list(fields: dict[str, str], name: str) -> list[str]:
    """An id list as clients send it: repeated or comma-separated parameters, or a JSON array."""
    text = fields.get(name, "")
    if text.startswith("["):
        try:
            doc = loads_strict(text)
        except ValueError:
            raise SimError("invalidArgument", f"{name} is not a list") from None
        if not isinstance(doc, list):
            raise SimError("invalidArgument", f"{name} is not a list")
        return [str(v) for v in doc]
    return [part for part in text.split(",") if part]


def _funds(name: str, fields: dict[str, str]) -> dict[str, Any]:
    """Money movement is accepted after its fields are checked and otherwise ignored: nothing to move."""
    required = {
        "transfer": ("fromAccount", "toAccount", "unit", "amount"),
        "transfer/subaccount": ("fromUser", "toUser", "fromAccount", "toAccount", "unit", "amount"),
        "withdrawal": ("currency", "amount"),
    }[name]
    missing = [f for f in required if not fields.get(f)]
    if missing:
        raise SimError("requiredArgumentMissing", f"missing {', '.join(missing)}")
    return {}


_PREFERENCE_READS = frozenset(
    row.name
    for row in ep.ENDPOINTS
    if row.permission is ep.Permission.READ
    and row.pool is ep.Pool.DERIVATIVES
    and row.name
    not in (
        "accounts",
        "openorders",
        "openpositions",
        "fills",
        "orders/status",
        "recentorders",
        "notifications",
    )
)


def _json_fields(body: str) -> dict[str, str]:
    """A JSON object body's fields as a form would carry them (Kraken's newer reference shows JSON)."""
    try:
        doc = loads_strict(body)
    except ValueError:
        raise SimError("Json Parse Error", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise SimError("invalidArgument", "the JSON body must be an object")
    return {
        str(k): ("true" if v else "false") if isinstance(v, bool) else str(v)
        for k, v in doc.items()
        if v is not None
    }
