"""`eventsink dlq replay` writes only where the dead-letter topic belongs, whatever its headers say."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import uuid
from collections import Counter

import orjson
import psycopg
import pytest

from schemas.deadletter import H_ORIGINAL_SHA256, H_ORIGINAL_SIZE, H_STORED, DeadLetter, Reason
from sinks.core import deadletters
from streams.publish.publisher import Publisher
from streams.tools.reader import Reader
from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics
from tests.helpers import Scenario, TopicRecord, WorkerProcess, ledger_totals, read_topic, wait_applied, wait_until
from tests.workload import Sent, create_topics, metric_json, send_raw

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, bytes | None]]


def send(s: Scenario, topic: str, records: list[tuple[bytes | None, bytes | None, Headers]]) -> None:
    async def go() -> None:
        async with Publisher(s.bootstrap) as pub:
            for key, value, headers in records:
                await pub.publish_raw(topic, key, value, headers)  # type: ignore[arg-type]

    asyncio.run(go())


def read(s: Scenario, topic: str) -> list[TopicRecord]:
    return asyncio.run(read_topic(s.bootstrap, topic))


def replayed(records: list[TopicRecord]) -> list[tuple[bytes | None, bytes | None, Headers]]:
    """Key, value and original headers of records a replay sent (each also carries its lineage)."""
    for r in records:
        assert [k for k, _ in r.headers if k.startswith("eventsink.")] == [
            "eventsink.origin.topic",
            "eventsink.origin.partition",
            "eventsink.origin.offset",
            "eventsink.replay.id",
        ]
    return [(r.key, r.value, [(k, v) for k, v in r.headers if not k.startswith("eventsink.")]) for r in records]


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
    assert replayed(read(s, s.topic)) == [(tenant.encode(), genuine, [("trace", b"t")])]

    to = s.cli("dlq", "replay", s.dlq_topic, "--to", elsewhere)
    assert to.returncode == 1 and f"replayed 1 record(s) from {s.dlq_topic} to {elsewhere}" in to.stderr
    assert [r.value for r in read(s, elsewhere)] == [genuine]

    unpaired = s.cli("dlq", "replay", f"{victim}.dlq")
    assert unpaired.returncode == 2 and "not a dead-letter topic of these settings" in unpaired.stderr
    assert "pass --to TOPIC" in unpaired.stderr and len(unpaired.stderr.strip().splitlines()) == 1
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
    # Offset 20's marker twice (a worker that died before its commit): one dead letter, two tries.
    assert listed.returncode == 0 and listed.stdout.count("original in PostgreSQL") == 3

    done = s.cli("dlq", "replay", s.dlq_topic)
    assert done.returncode == 1, done.stderr
    assert "replayed 1 record(s)" in done.stderr and "(1 repeats skipped, 2 refused)" in done.stderr
    assert f"its original ({s.group}, {s.topic}[0]@21) is not in the database" in done.stderr
    assert "does not match the letter's SHA-256 header" in done.stderr
    assert replayed(read(s, s.topic)) == [(tenant, original, [("trace", b"t")])]

    unreachable = s.cli("dlq", "replay", s.dlq_topic, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 1 and "OperationalError" in unreachable.stderr
    assert len(read(s, s.topic)) == 1  # nothing sent when the originals cannot be read


def letters_by_origin(s: Scenario) -> Counter[tuple[str, int, int]]:
    """The DLQ's records per original source (where each record first failed), read raw."""
    return Counter(r.info.origin for r in read(s, s.dlq_topic))


def listed(s: Scenario) -> list[dict]:
    done = s.cli("dlq", "list", s.dlq_topic, "--json")
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def last_offsets(s: Scenario, topic: str) -> dict[int, int]:
    ends: dict[int, int] = {}
    for r in read(s, topic):
        ends[r.partition] = max(ends.get(r.partition, -1), r.offset)
    return ends


