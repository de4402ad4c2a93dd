"""The simulator's public market data beyond tickers and the book, in Kraken's documented shapes:
instrument status, fee schedules, funding-rate history, candles built from the simulator's own price
walk, the public trade history and the market history events (`/api/history/v2|v3/market/...`), and the
open RFQs (which accounts make offers on through the private API, guardian.sim.preferences).

The simulator charges no funding, so every published funding rate is 0, as its tickers say.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from guardian.kraken.times import parse_iso, to_iso
from guardian.sim.exchange import Account, Exchange, SimError
from guardian.sim.market import Market

TICK_TYPES = ("spot", "mark", "trade")
RESOLUTIONS = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 14400,
    "12h": 43200,
    "1d": 86400,
    "1w": 604800,
}
FEE_SCHEDULE_UID = "sim-fee-schedule"  # the instruments' feeScheduleUid (guardian.sim.views)
FEE_TIERS = (
    {"makerFee": 0.02, "takerFee": 0.05, "usdVolume": 0.0},
    {"makerFee": 0.015, "takerFee": 0.04, "usdVolume": 100000.0},
)
MAX_CANDLES = 2000
FUNDING_PERIOD_S = 3600
FUNDING_HISTORY = 48  # hourly rates published, up to now
RFQ_SIZES = {"PF_XBTUSD": "1", "PF_ETHUSD": "10", "PF_SOLUSD": "100"}


@dataclass(frozen=True, slots=True)
class PricePoint:
    at: float  # exchange clock, epoch seconds
    mark: Decimal
    index: Decimal
    last: Decimal


@dataclass
class Rfq:
    uid: str
    symbol: str
    size: Decimal
    created: float
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)  # account -> its open offer

    def view(self) -> dict[str, Any]:
        return {
            "rfqUid": self.uid,
            "symbol": self.symbol,
            "size": float(self.size),
            "status": "open",
            "createdTime": to_iso(self.created),
        }


class MarketData:
    """The price walk as it happened (for candles and price events) and the open RFQs."""

    def __init__(self, exchange: Exchange, *, keep: int = 100_000) -> None:
        self.exchange = exchange
        self.points: dict[str, deque[PricePoint]] = {
            i.symbol: deque(maxlen=keep) for i in exchange.market.instruments
        }
        self.started = exchange.now()
        self.record()
        self.rfqs: dict[str, Rfq] = {}
        for instrument in exchange.market.instruments:
            rfq = Rfq(
                str(uuid.uuid4()),
                instrument.symbol,
                Decimal(RFQ_SIZES.get(instrument.symbol, "1")),
                self.started,
            )
            self.rfqs[rfq.uid] = rfq

    @property
    def market(self) -> Market:
        return self.exchange.market

    def record(self) -> None:
        """Keep the current prices (called after every step of the walk and every set mark)."""
        now = self.exchange.now()
        for symbol, quote in self.market.quotes.items():
            self.points[symbol].append(PricePoint(now, quote.mark, quote.index, quote.last))

    # ---- /derivatives/api/v3 and v4 ------------------------------------------------------------------
    def instrument_status(self, symbol: str | None = None) -> dict[str, Any]:
        rows = [
            {
                "tradeable": i.symbol,
                "experiencingDislocation": False,
                "priceDislocationDirection": None,
                "experiencingExtremeVolatility": False,
                "extremeVolatilityInitialMarginMultiplier": 1,
            }
            for i in self.market.instruments
        ]
        if symbol is None:
            return {"instrumentStatus": rows}
        found = [r for r in rows if r["tradeable"] == symbol.upper()]
        if not found:
            raise SimError("invalidArgument", f"unknown symbol {symbol}")
        return found[0]

    @staticmethod
    def fee_schedules() -> dict[str, Any]:
        return {
            "feeSchedules": [{"uid": FEE_SCHEDULE_UID, "name": "Simulator fees", "tiers": list(FEE_TIERS)}]
        }

    def funding_rates(self, symbol: str | None) -> dict[str, Any]:
        if not symbol:
            raise SimError("requiredArgumentMissing", "symbol is required")
        if self.market.instrument(symbol.upper()) is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol}")
        last = math.floor(self.exchange.now() / FUNDING_PERIOD_S) * FUNDING_PERIOD_S
        rates = [
            {"timestamp": to_iso(last - k * FUNDING_PERIOD_S), "fundingRate": 0.0, "relativeFundingRate": 0.0}
            for k in reversed(range(FUNDING_HISTORY))
        ]
        return {"rates": rates}

    def trade_history(self, accounts: Iterable[Account], symbol: str | None) -> dict[str, Any]:
        """`history`: the last trades in `symbol` (every account's fills: the other side is the market)."""
        if not symbol:
            raise SimError("requiredArgumentMissing", "symbol is required")
        fills = sorted(_fills(accounts, symbol.upper()), key=lambda f: f["fillTime"], reverse=True)[:100]
        return {
            "history": [
                {
                    "time": f["fillTime"],
                    "trade_id": n,
                    "price": f["price"],
                    "size": f["size"],
                    "side": f["side"],
                    "type": "fill",
                    "uid": f["fill_id"],
                }
                for n, f in enumerate(reversed(fills), 1)
            ][::-1]
        }

    def rfq_list(self) -> dict[str, Any]:
        return {"rfqs": [r.view() for r in self.rfqs.values()]}

    def rfq(self, uid: str) -> Rfq:
        found = self.rfqs.get(uid)
        if found is None:
            raise SimError("notFound", f"no open RFQ {uid}", http_status=404)
        return found

    # ---- /api/charts/v1 --------------------------------------------------------------------------------
    def charts(self, tick_type: str | None = None, symbol: str | None = None) -> list[str]:
        if tick_type is None:
            return list(TICK_TYPES)
        self._tick_type(tick_type)
        if symbol is None:
            return [i.symbol for i in self.market.instruments]
        self._symbol(symbol)
        return list(RESOLUTIONS)

    def candles(self, tick_type: str, symbol: str, resolution: str, fields: dict[str, str]) -> dict[str, Any]:
        self._tick_type(tick_type)
        symbol = self._symbol(symbol)
        step = RESOLUTIONS.get(resolution)
        if step is None:
            raise SimError("invalidArgument", f"resolution must be one of {', '.join(RESOLUTIONS)}")
        now = self.exchange.now()
        start = _seconds(fields.get("from"), now - step * MAX_CANDLES)
        end = _seconds(fields.get("to"), now)
        buckets: dict[int, list[Decimal]] = {}
        for point in self.points[symbol]:
            if start <= point.at <= end + step:
                price = {"mark": point.mark, "spot": point.index, "trade": point.last}[tick_type]
                buckets.setdefault(int(point.at // step) * step, []).append(price)
        keys = sorted(k for k in buckets if start - step < k <= end)[-MAX_CANDLES:]
        candles = [
            {
                "time": key * 1000,
                "open": str(buckets[key][0]),
                "high": str(max(buckets[key])),
                "low": str(min(buckets[key])),
                "close": str(buckets[key][-1]),
                "volume": 0 if tick_type == "trade" else None,
            }
            for key in keys
        ]
        for candle in candles:
            if candle["volume"] is None:
                del candle["volume"]
        return {"candles": candles, "more_candles": False}

    # ---- /api/history/v2|v3/market ----------------------------------------------------------------------
    def market_events(
        self, accounts: Iterable[Account], symbol: str, kind: str, fields: dict[str, str]
    ) -> dict[str, Any]:
        symbol = self._symbol(symbol)
        elements: list[dict[str, Any]]
        if kind == "price":
            elements = [
                {
                    "uid": f"{symbol}-{int(p.at * 1000)}",
                    "timestamp": int(p.at * 1000),
                    "event": {"price": str(p.mark)},
                }
                for p in self.points[symbol]
            ]
        else:
            elements = [_public_event(f, kind, self.market) for f in _fills(accounts, symbol)]
        elements.sort(key=lambda e: e["timestamp"], reverse=fields.get("sort", "desc") != "asc")
        since, before = fields.get("since"), fields.get("before")
        if since and since.isdigit():
            elements = [e for e in elements if e["timestamp"] >= int(since)]
        if before and before.isdigit():
            elements = [e for e in elements if e["timestamp"] < int(before)]
        count = int(fields["count"]) if fields.get("count", "").isdigit() else 1000
        elements = elements[: max(1, min(count, 1000))]
        return {"elements": elements, "len": len(elements)}

    # ---- checks ----------------------------------------------------------------------------------------
    @staticmethod
    def _tick_type(tick_type: str) -> None:
        if tick_type not in TICK_TYPES:
            raise SimError(
                "invalidArgument", f"tick type must be one of {', '.join(TICK_TYPES)}", http_status=400
            )

    def _symbol(self, symbol: str) -> str:
        instrument = self.market.instrument(symbol.upper())
        if instrument is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol}", http_status=400)
        return instrument.symbol


def _seconds(raw: str | None, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SimError("invalidArgument", "from and to are epoch seconds", http_status=400) from None
    if not math.isfinite(value):
        raise SimError("invalidArgument", "from and to are epoch seconds", http_status=400)
    return value


def _fills(accounts: Iterable[Account], symbol: str) -> list[dict[str, Any]]:
    return [f for acct in accounts for f in acct.fills if f["symbol"] == symbol]


def fill_ms(fill: Mapping[str, Any]) -> int:
    return int(parse_iso(fill["fillTime"]) * 1000)


def usd_value(market: Market, fill: Mapping[str, Any]) -> Decimal:
    """A fill's USD notional as its contract counts it (an inverse one: size x contract size)."""
    size, price = Decimal(str(fill["size"])), Decimal(str(fill["price"]))
    instrument = market.instrument(fill["symbol"])
    if instrument is None:
        return size * price
    return instrument.math.notional_usd(size, instrument.contract_size, price)


def _direction(side: str) -> str:
    return "Buy" if side == "buy" else "Sell"


def _public_order(fill: dict[str, Any], side: str, uid: str) -> dict[str, Any]:
    ms = str(fill_ms(fill))
    return {
        "uid": uid,
        "tradeable": fill["symbol"],
        "direction": _direction(side),
        "quantity": str(fill["size"]),
        "timestamp": ms,
        "limitPrice": str(fill["price"]),
        "orderType": "Limit",
        "reduceOnly": False,
        "lastUpdateTimestamp": ms,
    }


def _public_event(fill: dict[str, Any], kind: str, market: Market) -> dict[str, Any]:
    """A fill as the public market history shows it: no account, the other side a synthetic order."""
    ms = fill_ms(fill)
    other = "sell" if fill["side"] == "buy" else "buy"
    ours = _public_order(fill, fill["side"], fill["order_id"])
    theirs = _public_order(fill, other, str(uuid.uuid5(uuid.NAMESPACE_OID, fill["fill_id"])))
    maker, taker = (ours, theirs) if fill.get("fillType") == "maker" else (theirs, ours)
    if kind == "orders":
        return {
            "uid": fill["fill_id"],
            "timestamp": ms,
            "event": {"OrderPlaced": {"order": taker, "reason": "new_user_order", "reducedQuantity": ""}},
        }
    execution = {
        "uid": fill["fill_id"],
        "makerOrder": maker,
        "takerOrder": taker,
        "timestamp": str(ms),
        "quantity": str(fill["size"]),
        "price": str(fill["price"]),
        "markPrice": str(fill["price"]),
        "limitFilled": False,
        "usdValue": str(usd_value(market, fill)),
    }
    return {
        "uid": fill["fill_id"],
        "timestamp": ms,
        "event": {"Execution": {"execution": execution, "takerReducedQuantity": ""}},
    }
