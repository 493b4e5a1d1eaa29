"""`eventsink dlq replay` writes only where the dead-letter topic belongs, whatever its headers say."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import psycopg
import pytest

from schemas.deadletter import H_ORIGINAL_SHA256, H_ORIGINAL_SIZE, H_STORED, DeadLetter, Reason
from sinks.core import deadletters
from streams.publish.publisher import Publisher
from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics
from tests.helpers import Scenario, TopicRecord, read_topic
from tests.workload import create_topics, metric_json

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, bytes | None]]


def send(s: Scenario, topic: str, records: list[tuple[bytes | None, bytes | None, Headers]]) -> None:
    async def go() -> None:
        async with Publisher(s.bootstrap) as pub:
            for key, value, headers in records:
                await pub.publish_raw(topic, key, value, headers)  # type: ignore[arg-type]

    asyncio.run(go())


def read(s: Scenario, topic: str) -> list[TopicRecord]:
    return asyncio.run(read_topic(s.bootstrap, topic, timeout=3.0))


def dead_letter(s: Scenario, source: str, offset: int, key: bytes, value: bytes) -> tuple[bytes, bytes, Headers]:
    dead = DeadLetter(Reason.INVALID_EVENT, "unknown field", source, 0, offset, key, value, (("trace", b"t"),))
    return key, value, dead.dlq_headers(s.group)


def test_a_forged_source_header_is_replayed_nowhere_and_to_sends_where_the_operator_says(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    victim, elsewhere = f"victim-{s.name}", f"elsewhere-{s.name}"
    asyncio.run(
        ensure_topics([s.bootstrap], [TopicSpec(t, 1, config=SOURCE_CONFIG) for t in (victim, elsewhere, s.chat_topic)])
    )
    tenant = str(uuid.uuid4())
    genuine = metric_json(tenant, "replayed")
    send(
        s,
        s.dlq_topic,
        [
            dead_letter(s, s.topic, 10, tenant.encode(), genuine),
            dead_letter(s, victim, 11, tenant.encode(), b"forged: into another service's topic"),
            dead_letter(s, s.chat_topic, 12, tenant.encode(), b"forged: into the chat topic"),
            (tenant.encode(), b"forged: no headers at all", []),
        ],
    )
    # No record's original is in PostgreSQL: the replay never connects to it.
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    dry = s.cli("dlq", "replay", s.dlq_topic, "--dry-run", DATABASE_URL=unreachable)
    assert dry.returncode == 1 and f"would replay 1 record(s) from {s.dlq_topic} to {s.topic}" in dry.stderr
    assert read(s, s.topic) == []

    done = s.cli("dlq", "replay", s.dlq_topic, DATABASE_URL=unreachable)
    assert done.returncode == 1, done.stderr
    assert f"replayed 1 record(s) from {s.dlq_topic} to {s.topic} (0 repeats skipped, 3 refused)" in done.stderr
    for why in (f"names '{victim}', not '{s.topic}'", f"names '{s.chat_topic}'", "names no topic"):
        assert why in done.stderr
    assert [(r.key, r.value, r.headers) for r in read(s, s.topic)] == [(tenant.encode(), genuine, [("trace", b"t")])]

    to = s.cli("dlq", "replay", s.dlq_topic, "--to", elsewhere)
    assert to.returncode == 1 and f"replayed 1 record(s) from {s.dlq_topic} to {elsewhere}" in to.stderr
    assert [r.value for r in read(s, elsewhere)] == [genuine]

    unpaired = s.cli("dlq", "replay", f"{victim}.dlq")
    assert unpaired.returncode == 1 and "not a dead-letter topic of these settings" in unpaired.stderr
    assert "pass --to TOPIC" in unpaired.stderr
    # The topics the forged headers named received nothing; the source topic only the genuine record.
    assert read(s, victim) == [] and read(s, s.chat_topic) == []
    assert [r.value for r in read(s, s.topic)] == [genuine]


def test_a_dead_letter_kept_in_postgresql_is_replayed_from_there(scenario: Scenario) -> None:
    """The DLQ record carries a truncated value; the original comes from the database, checked
    against the letter's SHA-256; an original that is missing or altered is refused."""
    s = scenario
    create_topics(s)
    tenant = str(uuid.uuid4()).encode()
    # Valid JSON of 2 MB: over a producer's 1 MB request limit unless compressed, as its own
    # producer had (the replay must compress it too).
    original = metric_json(tenant.decode(), "big") + b" " * 2_000_000

    def stored(offset: int, value: bytes) -> DeadLetter:
        return DeadLetter(Reason.TOO_LARGE, "too large", s.topic, 0, offset, tenant, value, (("trace", b"t"),))

    async def keep(*dead: DeadLetter) -> None:
        async with await psycopg.AsyncConnection.connect(s.dsn) as conn:
            for d in dead:
                await deadletters.store(conn, s.group, d)

    asyncio.run(keep(stored(20, original), stored(22, b"altered in the database")))

    def marker(offset: int) -> tuple[bytes, bytes, Headers]:
        dead = stored(offset, original)
        headers = [
            *dead.dlq_headers(s.group),
            (H_STORED, b"postgres"),
            (H_ORIGINAL_SIZE, str(len(original)).encode()),
            (H_ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
        ]
        return tenant, original[:100], headers

    send(s, s.dlq_topic, [marker(20), marker(21), marker(22), marker(20)])
    listed = s.cli("dlq", "list", s.dlq_topic)
    assert listed.returncode == 0 and listed.stdout.count("original in PostgreSQL") == 4

    done = s.cli("dlq", "replay", s.dlq_topic)
    assert done.returncode == 1, done.stderr
    assert "replayed 1 record(s)" in done.stderr and "(1 repeats skipped, 2 refused)" in done.stderr
    assert f"its original ({s.group}, {s.topic}[0]@21) is not in the database" in done.stderr
    assert "does not match the letter's SHA-256 header" in done.stderr
    assert [(r.key, r.value, r.headers) for r in read(s, s.topic)] == [(tenant, original, [("trace", b"t")])]

    unreachable = s.cli("dlq", "replay", s.dlq_topic, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 1 and "OperationalError" in unreachable.stderr
    assert len(read(s, s.topic)) == 1  # nothing sent when the originals cannot be read
