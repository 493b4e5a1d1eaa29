"""`VerifyReport.unverified`: when verify checked nothing of the database it read, it says why and
is not ok (the end-to-end cases, with a real worker and a second database, are in
tests/e2e/test_dlq_verify.py)."""

from __future__ import annotations

from streams.tools.source import ReadFrom
from streams.tools.verify import Behind, VerifyReport

PRIMARY = ReadFrom("db.internal:5432", standby=False, database="events_staging")
STANDBY = ReadFrom("replica.internal:5432", standby=True, database="events")


def report(
    *,
    seen: int = 10,
    ledger: dict[int, int] | None = None,  # partition -> last offset applied
    committed: dict[int, int] | None = None,
    read_from: ReadFrom = PRIMARY,
    dsn_source: str = "DATABASE_URL",
) -> VerifyReport:
    r = VerifyReport("metrics", "eventsink", read_from=read_from, dsn_source=dsn_source)
    r.ledger, r.committed = ledger or {}, committed
    t = r.tenant("00000000-0000-4000-8000-000000000001")
    t.seen = t.unique = t.pending = seen
    return r


def test_no_ledger_rows_while_kafka_committed_everything_names_the_database() -> None:
    r = report(committed={0: 3000, 1: 1432})
    assert not r.ok
    assert r.unverified == (
        "database db.internal:5432/events_staging has applied nothing of metrics for group eventsink (no ledger "
        "rows), yet the group's Kafka committed offsets are at 4432 (summed over 2 partitions): nothing was "
        "verified; is DATABASE_URL (database events_staging) the one its workers write to?"
    )
    assert r.as_dict()["ok"] is False and r.as_dict()["unverified"] == r.unverified
    assert r.as_dict()["read_from"] == {"server": "db.internal:5432", "database": "events_staging", "role": "primary"}


def test_a_group_that_applied_nothing_yet_is_not_consistent_either() -> None:
    for committed, kafka in (
        ({0: 0, 1: 0}, "the group's Kafka committed offsets are at 0"),
        ({}, "the group has no committed offsets in Kafka"),
        (None, "the group's Kafka committed offsets could not be read"),
    ):
        r = report(committed=committed, dsn_source="--read-dsn")
        assert not r.ok
        assert r.unverified is not None and f"(no ledger rows) and {kafka}: nothing was verified" in r.unverified
        assert "check that --read-dsn (database events_staging) is the one they write to" in r.unverified


def test_a_lagging_group_is_pending_and_consistent() -> None:
    r = report(ledger={0: 99, 1: 49}, committed={0: 100, 1: 50})
    assert r.ok and r.unverified is None and r.totals().pending == 10


def test_kafka_committed_past_the_ledger_fails_on_a_primary_only() -> None:
    r = report(ledger={0: 99}, committed={0: 3000, 1: 1432})
    assert r.behind_kafka == [Behind(0, 100, 3000), Behind(1, 0, 1432)]
    assert not r.ok
    assert r.unverified is not None
    assert "(next offset here < committed: [0] 100 < 3000, [1] 0 < 1432)" in r.unverified
    assert r.unverified.endswith("is DATABASE_URL (database events_staging) the one its workers write to?")
    # A standby replays the ledger late: what it has not replayed is pending, as for the rows.
    lagging = report(ledger={0: 99}, committed={0: 3000, 1: 1432}, read_from=STANDBY)
    assert lagging.ok and lagging.unverified is None and lagging.as_dict()["behind_kafka"][0]["ledger_next"] == 100


def test_no_ledger_rows_fails_on_a_standby_too() -> None:
    r = report(committed={0: 5}, read_from=STANDBY)
    assert not r.ok and r.unverified is not None and "replica.internal:5432/events" in r.unverified


def test_a_topic_with_no_records_is_left_to_the_command() -> None:
    # `eventsink verify` says "holds no records: nothing to verify" before it looks at the ledger.
    assert report(seen=0).unverified is None


def test_ledger_rows_that_applied_nothing_verify_nothing() -> None:
    """Rows at -1 (a reset for a recreated topic, or rows made by hand) and no Kafka offsets:
    every record read as pending, and verify said "consistent" having checked nothing."""
    r = report(ledger={p: -1 for p in range(8)}, committed={})
    assert not r.ok
    assert r.unverified == (
        "the ledger of group eventsink in database db.internal:5432/events_staging has rows for metrics, but none "
        "has applied anything (each at offset -1: reset for a recreated topic, or made by hand): nothing was "
        "verified; run verify once its workers have applied records, and check that DATABASE_URL (database "
        "events_staging) is the one they write to"
    )
