"""Alertmanager (issue 22): deploy/prometheus/alertmanager.yml passes `amtool check-config`, routes every
rule of alerts.yml to the receiver of its severity, and the compose file runs it locked down with
Prometheus pointed at it. End to end, with Debian's `prometheus-alertmanager` (`make tools` installs it):
a live guardian's metrics make the real Prometheus fire an alert, which reaches a webhook receiver on
loopback through a real Alertmanager running the deploy file's routes and receivers (the URL, the token
file and the intervals are the test's own), token included, and its resolution follows."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from guardian.sim.app import Simulator
from tests.daemon import STEADY, account_config, serving, wait_for
from tests.test_prometheus import free_port, need

ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER_CONFIG = ROOT / "deploy" / "prometheus" / "alertmanager.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
ADMIN = "admin-token-for-the-alertmanager-tests"
WEBHOOK_TOKEN = "alertmanager-webhook-token-5c2e"
ALERTMANAGER = "prometheus-alertmanager"  # Debian's name for the server (amtool keeps its own)


def amtool(*argv: str | Path) -> tuple[int, str]:
    done = subprocess.run(
        [need("amtool"), *map(str, argv)], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stdout + done.stderr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_amtool_checks_the_alertmanager_config() -> None:
    status, said = amtool("check-config", ALERTMANAGER_CONFIG)
    assert status == 0, said
    assert "SUCCESS" in said and "2 receivers" in said, said


def test_amtool_check_config_fails_a_route_to_a_receiver_that_does_not_exist(tmp_path: Path) -> None:
    broken = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    broken["route"]["routes"][0]["receiver"] = "pager-nobody-defined"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(broken))
    status, said = amtool("check-config", path)
    assert status != 0 and "pager-nobody-defined" in said, said


def test_every_alert_rule_is_routed_to_the_receiver_of_its_severity() -> None:
    rules = alert_rules()
    assert {rule["labels"]["severity"] for rule in rules} == {"critical", "warning"}
    for rule in rules:
        labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}", "account=main"]
        done = subprocess.run(
            [need("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == rule["labels"]["severity"], (rule["alert"], done.stdout)


def test_critical_alerts_go_at_once_and_every_receiver_is_told_when_an_alert_resolves() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (critical,) = [r for r in config["route"]["routes"] if r["receiver"] == "critical"]
    assert critical["group_wait"] == "0s"
    for receiver in config["receivers"]:
        (hook,) = receiver["webhook_configs"]
        assert hook["send_resolved"] is True
        assert hook["http_config"]["authorization"]["credentials_file"] == (
            "/run/secrets/alertmanager_webhook_token"
        )


def test_compose_runs_alertmanager_locked_down_and_prometheus_sends_it_the_alerts() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    manager = services["alertmanager"]
    assert manager["image"].startswith("prom/alertmanager:v")
    assert manager["read_only"] is True and manager["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in manager["security_opt"]
    assert manager["ports"] == ["127.0.0.1:9093:9093"]
    assert "../prometheus/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in manager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in manager["command"]
    assert "alertmanager:/alertmanager" in manager["volumes"] and "alertmanager" in doc["volumes"]
    assert manager["secrets"] == ["alertmanager_webhook_token"]
    assert doc["secrets"]["alertmanager_webhook_token"] == {"file": "./secrets/alertmanager_webhook_token"}
    assert "alertmanager" in services["prometheus"]["depends_on"]
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (target,) = prometheus["alerting"]["alertmanagers"]
    assert target["static_configs"] == [{"targets": ["alertmanager:9093"]}]


# ---- end to end ---------------------------------------------------------------------------------------


class Webhook:
    """A webhook receiver on loopback: each notification Alertmanager posts, with its Authorization."""

    def __init__(self) -> None:
        self.got: list[tuple[str | None, dict[str, Any]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/alerts", self._handle)])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/alerts"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.got.append((request.headers.get("Authorization"), await request.json()))
        return web.Response(status=200)

    def notifications(self, status: str, alertname: str) -> list[tuple[str | None, dict[str, Any]]]:
        return [
            (auth, body)
            for auth, body in self.got
            if body.get("status") == status
            and any(a["labels"].get("alertname") == alertname for a in body.get("alerts", []))
        ]


def runnable_alertmanager() -> str:
    """Debian's Alertmanager, or a skip that says exactly why it cannot run here."""
    path = shutil.which(ALERTMANAGER)
    if path is None:
        pytest.fail(
            f"{ALERTMANAGER} is not installed: `apt-get install prometheus-alertmanager` (make tools)"
        )
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        pytest.skip(f"{path} cannot be executed here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"{path} --version exited {done.returncode} here: {(done.stdout + done.stderr)[:300]}")
    return path


@contextlib.asynccontextmanager
async def process(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def local_config(hook_url: str, token_file: Path) -> str:
    """The deploy file's routes and receivers, with the test's webhook, token file and short intervals."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for route in (config["route"], *config["route"]["routes"]):
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = hook_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return yaml.safe_dump(config)


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


@pytest.mark.slow
async def test_an_alert_fired_by_prometheus_reaches_a_webhook_through_alertmanager(
    sim: Simulator, tmp_path: Path
) -> None:
    binary = runnable_alertmanager()
    hook = Webhook()
    await hook.start()
    token_file = tmp_path / "webhook_token"
    token_file.write_text(WEBHOOK_TOKEN + "\n")
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(local_config(hook.url, token_file))
    status, said = amtool("check-config", am_config)
    assert status == 0, said
    am_port, prom_port = free_port(), free_port()
    am_url, prom_url = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{prom_port}"
    try:
        async with (
            serving(account_config(sim.url, switch=STEADY), admin_token=ADMIN) as service,
            aiohttp.ClientSession() as http,
            process(
                binary,
                f"--config.file={am_config}",
                f"--storage.path={tmp_path / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: loopback only, one instance
            ) as manager,
        ):
            prom_config = tmp_path / "prometheus.yml"
            target = service.url.removeprefix("http://")
            prom_config.write_text(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n  evaluation_interval: 200ms\n"
                f"rule_files:\n  - '{ALERTS}'\n"
                f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
                f"scrape_configs:\n  - job_name: guardian\n    static_configs:\n      - targets: ['{target}']\n"
            )
            async with process(
                need("prometheus"),
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ):

                async def both_ready() -> bool:
                    if manager.returncode is not None:
                        assert manager.stderr is not None
                        said = (await manager.stderr.read()).decode()[-600:]
                        pytest.skip(f"{binary} exited {manager.returncode} here: {said}")
                    return await ready(http, am_url + "/-/ready") and await ready(http, prom_url + "/-/ready")

                await wait_for(both_ready, 30.0, "Alertmanager and Prometheus ready")
                headers = {"Authorization": f"Bearer {ADMIN}"}
                body = {"account": "main", "mode": "halted"}
                async with http.post(service.url + "/guardian/mode", json=body, headers=headers) as response:
                    assert response.status == 200
                halted_at = time.monotonic()
                await wait_for(
                    lambda: hook.notifications("firing", "GuardianAccountHalted"),
                    60.0,
                    "the alert at the webhook",
                )
                print(f"halted to webhook: {time.monotonic() - halted_at:.1f} s")
                [(auth, note)] = hook.notifications("firing", "GuardianAccountHalted")
                assert auth == f"Bearer {WEBHOOK_TOKEN}"
                assert note["receiver"] == "warning"  # the rule's severity chose the route
                [alert] = note["alerts"]
                assert alert["labels"]["account"] == "main" and alert["labels"]["severity"] == "warning"
                assert "docs/runbook.md#guardianaccounthalted" in alert["annotations"]["runbook"]

                body = {"account": "main", "mode": "active"}
                async with http.post(service.url + "/guardian/mode", json=body, headers=headers) as response:
                    assert response.status == 200
                await wait_for(
                    lambda: hook.notifications("resolved", "GuardianAccountHalted"),
                    60.0,
                    "the resolution at the webhook",
                )
    finally:
        await hook.close()
