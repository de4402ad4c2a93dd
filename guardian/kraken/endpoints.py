"""The one table of Kraken Futures endpoints.

The client, the simulator, the rate budget, the guard and the local router all read this table; no other
module lists endpoints. Each row says how the endpoint is called (method, path), what it costs and from
which budget, which permission a key needs for it, and what it can do to the account's risk.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from guardian.kraken.signing import signed_path

V3 = "/derivatives/api/v3/"
V4 = "/derivatives/api/v4/"
HISTORY = "/api/history/v2/"
HISTORY_V3 = "/api/history/v3/"
CHARTS = "/api/charts/v1/"
# The path prefixes guardian's local API serves Kraken endpoints under (the router's and the OpenAPI's).
PREFIXES = ("/derivatives/", "/api/")


class Permission(enum.Enum):
    """What a key must be allowed to do to call the endpoint."""

    PUBLIC = "public"  # no key at all
    READ = "read"  # read-only key suffices
    TRADE = "trade"  # full-access key: place and cancel orders, RFQ offers, the switch
    SETTINGS = "settings"  # account settings that shape risk: leverage, assignment program, ...
    FUNDS = "funds"  # moves money; guardian never forwards these


class Risk(enum.Enum):
    """What a call can do to the account's exposure."""

    NONE = "none"  # reads, public data
    OPENS = "opens"  # may add exposure: sendorder, editorder, RFQ offers, joining the assignment program
    REDUCES = "reduces"  # only takes exposure away: cancels, leaving the assignment program
    PER_ITEM = "per_item"  # batchorder: each item by its own kind, see BATCH_ITEM_RISK
    SETTING = "setting"  # changes how the account takes risk (leverage, PnL currency, self-trade rule)
    SWITCH = "switch"  # the dead man's switch itself
    FUNDS = "funds"  # moves money out of the trading account


class Pool(enum.Enum):
    """Which rate budget a call is charged to."""

    FREE = "free"  # public endpoints cost nothing at the exchange (guardian's public_rate_limit applies)
    DERIVATIVES = "derivatives"  # 500 per 10 s
    HISTORY = "history"  # 100 tokens, refilled 100 per 10 minutes


BATCH_ITEM_RISK: Mapping[str, Risk] = MappingProxyType(
    {"send": Risk.OPENS, "edit": Risk.OPENS, "cancel": Risk.REDUCES}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    method: str
    path: str
    pool: Pool
    cost: int
    permission: Permission
    risk: Risk
    # batchorder: each item adds this much to `cost`.
    cost_per_item: int = 0
    # A parameter whose presence changes the cost (fills with lastFillTime costs 25, not 2).
    cost_if_param: tuple[str, int] | None = None
    # Other HTTP methods real clients use for the same endpoint.
    other_methods: tuple[str, ...] = field(default=())
    # Public data only: identical reads within this many seconds are answered from one upstream call.
    cache_s: float = 0.0

    @property
    def signed_path(self) -> str:
        return signed_path(self.path)

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, *self.other_methods)

    @property
    def templated(self) -> bool:
        return "{" in self.path

    def cost_for(self, params: Mapping[str, str] | None = None, batch_items: int = 0) -> int:
        """The budget units this call costs, given its parameters and (for a batch) its item count."""
        if self.cost_if_param is not None and params and self.cost_if_param[0] in params:
            return self.cost_if_param[1]
        return self.cost + self.cost_per_item * batch_items


def _row(
    prefix: str,
    tail: str,
    method: str,
    cost: int,
    permission: Permission,
    risk: Risk = Risk.NONE,
    *,
    name: str | None = None,
    pool: Pool | None = None,
    **extra: object,
) -> Endpoint:
    if pool is None:
        pool = Pool.FREE if permission is Permission.PUBLIC else Pool.DERIVATIVES
    return Endpoint(name or tail, method, prefix + tail, pool, cost, permission, risk, **extra)  # type: ignore[arg-type]


def _v3(
    name: str, method: str, cost: int, permission: Permission, risk: Risk = Risk.NONE, **extra: object
) -> Endpoint:
    return _row(V3, name, method, cost, permission, risk, **extra)  # type: ignore[arg-type]


def _set(name: str, method: str, cost: int, permission: Permission, risk: Risk) -> Endpoint:
    """A second row for an endpoint whose other method changes something: `name:put`, `name:delete`."""
    return _row(V3, name, method, cost, permission, risk, name=f"{name}:{method.lower()}")


def _public(prefix: str, tail: str, cache_s: float, name: str | None = None) -> Endpoint:
    return _row(prefix, tail, "GET", 0, Permission.PUBLIC, name=name or tail, cache_s=cache_s)


