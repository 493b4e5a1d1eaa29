"""The analysis event: one step of an analysis request's life."""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.fields import NUL_MESSAGE, DedupeId, TenantId, UtcTimestamp, bounded_text

Status = Literal["pending", "processing", "completed", "failed", "deleted"]
MAX_RESULT_BYTES = 1024 * 1024


def _check_no_nul(value: Any) -> None:
    # jsonb refuses \u0000 anywhere, keys included.
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(NUL_MESSAGE)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_no_nul(k)
            _check_no_nul(v)
    elif isinstance(value, list):
        for v in value:
            _check_no_nul(v)


class AnalysisEvent(BaseModel):
    """Wire contract of topic `analysis` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_kind: ClassVar[str] = "analysis"

    tenant_id: TenantId
    dedupe_id: DedupeId
    analysis_id: UUID
    status: Status
    occurred_at: UtcTimestamp
    progress: int | None = Field(None, ge=0, le=100, strict=True)
    result: dict[str, Any] | None = None
    error: bounded_text(10_000) | None = None  # type: ignore[valid-type]
    media_url: bounded_text(2048) | None = None  # type: ignore[valid-type]
    kind: bounded_text(128) | None = None  # type: ignore[valid-type]

    @field_validator("result")
    @classmethod
    def _storable_result(cls, result: dict[str, Any] | None) -> dict[str, Any] | None:
        if result is not None:
            if len(orjson.dumps(result)) > MAX_RESULT_BYTES:
                raise ValueError(f"result is larger than {MAX_RESULT_BYTES} bytes once serialised")
            _check_no_nul(result)
        return result

    @model_validator(mode="after")
    def _payload_matches_status(self) -> AnalysisEvent:
        if self.result is not None and self.status != "completed":
            raise ValueError("result is only allowed with status completed")
        if self.error is not None and self.status != "failed":
            raise ValueError("error is only allowed with status failed")
        return self