def test_replaying_still_invalid_records_twice_leaves_the_dead_letters_as_they_were(scenario: Scenario) -> None:
    """Three replays turned 3 letters into 27: each failure of a replayed record named a new
    source offset, so "a record dead-lettered twice is replayed once" never matched them."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    invalid = [
        (tenant.encode(), orjson.dumps({"tenant_id": tenant, "dedupe_id": f"bad{i}", "value": "NaN"})) for i in range(3)
    ]
    positions = send_raw(s, sent, invalid)
    origins = {(s.topic, p, o) for p, o in positions}
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_until(lambda: sum(letters_by_origin(s).values()) == 3, 60, what="three dead letters")
        before = listed(s)
        assert {(d["origin_topic"], d["origin_partition"], d["origin_offset"]) for d in before} == origins
        assert [d["attempts"] for d in before] == [1, 1, 1] and all(d["failed_at"].endswith("Z") for d in before)

        for attempt in (1, 2):
            want = Counter({o: attempt + 1 for o in origins})
            done = s.cli("dlq", "replay", s.dlq_topic, "--reason", "invalid_event")
            assert done.returncode == 0, done.stderr
            # Once per dead letter, however many letters each has.
            assert f"replayed 3 record(s) from {s.dlq_topic} to {s.topic} ({3 * (attempt - 1)} repeats skipped" in (
                done.stderr
            )
            assert "recorded as replay" in done.stderr
            wait_until(
                lambda want=want: letters_by_origin(s) == want,
                60,
                what=f"replay {attempt}'s records dead-lettered again under their origin",
            )
        # The same three dead letters, each with its three failures: nothing multiplied.
        after = listed(s)
        assert {(d["origin_topic"], d["origin_partition"], d["origin_offset"]) for d in after} == origins
        assert [d["attempts"] for d in after] == [3, 3, 3] and {d["reason"] for d in after} == {"invalid_event"}
        # The original headers, byte for byte, on every letter; the failing records' own positions
        # in the source headers (what verify and the ledger count by).
        raw = read(s, s.dlq_topic)
        assert len({(r.info.source_partition, r.info.source_offset) for r in raw}) == 9
        wait_applied(s.dsn, s.group, s.topic, last_offsets(s, s.topic))
    finally:
        assert w.stop() == 0
    assert ledger_totals(s.dsn, s.group, s.topic)["rows_applied"] == 0
    verified = s.cli("verify", s.topic)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Each replay was recorded: who, where to, what it sent.
    recorded = s.cli("dlq", "replays", s.dlq_topic, "--json")
    assert recorded.returncode == 0, recorded.stderr
    replays = [orjson.loads(line) for line in recorded.stdout.splitlines()]
    assert [(r["sent"], r["repeats"], r["refused"], r["to"]) for r in replays] == [
        (3, 0, 0, s.topic),
        (3, 3, 0, s.topic),
    ]
    assert all({tuple(o) for o in r["origins"]} == origins for r in replays)
    assert all(r["filters"]["reason"] == "invalid_event" for r in replays)
    ids = {r.info.replay_id for r in raw if r.info.replay_id}
    assert ids == {r["id"] for r in replays}
    table = s.cli("dlq", "replays", s.dlq_topic)
    assert table.returncode == 0 and all(r["id"] in table.stdout for r in replays)


def test_a_replayed_record_that_now_succeeds_is_applied_once(scenario: Scenario) -> None:
    """Refused by a `reject` policy, replayed twice once the policy is `keep`: one row each, the
    extra field in `attributes`, no new dead letter."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    events = [orjson.dumps({**orjson.loads(metric_json(tenant, f"e{i}")), "region": f"r{i}"}) for i in range(2)]
    send_raw(s, sent, [(tenant.encode(), e) for e in events])
    strict = WorkerProcess(s.env(EVENTSINK_METRIC_UNKNOWN_FIELDS="reject"), s.data_dir / "strict.log").start()
    try:
        wait_until(lambda: sum(letters_by_origin(s).values()) == 2, 60, what="two unknown_field letters")
    finally:
        assert strict.stop() == 0
    assert {d["reason"] for d in listed(s)} == {"unknown_field"}
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        for _ in range(2):
            done = s.cli("dlq", "replay", s.dlq_topic, "--reason", "unknown_field")
            assert done.returncode == 0 and "replayed 2 record(s)" in done.stderr, done.stderr
            wait_applied(s.dsn, s.group, s.topic, last_offsets(s, s.topic))
    finally:
        assert w.stop() == 0
    with psycopg.connect(s.dsn) as conn:
        rows = conn.execute(
            "SELECT dedupe_id, attributes FROM eventsink.metrics_raw WHERE tenant_id = %s ORDER BY dedupe_id", (tenant,)
        ).fetchall()
    assert rows == [("e0", {"region": "r0"}), ("e1", {"region": "r1"})]
    assert sum(letters_by_origin(s).values()) == 2  # nothing dead-lettered again
    totals = ledger_totals(s.dsn, s.group, s.topic)
    assert (totals["rows_applied"], totals["duplicates"]) == (2, 2)


