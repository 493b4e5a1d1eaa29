"""Chat through `Sink.write`: sessions, exact counters, cascade, tenant isolation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.chat import ChatEvent
from schemas.deadletter import DeadLetter, Reason
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.writers.chat import ChatWriter
from tests.helpers import writers_pool

WRITER = ChatWriter()
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


class Letters(list):
    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        self.extend(dead)


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[Sink]:
    async with writers_pool(database_url, WRITER) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())


def msg(
    tenant: uuid.UUID, conv: uuid.UUID, dedupe: str, seconds: int, role: str = "assistant", **kw: object
) -> ChatEvent:
    fields = {
        "tenant_id": tenant,
        "dedupe_id": dedupe,
        "conversation_id": conv,
        "role": role,
        "content": f"message {dedupe}",
        "occurred_at": T0 + timedelta(seconds=seconds),
        "user_id": None,
        "model": None,
        "prompt_tokens": None,
        "completion_tokens": None,
    }
    return ChatEvent.model_construct(**{**fields, **kw})


class Topic:
    """Offsets for one (topic, partition), as Kafka would hand them out."""

    def __init__(self) -> None:
        self.name = f"chat-{uuid.uuid4().hex[:8]}"
        self.next = 0

    def batch(self, *events: ChatEvent) -> Batch[ChatEvent]:
        records = [Record(self.next + i, e, str(e.tenant_id).encode(), b"{}") for i, e in enumerate(events)]
        self.next += len(events)
        return Batch(self.name, 0, records[0].offset, records[-1].offset, records)


def session(dsn: str, conv: uuid.UUID) -> tuple | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT tenant_id, user_id, created_at, last_message_at, message_count, prompt_tokens, completion_tokens "
            "FROM eventsink.chat_sessions WHERE id = %s",
            (conv,),
        ).fetchone()


def messages(dsn: str, conv: uuid.UUID) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM eventsink.chat_messages WHERE session_id = %s", (conv,)).fetchone()[0]  # type: ignore[index]


async def test_the_first_message_creates_the_session_and_counters_are_exact(sink: Sink, database_url: str) -> None:
    tenant, conv, t = uuid.uuid4(), uuid.uuid4(), Topic()
    await sink.write(
        t.batch(
            msg(tenant, conv, "m1", 5, role="user", user_id="u-1"),
            msg(tenant, conv, "m2", 9, prompt_tokens=100, completion_tokens=40, model="m"),
        )
    )
    # Out of order: an earlier message arrives later; created_at follows it.
    await sink.write(t.batch(msg(tenant, conv, "m0", 1, role="system"), msg(tenant, conv, "m3", 20, prompt_tokens=7)))
    assert session(database_url, conv) == (
        tenant,
        "u-1",
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=20),
        4,
        107,
        40,
    )
    assert messages(database_url, conv) == 4


async def test_replays_and_duplicate_storms_never_move_the_counters(sink: Sink, database_url: str) -> None:
    tenant, conv, t = uuid.uuid4(), uuid.uuid4(), Topic()
    first = t.batch(msg(tenant, conv, "a", 1, prompt_tokens=10), msg(tenant, conv, "b", 2, completion_tokens=5))
    await sink.write(first)
    await sink.write(first)  # the same offsets again: the ledger skips them
    for _ in range(20):  # the same messages re-sent by a producer: new offsets, same keys
        await sink.write(
            t.batch(*[msg(tenant, conv, "a", 1, prompt_tokens=10)] * 10, msg(tenant, conv, "b", 2, completion_tokens=5))
        )
    assert session(database_url, conv)[4:] == (2, 10, 5)  # type: ignore[index]
    assert messages(database_url, conv) == 2


async def test_a_conversation_of_another_tenant_is_refused_and_untouched(sink: Sink, database_url: str) -> None:
    owner, intruder, conv, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Topic()
    await sink.write(t.batch(msg(owner, conv, "o1", 1, prompt_tokens=3)))
    result = await sink.write(
        t.batch(
            msg(intruder, conv, "x1", 50, prompt_tokens=1000),
            msg(owner, conv, "o2", 2, prompt_tokens=4),
        )
    )
    assert [(d.reason, d.offset) for d in result.dead_letters] == [(Reason.TENANT_MISMATCH, 1)]
    assert "belongs to another tenant" in result.dead_letters[0].detail
    after = session(database_url, conv)
    assert after[0] == owner and after[4:] == (2, 7, 0)  # type: ignore[index]
    assert after[3] == T0 + timedelta(seconds=2)  # type: ignore[index]  # the intruder's later message moved nothing
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventsink.chat_messages WHERE tenant_id = %s", (intruder,)
        ).fetchone() == (0,)


async def test_two_tenants_claiming_a_new_conversation_in_one_batch(sink: Sink, database_url: str) -> None:
    a, b, conv, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Topic()
    result = await sink.write(t.batch(msg(a, conv, "a1", 1), msg(b, conv, "b1", 2), msg(a, conv, "a2", 3)))
    assert [d.offset for d in result.dead_letters] == [1]
    assert session(database_url, conv)[0] == a  # type: ignore[index]
    assert messages(database_url, conv) == 2


async def test_messages_cascade_with_their_session(sink: Sink, database_url: str) -> None:
    tenant, conv, t = uuid.uuid4(), uuid.uuid4(), Topic()
    await sink.write(t.batch(*[msg(tenant, conv, f"m{i}", i) for i in range(5)]))
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM eventsink.chat_sessions WHERE id = %s", (conv,))
    assert messages(database_url, conv) == 0


async def test_a_duplicate_resent_under_another_conversation_creates_no_session(sink: Sink, database_url: str) -> None:
    """A producer re-sends a message (same dedupe_id) but names another conversation: the message
    is a duplicate, and the other conversation must not appear as an empty session."""
    tenant, conv, other, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Topic()
    await sink.write(t.batch(msg(tenant, conv, "m1", 1, prompt_tokens=5)))
    result = await sink.write(t.batch(msg(tenant, other, "m1", 2, prompt_tokens=5)))
    assert (len(result.applied), len(result.duplicates)) == (0, 1)
    assert session(database_url, other) is None
    assert session(database_url, conv)[4:] == (1, 5, 0)  # type: ignore[index]
    # In one batch too: the second conversation's only message is a duplicate of the first's.
    third, fourth = uuid.uuid4(), uuid.uuid4()
    await sink.write(t.batch(msg(tenant, third, "m9", 3), msg(tenant, fourth, "m9", 4)))
    assert session(database_url, third) is not None and session(database_url, fourth) is None


async def test_concurrent_batches_claiming_one_new_conversation_agree_on_its_owner(
    sink: Sink, database_url: str
) -> None:
    """Two partitions' batches name the same new conversation for two tenants at once: one claims
    it, the other's messages are refused; never two sessions, never mixed messages."""
    a, b, conv = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ta, tb = Topic(), Topic()
    results = await asyncio.gather(
        sink.write(ta.batch(*(msg(a, conv, f"a{i}", i) for i in range(20)))),
        sink.write(tb.batch(*(msg(b, conv, f"b{i}", i) for i in range(20)))),
    )
    owner = session(database_url, conv)[0]  # type: ignore[index]
    loser = results[1] if owner == a else results[0]
    assert len(loser.dead_letters) == 20 and {d.reason for d in loser.dead_letters} == {Reason.TENANT_MISMATCH}
    assert session(database_url, conv)[4] == messages(database_url, conv) == 20  # type: ignore[index]


