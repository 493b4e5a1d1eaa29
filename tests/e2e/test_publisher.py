"""The publisher library services use: validates before sending, keys by tenant."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from pydantic import ValidationError

from schemas import MetricEvent
from streams.publish.publisher import Publisher
from tests.helpers import Scenario, read_topic
from tests.workload import create_topics


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
