"""The oracle (`streams.tools.expected`) on hand-made records, against numbers worked out by hand."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from schemas.deadletter import DeadLetter, Reason
from streams.kinds import Kind, by_name
from streams.settings import Settings
from streams.tools.expected import NOT_A_TENANT, Counters, expect

A, B = uuid.UUID(int=1, version=4), uuid.UUID(int=2, version=4)
CONV, AID = uuid.uuid4(), uuid.uuid4()


@dataclass
class Rec:
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    timestamp: int = 0
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


def kind(name: str) -> Kind:
    return by_name(Settings(), name)


def metric(tenant: uuid.UUID, dedupe: str) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": str(tenant),
            "dedupe_id": dedupe,
            "name": "cpu",
            "value": 1,
            "occurred_at": "2024-05-01T12:00:00Z",
        }
        | {"tags": {}}
    )


def chat(tenant: uuid.UUID, dedupe: str, prompt: int | None = None, completion: int | None = None) -> bytes:
    body: dict[str, object] = {
        "tenant_id": str(tenant),
        "dedupe_id": dedupe,
        "conversation_id": str(CONV),
        "role": "assistant",
        "content": "hi",
        "occurred_at": "2024-05-01T12:00:00Z",
    }
    if prompt is not None:
        body |= {"prompt_tokens": prompt, "completion_tokens": completion}
    return orjson.dumps(body)


def analysis(tenant: uuid.UUID, dedupe: str, status: str, second: int, **extra: object) -> bytes:
    body = {
        "tenant_id": str(tenant),
        "dedupe_id": dedupe,
        "analysis_id": str(AID),
        "status": status,
        "occurred_at": f"2024-05-01T12:00:0{second}Z",
    }
    return orjson.dumps(body | extra)


def dead_letter(topic: str, partition: int, offset: int, reason: Reason, group: str = "g") -> Rec:
    d = DeadLetter(reason, "why", topic, partition, offset, None, b"x")
    return Rec(0, 0, b"x", None, headers=d.dlq_headers(group))


def test_dead_letters_of_another_consumer_group_are_not_this_groups() -> None:
    """Two groups reading one topic each dead-letter its invalid records into the one DLQ: for
    either group's verify that is one letter each, not a letter published twice."""
    k = kind("metric")
    records = [Rec(0, 0, b"{not json", str(A).encode())]
    dead = [
        dead_letter(k.topic, 0, 0, Reason.INVALID_JSON, group="g"),
        dead_letter(k.topic, 0, 0, Reason.INVALID_JSON, group="other"),
    ]
    assert expect(k, records, dead, group="g").dead_lettered == {(0, 0): 1}
    assert expect(k, records, dead, group="nobody").dead_lettered == {}
    assert expect(k, records, dead).dead_lettered == {(0, 0): 2}  # no group given: every letter


def test_metric_rows_duplicates_invalid_records_and_what_the_database_refused() -> None:
    k = kind("metric")
    records = [
        Rec(0, 0, metric(A, "a1"), str(A).encode()),
        Rec(0, 1, metric(A, "a1"), str(A).encode()),  # sent again
        Rec(0, 2, b"{not json", str(A).encode()),
        Rec(1, 0, metric(B, "b1"), str(B).encode()),
        Rec(1, 1, metric(B, "b2"), b"not-a-uuid"),  # the key names no tenant: key_mismatch
        Rec(1, 2, metric(B, "b3"), str(B).encode()),  # refused by the database (the DLQ says)
        Rec(1, 3, metric(B, "b3"), str(B).encode()),  # the same key later: this one holds the row
    ]
    dead = [
        dead_letter(k.topic, 0, 2, Reason.INVALID_JSON),
        dead_letter(k.topic, 0, 2, Reason.INVALID_JSON),  # published twice
        dead_letter(k.topic, 1, 2, Reason.DB_REJECTED),
        dead_letter("elsewhere", 1, 3, Reason.DB_REJECTED),  # another topic's
    ]
    want = expect(k, records, dead)
    assert [(i.where, i.tenant, i.reason) for i in want.invalid] == [
        ((0, 2), str(A), "invalid_json"),
        ((1, 1), NOT_A_TENANT, "key_mismatch"),
    ]
    assert want.refused == {(1, 2): "db_rejected"}
    assert {k: s.where for k, s in want.accepted.items()} == {(A, "a1"): (0, 0), (B, "b1"): (1, 0), (B, "b3"): (1, 3)}
    assert want.rows_per_tenant() == {str(A): 1, str(B): 2}
    assert want.dead_lettered == {(0, 2): 2, (1, 2): 1}
    assert want.ledger() == Counters(events=7, rows_applied=3, duplicates=1, dead_letters=3, superseded=0)


