"""`eventsink verify`: a topic, read from the start, reconciled against the database.

For each tenant: records seen, distinct valid events, events applied, records dead-lettered,
metric events pruned by retention (absent, and older than the horizon `eventsink retention`
recorded), events missing (valid, at or below the group's ledger, neither in the database nor in
the DLQ nor pruned)
and rows duplicated or wrong (a key stored twice; a chat session whose counters disagree with
its messages or the topic; an analysis row that differs from the in-order fold of its events).
Records past the ledger are `pending`, not missing. It joins no consumer group.

A check of nothing is never a success: when this database's ledger has no row of the group for
the topic while the topic holds records (verify pointed at another database, or a group whose
workers have applied nothing here yet), or when the group's committed offsets in Kafka are past
this database's ledger (workers commit to Kafka only what the ledger holds, so the ledger always
leads: this is not the database they write to, or it lost commits), the report says why it
verified nothing (`unverified`) and is not ok. On a standby, a ledger behind Kafka is replication
lag: what it has not replayed reads as pending, as it does for the rows.

What the database must hold comes from `streams.tools.expected` (the oracle every check shares);
this module compares it with the tables, key by key, and tells pending from missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from sinks.retention import METRICS, horizon_of
from sinks.writers.analysis import SELECT_ROWS
from streams import aio
from streams.kinds import Kind
from streams.tools.expected import Analysis, Expected, Key, Progress, Seen, Session, read_expected
from streams.tools.reader import Reader, Unreadable
from streams.tools.source import ReadFrom, read_from


@dataclass
class TenantReport:
    tenant: str
    seen: int = 0
    unique: int = 0
    applied: int = 0
    in_dlq: int = 0
    pending: int = 0
    pruned: int = 0
    missing: int = 0
    duplicated: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated


@dataclass(frozen=True, slots=True)
class Behind:
    """A partition whose ledger here is behind the group's committed offset in Kafka."""

    partition: int
    ledger_next: int  # the next offset this database's ledger would apply (last applied + 1)
    committed: int  # the group's committed offset in Kafka (the next to read)


