"""An asynchronous standby promoted without the primary's last commits (issue 20).

The formation's secondary is made asynchronous (`number-sync-standbys 0`, its
`replication-quorum false`), then its WAL receiver is stopped (`primary_conninfo = ''`, read on
reload): the worker goes on committing on the primary, and the LSNs and the ledgers show that the
standby never received those commits. Then the whole primary node dies and pg_auto_failover
promotes the standby. The rows and the ledger went back together, as after a restore: the worker,
told every node (`target_session_attrs=read-write`) and never restarted, must find its ledger
behind what it committed, seek back to it and apply the lost records again, each once. The oracle
is what the traffic sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import psycopg
import pytest

from tests.failover.formation import Formation, Node
from tests.failover.test_failover import progressed, worker
from tests.faults.traffic import Traffic, oracle, settled
from tests.helpers import Scenario, ledger, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# What the primary must have committed past the standby before it dies: records of each of these
# topics (metric and chat flow at 210 and 60 a second).
AHEAD = {"metric": 200, "chat": 40}


@dataclass(frozen=True)
class Point:
    """A node's WAL position and its ledger for each topic: {partition: last_offset}, events."""

    lsn: str
    offsets: dict[str, dict[int, int]]
    events: dict[str, int]


def point(s: Scenario, node: Node, lsn_sql: str) -> Point:
    offsets, events = {}, {}
    for name in ("metric", "chat", "analysis"):
        rows = ledger(node.dsn, s.group, s.kind(name).topic)
        offsets[name] = {p: r["last_offset"] for p, r in sorted(rows.items())}
        events[name] = sum(r["events"] for r in rows.values())
    return Point(_one(node, f"SELECT ({lsn_sql})::text"), offsets, events)


