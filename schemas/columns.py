"""PostgreSQL column types as pydantic field types: one declaration per column.

A model field annotated with one of these types gets the checks for what PostgreSQL can store in
that type (integer ranges, finite floats, text without NUL, timestamps Python and PostgreSQL can
both hold, JSON of bounded depth and size), run by pydantic-core when a record is decoded, and
carries the type's name (`PgType`). The sinks generate their staging table, their COPY types and
the row tuple of each record from a model's fields (`columns_of`), so the wire contract and what
the database stages can no longer disagree: a value that passes decoding fits its column.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

NO_NUL = r"^[^\x00]*$"
NUL_MESSAGE = "must not contain NUL (\\u0000) characters"
RFC3339_MESSAGE = "must be an RFC 3339 timestamp with a time zone, e.g. 2024-05-01T12:00:00.123456Z"

INT2_MAX = 2**15 - 1
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
# Nesting a JSON value may have where it is stored as jsonb. PostgreSQL's own limit is its stack
# depth; this one keeps every layer (pydantic, orjson, psycopg) far from theirs.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True, slots=True)
class PgType:
    """The PostgreSQL type a field is staged and stored as (the name COPY's `set_types` takes)."""

    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pg_type: str


def columns_of(model: type[BaseModel]) -> tuple[Column, ...]:
    """The model's fields with their PostgreSQL types, in declaration order.

    Raises TypeError for a field without a `PgType`: every field of an event is stored.
    """
    found = []
    for name, info in model.model_fields.items():
        pg = _pg_type(info.metadata) or _pg_type_of(info.annotation)
        if pg is None:
            raise TypeError(f"{model.__name__}.{name} has no PostgreSQL type (annotate it with a schemas.columns type)")
        found.append(Column(name, pg.name))
    return tuple(found)


def _pg_type(metadata: Any) -> PgType | None:
    return next((m for m in metadata if isinstance(m, PgType)), None)


def _pg_type_of(annotation: Any) -> PgType | None:
    if typing.get_origin(annotation) is Annotated:
        return _pg_type(annotation.__metadata__)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _pg_type_of(arg)
    return None


# -- scalars ------------------------------------------------------------------------------------


def Text(max_length: int, min_length: int = 0) -> Any:
    """`text` of at most `max_length` characters, without NUL (PostgreSQL text cannot hold it)."""
    return Annotated[
        str, StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_NUL), PgType("text")
    ]


def Integer(pg_type: str, ge: int, le: int) -> Any:
    """A strict integer (no bool, no numeric string) within `ge..le`, which must fit `pg_type`."""
    limit = {"int2": INT2_MAX, "int4": INT4_MAX, "int8": INT8_MAX}[pg_type]
    if not (-limit - 1 <= ge <= le <= limit):
        raise ValueError(f"{ge}..{le} does not fit {pg_type}")
    return Annotated[int, Field(strict=True, ge=ge, le=le), PgType(pg_type)]


# Spelt as pydantic-core reads a UUID: 32 ASCII hex digits, hyphenated 8-4-4-4-12 or not, the
# hyphenated form also in braces or after urn:uuid:, either case. (Python's uuid.UUID is looser:
# it reads any Unicode digit, a sign, 0x, underscores, spaces and hyphens anywhere.)
Uuid = Annotated[UUID, PgType("uuid")]
_UUID = TypeAdapter(Uuid)


def parse_uuid(text: str) -> UUID | None:
    """The UUID `text` spells, by the very rule of every `Uuid` field; None when it spells none.
    Whatever else parses a UUID (a record key) uses this, so that key and value agree."""
    try:
        return _UUID.validate_python(text)
    except ValidationError:
        return None


# An integer a double cannot hold exactly (beyond 2**53) would be stored rounded: refused.
EXACT_FLOAT_INT = 2**53


def _exact_as_double(value: Any) -> Any:
    if type(value) is int and not -EXACT_FLOAT_INT <= value <= EXACT_FLOAT_INT:
        raise ValueError(
            f"integer {value} is beyond what a double precision number holds exactly (2**53), it would be "
            "stored rounded (send it as a float, with a decimal point or an exponent, to accept that)"
        )
    return value


# Strict: an int or a float; not a bool, not a numeric string; finite; an integer exactly.
Float8 = Annotated[float, BeforeValidator(_exact_as_double), Field(strict=True, allow_inf_nan=False), PgType("float8")]

Int4 = Integer("int4", -INT4_MAX - 1, INT4_MAX)
NonNegativeInt4 = Integer("int4", 0, INT4_MAX)
Int8 = Integer("int8", -INT8_MAX - 1, INT8_MAX)


