"""One small test per private name of faust-streaming, mode and aiokafka that
`streams/worker/faust_internals.py` relies on: an upgrade fails here, not in a production worker.

The app is built but never started: nothing here needs a broker.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.subscription_state import TopicPartitionState
from faust.transport.conductor import Conductor
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import aiokafka_internals
from streams.aiokafka_internals import instrument
from streams.worker import faust_internals as fi


@pytest.fixture(scope="module")
def app() -> Iterator[fi.EventsinkApp]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield fi.EventsinkApp(
        "internals-test", broker="kafka://127.0.0.1:9", autodiscover=False, web_enabled=False, store="memory://"
    )
    loop.close()


def test_the_installed_faust_is_the_one_the_module_was_written_against(monkeypatch: pytest.MonkeyPatch) -> None:
    fi.check_version()
    monkeypatch.setattr(fi.metadata, "version", lambda name: "0.16.0")
    with pytest.raises(fi.UnsupportedFaust, match=r"faust-streaming==0\.15\.3"):
        fi.check_version()


def test_the_installed_aiokafka_is_the_one_the_private_api_was_read_in(monkeypatch: pytest.MonkeyPatch) -> None:
    aiokafka_internals.check_version()
    monkeypatch.setattr(aiokafka_internals.metadata, "version", lambda name: "0.15.0")
    with pytest.raises(aiokafka_internals.UnsupportedAiokafka, match=r"aiokafka==0\.14\.0"):
        aiokafka_internals.check_version()
    with pytest.raises(aiokafka_internals.UnsupportedAiokafka):
        aiokafka_internals.instrument()


def test_the_app_builds_its_transport_through_new_transport(app: fi.EventsinkApp) -> None:
    assert "_new_transport" in vars(faust.App)
    assert isinstance(app.consumer, fi.LedgerConsumer)
    assert isinstance(app.topics, fi.LeanConductor)


def test_faust_drain_loop_is_the_one_our_copy_follows() -> None:
    # LedgerConsumer._drain_messages is Faust's loop with another hand-over: if Faust's changes,
    # read the new one and port the change (then update this digest).
    source = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
    )


def test_the_consumer_state_the_drain_loop_and_positioning_use(app: fi.EventsinkApp) -> None:
    consumer = app.consumer
    for name in ("_read_offset", "_committed_offset", "_commit_every", "_n_acked", "diag", "suspend_flow"):
        assert hasattr(consumer, name), name
    for name in ("_add_gap", "wait_first", "perform_seek", "seek", "callback", "getmany"):
        assert callable(getattr(consumer, name)), name
    assert isinstance(consumer._thread, fi.LedgerConsumerThread)


def test_holding_a_partition_is_aiokafkas_pause_run_on_faust_consumer_thread(app: fi.EventsinkApp) -> None:
    assert callable(AIOKafkaConsumer.pause) and callable(AIOKafkaConsumer.resume)
    assert list(inspect.signature(faust_aiokafka.AIOKafkaConsumerThread.call_thread).parameters)[:2] == [
        "self",
        "fun",
    ]
    # Faust's own pause only filters its active set (what `hold` must not rely on).
    assert "_active_partitions" in inspect.getsource(Consumer.getmany) or "active_partitions" in inspect.getsource(
        Consumer.getmany
    )


def test_the_conductor_internals_the_hand_over_uses(app: fi.EventsinkApp) -> None:
    conductor = app.topics
    assert isinstance(conductor._tp_to_callback_lock, asyncio.Lock)
    assert isinstance(conductor._tp_index, dict)
    assert hasattr(conductor, "_topics")
    assert list(inspect.signature(Conductor._build_handler).parameters) == ["self", "tp", "channels"]
    buffer = app.producer.buffer
    assert callable(buffer.pending.qsize) and isinstance(buffer.max_messages, int)
    assert callable(buffer.wait_until_ebb)


def test_the_agents_read_what_faust_stream_would_maintain(app: fi.EventsinkApp) -> None:
    assert isinstance(app.monitor.stream_inbound_time, dict)
    assert callable(app.flow_control.is_active)
    assert hasattr(app, "consumer_generation_id")


def test_the_current_event_is_a_context_variable_of_weak_references() -> None:
    from faust.streams import _current_event

    assert isinstance(_current_event, contextvars.ContextVar)
    with fi.table_partition("topic", 3):
        event = _current_event.get()()  # type: ignore[misc]
        assert (event.message.topic, event.message.partition) == ("topic", 3)
    assert _current_event.get(None) is None


def test_the_consumer_thread_methods_we_extend_and_call() -> None:
    thread = faust_aiokafka.AIOKafkaConsumerThread
    assert list(inspect.signature(thread._create_worker_consumer).parameters) == ["self", "transport"]
    assert list(inspect.signature(thread._fetch_records).parameters) == [
        "self",
        "consumer",
        "active_partitions",
        "timeout",
        "max_records",
    ]
    assert callable(thread.call_thread) and callable(thread._ensure_consumer)
    # isolation_level is read from this attribute when the consumer starts its fetcher.
    assert "self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert "in_transaction" in inspect.getsource(thread._create_worker_consumer)


def test_aiokafka_moves_a_fetch_position_only_through_these_methods() -> None:
    instrument()
    for name in ("seek", "reset_to", "await_reset"):
        assert callable(getattr(TopicPartitionState, name))
    moves = [line.strip() for line in inspect.getsource(TopicPartitionState).splitlines() if "_position =" in line]
    # The constructor, await_reset, consumed_to (consumption), reset_to and seek; nothing else.
    assert len(moves) == 5, moves


def test_the_table_managers_start_is_faust_s_but_for_its_sleep() -> None:
    """LeanTableManager.on_start repeats TableManager.on_start without `sleep(1.0)`: if Faust's
    start changes, this fails and the copy must be looked at again."""
    from faust.tables.manager import TableManager

    body = [line.strip() for line in inspect.getsource(TableManager.on_start).splitlines()]
    steps = [line for line in body if line.startswith(("await", "if"))]
    assert steps == [
        "await self.sleep(1.0)",
        "if not self.should_stop:",
        "await self._update_channels()",
        "await self.recovery.start()",
    ]
    assert fi.LeanTableManager.__mro__[1] is TableManager


def test_the_worker_app_uses_the_lean_table_manager(tmp_path: Path) -> None:
    from streams.settings import Settings
    from streams.worker.app import faust_config

    config = faust_config(Settings(data_dir=str(tmp_path)))
    app = fi.EventsinkApp("lean-tables-test", **{**config, "web_enabled": False})
    assert isinstance(app.tables, fi.LeanTableManager)


def test_readiness_asks_the_producers_client() -> None:
    assert "_producer" in faust_aiokafka.Producer.__annotations__
    assert "self._producer" in inspect.getsource(faust_aiokafka.Producer._ensure_producer)


def test_faust_worker_keeps_its_spinner_in_an_attribute() -> None:
    assert "self.spinner = " in inspect.getsource(faust.Worker.__init__)


def test_log_gaps_trust_only_holes_inside_one_log_read() -> None:
    gaps = fi.LogGaps()
    state = SimpleNamespace(_eventsink_jumps=0)
    tp = TopicPartition("t", 0)
    records = {tp: [SimpleNamespace(offset=o) for o in (5, 7, 8)]}  # a marker at 6
    gaps.observe({tp: state}, {tp: 0}, records)
    assert gaps.verified(TP("t", 0), 5, 7)
    assert not gaps.verified(TP("t", 0), 5, 7)  # consumed once
    # The next read continues the same log: a hole at its start is the log's too...
    gaps.observe({tp: state}, {tp: 0}, {tp: [SimpleNamespace(offset=10)]})
    assert gaps.verified(TP("t", 0), 8, 10)
    # ...unless the position was moved (a seek) in between.
    state._eventsink_jumps = 1
    gaps.observe({tp: state}, {tp: 0}, {tp: [SimpleNamespace(offset=20)]})
    assert not gaps.verified(TP("t", 0), 10, 20)


def test_the_worker_consumer_reads_committed_records_only(app: fi.EventsinkApp) -> None:
    """Aborted transactions are never applied. The embedded broker cannot show it (Tansu serves
    aborted records even to read_committed consumers), so this checks the consumer the worker
    builds: aiokafka's fetcher filters by this setting."""

    async def build() -> object:  # aiokafka objects are made inside a running loop
        return app.consumer._thread._create_worker_consumer(app.consumer.transport)

    consumer = asyncio.get_event_loop().run_until_complete(build())
    assert consumer._isolation_level == "read_committed"  # type: ignore[attr-defined]


