"""A worker's /metrics, /healthz and /readyz, scraped while it works."""

from __future__ import annotations

import orjson
import pytest

from tests.helpers import Scenario, WorkerProcess, wait_applied, wait_until
from tests.proxy import TcpProxy, pg_address, proxied
from tests.web import get, samples, total
from tests.workload import Sent, create_topics, publish

pytestmark = pytest.mark.e2e


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
    with TcpProxy(*pg_address(s.dsn)) as proxy:
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
