"""The deployment files, tested like code.

- The systemd unit passes `systemd-analyze verify` and scores under `systemd-analyze security`, carries
  every directive the contract asks for, and loads exactly the credentials its example config names.
- The example configs pass `guardian check-config` with their secrets given as files, as they will be.
- Prometheus' config and alert rules pass promtool (`check config`, `check rules`, `test rules`); every
  alert has unit tests both ways, a runbook annotation and an entry in docs/runbook.md.
- The Grafana dashboard and the alert rules use only metric names a real scrape of the daemon shows, and
  every dashboard query is PromQL that promtool accepts; a real Prometheus evaluates the rules and the
  dashboard's queries against a live guardian, and an alert fires when the daemon gives it cause.
- No Docker engine here: the Dockerfile and compose.yaml are read and checked (user, healthcheck, entry
  point, secrets, ports); the image's HEALTHCHECK command runs against a live guardian.

compose.yaml and the Prometheus and Grafana YAML files are read with PyYAML (a test dependency).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guardian.cli import SHUTDOWN_LIMIT_S, build_parser
from guardian.config import StreamConfig, SwitchConfig
from guardian.sim.app import Simulator
from tests.daemon import account_config, serving, wait_for
from tests.test_prometheus import need, prometheus, query

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "guardian.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "config.toml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
COMPOSE_CONFIG = DEPLOY / "compose" / "config.toml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "guardian.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
DOCKERFILE = ROOT / "Dockerfile"
RUNBOOK = ROOT / "docs" / "runbook.md"
OPERATING_SYSTEMD = ROOT / "docs" / "systemd.md"

# The guardian console script of the virtualenv running the tests.
GUARDIAN = Path(sys.executable).parent / "guardian"

# Series Prometheus makes itself for every target: the only names an expression may use that guardian
# does not export.
PROMETHEUS_OWN = {"up"}

# The alerts the issue asks for, by what they watch.
REQUIRED_ALERTS = {
    "guardian down": "GuardianDown",
    "guardian absent": "GuardianAbsent",
    "a switch not armed": "GuardianSwitchNotArmed",
    "time left below a threshold": "GuardianSwitchTimeLeftLow",
    "refresh failures": "GuardianSwitchRefreshFailures",
    "clock skew": "GuardianClockSkew",
    "an account halted": "GuardianAccountHalted",
    "a surge of rejections": "GuardianRejectionSurge",
    "the rate budget nearly exhausted": "GuardianRateBudgetLow",
    "the journal unwritable": "GuardianJournalUnwritable",
}


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run a program to completion; its exit status and its stdout and stderr together."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=cwd,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def seconds(text: str) -> float:
    """A systemd or compose time span: "15s", "2min", "1m30s", "500ms", or bare seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


# ---- the systemd unit ---------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it was given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: keep each directive on one line"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"line {number}: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return read_unit(UNIT)["Service"]


def one(directives: dict[str, list[str]], key: str) -> str:
    values = directives.get(key)
    assert values, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is given {len(values)} times"
    return values[0]


