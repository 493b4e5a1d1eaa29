"""Hypothesis strategies for the three event kinds, and the expected value of every field.

Two families:

- `valid_*` draw a JSON payload a producer may send *and* the values a reader must find in
  PostgreSQL afterwards (`Expected`), computed here with plain Python (datetime arithmetic for
  the UTC instant, `Decimal` for JSON numbers), never with the schemas under test.
- `hostile_*` draw anything: arbitrary bytes, or a valid payload with one field replaced by an
  arbitrary JSON value (deep nesting, huge and negative integers, floats at the edges, extreme and
  malformed timestamps with every offset, lone surrogates, NUL, control characters), serialised
  in ways that keep or break UTF-8.

Profiles: `eventsink` (the default: a few seconds per file), `ci` (the same, derandomised, so a
run in CI is reproducible) and `thorough` (`pytest --hypothesis-profile=thorough`, minutes).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import string
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("eventsink", max_examples=150, **_common)
settings.register_profile("ci", max_examples=150, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "eventsink"))

INT4 = 2**31 - 1
INT8 = 2**63 - 1

# The earliest and latest instants any PostgreSQL session can read back into Python, whatever its
# TimeZone (offsets stay below a day): one day inside Python's years 1 to 9999.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)

# -- text -------------------------------------------------------------------------------------

# Any code point PostgreSQL text can hold: everything but NUL and the surrogates.
storable_char = st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
# Characters that stress every layer: controls, ESC, line separators, BOM, non-characters, astral.
awkward_char = st.sampled_from(["\x01", "\x1b", "\x7f", "\n", "\r", "\t", "\u2028", "\ufeff", "\uffff", "\U0001f600"])


def storable_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(st.one_of(storable_char, awkward_char), min_size=min_size, max_size=max_size)


# Anything a Python str can hold, lone surrogates and NUL included.
any_char = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
    st.sampled_from(["\x00", "\ud83d", "\udc00", "\udfff", "\x1b"]),
)
any_text = st.text(any_char, max_size=30)

# -- numbers ----------------------------------------------------------------------------------

EDGE_INTS = [
    0, -1, 1, 100, 101, 2**15 - 1, 2**15, INT4, INT4 + 1, 2**32, 4294967301, -INT4 - 1, -INT4 - 2,
    2**53, 2**53 + 1, INT8, INT8 + 1, -INT8 - 1, -INT8 - 2, 2**64 - 1, 2**64, 10**19, 10**30, -(10**30), 10**400,
]  # fmt: skip
EDGE_FLOATS = [
    0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
    0.1, 1e16, 9007199254740993.0, 1e-7, 123456789.123456789,
]  # fmt: skip
any_int = st.one_of(st.integers(), st.sampled_from(EDGE_INTS), st.integers(-(10**25), 10**25))
finite_float = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EDGE_FLOATS))
any_float = st.one_of(finite_float, st.sampled_from([float("nan"), float("inf"), float("-inf")]))

# -- JSON values ------------------------------------------------------------------------------


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value `depth` levels deep: objects and lists alternating, an object outermost."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if (depth - level) % 2 else [value]
    return value


any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), any_int, any_float, any_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
) | st.builds(nested, st.integers(1, 400))

# JSON a jsonb column stores and gives back equal: object keys and strings without NUL, integers
# a 64-bit encoder writes, finite floats of any magnitude (stored with a fraction, so that jsonb
# gives them back as floats), at most 64 levels.
storable_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([-(2**63), INT8, 2**64 - 1]),
    finite_float,
    st.sampled_from([2.0**53 - 1, 2.0**53, 1e16, 3.2e21, 1.2345678901234567e18, 2e19, -1e300, 1e308]),
    storable_text(),
)


def storable_json_object(max_leaves: int = 15) -> st.SearchStrategy[dict[str, Any]]:
    tree = st.recursive(
        storable_json_scalar,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(storable_text(), inner, max_size=4)),
        max_leaves=max_leaves,
    )
    shallow = st.dictionaries(storable_text(), tree, max_size=5)
    deep = st.builds(lambda d, leaf: {"deep": nested(d, leaf)}, st.integers(1, 63), storable_json_scalar)
    return st.one_of(shallow, deep)


def json_number(value: Any) -> Any:
    """A JSON value with its numbers as exact decimals (what jsonb compares and keeps)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [json_number(v) for v in value]
    return {k: json_number(v) for k, v in value.items()}


