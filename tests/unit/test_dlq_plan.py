"""Which dead letters a replay sends, where to, and which it refuses: headers are anyone's to write."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.deadletter import H_ORIGINAL_SHA256, H_ORIGINAL_SIZE, H_STORED, DeadLetter, Reason
from sinks.core.deadletters import StoredRecord
from streams.settings import load
from streams.tools.dlq import Letter, pairs, plan


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
