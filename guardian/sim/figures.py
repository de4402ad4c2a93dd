"""The simulator's own figures, for the control state (`GET /_sim/state`): per account, margin account
and position, what each contract is worth, owes and has realised, in its margin currency and in USD.

They are what guardian's tests hold guardian's figures against, so they are computed here from the
exchange's state with the simulator's arithmetic (guardian.sim.contracts), never with guardian's.
Amounts are floats; every field says its unit: `_usd` is USD, a `currency` names the margin currency
(USD for linear contracts and `flex`, the base currency, XBT or ETH, for inverse ones), sizes are in
contracts. A base-currency amount is converted to USD at the mark of the contract it belongs to; an
account's balance at the mark of the contract its prices are told in (`Exchange.reference_mark`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from guardian.kraken.times import to_iso
from guardian.sim.contracts import FLEX, INVERSE
from guardian.sim.exchange import ZERO, Account, Exchange

KIND_NAMES = {INVERSE: "inverse"}  # else linear


def _f(value: Decimal) -> float:
    return float(value) + 0.0  # no -0.0


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, "linear")


def position_figures(exchange: Exchange, acct: Account) -> dict[str, dict[str, Any]]:
    """Per symbol held: kind, size, entry, mark; value (unsigned, margin currency) and its USD; notional
    in USD; unrealised PnL in the margin currency and in USD at the mark; initial margin; liquidation."""
    rows: dict[str, dict[str, Any]] = {}
    for symbol, position in acct.positions.items():
        instrument = exchange.instrument(symbol)
        math = instrument.math
        mark = exchange.market.quotes[symbol].mark
        size, contract = position.size, instrument.contract_size
        value = abs(math.value(size, contract, mark))
        pnl = math.pnl(size, contract, position.price, mark)
        rows[symbol] = {
            "kind": kind_name(instrument.kind),
            "type": instrument.kind,
            "margin_account": instrument.margin_account,
            "currency": instrument.margin_currency,
            "size": _f(size),
            "contract_size": _f(contract),
            "entry_price": _f(position.price),
            "mark_price": _f(mark),
            "value": _f(value),
            "value_usd": _f(math.to_usd(value, mark)),
            "notional_usd": _f(math.notional_usd(size, contract, mark)),
            "unrealized_pnl": _f(pnl),
            "unrealized_pnl_usd": _f(math.to_usd(pnl, mark)),
            "initial_margin": _f(exchange.position_margin(acct, symbol, position)),
            "liquidation_price": _f(exchange.liquidation_price(acct, symbol)),
        }
    return rows


def orders_figures(exchange: Exchange, acct: Account) -> dict[str, dict[str, float]]:
    """Per symbol and side, the USD notional of the open orders' unfilled size (at the limit price, or
    the mark without one; reduce-only orders included, counted apart under `reduce_only_<side>`)."""
    rows: dict[str, dict[str, float]] = {}
    for order in acct.open_orders():
        instrument = exchange.instrument(order.symbol)
        price = order.limit_price or exchange.market.quotes[order.symbol].mark
        notional = instrument.math.notional_usd(order.unfilled, instrument.contract_size, price)
        key = f"reduce_only_{order.side}" if order.reduce_only else order.side
        row = rows.setdefault(order.symbol, {})
        row[key] = row.get(key, 0.0) + _f(notional)
    return rows


def margin_account_figures(exchange: Exchange, acct: Account) -> dict[str, dict[str, Any]]:
    """Per margin account (`flex`, `fi_xbtusd`, ...): currency, balance (with realised PnL and fees since
    the account opened), unrealised PnL, portfolio value, the initial margin of positions and of open
    orders, what is available for new orders, and the balance and PnL in USD."""
    rows: dict[str, dict[str, Any]] = {}
    for name in (FLEX, *acct.wallets):
        if name == FLEX:
            currency, realized, fees, mark = "USD", acct.realized_pnl, acct.fees, Decimal(1)
        else:
            wallet = exchange.wallet(acct, name)
            currency, realized, fees = wallet.currency, wallet.realized_pnl, wallet.fees
            mark = exchange.reference_mark(acct, name)[1]
        balance = exchange.balance(acct, name)
        unrealized = ZERO
        unrealized_usd = ZERO
        for symbol, position, instrument in exchange.held_in(acct, name):
            pnl = exchange.position_pnl(symbol, position)
            unrealized += pnl
            unrealized_usd += instrument.math.to_usd(pnl, exchange.market.quotes[symbol].mark)
        rows[name] = {
            "currency": currency,
            "balance": _f(balance),
            "realized_pnl": _f(realized),
            "fees": _f(fees),
            "unrealized_pnl": _f(unrealized),
            "unrealized_pnl_usd": _f(unrealized_usd),
            "portfolio_value": _f(balance + unrealized),
            "initial_margin": _f(exchange.initial_margin(acct, name)),
            "orders_margin": _f(exchange.orders_margin(acct, margin_account=name)),
            "available": _f(exchange.available_margin(acct, name)),
            "usd_mark": _f(mark),
            "balance_usd": _f(balance * mark),
        }
    return rows


def account_figures(exchange: Exchange, acct: Account) -> dict[str, Any]:
    """The fields `GET /_sim/state` adds to each account (see the module's docstring for units)."""
    day = exchange.today(acct)
    positions = position_figures(exchange, acct)
    accounts = margin_account_figures(exchange, acct)
    marks = {row["currency"]: Decimal(str(row["usd_mark"])) for row in accounts.values()}
    now_usd = sum((amount * marks.get(currency, ZERO) for currency, amount in day.pnl.items()), ZERO)
    return {
        "day": to_iso(exchange.now())[:10],
        "realized_pnl_today": {c: _f(v) for c, v in sorted(day.pnl.items())},
        "realized_pnl_today_usd": _f(day.pnl_usd),
        "realized_pnl_today_usd_now": _f(now_usd),
        "fees_today": {c: _f(v) for c, v in sorted(day.fees.items())},
        "fees_today_usd": _f(day.fees_usd),
        "unrealized_pnl_usd": sum(p["unrealized_pnl_usd"] for p in positions.values()),
        "gross_notional_usd": sum(p["notional_usd"] for p in positions.values()),
        "position_figures": positions,
        "orders_notional_usd": orders_figures(exchange, acct),
        "margin_accounts": accounts,
        "settlements": [
            {
                "symbol": s["symbol"],
                "time": to_iso(s["time_ms"] / 1000),
                "price": _f(s["price"]),
                "size": _f(s["size"]),
                "entry_price": _f(s["entry"]),
                "realized_pnl": _f(s["realized"]),
                "currency": exchange.instrument(s["symbol"]).margin_currency,
            }
            for s in acct.settlements
        ],
    }


def instrument_figures(exchange: Exchange) -> dict[str, dict[str, Any]]:
    """Per listed symbol: kind, Kraken type, contract size, margin account and currency, last trading
    time (ISO, or None for a perpetual), whether it still trades, and its settlement price once settled."""
    now = exchange.now()
    rows: dict[str, dict[str, Any]] = {}
    for instrument in exchange.market.instruments:
        settled = exchange.market.settled.get(instrument.symbol)
        last = instrument.last_trading_time
        rows[instrument.symbol] = {
            "kind": kind_name(instrument.kind),
            "type": instrument.kind,
            "contract_size": _f(instrument.contract_size),
            "margin_account": instrument.margin_account,
            "currency": instrument.margin_currency,
            "last_trading_time": None if last is None else to_iso(last),
            "tradeable": settled is None and not instrument.expired(now),
            "settlement_price": None if settled is None else _f(settled),
        }
    return rows


def settlement_figures(exchange: Exchange) -> list[dict[str, Any]]:
    """Every expiry the exchange ran: symbol, time, settlement price, positions settled."""
    return [{**s, "price": _f(s["price"])} for s in exchange.settled]
