"""The event kinds a worker consumes: topic, model and database writer of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.codec import UNKNOWN_FIELDS
from schemas.metric import MetricEvent
from sinks.core.sink import RowWriter
from sinks.writers.analysis import AnalysisWriter
from sinks.writers.chat import ChatWriter
from sinks.writers.metric import MetricWriter
from streams.settings import Settings


@dataclass(frozen=True)
class Kind:
    name: str
    topic: str
    dlq_topic: str
    model: type[BaseModel]
    writer: RowWriter
    # Deployment settings handed to decoding and the model's validators (`schemas.codec.decode`).
    context: dict[str, Any] = field(default_factory=dict)


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
        ),
        Kind(
            "chat",
            s.chat_topic,
            s.chat_dlq_topic or "",
            ChatEvent,
            ChatWriter(),
            {"max_content_bytes": s.chat_max_content_bytes, UNKNOWN_FIELDS: s.chat_unknown_fields},
        ),
        Kind(
            "analysis",
            s.analysis_topic,
            s.analysis_dlq_topic or "",
            AnalysisEvent,
            AnalysisWriter(),
            {UNKNOWN_FIELDS: s.analysis_unknown_fields},
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
