"""The analysis event: one step of an analysis request's life."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from schemas.columns import Integer, JsonObject, PgType, Text, Uuid
from schemas.envelope import Event
from schemas.fields import DedupeId, TenantId, UtcTimestamp

Status = Annotated[Literal["pending", "processing", "completed", "failed", "deleted"], PgType("text")]
MAX_RESULT_BYTES = 1024 * 1024

# `_payload_matches_status` in the published JSON Schema's words: a result only with completed,
# an error only with failed (absent or null otherwise).
_PAYLOAD_RULES = [
    {"if": {"properties": {"status": {"const": status}}}, "else": {"properties": {name: {"type": "null"}}}}
    for name, status in (("result", "completed"), ("error", "failed"))
]


class AnalysisEvent(Event):
    """Wire contract of topic `analysis` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(json_schema_extra={"allOf": _PAYLOAD_RULES})

    event_kind: ClassVar[str] = "analysis"

    tenant_id: TenantId = Field(description="The tenant (a UUID); the record key must name the same tenant.")
    dedupe_id: DedupeId = Field(description="Unique per tenant: a re-sent event with the same id is stored once.")
    analysis_id: Uuid = Field(description="The analysis; its first event claims it for its tenant.")
    status: Status = Field(description="The step: pending < processing < completed | failed; deleted is a soft delete.")
    occurred_at: UtcTimestamp = Field(description="RFC 3339 with a time zone; stored in UTC with microseconds.")
    progress: Integer("int2", 0, 100) | None = Field(None, description="Percent done.")  # type: ignore[valid-type]
    result: JsonObject(MAX_RESULT_BYTES) | None = Field(  # type: ignore[valid-type]
        None, description="Only with status completed. At most 1 MiB serialised and 64 levels deep."
    )
    error: Text(10_000) | None = Field(None, description="Only with status failed.")  # type: ignore[valid-type]
    media_url: Text(2048) | None = Field(None, description="What was analysed; the earliest event carrying it wins.")  # type: ignore[valid-type]
    kind: Text(128) | None = Field(None, description="What analysis; the earliest event carrying it wins.")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _payload_matches_status(self) -> AnalysisEvent:
        if self.result is not None and self.status != "completed":
            raise ValueError("result is only allowed with status completed")
        if self.error is not None and self.status != "failed":
            raise ValueError("error is only allowed with status failed")
        return self