@dataclass
class VerifyReport:
    topic: str
    group: str
    tenants: dict[str, TenantReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    dlq_repeats: int = 0  # dead letters published twice (a worker died between DLQ and commit)
    # Offsets the broker deleted before they were applied, as the ledger recorded them (retention):
    # (partition, first offset, last offset, reason). They are not in the topic any more, so no
    # tenant's row above counts them; an operator accepted them (or EVENTSINK_ON_DATA_LOSS=skip).
    lost: list[tuple[int, int, int, str]] = field(default_factory=list)
    # Record batches the Kafka client could not read: (partition, offset, why).
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)
    # The PostgreSQL server and database read, and whether it was the primary or a standby.
    read_from: ReadFrom | None = None
    # This database's ledger of the group for the topic: partition -> last offset applied (-1:
    # none, a row reset for a recreated topic or made by hand).
    ledger: dict[int, int] = field(default_factory=dict)
    # The group's committed offsets in Kafka (partition -> next to read), read just before the
    # ledger; None when the broker could not tell.
    committed: dict[int, int] | None = None
    # What names the DSN read, for the operator to check (DATABASE_URL, --read-dsn, ...).
    dsn_source: str = "DATABASE_URL"

    @property
    def lost_offsets(self) -> int:
        return sum(last - first + 1 for _, first, last, _ in self.lost)

    @property
    def ok(self) -> bool:
        return (
            all(t.ok for t in self.tenants.values())
            and not any("cannot be read" in p for p in self.problems)
            and self.unverified is None
        )

    @property
    def ledger_rows(self) -> int:
        return len(self.ledger)

    @property
    def ledger_applied(self) -> int:
        """Ledger rows that applied anything."""
        return sum(1 for last in self.ledger.values() if last >= 0)

    @property
    def behind_kafka(self) -> list[Behind]:
        """The partitions whose Kafka committed offset is past this ledger's next offset."""
        return [
            Behind(p, self.ledger.get(p, -1) + 1, c)
            for p, c in sorted((self.committed or {}).items())
            if c > self.ledger.get(p, -1) + 1
        ]

    @property
    def on_standby(self) -> bool:
        return self.read_from is not None and self.read_from.standby

    @property
    def unverified(self) -> str | None:
        """Why this database was not verified against the topic, on one line; None when it was.

        Nothing of the topic applied here (no ledger row of the group) while the topic holds
        records: every record reads as pending, and "consistent" would be a check of nothing. Or
        the group's Kafka committed offsets past this primary's ledger: the workers commit to
        Kafka only what the ledger holds, so they wrote elsewhere, or this database lost commits."""
        database = self.read_from.database if self.read_from else "?"
        where = f"database {self.read_from.where}" if self.read_from else "this database"
        check = f"is {self.dsn_source} (database {database}) the one its workers write to?"
        committed = self.committed or {}
        if self.ledger_rows == 0 and self.totals().seen:
            at = sum(committed.values())
            head = f"{where} has applied nothing of {self.topic} for group {self.group} (no ledger rows)"
            if at:
                return (
                    f"{head}, yet the group's Kafka committed offsets are at {at} "
                    f"(summed over {_partitions(len(committed))}): nothing was verified; {check}"
                )
            kafka = (
                "the group's Kafka committed offsets are at 0"
                if committed
                else "the group has no committed offsets in Kafka"
                if self.committed is not None
                else "the group's Kafka committed offsets could not be read"
            )
            return (
                f"{head} and {kafka}: nothing was verified; run verify once its workers have applied "
                f"records, and check that {self.dsn_source} (database {database}) is the one they write to"
            )
        behind = self.behind_kafka
        if behind and not self.on_standby:
            shown = ", ".join(f"[{b.partition}] {b.ledger_next} < {b.committed}" for b in behind[:8])
            more = f" and {len(behind) - 8} more" if len(behind) > 8 else ""
            return (
                f"the ledger of group {self.group} in {where} is behind the offsets the group committed in "
                f"Kafka for {self.topic} (next offset here < committed: {shown}{more}): workers commit to "
                "Kafka only what the ledger holds, so this is not the database they write to, or it lost "
                f"commits (an older backup restored, a failover); {check}"
            )
        if self.ledger_applied == 0 and self.totals().seen:
            return (
                f"the ledger of group {self.group} in {where} has rows for {self.topic}, but none has applied "
                "anything (each at offset -1: reset for a recreated topic, or made by hand): nothing was verified; "
                f"run verify once its workers have applied records, and check that {self.dsn_source} (database "
                f"{database}) is the one they write to"
            )
        return None

    def tenant(self, tenant: str) -> TenantReport:
        if tenant not in self.tenants:
            self.tenants[tenant] = TenantReport(tenant)
        return self.tenants[tenant]

    def totals(self) -> TenantReport:
        total = TenantReport("total")
        counters = [f.name for f in fields(TenantReport) if f.name != "tenant"]
        for t in self.tenants.values():
            for name in counters:
                setattr(total, name, getattr(total, name) + getattr(t, name))
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "ok": self.ok,
            "dlq_repeats": self.dlq_repeats,
            "lost_offsets": self.lost_offsets,
            "lost": [{"partition": p, "first_offset": f, "last_offset": t, "reason": r} for p, f, t, r in self.lost],
            "unreadable": [{"partition": p, "offset": o, "detail": d} for p, o, d in self.unreadable],
            "tenants": [asdict(t) for t in sorted(self.tenants.values(), key=lambda t: t.tenant)],
            "total": asdict(self.totals()),
            "problems": self.problems[:100],
            "read_from": self.read_from.as_dict() if self.read_from else None,
            "ledger_rows": self.ledger_rows,
            "ledger_applied": self.ledger_applied,
            "kafka_committed": None
            if self.committed is None
            else [{"partition": p, "offset": o} for p, o in sorted(self.committed.items())],
            "behind_kafka": [
                {"partition": b.partition, "ledger_next": b.ledger_next, "kafka_committed": b.committed}
                for b in self.behind_kafka
            ],
            "unverified": self.unverified,
        }


def _partitions(n: int) -> str:
    return f"{n} partition" if n == 1 else f"{n} partitions"


LOST = """
SELECT partition, first_offset, last_offset, reason FROM eventsink.lost_ranges
WHERE consumer_group = %s AND topic = %s
ORDER BY partition, first_offset
"""