def json_decimal(text: str) -> Any:
    """Parse JSON text (PostgreSQL's jsonb output) with its numbers as exact decimals."""
    return json.loads(text, parse_int=Decimal, parse_float=Decimal)


# -- timestamps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    """An RFC 3339 text and the UTC instant it names, or None when it names none (or one
    outside what every PostgreSQL session can read back)."""

    text: str
    utc: datetime | None


def _utc_of(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int, offset_minutes: int) -> datetime | None:
    """The instant by arithmetic on microseconds since 0001-01-01, not by `astimezone`."""
    try:
        local = datetime(y, mo, d)  # validates the calendar date only
    except ValueError:
        return None
    if not (h < 24 and mi < 60 and s < 60):
        return None
    micros = ((local.toordinal() - 1) * 86400 + h * 3600 + mi * 60 + s - offset_minutes * 60) * 10**6 + us
    if micros < 0:
        return None
    days, rest = divmod(micros, 86400 * 10**6)
    if days + 1 > datetime.max.toordinal():
        return None
    instant = datetime.fromordinal(days + 1).replace(tzinfo=UTC) + timedelta(microseconds=rest)
    return instant if EARLIEST <= instant <= LATEST else None


@st.composite
def stamps(draw: st.DrawFn, valid_only: bool = False) -> Stamp:
    """Timestamps with every offset, from year 1 to 9999 and just beyond; `valid_only` draws
    only texts that name an instant PostgreSQL can give back."""
    edge_years = st.sampled_from([1, 2, 1969, 1970, 2000, 2024, 9998, 9999])
    y = draw(st.one_of(edge_years, st.integers(1, 9999)) if valid_only else st.integers(0, 10000) | edge_years)
    mo = draw(st.integers(1, 12) if valid_only else st.integers(0, 13))
    d = draw(st.integers(1, 28) if valid_only else st.integers(0, 32))
    h = draw(st.integers(0, 23) if valid_only else st.integers(0, 25))
    mi = draw(st.integers(0, 59) if valid_only else st.integers(0, 61))
    s = draw(st.integers(0, 59) if valid_only else st.integers(0, 61))
    digits = draw(st.text("0123456789", min_size=0, max_size=12))
    frac = f".{digits}" if digits else ""
    us = int(digits[:6].ljust(6, "0")) if digits else 0  # digits past microseconds are dropped
    sep = draw(st.sampled_from("Tt "))
    if draw(st.booleans()):
        zone, offset = draw(st.sampled_from(["Z", "z"])), 0
    else:
        oh = draw(st.integers(0, 23) if valid_only else st.integers(0, 25))
        om = draw(st.integers(0, 59) if valid_only else st.integers(0, 61))
        sign = draw(st.sampled_from("+-"))
        zone = f"{sign}{oh:02d}:{om:02d}"
        offset = (oh * 60 + om) * (1 if sign == "+" else -1)
        if oh >= 24 or om >= 60:
            offset = 10**9  # no such offset: names nothing
    text = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
    utc = None if offset == 10**9 or y == 0 else _utc_of(y, mo, d, h, mi, s, us, offset)
    if valid_only and utc is None:
        # Out of range once in UTC (year 1 with a positive offset...): nudge into the middle.
        return draw(stamps(valid_only=True).filter(lambda st_: st_.utc is not None))
    return Stamp(text, utc)


_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))")


def stamp_of(text: str) -> Stamp:
    """The instant an RFC 3339 text names (by the same arithmetic as `stamps`)."""
    m = _STAMP.fullmatch(text)
    assert m is not None, text
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    us = int((m.group(7) or "")[:6].ljust(6, "0"))
    offset = 0 if m.group(8) is None else (int(m.group(9)) * 60 + int(m.group(10))) * (1 if m.group(8) == "+" else -1)
    return Stamp(text, None if y == 0 else _utc_of(y, mo, d, h, mi, s, us, offset))


# Around the ends of what can be stored (fault 1 of issue 9 first) and around the epoch.
EXTREME_STAMPS = [
    stamp_of(text)
    for text in (
        "0001-01-01T00:30:00+01:00",
        "0001-01-01T00:00:00Z",
        "0001-01-02T00:00:00Z",
        "0001-01-02T23:59:00+23:59",
        "0001-01-01T23:59:59.999999-00:01",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-30T23:59:59.999999Z",
        "9999-12-31T23:30:00-01:00",
        "9999-12-30T00:00:00.999999-23:59",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2024-02-29T12:00:00.123456789+05:45",
    )
]

# -- events -----------------------------------------------------------------------------------


def uuid_text(u: uuid.UUID, form: int) -> str:
    """Spellings of one UUID that the contract accepts."""
    return [str(u), str(u).upper(), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u)][form]


# The spellings of a UUID the contract reads, written out here (not taken from the schemas): 32
# ASCII hex digits, hyphenated 8-4-4-4-12 or not, the hyphenated form also in braces or after
# urn:uuid:. Python's uuid.UUID reads many more (any Unicode digit, 0x, a sign, underscores).
_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
UUID_SPELLING = re.compile(rf"{_HYPHENATED}|{_HEX}{{32}}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}")


def spelt_uuid(text: Any) -> uuid.UUID | None:
    """The UUID `text` spells by the contract, or None."""
    if not isinstance(text, str) or UUID_SPELLING.fullmatch(text) is None:
        return None
    return uuid.UUID(hex="".join(c for c in text.removeprefix("urn:uuid:") if c in string.hexdigits))


@functools.cache
def other_digits() -> dict[int, list[str]]:
    """Every decimal digit (Unicode category Nd) that is not ASCII, by its value."""
    found: dict[int, list[str]] = {d: [] for d in range(10)}
    for code in range(0x80, 0x110000):
        if unicodedata.category(c := chr(code)) == "Nd":
            found[unicodedata.decimal(c)].append(c)
    return found


@st.composite
def other_digit_uuid(draw: st.DrawFn) -> tuple[str, uuid.UUID]:
    """An accepted spelling of a UUID with some of its digits written in another script's (Nd)
    digits of the same value: what Python's int() and uuid.UUID read as the same UUID."""
    u = draw(st.uuids())
    text = uuid_text(u, draw(st.integers(0, 4)))
    digits = [i for i, c in enumerate(text) if "0" <= c <= "9" and i >= (9 if text.startswith("urn:") else 0)]
    assume(digits)
    chosen = draw(st.lists(st.sampled_from(digits), min_size=1, unique=True))
    chars = list(text)
    for i in chosen:
        chars[i] = draw(st.sampled_from(other_digits()[int(text[i])]))
    return "".join(chars), u


