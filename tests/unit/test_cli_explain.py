"""`streams.cli.main.explain`: a failure's one line says what to do where it can."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaTimeoutError


def test_a_broker_that_stopped_answering_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay whose broker died mid-send ended with `error: KafkaTimeoutError` and nothing else."""
    from streams.cli.main import explain

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1.internal:9092")
    what, hint = explain(KafkaTimeoutError())
    assert what == "KafkaTimeoutError"
    assert hint.startswith("the Kafka broker at kafka-1.internal:9092 did not answer in time")
