"""The publisher library services use: every kind out of the box, validated as the workers read
it, keyed by tenant; what `publish` returns and when the broker has the record."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka.structs import RecordMetadata
from pydantic import BaseModel, ValidationError

from schemas import AnalysisEvent, ChatEvent, MetricEvent
from streams.publish.publisher import Publisher
from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics
from tests.helpers import Scenario, WorkerProcess, read_topic, wait_applied
from tests.workload import create_topics

pytestmark = pytest.mark.e2e


async def test_publishes_valid_events_keyed_by_tenant(scenario: Scenario) -> None:
    await asyncio.to_thread(create_topics, scenario)
    tenant = str(uuid.uuid4())
    event = {
        "tenant_id": tenant,
        "dedupe_id": "a",
        "name": "cpu",
        "value": 1,
        "occurred_at": "2024-05-01T12:00:00+02:00",
        "tags": {},
    }
    async with Publisher(scenario.bootstrap, topics={MetricEvent: scenario.topic}) as pub:
        fut = await pub.publish(event)
        with pytest.raises(ValidationError):
            await pub.publish({**event, "value": "NaN"})
    metadata = await fut
    records = await read_topic(scenario.bootstrap, scenario.topic)
    assert [(r.partition, r.offset) for r in records] == [(metadata.partition, metadata.offset)]
    assert records[0].key == tenant.encode()
    body = orjson.loads(records[0].value)  # type: ignore[arg-type]
    assert body["occurred_at"] == "2024-05-01T10:00:00Z" and body["value"] == 1.0


async def test_every_event_of_a_tenant_goes_to_one_partition(scenario: Scenario) -> None:
    await asyncio.to_thread(create_topics, scenario)
    tenant = str(uuid.uuid4())
    async with Publisher(scenario.bootstrap, topics={MetricEvent: scenario.topic}) as pub:
        for i in range(50):
            await pub.publish(
                {
                    "tenant_id": tenant,
                    "dedupe_id": f"e{i}",
                    "name": "n",
                    "value": i,
                    "occurred_at": "2024-05-01T12:00:00Z",
                    "tags": {},
                }
            )
    records = await read_topic(scenario.bootstrap, scenario.topic)
    assert len(records) == 50 and len({r.partition for r in records}) == 1


def fields(kind: str, tenant: str, dedupe_id: str) -> dict[str, Any]:
    """A valid event of `kind` (as a service would write it)."""
    common = {"tenant_id": tenant, "dedupe_id": dedupe_id, "occurred_at": "2024-05-01T12:00:00.000001Z"}
    if kind == "metric":
        return {**common, "name": "latency", "value": 12.5, "tags": {"route": "/"}}
    if kind == "chat":
        return {
            **common,
            "conversation_id": str(uuid.uuid5(uuid.NAMESPACE_URL, tenant)),
            "role": "user",
            "content": "hi",
        }
    return {**common, "analysis_id": str(uuid.uuid5(uuid.NAMESPACE_URL, dedupe_id)), "status": "pending"}


MODELS: dict[str, type[BaseModel]] = {"metric": MetricEvent, "chat": ChatEvent, "analysis": AnalysisEvent}
TABLES = {"metric": "metrics_raw", "chat": "chat_messages", "analysis": "analysis_events"}


@pytest.mark.parametrize("kind", ["metric", "chat", "analysis"])
def test_every_kind_is_published_to_its_topic_and_applied_by_a_worker(
    scenario: Scenario, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publisher(...).publish(ChatEvent(...)) failed with a bare KeyError, and a field the contract
    does not know was refused (extra_forbidden) although the workers keep it."""
    s = scenario
    topic = {"metric": s.topic, "chat": s.chat_topic, "analysis": s.analysis_topic}[kind]
    asyncio.run(ensure_topics([s.bootstrap], [TopicSpec(topic, 4, config=SOURCE_CONFIG)]))
    # The topics come from the settings the workers read: the scenario's names, not the defaults.
    for name, value in s.env().items():
        if name.endswith("_TOPIC"):
            monkeypatch.setenv(name, value)
    tenant, model = str(uuid.uuid4()), MODELS[kind]
    as_model = model.model_validate(fields(kind, tenant, "as-model"))
    with_extra = {**fields(kind, tenant, "with-extra"), "region": "eu-west", "trace": {"id": 7}}

    async def go() -> tuple[list[asyncio.Future[RecordMetadata]], list[RecordMetadata]]:
        async with Publisher(s.bootstrap) as pub:
            futures = [await pub.publish(as_model), await pub.publish(with_extra, model=model)]
            assert all(isinstance(f, asyncio.Future) for f in futures)
            await pub.flush()  # every record acknowledged: each future resolved
            assert all(f.done() and not f.exception() for f in futures)
            return futures, [f.result() for f in futures]

    _, metadata = asyncio.run(go())
    assert {m.topic for m in metadata} == {topic} and len({m.partition for m in metadata}) == 1
    # The broker has them where the futures said, keyed by tenant, the extra field at the top level.
    on_topic = {(r.partition, r.offset): r for r in asyncio.run(read_topic(s.bootstrap, topic))}
    sent = [on_topic[(m.partition, m.offset)] for m in metadata]
    assert {r.key for r in sent} == {tenant.encode()}
    assert orjson.loads(sent[1].value)["region"] == "eu-west"  # type: ignore[arg-type]

    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, topic, {metadata[0].partition: max(m.offset for m in metadata)})
    finally:
        assert w.stop() == 0
    with psycopg.connect(s.dsn) as conn:
        rows = conn.execute(
            f"SELECT dedupe_id, attributes FROM eventsink.{TABLES[kind]} WHERE tenant_id = %s ORDER BY dedupe_id",
            (tenant,),
        ).fetchall()
    assert rows == [("as-model", None), ("with-extra", {"region": "eu-west", "trace": {"id": 7}})]


def test_an_unknown_event_type_is_a_type_error_naming_the_kinds() -> None:
    class Invoice(BaseModel):
        tenant_id: str

    async def go() -> None:
        pub = Publisher("127.0.0.1:1")  # never started: nothing is sent
        try:
            await refuse(pub)
        finally:
            await pub.stop()

    async def refuse(pub: Publisher) -> None:
        for wrong in (Invoice(tenant_id="t"), ["not", "an", "event"]):
            with pytest.raises(TypeError) as refused:
                await pub.publish(wrong)  # type: ignore[arg-type]
            assert "cannot publish" in str(refused.value)
        with pytest.raises(TypeError, match=r"MetricEvent .*ChatEvent .*AnalysisEvent"):
            await pub.publish({"tenant_id": "t"}, model=Invoice)

    asyncio.run(go())
