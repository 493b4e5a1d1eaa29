"""No record can stall, crash or corrupt the pipeline (issue 9), against a running worker.

Every kind of fault is produced between valid records, by aiokafka and by confluent-kafka
(librdkafka, which also sends what aiokafka refuses to). Each record must end as a row holding
exactly what was sent or as a dead letter with a true reason and its original bytes; the valid
neighbours must be stored; every partition's ledger must reach its end; the worker must stay
alive and answer /healthz, log no terminal control character and no failing batch; and
`eventsink verify` must be exact at the end. The fuzz soak sends tens of thousands of random
records (valid, invalid, boundary) the same way.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.columns import NUL_MESSAGE
from schemas.deadletter import H_REASON, H_SOURCE_OFFSET, Reason
from tests.faults.fuzz import fuzz
from tests.faults.poison import KINDS, Case, Dead, Item, healthy, log_problems, run, settle, topics_of
from tests.faults.traffic import oracle
from tests.helpers import Scenario, WorkerProcess, eventsink, wait_until
from tests.producers import Client, Raw, create_topics, produce
from tests.stored import dead_letters, expected, payload, rows
from tests.strategies import nested
from tests.truthful import untrue

pytestmark = pytest.mark.e2e

CLIENTS: tuple[Client, ...] = ("aiokafka", "confluent")
RANGE = "once in UTC (what PostgreSQL gives back in any session time zone)"
LIMITS = "0001-01-02T00:00:00Z to 9999-12-30T23:59:59.999999Z"
BIG_HEADER = b"h" * (5 * 1024 * 1024)


def start(s: Scenario, tag: str, **env: str) -> WorkerProcess:
    topics = list(topics_of(s).values())
    create_topics(s.bootstrap, [n for t in topics for n in (t, f"{t}.dlq")])
    w = WorkerProcess(s.env(EVENTSINK_BATCH_SIZE="200", **env), s.data_dir / f"{tag}.log").start()
    wait_until(lambda: healthy(w) or not w.alive(), 60, what="the worker's /healthz")
    return w


class Records:
    """Builders of one test's records: one tenant, dedupe ids named after their case."""

    def __init__(self) -> None:
        self.tenant = str(uuid.uuid4())
        self.key = self.tenant.encode()

    def ok(
        self, kind: str, dedupe_id: str, *, key: Any = "tenant", headers: tuple = (), check: Any = None, **change: Any
    ) -> Item:
        body = payload(kind, change.pop("tenant_id", self.tenant), dedupe_id, **change)
        return Item(Raw(json.dumps(body).encode(), self._key(key), headers), body=body, check=check)

    def again(self, first: Item, **change: Any) -> Item:
        """`first`'s key again (sent after it, on its partition) with other content: the row
        must stay `first`'s."""
        assert first.body is not None
        return Item(Raw(json.dumps({**first.body, **change}).encode(), self.key), body=first.body)

    def bad(self, value: bytes | None, dead: Dead, *, key: Any = "tenant", headers: tuple = ()) -> Item:
        return Item(Raw(value, self._key(key), headers), dead=dead)

    def bad_body(self, kind: str, dead: Dead, **change: Any) -> Item:
        return self.bad(json.dumps(payload(kind, self.tenant, "bad", **change)).encode(), dead)

    def escaped(self, kind: str, dedupe_id: str, dead: Dead | None = None, **change: Any) -> Item:
        """A record whose every key is spelt with \\u escapes only (JSON allows any character of
        a key to be escaped): it must end as the same record with plain keys would."""
        body = payload(kind, change.pop("tenant_id", self.tenant), dedupe_id, **change)
        raw = Raw(escape_keys(body).encode(), self.key)
        return Item(raw, dead=dead) if dead is not None else Item(raw, body=body)

    def _key(self, key: Any) -> bytes | None:
        return self.key if key == "tenant" else key

    def neighbour(self, kind: str, name: str) -> Item:
        return self.ok(kind, name)