# -- timestamps ---------------------------------------------------------------------------------


def _rfc3339_shape(value: Any) -> Any:
    # pydantic parses the text (in Rust); this only refuses what it would read as something
    # else: epoch numbers, numeric strings, dates without a time.
    if isinstance(value, datetime):
        return value
    if (
        isinstance(value, str)
        and len(value) >= 20
        and value[4] == "-"
        and value[7] == "-"
        and value[10] in "Tt "
        and value[13] == ":"
        and value[16] == ":"
    ):
        return value
    raise ValueError(RFC3339_MESSAGE)


# The instants every PostgreSQL session gives back to Python: a timestamptz is read in the
# session's TimeZone (offsets below a day), and Python's datetime holds years 1 to 9999 only, so
# 0001-01-01T00:00:00Z read west of Greenwich would be in year 0 (psycopg raises DataError).
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
_RANGE_MESSAGE = (
    "is outside 0001-01-02T00:00:00Z to 9999-12-30T23:59:59.999999Z once in UTC"
    " (what PostgreSQL gives back in any session time zone)"
)


def _to_utc(value: datetime) -> datetime:
    # Digits beyond microseconds were truncated by the parser.
    try:
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:30:00+01:00 is in year 0 once in UTC, 9999-12-31T23:30:00-01:00 in 10000.
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(f"{value.isoformat()} {_RANGE_MESSAGE}")
    return utc


Timestamptz = Annotated[AwareDatetime, BeforeValidator(_rfc3339_shape), AfterValidator(_to_utc), PgType("timestamptz")]


# -- JSON ---------------------------------------------------------------------------------------


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), counted without recursion and
    without going further than `limit` + 1."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


# How a float is stored in jsonb (every JSON number is a `numeric` there, which keeps the digits and
# the scale it was written with): orjson writes a double of 1e16 or more with an exponent
# (3.2e+21), which jsonb keeps as the integer 3200000000000000000000 and prints so; read back,
# Python takes it for an int (one beyond 64 bits that no writer can serialise again, for 2e19;
# 1234567890123456800 for 1.2345678901234568e18, another number than the double). Written out
# with a fraction, 3200000000000000000000.0, jsonb keeps and prints the fraction, and every JSON
# reader gives back the very double that was sent. `numeric` holds any finite double this way
# (1e308 is 309 digits; 5e-324, printed as 0.000...5, already has a fraction).
_EXPONENT = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?e\+\d+')


def _with_fraction(match: re.Match[bytes]) -> bytes:
    token = match.group()
    if token.startswith(b'"'):
        return token  # a string: kept as it is
    return format(Decimal(token.decode()), "f").encode() + b".0"


def jsonb_text(value: Any) -> bytes:
    """`value` as the JSON text it is stored as in a jsonb column: orjson's, with every float
    written with an exponent spelt out with a fraction, so that jsonb gives back a float equal to
    it. Raises orjson.JSONEncodeError for what JSON cannot hold (an integer beyond 64 bits)."""
    text = orjson.dumps(value)
    if b"e+" not in text:  # the common case: no such float (nor a string holding "e+")
        return text
    return _EXPONENT.sub(_with_fraction, text)


def _not_finite(value: Any) -> float | None:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return node
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def JsonObject(max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON object stored as `jsonb`: at most `max_depth` levels deep and `max_bytes` once
    serialised as it is stored (`jsonb_text`), with no NUL in any key or string (jsonb refuses
    \\u0000), finite numbers and integers within 64 bits. Any finite float is stored, and given
    back equal, whatever its magnitude."""

    def storable(value: Any) -> Any:
        if isinstance(value, dict):
            if _json_depth(value, max_depth) > max_depth:
                raise ValueError(f"is nested more than {max_depth} levels deep")
            if _has_nul(value):
                raise ValueError(NUL_MESSAGE)
            infinite = _not_finite(value)
            if infinite is not None:
                # pydantic-core's JSON parser reads NaN and Infinity, which orjson would store as
                # null. (The JSON path, orjson, says which literal it was: "value contains NaN".)
                raise ValueError(f"holds {infinite!r}: numbers must be finite")
            try:
                size = len(jsonb_text(value))
            except orjson.JSONEncodeError as exc:  # an integer beyond 64 bits
                raise ValueError(
                    f"cannot be stored: {exc} (integers are stored within 64 bits, -2**63 to 2**64-1,"
                    " a larger number can be sent as a float)"
                ) from None
            if size > max_bytes:
                raise ValueError(f"is {size} bytes once serialised, more than the {max_bytes} allowed")
        return value

    return Annotated[dict[str, Any], BeforeValidator(storable), PgType("jsonb")]
