"""When each metric row was committed, by PostgreSQL's clock: installed in a benchmark database only.

`eventsink.metrics_raw.received_at` is `DEFAULT now()`, the start of the transaction that
inserted the row: a batch's rows all carry the moment its transaction began, before the COPY,
the upsert and the ledger update, and before the commit that makes them visible. To time a row
to its commit, `install` adds to the contender's database (after the migrations; this is never
a migration) a constraint trigger, DEFERRABLE INITIALLY DEFERRED, on INSERT into
`eventsink.metrics_raw`: deferred, it fires when the inserting transaction commits, and writes
`clock_timestamp()` (the wall clock at that moment, not the transaction's start) into the
unlogged side table `bench_clock.commits`, one row per inserted row, keyed by (tenant_id,
dedupe_id). A transaction that rolls back (or a savepoint rolled back) takes its side rows with
it; a row skipped by ON CONFLICT fires nothing. The trigger runs just before the commit record
is flushed: the time a row becomes visible is later by that flush (synchronous_commit), and the
rows of one batch are stamped one after the other (microseconds apart). `pg_xact_commit_timestamp`
would need `track_commit_timestamp = on` and a server restart: not used.

Every contender pays the trigger the same way: one PL/pgSQL call and one unlogged insert per row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

INSTALL = """
CREATE SCHEMA bench_clock;
CREATE UNLOGGED TABLE bench_clock.commits (
    tenant_id    uuid         NOT NULL,
    dedupe_id    varchar(128) NOT NULL,
    xact         xid8         NOT NULL,  -- the top-level transaction, also from a savepoint
    received_at  timestamptz  NOT NULL,  -- the row's own, now() of its transaction
    committed_at timestamptz  NOT NULL   -- clock_timestamp() when the transaction commits
);
CREATE FUNCTION bench_clock.note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_clock.commits
    VALUES (NEW.tenant_id, NEW.dedupe_id, pg_current_xact_id(), NEW.received_at, clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_commit_clock AFTER INSERT ON eventsink.metrics_raw
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_clock.note_commit();
"""

COUNT = "SELECT count(*) FROM bench_clock.commits"
COUNT_LIKE = "SELECT count(*) FROM bench_clock.commits WHERE dedupe_id LIKE %s"
# Milliseconds since the epoch, as float8: numeric would come back as Decimal.
ROWS = """
SELECT dedupe_id,
       (extract(epoch FROM committed_at) * 1000)::float8,
       (extract(epoch FROM received_at) * 1000)::float8
FROM bench_clock.commits
"""
TRANSACTIONS = "SELECT count(DISTINCT xact) FROM bench_clock.commits WHERE dedupe_id NOT LIKE %s"


def install(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(INSTALL)


def count(conn: psycopg.Connection, like: str | None = None) -> int:
    """Rows committed so far (those whose dedupe_id is LIKE `like`, if given)."""
    row = conn.execute(COUNT).fetchone() if like is None else conn.execute(COUNT_LIKE, (like,)).fetchone()
    return int(row[0])  # type: ignore[index]


def rows(conn: psycopg.Connection) -> Iterator[tuple[str, float, float]]:
    """(dedupe_id, committed_at ms, received_at ms) of every row, through a server-side cursor."""
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
