"""The chat event: one message of one conversation."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from schemas.columns import NonNegativeInt4, PgType, Text, Uuid
from schemas.envelope import Event
from schemas.fields import DedupeId, TenantId, UtcTimestamp

# The hard ceiling of the model; a deployment sets a lower bound through the validation context.
MAX_CONTENT_BYTES = 64 * 1024
Role = Annotated[Literal["user", "assistant", "system", "tool"], PgType("text")]


class ChatEvent(Event):
    """Wire contract of topic `chat` (key: the tenant_id as UTF-8 text)."""

    event_kind: ClassVar[str] = "chat"

    tenant_id: TenantId = Field(description="The tenant (a UUID); the record key must name the same tenant.")
    dedupe_id: DedupeId = Field(description="Unique per tenant: a re-sent message with the same id is stored once.")
    conversation_id: Uuid = Field(description="The conversation; its first message claims it for its tenant.")
    role: Role = Field(description="Who wrote the message.")
    content: Text(10 * 1024 * 1024) = Field(  # type: ignore[valid-type]
        description=(
            "The message. At most EVENTSINK_CHAT_MAX_CONTENT_BYTES UTF-8 bytes (default 65536, a deployment "
            "setting): longer content goes to the dead-letter topic as too_large, never truncated."
        )
    )
    occurred_at: UtcTimestamp = Field(description="RFC 3339 with a time zone; stored in UTC with microseconds.")
    user_id: Text(256, min_length=1) | None = Field(None, description="The user, kept on the session.")  # type: ignore[valid-type]
    model: Text(256, min_length=1) | None = Field(None, description="The model that wrote the message.")  # type: ignore[valid-type]
    # chat_messages stores them as integer: a count beyond it is refused, never truncated.
    prompt_tokens: NonNegativeInt4 | None = Field(None, description="Added to the session's prompt_tokens.")
    completion_tokens: NonNegativeInt4 | None = Field(None, description="Added to the session's completion_tokens.")

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
