"""When each metric row was committed, by PostgreSQL's clock: installed in a benchmark database only.

`eventsink.metrics_raw.received_at` is `DEFAULT now()`, the start of the transaction that
inserted the row: a batch's rows all carry the moment its transaction began, before the COPY,
the upsert and the ledger update, and before the commit that makes them visible. To time a row
to its commit, `install` adds to the contender's database (after the migrations; this is never
a migration) a constraint trigger, DEFERRABLE INITIALLY DEFERRED, on INSERT into
`eventsink.metrics_raw`, queued for the first row a transaction inserts only (its WHEN clause
remembers the transaction in a transaction-local setting). Deferred, it fires when that
transaction commits, and writes one row into the unlogged side table `bench_clock.commits`:
the transaction's start (`now()`, the received_at of every row it inserted), its id and
`clock_timestamp()` (the wall clock at that moment, not the transaction's start). A row's
commit time is its transaction's, found by its received_at. A transaction that rolls back
takes its side row with it; a savepoint rolled back takes the queued trigger and the setting
with it, so the next row queues it again; a row skipped by ON CONFLICT fires nothing. The
trigger runs just before the commit record is flushed: the time a row becomes visible is later
by that flush (synchronous_commit). Two transactions that began in the same microsecond would
share a received_at: their rows take the later commit of the two.

Every contender pays the clock the same way: one small PL/pgSQL call per row and one unlogged
insert per transaction. The first clock wrote a side row per row: measured here on 20,000 rows
in 100 transactions, it added 4 to 9 µs of PostgreSQL's CPU per row (on 12 to 13 without it),
a cost the contender's own commits then queued behind. `pg_xact_commit_timestamp` would need
`track_commit_timestamp = on` and a server restart: not used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

INSTALL = """
CREATE SCHEMA bench_clock;
CREATE UNLOGGED TABLE bench_clock.commits (
    began_at     timestamptz  NOT NULL,  -- now() of the transaction: its rows' received_at
    xact         xid8         NOT NULL,
    committed_at timestamptz  NOT NULL   -- clock_timestamp() when the transaction commits
);
CREATE FUNCTION bench_clock.first_row() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    xact text := pg_current_xact_id()::text;
BEGIN
    IF current_setting('bench_clock.xact', true) IS NOT DISTINCT FROM xact THEN
        RETURN false;
    END IF;
    PERFORM set_config('bench_clock.xact', xact, true);
    RETURN true;
END $$;
CREATE FUNCTION bench_clock.note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_clock.commits VALUES (now(), pg_current_xact_id(), clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_commit_clock AFTER INSERT ON eventsink.metrics_raw
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (bench_clock.first_row())
    EXECUTE FUNCTION bench_clock.note_commit();
"""

COUNT = "SELECT count(*) FROM eventsink.metrics_raw"
COUNT_LIKE = "SELECT count(*) FROM eventsink.metrics_raw WHERE dedupe_id LIKE %s"
# Milliseconds since the epoch, as float8: numeric would come back as Decimal.
ROWS = """
SELECT r.dedupe_id,
       (extract(epoch FROM c.committed_at) * 1000)::float8,
       (extract(epoch FROM r.received_at) * 1000)::float8
FROM eventsink.metrics_raw r
JOIN (SELECT began_at, max(committed_at) AS committed_at FROM bench_clock.commits GROUP BY began_at) c
  ON c.began_at = r.received_at
"""
TRANSACTIONS = """
SELECT count(DISTINCT c.xact)
FROM bench_clock.commits c
WHERE EXISTS (SELECT FROM eventsink.metrics_raw r WHERE r.received_at = c.began_at AND r.dedupe_id NOT LIKE %s)
"""


def install(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(INSTALL)


def count(conn: psycopg.Connection, like: str | None = None) -> int:
    """Rows committed so far (those whose dedupe_id is LIKE `like`, if given): the rows
    another transaction sees are the committed ones."""
    row = conn.execute(COUNT).fetchone() if like is None else conn.execute(COUNT_LIKE, (like,)).fetchone()
    return int(row[0])  # type: ignore[index]


def rows(conn: psycopg.Connection) -> Iterator[tuple[str, float, float]]:
    """(dedupe_id, committed_at ms, received_at ms) of every row whose transaction was timed,
    through a server-side cursor."""
    with conn.transaction(), conn.cursor(name="bench_clock_rows") as cur:
        cur.itersize = 20_000
        cur.execute(ROWS)
        yield from cur


def transactions(conn: psycopg.Connection, except_like: str) -> int:
    """The transactions that inserted the rows whose dedupe_id is not LIKE `except_like`."""
    (n,) = conn.execute(TRANSACTIONS, (except_like,)).fetchone()  # type: ignore[misc]
    return int(n)


@dataclass(frozen=True)
class ClockOffset:
    """PostgreSQL's clock_timestamp() minus this host's time.time(), in ms, ± half the round trip."""

    offset_ms: float
    uncertainty_ms: float


def offset_of(before_s: float, server_s: float, after_s: float) -> ClockOffset:
    """The offset read from one round trip: the server's clock against the middle of the trip."""
    return ClockOffset((server_s - (before_s + after_s) / 2) * 1000, (after_s - before_s) / 2 * 1000)


def clock_offset(conn: psycopg.Connection, tries: int = 7) -> ClockOffset:
    """The offset from the round trip that was the shortest of `tries`."""
    best: ClockOffset | None = None
    for _ in range(tries):
        before = time.time()
        (server,) = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()  # type: ignore[misc]
        found = offset_of(before, float(server), time.time())
        if best is None or found.uncertainty_ms < best.uncertainty_ms:
            best = found
    assert best is not None
    return best