@st.composite
def uuid_lookalike(draw: st.DrawFn) -> str:
    """Texts around the spellings of a UUID: accepted ones, other digits, and what only a looser
    parser (Python's uuid.UUID, int(x, 16)) would read."""
    u = draw(st.uuids())
    plain, simple = str(u), u.hex
    return draw(
        st.one_of(
            st.integers(0, 4).map(lambda form: uuid_text(u, form)),
            other_digit_uuid().map(lambda pair: pair[0]),
            st.sampled_from(
                [
                    "{" + simple + "}",
                    "urn:uuid:" + simple,
                    "URN:UUID:" + plain,
                    "uuid:" + plain,
                    "{{" + plain + "}}",
                    "{" + plain,
                    "0x" + simple[2:],
                    "+" + simple[1:],
                    "-" + simple[1:],
                    " " + simple[1:],
                    simple[:31] + " ",
                    simple[:1] + "_" + simple[2:],
                    plain.replace("-", "", 1) + "-",
                    plain[:8] + plain[9:13] + "-" + plain[13:],
                    plain.upper().replace("A", "\uff21"),
                    plain + "\n",
                    simple.replace("a", "\u0430"),
                ]
            ),
            st.text(st.sampled_from("0123456789abcdefABCDEF-{}:urnid \u0660\uff10_+x"), max_size=46),
            st.text(max_size=40),
        )
    )


def escaped_string(text: str, rnd: random.Random) -> str:
    """A JSON string literal (quotes included) of `text` with random characters written as
    \\uXXXX escapes (hex digits in either case, surrogate pairs beyond the BMP), at least one
    when `text` is not empty; the others as json.dumps writes them."""
    escape = [rnd.random() < 0.3 for _ in text]
    if text and not any(escape):
        escape[rnd.randrange(len(text))] = True
    out = []
    for c, esc in zip(text, escape, strict=True):
        if not esc:
            out.append(json.dumps(c, ensure_ascii=False)[1:-1])
            continue
        units = c.encode("utf-16-be")
        for at in range(0, len(units), 2):
            code = f"{int.from_bytes(units[at : at + 2], 'big'):04x}"
            out.append("\\u" + (code.upper() if rnd.random() < 0.5 else code))
    return '"' + "".join(out) + '"'


