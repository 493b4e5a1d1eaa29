"""Random records for the fuzz soak: valid, boundary, invalid and junk, of the three kinds.

`fuzz(rng, n, tenants)` returns `n` records as (kind, Raw, body): `body` is the payload for a
record that is valid by construction (its row must hold `tests.stored.expected(kind, body)`),
None for everything else (mutated payloads, junk bytes, foreign keys), which `eventsink verify`
and the truthfulness of its dead letter judge. Valid records are sometimes sent again exactly
(duplicates); mutated ones keep dedupe ids of their own, so that a mutation that happens to be
valid never competes with another record for a key.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from tests.producers import Raw
from tests.stored import payload
from tests.strategies import EDGE_FLOATS, EDGE_INTS, EXTREME_STAMPS, FIELDS, nested

HOSTILE: list[Any] = [
    None, True, 0, -1, 2**31, 4294967301, 2**63, -(2**63) - 1, 2**64, 10**30, 1e308, -0.0, 5e-324, "", "\x00",
    "\ud83d", "\x1b[2J", "é" * 70_000, "x" * 300, [], {}, [1, [2, [3]]], {"a": {"b": None}}, nested(80), nested(300),
    "2024-02-30T12:00:00Z", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59Z", "2024-05-01T12:00:00",
    "2024-05-01T12:00:00+24:00", "yesterday", 1714564800, "not-a-uuid", str(uuid.UUID(int=0)), "admin", "deleted",
    {"k": 2e19}, {"k": 2**64 - 1}, {"\x00": 1},
]  # fmt: skip
JUNK: list[bytes | None] = [
    None, b"", b"{", b"[]", b"null", b"\xff\xfe", b"\xef\xbb\xbf{}", b"{" * 3000, b'{"a": NaN}', b'{"a": 1e999}',
    b'"\\ud83d"', b"\x00" * 10,
]  # fmt: skip
ROLES = ("user", "assistant", "system", "tool")
STATUSES = ("pending", "processing", "completed", "failed", "deleted")
STORABLE_STAMPS = [s.text for s in EXTREME_STAMPS if s.utc is not None]


def _valid(rng: random.Random, kind: str, tenant: str, n: int) -> dict[str, Any]:
    """A valid payload with random values, some at their boundaries."""
    edge = rng.random() < 0.2
    stamp = rng.choice(STORABLE_STAMPS) if edge else _stamp(rng)
    change: dict[str, Any] = {"occurred_at": stamp}
    if kind == "metric":
        # Integers as far as a double holds them exactly; larger ones are refused (never rounded).
        value = rng.choice([*EDGE_FLOATS, *(i for i in EDGE_INTS if abs(i) <= 2**53)]) if edge else rng.gauss(0, 1e6)
        tags = {
            f"t{i}": "v" * rng.randrange(0, 1025 if edge else 20) for i in range(rng.randrange(0, 65 if edge else 4))
        }
        change |= {"value": value, "tags": tags, "name": rng.choice(["cpu", "é" * 256, "\x1b[1mtitle"])}
        if rng.random() < 0.3:
            change["unit"] = rng.choice(["", "ms", "u" * 64])
    elif kind == "chat":
        conversation = str(uuid.uuid5(uuid.UUID(tenant), f"c{rng.randrange(8)}"))
        size = rng.choice([0, 10, 1000, 32768]) if edge else rng.randrange(1, 200)
        change |= {"conversation_id": conversation, "role": rng.choice(ROLES), "content": "é" * size}
        if rng.random() < 0.5:
            change |= {"prompt_tokens": rng.choice([0, 2**31 - 1, rng.randrange(1000)])}
            change |= {"completion_tokens": rng.randrange(1000), "model": "m" * rng.randrange(1, 257)}
    else:
        analysis = str(uuid.uuid5(uuid.UUID(tenant), f"a{rng.randrange(12)}"))
        status = rng.choice(STATUSES)
        change |= {"analysis_id": analysis, "status": status, "progress": rng.randrange(101)}
        if status == "completed" and rng.random() < 0.7:
            change["result"] = {"score": rng.random(), "deep": nested(rng.randrange(1, 63)), "n": 2**64 - 1}
        if status == "failed":
            change["error"] = "boom " * rng.randrange(1, 100)
    return payload(kind, tenant, f"v{n}", **change)


def _stamp(rng: random.Random) -> str:
    minutes = rng.randrange(-23 * 60 - 59, 23 * 60 + 60)
    zone = "Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    year, digits = rng.randrange(1970, 2100), "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 10)))
    frac = f".{digits}" if digits else ""
    day = f"{year:04d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    return f"{day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}{frac}{zone}"


def _mutated(rng: random.Random, kind: str, tenant: str, n: int) -> bytes:
    body = _valid(rng, kind, tenant, n)
    body["dedupe_id"] = f"m{n}"
    for name in rng.sample([*FIELDS[kind], "extra"], rng.randrange(1, 3)):
        if rng.random() < 0.2:
            body.pop(name, None)
        else:
            body[name] = rng.choice(HOSTILE)
    for owned in ("conversation_id", "analysis_id"):
        # A row id shared by tenants on different partitions makes who claims it first a race
        # between partitions (the oracle cannot know the order): keep hostile ids per tenant.
        if body.get(owned) == str(uuid.UUID(int=0)):
            body[owned] = str(uuid.uuid5(uuid.UUID(tenant), "nil"))
    if rng.random() < 0.05:  # a producer ahead of the workers
        body["schema_version"] = rng.choice([2, 7, 99])
    if isinstance(body.get("dedupe_id"), str) and 0 < len(body["dedupe_id"]) <= 100:
        # Still a key of its own: two records of one key with different content in two
        # partitions leave which one is stored to the race between them (verify assumes the
        # lower partition's), which is no fault of the record.
        body["dedupe_id"] = f"m{n}-{body['dedupe_id']}"
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8", "surrogatepass")


def fuzz(rng: random.Random, n: int, tenants: list[str]) -> list[tuple[str, Raw, dict[str, Any] | None]]:
    out: list[tuple[str, Raw, dict[str, Any] | None]] = []
    sent: list[tuple[str, Raw, dict[str, Any] | None]] = []
    for i in range(n):
        kind = rng.choices(("metric", "chat", "analysis"), (6, 2.5, 1.5))[0]
        tenant = rng.choice(tenants)
        key = tenant.encode()
        roll = rng.random()
        if roll < 0.55:
            body = _valid(rng, kind, tenant, i)
            # No key lets the producer pick any partition: only for metrics, whose rows do not
            # depend on order. An analysis split over partitions has no delivery order, so how
            # many of its events arrive superseded would be a race (its row would not).
            no_key = kind == "metric" and rng.random() < 0.25
            item = (kind, Raw(json.dumps(body).encode(), None if no_key else key), body)
            sent.append(item)
        elif roll < 0.62 and sent:
            item = rng.choice(sent)  # sent again, exactly
        elif roll < 0.90:
            item = (kind, Raw(_mutated(rng, kind, tenant, i), key), None)
        elif roll < 0.95:
            other = rng.choice([str(uuid.uuid4()).encode(), b"", b"\xff", tenant.upper().encode() + b"x"])
            item = (kind, Raw(json.dumps(_valid(rng, kind, tenant, i) | {"dedupe_id": f"k{i}"}).encode(), other), None)
        else:
            item = (kind, Raw(rng.choice(JUNK), key), None)
        out.append(item)
    return out
