"""Kraken Futures WebSocket v1 message shapes, rendered from the simulator's exchange.

Field names and conventions follow the shared reference (kraken-futures-ws.md): order `qty` is what
remains, `direction` 0 buy / 1 sell, times in epoch milliseconds, `seq` rising per account on fills,
positions and balances. The numbers come from the same exchange methods REST reads use, so the stream
and `openorders` / `openpositions` / `accounts` always tell one story.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from guardian.sim.contracts import fee_currency
from guardian.sim.market import Instrument, Market

if TYPE_CHECKING:
    from guardian.sim.exchange import Account, Exchange, Order, Position

PRIVATE_FEEDS = (
    "open_orders",
    "open_orders_verbose",
    "open_positions",
    "fills",
    "balances",
    "notifications_auth",
)
PUBLIC_FEEDS = ("ticker", "ticker_lite", "book", "trade", "heartbeat")
PRODUCT_FEEDS = ("ticker", "ticker_lite", "book", "trade")  # need product_ids
SIGNALS = {"mark": "mark", "index": "spot", "spot": "spot", "last": "last"}
ORDER_TYPES = {"lmt": "lmt", "post": "post", "ioc": "ioc", "fok": "ioc", "mkt": "market"}
ORDER_TYPES |= {"stp": "stp", "take_profit": "take_profit", "trailing_stop": "trailing_stop"}


def num(value: Decimal | int | None) -> float | int:
    if value is None:
        return 0
    as_int = int(value)
    return as_int if value == as_int else float(value)


# ---- private -----------------------------------------------------------------------------------------
def order_row(order: Order) -> dict[str, Any]:
    """An order as open_orders shows it: `qty` is the part still open (0 once it is filled or gone)."""
    if order.is_trigger:
        kind = {"stp": "stop", "take_profit": "take_profit", "trailing_stop": "trailing_stop"}[
            order.order_type
        ]
    else:
        kind = "limit"
    row: dict[str, Any] = {
        "instrument": order.symbol,
        "time": order.received_ms,
        "last_update_time": order.updated_ms or order.received_ms,
        "qty": num(order.unfilled if order.state == "open" else 0),
        "filled": num(order.filled),
        "limit_price": num(order.limit_price),
        "stop_price": num(order.stop_price if order.is_trigger else None),
        "type": kind,
        "order_id": order.order_id,
        "direction": 0 if order.side == "buy" else 1,
        "reduce_only": order.reduce_only,
    }
    if order.cli_ord_id is not None:
        row["cli_ord_id"] = order.cli_ord_id
    if order.is_trigger:
        row["triggerSignal"] = SIGNALS[order.trigger_signal]
        if order.order_type == "trailing_stop":
            row["trailing_stop_options"] = {
                "max_deviation": num(order.trailing_deviation),
                "unit": "percent" if order.trailing_unit == "PERCENT" else "quote_currency",
            }
    return row


def fill_row(
    order: Order,
    fill_id: str,
    price: Decimal,
    amount: Decimal,
    fee: Decimal,
    fill_type: str,
    time_ms: int,
    seq: int,
    instrument: Instrument,
) -> dict[str, Any]:
    """A fill as the fills feed shows it: `fee_paid` in the contract's margin currency, named by
    `fee_currency` (USD; an inverse contract's base currency, XBT spelled BTC as in Kraken's example)."""
    own_type = ORDER_TYPES[order.order_type if not order.triggered else "lmt"]
    row: dict[str, Any] = {
        "instrument": order.symbol,
        "time": time_ms,
        "price": num(price),
        "seq": seq,
        "buy": order.side == "buy",
        "qty": num(amount),
        "remaining_order_qty": num(order.unfilled if order.state == "open" else 0),
        "order_id": order.order_id,
        "fill_id": fill_id,
        "fill_type": fill_type,
        "fee_paid": num(fee),
        "fee_currency": fee_currency(instrument.margin_currency),
        # For a maker fill the taker was someone else's order; the simulated crowd trades with limits.
        "taker_order_type": own_type if fill_type == "taker" else "lmt",
        "order_type": own_type,
    }
    if order.cli_ord_id is not None:
        row["cli_ord_id"] = order.cli_ord_id
    return row


def trade_row(order: Order, fill_id: str, price: Decimal, amount: Decimal, time_ms: int) -> dict[str, Any]:
    """A public trade (anonymous), as the `trade` feed shows it; the connection numbers it."""
    return {
        "product_id": order.symbol,
        "uid": fill_id,
        "side": order.side,
        "type": "fill",
        "time": time_ms,
        "qty": num(amount),
        "price": num(price),
    }


def position_rows(exchange: Exchange, acct: Account) -> list[dict[str, Any]]:
    rows = []
    for symbol, position in acct.positions.items():
        instrument = exchange.market.instrument(symbol)
        assert instrument is not None
        rows.append(_position_row(exchange, acct, symbol, position, instrument))
    return rows


def _position_row(
    exchange: Exchange, acct: Account, symbol: str, position: Position, instrument: Instrument
) -> dict[str, Any]:
    """One position: PnL, margins and leverage in its margin currency: USD in the flex account for a linear
    contract (`pnl_currency` USD), the base currency of its own margin account for an inverse one (no
    `pnl_currency`: the ws reference says it is absent for inverse contracts)."""
    quote = exchange.market.quotes[symbol]
    pnl = exchange.position_pnl(symbol, position)
    value = abs(instrument.math.value(position.size, instrument.contract_size, quote.mark))
    initial = value / instrument.max_leverage
    if instrument.inverse:
        name = instrument.margin_account
        equity = exchange.balance(acct, name) + exchange.unrealized(acct, name)
    else:
        equity = acct.balance + exchange.unrealized(acct)
    orders = exchange.orders_margin(acct, symbol)
    row = {
        "instrument": symbol,
        "balance": num(position.size),
        "pnl": num(pnl),
        "entry_price": num(position.price),
        "mark_price": num(quote.mark),
        "index_price": num(quote.index),
        "liquidation_threshold": num(exchange.liquidation_price(acct, symbol)),
        "effective_leverage": num(value / equity) if equity > 0 else 0,
        "return_on_equity": num(pnl / initial * 100) if initial else 0,
        "unrealized_funding": 0,
        "initial_margin": num(initial),
        "initial_margin_with_orders": num(initial + orders),
        "maintenance_margin": num(initial / 2),
    }
    if not instrument.inverse:
        row["pnl_currency"] = "USD"
    return row


def positions_message(exchange: Exchange, acct: Account, *, snapshot: bool = False) -> dict[str, Any]:
    """`open_positions` (snapshot and update share the shape). Every message lists every position; a
    position closed since the last update is listed once more with `balance` 0 (configurable:
    `Exchange.closed_position_rows`), so that clients which only upsert see it close."""
    rows = position_rows(exchange, acct)
    held = {r["instrument"] for r in rows}
    if not snapshot and exchange.closed_position_rows:
        for symbol in sorted(acct.streamed_positions - held):
            quote = exchange.market.quotes[symbol]
            row: dict[str, Any] = {
                "instrument": symbol,
                "balance": 0,
                "pnl": 0,
                "entry_price": 0,
                "mark_price": num(quote.mark),
                "index_price": num(quote.index),
                "liquidation_threshold": 0,
                "effective_leverage": 0,
                "return_on_equity": 0,
                "unrealized_funding": 0,
                "initial_margin": 0,
                "initial_margin_with_orders": 0,
                "maintenance_margin": 0,
            }
            instrument = exchange.market.instrument(symbol)
            if instrument is None or not instrument.inverse:
                row["pnl_currency"] = "USD"
            rows.append(row)
    acct.streamed_positions = held
    return {
        "account": acct.name,
        "positions": rows,
        "seq": acct.seq["positions"] if snapshot else acct.next_seq("positions"),
        "timestamp": exchange.now_ms(),
    }


def flex_group(exchange: Exchange, acct: Account) -> dict[str, Any]:
    """`flex_futures`: the same figures REST `accounts` shows under `flex`, in the feed's names."""
    unrealized = exchange.unrealized(acct)
    margin = exchange.initial_margin(acct)
    available = exchange.available_margin(acct)
    equity = acct.balance + unrealized
    balance = num(acct.balance)
    return {
        "currencies": {
            "USD": {
                "quantity": balance,
                "value": balance,
                "collateral_value": balance,
                "available": num(available),
                "haircut": 0,
                "conversion_spread": 0,
            }
        },
        "balance_value": balance,
        "portfolio_value": num(equity),
        "collateral_value": balance,
        "initial_margin": num(equity - available),
        "initial_margin_without_orders": num(margin),
        "maintenance_margin": num(margin / 2),
        "pnl": num(unrealized),
        "unrealized_funding": 0,
        "total_unrealized": num(unrealized),
        "total_unrealized_as_margin": num(unrealized),
        "margin_equity": num(equity),
        "available_margin": num(available),
        "isolated": {},
        "cross": {},
    }


