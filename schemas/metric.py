"""The metric event: one measurement of one tenant."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.columns import Float8, PgType, Text
from schemas.fields import DedupeId, TenantId, UtcTimestamp

MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024

TagKey = Text(MAX_TAG_KEY, min_length=1)
TagValue = Text(MAX_TAG_VALUE)


class MetricEvent(BaseModel):
    """Wire contract of topic `metrics` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_kind: ClassVar[str] = "metric"

    tenant_id: TenantId
    dedupe_id: DedupeId
    name: Text(256, min_length=1)  # type: ignore[valid-type]
    value: Float8
    occurred_at: UtcTimestamp
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS), PgType("jsonb")]  # type: ignore[valid-type]
    unit: Text(64) | None = None  # type: ignore[valid-type]
