"""Producers that publish through Confluent's JSON Schema serializer, with real workers.

Values are framed by confluent-kafka's own JSONSerializer (its mock registry client standing in for
a Schema Registry); the frames that must be wrong are written by hand after Confluent's documented
wire format. Under `confluent-json` the worker applies the events with their schema id and
dead-letters what breaks eventsink's contract or the frame, each with a true reason; under `json`
(the default) the same records stay `invalid_json`, and replay brings them back once the kind's
format is set. tail, verify and dlq list read them as the worker does.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.helpers import Scenario, WorkerProcess, read_topic, wait_applied, wait_until
from tests.truthful import untrue
from tests.workload import Sent, create_topics, send_raw

pytestmark = pytest.mark.e2e

PUBLISHED = Path(__file__).resolve().parents[2] / "schemas" / "published"
CONFLUENT = {"EVENTSINK_METRIC_VALUE_FORMAT": "confluent-json"}
# A producer's own registered schema, looser than eventsink's contract.
LOOSE = json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "title": "Loose", "type": "object"})


class Producer:
    """What a JVM or .NET service does: a JSON Schema serializer registered in a Schema Registry."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})

    def frame(self, obj: dict[str, Any], schema: str) -> tuple[bytes, int]:
        value = JSONSerializer(schema, self.registry)(obj, SerializationContext(self.topic, MessageField.VALUE))
        return value, self.registry.get_latest_version(f"{self.topic}-value").schema_id


def metric(tenant: str, dedupe_id: str, **change: Any) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "dedupe_id": dedupe_id,
        "name": "cpu",
        "value": 1.5,
        "occurred_at": "2024-05-01T12:00:00.000001Z",
        "tags": {"host": "h"},
        **change,
    }


def worker(s: Scenario, tag: str, **env: str) -> WorkerProcess:
    return WorkerProcess(s.env(**env), s.data_dir / f"{tag}.log").start()


def rows(dsn: str, tenant: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT dedupe_id, value, attributes FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        )
        return {r[0]: (r[1], r[2]) for r in found}


def test_a_worker_applies_confluent_framed_records_and_dead_letters_bad_frames_truly(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    key = tenant.encode()
    producer = Producer(s.topic)
    good = []
    for i in range(40):
        value, schema_id = producer.frame(
            metric(tenant, f"m{i}", value=float(i)), (PUBLISHED / "metric.schema.json").read_text()
        )
        good.append((key, value))
    # The producer's registry accepted it (its schema is loose); eventsink's contract does not.
    broken, loose_id = producer.frame(metric(tenant, "broken", value="1.5"), LOOSE)
    assert loose_id != schema_id
    plain = orjson.dumps(metric(tenant, "plain"))  # no frame: starts with '{'
    wrong_magic = struct.pack(">bI", 1, schema_id) + orjson.dumps(metric(tenant, "magic"))
    short = b"\x00\x00\x01"
    bad = {"broken": broken, "plain": plain, "wrong_magic": wrong_magic, "short": short}
    send_raw(s, sent, good + [(key, v) for v in bad.values()], unique={tenant: 40})
    w = worker(s, "confluent", **CONFLUENT)
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0

    # Every event of the frames, exactly as sent, with the schema id its serializer registered.
    assert rows(s.dsn, tenant) == {f"m{i}": (float(i), {"confluent_schema_id": schema_id}) for i in range(40)}
    letters = {d.value: d.info for d in asyncio.run(read_topic(s.bootstrap, s.dlq_topic))}
    assert set(letters) == set(bad.values()), "each bad record dead-lettered once, byte for byte"
    reasons = {name: (letters[v].reason, letters[v].detail) for name, v in bad.items()}
    assert reasons["broken"][0] == "invalid_event"
    assert reasons["broken"][1].startswith("value:") and f"(Confluent schema id {loose_id})" in reasons["broken"][1]
    assert untrue(*reasons["broken"], broken[5:], key) is None
    assert (
        reasons["plain"][0] == "invalid_frame" and "byte 0x7b, not the Confluent magic byte 0x00" in reasons["plain"][1]
    )
    assert reasons["wrong_magic"][0] == "invalid_frame" and "byte 0x01" in reasons["wrong_magic"][1]
    assert reasons["short"][0] == "invalid_frame" and "3 byte(s) is shorter than" in reasons["short"][1]
    for name in ("plain", "wrong_magic", "short"):
        assert untrue(*reasons[name], bad[name], key) is None

    # verify reads the topic as the worker does: nothing missing, nothing duplicated.
    done = s.cli("verify", s.topic, "--json", dsn=s.dsn, **CONFLUENT)
    report = orjson.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], report["problems"]
    assert report["total"]["applied"] == 40 and report["total"]["in_dlq"] == 4

    # tail shows the events with their schema id, and the bad records with their reasons.
    tail = s.cli("tail", s.topic, "--from-beginning", "--format", "json", **CONFLUENT)
    assert tail.returncode == 0, tail.stderr
    shown = [orjson.loads(line) for line in tail.stdout.splitlines()]
    valid = [r["event"] for r in shown if r["valid"]]
    assert sorted(e["dedupe_id"] for e in valid) == sorted(f"m{i}" for i in range(40))
    assert all(e["attributes"] == {"confluent_schema_id": schema_id} for e in valid)
    assert sorted(r["error"]["reason"] for r in shown if not r["valid"]) == [
        "invalid_event",
        "invalid_frame",
        "invalid_frame",
        "invalid_frame",
    ]

    # dlq list gives the JSON behind the header, and the header's schema id.
    listed = s.cli("dlq", "list", s.dlq_topic, "--json", "--reason", "invalid_event", **CONFLUENT)
    assert listed.returncode == 0, listed.stderr
    [letter] = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert letter["confluent_schema_id"] == loose_id
    assert orjson.loads(letter["value"]) == metric(tenant, "broken", value="1.5")


def test_under_json_framed_records_are_invalid_json_and_replay_applies_them_once_the_format_is_set(
    scenario: Scenario,
) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    producer = Producer(s.topic)
    records = []
    for i in range(30):
        value, schema_id = producer.frame(metric(tenant, f"r{i}"), (PUBLISHED / "metric.schema.json").read_text())
        records.append((tenant.encode(), value))
    send_raw(s, sent, records, unique={tenant: 30})
    strict = worker(s, "json")  # the default: the frame is not JSON
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert strict.stop() == 0
    dead = asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    assert sorted(d.value for d in dead) == sorted(v for _, v in records)
    assert {d.info.reason for d in dead} == {"invalid_json"} and rows(s.dsn, tenant) == {}

    framed = worker(s, "confluent", **CONFLUENT)
    try:
        done = s.cli("dlq", "replay", s.dlq_topic, "--reason", "invalid_json", **CONFLUENT)
        assert done.returncode == 0 and "replayed 30 record(s)" in done.stderr, done.stderr
        wait_until(lambda: len(rows(s.dsn, tenant)) == 30, 90, what="replayed frames applied")
    finally:
        assert framed.stop() == 0
    assert rows(s.dsn, tenant) == {f"r{i}": (1.5, {"confluent_schema_id": schema_id}) for i in range(30)}
