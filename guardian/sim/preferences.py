"""The simulator's account settings and the private reads around them, in Kraken's shapes: leverage
preferences (which change the margin the exchange computes), PnL currency preferences, the self-trade
strategy, the assignment program, the off-book (RFQ and assignment) leverage cap, offers on open RFQs,
subaccounts, the unwind queue, initial margin and maximum order size, fee volumes.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from guardian.kraken.times import to_iso
from guardian.sim.exchange import Account, Exchange, SimError
from guardian.sim.market_data import FEE_SCHEDULE_UID, MarketData

SELF_TRADE_STRATEGIES = ("REJECT_TAKER", "CANCEL_MAKER_SELF", "CANCEL_MAKER_CHILD", "CANCEL_MAKER_ANY")
SUBACCOUNT_UID = "7f8c1f9e-0000-4000-8000-000000005ab1"  # the one subaccount every simulated account has


@dataclass
class Settings:
    """One account's settings at the simulated exchange."""

    pnl: dict[str, str] = field(default_factory=dict)
    self_trade: str = "REJECT_TAKER"
    assignments: dict[int, dict[str, Any]] = field(default_factory=dict)
    assignment_history: list[dict[str, Any]] = field(default_factory=list)
    offbook_max_leverage: float | None = None
    subaccount_trading: dict[str, bool] = field(default_factory=lambda: {SUBACCOUNT_UID: True})