@st.composite
def escaped_keys_json(draw: st.DrawFn, value: Any) -> bytes:
    """`value` as JSON with the keys of every object, at every level, spelt with random escapes."""
    rnd = draw(st.randoms(use_true_random=False))

    def dump(node: Any) -> str:
        if isinstance(node, dict):
            return "{" + ",".join(f"{escaped_string(k, rnd)}:{dump(v)}" for k, v in node.items()) + "}"
        if isinstance(node, list):
            return "[" + ",".join(dump(v) for v in node) + "]"
        return json.dumps(node, ensure_ascii=False)

    return dump(value).encode()


@dataclass
class Expected:
    """A payload as sent and what PostgreSQL must hold for it."""

    payload: dict[str, Any]
    tenant: uuid.UUID
    dedupe_id: str
    occurred_at: datetime
    values: dict[str, Any] = field(default_factory=dict)  # column -> exact value as stored


@st.composite
def _common_fields(draw: st.DrawFn, tenant: uuid.UUID | None = None) -> tuple[dict[str, Any], Expected]:
    tenant = tenant or draw(st.uuids())
    dedupe_id = draw(storable_text(1, 128))
    storable_extremes = [stamp for stamp in EXTREME_STAMPS if stamp.utc is not None]
    stamp = draw(stamps(valid_only=True) | st.sampled_from(storable_extremes))
    payload = {
        "tenant_id": uuid_text(tenant, draw(st.integers(0, 4))),
        "dedupe_id": dedupe_id,
        "occurred_at": stamp.text,
    }
    assert stamp.utc is not None
    return payload, Expected(payload, tenant, dedupe_id, stamp.utc)


def _optional(draw: st.DrawFn, payload: dict[str, Any], values: dict[str, Any], name: str, strategy: Any) -> None:
    if draw(st.booleans()):
        payload[name] = values[name] = draw(strategy)
    else:
        values[name] = None


@st.composite
def valid_metric(draw: st.DrawFn, tenant: uuid.UUID | None = None) -> Expected:
    payload, exp = draw(_common_fields(tenant))
    # Integers only as far as a double holds them exactly: beyond 2**53 they are refused.
    value = draw(st.one_of(finite_float, st.integers(-(2**53), 2**53), st.sampled_from([2**53, -(2**53)])))
    tags = draw(st.dictionaries(storable_text(1, 128), storable_text(0, 1024), max_size=64))
    payload.update(name=draw(storable_text(1, 256)), value=value, tags=tags)
    exp.values.update(name=payload["name"], value=float(value), tags=tags)
    _optional(draw, payload, exp.values, "unit", storable_text(0, 64))
    return exp


ROLES = ["user", "assistant", "system", "tool"]


@st.composite
def valid_chat(draw: st.DrawFn, tenant: uuid.UUID | None = None, conversation: uuid.UUID | None = None) -> Expected:
    payload, exp = draw(_common_fields(tenant))
    conv = conversation or draw(st.uuids())
    content = draw(
        st.one_of(storable_text(0, 200), st.builds(lambda c, n: c * n, storable_char, st.integers(0, 16000)))
    )
    payload.update(
        conversation_id=uuid_text(conv, draw(st.integers(0, 4))), role=draw(st.sampled_from(ROLES)), content=content
    )
    exp.values.update(session_id=conv, role=payload["role"], content=content)
    _optional(draw, payload, exp.values, "model", storable_text(1, 256))
    tokens = st.one_of(st.integers(0, INT4), st.sampled_from([0, INT4]))
    _optional(draw, payload, exp.values, "prompt_tokens", tokens)
    _optional(draw, payload, exp.values, "completion_tokens", tokens)
    if draw(st.booleans()):
        payload["user_id"] = draw(storable_text(1, 256))
    return exp


STATUSES = ["pending", "processing", "completed", "failed", "deleted"]


@st.composite
def valid_analysis(draw: st.DrawFn, tenant: uuid.UUID | None = None, analysis: uuid.UUID | None = None) -> Expected:
    payload, exp = draw(_common_fields(tenant))
    aid = analysis or draw(st.uuids())
    status = draw(st.sampled_from(STATUSES))
    payload.update(analysis_id=uuid_text(aid, draw(st.integers(0, 4))), status=status)
    exp.values.update(analysis_id=aid, status=status)
    _optional(draw, payload, exp.values, "progress", st.integers(0, 100))
    _optional(draw, payload, exp.values, "kind", storable_text(0, 128))
    _optional(draw, payload, exp.values, "media_url", storable_text(0, 2048))
    exp.values["result"] = exp.values["error"] = None
    if status == "completed":
        _optional(draw, payload, exp.values, "result", storable_json_object())
    if status == "failed":
        _optional(draw, payload, exp.values, "error", storable_text(0, 300))
    return exp