def _ledger(conn: psycopg.Connection, group: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, last_offset FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    )
    return dict(rows.fetchall())


# Where each kind's idempotency keys live.
KEY_TABLES = {
    "metric": "eventsink.metrics_raw",
    "chat": "eventsink.chat_messages",
    "analysis": "eventsink.analysis_events",
}
KEYS = {
    kind: f"SELECT tenant_id, dedupe_id, count(*) FROM {table} WHERE tenant_id = ANY(%s) GROUP BY 1, 2"
    for kind, table in KEY_TABLES.items()
}


def verify(
    bootstrap: list[str],
    dsn: str,
    group: str,
    kind: Kind,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    security: Mapping[str, Any] | None = None,
    dsn_source: str = "DATABASE_URL",
    progress: Progress | None = None,
) -> VerifyReport:
    """`progress(topic, n)`: n more records of `topic` (the source or its DLQ) read."""
    report = VerifyReport(kind.topic, group, dsn_source=dsn_source)
    # Autocommit: no transaction stays open while the topics are read (each statement sees what
    # is committed when it runs, as a transaction at read committed would).
    with psycopg.connect(dsn, autocommit=True) as conn:
        report.read_from = read_from(conn)
        # The ledger is read after the group's Kafka committed offsets: a worker commits to Kafka
        # only what its ledger transaction committed, so a ledger read after them is never behind
        # them unless this is not the workers' database (or it lost commits). And before the topic
        # and its DLQ: every record the ledger covers now is in the topic when we read it, and so
        # is its dead letter in the DLQ (a worker publishes dead letters before it commits). Read
        # after them, a ledger that moved on in between would take a record whose dead letter came
        # after our read of the DLQ for one missing.
        committed, ledger, expected, unreadable = aio.run(
            _read(bootstrap, kind, since, security, group, lambda: _ledger(conn, group, kind.topic), progress)
        )
        report.ledger, report.committed = ledger, committed
        dlq_sources = expected.dead_lettered
        report.dlq_repeats = sum(n - 1 for n in dlq_sources.values())
        report.lost = [tuple(r) for r in conn.execute(LOST, (group, kind.topic))]  # type: ignore[misc]
        for u in unreadable:
            # A record batch no Kafka client here can read: accounted for only where the ledger
            # recorded it as lost (an operator's `eventsink ledger skip`), or not reached yet.
            recorded = any(p == u.partition and first <= u.offset <= last for p, first, last, _ in report.lost)
            report.unreadable.append((u.partition, u.offset, u.detail))
            if not recorded and u.offset <= ledger.get(u.partition, -1):
                report.problems.append(
                    f"{kind.topic}[{u.partition}]@{u.offset} cannot be read by the Kafka client ({u.detail}) and is "
                    "neither applied nor recorded as lost"
                )
        _classify_invalid(report, kind, expected, ledger, tenant)
        events = {key: seen for key, seen in expected.events.items() if not tenant or str(key[0]) == tenant}
        for (tenant_id, _), seen in events.items():
            report.tenant(str(tenant_id)).seen += len(seen)
        tenants = sorted({t for t, _ in events})
        stored = {(t, d): n for t, d, n in conn.execute(KEYS[kind.name], (tenants,))}
        if kind.name == "analysis":
            stored.update(_archived(conn, events))
        # Metric rows older than this may have been deleted by retention. Read after the keys:
        # a run that starts in between then counts as pruned, not missing.
        horizon = horizon_of(conn, METRICS) if kind.name == "metric" else None
        for key, sources in events.items():
            row = report.tenant(str(key[0]))
            row.unique += 1
            count = stored.get(key, 0)
            if count > 1:
                row.duplicated += 1
                report.problems.append(f"{key} is stored {count} times")
            if count:
                row.applied += 1
            elif all(s.where in dlq_sources for s in sources):
                row.in_dlq += 1
            elif any(s.offset > ledger.get(s.partition, -1) for s in sources):
                row.pending += 1
            elif horizon is not None and min(sources, key=lambda s: s.where).event.occurred_at < horizon:
                row.pruned += 1
            else:
                row.missing += 1
                report.problems.append(f"{key} ({kind.topic}[{sources[0].partition}]@{sources[0].offset}) is missing")
        if since is None:  # aggregates need every event, not those since a time
            # Checked against the keys the database holds: a missing key is reported once, above.
            accepted = [key for key in events if stored.get(key)]
            if kind.name == "chat":
                _check_sessions(conn, report, expected.sessions(accepted))
            elif kind.name == "analysis":
                _check_analyses(conn, report, expected.analyses(accepted))
    return report