class Preferences:
    """Every account's settings and RFQ offers; the HTTP layer calls `read` and `change`."""

    def __init__(self, exchange: Exchange, market_data: MarketData) -> None:
        self.exchange = exchange
        self.market_data = market_data
        self._settings: dict[str, Settings] = {}
        self._ids = itertools.count(1)

    def of(self, acct: Account) -> Settings:
        return self._settings.setdefault(acct.name, Settings())

    # ---- reads ----------------------------------------------------------------------------------------
    def read(
        self, name: str, acct: Account, fields: Mapping[str, str], params: Mapping[str, str]
    ) -> dict[str, Any]:
        mine = self.of(acct)
        if name == "leveragepreferences":
            return {
                "leveragePreferences": [
                    {"symbol": s, "maxLeverage": float(v)} for s, v in sorted(acct.leverage.items())
                ]
            }
        if name == "pnlpreferences":
            return {"preferences": [{"symbol": s, "pnlCurrency": c} for s, c in sorted(mine.pnl.items())]}
        if name == "self-trade-strategy":
            return {"strategy": mine.self_trade}
        if name == "assignmentprogram/current":
            return {"participants": [{"id": i, "participant": p} for i, p in mine.assignments.items()]}
        if name == "assignmentprogram/history":
            return {"participants": list(mine.assignment_history)}
        if name == "rfq-assignment/max-leverage":
            return {"maxLeverage": mine.offbook_max_leverage}
        if name == "subaccounts":
            return {
                "masterAccountUid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-account:{acct.name}")),
                "subaccounts": [
                    {
                        "accountUid": SUBACCOUNT_UID,
                        "email": "sub@example.invalid",
                        "fullName": "Simulated subaccount",
                        "holdingAccounts": [],
                        "futuresAccounts": [],
                    }
                ],
            }
        if name == "subaccount/{uid}/trading-enabled":
            uid = params.get("uid", "")
            if uid not in mine.subaccount_trading:
                raise SimError("invalidArgument", f"no subaccount {uid}")
            return {"tradingEnabled": mine.subaccount_trading[uid]}
        if name == "unwindqueue":
            return {"queue": [{"symbol": s, "percentile": 20} for s in acct.positions]}
        if name == "feeschedules/volumes":
            volume = sum((self._usd_volume(f) for f in acct.fills), Decimal(0))
            return {"volumesByFeeSchedule": {FEE_SCHEDULE_UID: float(volume)}}
        if name == "initialmargin":
            return self._initial_margin(acct, fields)
        if name == "initialmargin/maxordersize":
            return self._max_order_size(acct, fields)
        if name == "rfqs/open-offers":
            return {
                "openOffers": [
                    {"rfqUid": rfq.uid, **rfq.offers[acct.name]}
                    for rfq in self.market_data.rfqs.values()
                    if acct.name in rfq.offers
                ]
            }
        if name == "transfers":
            return {"transfers": []}
        raise SimError("notFound")  # pragma: no cover - every read row is listed above

    def _usd_volume(self, fill: Mapping[str, Any]) -> Decimal:
        """A fill's USD notional, as its contract counts it (an inverse contract: size x contract size)."""
        size, price = Decimal(str(fill["size"])), Decimal(str(fill["price"]))
        instrument = self.exchange.market.instrument(fill["symbol"])
        if instrument is None:
            return size * price
        return instrument.math.notional_usd(size, instrument.contract_size, price)

    def _instrument_and_price(self, fields: Mapping[str, str]) -> tuple[str, Decimal]:
        symbol = (fields.get("symbol") or "").upper()
        if self.exchange.market.instrument(symbol) is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol or '(none)'}")
        price = _decimal(fields, "limitPrice") or self.exchange.market.quotes[symbol].mark
        return symbol, price

    def _initial_margin(self, acct: Account, fields: Mapping[str, str]) -> dict[str, Any]:
        symbol, price = self._instrument_and_price(fields)
        size = _decimal(fields, "size")
        if size is None:
            raise SimError("requiredArgumentMissing", "size is required")
        instrument = self.exchange.instrument(symbol)
        value = instrument.math.value(size, instrument.contract_size, price)  # in the margin currency
        margin = abs(value) / self.exchange.leverage(acct, symbol)
        return {
            "initialMargin": float(margin),
            "price": float(price),
            "estimatedLiquidationThreshold": float(price / 2),
        }

    def _max_order_size(self, acct: Account, fields: Mapping[str, str]) -> dict[str, Any]:
        symbol, price = self._instrument_and_price(fields)
        instrument = self.exchange.instrument(symbol)
        available = max(Decimal(0), self.exchange.available_margin(acct, instrument.margin_account))
        # The size whose initial margin (its value over the leverage) is what the account has available.
        one = abs(instrument.math.value(Decimal(1), instrument.contract_size, price))
        size = available * self.exchange.leverage(acct, symbol) / one
        size = size.quantize(Decimal(1).scaleb(-instrument.size_precision), rounding="ROUND_DOWN")
        return {
            "buyPrice": float(price),
            "maxBuySize": float(size),
            "sellPrice": float(price),
            "maxSellSize": float(size),
        }

    # ---- changes --------------------------------------------------------------------------------------
    def change(
        self, name: str, acct: Account, fields: Mapping[str, str], params: Mapping[str, str]
    ) -> dict[str, Any]:
        mine = self.of(acct)
        if name == "leveragepreferences:put":
            symbol = self._symbol(fields)
            leverage = _decimal(fields, "maxLeverage")
            if leverage is None:
                acct.leverage.pop(symbol, None)  # no preference: the instrument's maximum
            else:
                instrument = self.exchange.market.instrument(symbol)
                assert instrument is not None
                if not 1 <= leverage <= instrument.max_leverage:
                    raise SimError("invalidArgument", f"maxLeverage must be 1 to {instrument.max_leverage}")
                acct.leverage[symbol] = leverage
            return {}
        if name == "pnlpreferences:put":
            symbol = self._symbol(fields)
            currency = fields.get("pnlPreference")
            if not currency:
                raise SimError("requiredArgumentMissing", "pnlPreference is required")
            mine.pnl[symbol] = currency.upper()
            return {}
        if name == "self-trade-strategy:put":
            strategy = fields.get("strategy", "")
            if strategy not in SELF_TRADE_STRATEGIES:
                raise SimError(
                    "invalidArgument", f"strategy must be one of {', '.join(SELF_TRADE_STRATEGIES)}"
                )
            mine.self_trade = strategy
            return {"strategy": strategy}
        if name == "rfq-assignment/max-leverage:put":
            leverage = _decimal(fields, "maxLeverage")
            if leverage is None or not 0 < leverage <= 100:
                raise SimError("invalidArgument", "maxLeverage must be above 0 and at most 100")
            mine.offbook_max_leverage = float(leverage)
            return {"maxLeverage": mine.offbook_max_leverage}
        if name == "rfq-assignment/max-leverage:delete":
            mine.offbook_max_leverage = None
            return {"maxLeverage": None}
        if name == "subaccount/{uid}/trading-enabled:put":
            uid = params.get("uid", "")
            if uid not in mine.subaccount_trading:
                raise SimError("invalidArgument", f"no subaccount {uid}")
            enabled = fields.get("tradingEnabled", "").lower()
            if enabled not in ("true", "false"):
                raise SimError("invalidArgument", "tradingEnabled must be true or false")
            mine.subaccount_trading[uid] = enabled == "true"
            return {"tradingEnabled": mine.subaccount_trading[uid]}
        if name == "assignmentprogram/add":
            return self._assignment_add(mine, fields)
        if name == "assignmentprogram/delete":
            raw = fields.get("id", "")
            if not raw.isdigit() or int(raw) not in mine.assignments:
                raise SimError("invalidArgument", f"no assignment preference {raw or '(none)'}")
            participant = mine.assignments.pop(int(raw))
            mine.assignment_history.append(
                {"id": int(raw), "participant": participant, "deleted": to_iso(self.exchange.now())}
            )
            return {"id": int(raw), "participant": participant}
        if name in ("rfqs/{rfqUid}/place-offer", "rfqs/{rfqUid}/replace-offer", "rfqs/{rfqUid}/cancel-offer"):
            return self._offer(name, acct, fields, params.get("rfqUid", ""))
        raise SimError("notFound")  # pragma: no cover - every change row is listed above

    def _assignment_add(self, mine: Settings, fields: Mapping[str, str]) -> dict[str, Any]:
        missing = [
            f
            for f in ("contractType", "acceptLong", "acceptShort", "timeFrame", "enabled")
            if not fields.get(f)
        ]
        if missing:
            raise SimError("requiredArgumentMissing", f"missing {', '.join(missing)}")
        participant: dict[str, Any] = {
            "contractType": fields["contractType"],
            "contract": fields.get("contract"),
            "maxSize": float(_decimal(fields, "maxSize") or 0) or None,
            "maxPosition": float(_decimal(fields, "maxPosition") or 0) or None,
            "acceptLong": fields["acceptLong"].lower() == "true",
            "acceptShort": fields["acceptShort"].lower() == "true",
            "timeFrame": fields["timeFrame"],
            "enabled": fields["enabled"].lower() == "true",
        }
        ident = next(self._ids)
        mine.assignments[ident] = participant
        mine.assignment_history.append(
            {"id": ident, "participant": participant, "added": to_iso(self.exchange.now())}
        )
        return {"id": ident, "participant": participant}

    def _offer(self, name: str, acct: Account, fields: Mapping[str, str], uid: str) -> dict[str, Any]:
        rfq = self.market_data.rfq(uid)
        if name.endswith("cancel-offer"):
            if rfq.offers.pop(acct.name, None) is None:
                raise SimError("invalidArgument", "no open offer on this RFQ")
            return {}
        bid, ask = _decimal(fields, "bid"), _decimal(fields, "ask")
        if bid is None and ask is None:
            raise SimError("requiredArgumentMissing", "bid or ask is required")
        if name.endswith("place-offer") and acct.name in rfq.offers:
            raise SimError("invalidArgument", "an offer is already open on this RFQ: replace it")
        if name.endswith("replace-offer") and acct.name not in rfq.offers:
            raise SimError("invalidArgument", "no open offer on this RFQ to replace")
        rfq.offers[acct.name] = {
            "bid": None if bid is None else float(bid),
            "ask": None if ask is None else float(ask),
            "placedTime": to_iso(self.exchange.now()),
        }
        return {}

    def _symbol(self, fields: Mapping[str, str]) -> str:
        symbol = (fields.get("symbol") or "").upper()
        if not symbol:
            raise SimError("requiredArgumentMissing", "symbol is required")
        if self.exchange.market.instrument(symbol) is None:
            raise SimError("invalidArgument", f"unknown symbol {symbol}")
        return symbol


def _decimal(fields: Mapping[str, str], name: str) -> Decimal | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SimError("invalidArgument", f"{name} is not a number") from None
    if not value.is_finite():
        raise SimError("invalidArgument", f"{name} is not a number")
    return value