def test_a_conversation_belongs_to_its_first_message_and_others_are_tenant_mismatches() -> None:
    k = kind("chat")
    records = [
        # Partition 0 is the intruder's, with an earlier offset but a later time than the owner's.
        Rec(0, 0, chat(B, "b1", 1, 1), str(B).encode(), timestamp=2000),
        Rec(0, 1, chat(B, "b1", 1, 1), str(B).encode(), timestamp=2001),
        Rec(1, 0, chat(A, "a1", 10, 20), str(A).encode(), timestamp=1000),
        Rec(1, 1, chat(A, "a2"), str(A).encode(), timestamp=3000),
        Rec(1, 2, chat(A, "a1", 10, 20), str(A).encode(), timestamp=3001),
    ]
    want = expect(k, records)
    assert want.owners == {CONV: A}
    assert want.refused == {(0, 0): "tenant_mismatch", (0, 1): "tenant_mismatch"}
    session = want.sessions()[CONV]
    assert (session.tenant_id, session.messages, session.prompt_tokens, session.completion_tokens) == (A, 2, 10, 20)
    assert want.ledger() == Counters(events=5, rows_applied=2, duplicates=1, dead_letters=2)
    # Within one partition the offset decides, whatever the timestamps say.
    same = [
        Rec(1, 0, chat(B, "b1"), str(B).encode(), timestamp=9000),
        Rec(1, 1, chat(A, "a1"), str(A).encode(), timestamp=1000),
    ]
    assert expect(k, same).owners == {CONV: B}


def test_analysis_rows_and_events_superseded_in_offset_order() -> None:
    k = kind("analysis")
    key = str(A).encode()
    records = [
        Rec(2, 0, analysis(A, "p", "pending", 0, kind="video"), key),
        Rec(2, 1, analysis(A, "c", "completed", 3, result={"score": 1}), key),
        Rec(2, 2, analysis(A, "r", "processing", 1, progress=40), key),  # late: superseded
        Rec(2, 3, analysis(A, "c", "completed", 3, result={"score": 1}), key),  # sent again
        Rec(2, 4, analysis(A, "d", "deleted", 5), key),
        Rec(2, 5, analysis(A, "d0", "deleted", 4), key),  # a second delete: superseded
        Rec(3, 0, analysis(B, "x", "deleted", 6), str(B).encode(), timestamp=10**13),  # another tenant's
    ]
    want = expect(k, records)
    row = want.analyses()[AID]
    assert row.tenant_id == A
    state = row.state
    assert (state.status, state.progress, state.result, state.kind, state.version) == (
        "deleted",
        100,
        {"score": 1},
        "video",
        5,
    )
    assert state.deleted_at == datetime(2024, 5, 1, 12, 0, 4, tzinfo=UTC)
    assert want.refused == {(3, 0): "tenant_mismatch"}
    assert want.ledger() == Counters(events=7, rows_applied=5, duplicates=1, dead_letters=1, superseded=2)
    target = want.target()
    assert (target.analyses, target.ledger, target.sessions) == (want.analyses(), want.ledger(), {})
