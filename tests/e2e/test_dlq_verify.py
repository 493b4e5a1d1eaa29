"""`eventsink verify` as an oracle, and the DLQ tools an operator uses after an incident."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import psycopg
import pytest

from tests.helpers import (
    Scenario,
    WorkerProcess,
    commit_group_offsets,
    expected,
    read_topic,
    wait_applied,
    wait_until,
)
from tests.workload import Sent, apply_all_kinds, create_topics, publish, send_raw

pytestmark = pytest.mark.e2e


def verified(s: Scenario, topic: str, *extra: str) -> tuple[int, dict]:
    done = s.cli("verify", topic, "--json", *extra)
    return done.returncode, orjson.loads(done.stdout)


@pytest.mark.slow
def test_verify_reconciles_every_kind_and_finds_what_is_wrong(scenario: Scenario) -> None:
    s = scenario
    everything = apply_all_kinds(s, duplicates=0.2, seed=51)
    sent = everything.metrics
    code, report = verified(s, s.topic)
    assert code == 0 and report["ok"], (report["total"], report["problems"][:5])
    total = report["total"]
    assert (total["seen"], total["unique"], total["applied"], total["in_dlq"]) == (
        sent.sent,
        sent.unique,
        sent.unique,
        sent.invalid,
    )
    assert (total["missing"], total["duplicated"], total["pending"]) == (0, 0, 0)
    for topic in (s.chat_topic, s.analysis_topic):
        code, report = verified(s, topic)
        assert code == 0 and report["ok"], report["problems"]
    tenant = sent.tenants[0]
    code, one = verified(s, s.topic, "--tenant", tenant)
    assert [t["tenant"] for t in one["tenants"]] == [tenant] and one["total"]["applied"] == sent.unique_per_tenant[
        tenant
    ]

    # Break one thing of each kind: verify must notice and fail.
    conversation = next(iter(expected(s, "chat").sessions()))
    analysis = next(a for a, v in expected(s, "analysis").analyses().items() if v.state.status != "pending")
    with psycopg.connect(s.dsn) as conn:
        conn.execute(
            "DELETE FROM eventsink.metrics_raw WHERE id = (SELECT min(id) FROM eventsink.metrics_raw "
            "WHERE kafka_topic = %s)",
            (s.topic,),
        )
        conn.execute(
            "UPDATE eventsink.chat_sessions SET message_count = message_count + 1 WHERE id = %s",
            (conversation,),
        )
        conn.execute(
            "UPDATE eventsink.analysis_requests SET status = 'pending', deleted_at = NULL WHERE id = %s",
            (analysis,),
        )
    code, report = verified(s, s.topic)
    assert code == 1 and report["total"]["missing"] == 1 and "is missing" in report["problems"][0]
    code, report = verified(s, s.chat_topic)
    assert code == 1 and report["total"]["duplicated"] == 1 and "counters" in report["problems"][0]
    code, report = verified(s, s.analysis_topic)
    assert code == 1 and report["total"]["duplicated"] == 1 and "in-order result" in report["problems"][0]
    human = s.cli("verify", s.topic)
    assert human.returncode == 1 and "inconsistent" in human.stderr and "missing" in human.stdout


def test_records_not_yet_applied_are_pending_not_missing(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 300, seed=54)
    # The group exists (the broker knows it, as once a worker joined); its ledger counts nothing yet.
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: 0 for p in range(4)}))
    code, report = verified(s, s.topic)
    assert code == 0 and report["total"]["pending"] == report["total"]["unique"] == sent.unique


def test_dlq_list_and_replay_after_a_limit_is_raised(scenario: Scenario) -> None:
    """Messages refused as too large are replayed once the limit is raised: applied once, even
    when replayed twice; a record still invalid goes back to the DLQ and nowhere else."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant, conv = sent.tenants[0], str(uuid.uuid4())

    def message(i: int, size: int) -> bytes:
        return orjson.dumps(
            {
                "tenant_id": tenant,
                "dedupe_id": f"m{i}",
                "conversation_id": conv,
                "role": "user",
                "content": "x" * size,
                "occurred_at": f"2024-05-01T12:00:0{i}Z",
            }
        )

    send_raw(
        s,
        sent,
        [(tenant.encode(), message(i, 500 if i % 2 else 50)) for i in range(6)]
        + [(tenant.encode(), b"definitely not json")],
        topic=s.chat_topic,
    )
    strict = WorkerProcess(s.env(EVENTSINK_CHAT_MAX_CONTENT_BYTES="100"), s.data_dir / "strict.log").start()
    try:
        wait_applied(s.dsn, s.group, s.chat_topic, sent.last_offsets)
    finally:
        strict.stop()
    listed = [orjson.loads(x) for x in s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--json").stdout.splitlines()]
    assert sorted(r["reason"] for r in listed) == ["invalid_json", "too_large", "too_large", "too_large"]
    too_large = s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--reason", "too_large", "--json")
    assert len(too_large.stdout.splitlines()) == 3
    assert s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--tenant", str(uuid.uuid4())).stdout.count("@") == 0

    # Replayed twice before a worker runs, so that the second replay meets the same four letters
    # (a running worker would dead-letter the invalid one again in between, a fifth letter).
    for _ in range(2):  # replaying twice changes nothing the second time
        done = s.cli("dlq", "replay", f"{s.chat_topic}.dlq")
        assert done.returncode == 0 and "replayed 4 record(s)" in done.stderr
    relaxed = WorkerProcess(s.env(), s.data_dir / "relaxed.log").start()
    try:
        wait_until(lambda: _messages(s.dsn, conv) == 6, 60, what="replayed messages applied")
        wait_until(
            lambda: len(asyncio_read(s, f"{s.chat_topic}.dlq")) == 6, 60, what="the invalid record dead-lettered again"
        )
    finally:
        relaxed.stop()
    with psycopg.connect(s.dsn) as conn:
        assert conn.execute("SELECT message_count FROM eventsink.chat_sessions WHERE id = %s", (conv,)).fetchone() == (
            6,
        )
    reasons = [r.info.reason for r in asyncio_read(s, f"{s.chat_topic}.dlq")]
    assert sorted(reasons) == ["invalid_json"] * 3 + ["too_large"] * 3
    code, report = verified(s, s.chat_topic)
    assert code == 0, report["problems"]


def _messages(dsn: str, conv: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM eventsink.chat_messages WHERE session_id = %s", (conv,)).fetchone()[0]  # type: ignore[index]


def asyncio_read(s: Scenario, topic: str) -> list:
    import asyncio

    return asyncio.run(read_topic(s.bootstrap, topic))
