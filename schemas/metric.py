"""The metric event: one measurement of one tenant."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from schemas.columns import Float8, PgType, Text
from schemas.envelope import Event
from schemas.fields import DedupeId, TenantId, UtcTimestamp

MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024

TagKey = Text(MAX_TAG_KEY, min_length=1)
TagValue = Text(MAX_TAG_VALUE)


class MetricEvent(Event):
    """Wire contract of topic `metrics` (key: the tenant_id as UTF-8 text)."""

    event_kind: ClassVar[str] = "metric"

    tenant_id: TenantId = Field(description="The tenant (a UUID); the record key must name the same tenant.")
    dedupe_id: DedupeId = Field(description="Unique per tenant: a re-sent event with the same id is stored once.")
    name: Text(256, min_length=1) = Field(description="What was measured.")  # type: ignore[valid-type]
    value: Float8 = Field(description="A finite number (not a boolean, not a numeric string).")
    occurred_at: UtcTimestamp = Field(description="RFC 3339 with a time zone; stored in UTC with microseconds.")
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS), PgType("jsonb")] = Field(  # type: ignore[valid-type]
        description="Labels: text to text."
    )
    unit: Text(64) | None = Field(None, description="Unit of the value.")  # type: ignore[valid-type]
