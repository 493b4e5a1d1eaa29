"""The memory scenario's check: the database against the prefix of the chat topic the ledger says
was applied (a run is usually stopped before the backlog is over, so not the full oracle).

From the keys of every record of the topic (read once after loading), for each partition whose
ledger row says `last_offset` L:
- the ledger: events == the records at offsets <= L, rows_applied == their distinct
  (tenant_id, dedupe_id), duplicates == the rest, dead_letters == 0 (every record is valid);
- chat_messages: as many rows of the partition as rows_applied, none past L;
- chat_sessions: one per conversation of the prefix, whose message_count is its distinct keys
  and its chat_messages rows. Token totals and contents are not compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import psycopg


class KeyOf(NamedTuple):
    """What the check needs of one record of the topic."""

    offset: int
    tenant_id: str
    dedupe_id: str
    conversation_id: str


LEDGER = """
    SELECT partition, last_offset, events, rows_applied, duplicates, dead_letters
    FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s
"""
MESSAGES = "SELECT kafka_partition, count(*), max(kafka_offset) FROM eventsink.chat_messages GROUP BY 1"
SESSIONS = """
    SELECT s.id::text, s.message_count, count(m.id)
    FROM eventsink.chat_sessions s
    LEFT JOIN eventsink.chat_messages m ON m.tenant_id = s.tenant_id AND m.session_id = s.id
    GROUP BY s.tenant_id, s.id
"""


@dataclass(frozen=True)
class PrefixCheck:
    events: int  # the ledger's, every partition
    rows: int  # chat_messages rows
    sessions: int
    off: tuple[str, ...]  # what differs, one line each

    @property
    def ok(self) -> bool:
        return not self.off

    def summary(self) -> str:
        if self.ok:
            return f"yes (prefix of {self.events:,} records: {self.rows:,} messages, {self.sessions:,} sessions)"
        return f"**no**: {'; '.join(self.off[:5])}{' …' if len(self.off) > 5 else ''}"


def check_prefix(conn: psycopg.Connection, group: str, topic: str, keys: Mapping[int, Sequence[KeyOf]]) -> PrefixCheck:
    off: list[str] = []
    messages = {p: (n, top) for p, n, top in conn.execute(MESSAGES).fetchall()}
    expected_sessions: dict[str, set[tuple[str, str]]] = defaultdict(set)
    events = 0
    ledger = conn.execute(LEDGER, (group, topic)).fetchall()
    for partition, last, counted, applied, duplicates, dead in ledger:
        prefix = [k for k in keys.get(partition, ()) if k.offset <= last]
        unique = {(k.tenant_id, k.dedupe_id) for k in prefix}
        for k in prefix:
            expected_sessions[k.conversation_id].add((k.tenant_id, k.dedupe_id))
        found = (counted, applied, duplicates, dead)
        want = (len(prefix), len(unique), len(prefix) - len(unique), 0)
        if found != want:
            off.append(f"partition {partition}: ledger (events, rows, duplicates, dead letters) {found} != {want}")
        rows, top = messages.pop(partition, (0, None))
        if rows != applied or (top is not None and top > last):
            off.append(f"partition {partition}: {rows} messages up to offset {top}, ledger {applied} up to {last}")
        events += counted
    off += [f"partition {p}: {n} messages, no ledger row" for p, (n, _) in messages.items()]
    sessions = {sid: (count, rows) for sid, count, rows in conn.execute(SESSIONS).fetchall()}
    for sid in sessions.keys() | expected_sessions.keys():
        want_n = len(expected_sessions.get(sid, ()))
        count, rows = sessions.get(sid, (0, 0))
        if not count == rows == want_n:
            off.append(f"session {sid}: message_count {count}, {rows} messages, {want_n} expected")
    total_rows = sum(r for _, r in sessions.values())
    return PrefixCheck(events, total_rows, len(sessions), tuple(off))


def verify_prefix(dsn: str, group: str, topic: str, keys: Mapping[int, Sequence[KeyOf]]) -> PrefixCheck:
    with psycopg.connect(dsn) as conn:
        return check_prefix(conn, group, topic, keys)
