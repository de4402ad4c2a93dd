"""`guardian status`: a running daemon's `/guardian/state`, for a person (and a script's exit code).

Per account: the switch and the time left, the link, the mode, freshness, positions, open orders,
margin, notices. All good means every account's switch is armed and its state fresh (an account whose
stream is disabled cannot be fresh: it is reported, and counts as not good).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _n(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = f"{value:,.{digits}f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(value)


def account_ok(account: Mapping[str, Any]) -> bool:
    switch = account.get("switch") or {}
    return switch.get("state") == "armed" and account.get("fresh") is True


def render(state: Mapping[str, Any]) -> tuple[str, bool]:
    """The summary text, and whether every account is armed and fresh."""
    accounts: Sequence[Mapping[str, Any]] = state.get("accounts") or []
    lines = [
        f"guardian {state.get('version', '?')}, started {state.get('started_at') or '-'}"
        + (", STOPPING" if state.get("stopping") else "")
        + ("" if (state.get("journal") or {}).get("healthy", True) else ", JOURNAL CANNOT BE WRITTEN")
    ]
    all_ok = bool(accounts)
    for account in accounts:
        ok = account_ok(account)
        all_ok = all_ok and ok
        lines.append("")
        lines.extend(_account_lines(account, ok))
    if not accounts:
        lines.append("no accounts")
    return "\n".join(lines), all_ok


def _account_lines(account: Mapping[str, Any], ok: bool) -> list[str]:
    switch = account.get("switch") or {}
    remaining = switch.get("remaining_s")
    left = "no timer" if remaining is None else f"{remaining:.1f} s left"
    link = account.get("link") or {}
    age = account.get("state_age_s")
    fresh = account.get("fresh")
    freshness = "fresh" if fresh else "STALE"
    if age is not None:
        freshness += f" ({_n(age, 1)} s old)"
    lines = [
        f"account {account.get('name')}: {'OK' if ok else 'NOT OK'}",
        f"  switch  {switch.get('state', '?')}, {left}",
        f"  mode    {account.get('mode', '?')}",
        f"  link    {link.get('state', 'n/a')}"
        + (f", {link.get('reconnects', 0)} reconnects" if link else "")
        + (
            f", last message {_n(link.get('last_message_age_s'), 1)} s ago"
            if link.get("last_message_age_s") is not None
            else ""
        )
        + (f" ({link['last_error']})" if link.get("last_error") else ""),
        f"  state   {freshness}" if "fresh" in account else "  state   n/a",
    ]
    positions = account.get("positions") or []
    if positions:
        lines.append("  positions")
        for p in positions:
            currency = f" {p['pnl_currency']}" if p.get("pnl_currency") not in (None, "USD") else ""
            lines.append(
                f"    {p.get('symbol')}: {_n(p.get('size'), 4)} @ {_n(p.get('entry_price'))}, mark "
                f"{_n(p.get('mark_price'))}, upnl {_n(p.get('unrealized_pnl'))}{currency}"
            )
    elif "positions" in account:
        lines.append("  positions  none")
    orders = account.get("open_orders")
    if isinstance(orders, Mapping):
        by_symbol = ", ".join(f"{s} {c}" for s, c in (orders.get("by_symbol") or {}).items())
        lines.append(f"  orders  {orders.get('count', 0)} open" + (f" ({by_symbol})" if by_symbol else ""))
    balances = account.get("balances")
    if isinstance(balances, Mapping):
        lines.append(
            f"  margin  available {_n(balances.get('available_margin'))}, portfolio "
            f"{_n(balances.get('portfolio_value'))}, initial {_n(balances.get('initial_margin'))}, "
            f"maintenance {_n(balances.get('maintenance_margin'))}"
        )
    fills = account.get("fills_today")
    if isinstance(fills, Mapping):
        lines.append(
            f"  today   {fills.get('count', 0)} fills, realised {_n(fills.get('realized_pnl'))}, fees "
            f"{_n(fills.get('fees'))}"
        )
    trip = account.get("trip")
    if isinstance(trip, Mapping):
        lines.append(
            f"  TRIPPED {trip.get('limit')} at {trip.get('at')}: {trip.get('reason')} (mode {trip.get('mode')})"
        )
    if account.get("daily_pnl") is not None:
        lines.append(f"  pnl     {_n(account.get('daily_pnl'))} today (realised, unrealised, fees)")
    gap = account.get("daily_pnl_gap")
    if isinstance(gap, Mapping):
        lines.append(f"  pnl     NOT KNOWN ({gap.get('code')}): {gap.get('reason')}")
    for settled in account.get("settlements") or []:
        lines.append(
            f"  settled {settled.get('symbol')} {_n(settled.get('size'), 4)} at {_n(settled.get('price'))}: "
            f"{_n(settled.get('realized_pnl'), 8)} {settled.get('currency')} ({settled.get('at')})"
        )
    instruments = account.get("instruments")
    if isinstance(instruments, Mapping):
        if instruments.get("loaded_at") is None:
            lines.append(
                f"  contracts NOT READ YET: new risk is refused ({instruments.get('last_error') or 'reading'})"
            )
        unjudged = instruments.get("unjudged") or {}
        if unjudged:
            lines.append(
                f"  contracts {instruments.get('unjudged_count', len(unjudged))} not judged (new risk in them "
                f"refused): {', '.join(sorted(unjudged)[:8])}"
            )
    limits = account.get("limits") or []
    if limits:
        lines.append("  limits")
        for limit in limits:
            where = f" {limit['symbol']}" if limit.get("symbol") else ""
            ratio = float(limit.get("ratio") or 0)
            flag = "  <- over 80 %" if ratio > 0.8 else ""
            lines.append(
                f"    {limit.get('name')}{where}: {_n(limit.get('used'))} of {_n(limit.get('limit'))} "
                f"({ratio * 100:.0f} %){flag}"
            )
    for bot in account.get("bots") or []:
        own = ", ".join(
            f"{u.get('name')} {_n(u.get('used'))}/{_n(u.get('limit'))}" for u in bot.get("limits") or []
        )
        lines.append(f"  bot     {bot.get('name')}: {bot.get('mode')}" + (f" ({own})" if own else ""))
    for notice in account.get("notices") or []:
        downtime = notice.get("expected_downtime_minutes")
        lines.append(
            f"  notice  [{notice.get('priority')} {notice.get('type')}] {notice.get('effective_time') or '-'}"
            + (f", {_n(downtime, 0)} min down" if downtime else "")
            + f": {notice.get('note')}"
        )
    return lines