def _one(node: Node, sql: str) -> object:
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def make_async(f: Formation, primary: Node, standby: Node) -> None:
    """The standby out of the replication quorum: the primary waits for nobody."""
    # Already 0, the default of a formation (pg_autoctl 2.0's `set formation number-sync-standbys 0`
    # refuses 0 as "not a non-negative integer"): only the standby's quorum is changed.
    with psycopg.connect(f.monitor_uri.replace("autoctl_node", "postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT number_sync_standbys FROM pgautofailover.formation").fetchone()
    assert row == (0,), row
    f.autoctl("set", "node", "replication-quorum", "false", "--pgdata", str(f.monitor.pgdata), "--name", standby.name)
    wait_until(
        lambda: _one(primary, "SELECT current_setting('synchronous_standby_names')") == "",
        120,
        0.2,
        "the primary to wait for no synchronous standby",
    )
    assert f.settled() is primary


def detach(primary: Node, standby: Node) -> str:
    """The standby's WAL receiver stopped: nothing the primary commits from now on reaches it.

    Returns the LSN the standby replayed up to once replay stopped moving. That is its receive
    LSN, or the end of the last whole record before it: the primary streams up to its flush
    position, which the WAL writer can leave in the middle of a record, and a partial record is
    never replayed (a CI run waited 60 s for replay to equal receive).
    """
    with psycopg.connect(standby.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    wait_until(
        lambda: (
            _one(standby, "SELECT count(*) FROM pg_stat_wal_receiver") == 0
            and _one(primary, "SELECT count(*) FROM pg_stat_replication") == 0
        ),
        60,
        0.2,
        "the standby's WAL receiver to stop",
    )
    seen: list[tuple[object, object]] = []

    def replay_settled() -> str | None:
        row = _one(standby, "SELECT ARRAY[pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text]")
        assert isinstance(row, list)
        replayed, received = row
        seen.append((replayed, received))
        if replayed == received:
            return str(replayed)
        # Unmoved for 2 s (20 samples) with nothing more to receive: a partial record at the end.
        recent = seen[-20:]
        return str(replayed) if len(recent) == 20 and len(set(recent)) == 1 else None

    return wait_until(replay_settled, 60, 0.1, "the standby to replay all it received")  # type: ignore[no-any-return]


def ahead(s: Scenario, primary: Node, of: Point) -> bool:
    now = point(s, primary, "pg_current_wal_lsn()")
    return all(now.events[name] >= of.events[name] + n for name, n in AHEAD.items())


def writable(node: Node) -> bool:
    try:
        return _one(node, "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)") is True
    except psycopg.Error:
        return False


def test_async_standby_promoted_without_the_last_commits(  # type: ignore[no-untyped-def]
    ha_scenario: Scenario, formation: Formation, record_property
) -> None:
    s, f = ha_scenario, formation
    old = f.settled()
    standby = next(n for n in f.nodes if n is not old)
    make_async(f, old, standby)
    w = worker(s)
    pid = w.pid
    traffic = Traffic(s, metrics=1500, conversations=60, analyses=20, rate=300, seed=900, until_stopped=True).start()
    try:
        wait_until(lambda: progressed(s, 0), 120, 0.1, "first commits")
        replayed_at_detach = detach(old, standby)
        frozen = point(s, standby, "pg_last_wal_receive_lsn()")
        wait_until(lambda: ahead(s, old, frozen), 120, 0.1, f"the primary to commit {AHEAD} events past the standby")
        lost = point(s, old, "pg_current_wal_lsn()")  # a lower bound: commits go on until the crash
        still = point(s, standby, "pg_last_wal_receive_lsn()")
        replayed = _one(standby, "SELECT pg_last_wal_replay_lsn()::text")
        gap = _one(old, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{frozen.lsn}')")
        # The standby received nothing since it was detached, replayed all it could, and its
        # ledger is behind the primary's: those commits exist on the primary only.
        assert still == frozen and replayed == replayed_at_detach, (frozen, still, replayed, replayed_at_detach)
        assert gap > 0 and all(lost.events[k] > frozen.events[k] for k in AHEAD), (frozen, lost)
        crashed = time.monotonic()
        f.crash(old)
        wait_until(lambda: writable(standby), 150, 0.1, "pg_auto_failover to promote the asynchronous standby")
        promoted_s = time.monotonic() - crashed
        # Evidence only (the worker may already have committed on it): the new primary's ledger.
        promoted = point(s, standby, "pg_current_wal_lsn()")
        assert traffic.alive(), "the traffic ended before the failover was over"
        traffic.stop()
        settled(s, traffic, timeout=240)
        oracle(s, traffic)  # every valid event once, chat counters, ledger counters, dead letters as sent
        final = point(s, standby, "pg_current_wal_lsn()")
        assert w.alive() and w.pid == pid, "the worker died: it must ride through a failover"
        logs = w.logs()
        # The worker saw its ledger behind what it had committed, on the topics that lost commits.
        seen = [e for e in logs if e.get("event", "").startswith("ledger behind this worker's commits")]
        behind = {e.get("topic") for e in seen}
        assert {s.kind(k).topic for k in AHEAD} <= behind, behind
        assert not [e for e in logs if e.get("event") in ("partition pipeline crashed", "partition stopped")]
    finally:
        if traffic.alive():
            traffic.stop()
        w.stop()
    evidence = {
        "standby_receive_lsn": frozen.lsn,
        "primary_lsn_before_crash": lost.lsn,
        "wal_bytes_never_received": gap,
        "ledger_events_on_standby": frozen.events,
        "ledger_events_on_primary_before_crash": lost.events,
        "ledger_offsets_on_standby": frozen.offsets,
        "ledger_offsets_on_primary_before_crash": lost.offsets,
        "ledger_offsets_on_the_new_primary_when_writable": promoted.offsets,
        "ledger_offsets_at_the_end": final.offsets,
        "worker_saw_ledger_behind": [(e["topic"], e["partition"], e["ledger_next"], e["committed_next"]) for e in seen],
        "promoted_after_s": round(promoted_s, 1),
    }
    # As JSON text: pytest-xdist sends properties between processes and refuses a Decimal (the LSN diff).
    record_property("async_failover", orjson.dumps(evidence, default=str, option=orjson.OPT_NON_STR_KEYS).decode())
    print("async failover:", evidence)
    clean = f.stop()
    assert clean[standby.name] and clean["monitor"], clean