def unit_with_real_guardian(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart= runs the virtualenv's guardian instead of /opt/guardian's.

    `systemd-analyze verify` checks that ExecStart='s program exists and is executable; /opt/guardian is
    where docs/systemd.md's install puts it, which this machine does not have. Only that path is changed."""
    assert GUARDIAN.is_file(), GUARDIAN
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/guardian/bin/guardian ") == 1
    copy = tmp_path / "guardian.service"
    copy.write_text(text.replace("ExecStart=/opt/guardian/bin/guardian ", f"ExecStart={GUARDIAN} "))
    return copy


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need_systemd_analyze()
    status, said = run(
        analyze, "verify", "--recursive-errors=yes", "--man=no", unit_with_real_guardian(tmp_path)
    )
    assert (status, said.strip()) == (0, ""), said
    # The unit as shipped: the only complaint allowed is the program not being installed here.
    status, said = run(analyze, "verify", "--recursive-errors=yes", "--man=no", UNIT)
    complaints = [line for line in said.splitlines() if line.strip()]
    if Path("/opt/guardian/bin/guardian").is_file():
        assert (status, complaints) == (0, []), said
    else:
        assert complaints == [
            "guardian.service: Command /opt/guardian/bin/guardian is not executable: No such file or directory"
        ], said


def test_systemd_analyze_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above means something: verify does fail a unit with a typo or a bad value."""
    analyze = need_systemd_analyze()
    copy = unit_with_real_guardian(tmp_path)
    copy.write_text(
        copy.read_text().replace("WatchdogSec=", "WatchDogSec=").replace("UMask=0077", "UMask=0999")
    )
    status, said = run(analyze, "verify", "--recursive-errors=yes", "--man=no", copy)
    assert status != 0
    assert "Unknown key" in said and "WatchDogSec" in said, said
    assert "Failed to parse mode value, ignoring: 0999" in said, said


def test_the_exposure_score_is_the_one_the_docs_quote(tmp_path: Path) -> None:
    analyze = need_systemd_analyze()
    # --threshold is the exposure level times ten: fail above 2.0 ("OK" is up to 4.9).
    status, said = run(
        analyze, "security", "--offline=yes", "--threshold=20", unit_with_real_guardian(tmp_path)
    )
    assert status == 0, said
    score = re.search(r"Overall exposure level for guardian\.service: (\d+\.\d+) (\w+)", said)
    assert score is not None, said
    quoted = re.search(r"exposure level of (\d+\.\d+)", OPERATING_SYSTEMD.read_text())
    assert quoted is not None, "docs/systemd.md quotes no `systemd-analyze security` exposure level"
    assert quoted[1] == score[1], (
        f"systemd-analyze says {score[1]} {score[2]}; docs/systemd.md says {quoted[1]}"
    )


def need_systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: `apt-get install systemd` (make tools does this as root)"
        )
    return path


def test_the_unit_has_every_directive_the_contract_asks_for() -> None:
    unit = service()
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "Restart") == "on-failure"
    assert "78" in one(unit, "RestartPreventExitStatus").split(), (
        "a bad config (exit 78) must not restart-loop"
    )
    # guardian pings at half of WatchdogSec from its event loop; a few seconds leave room for a busy loop.
    assert 4 <= seconds(one(unit, "WatchdogSec")) <= 60
    assert seconds(one(unit, "TimeoutStopSec")) > SHUTDOWN_LIMIT_S + 1
    # READY=1 waits for every switch to be armed: a slow exchange at start must not fail the start.
    assert seconds(one(unit, "TimeoutStartSec")) >= 60
    assert one(unit, "StateDirectory") == "guardian"
    assert one(unit, "WorkingDirectory") == "/var/lib/guardian"
    assert unit.get("DynamicUser") == ["yes"] or unit.get("User", ["root"])[-1] not in ("", "root", "0")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "LimitCORE": "0",
    }.items():
        assert one(unit, key) == value, f"{key}={one(unit, key)!r}, expected {value!r}"
    assert unit["SystemCallFilter"][0] == "@system-service"
    assert read_unit(UNIT)["Install"]["WantedBy"] == ["multi-user.target"]
    # `systemctl reload guardian`: SIGHUP to the main process re-reads the configuration (test_reload.py).
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_the_unit_runs_guardian_run_with_the_config_in_etc() -> None:
    program, *argv = one(service(), "ExecStart").split()
    assert program == "/opt/guardian/bin/guardian"
    args = build_parser().parse_args(argv)
    assert (args.command, args.config) == ("run", Path("/etc/guardian/config.toml"))


def secret_files(config: Path) -> set[str]:
    """Every `*_file` value of a config: the names guardian looks up in $CREDENTIALS_DIRECTORY."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_file"):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return set(walk(tomllib.loads(config.read_text())))


def test_the_unit_loads_exactly_the_credentials_its_config_names() -> None:
    loaded = {}
    for entry in service()["LoadCredential"]:
        name, _, source = entry.partition(":")
        loaded[name] = source
    assert set(loaded) == secret_files(SYSTEMD_CONFIG)
    for name, source in loaded.items():
        assert source == f"/etc/guardian/credentials/{name}"


def test_the_systemd_config_keeps_its_journal_in_the_state_directory() -> None:
    config = tomllib.loads(SYSTEMD_CONFIG.read_text())
    journal = Path(config["journal"]["path"])
    assert journal.parent == Path("/var/lib") / one(service(), "StateDirectory")
    assert config["server"]["listen"].startswith("127.0.0.1:")


def fake_secrets(directory: Path, names: set[str]) -> dict[str, str]:
    """Plausible values for every secret file a config names, written to `directory`."""
    values = {}
    for name in names:
        if "api_secret" in name:
            value = base64.b64encode(os.urandom(64)).decode()
        elif "api_key" in name:
            value = f"exchange-key-{name}"
        else:
            value = base64.urlsafe_b64encode(os.urandom(32)).decode()
        (directory / name).write_text(value + "\n")
        values[name] = value
    return values


