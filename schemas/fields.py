"""Field types shared by every event kind.

Strict where a loose parse would store something other than what the producer meant: epoch
numbers are not timestamps, booleans are not numbers, NUL cannot be stored in a PostgreSQL text
column. Constraints are pydantic-core's own (Rust) wherever it has one: validation runs once
per record on the hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, StringConstraints

NO_NUL = r"^[^\x00]*$"
NUL_MESSAGE = "must not contain NUL (\\u0000) characters"

_RFC3339_MESSAGE = "must be an RFC 3339 timestamp with a time zone, e.g. 2024-05-01T12:00:00.123456Z"


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
    raise ValueError(_RFC3339_MESSAGE)


def _to_utc(value: datetime) -> datetime:
    # Digits beyond microseconds were truncated by the parser, as PostgreSQL's timestamptz would.
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def bounded_text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_NUL)]


# Any textual UUID form (canonical, 32 hex digits, braces, urn:uuid:) naming the same UUID.
TenantId = UUID

DedupeId = bounded_text(128, min_length=1)

UtcTimestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_shape), AfterValidator(_to_utc)]

# Strict: an int or a float; not a bool, not a numeric string; finite.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]

NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