def futures_group(exchange: Exchange, acct: Account) -> dict[str, Any]:
    """`futures`: the single-collateral margin accounts, keyed as Kraken keys them (`F-XBT:USD` for
    `fi_xbtusd`), with the REST `accounts` figures in the feed's names: `initial_margin` covers positions
    and open orders, `available` is the portfolio value less it."""
    group: dict[str, Any] = {}
    for name, wallet in acct.wallets.items():
        key = f"F-{wallet.currency}:USD"
        if exchange.idle(acct, name):  # the balance alone (rendered on every balances message)
            balance = num(wallet.balance)
            group[key] = {
                "name": key,
                "pair": f"{wallet.currency}/USD",
                "unit": wallet.currency,
                "portfolio_value": balance,
                "balance": balance,
                "maintenance_margin": 0,
                "initial_margin": 0,
                "available": balance,
                "unrealized_funding": 0,
                "pnl": 0,
            }
            continue
        figures = exchange.margin_figures(acct, name)
        initial = figures["im"] + figures["orders"]
        group[key] = {
            "name": key,
            "pair": f"{wallet.currency}/USD",
            "unit": wallet.currency,
            "portfolio_value": num(figures["pv"]),
            "balance": num(figures["balance"]),
            "maintenance_margin": num(figures["mm"]),
            "initial_margin": num(initial),
            "available": num(figures["pv"] - initial),
            "unrealized_funding": 0,
            "pnl": num(figures["pnl"]),
        }
    return group


