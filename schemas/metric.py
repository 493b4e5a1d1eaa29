"""The metric event: one measurement of one tenant."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.fields import DedupeId, FiniteFloat, TenantId, UtcTimestamp, bounded_text

MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024

TagKey = bounded_text(MAX_TAG_KEY, min_length=1)
TagValue = bounded_text(MAX_TAG_VALUE)


class MetricEvent(BaseModel):
    """Wire contract of topic `metrics` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_kind: ClassVar[str] = "metric"

    tenant_id: TenantId
    dedupe_id: DedupeId
    name: bounded_text(256, min_length=1)  # type: ignore[valid-type]
    value: FiniteFloat
    occurred_at: UtcTimestamp
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS)]  # type: ignore[valid-type]
    unit: bounded_text(64) | None = None  # type: ignore[valid-type]
