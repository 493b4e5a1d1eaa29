"""`eventsink worker`: topics checked, Faust app built, run until SIGTERM/SIGINT drains it.

SIGTERM drains and exits 0; SIGINT (Ctrl-C) the same, exiting 130 as every command does. Either
way the worker is gone within EVENTSINK_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S: past it (a broker
or a database that stopped answering holds a library's shutdown), it says so and exits at once,
as a kill would, which loses nothing: the next owner of its partitions starts at the ledger.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

import faust

from streams import logs
from streams.aiokafka_internals import UnsupportedAiokafka
from streams.aiokafka_internals import check_version as check_aiokafka
from streams.settings import Settings
from streams.tools.topics import ensure_topics, partition_counts
from streams.worker.app import build, changelog_specs, source_and_dlq_specs
from streams.worker.faust_internals import UnsupportedFaust, check_version

log = logs.get(__name__)

# After the drain: Faust commits offsets, leaves the group, stops its producer and web server.
SHUTDOWN_MARGIN_S = 10.0
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C


def new_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    if settings.use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


class PartitionsChanged(SystemExit):
    """A source topic gained partitions its dedupe changelog does not have."""


def _check_changelogs(loop: asyncio.AbstractEventLoop, settings: Settings, partitions: dict[str, int]) -> None:
    specs = changelog_specs(settings, partitions)
    existing = loop.run_until_complete(
        partition_counts(settings.bootstrap_list, [sp.name for sp in specs], settings.kafka_security())
    )
    for spec in specs:
        have = existing.get(spec.name)
        if have and have != spec.partitions:
            log.error(
                "a source topic and its dedupe changelog have different partition counts",
                changelog=spec.name,
                changelog_partitions=have,
                source_partitions=spec.partitions,
                fix="stop every worker of the group, delete the changelog topic (a cache, rebuilt from the "
                "database's answers) or give it the same partition count, then start the workers",
            )
            raise PartitionsChanged(2)


def _check_web_port(settings: Settings) -> None:
    if not settings.web_enabled:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", settings.web_port))
        except OSError as exc:
            log.error(
                "the web port is taken",
                port=settings.web_port,
                error=exc.strerror,
                fix="give each worker on this host its own EVENTSINK_WEB_PORT (or run `eventsink worker "
                "--processes N`), or set EVENTSINK_WEB_ENABLED=false",
            )
            raise SystemExit(2) from None


def run(settings: Settings) -> None:
    try:
        check_version()
    except UnsupportedFaust as exc:
        log.error("unsupported faust-streaming", error=str(exc))
        raise SystemExit(2) from None
    try:
        check_aiokafka()
    except UnsupportedAiokafka as exc:
        log.error("unsupported aiokafka", error=str(exc))
        raise SystemExit(2) from None
    _check_web_port(settings)
    loop = new_loop(settings)
    partitions = loop.run_until_complete(
        ensure_topics(settings.bootstrap_list, source_and_dlq_specs(settings), security=settings.kafka_security())
    )
    _check_changelogs(loop, settings, partitions)
    app, runtime = build(settings, partitions)
    log.info(
        "worker starting",
        group=settings.group_id,
        kafka=settings.kafka_bootstrap_servers,
        database=settings.dsn_display,
        topics={k.topic: partitions[k.topic] for k in runtime.kinds},
        batch_size=settings.batch_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
    )
    worker = EventsinkWorker(
        app,
        runtime,
        settings.drain_timeout_s + SHUTDOWN_MARGIN_S,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    # Faust's terminal spinner writes cursor escape sequences even when stdout is a pipe; the
    # worker's own structured logs say what it does.
    worker.spinner = None
    _tune_gc(settings.gc_young_threshold)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        if worker.stop_signal == signal.SIGINT and not done.code:
            raise SystemExit(INTERRUPTED) from None
        raise


class EventsinkWorker(faust.Worker):
    """Faust's worker, with the exit bounded in time and "ready" said only when it is."""

    def __init__(self, app: Any, runtime: Any, stop_within_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.runtime = runtime
        self.stop_within_s = stop_within_s
        self.stop_signal: signal.Signals | None = None

    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            deadline = threading.Timer(self.stop_within_s, self._exit_now)
            deadline.daemon = True
            deadline.start()
        super()._schedule_shutdown(sig)

    def _exit_now(self) -> None:
        log.error(
            "the worker did not stop in time; exiting now",
            signal=self.stop_signal.name if self.stop_signal else None,
            within_s=self.stop_within_s,
            unreachable=self.runtime.reachability.problems,
            fix="nothing is lost (the next owner of its partitions starts at the ledger); if the broker or the "
            "database is unreachable, restore it",
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(INTERRUPTED if self.stop_signal == signal.SIGINT else 1)

    def _on_startup_end_spinner(self) -> None:
        # Instead of Faust's "Ready": the worker is ready when the database and the broker answer.
        self.runtime.on_started()


# How long a thread keeps the GIL while another waits for it (Python's default: 5 ms). Faust's
# consumer thread hands fetched records over while the event loop's thread decodes and writes:
# with 5 ms, each hand-over waited for the loop's thread to give way, and a record's time from its
# Kafka timestamp to its commit grew by it (bench/RESULTS.md, latency at 50 % of one worker's
# maximum, two runs one after the other: p99 801 ms with 5 ms, 578 ms with 1 ms).
SWITCH_INTERVAL_S = 0.001


def _tune_gc(young: int) -> None:
    """Collect the young generation every `young` allocations instead of Python's 700.

    Records live from fetch to commit (about a second): with the default, each survives a few
    young collections, is promoted, and makes the old generations grow until a full collection
    traverses every object of the process. Measured on the metric benchmark's backlog: 2,090
    young, 190 middle and 18 full collections, 2.0 s of a 7.6 s run's CPU; with 20,000: 56, 5
    and 1, 0.7 s. With 20,000 a young collection still came every 30 ms or so at full speed and
    found the records of the batches in flight alive (1.5 ms each, 0.4 to 0.5 s of the run's
    collections, timed with gc.callbacks); with 100,000 most of them are applied and freed
    before the next one: 0.05 s (bench/RESULTS.md, 2026-12-06). Memory is not released by the
    collector here (applied batches are freed by reference counting,
    tests/pg/test_pipeline_edges.py), so collecting later costs no memory."""
    if young > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young, middle, old)