@pytest.mark.parametrize("batching", ["one batch", "three batches"])
async def test_a_duplicate_naming_a_new_conversation_claims_nothing_in_any_batching(
    sink: Sink, database_url: str, batching: str
) -> None:
    """Tenant A sends a message in C1 and re-sends it (same dedupe_id) naming C2; tenant B then
    sends a message in C2. The re-send is a duplicate: it inserts nothing, so it claims nothing,
    and C2 is B's, whether the three come in one batch or one by one (issue 19)."""
    a, b, c1, c2, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Topic()
    sent = [msg(a, c1, "m1", 1, prompt_tokens=3), msg(a, c2, "m1", 2, prompt_tokens=3), msg(b, c2, "b1", 3)]
    if batching == "one batch":
        results = [await sink.write(t.batch(*sent))]
    else:
        results = [await sink.write(t.batch(e)) for e in sent]
    assert [d for r in results for d in r.dead_letters] == []
    assert sum(len(r.applied) for r in results) == 2 and sum(len(r.duplicates) for r in results) == 1
    assert session(database_url, c1)[0::4] == (a, 1)  # type: ignore[index]
    assert session(database_url, c2)[0::4] == (b, 1)  # type: ignore[index]
    assert messages(database_url, c1) == messages(database_url, c2) == 1


@pytest.mark.parametrize("batching", ["one batch", "one by one"])
async def test_a_duplicate_of_a_stored_message_claims_nothing_in_any_batching(
    sink: Sink, database_url: str, batching: str
) -> None:
    """The same with A's first message stored by an earlier batch: its re-send naming C2 is a
    duplicate against the database, and B's message in the same batch claims C2. A message of
    A's in B's conversation after that is refused, in either batching."""
    a, b, c1, c2, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Topic()
    await sink.write(t.batch(msg(a, c1, "m1", 1)))
    sent = [msg(a, c2, "m1", 2), msg(b, c2, "b1", 3), msg(a, c2, "m2", 4)]
    if batching == "one batch":
        results = [await sink.write(t.batch(*sent))]
    else:
        results = [await sink.write(t.batch(e)) for e in sent]
    dead = [(d.reason, d.offset) for r in results for d in r.dead_letters]
    assert dead == [(Reason.TENANT_MISMATCH, 3)]
    assert sum(len(r.duplicates) for r in results) == 1
    assert session(database_url, c2)[0::4] == (b, 1)  # type: ignore[index]
    assert messages(database_url, c1) == messages(database_url, c2) == 1
