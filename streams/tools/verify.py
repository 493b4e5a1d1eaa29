"""`eventsink verify`: a topic, read from the start, reconciled against the database.

For each tenant: records seen, distinct valid events, events applied, records dead-lettered,
metric events pruned by retention (absent, and older than the horizon `eventsink retention`
recorded), events missing (valid, at or below the group's ledger, neither in the database nor in
the DLQ nor pruned)
and rows duplicated or wrong (a key stored twice; a chat session whose counters disagree with
its messages or the topic; an analysis row that differs from the in-order fold of its events).
Records past the ledger are `pending`, not missing. It joins no consumer group.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from schemas.codec import Decoded, decode
from schemas.deadletter import DeadLetterInfo
from sinks.retention import METRICS, horizon_of
from sinks.writers.analysis import SELECT_ROWS
from sinks.writers.lifecycle import fold, step_of
from streams.kinds import Kind
from streams.tools import reader

INVALID_TENANT = "(not a tenant)"


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


@dataclass
class VerifyReport:
    topic: str
    group: str
    tenants: dict[str, TenantReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    dlq_repeats: int = 0  # dead letters published twice (a worker died between DLQ and commit)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tenants.values())

    def tenant(self, tenant: str) -> TenantReport:
        if tenant not in self.tenants:
            self.tenants[tenant] = TenantReport(tenant)
        return self.tenants[tenant]

    def totals(self) -> TenantReport:
        total = TenantReport("total")
        for t in self.tenants.values():
            for name in ("seen", "unique", "applied", "in_dlq", "pending", "pruned", "missing", "duplicated"):
                setattr(total, name, getattr(total, name) + getattr(t, name))
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "ok": self.ok,
            "dlq_repeats": self.dlq_repeats,
            "tenants": [asdict(t) for t in sorted(self.tenants.values(), key=lambda t: t.tenant)],
            "total": asdict(self.totals()),
            "problems": self.problems[:100],
        }


@dataclass
class _Source:
    partition: int
    offset: int
    event: Any  # a decoded event, or None when the record is invalid


async def _read(
    bootstrap: list[str], kind: Kind, since: datetime | None, security: Mapping[str, Any] | None
) -> tuple[list[Any], list[Any]]:
    start = reader.Start(since=since, last=None) if since else reader.Start(from_beginning=True)
    source = await reader.read_all(bootstrap, kind.topic, start=start, security=security)
    try:
        dead = await reader.read_all(bootstrap, kind.dlq_topic, security=security)
    except LookupError:
        dead = []
    return source, dead


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
) -> VerifyReport:
    records, dead = asyncio.run(_read(bootstrap, kind, since, security))
    report = VerifyReport(kind.topic, group)
    dlq_sources = Counter(
        (info.source_partition, info.source_offset)
        for info in (DeadLetterInfo.from_headers(list(r.headers or ())) for r in dead)
        if info.source_topic == kind.topic
    )
    report.dlq_repeats = sum(n - 1 for n in dlq_sources.values())
    with psycopg.connect(dsn) as conn:
        # Read after the topic: whatever the ledger covers now was delivered before we looked.
        ledger = _ledger(conn, group, kind.topic)
        events = _classify(report, kind, records, dlq_sources, ledger, tenant)
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
            elif all((s.partition, s.offset) in dlq_sources for s in sources):
                row.in_dlq += 1
            elif any(s.offset > ledger.get(s.partition, -1) for s in sources):
                row.pending += 1
            elif horizon is not None and _first(sources).occurred_at < horizon:
                row.pruned += 1
            else:
                row.missing += 1
                report.problems.append(f"{key} ({kind.topic}[{sources[0].partition}]@{sources[0].offset}) is missing")
        if since is None:  # aggregates need every event, not those since a time
            accepted = {key: sources for key, sources in events.items() if stored.get(key)}
            if kind.name == "chat":
                _check_sessions(conn, report, accepted)
            elif kind.name == "analysis":
                _check_analyses(conn, report, accepted)
    return report


def _classify(
    report: VerifyReport,
    kind: Kind,
    records: list[Any],
    dlq_sources: Counter,
    ledger: dict[int, int],
    tenant: str | None,
) -> dict[tuple[UUID, str], list[_Source]]:
    """Valid records grouped by key; invalid ones counted (dead-lettered, pending or missing)."""
    events: dict[tuple[UUID, str], list[_Source]] = defaultdict(list)
    for r in records:
        result = decode(r.value, kind.model, r.key, kind.context)
        if isinstance(result, Decoded):
            event = result.event
            if tenant and str(event.tenant_id) != tenant:  # type: ignore[attr-defined]
                continue
            report.tenant(str(event.tenant_id)).seen += 1  # type: ignore[attr-defined]
            events[(event.tenant_id, event.dedupe_id)].append(_Source(r.partition, r.offset, event))  # type: ignore[attr-defined]
            continue
        who = _key_tenant(r.key)
        if tenant and who != tenant:
            continue
        row = report.tenant(who)
        row.seen += 1
        if (r.partition, r.offset) in dlq_sources:
            row.in_dlq += 1
        elif r.offset > ledger.get(r.partition, -1):
            row.pending += 1
        else:
            row.missing += 1
            report.problems.append(f"invalid record {kind.topic}[{r.partition}]@{r.offset} is not in the DLQ")
    return events


def _archived(conn: psycopg.Connection, events: dict[tuple[UUID, str], list[_Source]]) -> dict[tuple[UUID, str], int]:
    """Events of analyses moved to the archive by retention: applied, then retired."""
    ids = {s.event.analysis_id for sources in events.values() for s in sources}
    archived = {
        r[0]
        for r in conn.execute("SELECT id FROM eventsink.analysis_requests_archive WHERE id = ANY(%s)", (list(ids),))
    }
    return {key: 1 for key, sources in events.items() if sources[0].event.analysis_id in archived}


def _key_tenant(key: bytes | None) -> str:
    try:
        return str(UUID((key or b"").decode()))
    except (UnicodeDecodeError, ValueError):
        return INVALID_TENANT


def _first(sources: list[_Source]) -> Any:
    return min(sources, key=lambda s: (s.partition, s.offset)).event


def _check_sessions(conn: psycopg.Connection, report: VerifyReport, accepted: dict) -> None:
    expected: dict[UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
    owner: dict[UUID, str] = {}
    for sources in accepted.values():
        e = _first(sources)
        totals = expected[e.conversation_id]
        totals[0] += 1
        totals[1] += e.prompt_tokens or 0
        totals[2] += e.completion_tokens or 0
        owner[e.conversation_id] = str(e.tenant_id)
    rows = conn.execute(
        "SELECT s.id, s.message_count, s.prompt_tokens, s.completion_tokens, "
        "(SELECT count(*) FROM eventsink.chat_messages m WHERE m.session_id = s.id) "
        "FROM eventsink.chat_sessions s WHERE s.id = ANY(%s)",
        (list(expected),),
    )
    for sid, count, prompt, completion, messages in rows:
        if [count, prompt, completion] != expected[sid] or messages != count:
            report.tenant(owner[sid]).duplicated += 1
            report.problems.append(
                f"chat session {sid}: counters {count}/{prompt}/{completion} with {messages} messages, "
                f"expected {expected[sid]}"
            )


def _check_analyses(conn: psycopg.Connection, report: VerifyReport, accepted: dict) -> None:
    steps: dict[UUID, list[Any]] = defaultdict(list)
    owner: dict[UUID, str] = {}
    for sources in accepted.values():
        e = _first(sources)
        steps[e.analysis_id].append(step_of(e))
        owner[e.analysis_id] = str(e.tenant_id)
    found = {row[0]: row[1:] for row in conn.execute(SELECT_ROWS, (list(steps),))}
    for aid, history in steps.items():
        want = fold(history).row()
        if found.get(aid) != want:
            report.tenant(owner[aid]).duplicated += 1
            report.problems.append(f"analysis {aid}: row {found.get(aid)} differs from the in-order result {want}")


def kinds_for(topics: Iterable[str], all_kinds: list[Kind]) -> list[Kind]:
    wanted = set(topics)
    return [k for k in all_kinds if k.topic in wanted or k.name in wanted]