def escape_keys(value: Any) -> str:
    """`value` as JSON, each character of every key (at every level) written \\uXXXX."""
    if isinstance(value, dict):
        items = ('"' + "".join(f"\\u{u:04x}" for u in _utf16(k)) + '":' + escape_keys(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(escape_keys(v) for v in value) + "]"
    return json.dumps(value)


def _utf16(text: str) -> list[int]:
    units = text.encode("utf-16-be")
    return [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]


def invalid(detail: str) -> Dead:
    return Dead(Reason.INVALID_EVENT, detail)


def negative_zero(row: dict[str, Any]) -> str | None:
    return None if math.copysign(1, row["value"]) < 0 else f"-0.0 stored as {row['value']!r}"


def metric_cases(r: Records) -> list[Case]:
    m = "metric"
    other = str(uuid.uuid4())
    spoof = ((H_REASON, b"db_rejected"), (H_SOURCE_OFFSET, b"0"), ("trace", b"t-1"))
    return [
        # Fault 1 of the issue: an overflow once normalised to UTC; and the ends of the range.
        Case(
            "year 0 once in UTC",
            m,
            [
                r.bad_body(
                    m,
                    invalid(f"occurred_at: 0001-01-01T00:30:00+01:00 is outside {LIMITS} {RANGE}"),
                    occurred_at="0001-01-01T00:30:00+01:00",
                )
            ],
        ),
        Case(
            "year 0 in a session west of UTC",
            m,
            [
                r.bad_body(
                    m,
                    invalid(f"occurred_at: 0001-01-01T00:00:00+00:00 is outside {LIMITS} {RANGE}"),
                    occurred_at="0001-01-01T00:00:00Z",
                )
            ],
        ),
        Case(
            "year 10000 once in UTC",
            m,
            [
                r.bad_body(
                    m,
                    invalid(f"occurred_at: 9999-12-31T23:30:00-01:00 is outside {LIMITS} {RANGE}"),
                    occurred_at="9999-12-31T23:30:00-01:00",
                )
            ],
        ),
        Case(
            "earliest and latest instants",
            m,
            [
                r.ok(m, "earliest", occurred_at="0001-01-02T00:00:00Z"),
                r.ok(m, "latest", occurred_at="9999-12-30T23:59:59.999999-00:00"),
            ],
        ),
        Case(
            "offsets of a day and nanoseconds",
            m,
            [
                r.ok(m, "west", occurred_at="2024-02-29T23:59:59.999999-23:59"),
                r.ok(m, "east", occurred_at="2024-03-01t00:00:00.1234569+23:59"),
            ],
        ),
        Case(
            "malformed timestamps",
            m,
            [
                r.bad_body(
                    m,
                    invalid(
                        "occurred_at: must be an RFC 3339 timestamp with a time zone, e.g. 2024-05-01T12:00:00.123456Z"
                    ),
                    occurred_at=1714564800,
                ),
                r.bad_body(
                    m,
                    Dead(Reason.INVALID_EVENT, starts="occurred_at: Input should be a valid datetime"),
                    occurred_at="2024-02-30T12:00:00Z",
                ),
                r.bad_body(
                    m,
                    Dead(Reason.INVALID_EVENT, starts="occurred_at: Input should be a valid datetime"),
                    occurred_at="2024-05-01T12:00:00+24:00",
                ),
                r.bad_body(
                    m,
                    Dead(Reason.INVALID_EVENT, starts="occurred_at: Input should be a valid datetime"),
                    occurred_at="2024-05-01T12:00:60Z",
                ),
            ],
        ),
        # Numbers at the edges of a double and beyond 64 bits.
        Case(
            "integers a double holds exactly are stored, larger ones refused (never rounded)",
            m,
            [
                r.ok(m, "2**53", value=2**53),
                r.ok(m, "1e30 as a float", value=1e30),
                r.bad_body(m, Dead(Reason.INVALID_EVENT, starts=f"value: integer {10**30}"), value=10**30),
                r.bad_body(m, Dead(Reason.INVALID_EVENT, starts="value: integer 9223372036854775809"), value=2**63 + 1),
                r.bad_body(m, Dead(Reason.INVALID_EVENT, starts="value: integer 9007199254740993"), value=2**53 + 1),
            ],
        ),
        Case(
            "floats at the edges",
            m,
            [
                r.ok(m, "max", value=1.7976931348623157e308),
                r.ok(m, "subnormal", value=5e-324),
                r.ok(m, "-max", value=-1.7976931348623157e308),
            ],
        ),
        Case("negative zero keeps its sign", m, [r.ok(m, "-0", value=-0.0, check=negative_zero)]),
        Case(
            "a number beyond a double",
            m,
            [
                r.bad(
                    json.dumps(payload(m, r.tenant, "inf")).replace("12.5", "1e999").encode(),
                    Dead(
                        Reason.INVALID_EVENT,
                        starts="a number is too large for a double (it would be Infinity) at char ",
                    ),
                )
            ],
        ),
        Case(
            "NaN and Infinity",
            m,
            [
                r.bad(
                    json.dumps(payload(m, r.tenant, "nan")).replace("12.5", "NaN").encode(),
                    invalid("value contains NaN: numbers must be finite"),
                ),
                r.bad(
                    json.dumps(payload(m, r.tenant, "inf")).replace("12.5", "-Infinity").encode(),
                    invalid("value contains -Infinity: numbers must be finite"),
                ),
            ],
        ),
        Case(
            "booleans and numeric strings are not numbers",
            m,
            [
                r.bad_body(m, invalid("value: Input should be a valid number"), value=True),
                r.bad_body(m, invalid("value: Input should be a valid number"), value="12.5"),
            ],
        ),
        Case(
            "64 tags and 65",
            m,
            [
                r.ok(m, "64 tags", tags={f"k{i}": "v" * 1024 for i in range(64)}),
                r.bad_body(
                    m,
                    invalid("tags: Dictionary should have at most 64 items after validation, not more"),
                    tags={f"k{i}": "v" for i in range(65)},
                ),
            ],
        ),
        Case(
            "NUL",
            m,
            [
                r.bad_body(m, invalid(f"name: {NUL_MESSAGE}"), name="cpu\x00"),
                r.bad_body(m, invalid(f"tags.host: {NUL_MESSAGE}"), tags={"host": "\x00"}),
            ],
        ),
        Case(
            "terminal control characters",
            m,
            [
                r.ok(m, "\x1b]0;title\x07", name="\x1b[2J\x1b[31mred", tags={"\x1b[1m": "\x9b31m"}),
                r.bad_body(m, invalid("tags.\\x1b[31mred: Input should be a valid string"), tags={"\x1b[31mred": 1}),
            ],
        ),
        # Bytes that are not a JSON object.
        Case("not UTF-8", m, [r.bad(b'{"tenant_id": "\xff\xfe"}', invalid_utf8("invalid start byte at byte 15"))]),
        Case(
            "a byte order mark",
            m,
            [
                r.bad(
                    b"\xef\xbb\xbf" + json.dumps(payload(m, r.tenant, "bom")).encode(),
                    Dead(
                        Reason.INVALID_JSON, "value is not JSON: UTF-8 byte order mark (BOM) is not supported at char 0"
                    ),
                )
            ],
        ),
        Case(
            "an empty value",
            m,
            [
                r.bad(
                    b"",
                    Dead(Reason.INVALID_JSON, "value is not JSON: Input is a zero-length, empty document at char 0"),
                )
            ],
        ),
        Case("a tombstone", m, [r.bad(None, Dead(Reason.INVALID_JSON, "value is empty (a tombstone)"))]),
        Case(
            "not an object",
            m,
            [
                r.bad(b"[1, 2]", Dead(Reason.NOT_AN_OBJECT, "value is JSON list, not an object")),
                r.bad(b"null", Dead(Reason.NOT_AN_OBJECT, "value is JSON NoneType, not an object")),
            ],
        ),
        Case(
            "nested 5000 levels",
            m,
            [
                r.bad(
                    b"[" * 5000 + b"]" * 5000,
                    Dead(Reason.INVALID_JSON, "value is not JSON: depth limit exceeded at char 1025"),
                )
            ],
        ),
        Case(
            "one key, two contents: the earliest stays", m, [(first := r.ok(m, "same key")), r.again(first, value=2.0)]
        ),
        # Keys.
        Case(
            "keys naming another tenant",
            m,
            [
                r.bad(
                    json.dumps(payload(m, r.tenant, "k1")).encode(),
                    Dead(Reason.KEY_MISMATCH, f'record key "{other}" is not the event\'s tenant_id {r.tenant}'),
                    key=other.encode(),
                ),
                r.bad(
                    json.dumps(payload(m, r.tenant, "k2")).encode(),
                    Dead(Reason.KEY_MISMATCH, f'record key "\\xff\\xfe" is not the event\'s tenant_id {r.tenant}'),
                    key=b"\xff\xfe",
                ),
                r.bad(
                    json.dumps(payload(m, r.tenant, "k3")).encode(),
                    Dead(Reason.KEY_MISMATCH, f'record key "" is not the event\'s tenant_id {r.tenant}'),
                    key=b"",
                ),
            ],
        ),
        # Issue 19: what Python's uuid.UUID reads as the tenant, and the contract does not.
        Case(
            "keys and tenant ids in other digits",
            m,
            [
                r.bad(
                    json.dumps(payload(m, r.tenant, "bengali key")).encode(),
                    Dead(
                        Reason.KEY_MISMATCH,
                        starts="record key ",
                        contains=(f"is not the event's tenant_id {r.tenant}",),
                    ),
                    key=other_digits(r.tenant, 0x09E6).encode(),
                ),
                r.bad(
                    json.dumps(payload(m, r.tenant, "fullwidth key")).encode(),
                    Dead(
                        Reason.KEY_MISMATCH,
                        starts="record key ",
                        contains=(f"is not the event's tenant_id {r.tenant}",),
                    ),
                    key=other_digits(r.tenant, 0xFF10).encode(),
                ),
                r.bad(
                    json.dumps(payload(m, r.tenant, "braced 32 digits")).encode(),
                    Dead(
                        Reason.KEY_MISMATCH,
                        starts="record key ",
                        contains=(f"is not the event's tenant_id {r.tenant}",),
                    ),
                    key=("{" + r.tenant.replace("-", "") + "}").encode(),
                ),
                r.bad(
                    json.dumps(payload(m, other_digits(r.tenant, 0x09E6), "bengali tenant_id")).encode(),
                    Dead(Reason.INVALID_EVENT, starts="tenant_id: "),
                ),
            ],
        ),
        Case(
            "every key escaped",
            m,
            [r.escaped(m, "escaped keys", tags={"host": "a", "\U0001f600": "b"}), r.escaped(m, "kept", extra=1)],
        ),
        Case(
            "no key, and the tenant spelled otherwise",
            m,
            [
                r.ok(m, "no key", key=None),
                r.ok(m, "upper", key=r.tenant.upper().encode()),
                r.ok(m, "braces", tenant_id="{" + r.tenant + "}"),
            ],
        ),
        # Headers: None values, duplicate keys, many, huge, and eventsink's own on the way in.
        Case(
            "header values None and duplicate keys",
            m,
            [
                r.ok(m, "headers", headers=(("h", None), ("dup", b"1"), ("dup", b"2"), ("dup", None), ("", b"x"))),
                r.bad(
                    b"{not json",
                    Dead(Reason.INVALID_JSON, starts="value is not JSON: "),
                    headers=(("h", None), ("dup", b"1"), ("dup", None)),
                ),
            ],
        ),
        Case(
            "10 000 headers and a 5 MiB header on a valid record",
            m,
            [
                r.ok(m, "many headers", headers=tuple((f"h{i}", b"x") for i in range(10_000))),
                r.ok(m, "big header", headers=(("big", BIG_HEADER),)),
            ],
        ),
        Case(
            "eventsink headers sent by a producer",
            m,
            [
                r.ok(m, "spoofed", headers=spoof),
                r.bad(b"{oops", Dead(Reason.INVALID_JSON, starts="value is not JSON"), headers=spoof),
            ],
        ),
        Case(
            "record timestamps at the ends",
            m,
            [
                Item(Raw(json.dumps(p := payload(m, r.tenant, f"ts {t}")).encode(), r.key, timestamp_ms=t), body=p)
                for t in (-1, 1, 253402300799999, 253402300800000, 2**63 - 1)
            ],
        ),
    ]


def other_digits(text: str, zero: int) -> str:
    """`text` with its ASCII digits written in the digits of another script (category Nd) that
    start at code point `zero`: Python's int() and uuid.UUID read them as the same digits."""
    return "".join(chr(zero + int(c)) if "0" <= c <= "9" else c for c in text)


def invalid_utf8(what: str) -> Dead:
    return Dead(Reason.INVALID_UTF8, f"value is not valid UTF-8 ({what})")


def chat_cases(r: Records) -> list[Case]:
    c = "chat"
    owner = Records()
    taken = str(uuid.uuid4())
    limit = 64 * 1024
    return [
        # Fault 4: counts beyond the column (4294967301 was stored as 5), beyond int8, negative.
        Case(
            "token counts beyond int4",
            c,
            [
                r.bad_body(
                    c,
                    invalid("prompt_tokens: Input should be less than or equal to 2147483647"),
                    prompt_tokens=4294967301,
                ),
                r.bad_body(
                    c, invalid("prompt_tokens: Input should be less than or equal to 2147483647"), prompt_tokens=2**63
                ),
                r.bad_body(
                    c,
                    invalid("completion_tokens: Input should be less than or equal to 2147483647"),
                    completion_tokens=2**64 + 5,
                ),
                r.bad_body(c, invalid("prompt_tokens: Input should be greater than or equal to 0"), prompt_tokens=-1),
                r.bad_body(c, invalid("prompt_tokens: Input should be a valid integer"), prompt_tokens=5.0),
                r.ok(c, "int4 max", prompt_tokens=2**31 - 1, completion_tokens=0),
            ],
        ),
        # Fault 6: a lone surrogate escape; a pair is one character; surrogates as raw bytes.
        Case(
            "a lone surrogate escape",
            c,
            [
                r.bad(
                    json.dumps(payload(c, r.tenant, "lone", content="\ud83d")).encode(),
                    Dead(Reason.INVALID_JSON, starts="value is not JSON: ", contains=("surrogate",)),
                )
            ],
        ),
        # json.dumps sends it as the escapes \ud83d\ude00
        Case("a surrogate pair", c, [r.ok(c, "pair", content="\U0001f600 ok")]),
        Case(
            "surrogates as UTF-8 bytes",
            c,
            [
                r.bad(
                    json.dumps(payload(c, r.tenant, "cesu", content="\ud83d"), ensure_ascii=False).encode(
                        "utf-8", "surrogatepass"
                    ),
                    Dead(Reason.INVALID_UTF8, starts="value is not valid UTF-8 ("),
                )
            ],
        ),
        Case(
            "NUL and control characters in content",
            c,
            [
                r.bad_body(c, invalid(f"content: {NUL_MESSAGE}"), content="a\x00b"),
                r.ok(c, "controls", content="\x1b[2J\x07\x08\r\x7f\u2028\ufeff\uffff"),
            ],
        ),
        Case(
            "content at the limit and one byte over",
            c,
            [
                r.ok(c, "at the limit", content="é" * (limit // 2)),
                r.bad_body(
                    c,
                    Dead(Reason.TOO_LARGE, f"content: content is {limit + 1} bytes, more than the {limit} allowed"),
                    content="é" * (limit // 2) + "x",
                ),
            ],
        ),
        Case(
            "roles",
            c,
            [
                r.bad_body(c, invalid("role: Input should be 'user', 'assistant', 'system' or 'tool'"), role="admin"),
                r.ok(c, "tool", role="tool"),
            ],
        ),
        Case(
            "a conversation of another tenant",
            c,
            [
                owner.ok(c, "owner", conversation_id=taken),
                r.bad(
                    json.dumps(payload(c, r.tenant, "intruder", conversation_id=taken)).encode(),
                    Dead(Reason.TENANT_MISMATCH, starts=""),
                ),
            ],
        ),
        Case(
            "content compressed by its producer", c, [r.ok(c, "compressed", content="z" * 60_000)], compression="zstd"
        ),
        # Issue 19: a duplicate claims nothing; the three records are produced together, so that
        # they meet in one batch (the outcome must be the one of three batches).
        Case(
            "a duplicate naming a new conversation claims nothing",
            c,
            [
                (first := r.ok(c, "claims C1", conversation_id=str(uuid.uuid4()))),
                r.again(first, conversation_id=(c2 := str(uuid.uuid4()))),
                owner.ok(c, "B in C2", conversation_id=c2),
            ],
        ),
        Case(
            "a conversation_id in other digits",
            c,
            [
                r.bad_body(
                    c,
                    Dead(Reason.INVALID_EVENT, starts="conversation_id: "),
                    conversation_id=other_digits(taken, 0x0966),
                )
            ],
        ),
    ]


LARGE_FLOATS = {"x": 3.2e21, "y": [2e19, -1.2345678901234567e18, 1.7976931348623157e308, 5e-324, 1e16]}


def fractions_kept(row: dict[str, Any]) -> str | None:
    """jsonb prints a float's digits with a fraction (every JSON reader gives back a float)."""
    numbers = [row["result"]["x"], *row["result"]["y"]]
    integral = [n for n in numbers if n.as_tuple().exponent >= 0]
    return f"stored as integers: {integral}" if integral else None


def analysis_cases(r: Records) -> list[Case]:
    a = "analysis"
    other = Records()
    done = {"status": "completed"}
    return [
        # Fault 2: a result nested 300 levels; 64 is the deepest stored.
        Case(
            "a result nested 300 levels",
            a,
            [r.bad_body(a, invalid("result: is nested more than 64 levels deep"), result=nested(300), **done)],
        ),
        Case("a result nested 64 levels", a, [r.ok(a, "64 deep", result=nested(64, "leaf"), **done)]),
        Case(
            "64-bit integers in a result",
            a,
            [r.ok(a, "u64", result={"max": 2**64 - 1, "min": -(2**63), "f": 2.0**53 - 1, "tiny": 5e-324}, **done)],
        ),
        Case(
            "integers beyond 64 bits in a result",
            a,
            [
                r.bad_body(
                    a,
                    invalid(
                        "result: cannot be stored: Integer exceeds 64-bit range (integers are stored within 64 bits,"
                        " -2**63 to 2**64-1, a larger number can be sent as a float)"
                    ),
                    result={"n": 2**64},
                    **done,
                ),
            ],
        ),
        # Issue 19: a float of any magnitude is stored and given back as the float sent.
        Case(
            "floats of any magnitude in a result",
            a,
            [
                r.ok(a, "3.2e21", result=LARGE_FLOATS, check=fractions_kept, **done),
                r.ok(a, "in attributes", attributes_big=1e308, **done),
            ],
        ),
        Case(
            "a duplicate naming a new analysis claims nothing",
            a,
            [
                (first := r.ok(a, "claims X", analysis_id=str(uuid.uuid4()))),
                r.again(first, analysis_id=(y := str(uuid.uuid4()))),
                other.ok(a, "B in Y", analysis_id=y),
            ],
        ),
        Case("NUL in a result key", a, [r.bad_body(a, invalid(f"result: {NUL_MESSAGE}"), result={"a\x00": 1}, **done)]),
        Case(
            "a result with the wrong status",
            a,
            [
                r.bad_body(
                    a, invalid("(event): result is only allowed with status completed"), result={}, status="pending"
                )
            ],
        ),
        Case(
            "progress",
            a,
            [
                r.bad_body(a, invalid("progress: Input should be less than or equal to 100"), progress=101),
                r.ok(a, "100", progress=100),
            ],
        ),
        Case("a result of 900 kB", a, [r.ok(a, "900kB", result={"blob": "b" * 900_000}, **done)]),
    ]


def all_cases(r: Records) -> list[Case]:
    return metric_cases(r) + chat_cases(r) + analysis_cases(r)


@pytest.mark.parametrize("client", CLIENTS)
def test_poison_records_between_valid_ones(scenario: Scenario, client: Client) -> None:
    s = scenario
    w = start(s, "worker")
    r = Records()
    try:
        outcome = run(s, w, all_cases(r), client, r.neighbour)
        assert not outcome.behind, f"partitions stuck (ledger, end): {outcome.behind}"
        assert not outcome.problems, "\n".join(outcome.problems)
        assert healthy(w)
        oracle(s)
        assert not (wrong := tools_problems(s, all_cases(r))), "\n".join(wrong)
    finally:
        assert w.stop() == 0
    assert not log_problems(w), log_problems(w)


def tools_problems(s: Scenario, cases: list[Case]) -> list[str]:
    """`eventsink tail` and `eventsink dlq list` read every poisoned topic to its end, decode
    each record as the worker did, and print no terminal control character."""
    problems = []
    verdicts = {}
    for case in cases:
        for item in case.items:
            if item.placed is not None and (item.dead is None or item.dead.reason is not Reason.TENANT_MISMATCH):
                verdicts[(topics_of(s)[case.kind], *item.placed)] = item.dead is None
    for kind, topic in topics_of(s).items():
        for fmt in ("json", "pretty"):
            done = eventsink(
                "tail", topic, "--from-beginning", "--format", fmt, "--type", kind, env=s.env(), text=False
            )
            if done.returncode != 0 or b"\x1b" in done.stdout:
                problems.append(f"tail {topic} --format {fmt}: exit {done.returncode}, {done.stderr[-800:]!r}")
                continue
            if fmt == "json":
                for line in done.stdout.splitlines():
                    row = orjson.loads(line)
                    want = verdicts.pop((topic, row["partition"], row["offset"]), None)
                    if want is not None and row["valid"] != want:
                        problems.append(f"tail {topic}[{row['partition']}]@{row['offset']}: valid={row['valid']}")
        for as_json in (("--json",), ()):
            done = eventsink("dlq", "list", f"{topic}.dlq", "--limit", "100000", *as_json, env=s.env(), text=False)
            if done.returncode != 0 or b"\x1b" in done.stdout:
                problems.append(f"dlq list {topic}.dlq {as_json}: exit {done.returncode}, {done.stderr[-800:]!r}")
    problems += [f"tail did not show {topic}[{p}]@{o}" for (topic, p, o) in verdicts if topic]
    return problems


# -- issue 19: a key escaped to spell `attributes`, under the reject policy -----------------------


def escaped_name_cases(r: Records) -> list[Case]:
    refused = Dead(Reason.UNKNOWN_FIELD, "unknown field 'attributes': this kind refuses fields it does not know")
    cases = []
    for kind in KINDS:
        plain = r.bad(json.dumps({**payload(kind, r.tenant, "plain"), "attributes": {"x": 1}}).encode(), refused)
        one = json.dumps({**payload(kind, r.tenant, "one escape"), "ATTR": {"x": 1}}).replace(
            '"ATTR"', '"\\u0061ttributes"'
        )
        cases.append(
            Case(
                f"{kind}: attributes on the wire, however spelt",
                kind,
                [
                    plain,
                    r.bad(one.encode(), refused),
                    r.escaped(kind, "all escaped", dead=refused, attributes={"y": 2}),
                    r.escaped(kind, "known fields escaped"),
                ],
            )
        )
    return cases


@pytest.mark.parametrize("client", CLIENTS)
def test_a_field_spelling_attributes_is_unknown_however_escaped(scenario: Scenario, client: Client) -> None:
    """`"\\u0061ttributes"` is the key `attributes`: under the reject policy it is refused and
    counted like any unknown field, never stored as the event's kept unknown fields; keys of
    known fields escaped are the known fields (issue 19)."""
    s = scenario
    policy = {f"EVENTSINK_{k.upper()}_UNKNOWN_FIELDS": "reject" for k in KINDS}
    w = start(s, "reject", **policy)
    r = Records()
    try:
        outcome = run(s, w, escaped_name_cases(r), client, r.neighbour)
        assert not outcome.behind, f"partitions stuck (ledger, end): {outcome.behind}"
        assert not outcome.problems, "\n".join(outcome.problems)
        for topic in topics_of(s).values():
            assert unknown_fields_counted(w, topic) == {"attributes": 3.0}, topic
    finally:
        assert w.stop() == 0
    assert not log_problems(w), log_problems(w)


def unknown_fields_counted(w: WorkerProcess, topic: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{w.web}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        sample.labels["field"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "eventsink_unknown_fields_total" and sample.labels["topic"] == topic
    }


# -- needing the worker to publish what the DLQ topic cannot carry -----------------------------


def unpublishable_cases(r: Records) -> list[Case]:
    c = "chat"
    big = payload(c, r.tenant, "5 MB", content="x" * 5_000_000)
    return [
        # Fault 5: 5 MB of content, compressed by its producer to a few kB: the dead letter is
        # larger than the worker's producer may send.
        Case(
            "5 MB of content compressed by its producer",
            c,
            [
                r.bad(
                    json.dumps(big).encode(),
                    Dead(
                        Reason.TOO_LARGE, "content: content is 5000000 bytes, more than the 65536 allowed", stored=True
                    ),
                ),
            ],
            compression="zstd",
        ),
        Case(
            "an invalid record with a 5 MiB header",
            c,
            [
                r.bad(
                    b"{oops",
                    Dead(Reason.INVALID_JSON, starts="value is not JSON", stored=True),
                    headers=(("big", BIG_HEADER),),
                )
            ],
            compression="gzip",
        ),
        Case(
            "a result of 1.5 MB",
            "analysis",
            [
                r.bad_body(
                    "analysis",
                    Dead(Reason.INVALID_EVENT, starts="result: is ", contains=("bytes once serialised",), stored=True),
                    status="completed",
                    result={"blob": "b" * 1_500_000},
                )
            ],
            compression="lz4",
        ),
        Case(
            "neither key nor value",
            c,
            [
                r.bad(None, Dead(Reason.INVALID_JSON, "value is empty (a tombstone)", stored=True), key=None),
                r.bad(
                    None,
                    Dead(Reason.INVALID_JSON, "value is empty (a tombstone)", stored=True),
                    key=None,
                    headers=(("only", b"headers"),),
                ),
            ],
            clients=("confluent",),
        ),
    ]


@pytest.mark.parametrize("client", CLIENTS)
def test_dead_letters_the_dlq_topic_cannot_carry(scenario: Scenario, client: Client) -> None:
    s = scenario
    w = start(s, "worker")
    r = Records()
    try:
        outcome = run(s, w, unpublishable_cases(r), client, r.neighbour, timeout=60)
        assert not outcome.behind, f"partitions stuck (ledger, end): {outcome.behind}\n" + "\n".join(outcome.problems)
        assert not outcome.problems, "\n".join(outcome.problems)
        oracle(s)
    finally:
        assert w.stop() == 0
    assert not log_problems(w), log_problems(w)


# A header key that is not UTF-8 (a batch the Kafka client itself cannot read) is not a record
# any decoder sees: the worker stops that partition alone, at that record, for an operator. See
# tests/e2e/test_unreadable_records.py.


# -- the fuzz soak -------------------------------------------------------------------------


SOAK_RECORDS = 50_000


@pytest.mark.soak
# Up to 240 s to apply, then the topics and DLQs read three times over (the test's own checks, the
# oracle's): on a host running eight test processes on two cores Tansu answered fetches of the
# DLQs (thousands of one-record batches) slowly enough that the reads alone passed 300 s' share.
@pytest.mark.timeout(900)
def test_fuzz_soak(scenario: Scenario) -> None:
    """Tens of thousands of random records through one worker, from both clients: every valid
    one stored exactly, every dead letter's reason true of its bytes, no partition stuck, no
    batch failing, and `eventsink verify` exact."""
    s = scenario
    # The production default for a pool connection's wait (the suite's 3 s is for the outage
    # tests): this one has no outage, and a CI host running eight test processes on two cores
    # once kept a writer waiting longer than 3 s, which it logged and retried (the pool's state
    # now goes with that message: `Sink._connection`).
    w = start(s, "soak", EVENTSINK_DB_CONNECT_TIMEOUT_S="10")
    tenants = [str(uuid.uuid4()) for _ in range(8)]
    records = fuzz(random.Random(20261129), SOAK_RECORDS, tenants)
    topics = topics_of(s)
    began = time.monotonic()
    try:
        ends: dict[str, dict[int, int]] = {t: {} for t in topics.values()}
        for kind, topic in topics.items():
            raws = [raw for k, raw, _ in records if k == kind]
            for n, start_at in enumerate(range(0, len(raws), 2500)):
                client: Client = "confluent" if n % 3 == 2 else "aiokafka"
                placed = produce(s.bootstrap, topic, raws[start_at : start_at + 2500], client=client)
                for p, o in placed:
                    ends[topic][p] = max(o, ends[topic].get(p, -1))
        problems: list[str] = []
        behind = settle(s, w, ends, 240, problems)
        applied_in = time.monotonic() - began
        assert not behind, f"partitions stuck (ledger, end): {behind}"
        assert not problems, problems
        for kind in topics:
            want = {(b["tenant_id"], b["dedupe_id"]): expected(kind, b) for k, _, b in records if k == kind and b}
            got = rows(s.dsn, kind, tenants)
            wrong = {key: (got.get(key), row) for key, row in want.items() if got.get(key) != row}
            assert not wrong, f"{len(wrong)} {kind} rows differ (stored, sent): {list(wrong.items())[:3]}"
        reasons: Counter[str] = Counter()
        for topic in topics.values():
            for found in dead_letters(s.bootstrap, f"{topic}.dlq").values():
                for d in found:
                    reasons[d.info.reason] += 1
                    problem = untrue(d.info.reason, d.info.detail, d.value, d.key)
                    assert problem is None, f"{topic}: {problem}"
                    assert d.info.reason != Reason.DB_REJECTED, d.info.detail
        # Unknown fields are kept by default (unknown_field needs the reject policy); a frame is
        # only read under the confluent-json value format (invalid_frame).
        never = {Reason.DB_REJECTED, Reason.TENANT_MISMATCH, Reason.UNKNOWN_FIELD, Reason.INVALID_FRAME}
        assert set(reasons) >= {r.value for r in Reason} - never, reasons
        reports = oracle(s)
        assert sum(r.totals().seen for r in reports.values()) == SOAK_RECORDS
        assert healthy(w)
    finally:
        assert w.stop() == 0
    assert not log_problems(w), log_problems(w)
    print(f"fuzz soak: {SOAK_RECORDS} records, dead letters {dict(reasons)}, applied in {applied_in:.1f} s")
