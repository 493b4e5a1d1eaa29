"""A worker's /metrics, /healthz and /readyz, scraped while it works."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_worker import _pg_address, proxied
from tests.helpers import Scenario, WorkerProcess, wait_applied, wait_until
from tests.proxy import TcpProxy
from tests.workload import Sent, create_topics, publish

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def samples(w: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"{w.web}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_metrics_count_a_known_workload(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    watched = sent.tenants[0]
    w = WorkerProcess(s.env(EVENTSINK_TELEMETRY_TENANTS=watched), s.data_dir / "w.log").start()
    try:
        wait_until(lambda: get(f"{w.web}/healthz")[0] == 200, 60, what="/healthz")
        publish(s, sent, 2000, duplicates=0.2, invalid=0.05, seed=21)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        m = samples(w)
    finally:
        w.stop()
    t = s.topic
    assert total(m, "eventsink_events_consumed_total", topic=t) == sent.sent
    assert total(m, "eventsink_rows_applied_total", topic=t) == sent.unique
    assert total(m, "eventsink_duplicates_dropped_total", topic=t) == sent.duplicates
    assert total(m, "eventsink_dead_letters_total", topic=t) == sent.invalid
    assert len({ls for (n, ls) in m if n == "eventsink_dead_letters_total" and ("topic", t) in ls}) >= 4  # by reason
    assert (
        total(m, "eventsink_batch_size_count", topic=t) > 0 and total(m, "eventsink_upsert_seconds_count", topic=t) > 0
    )
    assert total(m, "eventsink_ledger_lag", topic=t) == 0
    assert total(m, "eventsink_assigned_partitions", topic=t) == 4
    assert total(m, "eventsink_last_commit_timestamp_seconds", topic=t) > 0
    assert total(m, "eventsink_rebalances_total") >= 1
    assert ("eventsink_db_pool_connections", (("state", "idle"),)) in m
    # Only the allow-listed tenant gets a label of its own.
    tenants = {dict(ls)["tenant"] for (n, ls) in m if n == "eventsink_tenant_rows_applied_total"}
    assert tenants == {watched}
    assert total(m, "eventsink_tenant_rows_applied_total", tenant=watched) == sent.unique_per_tenant[watched]


def test_readyz_follows_the_database(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    with TcpProxy(*_pg_address(s.dsn)) as proxy:
        w = WorkerProcess(s.env(proxied(s.worker_dsn, proxy)), s.data_dir / "w.log").start()
        try:
            wait_until(lambda: get(f"{w.web}/readyz")[0] == 200, 60, what="ready")
            _, body = get(f"{w.web}/readyz")
            report = orjson.loads(body)
            assert report["checks"] == {"database": "ok", "broker": "ok", "partitions": "ok"}
            assert sorted(report["assigned"][s.topic]) == [0, 1, 2, 3]
            proxy.cut()
            wait_until(lambda: get(f"{w.web}/readyz")[0] == 503, 30, what="unready")
            report = orjson.loads(get(f"{w.web}/readyz")[1])
            assert report["checks"]["database"] != "ok" and report["checks"]["broker"] == "ok"
            assert get(f"{w.web}/healthz")[0] == 200  # alive, just not ready
            proxy.restore()
            wait_until(lambda: get(f"{w.web}/readyz")[0] == 200, 60, what="ready again")
            publish(s, sent, 300, seed=22)
            wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        finally:
            w.stop()