def test_the_worker_consumer_waits_for_records_as_configured(app: fi.EventsinkApp) -> None:
    """Faust fixes the fetch wait at 1500 ms; the worker's consumer takes EVENTSINK_FETCH_MAX_WAIT_MS."""
    app.consumer.fetch_max_wait_ms = 120  # type: ignore[attr-defined]

    async def build() -> object:
        return app.consumer._thread._create_worker_consumer(app.consumer.transport)

    consumer = asyncio.get_event_loop().run_until_complete(build())
    assert consumer._fetch_max_wait_ms == 120  # type: ignore[attr-defined]


def test_aiokafka_reads_fetched_records_as_our_getall_copy_expects() -> None:
    from aiokafka.consumer.fetcher import FetchResult, PartitionRecords

    instrument()
    for name in ("check_assignment", "has_more", "_update_position"):
        assert callable(getattr(FetchResult, name)), name
    assert "self.next_fetch_offset" in inspect.getsource(PartitionRecords)
    assert "_eventsink_partition" in inspect.getsource(FetchResult.getall)


def test_slices_cut_fetches_into_runs_of_about_size_records_keeping_every_record_in_order() -> None:
    a, b = TP("t", 0), TP("t", 1)
    fetches = [fi.Fetched(a, list(range(600)), 3, 6000), fi.Fetched(b, list(range(100, 130)), 3, 300)]
    parts = list(fi.slices(fetches, 256))
    assert [sum(len(f.records) for f in part) for part in parts] == [256, 256, 118]
    assert [(f.tp, r) for part in parts for f in part for r in f.records] == [(a, r) for r in range(600)] + [
        (b, r) for r in range(100, 130)
    ]
    assert {f.generation_id for part in parts for f in part} == {3}
    # One small fetch is handed on as it is.
    small = fi.Fetched(b, [1, 2], 3, 20)
    assert [[f.records for f in part] for part in fi.slices([small], 256)] == [[[1, 2]]]