def balances_message(exchange: Exchange, acct: Account, *, snapshot: bool = False) -> dict[str, Any]:
    """`balances_snapshot` carries all three groups. A `balances` update carries `flex_futures` (always,
    as it did when the simulator had no other group) and `futures`, whole, when a single-collateral
    margin account changed since the last update (Kraken's updates carry only the groups that changed;
    the simulated account holds no cash)."""
    message: dict[str, Any] = {"account": acct.name}
    futures = futures_group(exchange, acct)
    if snapshot:
        message["holding"] = {"USD": 0}
        message["futures"] = futures
        if not acct.streamed_futures:  # the first subscriber: updates are told against this
            acct.streamed_futures = futures
    elif futures != acct.streamed_futures:
        message["futures"] = futures
        acct.streamed_futures = futures
    message["flex_futures"] = flex_group(exchange, acct)
    message["timestamp"] = exchange.now_ms()
    message["seq"] = acct.seq["balances"] if snapshot else acct.next_seq("balances")
    return message


# ---- public ------------------------------------------------------------------------------------------
def ticker_row(market: Market, symbol: str, now_ms: int, *, lite: bool = False) -> dict[str, Any]:
    instrument = market.instrument(symbol)
    assert instrument is not None
    q = market.quotes[symbol]
    opening = instrument.initial_price
    change = (q.last - opening) / opening * 100
    maturity_ms = 0 if instrument.last_trading_time is None else int(instrument.last_trading_time * 1000)
    days_left = 0 if not maturity_ms else max(0, (maturity_ms - now_ms) // 86_400_000)
    row: dict[str, Any] = {
        "feed": "ticker_lite" if lite else "ticker",
        "product_id": symbol,
        "bid": num(q.bid),
        "ask": num(q.ask),
        "change": num(change.quantize(Decimal("0.0001"))),
        "premium": 0,
        "volume": 0,
        "tag": instrument.tag,
        "pair": instrument.pair,
        "dtm": days_left,
        "maturityTime": maturity_ms,
        "volumeQuote": 0,
    }
    if lite:
        return row
    row.update(
        {
            "time": now_ms,
            "bid_size": 10,
            "ask_size": 10,
            "last": num(q.last),
            "open": num(opening),
            "high": num(max(q.mark, opening)),
            "low": num(min(q.mark, opening)),
            "leverage": f"{instrument.max_leverage}x",
            "index": num(q.index),
            "suspended": q.suspended,
            "post_only": False,
            "openInterest": 0,
            "markPrice": num(q.mark),
        }
    )
    if instrument.perpetual:  # funding: perpetuals only
        row.update(
            {
                "funding_rate": 0,
                "funding_rate_prediction": 0,
                "fundingRatePrediction": 0,
                "relative_funding_rate": 0,
                "relative_funding_rate_prediction": 0,
            }
        )
    return row


def book_levels(exchange: Exchange, symbol: str) -> dict[str, dict[float | int, float | int]]:
    """The synthetic book as {side: {price: qty}}: `book_levels` levels from the touch, each with what
    is left of `book_depth` (10 per level when depth is unlimited, as REST `orderbook` shows)."""
    instrument = exchange.market.instrument(symbol)
    assert instrument is not None
    q = exchange.market.quotes[symbol]
    tick = instrument.tick_size
    sides: dict[str, dict[float | int, float | int]] = {"buy": {}, "sell": {}}
    for i in range(exchange.book_levels):
        for side, price in (("buy", q.bid - tick * i), ("sell", q.ask + tick * i)):
            if price <= 0:
                continue
            # A resting bid is what a seller takes from, so its size is what sells may still take.
            left = exchange.liquidity(symbol, "sell" if side == "buy" else "buy", price)
            sides[side][num(price)] = num(Decimal(10) if left is None else left)
    return sides
