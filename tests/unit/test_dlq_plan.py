"""Which dead letters a replay sends, where to, and which it refuses: headers are anyone's to write."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from schemas.deadletter import (
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_REPLAY_ID,
    H_STORED,
    DeadLetter,
    Reason,
)
from sinks.core.deadletters import StoredRecord
from streams.settings import load
from streams.tools.dlq import Letter, ReplayRecord, dead_letters, latest, pairs, plan, utc_text


@dataclass
class Record:
    """The fields of an aiokafka ConsumerRecord that a replay reads."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int = 0


def letter(
    source: str = "metrics", partition: int = 0, offset: int = 1, extra: list[tuple[str, bytes | None]] | None = None
) -> Letter:
    dead = DeadLetter(Reason.INVALID_JSON, "bad", source, partition, offset, b"k", b"v", (("trace", b"t1"),))
    headers = dead.dlq_headers("eventsink") + (extra or [])
    return Letter.of(Record(0, offset, b"k", b"v", headers))


def test_pairs_come_from_the_settings() -> None:
    assert pairs(load()) == {"metrics.dlq": "metrics", "chat.dlq": "chat", "analysis.dlq": "analysis"}
    assert pairs(load(metrics_topic="m", metrics_dlq_topic="dead-m"))["dead-m"] == "m"


def test_a_letter_of_its_source_topic_goes_there_with_its_original_headers_only() -> None:
    done = plan([letter()], "metrics", "metrics")
    assert [(r.topic, r.key, r.value, r.headers) for r in done.send] == [("metrics", b"k", b"v", (("trace", b"t1"),))]
    assert done.refused == [] and done.repeats == 0


def test_a_forged_source_header_is_refused_not_followed() -> None:
    forged = [letter("eventsink-dedupe-metric-changelog"), letter("chat"), letter("")]
    done = plan(forged, "metrics", "metrics")
    assert done.send == []
    assert [r.why for r in done.refused] == [
        "its source header names 'eventsink-dedupe-metric-changelog', not 'metrics'",
        "its source header names 'chat', not 'metrics'",
        "its source header names no topic, not 'metrics'",
    ]
    # --to changes where a letter goes, not which letters belong to the dead-letter topic.
    assert plan(forged, "metrics", "metrics-v2").send == []
    assert [r.topic for r in plan([letter()], "metrics", "metrics-v2").send] == ["metrics-v2"]


def test_conflicting_or_malformed_headers_are_refused() -> None:
    twice = letter(extra=[("eventsink.source.topic", b"chat")])  # a second source header
    no_offset = Letter.of(Record(0, 5, b"k", b"v", [("eventsink.source.topic", b"metrics")]))
    garbled = Letter.of(
        Record(
            0,
            6,
            b"k",
            b"v",
            [
                ("eventsink.source.topic", b"metrics"),
                ("eventsink.source.partition", b"0"),
                ("eventsink.source.offset", b"\xff"),
            ],
        )
    )
    done = plan([twice, no_offset, garbled], "metrics", "metrics")
    assert done.send == []
    assert [r.why for r in done.refused] == [
        "conflicting values for eventsink.source.topic",
        "no valid source partition and offset headers",
        "no valid source partition and offset headers",
    ]


def test_an_unconfigured_dead_letter_topic_replayed_with_to_skips_the_source_check() -> None:
    done = plan([letter("old-metrics")], None, "metrics")
    assert [r.topic for r in done.send] == ["metrics"]


def test_a_record_dead_lettered_twice_is_replayed_once() -> None:
    done = plan([letter(offset=7), letter(offset=7), letter(offset=8)], "metrics", "metrics")
    assert len(done.send) == 2 and done.repeats == 1


def stored_letter(offset: int, original: bytes, *, sha: str | None = None, size: int | None = None) -> Letter:
    marks: list[tuple[str, bytes | None]] = [(H_STORED, b"postgres")]
    marks.append((H_ORIGINAL_SHA256, (sha or hashlib.sha256(original).hexdigest()).encode()))
    marks.append((H_ORIGINAL_SIZE, str(len(original) if size is None else size).encode()))
    return letter(offset=offset, extra=marks)