VALID = {"metric": valid_metric, "chat": valid_chat, "analysis": valid_analysis}

# -- hostile records --------------------------------------------------------------------------

FIELDS = {
    "metric": ["tenant_id", "dedupe_id", "name", "value", "occurred_at", "tags", "unit"],
    "chat": [
        "tenant_id", "dedupe_id", "conversation_id", "role", "content", "occurred_at", "user_id", "model",
        "prompt_tokens", "completion_tokens",
    ],
    "analysis": [
        "tenant_id", "dedupe_id", "analysis_id", "status", "occurred_at", "progress", "result", "error",
        "media_url", "kind",
    ],
}  # fmt: skip


def serialise(obj: Any, how: str) -> bytes:
    """`ascii`: lone surrogates become \\uXXXX escapes; `utf8`: written as (invalid) UTF-8 bytes;
    both write NaN and Infinity as Python's json does (JSON has no such tokens)."""
    if how == "ascii":
        return json.dumps(obj, ensure_ascii=True).encode()
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def hostile_payload(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], bytes]:
    """A valid payload with fields replaced by anything, removed or added; and its bytes."""
    payload = dict(draw(VALID[kind]()).payload)
    for name in draw(st.lists(st.sampled_from([*FIELDS[kind], "extra"]), min_size=1, max_size=3, unique=True)):
        action = draw(st.sampled_from(["any", "any", "stamp", "drop"]))
        if action == "drop":
            payload.pop(name, None)
        elif action == "stamp":
            payload[name] = draw(stamps()).text
        else:
            payload[name] = draw(any_json)
    return payload, serialise(payload, draw(st.sampled_from(["ascii", "utf8"])))


@st.composite
def corrupted(draw: st.DrawFn, raw: bytes) -> bytes:
    """Bytes spliced into a record: cut, inserted or overwritten."""
    at = draw(st.integers(0, len(raw)))
    junk = draw(st.binary(max_size=8))
    return draw(st.sampled_from([raw[:at], raw[:at] + junk + raw[at:], raw[:at] + junk + raw[at + len(junk) :]]))


def keys_for(tenant_text: Any) -> st.SearchStrategy[bytes | None]:
    """Record keys: none, empty, the tenant (any spelling), another tenant, anything."""
    own = str(tenant_text).encode("utf-8", "surrogatepass") if isinstance(tenant_text, str) else b"x"
    return st.one_of(
        st.none(), st.just(b""), st.just(own), st.uuids().map(lambda u: str(u).encode()), st.binary(max_size=40)
    )


printable_ascii = st.text(string.printable, max_size=50)


# -- secrets -------------------------------------------------------------------------------------

# What makes a planted password this password: letters and digits that no message writes on its
# own, so that any 6 characters of it found in an output are a leak, not a coincidence.
SECRET_TOKEN_CHARS = "QJZVKWX23456789"
# What DSNs, URLs, conninfo strings, JSON and reprs escape or cut at.
SECRET_SPECIAL_CHARS = "\"' @:/%\\=&?#,"


@st.composite
def hostile_passwords(draw: st.DrawFn) -> str:
    """A password with quotes, spaces, @, :, /, %, backslashes (and friends) around and inside
    random tokens: at least one token of 6 or more characters."""
    token = st.text(SECRET_TOKEN_CHARS, min_size=6, max_size=12)
    special = st.text(SECRET_SPECIAL_CHARS, min_size=1, max_size=3)
    pieces = draw(st.lists(st.one_of(token, special, st.sampled_from(["%41", "%ZZ", "%2", "é"])), max_size=6))
    at = draw(st.integers(0, len(pieces)))
    return "".join([*pieces[:at], draw(token), *pieces[at:]])


def leaked(secret: str, text: str, width: int = 6) -> list[str]:
    """The pieces of `secret` of `width` characters, at least half of them token characters,
    that appear in `text` (a test's independent check, whatever the masking does; a piece of
    punctuation alone is found in messages by chance: `"& :%2` next to the message's own quote)."""
    pieces = {secret[i : i + width] for i in range(len(secret) - width + 1)}
    return sorted(p for p in pieces if sum(c in SECRET_TOKEN_CHARS for c in p) * 2 >= width and p in text)
