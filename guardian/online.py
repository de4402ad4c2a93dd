"""`guardian check-config --online`: the configuration against the real exchange, read-only.

For each account, in order, each with one line and, when it fails, its own exit code (sysexits):

| check | fails with |
|---|---|
| every secret file is readable by its owner only | 78 EX_CONFIG |
| the exchange answers (public `instruments`) | 69 EX_UNAVAILABLE |
| the clock: skew against the exchange's `serverTime`, beyond `--max-skew` | 71 EX_OSERR |
| the key is accepted (a signed `accounts`) | 77 EX_NOPERM |
| the nonce is accepted (the same call, with the account's `nonce` unit) | 76 EX_PROTOCOL |
| the collateral (`accounts`) and positions (`openpositions`) can be read | 77 / 69 |
| every configured symbol is listed, tradeable and of a kind guardian can judge | 65 EX_DATAERR |

Nothing sent is an order or a switch call: `instruments`, `accounts` and `openpositions` only. The first
failure's code is the exit code; an exchange that cannot be reached skips that account's later checks.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from guardian import contracts
from guardian.account import exchange_client
from guardian.config import AccountConfig, Config
from guardian.errors import AuthenticationFailed, ExchangeError, ExchangeUnavailable, NonceRejected
from guardian.kraken.client import KrakenClient
from guardian.kraken.times import parse_iso

EX_OK: Final = os.EX_OK
EX_DATAERR: Final = os.EX_DATAERR
EX_UNAVAILABLE: Final = os.EX_UNAVAILABLE
EX_OSERR: Final = os.EX_OSERR
EX_PROTOCOL: Final = os.EX_PROTOCOL
EX_NOPERM: Final = os.EX_NOPERM
EX_CONFIG: Final = os.EX_CONFIG
DEFAULT_MAX_SKEW_S: Final = 1.0
TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: `code` is EX_OK when it passed."""

    account: str | None
    what: str
    code: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.code == EX_OK

    def line(self) -> str:
        where = f"{self.account}: " if self.account else ""
        return f"{'ok  ' if self.ok else 'FAIL'}  {where}{self.what}: {self.detail}"


def file_modes(files: Sequence[tuple[str, Path]]) -> Iterator[Check]:
    """Each secret file must be readable by its owner alone (0600 or 0400)."""
    seen: set[Path] = set()
    for key, path in files:
        if path in seen:
            continue
        seen.add(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            yield Check(None, f"secret file {path}", EX_CONFIG, f"cannot stat it ({exc.strerror})")
            continue
        if mode & 0o077:
            yield Check(
                None,
                f"secret file {path} ({key})",
                EX_CONFIG,
                f"mode {mode:04o} lets others read it: chmod 600 {path}",
            )
        else:
            yield Check(None, f"secret file {path} ({key})", EX_OK, f"mode {mode:04o}")


async def account_checks(account: AccountConfig, *, max_skew_s: float) -> list[Check]:
    """The checks of one account, in order (see the module's table)."""
    name = account.name
    found: list[Check] = []
    nonce = account.nonce
    client = exchange_client(account, "check", pool_size=2, timeout_s=TIMEOUT_S)
    async with client:
        sent = time.time()
        try:
            listed = await client.request("instruments")
        except ExchangeError as exc:
            found.append(Check(name, f"exchange at {account.base_url}", EX_UNAVAILABLE, f"no answer: {exc}"))
            return found
        received = time.time()
        found.append(Check(name, f"exchange at {account.base_url}", EX_OK, "answers"))
        found.append(_skew(name, listed.get("serverTime"), sent, received, max_skew_s))
        rows = [row for row in listed.get("instruments") or () if isinstance(row, dict)]
        accepted = Check(name, "exchange key", EX_OK, "accepted (a signed accounts read)")
        try:
            accounts = await client.request("accounts")
        except NonceRejected as exc:
            found.append(Check(name, "exchange key", EX_OK, "not judged: the nonce was refused first"))
            found.append(
                Check(
                    name,
                    "nonce",
                    EX_PROTOCOL,
                    f"refused ({exc.code}): another program signs with this key (one key per daemon), or "
                    f"the nonce unit '{nonce}' is below what it sent before",
                )
            )
        except AuthenticationFailed as exc:
            found.append(
                Check(
                    name,
                    "exchange key",
                    EX_NOPERM,
                    f"refused ({exc.code}): check api_key and api_secret, and that the key has not expired",
                )
            )
        except ExchangeUnavailable as exc:
            found.append(Check(name, "exchange key", EX_UNAVAILABLE, f"no answer to accounts: {exc}"))
        except ExchangeError as exc:
            found.append(Check(name, "exchange key", EX_NOPERM, f"accounts refused ({exc.code})"))
        else:
            found.append(accepted)
            found.append(
                Check(name, "nonce", EX_OK, "accepted" if nonce != "off" else "none sent (nonce = off)")
            )
            found.append(Check(name, "collateral", EX_OK, _collateral(accounts)))
            found.append(await _positions(name, client))
        return [*found, *_symbols(name, account, rows)]


def _skew(account: str, server_time: Any, sent: float, received: float, max_skew_s: float) -> Check:
    if not isinstance(server_time, str):
        return Check(account, "clock", EX_OSERR, "the exchange's answer had no serverTime to compare with")
    try:
        exchange = parse_iso(server_time)
    except ValueError:
        return Check(account, "clock", EX_OSERR, f"serverTime {server_time!r} is not a time")
    skew = exchange - (sent + received) / 2
    uncertainty = (received - sent) / 2
    text = f"skew {skew:+.3f} s against the exchange's serverTime (± {uncertainty:.3f} s)"
    if abs(skew) - uncertainty > max_skew_s:
        return Check(
            account,
            "clock",
            EX_OSERR,
            f"{text}, more than {max_skew_s:g} s: synchronise this machine's clock (chrony, systemd-timesyncd)",
        )
    return Check(account, "clock", EX_OK, text)


def _collateral(doc: dict[str, Any]) -> str:
    found = doc.get("accounts")
    if not isinstance(found, dict):
        return "read (no accounts in the answer)"
    flex = found.get("flex")
    if isinstance(flex, dict):
        parts = [
            f"{label} {_usd(flex.get(field))}"
            for label, field in (
                ("portfolio value", "portfolioValue"),
                ("available margin", "availableMargin"),
            )
            if field in flex
        ]
        return "read: multi-collateral " + (", ".join(parts) or "account") + f"; {len(found)} accounts in all"
    return f"read: {len(found)} accounts"


def _usd(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):,.2f} USD"
    except ArithmeticError:
        return str(value)


