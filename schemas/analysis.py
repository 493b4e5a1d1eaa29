"""The analysis event: one step of an analysis request's life."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.columns import Integer, JsonObject, PgType, Text, Uuid
from schemas.fields import DedupeId, TenantId, UtcTimestamp

Status = Annotated[Literal["pending", "processing", "completed", "failed", "deleted"], PgType("text")]
MAX_RESULT_BYTES = 1024 * 1024


class AnalysisEvent(BaseModel):
    """Wire contract of topic `analysis` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_kind: ClassVar[str] = "analysis"

    tenant_id: TenantId
    dedupe_id: DedupeId
    analysis_id: Uuid
    status: Status
    occurred_at: UtcTimestamp
    progress: Integer("int2", 0, 100) | None = None  # type: ignore[valid-type]
    result: JsonObject(MAX_RESULT_BYTES) | None = None  # type: ignore[valid-type]
    error: Text(10_000) | None = None  # type: ignore[valid-type]
    media_url: Text(2048) | None = None  # type: ignore[valid-type]
    kind: Text(128) | None = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _payload_matches_status(self) -> AnalysisEvent:
        if self.result is not None and self.status != "completed":
            raise ValueError("result is only allowed with status completed")
        if self.error is not None and self.status != "failed":
            raise ValueError("error is only allowed with status failed")
        return self
