"""`streams.tools.tail.to_row`: what `eventsink tail` says a record is."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.deadletter import DeadLetter, Reason
from schemas.metric import MetricEvent
from streams.tools.dlq import Letter, plan
from streams.tools.tail import to_row

VALUE = b'{"tenant_id": "0b9b2a1c-3b4f-4c7e-9a43-5d6e7f8a9b0c", "dedupe_id": "d1", "name": "cpu", "value": 1}'


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 0


def test_a_replayed_record_is_shown_as_replayed_not_as_a_dead_letter() -> None:
    """`tail metrics` showed each record a replay re-published as `DLQ  from [-1]@-1`: its
    lineage headers were taken for a dead letter's."""
    dead = DeadLetter(Reason.INVALID_EVENT, "bad", "metrics", 2, 40, b"k", VALUE, (("trace", b"t"),))
    letter = Letter.of(Record("metrics.dlq", 0, 5, b"k", VALUE, dead.dlq_headers("g")))
    (item,) = plan([letter], "metrics", "metrics").send
    replayed = Record("metrics", 1, 77, item.key, item.value, list(item.lineage("20261207T000000Z-0a1b2c3d")))
    row = to_row(replayed, MetricEvent, None)
    assert row.dlq is None
    assert row.replayed == ("20261207T000000Z-0a1b2c3d", ("metrics", 2, 40))
    assert row.as_dict()["replayed"] == {
        "replay_id": "20261207T000000Z-0a1b2c3d",
        "origin": {"topic": "metrics", "partition": 2, "offset": 40},
    }
    as_letter = to_row(Record("metrics.dlq", 0, 5, b"k", VALUE, dead.dlq_headers("g")), MetricEvent, None)
    assert as_letter.dlq is not None and as_letter.dlq.reason == "invalid_event" and as_letter.replayed is None
    plain = to_row(Record("metrics", 0, 1, b"k", VALUE, [("eventsink.unknown", b"x")]), MetricEvent, None)
    assert plain.dlq is None and plain.replayed is None
