"""Field types every event kind shares, built on the column types of `schemas.columns`.

Strict where a loose parse would store something other than what the producer meant: epoch
numbers are not timestamps, booleans are not numbers, NUL cannot be stored in a PostgreSQL text
column. Constraints are pydantic-core's own (Rust) wherever it has one: validation runs once
per record on the hot path.
"""

from __future__ import annotations

from schemas.columns import NO_NUL, NUL_MESSAGE, Text, Timestamptz, Uuid

__all__ = ["NO_NUL", "NUL_MESSAGE", "DedupeId", "TenantId", "UtcTimestamp"]

# Any textual UUID form (canonical, 32 hex digits, braces, urn:uuid:) naming the same UUID.
TenantId = Uuid

DedupeId = Text(128, min_length=1)

# RFC 3339 with a zone, normalised to UTC, microseconds kept.
UtcTimestamp = Timestamptz
