"""The alert rules and the dashboard refer to metrics a worker really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.worker import telemetry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_NAME = re.compile(r"\b(eventsink_[a-z_]+)")


def exported() -> set[str]:
    names = set()
    for family in telemetry.REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_cover_the_issue_and_use_real_metrics() -> None:
    by_name = {r["alert"]: r for r in rules()}
    assert set(by_name) == {
        "EventsinkLagHigh",
        "EventsinkDeadLetters",
        "EventsinkUpsertSlow",
        "EventsinkWorkerDown",
        "EventsinkNoCommit",
        "EventsinkPartitionStalled",
        "EventsinkPartitionStopped",
        "EventsinkRecordsLost",
        "EventsinkFetchFailing",
        "EventsinkRebalanceStuck",
        "EventsinkPipelineCrashed",
    }
    assert "> 10000" in by_name["EventsinkLagHigh"]["expr"] and by_name["EventsinkLagHigh"]["for"] == "5m"
    assert "0.95" in by_name["EventsinkUpsertSlow"]["expr"] and "> 0.5" in by_name["EventsinkUpsertSlow"]["expr"]
    assert "> 120" in by_name["EventsinkNoCommit"]["expr"]
    known = exported()
    for rule in rules():
        assert rule["annotations"]["summary"]
        for name in _NAME.findall(rule["expr"]):
            assert name in known, f"{rule['alert']} uses {name}, which no worker exports"


def promtool() -> str:
    """promtool's path. CI installs it (.ci/run: `make test` runs `make packages`), so there its absence fails the
    test; elsewhere the test skips, saying how to get it."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is missing in CI: `make packages` (as root) installs Debian's prometheus package")
    pytest.skip("promtool is not installed: `make packages` as root, or apt-get install prometheus")


def rule_files() -> list[Path]:
    """The rule files Prometheus loads (prometheus.yml's rule_files, as compose mounts them)."""
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounted = {
        target: DEPLOY.parent / source
        for source, target, *_ in (v.split(":") for v in compose["services"]["prometheus"]["volumes"])
    }
    files = [mounted[name] for name in scrape["rule_files"]]
    assert DEPLOY / "prometheus" / "alerts.yml" in [f.resolve() for f in files]
    return files


def test_promtool_accepts_every_rule_file_prometheus_loads() -> None:
    """Alerting and recording rules alike: promtool parses every expression and template."""
    for path in rule_files():
        done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        count = sum(len(g["rules"]) for g in yaml.safe_load(path.read_text())["groups"])
        assert f"SUCCESS: {count} rules found" in done.stdout


def test_promtool_unit_tests_of_the_alerts_that_guard_data_pass() -> None:
    """deploy/prometheus/tests/*.yml: each alert fires on the series a worker exports when its
    condition holds, with the labels and words an operator reads, and stays quiet otherwise."""
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
    tested = {
        t["alertname"]
        for path in tests
        for case in yaml.safe_load(path.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    guards = {"EventsinkPartitionStopped", "EventsinkRecordsLost", "EventsinkPartitionStalled", "EventsinkDeadLetters"}
    assert guards <= tested, f"no promtool test for {guards - tested}"
    assert tested <= {r["alert"] for r in rules()}
    for path in tests:
        loaded = {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]}
        assert loaded <= {f.resolve() for f in rule_files()}, f"{path.name} tests rules Prometheus does not load"
        done = subprocess.run(
            [promtool(), "test", "rules", path.name], cwd=path.parent, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_the_dashboard_plots_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "eventsink.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    known = exported()
    used = {name for e in exprs for name in _NAME.findall(e)}
    assert used and used <= known, used - known
    wanted = {
        "eventsink_events_consumed_total",
        "eventsink_ledger_lag",
        "eventsink_consumer_lag",
        "eventsink_dead_letters_total",
        "eventsink_upsert_seconds_bucket",
    }
    assert wanted <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_provisions_prometheus_and_grafana_with_these_files() -> None:
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = [v.split(":")[0] for svc in ("prometheus", "grafana") for v in compose["services"][svc]["volumes"]]
    for mount in mounts:
        assert (DEPLOY.parent / mount).exists(), mount
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "eventsink"  # the alerts' up{job="eventsink"}


def test_without_promtool_the_rule_tests_fail_in_ci_and_skip_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is missing in CI"):
        promtool()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed"):
        promtool()
