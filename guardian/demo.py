"""`guardian run --sim`: the built-in simulator in-process, a demo account on it, a demo bot key, and
a how-to. Everything is generated for this run and forgotten when it ends."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from guardian.config import (
    DEFAULT_BASE_URL,
    AccountConfig,
    ClientConfig,
    Config,
    GuardConfig,
    JournalConfig,
    LogConfig,
    ServerConfig,
    SymbolLimits,
)
from guardian.kraken.endpoints import Permission
from guardian.secret import ApiSecret, Secret
from guardian.sim.app import SimKey, Simulator
from guardian.sim.market import Market

DEMO_ACCOUNT = "demo"
DEMO_BOT = "demo-bot"


@dataclass(frozen=True, slots=True)
class Demo:
    simulator: Simulator
    config: Config
    bot: ClientConfig
    admin_token: Secret
    directory: Path  # the demo's journal lives here, and goes with it

    def secrets(self) -> list[Secret]:
        return [*self.config.all_secrets(), *(key.secret for key in self.simulator.keys.values())]

    async def close(self) -> None:
        await self.simulator.close()
        shutil.rmtree(self.directory, ignore_errors=True)


async def start_demo(host: str, port: int, *, seed: int | None = None, log: LogConfig | None = None) -> Demo:
    """Start the simulator on a free loopback port and build the daemon's configuration for it."""
    exchange_key = SimKey.generate(account=DEMO_ACCOUNT)
    simulator = Simulator([exchange_key], market=Market(seed=seed), tick_s=1.0)
    url = await simulator.start("127.0.0.1", 0)
    bot = ClientConfig(
        name=DEMO_BOT,
        api_key=f"demo-bot-{secrets.token_hex(8)}",
        api_secret=ApiSecret(base64.b64encode(os.urandom(32)).decode(), name="demo bot api_secret"),
        permissions=frozenset({Permission.READ, Permission.TRADE, Permission.SETTINGS}),
    )
    account = AccountConfig(
        name=DEMO_ACCOUNT,
        api_key=exchange_key.api_key,
        api_secret=exchange_key.secret,
        base_url=url,
        guard=GuardConfig(
            symbols=tuple(i.symbol for i in simulator.exchange.market.instruments),
            max_order_size=100.0,
            max_notional=1_000_000.0,
            price_band_pct=10.0,
            max_leverage=10.0,
            # The exposure limits a demo bot meets: a loop of small orders stops at these.
            max_position=100.0,
            max_open_orders_total=200,
            max_gross_notional=50_000_000.0,
            max_orders_per_minute=600,
            max_fills_per_minute=300,
            max_daily_loss=100_000.0,
            # An inverse contract's size is USD of face value (PI_XBTUSD: 1 USD a contract): its own sizes.
            per_symbol=MappingProxyType(
                {
                    i.symbol: SymbolLimits(max_order_size=100_000.0, max_position=100_000.0)
                    for i in simulator.exchange.market.instruments
                    if i.inverse
                }
            ),
        ),
        clients=(bot,),
    )
    directory = Path(tempfile.mkdtemp(prefix="guardian-demo-"))
    admin_token = Secret(secrets.token_urlsafe(24))
    config = Config(
        accounts=(account,),
        server=ServerConfig(host, port, admin_token),
        journal=JournalConfig(directory / "journal.sqlite3"),
        log=log or LogConfig(),
    )
    return Demo(simulator, config, bot, admin_token, directory)


# The one line that points every ccxt krakenfutures API URL (public, private, history, charts, ...) at
# guardian: a bot that points only `public` and `private` there sends its history calls to Kraken,
# signed with its local key, and they fail there.
CCXT_LINE = "ex.urls['api'] = {{k: v.replace('{kraken}', '{guardian}') for k, v in ex.urls['api'].items()}}"


def point_ccxt_at(exchange: Any, guardian_url: str) -> None:
    """What CCXT_LINE does, for a ccxt `krakenfutures` instance (the tests use it as users would)."""
    urls = exchange.urls["api"]
    exchange.urls["api"] = {k: v.replace(DEFAULT_BASE_URL, guardian_url.rstrip("/")) for k, v in urls.items()}


def how_to(demo: Demo, guardian_url: str) -> str:
    """The lines printed after `demo bot api_key=... api_secret=...`."""
    return "\n".join(
        [
            f"guardian is running against its built-in exchange simulator ({demo.simulator.url}).",
            f"  page:     {guardian_url}/ (open it in a browser: each switch, its time left, the marks)",
            f"  state:    curl -s {guardian_url}/guardian/state",
            f"  ready:    curl -s {guardian_url}/readyz",
            f"  metrics:  curl -s {guardian_url}/metrics | grep ^guardian_switch",
            f"  halt:     curl -s -X POST -H 'Authorization: Bearer {demo.admin_token.reveal()}' "
            f'-d \'{{"account": "demo", "mode": "halted"}}\' {guardian_url}/guardian/mode',
            "  bots:     use the demo bot key above with guardian as the exchange's base URL:",
            "    ccxt:   ex = ccxt.krakenfutures({'apiKey': KEY, 'secret': SECRET}), then point EVERY API URL "
            "at guardian (public, private, history, charts), not just two:",
            "            " + CCXT_LINE.format(kraken=DEFAULT_BASE_URL, guardian=guardian_url.rstrip("/")),
            f"    python-kraken-sdk: Trade(key=KEY, secret=SECRET, url='{guardian_url}')",
            f"    raw HTTP: POST {guardian_url}/derivatives/api/v3/sendorder signed as for Kraken",
            f"  journal:  {demo.config.journal.path} (removed when the demo stops)",
            "Stop with Ctrl-C.",
        ]
    )