def test_a_stored_letter_is_replayed_from_the_database_after_its_checksum() -> None:
    original = b'{"big": "' + b"x" * 100 + b'"}'
    kept = {
        ("eventsink", "metrics", 0, 1): StoredRecord(b"tenant", original, (("trace", b"t"), ("eventsink.x", b"y"))),
        ("eventsink", "metrics", 0, 2): StoredRecord(b"tenant", b"tampered", ()),
        ("eventsink", "metrics", 0, 3): StoredRecord(b"tenant", original, ()),
    }
    asked: list[tuple[str, str, int, int]] = []

    def load_stored(group: str, topic: str, partition: int, offset: int) -> StoredRecord | None:
        asked.append((group, topic, partition, offset))
        return kept.get((group, topic, partition, offset))

    letters = [
        stored_letter(1, original),
        stored_letter(2, original),  # the database holds other bytes
        stored_letter(3, original, size=5),
        stored_letter(4, original),  # not in the database
        letter(offset=5, extra=[(H_STORED, b"s3")]),
    ]
    done = plan(letters, "metrics", "metrics", load_stored)
    assert [(r.key, r.value, r.headers) for r in done.send] == [(b"tenant", original, (("trace", b"t"),))]
    assert [r.why for r in done.refused] == [
        "the stored original does not match the letter's SHA-256 header",
        "the stored original does not match the letter's size header",
        "its original (eventsink, metrics[0]@4) is not in the database",
        "stored in b's3', a place eventsink does not know",
    ]
    assert asked == [("eventsink", "metrics", 0, o) for o in (1, 2, 3, 4)]
    without_db = plan([stored_letter(1, original)], "metrics", "metrics")
    assert without_db.send == [] and "not read" in without_db.refused[0].why


def test_a_reason_no_letter_can_have_is_refused() -> None:
    """`--reason bogus` printed an empty table and exited 0: it reads as "no such letters"."""
    from click.testing import CliRunner

    from streams.cli.main import cli

    for command in (["dlq", "list", "metrics.dlq"], ["dlq", "replay", "metrics.dlq", "--dry-run"]):
        result = CliRunner().invoke(cli, [*command, "--reason", "bogus"])
        assert result.exit_code == 2, result.output
        assert "'bogus' is not one of" in result.output and "invalid_event" in result.output


def refailed(first: Letter, source_offset: int, replay_id: str = "r1", value: bytes = b"v") -> Letter:
    """The letter of `first` replayed (under `replay_id`) and dead-lettered again at `source_offset`."""
    sent = plan([first], "metrics", "metrics").send[0].lineage(replay_id)
    dead = DeadLetter(Reason.INVALID_JSON, "bad", "metrics", 0, source_offset, b"k", value, sent)
    return Letter.of(Record(0, 100 + source_offset, b"k", value, dead.dlq_headers("eventsink")))


def test_a_replayed_record_that_fails_again_is_the_same_dead_letter() -> None:
    """Three replays of still-invalid records turned 3 letters into 27: each failure named a new
    source offset, so no two letters looked alike."""
    first = letter(offset=7)
    again = refailed(first, 40)
    # The replayed record carries the original headers byte for byte, then its lineage.
    assert plan([first], "metrics", "metrics").send[0].lineage("r1") == (
        ("trace", b"t1"),
        ("eventsink.origin.topic", b"metrics"),
        ("eventsink.origin.partition", b"0"),
        ("eventsink.origin.offset", b"7"),
        ("eventsink.replay.id", b"r1"),
    )
    # Its dead letter keeps them too, says where it really was, and names the origin.
    assert again.original_headers == (("trace", b"t1"),)
    assert (again.info.source_offset, again.info.origin, again.info.replay_id) == (40, ("metrics", 0, 7), "r1")
    assert again.identity == first.identity and again.info.replayed and not first.info.replayed
    # Replayed again (and again): the lineage stays the first failure's.
    third = refailed(again, 90, "r2")
    assert third.info.origin == ("metrics", 0, 7) and third.identity == first.identity
    done = plan([first, again, third], "metrics", "metrics")
    assert len(done.send) == 1 and done.repeats == 2
    groups = dead_letters([first, again, third, letter(offset=8)])
    assert [(g.latest.info.origin, g.attempts) for g in groups] == [(("metrics", 0, 8), 1), (("metrics", 0, 7), 3)]


def test_a_forged_lineage_never_hides_another_records_letter() -> None:
    """Lineage headers are anyone's to write: a record claiming another's origin is its own dead
    letter unless its bytes are the same (then replaying one of them is replaying both)."""
    first = letter(offset=7)
    forged = refailed(first, 40, value=b"other bytes")
    assert forged.info.origin == first.info.origin and forged.identity != first.identity
    assert len(plan([first, forged], "metrics", "metrics").send) == 2
    malformed = [
        ("eventsink.origin.topic", b"metrics"),
        ("eventsink.origin.partition", b"x"),
        ("eventsink.origin.offset", b"7"),
    ]
    dead = DeadLetter(Reason.INVALID_JSON, "bad", "metrics", 0, 41, b"k", b"v", tuple(malformed))
    alone = Letter.of(Record(0, 141, b"k", b"v", dead.dlq_headers("eventsink")))
    assert alone.info.origin == ("metrics", 0, 41) and not alone.info.replayed
    assert not any(k.startswith("eventsink.origin") for k, _ in alone.headers)


