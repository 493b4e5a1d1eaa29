"""The poison suite's machinery: cases of records produced between valid neighbours into a running
worker, and the exact account of what each must become.

A `Case` is a few records of one kind with what each must end as: a row holding exactly the
values sent (`tests.stored.expected`), or a dead letter with its reason, a true detail, and the
original key, value and headers (or, when the DLQ topic cannot carry them, `eventsink.stored:
postgres`, a truncated value and the whole original in `eventsink.dead_letter_payloads`). `run`
puts each case between two valid records on one partition, produces everything with one
client, waits until every partition's ledger reaches its end (or reports which did not), and
returns every way the outcome differs from the account.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.deadletter import (
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TOPIC,
    H_STORED,
    HEADER_PREFIX,
    STORED_IN_POSTGRES,
    Reason,
)
from tests.helpers import Scenario, TopicRecord, WorkerProcess, ledger
from tests.producers import Client, Raw, produce
from tests.stored import dead_letters, expected, original_headers, rows, stored_payload

KINDS = ("metric", "chat", "analysis")
PARTITIONS = 4


@dataclass(frozen=True)
class Dead:
    """A dead letter as it must be: reason, and the detail exactly or by prefix and fragments."""

    reason: Reason
    detail: str | None = None
    starts: str = ""
    contains: tuple[str, ...] = ()
    stored: bool = False  # the DLQ topic cannot carry the original: it is kept in PostgreSQL


@dataclass
class Item:
    """One record and what it must become: a row (`body` is then its payload) or a dead letter."""

    raw: Raw
    body: dict[str, Any] | None = None
    dead: Dead | None = None
    check: Callable[[dict[str, Any]], str | None] | None = None  # more about the stored row
    placed: tuple[int, int] | None = None


@dataclass
class Case:
    name: str
    kind: str
    items: list[Item]
    compression: str = "none"
    clients: tuple[Client, ...] = ("aiokafka", "confluent")


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    behind: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    records: int = 0


def topics_of(s: Scenario) -> dict[str, str]:
    return {"metric": s.topic, "chat": s.chat_topic, "analysis": s.analysis_topic}


def healthy(w: WorkerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{w.web}/healthz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run(
    s: Scenario,
    w: WorkerProcess,
    cases: Sequence[Case],
    client: Client,
    neighbour: Callable[[str, str], Item],
    timeout: float = 90.0,
) -> Outcome:
    """Produce every case (between two valid neighbours, on one partition per case) with
    `client`; wait for the ledger; compare everything with its account."""
    topics = topics_of(s)
    mine = [c for c in cases if client in c.clients]
    planned: list[tuple[Case, Item]] = []
    slot = dict.fromkeys(KINDS, 0)
    for case in mine:
        partition = slot[case.kind] % PARTITIONS
        slot[case.kind] += 1
        before, after = neighbour(case.kind, f"{case.name}-before"), neighbour(case.kind, f"{case.name}-after")
        for item in [before, *case.items, after]:
            item.raw = replace(item.raw, partition=partition)
            planned.append((case, item))
    # One produce call per (kind, compression), in case order: a partition's records stay in order.
    groups: dict[tuple[str, str], list[Item]] = {}
    for case, item in planned:
        groups.setdefault((case.kind, case.compression), []).append(item)
    ends: dict[str, dict[int, int]] = {topics[k]: {} for k in KINDS}
    for (kind, compression), items in groups.items():
        placed = produce(s.bootstrap, topics[kind], [i.raw for i in items], client=client, compression=compression)
        for item, (p, o) in zip(items, placed, strict=True):
            item.placed = (p, o)
            ends[topics[kind]][p] = max(o, ends[topics[kind]].get(p, -1))
    outcome = Outcome(records=len(planned))
    outcome.behind = settle(s, w, ends, timeout, outcome.problems)
    tenants = sorted({str(uuid.UUID(i.body["tenant_id"])) for _, i in planned if i.body is not None})
    stored = {kind: rows(s.dsn, kind, tenants) for kind in KINDS}
    dlq = {kind: dead_letters(s.bootstrap, f"{topics[kind]}.dlq") for kind in KINDS}
    for case, item in planned:
        where = f"{case.name} ({case.kind} [{item.placed[0]}]@{item.placed[1]})"  # type: ignore[index]
        if item.placed is not None and item.placed[1] > _ledger_of(outcome.behind, topics[case.kind], item.placed):
            outcome.problems.append(f"{where}: not applied (partition stuck)")
            continue
        found = dlq[case.kind].get(item.placed, [])  # type: ignore[arg-type]
        if item.dead is None:
            outcome.problems += [f"{where}: {p}" for p in _check_row(case.kind, item, stored[case.kind], found)]
        else:
            problems = _check_dead(s, topics[case.kind], item, found)
            outcome.problems += [f"{where}: {p}" for p in problems]
    return outcome


def _ledger_of(behind: dict[str, dict[int, tuple[int, int]]], topic: str, placed: tuple[int, int]) -> int:
    if placed[0] in behind.get(topic, {}):
        return behind[topic][placed[0]][0]
    return placed[1]


def settle(
    s: Scenario, w: WorkerProcess, ends: dict[str, dict[int, int]], timeout: float, problems: list[str]
) -> dict[str, dict[int, tuple[int, int]]]:
    """Until every partition's ledger reaches its last produced offset, checking that the worker
    lives and answers /healthz; return the partitions still behind: {topic: {p: (ledger, end)}}."""
    deadline = time.monotonic() + timeout
    while True:
        behind: dict[str, dict[int, tuple[int, int]]] = {}
        for topic, last in ends.items():
            led = ledger(s.dsn, s.group, topic)
            late = {p: (led.get(p, {}).get("last_offset", -1), o) for p, o in last.items()}
            late = {p: lo for p, lo in late.items() if lo[0] < lo[1]}
            if late:
                behind[topic] = late
        if not w.alive():
            problems.append(f"the worker died (exit status {w.proc.returncode})")  # type: ignore[union-attr]
            return behind
        if not healthy(w):
            problems.append("the worker did not answer /healthz")
        if not behind or time.monotonic() > deadline:
            return behind
        time.sleep(0.25)


def _check_row(kind: str, item: Item, stored: dict[tuple[str, str], dict[str, Any]], found: list[Any]) -> list[str]:
    assert item.body is not None
    key = (str(uuid.UUID(item.body["tenant_id"])), item.body["dedupe_id"])
    problems = []
    if found:
        problems.append(f"a valid record was dead-lettered: {found[0].info.reason} {found[0].info.detail!r}")
    row = stored.get(key)
    want = expected(kind, item.body)
    if row is None:
        problems.append("no row stored")
    elif row != want:
        diff = {c: (row.get(c), want.get(c)) for c in want if row.get(c) != want.get(c)}
        problems.append(f"stored row differs (stored, sent): {_short(diff)}")
    elif item.check is not None and (more := item.check(row)):
        problems.append(more)
    return problems


def _check_dead(s: Scenario, topic: str, item: Item, found: list[TopicRecord]) -> list[str]:
    dead, raw = item.dead, item.raw
    assert dead is not None and item.placed is not None
    if len(found) != 1:
        return [f"{len(found)} dead letters, expected 1"]
    d = found[0]
    info, problems = d.info, []
    if info.reason != dead.reason.value:
        problems.append(f"reason {info.reason!r}, expected {dead.reason.value!r} (detail {info.detail!r})")
    if dead.detail is not None and info.detail != dead.detail:
        problems.append(f"detail {info.detail!r}, expected {dead.detail!r}")
    if not info.detail.startswith(dead.starts) or not all(c in info.detail for c in dead.contains):
        problems.append(f"detail {_short(info.detail)!r} does not start with {dead.starts!r} and hold {dead.contains}")
    if not info.detail.isprintable():
        problems.append(f"detail with control characters {info.detail!r}")
    ours = [k for k, _ in d.headers if k.startswith(HEADER_PREFIX)]
    if len(ours) != len(set(ours)):
        problems.append(f"eventsink headers repeated: {ours}")
    source = {k: v for k, v in d.headers if k in (H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET)}
    if source != {
        H_SOURCE_TOPIC: topic.encode(),
        H_SOURCE_PARTITION: str(item.placed[0]).encode(),
        H_SOURCE_OFFSET: str(item.placed[1]).encode(),
    }:
        problems.append(f"source headers {source}")
    kept = [(k, v) for k, v in raw.headers if not k.startswith(HEADER_PREFIX)]
    if dead.stored:
        problems += _check_stored(s, topic, item, d, kept)
    else:
        if (d.key, d.value) != (raw.key, raw.value):
            problems.append(f"key/value not the original: {_short(d.key)!r} {_short(d.value)!r}")
        if original_headers(d) != kept:
            problems.append(f"headers not the original: {_short(original_headers(d))}")
    return problems


def _check_stored(s: Scenario, topic: str, item: Item, d: TopicRecord, kept: list[Any]) -> list[str]:
    """The DLQ record stands for an original kept whole in PostgreSQL."""
    raw, problems = item.raw, []
    headers = dict(d.headers)
    value = raw.value or b""
    if headers.get(H_STORED) != STORED_IN_POSTGRES:
        problems.append(f"no {H_STORED}: postgres header")
    if headers.get(H_ORIGINAL_SIZE) != str(len(value)).encode():
        problems.append(f"{H_ORIGINAL_SIZE} {headers.get(H_ORIGINAL_SIZE)!r}, expected {len(value)}")
    if headers.get(H_ORIGINAL_SHA256) != hashlib.sha256(value).hexdigest().encode():
        problems.append(f"{H_ORIGINAL_SHA256} is not the original's")
    # The marker carries the value's first bytes (all of it when the value is small and something
    # else, a header, made the record too large).
    preview = d.value or b""
    if raw.value is not None and not (value.startswith(preview) and len(preview) <= min(len(value), 16 * 1024)):
        problems.append("the DLQ value is not the start of the original")
    assert item.placed is not None
    kept_whole = stored_payload(s.dsn, s.group, topic, *item.placed)
    if kept_whole != (raw.key, raw.value, tuple(raw.headers)):
        problems.append(f"eventsink.dead_letter_payloads holds {_short(kept_whole)}, not the original")
    return problems


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def log_problems(w: WorkerProcess) -> list[str]:
    """What a worker's log must never show: a terminal control character, a crashed or failing
    batch task (a failing batch is retried forever: its partition stalls)."""
    text = w.log_path.read_bytes()
    problems = []
    if b"\x1b" in text:
        line = next(line for line in text.splitlines() if b"\x1b" in line)
        problems.append(f"ESC in the worker's log: {line[:300]!r}")
    for event in ("batch task crashed", "batch failed unexpectedly; retrying", "batch not committed; retrying"):
        hits = [e for e in w.logs() if e.get("event") == event]
        if hits:
            problems.append(f"{len(hits)}x {event!r}: {str(hits[0].get('error') or hits[0].get('exception'))[:500]}")
    return problems
