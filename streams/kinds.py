"""The event kinds a worker consumes: topic, model and database writer of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.codec import UNKNOWN_FIELDS, Decoded, Rejected
from schemas.framing import DECODERS, ValueFormat
from schemas.metric import MetricEvent
from sinks.core.sink import RowWriter
from sinks.writers.analysis import AnalysisWriter
from sinks.writers.chat import ChatWriter
from sinks.writers.metric import MetricWriter
from streams.settings import Settings

Decoder = Callable[[bytes | None, type[Any], bytes | None, dict[str, Any] | None], Decoded[Any] | Rejected]


@dataclass(frozen=True)
class Kind:
    name: str
    topic: str
    dlq_topic: str
    model: type[BaseModel]
    writer: RowWriter
    # Deployment settings handed to decoding and the model's validators (`schemas.codec.decode`).
    context: dict[str, Any] = field(default_factory=dict)
    # EVENTSINK_<KIND>_VALUE_FORMAT; `decode` is chosen once for it (`schemas.framing.DECODERS`), so
    # the default `json` calls `schemas.codec.decode` itself. Every reader of the topic uses it.
    value_format: ValueFormat = "json"
    decode: Decoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", DECODERS[self.value_format])


def all_kinds(settings: Settings) -> list[Kind]:
    s = settings
    return [
        Kind(
            "metric",
            s.metrics_topic,
            s.metrics_dlq_topic or "",
            MetricEvent,
            MetricWriter(),
            {UNKNOWN_FIELDS: s.metric_unknown_fields},
            s.metric_value_format,
        ),
        Kind(
            "chat",
            s.chat_topic,
            s.chat_dlq_topic or "",
            ChatEvent,
            ChatWriter(),
            {"max_content_bytes": s.chat_max_content_bytes, UNKNOWN_FIELDS: s.chat_unknown_fields},
            s.chat_value_format,
        ),
        Kind(
            "analysis",
            s.analysis_topic,
            s.analysis_dlq_topic or "",
            AnalysisEvent,
            AnalysisWriter(),
            {UNKNOWN_FIELDS: s.analysis_unknown_fields},
            s.analysis_value_format,
        ),
    ]


def kinds(settings: Settings) -> list[Kind]:
    """The kinds this worker consumes (EVENTSINK_KINDS)."""
    wanted = settings.kind_names
    return [k for k in all_kinds(settings) if k.name in wanted]


def by_name(settings: Settings, name: str) -> Kind:
    for kind in all_kinds(settings):
        if kind.name == name or kind.topic == name:
            return kind
    raise KeyError(name)