def test_failed_at_is_shown_in_utc_with_its_zone() -> None:
    assert utc_text("2024-05-01T14:00:00.5+02:00") == "2024-05-01T12:00:00.500000Z"
    assert utc_text("2024-05-01T12:00:00+00:00") == "2024-05-01T12:00:00.000000Z"
    assert utc_text("yesterday") == "yesterday"  # a header anyone wrote, shown as it is
    assert letter().failed_at.endswith("Z")


def test_a_replay_record_reads_back_and_junk_is_no_replay() -> None:
    record = ReplayRecord(
        "id",
        "2024-05-01T12:00:00.000000Z",
        "metrics.dlq",
        "metrics",
        {"reason": None},
        2,
        1,
        0,
        "ops",
        "host",
        [("metrics", 0, 7)],
    )
    assert ReplayRecord.from_json(record.to_json()) == record
    for junk in (b"", b"[]", b"{}", b'{"id": 1}', None):
        assert ReplayRecord.from_json(junk) is None
    # Written before a replay recorded its start and end: read as one that was done.
    old = orjson.loads(record.to_json())
    for name in ("status", "planned", "unconfirmed", "error"):
        del old[name]
    assert ReplayRecord.from_json(orjson.dumps(old)) == record and record.status == "done"


def test_each_replay_is_listed_once_as_its_last_record_says() -> None:
    def rec(id_: str, status: str, sent: int) -> ReplayRecord:
        return ReplayRecord(id_, "at", "metrics.dlq", "metrics", {}, sent, 0, 0, "ops", "host", status=status)

    records = [rec("a", "started", 0), rec("b", "started", 0), rec("a", "interrupted", 5), rec("c", "started", 0)]
    assert [(r.id, r.status, r.sent) for r in latest(records)] == [
        ("a", "interrupted", 5),
        ("b", "started", 0),  # killed before it could record its end
        ("c", "started", 0),
    ]
    # The end's record leaves the origins to the start's (it is kept small): carried over.
    start = ReplayRecord("d", "at", "metrics.dlq", "metrics", {}, 0, 0, 0, "ops", "host", [("metrics", 0, 7)])
    end = ReplayRecord("d", "at", "metrics.dlq", "metrics", {}, 1, 0, 0, "ops", "host", [], status="done")
    (merged,) = latest([start, end])
    assert (merged.status, merged.sent, merged.origins) == ("done", 1, [("metrics", 0, 7)])


def test_a_letter_that_first_failed_on_another_topic_is_refused() -> None:
    """A metric record replayed into chat (by hand, or before `--to` refused another kind's topic)
    and dead-lettered there: chat's dead-letter topic holds it, but it can never be applied to chat."""
    origin = (
        (H_ORIGIN_TOPIC, b"metrics"),
        (H_ORIGIN_PARTITION, b"0"),
        (H_ORIGIN_OFFSET, b"3"),
        (H_REPLAY_ID, b"r1"),
    )
    dead = DeadLetter(Reason.NOT_AN_OBJECT, "not a chat event", "chat", 0, 9, b"k", b"[]", origin)
    stray = Letter.of(Record(0, 1, b"k", b"[]", dead.dlq_headers("g")))
    mine = DeadLetter(Reason.NOT_AN_OBJECT, "not a chat event", "chat", 0, 10, b"k", b"[]", ())
    own = Letter.of(Record(0, 2, b"k", b"[]", mine.dlq_headers("g")))
    p = plan([stray, own], "chat", "chat")
    assert [r.letter.offset for r in p.send] == [2]
    (refusal,) = p.refused
    assert refusal.letter is stray and refusal.why == "it first failed on 'metrics', not 'chat': replay it from there"


def test_a_dead_letter_kept_in_postgresql_carries_the_lineage_on_its_marker() -> None:
    """A replayed record too large for the dead-letter topic fails again: its marker names the
    origin too, so it is the same dead letter as the first failure's marker."""
    from streams.worker.deadletters import marker

    first = letter(offset=7)
    lineage = plan([first], "metrics", "metrics").send[0].lineage("r1")
    dead = DeadLetter(Reason.TOO_LARGE, "too large", "metrics", 0, 40, b"k", b"v" * 100, lineage)
    key, value, headers = marker(dead, "eventsink")
    again = Letter.of(Record(0, 140, key, value, headers))
    assert again.info.origin == ("metrics", 0, 7) and again.info.replay_id == "r1"
    assert again.info.source_offset == 40 and again.stored == b"postgres"
