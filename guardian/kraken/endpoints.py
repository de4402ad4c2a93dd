"""The one table of Kraken Futures endpoints.

The client, the simulator, the rate budget, the guard and the local router all read this table; no other
module lists endpoints. Each row says how the endpoint is called (method, path), what it costs and from
which budget, which permission a key needs for it, and what it can do to the account's risk.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from guardian.kraken.signing import signed_path

V3 = "/derivatives/api/v3/"
HISTORY = "/api/history/v2/"


class Permission(enum.Enum):
    """What a key must be allowed to do to call the endpoint."""

    PUBLIC = "public"  # no key at all
    READ = "read"  # read-only key suffices
    TRADE = "trade"  # full-access key: place and cancel orders, the switch
    FUNDS = "funds"  # moves money; guardian never forwards these


class Risk(enum.Enum):
    """What a call can do to the account's exposure."""

    NONE = "none"  # reads, public data
    OPENS = "opens"  # may add exposure: sendorder, editorder
    REDUCES = "reduces"  # only takes exposure away: cancels
    PER_ITEM = "per_item"  # batchorder: each item by its own kind, see BATCH_ITEM_RISK
    SWITCH = "switch"  # the dead man's switch itself
    FUNDS = "funds"  # moves money out of the trading account


class Pool(enum.Enum):
    """Which rate budget a call is charged to."""

    FREE = "free"  # public endpoints cost nothing
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

    @property
    def signed_path(self) -> str:
        return signed_path(self.path)

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, *self.other_methods)

    def cost_for(self, params: Mapping[str, str] | None = None, batch_items: int = 0) -> int:
        """The budget units this call costs, given its parameters and (for a batch) its item count."""
        if self.cost_if_param is not None and params and self.cost_if_param[0] in params:
            return self.cost_if_param[1]
        return self.cost + self.cost_per_item * batch_items


def _v3(
    name: str,
    method: str,
    cost: int,
    permission: Permission,
    risk: Risk = Risk.NONE,
    **extra: object,
) -> Endpoint:
    pool = Pool.FREE if permission is Permission.PUBLIC else Pool.DERIVATIVES
    return Endpoint(name, method, V3 + name, pool, cost, permission, risk, **extra)  # type: ignore[arg-type]


ENDPOINTS: tuple[Endpoint, ...] = (
    # Public market data.
    _v3("instruments", "GET", 0, Permission.PUBLIC),
    _v3("tickers", "GET", 0, Permission.PUBLIC),
    _v3("tickers/{symbol}", "GET", 0, Permission.PUBLIC),  # one ticker: {"ticker": {...}}
    _v3("orderbook", "GET", 0, Permission.PUBLIC),
    # Orders.
    _v3("sendorder", "POST", 10, Permission.TRADE, Risk.OPENS),
    _v3("editorder", "POST", 10, Permission.TRADE, Risk.OPENS),
    _v3("cancelorder", "POST", 10, Permission.TRADE, Risk.REDUCES),
    _v3("cancelallorders", "POST", 25, Permission.TRADE, Risk.REDUCES),
    _v3("batchorder", "POST", 9, Permission.TRADE, Risk.PER_ITEM, cost_per_item=1),
    _v3("cancelallordersafter", "POST", 25, Permission.TRADE, Risk.SWITCH),
    # Account reads.
    _v3("accounts", "GET", 2, Permission.READ),
    _v3("openorders", "GET", 2, Permission.READ),
    _v3("openpositions", "GET", 2, Permission.READ),
    _v3("fills", "GET", 2, Permission.READ, cost_if_param=("lastFillTime", 25)),
    _v3("orders/status", "POST", 1, Permission.READ, other_methods=("GET",)),
    # Exchange notices (maintenance, settlement...). Cost unconfirmed: ccxt weighs it like accounts.
    _v3("notifications", "GET", 2, Permission.READ),
    # Money movement: listed so that everything can recognise and refuse it.
    _v3("transfer", "POST", 10, Permission.FUNDS, Risk.FUNDS),
    _v3("transfer/subaccount", "POST", 10, Permission.FUNDS, Risk.FUNDS),
    _v3("withdrawal", "POST", 100, Permission.FUNDS, Risk.FUNDS),
)

BY_NAME: Mapping[str, Endpoint] = MappingProxyType({e.name: e for e in ENDPOINTS})
BY_PATH: Mapping[str, Endpoint] = MappingProxyType({e.path: e for e in ENDPOINTS if "{" not in e.path})
_TEMPLATES: tuple[tuple[re.Pattern[str], Endpoint], ...] = tuple(
    (re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[A-Za-z0-9_.:-]{1,64})", re.escape(e.path)) + "$"), e)
    for e in ENDPOINTS
    if "{" in e.path
)


def match(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The row a URL path addresses, with the values of any `{name}` parts of its template."""
    found = BY_PATH.get(path)
    if found is not None:
        return found, {}
    for pattern, row in _TEMPLATES:
        hit = pattern.match(path)
        if hit is not None:
            return row, hit.groupdict()
    return None


def endpoint(name: str) -> Endpoint:
    """The row for `name`; a KeyError names the unknown endpoint."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown Kraken Futures endpoint {name!r}") from None
