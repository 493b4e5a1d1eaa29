"""The mixed scenario's check: every table and the ledger against what the topics say the database
must hold (`MixedWorkload.expected`, computed once by `streams.tools.expected`).

- metrics_raw: rows == unique events, per tenant, no key twice (bench/verify.py);
- chat: one session per conversation, of its tenant, whose message_count, prompt_tokens and
  completion_tokens equal the expected ones and the sums over its chat_messages rows;
- analysis: one analysis_requests row per analysis, equal field by field to the fold of its
  events, and one analysis_events row per unique event;
- the ledger, per topic: events, rows_applied, duplicates, dead_letters and superseded as expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from bench.verify import Check, check_metrics

if TYPE_CHECKING:
    from bench.mixed import MixedWorkload

SESSIONS = """
SELECT s.id::text, s.tenant_id::text, s.message_count, s.prompt_tokens, s.completion_tokens,
       count(m.id), coalesce(sum(m.prompt_tokens), 0), coalesce(sum(m.completion_tokens), 0)
FROM eventsink.chat_sessions s
LEFT JOIN eventsink.chat_messages m ON m.tenant_id = s.tenant_id AND m.session_id = s.id
GROUP BY s.tenant_id, s.id
"""
ANALYSES = """
SELECT id::text, tenant_id::text, status, progress, result, error, kind, media_url, version, created_at,
       updated_at, deleted_at
FROM eventsink.analysis_requests
"""
COUNT = "SELECT count(*) FROM eventsink.{}"
LEDGER = """
SELECT topic, sum(events), sum(rows_applied), sum(duplicates), sum(dead_letters), sum(superseded)
FROM eventsink.offsets_ledger GROUP BY topic
"""
LEDGER_COLUMNS = ("events", "rows_applied", "duplicates", "dead_letters", "superseded")


@dataclass(frozen=True)
class Tally:
    """Rows found against rows expected, and how many keys differ (missing, extra or unequal)."""

    found: int
    expected: int
    off: int = 0

    @property
    def ok(self) -> bool:
        return self.found == self.expected and self.off == 0


@dataclass(frozen=True)
class MixedCheck:
    metrics: Check
    sessions: Tally
    messages: Tally
    analyses: Tally
    analysis_events: Tally
    ledger_off: tuple[str, ...]  # "<topic> <column> <found> != <expected>"

    @property
    def ok(self) -> bool:
        tallies = (self.sessions, self.messages, self.analyses, self.analysis_events)
        return self.metrics.ok and all(t.ok for t in tallies) and not self.ledger_off

    @property
    def rows(self) -> int:
        """Rows written from events: metric rows, chat messages, analysis events."""
        return self.metrics.rows + self.messages.found + self.analysis_events.found

    def summary(self) -> str:
        if self.ok:
            return (
                f"yes ({self.metrics.rows:,} metric rows, {self.sessions.found:,} sessions / "
                f"{self.messages.found:,} messages, {self.analyses.found:,} analyses / "
                f"{self.analysis_events.found:,} events)"
            )
        parts = [] if self.metrics.ok else [f"metrics: {self.metrics.summary()}"]
        for name in ("sessions", "messages", "analyses", "analysis_events"):
            t: Tally = getattr(self, name)
            if not t.ok:
                parts.append(f"{name}: {t.found:,} of {t.expected:,}, {t.off:,} off")
        return "**no**: " + "; ".join([*parts, *self.ledger_off])


def _tally(found: Mapping[str, tuple[Any, ...]], expected: Mapping[str, tuple[Any, ...]]) -> Tally:
    off = sum(1 for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
    return Tally(len(found), len(expected), off)


def _count(conn: psycopg.Connection, table: str) -> int:
    (n,) = conn.execute(COUNT.format(table)).fetchone()  # type: ignore[misc]
    return int(n)


def _ledger_off(conn: psycopg.Connection, expected: Mapping[str, tuple[int, ...]]) -> Iterable[str]:
    found = {row[0]: tuple(int(v) for v in row[1:]) for row in conn.execute(LEDGER).fetchall()}
    for topic, want in expected.items():
        got = found.get(topic, (0,) * len(want))
        for column, g, w in zip(LEDGER_COLUMNS, got, want, strict=True):
            if g != w:
                yield f"ledger {topic} {column} {g:,} != {w:,}"


def _sessions(conn: psycopg.Connection) -> dict[str, tuple[Any, ...]]:
    """(tenant, message_count, prompt_tokens, completion_tokens) of each session, then the same
    with the count and sums over its chat_messages rows: both halves must equal the expected ones."""
    out = {}
    for sid, tenant, *numbers in conn.execute(SESSIONS).fetchall():
        counters, sums = [int(n) for n in numbers[:3]], [int(n) for n in numbers[3:]]
        out[sid] = (tenant, *counters, tenant, *sums)
    return out


def verify_mixed(dsn: str, w: MixedWorkload) -> MixedCheck:
    metric, chat, analysis = (w.expected[k] for k in ("metric", "chat", "analysis"))
    want_sessions = {
        str(c): (str(v.tenant_id), v.messages, v.prompt_tokens, v.completion_tokens) * 2
        for c, v in chat.sessions.items()
    }
    want_analyses = {
        # State's fields are ANALYSES's columns after tenant_id, in the same order.
        str(a): (str(v.tenant_id), *astuple(v.state))
        for a, v in analysis.analyses.items()
    }
    want_ledger = {t.topic: astuple(t.ledger) for t in (metric, chat, analysis)}
    with psycopg.connect(dsn) as conn:
        metrics = check_metrics(conn, metric.rows_per_tenant)
        sessions = _sessions(conn)
        analyses = {r[0]: tuple(r[1:]) for r in conn.execute(ANALYSES).fetchall()}
        messages = Tally(_count(conn, "chat_messages"), chat.ledger.rows_applied)
        events = Tally(_count(conn, "analysis_events"), analysis.ledger.rows_applied)
        ledger_off = tuple(_ledger_off(conn, want_ledger))
    return MixedCheck(
        metrics,
        _tally(sessions, want_sessions),
        messages,
        _tally(analyses, want_analyses),
        events,
        ledger_off,
    )
