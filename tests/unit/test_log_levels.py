"""Library noise is demoted below error; what is not known noise keeps its level."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator

import orjson
import pytest

from streams import logs


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)
    yield stream
    root.handlers, root.level, sys.excepthook, threading.excepthook = saved
    logging.captureWarnings(False)


def logged(stream: io.StringIO) -> list[tuple[str, str, str]]:
    return [(e["logger"], e["level"], e["event"]) for e in map(orjson.loads, stream.getvalue().splitlines())]


def test_known_library_noise_is_demoted_and_repeats_are_logged_once(lines: io.StringIO) -> None:
    logging.getLogger("asyncio").error("Unclosed AIOKafkaConsumer\nconsumer: <AIOKafkaConsumer object>")
    for _ in range(50):  # aiokafka retries every few milliseconds while a broker is away
        logging.getLogger("aiokafka").error('Unable connect to "%s": %s', "127.0.0.1:1", "Connection refused")
    logging.getLogger("aiokafka.consumer.group_coordinator").warning(
        "Heartbeat failed for group %s because it is rebalancing", "g"
    )
    logging.getLogger("faust.tables.recovery").info("Worker ready")
    assert logged(lines) == [
        ("aiokafka", "warning", 'Unable connect to "127.0.0.1:1": Connection refused'),
        ("aiokafka.consumer.group_coordinator", "info", "Heartbeat failed for group g because it is rebalancing"),
    ]


def test_what_is_not_known_noise_keeps_its_level(lines: io.StringIO) -> None:
    try:
        raise RuntimeError("a bug inside the client")
    except RuntimeError:
        logging.getLogger("aiokafka").exception("Unexpected error in coordinator routine")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    logging.getLogger("mode.services").error("Error while stopping child")
    assert [(name, level) for name, level, _ in logged(lines)] == [
        ("aiokafka", "error"),
        ("asyncio", "error"),
        ("mode.services", "error"),
    ]
