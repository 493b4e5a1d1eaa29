"""Which log a topic name means now: Kafka's topic id and the cluster id.

A topic deleted and created again keeps its name and restarts its offsets at 0 under a new
topic id; a replaced cluster has a new cluster id. The ledger stores both (once known) and a
worker compares them before skipping anything (`sinks.core.sink`, `streams.worker.positioning`).

aiokafka 0.14 only speaks Metadata v0-v5, which carry neither id, so this module declares the
Metadata v12 request and response (KIP-516, Kafka 2.8+) with aiokafka's own protocol types and
sends it through an aiokafka client. A broker that does not offer v12 gets no request: its ids
are unknown (None), and the worker falls back to comparing offsets with the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Schema, TaggedFields

METADATA_API_KEY = 3
_NO_ID = uuid.UUID(int=0)


class _Uuid(AbstractType):
    """Kafka's UUID type: 16 bytes (aiokafka 0.14 has none)."""

    @classmethod
    def encode(cls, value: uuid.UUID | None) -> bytes:
        return (value or _NO_ID).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        return uuid.UUID(bytes=data.read(16))


class MetadataResponseV12(Response):
    API_KEY = METADATA_API_KEY
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequestV12(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = METADATA_API_KEY
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponseV12
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _MetadataV12(Request[MetadataRequestV12]):
    API_KEY = METADATA_API_KEY

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[MetadataRequestV12]) -> MetadataRequestV12:
        return request_struct_class([(None, t, {}) for t in self._topics], False, False, {})


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """A topic's id and its cluster's, each None where the broker does not report it."""

    topic_id: uuid.UUID | None
    cluster_id: str | None


async def identities(client: Any, topics: Iterable[str]) -> dict[str, TopicIdentity]:
    """Ask the broker for the ids of `topics` through an aiokafka `AIOKafkaClient` (bootstrapped).

    A topic the broker does not know is left out; every id is None when the broker does not
    offer Metadata v12. Raises what the client raises on I/O errors.
    """
    names = sorted(set(topics))
    node = client.get_random_node()
    try:
        response = await client.send(node, _MetadataV12(names))
    except (IncompatibleBrokerVersion, NotImplementedError):  # no Metadata v12 on this broker
        return {t: TopicIdentity(None, None) for t in names}
    cluster = response.cluster_id or None
    found = {}
    for error_code, name, topic_id, *_ in response.topics:
        if error_code == 0:
            found[name] = TopicIdentity(None if topic_id == _NO_ID else topic_id, cluster)
    return found


async def broker_identities(
    bootstrap: list[str], security: Mapping[str, Any], topics: Iterable[str]
) -> dict[str, TopicIdentity]:
    """`identities` through a client of its own (a connection per call): for the command line."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **dict(security))
    try:
        await client.bootstrap()
        return await identities(client, topics)
    finally:
        await client.close()


def log_changed(
    ledger_last: int,
    ledger_topic_id: uuid.UUID | None,
    ledger_cluster_id: str | None,
    now: TopicIdentity | None,
    end_offset: int | None,
) -> str | None:
    """Why a partition's log is not the one its ledger row counted, or None if it is (or nothing
    was applied yet). The worker's rule (`streams.worker.positioning`): ids where the broker
    reports them; otherwise a log that ends below the ledger is taken for a new one."""
    if ledger_last < 0:
        return None
    if now is not None and now.topic_id is not None and ledger_topic_id not in (None, now.topic_id):
        return f"topic id is {now.topic_id}, the ledger counted {ledger_topic_id} (recreated topic)"
    if now is not None and now.cluster_id is not None and ledger_cluster_id not in (None, now.cluster_id):
        return f"cluster is {now.cluster_id}, the ledger counted {ledger_cluster_id}"
    if (now is None or now.topic_id is None) and end_offset is not None and end_offset < ledger_last + 1:
        return f"the log ends at {end_offset}, below the ledger's {ledger_last + 1} (recreated topic?)"
    return None
