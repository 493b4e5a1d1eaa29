"""A worker's HTTP endpoints, on Faust's web server: /metrics, /healthz, /readyz.

/healthz says whether the process should be left running: 503 once a pipeline crashed (the
worker is exiting to restart from the ledger), while fetching from the broker keeps failing, or
once no database node taking writes has been reachable for EVENTSINK_DB_UNREACHABLE_UNHEALTHY_S
(a supervisor then restarts a worker that may be stuck); "degraded" while a kind's batches fail
to commit (its `database` entry says since when and why: no primary reachable during a failover,
a lock or statement timeout); its body lists the partitions that are stalled (records waiting,
ledger not advancing) or stopped for an operator, and the database or broker it cannot reach,
which a restart would not cure and so do not fail it (`degraded`). /readyz says whether the
worker can do its job: the broker and PostgreSQL answer (on a connection of its own, so that
writers holding every connection of their pools do not read as a database that is down), and it
holds partitions (a worker without any, in a group with more
workers than partitions, is idle and reports so). Every body is scrubbed of secrets
(`sinks.secrets`): a check's error is a library's text, which could quote one.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sinks.secrets import scrub, scrub_data
from streams.worker import telemetry
from streams.worker.faust_internals import broker_metadata

if TYPE_CHECKING:
    from streams.worker.app import Runtime

CHECK_TIMEOUT_S = 2.0
# aiohttp refuses a charset in content_type (it adds it); the exposition format is UTF-8.
CONTENT_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


async def _database(runtime: Runtime) -> str | None:
    try:
        async with runtime.check_pool.connection(timeout=CHECK_TIMEOUT_S) as conn:
            await asyncio.wait_for(conn.execute("SELECT 1"), CHECK_TIMEOUT_S)
        return None
    except Exception as exc:
        return scrub(f"{type(exc).__name__}: {exc}")[:300]  # scrubbed whole, then cut


async def _broker(runtime: Runtime) -> str | None:
    try:
        await asyncio.wait_for(broker_metadata(runtime.app), CHECK_TIMEOUT_S)
        return None
    except Exception as exc:
        return scrub(f"{type(exc).__name__}: {exc}")[:300] or "unreachable"


async def readiness(runtime: Runtime) -> dict[str, Any]:
    app = runtime.app
    db_error, broker_error = await asyncio.gather(_database(runtime), _broker(runtime))
    assigned: dict[str, list[int]] = {topic: [] for topic in runtime.pipelines}
    try:
        for tp in app.consumer.assignment():
            if tp.topic in assigned:
                assigned[tp.topic].append(tp.partition)
    except Exception:  # the consumer is not started yet
        pass
    if app.rebalancing:
        partitions = "rebalancing"
    else:
        partitions = "ok" if any(assigned.values()) else "none assigned"
    checks = {"database": db_error or "ok", "broker": broker_error or "ok", "partitions": partitions}
    return {
        "ready": all(v == "ok" for v in checks.values()),
        "checks": checks,
        "assigned": {t: sorted(p) for t, p in assigned.items()},
        "group": runtime.settings.group_id,
        "pid": os.getpid(),
    }


# Consecutive failed fetches after which /healthz reports the worker unhealthy.
FETCH_ERRORS_UNHEALTHY = 5
# Seconds of records waiting without the ledger advancing after which a partition is "stalled".
STALLED_AFTER_S = 60.0


def _database_health(runtime: Runtime) -> tuple[dict[str, str], list[str]]:
    """Per topic whose batches fail to commit, since when and why; and the problem to report
    once no node taking writes has been reachable for longer than the settings allow."""
    failing, problems = {}, []
    s = runtime.settings
    bound = s.db_unreachable_unhealthy_s
    # A batch being retried fails again at least this often (backoff, waiting for a connection,
    # the transaction's bound); failures older than that were of partitions this worker lost.
    retried_within = s.retry_max_s + s.db_connect_timeout_s + s.db_transaction_timeout_s + 10
    for topic, sink in runtime.sinks.items():
        h = sink.health
        if h.failing_since is None:
            continue
        if h.stale(retried_within):
            h.clear()
            continue
        unreachable = h.unreachable_for()
        if h.unreachable_since is not None:
            what, seconds = "no primary reachable", unreachable
        else:
            what, seconds = "batches not committed", h.failing_for()
        failing[topic] = f"{what} for {seconds:.1f} s: {h.last_error}"[:400]
        if unreachable >= bound:
            problems.append(f"{topic}: no node taking writes reachable for {unreachable:.0f} s (over {bound:g} s)")
    return failing, problems


def health(runtime: Runtime) -> dict[str, Any]:
    stalled, blocked = {}, {}
    for topic, pipeline in runtime.pipelines.items():
        for p, seconds in pipeline.stalled().items():
            if seconds >= STALLED_AFTER_S:
                stalled[f"{topic}[{p}]"] = round(seconds, 1)
        for p, reason in pipeline.blocked().items():
            blocked[f"{topic}[{p}]"] = reason
    fetch_errors = int(getattr(runtime.app.consumer, "fetch_errors", 0))
    problems = []
    if runtime.crashed is not None:
        problems.append(f"a pipeline crashed: {type(runtime.crashed).__name__}: {runtime.crashed}"[:300])
    if fetch_errors >= FETCH_ERRORS_UNHEALTHY:
        problems.append(f"fetching from the broker failed {fetch_errors} times in a row")
    database, unreachable = _database_health(runtime)
    problems.extend(unreachable)
    # The database or the broker not answering: nothing is applied, and a restart would not cure it.
    reachability = runtime.reachability.problems
    # A rebalance that does not end: a restart would only re-join the same group.
    rebalancing = runtime.rebalances.problem()
    degraded = stalled or blocked or database or reachability or rebalancing
    return {
        "status": "failing" if problems else ("degraded" if degraded else "ok"),
        "problems": problems,
        "database": database,
        "unreachable": reachability,
        "rebalancing": rebalancing,
        "stalled_partitions": stalled,
        "stopped_partitions": blocked,
        "pid": os.getpid(),
    }


def refresh_gauges(runtime: Runtime) -> None:
    """Lag and pool gauges are computed when scraped, from what the worker already knows."""
    consumer = runtime.app.consumer
    try:
        assignment = consumer.assignment()
    except Exception:
        assignment = set()
    for topic, pipeline in runtime.pipelines.items():
        mine = {tp.partition: tp for tp in assignment if tp.topic == topic}
        telemetry.ASSIGNED_PARTITIONS.labels(topic).set(len(mine))
        stalled = pipeline.stalled()
        for partition in mine:
            telemetry.PARTITION_STALLED.labels(topic, str(partition)).set(stalled.get(partition, 0.0))
        for partition, tp in mine.items():
            labels = (topic, str(partition))
            end = consumer.highwater(tp)
            if end is None:
                continue
            telemetry.END_OFFSET.labels(*labels).set(end)
            applied = pipeline.applied.get(partition)
            if applied is not None:
                telemetry.LEDGER_LAG.labels(*labels).set(max(0, end - applied))
            committed = runtime.kafka_committed.get(tp)
            if committed is not None:
                telemetry.CONSUMER_LAG.labels(*labels).set(max(0, end - committed))
        for partition in runtime.exported.get(topic, set()) - set(mine):  # moved to another worker
            for gauge in (
                telemetry.END_OFFSET,
                telemetry.LEDGER_LAG,
                telemetry.CONSUMER_LAG,
                telemetry.LEDGER_OFFSET,
                telemetry.PARTITION_STALLED,
            ):
                try:
                    gauge.remove(topic, str(partition))
                except KeyError:
                    pass
        runtime.exported[topic] = set(mine)
    for topic, sink in runtime.sinks.items():
        telemetry.DB_UNREACHABLE.labels(topic).set(sink.health.unreachable_for())
        telemetry.DB_FAILING.labels(topic).set(sink.health.failing_for())
    size = idle = waiting = 0
    for pool in runtime.all_pools():
        stats = pool.get_stats()
        size += stats.get("pool_size", 0)
        idle += stats.get("pool_available", 0)
        waiting += stats.get("requests_waiting", 0)
    telemetry.POOL_CONNECTIONS.labels("in_use").set(size - idle)
    telemetry.POOL_CONNECTIONS.labels("idle").set(idle)
    telemetry.POOL_WAITING.set(waiting)


def register(runtime: Runtime) -> None:
    app = runtime.app
    started = time.time()

    @app.page("/metrics")
    async def metrics(self: Any, request: Any) -> Any:
        refresh_gauges(runtime)
        text = scrub(generate_latest(telemetry.REGISTRY).decode())
        return self.bytes(text.encode(), content_type=CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        report = scrub_data({**health(runtime), "uptime_s": round(time.time() - started, 1)})
        return self.json(report, status=503 if report["problems"] else 200)

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        report = await readiness(runtime)
        return self.json(scrub_data(report), status=200 if report["ready"] else 503)
