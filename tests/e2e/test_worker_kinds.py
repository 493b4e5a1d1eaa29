"""Chat and analysis through real workers: exact sessions, order-independent analyses, isolation."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import asdict

import orjson
import psycopg
import pytest

from sinks.writers.analysis import SELECT_ROWS
from streams.dev.loadgen.analysis import AnalysisLoad
from streams.dev.loadgen.chat import ChatLoad
from tests.helpers import Scenario, WorkerProcess, expected, ledger_totals, read_topic, wait_applied
from tests.pgbouncer import Route
from tests.workload import Sent, publish_analysis, publish_chat, send_raw

pytestmark = pytest.mark.e2e


def worker(s: Scenario, tag: str = "w", dsn: str | None = None) -> WorkerProcess:
    return WorkerProcess(s.env(dsn), s.data_dir / f"{tag}.log").start()


def sessions(dsn: str, ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(dsn) as conn:
        return {
            str(r[0]): r[1:]
            for r in conn.execute(
                "SELECT s.id, s.tenant_id::text, s.message_count, s.prompt_tokens, s.completion_tokens, "
                "(SELECT count(*) FROM eventsink.chat_messages m WHERE m.session_id = s.id) "
                "FROM eventsink.chat_sessions s WHERE s.id = ANY(%s::uuid[])",
                (ids,),
            )
        }


def analyses(dsn: str, ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(dsn) as conn:
        return {str(r[0]): r[1:] for r in conn.execute(SELECT_ROWS, (ids,))}


def test_chat_and_analysis_traffic_lands_exactly_once(scenario: Scenario, route: Route) -> None:
    """Directly connected, and through PgBouncer in transaction pooling."""
    s = scenario
    tenants = [str(uuid.uuid4()) for _ in range(4)]
    # Seeds make the conversation and analysis ids: each variant its own (both use one database).
    seed = {"direct": 11, "pgbouncer": 31}[route.name]
    chat = publish_chat(s, ChatLoad(conversations=120, duplicates=0.15, invalid=0.05, seed=seed, tenant_ids=tenants))
    found = publish_analysis(
        s, AnalysisLoad(analyses=100, duplicates=0.15, out_of_order=0.5, seed=seed + 1, tenant_ids=tenants)
    )
    w = worker(s, dsn=route(s.worker_dsn))
    try:
        wait_applied(s.dsn, s.group, s.chat_topic, chat.last_offsets)
        wait_applied(s.dsn, s.group, s.analysis_topic, found.last_offsets)
    finally:
        assert w.stop() == 0
    # What the topics say the database must hold (the oracle), checked against what was sent.
    chat_want, analysis_want = expected(s, "chat"), expected(s, "analysis")
    assert (chat_want.records, len(chat_want.invalid)) == (chat.sent, chat.invalid)
    assert len(chat_want.sessions()) == chat.conversations
    assert analysis_want.records == found.sent and len(analysis_want.analyses()) == found.analyses
    expected_sessions = {
        str(c): (str(v.tenant_id), v.messages, v.prompt_tokens, v.completion_tokens, v.messages)
        for c, v in chat_want.sessions().items()
    }
    assert sessions(s.dsn, list(expected_sessions)) == expected_sessions
    expected_rows = {str(a): v.state.row() for a, v in analysis_want.analyses().items()}
    assert analyses(s.dsn, list(expected_rows)) == expected_rows
    finals = Counter(v.state.status for v in analysis_want.analyses().values())
    assert finals == found.final_status and finals.keys() >= {"completed", "failed", "deleted"}
    dead = asyncio.run(read_topic(s.bootstrap, f"{s.chat_topic}.dlq"))
    assert len(dead) == chat.invalid
    assert Counter(d.info.reason for d in dead) == Counter(
        {
            "too_large": chat.invalid_kinds["too_large"],
            "invalid_json": chat.invalid_kinds["not_json"],
            "invalid_event": chat.invalid_kinds["bad_role"] + chat.invalid_kinds["negative_tokens"],
        }
    )
    assert ledger_totals(s.dsn, s.group, s.chat_topic) == asdict(chat_want.ledger())
    totals = ledger_totals(s.dsn, s.group, s.analysis_topic)
    assert totals == asdict(analysis_want.ledger())
    assert totals["rows_applied"] == found.unique and totals["duplicates"] == found.duplicates


def test_another_tenant_can_never_write_into_a_conversation_or_an_analysis(scenario: Scenario) -> None:
    s = scenario
    owner, intruder = str(uuid.uuid4()), str(uuid.uuid4())
    conv, aid = str(uuid.uuid4()), str(uuid.uuid4())
    at = "2024-05-01T12:00:00Z"

    def chat_msg(tenant: str, dedupe: str) -> bytes:
        return orjson.dumps(
            {
                "tenant_id": tenant,
                "dedupe_id": dedupe,
                "conversation_id": conv,
                "role": "user",
                "content": "hello",
                "occurred_at": at,
                "prompt_tokens": 5,
            }
        )

    def analysis_evt(tenant: str, dedupe: str, status: str) -> bytes:
        return orjson.dumps(
            {"tenant_id": tenant, "dedupe_id": dedupe, "analysis_id": aid, "status": status, "occurred_at": at}
        )

    sent_chat, sent_analysis = Sent(), Sent()
    send_raw(s, sent_chat, [(owner.encode(), chat_msg(owner, "o1"))], topic=s.chat_topic)
    send_raw(s, sent_analysis, [(owner.encode(), analysis_evt(owner, "o1", "processing"))], topic=s.analysis_topic)
    w = worker(s)
    try:
        wait_applied(s.dsn, s.group, s.chat_topic, sent_chat.last_offsets)
        wait_applied(s.dsn, s.group, s.analysis_topic, sent_analysis.last_offsets)
        before = (sessions(s.dsn, [conv]), analyses(s.dsn, [aid]))
        send_raw(s, sent_chat, [(intruder.encode(), chat_msg(intruder, "x1"))], topic=s.chat_topic)
        send_raw(
            s, sent_analysis, [(intruder.encode(), analysis_evt(intruder, "x1", "deleted"))], topic=s.analysis_topic
        )
        wait_applied(s.dsn, s.group, s.chat_topic, sent_chat.last_offsets)
        wait_applied(s.dsn, s.group, s.analysis_topic, sent_analysis.last_offsets)
    finally:
        w.stop()
    assert (sessions(s.dsn, [conv]), analyses(s.dsn, [aid])) == before
    for topic in (s.chat_topic, s.analysis_topic):
        dead = asyncio.run(read_topic(s.bootstrap, f"{topic}.dlq"))
        assert [(d.info.reason, d.key) for d in dead] == [("tenant_mismatch", intruder.encode())]
    for kind, topic in (("chat", s.chat_topic), ("analysis", s.analysis_topic)):
        want = expected(s, kind)  # the oracle names the intruder too, from the topic alone
        assert [want.events[k][0].event.tenant_id for k in want.accepted] == [uuid.UUID(owner)]
        assert list(want.refused.values()) == ["tenant_mismatch"]
        assert ledger_totals(s.dsn, s.group, topic) == asdict(want.ledger())
