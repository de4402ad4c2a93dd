"""Public market data in Kraken's shapes: instruments, tickers, order book.

Per kind of contract, as Kraken's `instruments` reference shows them: linear ones (`flexible_futures`)
with `marginLevels` in `numNonContractUnits`; inverse ones (`futures_inverse`) with an `underlying`
(`rr_xbtusd`) and `marginLevels` in `contracts`; fixed maturities with a `lastTradingTime`, untradeable
once it has passed, and no funding fields (they pay none).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardian.kraken.times import to_iso
from guardian.sim.market import Market

OPENING_DATE = "2022-03-01T00:00:00.000Z"


def _f(value: Decimal) -> float | int:
    return int(value) if value == int(value) else float(value)


def instruments(market: Market, now: float | None = None) -> list[dict[str, Any]]:
    """`instruments`; `now` (the exchange's clock) decides whether a fixed maturity is still tradeable."""
    rows = []
    for inst in market.instruments:
        initial = Decimal(1) / inst.max_leverage
        unit = "contracts" if inst.inverse else "numNonContractUnits"
        levels = [
            {
                unit: 0,
                "initialMargin": _f(initial),
                "maintenanceMargin": _f(initial / 2),
            },
            {
                unit: 500_000,
                "initialMargin": _f(initial * 2),
                "maintenanceMargin": _f(initial),
            },
        ]
        expired = inst.symbol in market.settled or (now is not None and inst.expired(now))
        row: dict[str, Any] = {
            "symbol": inst.symbol,
            "type": inst.listed_type or inst.kind,
        }
        if inst.underlying is not None:
            row["underlying"] = inst.underlying
        if inst.last_trading_time is not None:
            row["lastTradingTime"] = to_iso(inst.last_trading_time)
        rows.append(
            {
                **row,
                "tradeable": not expired,
                "tickSize": _f(inst.tick_size),
                "contractSize": _f(inst.contract_size),
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
        if not inst.perpetual:
            del rows[-1]["fundingRateCoefficient"], rows[-1]["maxRelativeFundingRate"]
    return rows


def tickers(market: Market, now: float) -> list[dict[str, Any]]:
    rows = []
    for inst in market.instruments:
        q = market.quotes[inst.symbol]
        row: dict[str, Any] = {
            "tag": inst.tag,
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
        if not inst.perpetual:  # a fixed maturity pays no funding
            del row["fundingRate"], row["fundingRatePrediction"]
        rows.append(row)
    return rows


def orderbook(market: Market, symbol: str, depth: int = 10) -> dict[str, Any] | None:
    inst = market.instrument(symbol.upper())
    if inst is None:
        return None
    q = market.quotes[inst.symbol]
    bids = [[_f(q.bid - i * inst.tick_size), 10] for i in range(depth) if q.bid - i * inst.tick_size > 0]
    asks = [[_f(q.ask + i * inst.tick_size), 10] for i in range(depth)]
    return {"bids": bids, "asks": asks}