@pytest.mark.parametrize(
    ("config", "warnings"),
    [
        (SYSTEMD_CONFIG, []),
        (
            COMPOSE_CONFIG,
            [
                "warning: server.listen = '0.0.0.0:8787' is not a loopback address: guardian's API is "
                "reachable from other machines, in plain HTTP (no server.tls_cert_file)"
            ],
        ),
    ],
    ids=["systemd", "compose"],
)
def test_the_example_config_passes_check_config_with_its_secrets_as_files(
    config: Path, warnings: list[str], tmp_path: Path
) -> None:
    secrets = fake_secrets(tmp_path, secret_files(config))
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDIAN_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    # Without the secrets, the config is refused (exit 78) naming where it looked: none is inline.
    status, said = run(GUARDIAN, "check-config", "--config", config, env=env)
    assert status == 78, said
    assert "$CREDENTIALS_DIRECTORY" not in said and "/run/secrets" in said, said
    status, said = run(
        GUARDIAN, "check-config", "--config", config, env={**env, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert status == 0, said
    assert [line for line in said.splitlines() if line.startswith("warning:")] == warnings
    for value in secrets.values():
        assert value not in said


# ---- Prometheus ---------------------------------------------------------------------------------------


def test_promtool_checks_the_prometheus_config_and_its_rule_file() -> None:
    status, said = run(need("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert status == 0, said
    assert "SUCCESS: 1 rule files found" in said, said
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert 5 <= seconds(config["global"]["scrape_interval"]) <= 10
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "guardian"]
    assert job["static_configs"] == [{"targets": ["guardian:8787"]}]


def test_promtool_checks_the_alert_rules() -> None:
    status, said = run(need("promtool"), "check", "rules", ALERTS)
    assert status == 0, said
    assert f"SUCCESS: {len(alert_rules())} rules found" in said, said


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    status, said = run(need("promtool"), "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert status == 0, said
    assert "SUCCESS" in said, said


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_the_issue_asks_for_exists() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    missing = {what: name for what, name in REQUIRED_ALERTS.items() if name not in names}
    assert not missing, missing


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "no test shows these firing"
    assert names - quiet == set(), "no test shows these staying quiet"


def test_every_alert_has_a_severity_a_summary_a_runbook_and_a_runbook_entry() -> None:
    runbook = RUNBOOK.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["runbook"].endswith(f"docs/runbook.md#{name.lower()}"), name
        assert f"\n## {name}\n" in runbook, f"docs/runbook.md has no entry for {name}"


# ---- the metric names in PromQL ----------------------------------------------------------------------

# PromQL's own words: aggregations, keywords and functions.
_PROMQL_WORDS = """
sum min max avg group stddev stdvar count count_values bottomk topk quantile
by without on ignoring group_left group_right bool and or unless offset atan2 inf nan
abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week day_of_year
days_in_month delta deriv exp floor histogram_count histogram_sum histogram_fraction histogram_quantile
holt_winters hour idelta increase irate label_join label_replace ln log2 log10 minute month predict_linear
rate resets round scalar sgn sort sort_desc sqrt time timestamp vector year avg_over_time min_over_time
max_over_time sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time
last_over_time present_over_time
"""
PROMQL_WORDS = frozenset(_PROMQL_WORDS.split())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not PromQL's own words, once
    strings, label matchers, ranges and grouping label lists are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    found = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        word = match[0]
        if word in PROMQL_WORDS:
            continue
        called = text[match.end() :].lstrip().startswith("(")
        assert not called, f"unknown PromQL function {word!r} in {expr!r}: add it to PROMQL_WORDS"
        found.add(word)
    return found


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (account, le) (rate(guardian_x_bucket{account=~"a|b"}[5m])))'
        ' > 0.5 and on (job) absent(up{job="g"}) or guardian_y offset 5m unless vector(1)'
    )
    assert metric_names(expr) == {"guardian_x_bucket", "up", "guardian_y"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it: its variables replaced by what they stand for."""
    promql = expr.replace("$__rate_interval", "1m").replace("$account", ".+")
    assert "$" not in promql, f"a Grafana variable the tests do not know: {expr!r}"
    return promql


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the query variables' selectors."""
    queries = [
        target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            definition = (
                variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            )
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", definition)
            assert selector is not None, definition
            queries.append(selector[1])
    return queries


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    doc = dashboard()
    assert doc["uid"] == "guardian"
    titles = {panel["title"] for panel in doc["panels"]}
    for title in (
        "Time left on each switch",
        "Switch state history",
        "Refresh latency",
        "Orders forwarded vs refused",
        "Refused by reason",
        "Rate budget available",
        "Mode",
        "Exchange link and state freshness",
        "Positions (contracts)",
        "Margin",
    ):
        assert title in titles
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_every_dashboard_query_is_promql_promtool_accepts(tmp_path: Path) -> None:
    """promtool parses PromQL only in rule files: each query becomes a recording rule."""
    rules = tmp_path / "dashboard-rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_queries()):
        lines += [
            f"      - record: dashboard_query_{i}",
            f"        expr: {json.dumps(grafana_to_promql(expr))}",
        ]
    rules.write_text("\n".join(lines) + "\n")
    status, said = run(need("promtool"), "check", "rules", rules)
    assert status == 0, said


async def exported_metric_names(service_url: str) -> set[str]:
    """The sample names a scrape of the daemon can show, from its families' declared types."""
    async with aiohttp.ClientSession() as http, http.get(service_url + "/metrics") as response:
        text = await response.text()
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_count", "_sum"],
        "summary": ["", "_count", "_sum"],
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


async def test_alerts_and_dashboard_use_only_metric_names_the_daemon_exports(sim: Simulator) -> None:
    async with serving(account_config(sim.url)) as service:
        await wait_for(lambda: service.accounts[0].switch.refreshes >= 1, what="a refresh")
        exported = await exported_metric_names(service.url)
    assert "guardian_switch_armed" in exported and "guardian_requests_total" in exported  # the scrape is real
    used = {}
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    for expr in dashboard_queries():
        used[f"dashboard query {expr!r}"] = metric_names(grafana_to_promql(expr))
    unknown = {
        where: names - exported - PROMETHEUS_OWN
        for where, names in used.items()
        if names - exported - PROMETHEUS_OWN
    }
    assert not unknown, unknown
    assert all(used.values()), [where for where, names in used.items() if not names]


# ---- a real Prometheus: the rules and the dashboard against a live guardian --------------------------

# A 60 s exchange timer (as in production, so that the time-left alert has no cause) with a quick beat.
STEADY = SwitchConfig(refresh_min_s=1.0, refresh_max_s=2.0, timeout_s=60, min_remaining_s=20.0)
ADMIN = "admin-token-for-the-deploy-tests"


async def api(http: aiohttp.ClientSession, base: str, path: str) -> Any:
    async with http.get(base + path) as response:
        doc = await response.json()
    assert doc["status"] == "success", doc
    return doc["data"]


async def test_a_real_prometheus_evaluates_the_rules_and_the_dashboard_against_a_live_guardian(
    sim: Simulator, tmp_path: Path
) -> None:
    async with (
        # The account state's stream on, so that its alerts are evaluated on real series too.
        serving(account_config(sim.url, switch=STEADY, stream=StreamConfig()), admin_token=ADMIN) as service,
        aiohttp.ClientSession() as http,
        prometheus(tmp_path, service.url.removeprefix("http://"), rules=[ALERTS]) as base,
    ):

        async def scraped() -> bool:
            up = await query(http, base, 'up{job="guardian"}')
            return bool(up) and up[0]["value"][1] == "1"

        for _ in range(150):  # Prometheus starts in about a second
            if await scraped():
                break
            await asyncio.sleep(0.1)
        assert await scraped(), "Prometheus did not scrape guardian"

        # Every rule is evaluated without error, and Prometheus read the file as the tests' reader did.
        async def rules() -> list[dict[str, Any]]:
            data = await api(http, base, "/api/v1/rules")
            return [rule for group in data["groups"] for rule in group["rules"]]

        for _ in range(50):
            loaded = await rules()
            if loaded and all(not rule["lastEvaluation"].startswith("0001") for rule in loaded):
                break
            await asyncio.sleep(0.1)
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in loaded] == [
            (rule["alert"], "ok", "") for rule in alert_rules()
        ]
        for rule, ours in zip(loaded, alert_rules(), strict=True):
            assert rule["labels"] == ours["labels"] and rule["annotations"] == ours["annotations"]
            assert rule["duration"] == seconds(ours.get("for", "0s"))

        # A healthy guardian gives no alert any cause (once the first scrape has replaced absent(up)).
        async def active() -> list[dict[str, Any]]:
            alerts: list[dict[str, Any]] = (await api(http, base, "/api/v1/alerts"))["alerts"]
            return alerts

        for _ in range(50):
            if not await active():
                break
            await asyncio.sleep(0.1)
        assert await active() == []

        # Every dashboard query runs; the panels that matter show the live state.
        for expr in dashboard_queries():
            await query(http, base, grafana_to_promql(expr))
        queries = {panel["title"]: panel["targets"] for panel in dashboard()["panels"] if "targets" in panel}
        state = await query(http, base, grafana_to_promql(queries["Switch state history"][0]["expr"]))
        assert [(item["metric"], item["value"][1]) for item in state] == [({"account": "main"}, "1")]  # armed
        left = await query(http, base, grafana_to_promql(queries["Time left on each switch"][0]["expr"]))
        assert 20 < float(left[0]["value"][1]) <= 60
        mode = await query(http, base, grafana_to_promql(queries["Mode"][0]["expr"]))
        assert [item["value"][1] for item in mode] == ["0"]  # active

        # An operator halts the account: the alert fires from the live daemon's metrics.
        headers = {"Authorization": f"Bearer {ADMIN}"}
        body = {"account": "main", "mode": "halted"}
        async with http.post(service.url + "/guardian/mode", json=body, headers=headers) as response:
            assert response.status == 200
        for _ in range(50):
            firing = [a for a in await active() if a["state"] == "firing"]
            if firing:
                break
            await asyncio.sleep(0.1)
        assert [(a["labels"]["alertname"], a["labels"]["account"]) for a in firing] == [
            ("GuardianAccountHalted", "main")
        ]
        mode = await query(http, base, grafana_to_promql(queries["Mode"][0]["expr"]))
        assert [item["value"][1] for item in mode] == ["2"]  # halted


# ---- Docker -------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[int, str, str]]:
    """(stage, INSTRUCTION, arguments) for every instruction, continuation lines joined; stage 0 is
    before the first FROM."""
    instructions = []
    stage = 0
    logical = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        instruction, _, arguments = logical.strip().partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stage += 1
        instructions.append((stage, instruction.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(stage for stage, _, _ in steps)
    return [(instruction, arguments) for stage, instruction, arguments in steps if stage == last]


def exec_form(arguments: str) -> list[str]:
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), arguments
    return argv


def test_the_dockerfile_builds_in_two_stages_on_a_slim_python() -> None:
    steps = dockerfile()
    args = {
        arguments.partition("=")[0]: arguments.partition("=")[2]
        for stage, instruction, arguments in steps
        if instruction == "ARG" and stage == 0
    }
    froms = [arguments for _, instruction, arguments in steps if instruction == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    for base in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base.split()[0])
        # A tag for the reader, and the digest that decides: the same bytes on every build.
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*@sha256:[0-9a-f]{64}", image), image
    assert ("COPY", "--from=build /opt/guardian /opt/guardian") in final_stage()


def test_the_image_runs_guardian_run_as_a_non_root_user_in_exec_form() -> None:
    final = final_stage()
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entrypoint = [exec_form(arguments) for instruction, arguments in final if instruction == "ENTRYPOINT"]
    command = [exec_form(arguments) for instruction, arguments in final if instruction == "CMD"]
    assert len(entrypoint) == 1 and len(command) == 1, "ENTRYPOINT and CMD in exec form (JSON arrays)"
    argv = entrypoint[0] + command[0]
    assert argv[0] == "/opt/guardian/bin/guardian"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("run", Path("/etc/guardian/config.toml"))
    env = " ".join(arguments for instruction, arguments in final if instruction == "ENV")
    assert "PYTHONUNBUFFERED=1" in env.split()
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("VOLUME", '["/var/lib/guardian"]') in final


def healthcheck() -> list[str]:
    (found,) = [arguments for instruction, arguments in final_stage() if instruction == "HEALTHCHECK"]
    options, _, command = found.partition(" CMD ")
    assert re.fullmatch(r"(--(interval|timeout|start-period|retries)=\w+\s*)+", options), options
    argv = exec_form(command)
    # guardian's own probe (no curl in slim images), on the configuration the CMD runs.
    assert argv == ["/opt/guardian/bin/guardian", "healthcheck", "--config", "/etc/guardian/config.toml"]
    return argv


async def test_the_image_healthcheck_command_tells_a_live_guardian_from_a_dead_one(
    sim: Simulator, tmp_path: Path
) -> None:
    argv = healthcheck()

    async def check(config: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardian", *argv[1:3], str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode is not None
        return proc.returncode, (out + err).decode()

    async with serving(account_config(sim.url)) as service:
        port = int(service.url.rsplit(":", 1)[1])
        # As in a container: listening on every address, asked on loopback; no secret needed to ask.
        config = tmp_path / "config.toml"
        config.write_text(
            f'[server]\nlisten = "0.0.0.0:{port}"\n[[accounts]]\nname = "main"\napi_key_env = "UNSET"\n'
        )
        code, said = await check(config)
        assert code == 0 and f"http://127.0.0.1:{port}/healthz: HTTP 200" in said, said
    code, said = await check(config)
    assert code == 1 and f"no answer from http://127.0.0.1:{port}" in said  # stopped: nothing listens
    code, said = await check(tmp_path / "missing.toml")
    assert code != 0 and "missing.toml" in said


def test_no_secret_can_reach_the_image() -> None:
    steps = dockerfile()
    assert not [arguments for _, instruction, arguments in steps if instruction == "ADD"], "ADD: use COPY"
    for _, instruction, arguments in steps:
        if instruction in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"secret|token|password|api_?key", arguments, re.IGNORECASE), arguments
        if instruction == "COPY" and not arguments.startswith("--from="):
            *sources, _ = arguments.split()
            assert set(sources) <= {"pyproject.toml", "README.md", "requirements/run.txt", "guardian"}, (
                arguments
            )
        if instruction == "RUN":
            assert "/run/secrets" not in arguments and "credentials" not in arguments, arguments
    # The build context itself holds nothing but the package: .dockerignore excludes everything else.
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    assert {p for p in patterns if p.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!requirements/run.txt",
        "!guardian/",
    }


def test_the_image_installs_the_runtime_lock_with_hashes_and_nothing_unhashed() -> None:
    runs = [
        arguments for stage, instruction, arguments in dockerfile() if instruction == "RUN" and stage == 1
    ]
    installs = [command for command in runs if "pip install" in command]
    assert len(installs) == 2, installs
    locked, own = installs
    assert "--require-hashes" in locked and "--requirement requirements/run.txt" in locked
    assert "test.txt" not in " ".join(runs), "the image has no test tools"
    # guardian itself: no build environment fetched from an index, no dependency resolved beside the lock.
    assert "--no-deps" in own and "--no-build-isolation" in own


# ---- compose ------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_runs_guardian_locked_down() -> None:
    guardian = compose()["services"]["guardian"]
    assert guardian["build"] == {"context": "../..", "dockerfile": "Dockerfile"}
    assert (
        COMPOSE.parent / guardian["build"]["context"] / guardian["build"]["dockerfile"]
    ).resolve() == DOCKERFILE
    assert guardian["init"] is True
    assert guardian["read_only"] is True
    assert guardian["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in guardian["security_opt"]
    assert seconds(guardian["stop_grace_period"]) > SHUTDOWN_LIMIT_S + 1
    assert "/tmp" in guardian["tmpfs"]
    assert "environment" not in guardian, "secrets go through compose secrets, not the environment"


def test_compose_publishes_every_port_on_loopback_only() -> None:
    services = compose()["services"]
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published["guardian"] == ["127.0.0.1:8787:8787"]
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_compose_mounts_the_config_the_secrets_and_the_journal_volume() -> None:
    doc = compose()
    guardian = doc["services"]["guardian"]
    config = tomllib.loads(COMPOSE_CONFIG.read_text())
    assert "./config.toml:/etc/guardian/config.toml:ro" in guardian["volumes"]
    journal_dir = Path(config["journal"]["path"]).parent
    assert f"journal:{journal_dir}" in guardian["volumes"] and "journal" in doc["volumes"]
    # guardian listens where the port mapping and Prometheus' target expect it.
    assert config["server"]["listen"] == "0.0.0.0:8787"
    # Every secret file the config names is a compose secret of the guardian service, from ./secrets/.
    assert set(guardian["secrets"]) == secret_files(COMPOSE_CONFIG)
    for name in guardian["secrets"]:
        assert doc["secrets"][name] == {"file": f"./secrets/{name}"}
    assert "deploy/compose/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_wires_prometheus_and_grafana_to_the_deploy_files() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    assert "../prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    grafana = services["grafana"]
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.endswith(":ro")
    )
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["../grafana/guardian.json"] == "/etc/grafana/dashboards/guardian.json"
    for source in mounts:
        assert (COMPOSE.parent / source).exists(), source
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "guardian.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    source = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
