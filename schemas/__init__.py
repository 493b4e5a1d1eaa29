"""Event models and codecs: the wire contract of eventsink's topics.

This package imports nothing else of eventsink, so services can depend on it alone.
"""

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.codec import Decoded, Rejected, decode, dedupe_digest, encode
from schemas.deadletter import DeadLetter, Reason
from schemas.metric import MetricEvent

__all__ = [
    "AnalysisEvent",
    "ChatEvent",
    "DeadLetter",
    "Decoded",
    "MetricEvent",
    "Reason",
    "Rejected",
    "decode",
    "dedupe_digest",
    "encode",
]
