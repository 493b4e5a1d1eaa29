"""Producers evolve without breaking ingestion, with real workers: a field added mid-stream is
kept (or, when refused, dead-lettered naming it and replayable), the published JSON Schemas judge
records as the worker does, and metric retention prunes next to a live worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sinks.dsn import with_user
from streams.dev.loadgen.chat import ChatLoad
from streams.dev.loadgen.metric import MetricLoad, produce_metrics
from streams.publish.publisher import Publisher
from tests.contract import GAPS, NOT_JSON, SAMPLES, TENANT, VALID, VALUE, schema_faults
from tests.helpers import Scenario, WorkerProcess, ledger_totals, read_topic, wait_applied, wait_until
from tests.workload import Sent, create_topics, metric_json, publish_chat, send_raw

pytestmark = pytest.mark.e2e


def worker(s: Scenario, tag: str = "w", **env: str) -> WorkerProcess:
    return WorkerProcess(s.env(**env), s.data_dir / f"{tag}.log").start()


def verified(s: Scenario, topic: str) -> dict[str, Any]:
    done = s.cli("verify", topic, "--json", dsn=s.dsn)
    report = orjson.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["problems"]
    return report["total"]


def evolved(tenant: str, dedupe_id: str, **new: object) -> bytes:
    """A metric from a producer that knows fields the workers do not."""
    return orjson.dumps({**orjson.loads(metric_json(tenant, dedupe_id)), **new})


# Dead-letter reasons that are not about the value alone (so not the value schema's to say).
BEYOND_THE_VALUE = {"key_mismatch", "tenant_mismatch", "db_rejected"}


def last_of(placed: list[tuple[int, int]]) -> dict[int, int]:
    last: dict[int, int] = {}
    for p, o in placed:
        last[p] = max(o, last.get(p, -1))
    return last


def metric_rows(dsn: str, tenant: str) -> dict[str, tuple[Any, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT dedupe_id, attributes, schema_version FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        )
        return {r[0]: (r[1], r[2]) for r in rows}


def unknown_fields_counted(w: WorkerProcess, topic: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{w.web}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        s.labels["field"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "eventsink_unknown_fields_total" and s.labels["topic"] == topic
    }


def test_a_field_added_mid_stream_is_kept_on_every_event(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    conv, analysis = str(uuid.uuid4()), str(uuid.uuid4())
    chat = {"tenant_id": tenant, "conversation_id": conv, "role": "user", "content": "hi"}
    step = {"tenant_id": tenant, "analysis_id": analysis, "status": "pending"}
    w = worker(s)
    try:
        send_raw(
            s, sent, [(tenant.encode(), metric_json(tenant, f"old-{i}")) for i in range(300)], unique={tenant: 300}
        )
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        # The producer is upgraded: every event now carries a field (and a version) the workers do not know.
        upgraded = [
            (tenant.encode(), evolved(tenant, f"new-{i}", region=f"r{i % 3}", schema_version=1)) for i in range(300)
        ]
        send_raw(s, sent, upgraded, unique={tenant: 300})
        at = "2024-05-01T12:00:00Z"
        others = Sent()
        chats = send_raw(
            s,
            others,
            [
                (tenant.encode(), orjson.dumps({**chat, "dedupe_id": f"c{i}", "occurred_at": at, "locale": "fr"}))
                for i in range(20)
            ],
            topic=s.chat_topic,
        )
        steps = send_raw(
            s,
            others,
            [(tenant.encode(), orjson.dumps({**step, "dedupe_id": "a0", "occurred_at": at, "priority": {"p": 1}}))],
            topic=s.analysis_topic,
        )
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        wait_applied(s.dsn, s.group, s.chat_topic, last_of(chats))
        wait_applied(s.dsn, s.group, s.analysis_topic, last_of(steps))
        assert unknown_fields_counted(w, s.topic) == {"region": 300.0}
        assert unknown_fields_counted(w, s.chat_topic) == {"locale": 20.0}
    finally:
        assert w.stop() == 0
    rows = metric_rows(s.dsn, tenant)
    assert len(rows) == 600
    assert all(rows[f"old-{i}"] == (None, None) for i in range(300))
    assert all(rows[f"new-{i}"] == ({"region": f"r{i % 3}"}, 1) for i in range(300))
    with psycopg.connect(s.dsn) as conn:
        kept = conn.execute("SELECT DISTINCT attributes FROM eventsink.chat_messages WHERE session_id = %s", (conv,))
        assert kept.fetchall() == [({"locale": "fr"},)]
        kept = conn.execute("SELECT attributes FROM eventsink.analysis_events WHERE analysis_id = %s", (analysis,))
        assert kept.fetchall() == [({"priority": {"p": 1}},)]
    assert asyncio.run(read_topic(s.bootstrap, s.dlq_topic)) == []
    assert ledger_totals(s.dsn, s.group, s.topic)["dead_letters"] == 0
    assert verified(s, s.topic)["applied"] == 600


def test_with_reject_the_new_field_goes_to_the_dlq_named_and_is_replayable(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    plain = [(tenant.encode(), metric_json(tenant, f"plain-{i}")) for i in range(100)]
    upgraded = [(tenant.encode(), evolved(tenant, f"new-{i}", region="eu")) for i in range(100)]
    send_raw(s, sent, [r for pair in zip(plain, upgraded, strict=True) for r in pair], unique={tenant: 100})
    strict = worker(s, "strict", EVENTSINK_METRIC_UNKNOWN_FIELDS="reject")
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        assert unknown_fields_counted(strict, s.topic) == {"region": 100.0}
    finally:
        assert strict.stop() == 0
    dead = asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    assert len(dead) == 100
    assert {d.info.reason for d in dead} == {"unknown_field"}
    assert all("'region'" in d.info.detail for d in dead)
    assert set(metric_rows(s.dsn, tenant)) == {f"plain-{i}" for i in range(100)}

    tolerant = worker(s, "tolerant")  # the policy back to keep: the refused events can come back
    try:
        done = s.cli("dlq", "replay", s.dlq_topic, "--reason", "unknown_field")
        assert done.returncode == 0 and "replayed 100 record(s)" in done.stderr, done.stderr
        wait_until(lambda: len(metric_rows(s.dsn, tenant)) == 200, 90, what="replayed events applied")
    finally:
        assert tolerant.stop() == 0
    rows = metric_rows(s.dsn, tenant)
    assert all(rows[f"new-{i}"] == ({"region": "eu"}, None) for i in range(100))


def test_records_the_schema_rejects_are_the_ones_the_worker_dead_letters(scenario: Scenario) -> None:
    """The published JSON Schemas against a real worker's dead letters: load-generator traffic with
    invalid records, and a sample of invalid records of each kind, each faulting one field."""
    s, sent = scenario, Sent()
    create_topics(s)
    topic_of = {"metric": s.topic, "chat": s.chat_topic, "analysis": s.analysis_topic}
    kind_of = {t: k for k, t in topic_of.items()}
    key = TENANT.encode()  # the samples' tenant
    last: dict[str, dict[int, int]] = {t: {} for t in topic_of.values()}

    def sent_to(topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        for p, o in send_raw(s, Sent(), records, topic=topic):
            last[topic][p] = max(o, last[topic].get(p, -1))

    for kind, topic in topic_of.items():
        sent_to(topic, [(key, x.value) for x in SAMPLES if x.kind == kind] + [(key, v) for k, v in VALID if k == kind])
        # (a value over 1 MiB is past the producer's request limit: the unit test judges that one)
        sent_to(topic, [(key, v) for k, _, v, _, _ in GAPS if k == kind and len(v) < 1_000_000])

    async def metrics_load() -> None:
        async with Publisher(s.bootstrap) as pub:
            report = await produce_metrics(
                pub, s.topic, MetricLoad(count=600, invalid=0.25, seed=1301, tenant_ids=sent.tenants)
            )
        for p, o in report.last_offsets.items():
            last[s.topic][p] = max(o, last[s.topic].get(p, -1))

    asyncio.run(metrics_load())
    chat = publish_chat(s, ChatLoad(conversations=30, invalid=0.2, seed=1302, tenant_ids=sent.tenants))
    for p, o in chat.last_offsets.items():
        last[s.chat_topic][p] = max(o, last[s.chat_topic].get(p, -1))
    w = worker(s)
    try:
        for topic, offsets in last.items():
            wait_applied(s.dsn, s.group, topic, offsets)
    finally:
        assert w.stop() == 0
    by_sample = {(x.kind, x.value): x for x in SAMPLES}
    gaps = {(k, v) for k, _, v, _, _ in GAPS}
    judged = {"agree_rejected": 0, "agree_applied": 0, "gaps": 0}
    for topic, kind in kind_of.items():
        dead = {
            (d.info.source_partition, d.info.source_offset): d.info
            for d in asyncio.run(read_topic(s.bootstrap, f"{topic}.dlq"))
        }
        for r in asyncio.run(read_topic(s.bootstrap, topic)):
            faults, letter = schema_faults(kind, r.value), dead.get((r.partition, r.offset))
            if letter is not None and letter.reason in BEYOND_THE_VALUE:
                letter = None  # the value was valid: its key or the database refused it
            if (kind, r.value) in gaps or (letter is not None and letter.reason == "too_large" and not faults):
                judged["gaps"] += 1  # what the schema cannot say: see test_what_the_schema_cannot_say
                continue
            assert bool(faults) == (letter is not None), (kind, r.value[:300], faults, letter)
            if letter is None:
                judged["agree_applied"] += 1
                continue
            judged["agree_rejected"] += 1
            assert all(f in letter.detail for f in faults - {NOT_JSON, VALUE}), (faults, letter.detail)
            sample = by_sample.get((kind, r.value))
            if sample is not None:
                assert (letter.reason, faults) == (sample.reason, {sample.field}), sample.name
    assert judged["agree_rejected"] >= len(SAMPLES) + 150 and judged["agree_applied"] > 500, judged
    assert judged["gaps"] >= len(GAPS) - 1


def test_metric_retention_prunes_next_to_a_live_worker_and_verify_reconciles(
    scenario: Scenario, writer_url: str, database_url: str
) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    young_at = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    old = [
        (tenant.encode(), metric_json(tenant, f"old-{i}", occurred_at=f"2005-06-01T00:00:{i % 60:02d}Z"))
        for i in range(1500)
    ]
    young = [(tenant.encode(), metric_json(tenant, f"young-{i}", occurred_at=young_at)) for i in range(300)]
    send_raw(s, sent, old + young, unique={tenant: 1800})
    w = worker(s)
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        # A cut in 2010: the 2005 events go, nothing of this decade does.
        days = (datetime.now(UTC) - datetime(2010, 1, 1, tzinfo=UTC)).days
        retention_dsn = with_user(database_url, "eventsink_retention") if writer_url != database_url else s.dsn
        started = datetime.now(UTC)
        run = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "retention", "--metrics-days", str(days), "--batch", "5", "--yes"],
            env=s.env(retention_dsn),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        applied_before = ledger_totals(s.dsn, s.group, s.topic)["rows_applied"]
        live = Sent(tenants=sent.tenants)
        stop = threading.Event()

        def keep_producing() -> None:  # young and old events while retention runs
            n = 0
            while not stop.is_set():
                chunk = [
                    (
                        tenant.encode(),
                        metric_json(tenant, f"live-{n + i}", occurred_at=young_at if i % 4 else "2005-01-01T00:00:00Z"),
                    )
                    for i in range(40)
                ]
                send_raw(s, live, chunk, unique={tenant: 40})
                n += 40

        producer = threading.Thread(target=keep_producing)
        producer.start()
        try:
            _, err = run.communicate(timeout=240)
        finally:
            stop.set()
            producer.join()
        assert run.returncode == 0, err
        assert ledger_totals(s.dsn, s.group, s.topic)["rows_applied"] > applied_before, "the worker wrote meanwhile"
        wait_applied(
            s.dsn, s.group, s.topic, {p: max(o, live.last_offsets.get(p, -1)) for p, o in sent.last_offsets.items()}
        )
    finally:
        assert w.stop() == 0
    removed = int(err.split("removed ")[1].split(" metric rows")[0])
    assert removed >= 1500 and "occurred_at before 2010-01-0" in err.replace("\n", " "), err
    rows = metric_rows(s.dsn, tenant)
    assert not any(d.startswith("old-") for d in rows), "every old row there when the run started is gone"
    live_young = {f"live-{i}" for i in range(live.sent) if i % 40 % 4}
    assert {f"young-{i}" for i in range(300)} | live_young <= rows.keys(), "no young row was touched"
    with psycopg.connect(s.dsn) as conn:
        late = conn.execute(
            "SELECT min(received_at) FROM eventsink.metrics_raw WHERE tenant_id = %s AND occurred_at < '2010-01-01'",
            (tenant,),
        ).fetchone()[0]  # type: ignore[index]
    assert late is None or late > started, "an old row left behind arrived after the run started"
    total = verified(s, s.topic)
    assert total["missing"] == 0 and total["pruned"] >= 1500
    assert total["applied"] + total["pruned"] == total["unique"] == 1800 + live.unique