async def _read(
    bootstrap: list[str],
    kind: Kind,
    since: datetime | None,
    security: Mapping[str, Any] | None,
    group: str,
    ledger: Callable[[], dict[int, int]],
    progress: Progress | None,
) -> tuple[dict[int, int] | None, dict[int, int], Expected, list[Unreadable]]:
    """The group's Kafka committed offsets, then the ledger (`ledger()`), then the topic and its DLQ."""
    async with Reader(bootstrap, security) as reader:
        committed = await _committed(reader, group, kind.topic)
        positions = ledger()
        expected = await read_expected(reader, kind, since, progress, group)
        return committed, positions, expected, [u for u in reader.unreadable if u.topic == kind.topic]


async def _committed(reader: Reader, group: str, topic: str) -> dict[int, int] | None:
    """partition -> the group's committed offset in Kafka (partitions without one left out); None
    when the broker cannot tell (the report then says so; the topic is still read and checked)."""
    try:
        found = await reader.committed(group, topic, await reader.partitions(topic))
    except LookupError:
        raise
    except Exception:
        return None
    return {p: o for p, o in found.items() if o is not None}


def _classify_invalid(
    report: VerifyReport, kind: Kind, expected: Expected, ledger: dict[int, int], tenant: str | None
) -> None:
    """Invalid records, counted under the tenant their key names: dead-lettered, pending or missing."""
    for r in expected.invalid:
        if tenant and r.tenant != tenant:
            continue
        row = report.tenant(r.tenant)
        row.seen += 1
        if r.where in expected.dead_lettered:
            row.in_dlq += 1
        elif r.offset > ledger.get(r.partition, -1):
            row.pending += 1
        else:
            row.missing += 1
            report.problems.append(f"invalid record {kind.topic}[{r.partition}]@{r.offset} is not in the DLQ")


def _archived(conn: psycopg.Connection, events: dict[Key, list[Seen]]) -> dict[Key, int]:
    """Events of analyses moved to the archive by retention: applied, then retired."""
    ids = {s.event.analysis_id for sources in events.values() for s in sources}
    archived = {
        r[0]
        for r in conn.execute("SELECT id FROM eventsink.analysis_requests_archive WHERE id = ANY(%s)", (list(ids),))
    }
    return {key: 1 for key, sources in events.items() if sources[0].event.analysis_id in archived}


def _check_sessions(conn: psycopg.Connection, report: VerifyReport, expected: dict[UUID, Session]) -> None:
    rows = conn.execute(
        "SELECT s.id, s.message_count, s.prompt_tokens, s.completion_tokens, "
        "(SELECT count(*) FROM eventsink.chat_messages m WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id) "
        "FROM eventsink.chat_sessions s WHERE s.id = ANY(%s)",
        (list(expected),),
    )
    for sid, count, prompt, completion, messages in rows:
        want = expected[sid]
        if [count, prompt, completion] != [want.messages, want.prompt_tokens, want.completion_tokens] or (
            messages != count
        ):
            report.tenant(str(want.tenant_id)).duplicated += 1
            report.problems.append(
                f"chat session {sid}: counters {count}/{prompt}/{completion} with {messages} messages, "
                f"expected {[want.messages, want.prompt_tokens, want.completion_tokens]}"
            )


def _check_analyses(conn: psycopg.Connection, report: VerifyReport, expected: dict[UUID, Analysis]) -> None:
    found = {row[0]: row[1:] for row in conn.execute(SELECT_ROWS, (list(expected),))}
    for aid, want in expected.items():
        row = want.state.row()
        if found.get(aid) != row:
            report.tenant(str(want.tenant_id)).duplicated += 1
            report.problems.append(f"analysis {aid}: row {found.get(aid)} differs from the in-order result {row}")
