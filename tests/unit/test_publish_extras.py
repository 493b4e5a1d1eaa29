"""Extra fields travel in a dict: the models are the contract the workers know, and refuse others."""

from __future__ import annotations

import uuid

import orjson
import pytest
from pydantic import ValidationError

from streams.publish import ChatEvent, encode
from streams.publish.publisher import validate


def chat_fields() -> dict[str, object]:
    return {
        "tenant_id": str(uuid.uuid4()),
        "dedupe_id": "m-1",
        "conversation_id": str(uuid.uuid4()),
        "role": "user",
        "content": "hello",
        "occurred_at": "2024-05-01T12:00:00.123456Z",
    }


def test_a_dict_carries_a_field_the_contract_does_not_know_to_the_topic() -> None:
    """What `publish({...}, model=ChatEvent)` validates and sends: the extra field at the top level."""
    sent = {**chat_fields(), "extra_chat": "x"}
    event = validate(sent, ChatEvent)
    wire = orjson.loads(encode(event))
    assert wire["extra_chat"] == "x"
    assert {k: wire[k] for k in ("tenant_id", "dedupe_id", "conversation_id", "role", "content")} == {
        k: sent[k] for k in ("tenant_id", "dedupe_id", "conversation_id", "role", "content")
    }


def test_a_model_refuses_a_field_the_contract_does_not_know() -> None:
    """The report: `ChatEvent(..., extra_chat="x")` raises; the README and docstrings say a dict carries it."""
    with pytest.raises(ValidationError) as refused:
        ChatEvent(**chat_fields(), extra_chat="x")  # type: ignore[arg-type]
    assert [(e["loc"], e["type"]) for e in refused.value.errors()] == [(("extra_chat",), "extra_forbidden")]
