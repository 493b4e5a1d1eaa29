"""Analysis load: requests walking through their states, some duplicated, some out of order.

The report says what was sent: counts, how each analysis's life ends, how many lives were sent
shuffled. What the database must hold is computed from the topic (`streams.tools.expected`).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from streams.dev.loadgen.metric import Counts, Load, Sender
from streams.publish.publisher import Publisher

KINDS = ("transcription", "moderation", "summary", "object-detection")


@dataclass
class AnalysisLoad(Load):
    analyses: int = 100
    out_of_order: float = 0.3
    failed: float = 0.15
    deleted: float = 0.1


@dataclass
class AnalysisReport(Counts):
    analyses: int = 0
    final_status: Counter[str] = field(default_factory=Counter)  # the status each life ends with
    shuffled: int = 0  # lives whose events were sent out of time order

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "analyses": self.analyses, "final_status": dict(self.final_status)}


def _life(rng: random.Random, load: AnalysisLoad, tenant: str, aid: str, run: str, at: datetime) -> list[dict]:
    """One analysis's events, in the order they are to be sent (shuffled for some)."""
    events: list[dict] = []

    def add(status: str, **fields: object) -> None:
        nonlocal at
        at += timedelta(milliseconds=rng.randint(5, 3000))
        events.append(
            {
                "tenant_id": tenant,
                "dedupe_id": f"{run}-{aid[:8]}-{len(events)}",
                "analysis_id": aid,
                "status": status,
                "occurred_at": at.isoformat().replace("+00:00", "Z"),
                **fields,
            }
        )

    add("pending", kind=rng.choice(KINDS), media_url=f"s3://media/{aid}.mp4")
    for progress in sorted(rng.sample(range(5, 95, 5), rng.randint(1, 3))):
        add("processing", progress=progress)
    if rng.random() < load.failed:
        add("failed", error=rng.choice(["decoder crashed", "media not found", "timeout"]))
    else:
        add("completed", result={"score": round(rng.random(), 4), "labels": rng.sample(KINDS, 2)})
    if rng.random() < load.deleted:
        add("deleted")
    if rng.random() < load.out_of_order:
        rng.shuffle(events)
    return events


def _at(body: dict) -> datetime:
    return datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00"))


async def produce_analysis(
    publisher: Publisher,
    topic: str,
    load: AnalysisLoad,
    on_progress: Callable[[int], None] | None = None,
    report: AnalysisReport | None = None,
) -> AnalysisReport:
    rng, tenants, run = load.start()
    report = report if report is not None else AnalysisReport()
    queues: dict[str, list[dict]] = {}
    base = datetime.now(UTC) - timedelta(hours=2)
    for i in range(load.analyses):
        aid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tenant = rng.choice(tenants)
        life = _life(rng, load, tenant, aid, run, base + timedelta(seconds=i))
        report.analyses += 1
        # The life's last event in time: `deleted` if it was deleted, else completed or failed.
        report.final_status[max(life, key=_at)["status"]] += 1
        report.shuffled += life != sorted(life, key=_at)
        queues[aid] = life
    sent_bytes: list[tuple[bytes, bytes]] = []
    sender = Sender(publisher, topic, report, load.rate, on_progress)
    while queues:
        if sent_bytes and rng.random() < load.duplicates:
            key, value = rng.choice(sent_bytes[-500:])
            report.duplicates += 1
        else:
            aid = rng.choice(list(queues))
            body = queues[aid].pop(0)
            if not queues[aid]:
                del queues[aid]
            key, value = body["tenant_id"].encode(), orjson.dumps(body)
            sent_bytes.append((key, value))
            report.unique += 1
        await sender.send(key, value)
    await sender.close()
    return report