def test_dlq_commands_refuse_a_topic_that_is_not_a_dead_letter_topic(scenario: Scenario) -> None:
    """`dlq list metrics` (forgot .dlq) listed the events with blank reasons and source [-1]@-1."""
    s, sent = scenario, Sent()
    create_topics(s)
    send_raw(s, sent, [(sent.tenants[0].encode(), metric_json(sent.tenants[0], "a"))])
    for args in (("list", s.topic), ("replay", s.topic), ("replays", s.topic)):
        done = s.cli("dlq", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert f"{s.topic} is a source topic, not a dead-letter topic: use {s.dlq_topic}" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
    missing = s.cli("dlq", "list", f"nothing-{s.name}.dlq")
    assert missing.returncode == 2 and "does not exist: the dead-letter topics are" in missing.stderr
    assert s.dlq_topic in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    other = f"other-{s.name}"
    asyncio.run(ensure_topics([s.bootstrap], [TopicSpec(other, 1, config=SOURCE_CONFIG)]))
    send(s, other, [(b"k", b"an event, not a dead letter", [])])
    plain = s.cli("dlq", "list", other)
    assert plain.returncode == 2 and f"{other} is not a dead-letter topic" in plain.stderr


def replays_recorded(s: Scenario) -> list[dict]:
    recorded = s.cli("dlq", "replays", s.dlq_topic, "--json")
    assert recorded.returncode == 0, recorded.stderr
    return [orjson.loads(line) for line in recorded.stdout.splitlines()]


def sent_by(s: Scenario, replay_id: str) -> int:
    """Records on the source topic that carry this replay's id (what the broker holds of it)."""
    return sum(1 for r in read(s, s.topic) if dict(r.headers).get("eventsink.replay.id") == replay_id.encode())


def replay_stopped_by(s: Scenario, sig: signal.Signals, times: int = 1) -> subprocess.CompletedProcess[str]:
    """`dlq replay`, sent `sig` (`times` times in a row) once the source topic has records of it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "dlq", "replay", s.dlq_topic],
        env={**s.env(), "EVENTSINK_LOG_FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    before = sum(end_offsets(s, s.topic).values())
    try:
        wait_until(lambda: sum(end_offsets(s, s.topic).values()) > before, 120, 0.05, what="the replay's first records")
        for _ in range(times):
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def end_offsets(s: Scenario, topic: str) -> dict[int, int]:
    async def go() -> dict[int, int]:
        async with Reader([s.bootstrap]) as r:
            return await r.end_offsets(topic)

    return asyncio.run(go())


def test_a_replay_stopped_half_way_is_recorded_with_what_it_sent(scenario: Scenario) -> None:
    """Ctrl-C in the middle of a replay: the records already sent are on record (the replay's
    id, status "interrupted", how many the broker acknowledged, of how many), said on stderr, and
    the count is what the source topic holds of it. A replay killed outright (SIGKILL) is still
    on record as started, with what it set out to send. (Before: a replay recorded itself only
    once every record was acknowledged, so a stopped one sent thousands of records unrecorded.)"""
    s = scenario
    create_topics(s)
    n = 60_000  # enough that the replay is still sending when it is stopped
    send(s, s.dlq_topic, [dead_letter(s, s.topic, i, f"k{i}".encode(), b'{"x": %d}' % i) for i in range(n)])

    stopped = replay_stopped_by(s, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    (replay,) = replays_recorded(s)
    assert (replay["status"], replay["planned"], replay["to"]) == ("interrupted", n, s.topic)
    assert 0 < replay["sent"] < n, replay
    held = sent_by(s, replay["id"])  # the oracle: what the topic holds of this replay
    assert replay["sent"] <= held <= replay["sent"] + replay["unconfirmed"]
    assert f"replay {replay['id']} interrupted after {replay['sent']} of {n} record(s)" in stopped.stderr
    assert "recorded on" in stopped.stderr

    # A service manager's stop (SIGTERM), and an impatient operator's Ctrl-C pressed twice: the
    # same record, and the same truthful line (a second Ctrl-C while the end was being written
    # said "nothing replayed" after 10,000 records had gone out).
    for sig, times, status in ((signal.SIGTERM, 1, 143), (signal.SIGINT, 2, 130)):
        again = replay_stopped_by(s, sig, times)
        assert again.returncode == status, again.stderr
        latest = replays_recorded(s)[-1]
        assert (latest["status"], latest["planned"]) == ("interrupted", n) and 0 < latest["sent"] < n, latest
        assert latest["sent"] <= sent_by(s, latest["id"]) <= latest["sent"] + latest["unconfirmed"]
        assert f"replay {latest['id']} interrupted after {latest['sent']} of {n} record(s)" in again.stderr
        assert {tuple(o) for o in latest["origins"]} == {tuple(o) for o in replay["origins"]}

    killed = replay_stopped_by(s, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    recorded = replays_recorded(s)
    assert recorded[0] == replay and len(recorded) == 4
    assert (recorded[-1]["status"], recorded[-1]["planned"], recorded[-1]["sent"]) == ("started", n, 0)
    assert 0 < sent_by(s, recorded[-1]["id"]) <= n
    table = s.cli("dlq", "replays", s.dlq_topic)
    assert table.returncode == 0
    assert "interrupted" in table.stdout and "no end recorded" in table.stdout and f"up to {n}" in table.stdout


def test_a_replay_to_another_kinds_topic_is_refused(scenario: Scenario) -> None:
    """`--to chat` for metric dead letters put them where every one is dead-lettered again, into
    chat's dead-letter topic; and letters that first failed on another topic, found in a
    dead-letter topic, are refused rather than replayed into the wrong kind again."""
    s = scenario
    create_topics(s)
    chat_dlq = f"{s.chat_topic}.dlq"
    asyncio.run(ensure_topics([s.bootstrap], [TopicSpec(t, 1, config=SOURCE_CONFIG) for t in (s.chat_topic, chat_dlq)]))
    send(s, s.dlq_topic, [dead_letter(s, s.topic, 0, b"k", b'{"x": 1}')])
    refused = s.cli("dlq", "replay", s.dlq_topic, "--to", s.chat_topic)
    assert refused.returncode == 2, refused.stderr
    assert f"'{s.chat_topic}' is the source topic of chat events" in refused.stderr
    # The same dead-letter topic under an old name the settings no longer pair: its letters say
    # where they came from.
    renamed = {"EVENTSINK_METRICS_DLQ_TOPIC": f"{s.topic}.errors"}
    unpaired = s.cli("dlq", "replay", s.dlq_topic, "--to", s.chat_topic, "--dry-run", **renamed)
    assert unpaired.returncode == 2, unpaired.stderr
    assert f"letters of {s.dlq_topic} came from '{s.topic}' (metric events)" in unpaired.stderr
    own = s.cli("dlq", "replay", s.dlq_topic, "--to", s.topic, "--dry-run", **renamed)
    assert own.returncode == 0 and "would replay 1 record(s)" in own.stderr, own.stderr
    assert sum(end_offsets(s, s.chat_topic).values()) == 0
    # A metric record that was replayed into chat once (before this refusal) and failed there.
    origin = (
        ("eventsink.origin.topic", s.topic.encode()),
        ("eventsink.origin.partition", b"0"),
        ("eventsink.origin.offset", b"3"),
        ("eventsink.replay.id", b"20261207T000000Z-00000000"),
    )
    dead = DeadLetter(Reason.NOT_AN_OBJECT, "not a chat event", s.chat_topic, 0, 7, b"k", b"[]", origin)
    send(s, chat_dlq, [(b"k", b"[]", dead.dlq_headers(s.group))])
    dry = s.cli("dlq", "replay", chat_dlq, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert "would replay 0 record(s)" in dry.stderr and f"first failed on '{s.topic}'" in dry.stderr


def test_dlq_list_says_when_its_filters_match_nothing(scenario: Scenario) -> None:
    """An unknown tenant listed an empty table, exit 0, not a word: a clean topic to the eye."""
    s = scenario
    create_topics(s)
    send(s, s.dlq_topic, [dead_letter(s, s.topic, 0, b"k", b'{"x": 1}')])
    nobody = str(uuid.uuid4())
    done = s.cli("dlq", "list", s.dlq_topic, "--tenant", nobody)
    assert done.returncode == 0, done.stderr
    assert f"no dead letter of {s.dlq_topic} matches --tenant {nobody} (1 dead letters in all)" in done.stderr
    everything = s.cli("dlq", "list", s.dlq_topic)
    assert everything.returncode == 0 and "no dead letter" not in everything.stderr
