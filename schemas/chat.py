"""The chat event: one message of one conversation."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.columns import NonNegativeInt4, PgType, Text, Uuid
from schemas.fields import DedupeId, TenantId, UtcTimestamp

# The hard ceiling of the model; a deployment sets a lower bound through the validation context.
MAX_CONTENT_BYTES = 64 * 1024
Role = Annotated[Literal["user", "assistant", "system", "tool"], PgType("text")]


class ChatEvent(BaseModel):
    """Wire contract of topic `chat` (key: the tenant_id as UTF-8 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_kind: ClassVar[str] = "chat"

    tenant_id: TenantId
    dedupe_id: DedupeId
    conversation_id: Uuid
    role: Role
    content: Text(10 * 1024 * 1024)  # type: ignore[valid-type]
    occurred_at: UtcTimestamp
    user_id: Text(256, min_length=1) | None = None  # type: ignore[valid-type]
    model: Text(256, min_length=1) | None = None  # type: ignore[valid-type]
    # chat_messages stores them as integer: a count beyond it is refused, never truncated.
    prompt_tokens: NonNegativeInt4 | None = None
    completion_tokens: NonNegativeInt4 | None = None

    @field_validator("content")
    @classmethod
    def _bounded_content(cls, content: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("max_content_bytes", MAX_CONTENT_BYTES)
        size = len(content.encode("utf-8"))
        if size > limit:
            # A distinct error type: the record goes to the DLQ as too_large, never truncated.
            raise PydanticCustomError(
                "too_large", "content is {size} bytes, more than the {limit} allowed", {"size": size, "limit": limit}
            )
        return content