async def _positions(account: str, client: KrakenClient) -> Check:
    try:
        positions = await client.open_positions()
    except ExchangeUnavailable as exc:
        return Check(account, "positions", EX_UNAVAILABLE, f"no answer to openpositions: {exc}")
    except ExchangeError as exc:
        return Check(account, "positions", EX_NOPERM, f"openpositions refused ({exc.code})")
    symbols = sorted({str(p.get("symbol")) for p in positions if isinstance(p, dict)})
    return Check(
        account,
        "positions",
        EX_OK,
        f"{len(positions)} open" + (f" ({', '.join(symbols)})" if symbols else ""),
    )


def _symbols(account: str, config: AccountConfig, rows: list[dict[str, Any]]) -> list[Check]:
    """Every symbol the configuration names (guard.symbols and per-symbol limits), against the list."""
    guard = config.guard
    wanted = sorted({*(guard.symbols or ()), *guard.per_symbol})
    if not wanted:
        return [Check(account, "symbols", EX_OK, "none configured (bots may trade any listed contract)")]
    by_symbol = {str(row.get("symbol", "")).upper(): row for row in rows}
    checks = []
    for symbol in wanted:
        row = by_symbol.get(symbol.upper())
        if row is None:
            checks.append(
                Check(
                    account, f"symbol {symbol}", EX_DATAERR, "not listed by the exchange: check its spelling"
                )
            )
            continue
        contract, why = contracts.parse(row)
        if contract is None:
            checks.append(Check(account, f"symbol {symbol}", EX_DATAERR, f"guardian cannot judge it: {why}"))
        elif not contract.tradeable:
            checks.append(Check(account, f"symbol {symbol}", EX_DATAERR, "listed but not tradeable now"))
        elif contract.expired(time.time(), guard.expiry_margin_s):
            checks.append(
                Check(account, f"symbol {symbol}", EX_DATAERR, "past its last trading time (expiry_margin_s)")
            )
        else:
            checks.append(Check(account, f"symbol {symbol}", EX_OK, f"tradeable, {contract.kind.value}"))
    return checks


async def online_checks(
    config: Config, files: Sequence[tuple[str, Path]], *, max_skew_s: float = DEFAULT_MAX_SKEW_S
) -> list[Check]:
    """Every check, in order: the secret files, then each account's."""
    found = list(file_modes(files))
    for account in config.accounts:
        found += await account_checks(account, max_skew_s=max_skew_s)
    return found


def exit_code(checks: Sequence[Check]) -> int:
    """The first failure's code, or EX_OK."""
    return next((check.code for check in checks if not check.ok), EX_OK)
