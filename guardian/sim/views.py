"""Public market data in Kraken's shapes: instruments, tickers, order book."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardian.kraken.times import to_iso
from guardian.sim.market import Market

OPENING_DATE = "2022-03-01T00:00:00.000Z"


def _f(value: Decimal) -> float | int:
    return int(value) if value == int(value) else float(value)


def instruments(market: Market) -> list[dict[str, Any]]:
    rows = []
    for inst in market.instruments:
        initial = Decimal(1) / inst.max_leverage
        levels = [
            {
                "numNonContractUnits": 0,
                "initialMargin": _f(initial),
                "maintenanceMargin": _f(initial / 2),
            },
            {
                "numNonContractUnits": 500_000,
                "initialMargin": _f(initial * 2),
                "maintenanceMargin": _f(initial),
            },
        ]
        rows.append(
            {
                "symbol": inst.symbol,
                "type": "flexible_futures",
                "tradeable": True,
                "tickSize": _f(inst.tick_size),
                "contractSize": 1,
                "impactMidSize": 1,
                "maxPositionSize": _f(inst.max_position_size),
                "openingDate": OPENING_DATE,
                "marginLevels": levels,
                "retailMarginLevels": levels,
                "fundingRateCoefficient": 8,
                "maxRelativeFundingRate": 0.001,
                "contractValueTradePrecision": inst.size_precision,
                "postOnly": False,
                "feeScheduleUid": "sim-fee-schedule",
                "mtf": False,
                "base": inst.base,
                "quote": inst.quote,
                "pair": inst.pair,
                "category": "",
                "tags": [],
                "tradfi": False,
            }
        )
    return rows


def tickers(market: Market, now: float) -> list[dict[str, Any]]:
    rows = []
    for inst in market.instruments:
        q = market.quotes[inst.symbol]
        rows.append(
            {
                "tag": "perpetual",
                "pair": inst.pair,
                "symbol": inst.symbol,
                "markPrice": _f(q.mark),
                "bid": _f(q.bid),
                "bidSize": 10,
                "ask": _f(q.ask),
                "askSize": 10,
                "vol24h": 0,
                "volumeQuote": 0,
                "openInterest": 0,
                "open24h": _f(inst.initial_price),
                "high24h": _f(max(q.mark, inst.initial_price)),
                "low24h": _f(min(q.mark, inst.initial_price)),
                "last": _f(q.last),
                "lastTime": to_iso(now),
                "lastSize": 0,
                "suspended": q.suspended,
                "fundingRate": 0,
                "fundingRatePrediction": 0,
                "postOnly": False,
                "indexPrice": _f(q.index),
            }
        )
    return rows


def orderbook(market: Market, symbol: str, depth: int = 10) -> dict[str, Any] | None:
    inst = market.instrument(symbol.upper())
    if inst is None:
        return None
    q = market.quotes[inst.symbol]
    bids = [[_f(q.bid - i * inst.tick_size), 10] for i in range(depth) if q.bid - i * inst.tick_size > 0]
    asks = [[_f(q.ask + i * inst.tick_size), 10] for i in range(depth)]
    return {"bids": bids, "asks": asks}