def _history(tail: str, version: str = "v2") -> Endpoint:
    """Account history: its own pool of tokens (1 per request; Kraken does not publish per-call costs)."""
    prefix = HISTORY if version == "v2" else HISTORY_V3
    return _row(prefix, tail, "GET", 1, Permission.READ, name=f"history/{version}/{tail}", pool=Pool.HISTORY)


# Costs: Kraken publishes the costs of the order endpoints and the five reads listed in
# ../shared/kraken-futures.md; every other private /derivatives endpoint is charged 2 (a read) or 10
# (a change) here, an assumption on the safe side of "public endpoints cost nothing".
ENDPOINTS: tuple[Endpoint, ...] = (
    # Public market data (cache_s: identical reads within it are one upstream call).
    _v3("instruments", "GET", 0, Permission.PUBLIC, cache_s=30.0),
    _v3("instruments/status", "GET", 0, Permission.PUBLIC, cache_s=5.0),
    _v3("instruments/{symbol}/status", "GET", 0, Permission.PUBLIC, cache_s=5.0),
    _v3("tickers", "GET", 0, Permission.PUBLIC, cache_s=1.0),
    _v3("tickers/{symbol}", "GET", 0, Permission.PUBLIC, cache_s=1.0),  # one ticker: {"ticker": {...}}
    _v3("orderbook", "GET", 0, Permission.PUBLIC, cache_s=0.5),
    _v3("history", "GET", 0, Permission.PUBLIC, cache_s=1.0),  # recent public trades
    _v3("feeschedules", "GET", 0, Permission.PUBLIC, cache_s=60.0),
    _v3("historicalfundingrates", "GET", 0, Permission.PUBLIC, cache_s=30.0),
    _public(V4, "historicalfundingrates", 30.0, name="v4/historicalfundingrates"),
    _v3("rfqs", "GET", 0, Permission.PUBLIC, cache_s=1.0),
    _v3("rfqs/{rfqUid}", "GET", 0, Permission.PUBLIC, cache_s=1.0),
    # Candles and the charts catalogue.
    _public(CHARTS, "", 60.0, name="charts"),
    _public(CHARTS, "{tick_type}", 60.0, name="charts/{tick_type}"),
    _public(CHARTS, "{tick_type}/{symbol}", 60.0, name="charts/{tick_type}/{symbol}"),
    _public(
        CHARTS, "{tick_type}/{symbol}/{resolution}", 1.0, name="charts/{tick_type}/{symbol}/{resolution}"
    ),
    # Public market history (python-kraken-sdk reads v2, ccxt v3).
    *(
        _public(prefix, f"market/{{symbol}}/{kind}", 1.0, name=f"history/{version}/market/{{symbol}}/{kind}")
        for version, prefix in (("v2", HISTORY), ("v3", HISTORY_V3))
        for kind in ("executions", "orders", "price")
    ),
    # Orders.
    _v3("sendorder", "POST", 10, Permission.TRADE, Risk.OPENS),
    _v3("editorder", "POST", 10, Permission.TRADE, Risk.OPENS),
    _v3("cancelorder", "POST", 10, Permission.TRADE, Risk.REDUCES),
    _v3("cancelallorders", "POST", 25, Permission.TRADE, Risk.REDUCES),
    _v3("batchorder", "POST", 9, Permission.TRADE, Risk.PER_ITEM, cost_per_item=1),
    _v3("cancelallordersafter", "POST", 25, Permission.TRADE, Risk.SWITCH),
    # RFQ offers are orders: an offer can be filled at its price for the RFQ's size.
    _v3("rfqs/{rfqUid}/place-offer", "POST", 10, Permission.TRADE, Risk.OPENS),
    _v3("rfqs/{rfqUid}/replace-offer", "PUT", 10, Permission.TRADE, Risk.OPENS),
    _v3("rfqs/{rfqUid}/cancel-offer", "DELETE", 10, Permission.TRADE, Risk.REDUCES),
    # Account reads.
    _v3("accounts", "GET", 2, Permission.READ),
    _v3("openorders", "GET", 2, Permission.READ),
    _v3("openpositions", "GET", 2, Permission.READ),
    _v3("fills", "GET", 2, Permission.READ, cost_if_param=("lastFillTime", 25)),
    _v3("orders/status", "POST", 1, Permission.READ, other_methods=("GET",)),
    _v3("recentorders", "GET", 2, Permission.READ),
    _v3("notifications", "GET", 2, Permission.READ),
    _v3("initialmargin", "GET", 2, Permission.READ),
    _v3("initialmargin/maxordersize", "GET", 2, Permission.READ),
    _v3("feeschedules/volumes", "GET", 2, Permission.READ),
    _v3("unwindqueue", "GET", 2, Permission.READ),
    _v3("transfers", "GET", 2, Permission.READ),  # the history of transfers: a read
    _v3("rfqs/open-offers", "GET", 2, Permission.READ),
    _v3("subaccounts", "GET", 2, Permission.READ),
    _v3("subaccount/{uid}/trading-enabled", "GET", 2, Permission.READ),
    _v3("leveragepreferences", "GET", 2, Permission.READ),
    _v3("pnlpreferences", "GET", 2, Permission.READ),
    _v3("self-trade-strategy", "GET", 2, Permission.READ),
    _v3("assignmentprogram/current", "GET", 2, Permission.READ),
    _v3("assignmentprogram/history", "GET", 2, Permission.READ),
    _v3("rfq-assignment/max-leverage", "GET", 2, Permission.READ),
    # Account history (its own pool).
    _history("orders"),
    _history("triggers"),
    _history("executions"),
    _history("account-log"),
    _history("accountlogcsv"),
    _history("orders", "v3"),
    _history("triggers", "v3"),
    _history("executions", "v3"),
    _history("account-log", "v3"),
    _history("positions", "v3"),
    # Settings that shape risk: the `settings` permission, the mode, the switch gate, their limits.
    _set("leveragepreferences", "PUT", 10, Permission.SETTINGS, Risk.SETTING),
    _set("pnlpreferences", "PUT", 10, Permission.SETTINGS, Risk.SETTING),
    _set("self-trade-strategy", "PUT", 10, Permission.SETTINGS, Risk.SETTING),
    _set("rfq-assignment/max-leverage", "PUT", 10, Permission.SETTINGS, Risk.SETTING),
    _set("rfq-assignment/max-leverage", "DELETE", 10, Permission.SETTINGS, Risk.SETTING),
    _set("subaccount/{uid}/trading-enabled", "PUT", 10, Permission.SETTINGS, Risk.SETTING),
    _v3("assignmentprogram/add", "POST", 10, Permission.SETTINGS, Risk.OPENS),
    _v3("assignmentprogram/delete", "POST", 10, Permission.SETTINGS, Risk.REDUCES),
    # Money movement: listed so that everything can recognise and refuse it.
    _v3("transfer", "POST", 10, Permission.FUNDS, Risk.FUNDS),
    _v3("transfer/subaccount", "POST", 10, Permission.FUNDS, Risk.FUNDS),
    _v3("withdrawal", "POST", 100, Permission.FUNDS, Risk.FUNDS),
)

