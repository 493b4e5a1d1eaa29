"""What each contender runs. Every process gets the environment an eventsink worker reads.

The metric scenario has every contender; the mixed one (metric, chat and analysis topics) only
eventsink's: the reference loop, the plain loop and the Quix app write metric events only. The latency scenario
(bench/latency.py) runs eventsink's and Quix's plans on a topic published to while they run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from bench import quixenv
from bench.measure import LedgerProbe, Plan, TableProbe
from bench.paced import LiveTopic
from bench.workload import Workload
from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics

SESSION_TIMEOUT_MS = 6000
# The variable naming each kind's topic (streams/settings.py).
TOPIC_VARIABLES = {
    "metric": "EVENTSINK_METRICS_TOPIC",
    "chat": "EVENTSINK_CHAT_TOPIC",
    "analysis": "EVENTSINK_ANALYSIS_TOPIC",
}


class Loaded(Protocol):
    """What a worker's environment needs of a scenario's topics (Workload, MixedWorkload, ...)."""

    @property
    def topics(self) -> dict[str, str]: ...

    @property
    def sent_per_topic(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Context:
    """One contender's run: its own database, consumer group and data directory."""

    bootstrap: str
    dsn: str
    workload: Loaded
    group: str
    data_dir: Path
    src: Path  # the snapshot of eventsink's sources to run (bench.revision)


def environment(ctx: Context) -> dict[str, str]:
    """Explicit about the kinds: a worker consumes metric, chat and analysis unless told otherwise."""
    topics = ctx.workload.topics
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap,
        "DATABASE_URL": ctx.dsn,
        "EVENTSINK_KINDS": ",".join(topics),
        **{TOPIC_VARIABLES[kind]: topic for kind, topic in topics.items()},
        "EVENTSINK_GROUP_ID": ctx.group,
        "EVENTSINK_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "EVENTSINK_DATA_DIR": str(ctx.data_dir),
        "EVENTSINK_LOG_LEVEL": "WARNING",
    }


def ledger_probe(ctx: Context) -> LedgerProbe:
    return LedgerProbe(ctx.group, ctx.workload.sent_per_topic)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_only(ctx: Context) -> Workload | LiveTopic:
    if not isinstance(ctx.workload, Workload | LiveTopic):
        raise TypeError("this contender writes metric events only: it runs in the metric and latency scenarios")
    return ctx.workload


def eventsink(ctx: Context, workers: int = 1, settings: Mapping[str, str] | None = None) -> Plan:
    """`eventsink worker` processes in one consumer group (dedupe table and ledger on);
    `settings`: EVENTSINK_* on top of the scenario's."""
    command = [sys.executable, "-m", "streams.cli", "worker"]
    # A web port of its own per worker (if its web server is on): they share this host.
    ports = [{"EVENTSINK_WEB_PORT": str(free_port())} for _ in range(workers)]
    env = {**environment(ctx), **(settings or {})}
    return Plan([command] * workers, env, ctx.src, ledger_probe(ctx), ctx.dsn, ports)


def reference(ctx: Context) -> Plan:
    metric_only(ctx)
    command = [sys.executable, "-m", "bench.reference"]
    return Plan([command], environment(ctx), ctx.src, ledger_probe(ctx), ctx.dsn)


def plain(ctx: Context) -> Plan:
    """The plain loop (issue 21): no ledger, so done is seen in the table, as for Quix."""
    workload = metric_only(ctx)
    command = [sys.executable, "-m", "bench.plain"]
    return Plan([command], environment(ctx), ctx.src, TableProbe(workload.unique), ctx.dsn)


def quix(ctx: Context, commit_interval: float = 5.0) -> Plan:
    """Quix Streams; 5 s is its default commit interval, the sink writes once per commit."""
    workload = metric_only(ctx)
    changelog = TopicSpec(
        quixenv.changelog_topic(ctx.group, workload.topic),
        workload.spec.partitions,
        1,
        # What Quix would create: compacted, the source's retention (derive_topic_config).
        {
            "cleanup.policy": "compact",
            "retention.ms": SOURCE_CONFIG["retention.ms"],
            "retention.bytes": "-1",
        },
    )
    asyncio.run(ensure_topics([ctx.bootstrap], [changelog]))
    command = [str(quixenv.ensure()), str(quixenv.APP), "--commit-interval", str(commit_interval)]
    return Plan([command], environment(ctx), ctx.src, TableProbe(workload.unique), ctx.dsn)


@dataclass(frozen=True)
class Contender:
    plan: Callable[[Context], Plan]
    description: str
    # Sources of its own (a snapshot of another revision, `--baseline`): its processes run them
    # and its database is migrated with their migrations. None: the run's sources.
    src: Path | None = None


def baseline(src: Path, rev: str) -> Contender:
    """One `eventsink worker` of another revision, measured in the same run as the tree's."""
    return Contender(eventsink, f"one `eventsink worker` process at {rev} (`--baseline`)", src)


CONTENDERS = {
    "eventsink": Contender(
        eventsink, "one `eventsink worker` process (Faust, dedupe table + ledger), EVENTSINK_KINDS=metric"
    ),
    "reference": Contender(reference, "plain aiokafka getmany + eventsink's Sink, no framework (bench/reference.py)"),
    "plain": Contender(
        plain, "plain loop: aiokafka group consumer + orjson + COPY/upsert, no validation (bench/plain.py)"
    ),
    "quix": Contender(
        quix,
        "Quix Streams, RocksDB-state dedupe + PostgreSQLSink ON CONFLICT DO NOTHING "
        "(bench/quix_app.py), its default 5 s commit interval",
    ),
    "eventsink2": Contender(partial(eventsink, workers=2), "two `eventsink worker` processes in one consumer group"),
    "eventsink2-count": Contender(
        partial(eventsink, workers=2, settings={"EVENTSINK_ASSIGN_BY_BACKLOG_RECORDS": "0"}),
        "the same two processes, partitions assigned by count only (EVENTSINK_ASSIGN_BY_BACKLOG_RECORDS=0)",
    ),
    "quix-1s": Contender(partial(quix, commit_interval=1.0), "the same Quix Streams app with 1 s commits"),
}

# The mixed scenario: eventsink only, every kind (EVENTSINK_KINDS=metric,chat,analysis).
MIXED_CONTENDERS = {
    "eventsink": Contender(eventsink, "one `eventsink worker` process, EVENTSINK_KINDS=metric,chat,analysis"),
    "eventsink2": Contender(partial(eventsink, workers=2), "two `eventsink worker` processes in one consumer group"),
}
