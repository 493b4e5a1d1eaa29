"""EVENTSINK_GC_YOUNG_THRESHOLD: every value the settings accept is one Python's collector takes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.worker.run import _tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.parametrize("value", ["0", "700", "20000", "10000000"])
def test_an_accepted_value_is_applied(value: str, monkeypatch: pytest.MonkeyPatch, thresholds: None) -> None:
    monkeypatch.setenv("EVENTSINK_GC_YOUNG_THRESHOLD", value)
    before = gc.get_threshold()
    _tune_gc(Settings().gc_young_threshold)
    assert gc.get_threshold() == ((before[0] if value == "0" else int(value)), *before[1:])


@pytest.mark.parametrize("value", ["-1", "10000001", "2147483648", "abc"])
def test_a_value_the_collector_cannot_take_is_refused_at_start(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSINK_GC_YOUNG_THRESHOLD", value)
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        Settings()