BY_NAME: Mapping[str, Endpoint] = MappingProxyType({e.name: e for e in ENDPOINTS})
_BY_PATH: dict[str, list[Endpoint]] = {}
for _e in ENDPOINTS:
    if not _e.templated:
        _BY_PATH.setdefault(_e.path, []).append(_e)
BY_PATH: Mapping[str, Endpoint] = MappingProxyType({p: rows[0] for p, rows in _BY_PATH.items()})
PATH_PART = "[A-Za-z0-9_.:-]{1,64}"  # what a `{name}` part of a templated path may hold
_TEMPLATES: tuple[tuple[re.Pattern[str], tuple[Endpoint, ...]], ...] = tuple(
    (
        re.compile("^" + re.sub(r"\\\{(\w+)\\\}", rf"(?P<\1>{PATH_PART})", re.escape(path)) + "$"),
        tuple(e for e in ENDPOINTS if e.path == path),
    )
    for path in dict.fromkeys(e.path for e in ENDPOINTS if e.templated)
)


def _rows(path: str) -> tuple[tuple[Endpoint, ...], dict[str, str]] | None:
    rows = _BY_PATH.get(path)
    if rows is not None:
        return tuple(rows), {}
    for pattern, found in _TEMPLATES:
        hit = pattern.match(path)
        if hit is not None:
            return found, hit.groupdict()
    return None


def match(path: str, method: str | None = None) -> tuple[Endpoint, dict[str, str]] | None:
    """The row a URL path (and method) addresses, with the values of any `{name}` parts of its template.

    With a method, the row that takes it; when none of the path's rows does, its first row (the caller
    refuses the method). None for a path that is no endpoint.
    """
    found = _rows(path)
    if found is None:
        return None
    rows, params = found
    if method is not None:
        for row in rows:
            if method in row.methods:
                return row, params
    return rows[0], params


def methods_at(path: str) -> tuple[str, ...]:
    """Every HTTP method some row takes at `path` (empty for an unknown path)."""
    found = _rows(path)
    return () if found is None else tuple(m for row in found[0] for m in row.methods)


def nearest(path: str) -> str:
    """The known endpoint path most like `path`, for a refusal that helps."""
    paths = list(dict.fromkeys(e.path for e in ENDPOINTS))
    close = difflib.get_close_matches(path, paths, n=1, cutoff=0.0)
    return close[0] if close else paths[0]


def endpoint(name: str) -> Endpoint:
    """The row for `name`; a KeyError names the unknown endpoint."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown Kraken Futures endpoint {name!r}") from None
