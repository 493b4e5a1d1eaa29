"""The Faust app: one agent and one dedupe table per event kind, wired to the sinks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from faust.types import TP

from sinks.core.batch import Batch, LogIdentity
from sinks.core.sink import Sink
from sinks.pool import open_pool
from streams import logs
from streams.kinds import Kind, kinds
from streams.settings import Settings
from streams.tools import topics
from streams.tools.reader import Reader
from streams.worker import telemetry, web
from streams.worker.backlog import Backlog
from streams.worker.budget import Budget
from streams.worker.deadletters import DeadLetterPublisher
from streams.worker.dedupe_cache import DedupeCache
from streams.worker.faust_internals import (
    BacklogAssignor,
    ChannelReader,
    EventsinkApp,
    LeanTableManager,
    LedgerConsumer,
    RawSchema,
    broker_metadata,
    commit_offsets,
    consumer_state,
    group_generation,
    slices,
)
from streams.worker.pipeline import Pipeline, PipelineConfig
from streams.worker.positioning import Positioning
from streams.worker.reachability import Check, Reachability
from streams.worker.rebalance_reader import RebalanceReader
from streams.worker.rebalances import RebalanceClock

log = logs.get(__name__)

# Records decoded before the agent gives way to the writers (a few milliseconds of decoding).
INGEST_SLICE = 256


def faust_config(settings: Settings) -> dict[str, Any]:
    session_s = settings.session_timeout_ms / 1000.0
    data_dir = Path(settings.data_dir).resolve() / settings.group_id
    data_dir.mkdir(parents=True, exist_ok=True)
    return dict(
        broker=";".join(f"kafka://{s}" for s in settings.bootstrap_list),
        store=settings.table_store,
        datadir=str(data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 5),
        broker_max_poll_records=settings.max_poll_records,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        # Acks only drive Kafka's committed offsets, which are for monitoring: a rebalance
        # must not wait for them.
        stream_wait_empty=False,
        table_standby_replicas=0,
        recovery_consistency_check=False,
        producer_acks=-1,
        producer_linger=0.005,
        broker_credentials=settings.faust_credentials(),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        autodiscover=False,
        TableManager=LeanTableManager,
        PartitionAssignor=BacklogAssignor,
    )


class TopicControl:
    """The pipeline's handle on the consumer and the broker for one topic (`PartitionControl`)."""

    def __init__(self, runtime: Runtime, topic: str) -> None:
        self.runtime = runtime
        self.topic = topic

    @property
    def _consumer(self) -> LedgerConsumer:
        return self.runtime.app.consumer  # type: ignore[return-value]

    # A partition read through a rebalance (`RebalanceReader`) is that reader's, not the group
    # consumer's, until its new assignment.

    def _reader(self, partition: int) -> RebalanceReader | None:
        """The rebalance reader, if it reads `partition` now."""
        reader = self.runtime.rebalance_reader
        return reader if reader is not None and reader.reading(self.topic, partition) else None

    def hold(self, partition: int) -> None:
        if (reader := self._reader(partition)) is not None:
            reader.hold(self.topic, partition)
        else:
            self._consumer.hold(TP(self.topic, partition))

    def release(self, partition: int) -> None:
        if (reader := self._reader(partition)) is not None:
            reader.release_hold(self.topic, partition)
        else:
            self._consumer.release(TP(self.topic, partition))

    async def seek(self, partition: int, offset: int) -> None:
        if (reader := self._reader(partition)) is not None:
            reader.seek(self.topic, partition, offset)
        else:
            await self._consumer.seek_to_ledger(TP(self.topic, partition), offset)

    def log_gap(self, partition: int, previous: int, offset: int) -> bool:
        if self._reader(partition) is not None:
            return False  # not verified: the pipeline asks the broker what lies in between
        return self._consumer.log_gaps.verified(TP(self.topic, partition), previous, offset)

    def identity(self) -> LogIdentity:
        return self.runtime.positioning.identity(self.topic)

    async def first_offset_from(self, partition: int, offset: int) -> tuple[int, int]:
        return await self.runtime.positioning.first_offset_from(self.topic, partition, offset)

    def end_offset(self, partition: int) -> int | None:
        if (reader := self._reader(partition)) is not None:
            return reader.end_offset(self.topic, partition)
        try:
            return self._consumer.highwater(TP(self.topic, partition))
        except Exception:  # not assigned (anymore), or no fetch yet
            return None


class Runtime:
    """What the agents share: the pool, one sink and pipeline per kind, the ledger positioning."""

    def __init__(self, settings: Settings, app: EventsinkApp, partitions: dict[str, int]) -> None:
        self.settings = settings
        self.app = app
        self.kinds = kinds(settings)
        # A pool per kind, each of EVENTSINK_POOL_MAX_SIZE connections (also each kind's writers
        # in flight), and one connection for /readyz: a table held by a lock, a slow trigger or a
        # burst of one kind cannot take the connections the other kinds write with.
        pool_options = dict(
            min_size=min(settings.pool_min_size, settings.pool_max_size),
            statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
            idle_in_transaction_timeout_ms=settings.idle_in_transaction_timeout_ms,
            check_timeout_s=settings.db_connect_timeout_s,
        )
        self.pools = {
            kind.name: open_pool(
                settings.dsn,
                max_size=settings.pool_max_size,
                name=f"eventsink-{settings.group_id}-{kind.name}",
                **pool_options,  # type: ignore[arg-type]
            )
            for kind in self.kinds
        }
        self.check_pool = open_pool(
            settings.dsn,
            max_size=1,
            name=f"eventsink-{settings.group_id}-checks",
            **{**pool_options, "min_size": 0},  # type: ignore[arg-type]
        )
        # The consumer (built by Faust when first used) and every pipeline share one byte budget.
        self.budget: Budget = app.consumer.budget  # type: ignore[attr-defined]
        self.budget.limit = settings.buffer_max_bytes
        app.consumer.fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
        self.positioning = Positioning(self, settings.bootstrap_list, settings.kafka_security(), settings.log_check_s)
        self._opened = False
        self._users = 0
        # Next offset per partition as of the last batch committed, for Kafka's committed offsets.
        self.kafka_offsets: dict[TP, int] = {}
        self.kafka_committed: dict[TP, int] = {}
        # Partitions whose lag gauges this worker exports, per topic.
        self.exported: dict[str, set[int]] = {}
        self._committer: asyncio.Task[None] | None = None
        self.sinks: dict[str, Sink] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.rebalance_reader = (
            RebalanceReader(
                settings.bootstrap_list,
                settings.kafka_security(),
                self.pipelines,
                self.budget,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
                max_records=settings.max_poll_records,
                limit_s=settings.session_timeout_ms / 1000.0,
            )
            if settings.read_during_rebalance
            else None
        )
        # Read by the assignor when this worker leads the group (streams.worker.backlog).
        self.backlog = Backlog(self._measure_backlog, settings.assign_by_backlog_records)
        self._backlog_task: asyncio.Task[None] | None = None
        self._backlog_reader: Reader | None = None
        app.backlog = self.backlog  # type: ignore[attr-defined]
        app.backlog_topics = {  # type: ignore[attr-defined]
            k.topic: (k.topic, changelog_topic(settings, k)) for k in self.kinds
        }
        # What ended a pipeline unexpectedly; the worker is exiting because of it.
        self.crashed: BaseException | None = None
        # Faust has started every agent; "worker ready" waits for the database and the broker too.
        self.started = False
        self.reachability = Reachability(
            [
                Check(
                    "database",
                    self._probe_database,
                    settings.dsn_display,
                    "check DATABASE_URL (host, port, database, user, password, sslmode) and that PostgreSQL "
                    "runs and accepts connections from this host",
                ),
                Check(
                    "broker",
                    lambda: broker_metadata(app),
                    settings.kafka_bootstrap_servers,
                    "check that the brokers of KAFKA_BOOTSTRAP_SERVERS run and are reachable from this host "
                    "(and EVENTSINK_KAFKA_SECURITY_PROTOCOL)",
                    failures_before_error=2,  # one slow metadata answer is not an outage
                ),
            ],
            timeout_s=settings.db_connect_timeout_s + 5,
            on_reachable=self._say_ready,
        )
        self._watcher: asyncio.Task[None] | None = None
        for kind in self.kinds:
            self._register(kind, partitions[kind.topic])
        app.ledger_positioner = self.positioning.targets
        app.on_unreadable = self._on_unreadable
        self.rebalances = RebalanceClock(
            lambda: bool(getattr(app, "rebalancing", False)),
            lambda: bool(getattr(app, "in_recovery", False)),
            settings.rebalance_degraded_s,
        )
        telemetry.REBALANCING.set_function(self.rebalances.seconds)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_before_shutdown.connect(self._drain_before_shutdown)
        telemetry.GROUP_GENERATION.set_function(lambda: group_generation(app))
        if settings.web_enabled:
            web.register(self)

    async def open(self) -> None:
        """Called by each agent as it starts: the pool lives as long as one agent does."""
        self._users += 1
        await self.ensure_open()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_offsets_periodically())
        if self._watcher is None:
            self._watcher = asyncio.create_task(self.reachability.run(), name="reachability")
        if self._backlog_task is None and self.settings.assign_by_backlog_records > 0:
            self._backlog_task = asyncio.create_task(self.backlog.run(), name="backlog")
        self.positioning.start()

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._opened:
            self._opened = False
            for task in (self._committer, self._watcher, self._backlog_task):
                if task is not None:
                    task.cancel()
            self._committer = self._watcher = self._backlog_task = None
            if self._backlog_reader is not None:
                await self._backlog_reader.close()
                self._backlog_reader = None
            if self.rebalance_reader is not None:
                await self.rebalance_reader.close()
            await self.positioning.stop()
            await self.commit_offsets()
            await asyncio.gather(*(pool.close() for pool in self.all_pools()))

    def on_started(self) -> None:
        """Faust started every agent. Ready only if the database and the broker answer too; else
        the reachability check has said (or will say) what is wrong, and says ready when it clears."""
        self.started = True
        if self.reachability.reachable:
            self._say_ready()

    def _say_ready(self) -> None:
        if self.started:
            log.info(
                "worker ready",
                group=self.settings.group_id,
                kafka=self.settings.kafka_bootstrap_servers,
                database=self.settings.dsn_display,
            )

    async def _measure_backlog(self) -> dict[str, dict[int, int]]:
        """Per source topic and partition, the records past the ledger's position (from the
        log's start where the ledger has none)."""
        if self._backlog_reader is None:
            self._backlog_reader = Reader(self.settings.bootstrap_list, self.settings.kafka_security())
        reader, out = self._backlog_reader, {}
        for topic, sink in self.sinks.items():
            ends = await reader.end_offsets(topic)
            ledger = await sink.positions(topic)
            unknown = [p for p in ends if p not in ledger]
            starts = await reader.beginning_offsets(topic, unknown) if unknown else {}
            out[topic] = {
                p: end - (ledger[p].last_offset + 1 if p in ledger else starts.get(p, 0)) for p, end in ends.items()
            }
        return out

    async def _probe_database(self) -> None:
        try:
            # The checks' pool (`self.pool` before: no such attribute, so every probe opened a
            # connection of its own).
            async with self.check_pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
            return
        except Exception:
            pass  # busy, or unreachable: a connection of our own tells which, and why
        conn = await psycopg.AsyncConnection.connect(
            self.settings.dsn, connect_timeout=max(1, round(self.settings.db_connect_timeout_s)), autocommit=True
        )
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()

    async def crash(self, exc: BaseException) -> None:
        """Something escaped a pipeline: /healthz says so, and the worker exits non-zero so that
        its supervisor starts it again, from the ledger."""
        if self.crashed is None:
            self.crashed = exc
            log.critical(
                "a pipeline crashed; the worker exits so that it restarts from the ledger",
                exc_info=exc,
                fix="a bug: nothing is lost (the ledger has what was applied); report it with this traceback",
            )
            await self.app.crash(exc)

    async def commit_offsets(self) -> None:
        """Commit to Kafka, for the partitions still assigned, what the ledger has applied.

        Offsets the broker refused are kept for the next commit: an idle partition commits
        nothing new, and its committed offset (the lag KEDA scales on) would stay stale."""
        if not self.kafka_offsets:
            return
        if getattr(self.app, "rebalancing", False):
            # Not while the group re-forms: a commit in the old generation is refused with
            # ILLEGAL_GENERATION, and aiokafka then rejoins, which starts one more rebalance
            # (batches read through a rebalance commit during it). Kept for the next commit.
            return
        offsets, self.kafka_offsets = self.kafka_offsets, {}
        if await commit_offsets(self.app, offsets):
            self.kafka_committed.update(offsets)
            return
        telemetry.KAFKA_COMMIT_FAILURES.inc()
        for tp, offset in offsets.items():
            # A batch committed meanwhile set a newer offset: it wins.
            self.kafka_offsets.setdefault(tp, offset)

    async def _commit_offsets_periodically(self) -> None:
        interval = float(self.app.conf.broker_commit_interval)
        while True:
            await asyncio.sleep(interval)
            self.rebalances.check()  # as periodic as the commits, and as cheap
            await self.commit_offsets()
            if log.isEnabledFor(10):  # logging.DEBUG
                log.debug("consumer state", **consumer_state(self.app))

    async def ensure_open(self) -> None:
        if not self._opened:
            self._opened = True
            for pool in self.all_pools():
                await pool.open(wait=False)

    def all_pools(self) -> list[Any]:
        return [*self.pools.values(), self.check_pool]

    async def _drain_before_shutdown(self, app: Any, **_: Any) -> None:
        """Faust's `on_before_shutdown`: the consumer has stopped, the producer still runs. Every
        pipeline writes what it holds now, so that the dedupe table's changelog (and any dead
        letter) still has a producer; an agent's own drain, later, finds nothing left."""
        if self.rebalance_reader is not None:
            await self.rebalance_reader.close()
        await asyncio.gather(*(asyncio.shield(p.drain()) for p in self.pipelines.values()))

    def _register(self, kind: Kind, partitions: int) -> None:
        s = self.settings
        app = self.app
        topic = app.topic(kind.topic, partitions=partitions, schema=RawSchema())
        table = app.Table(
            f"dedupe-{kind.name}",
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,  # bytes key and value: the "raw" codec
            help=f"committed (tenant_id, dedupe_id) digests of {kind.topic}, per batch",
        )
        sink = Sink(
            self.pools[kind.name],
            s.group_id,
            kind.writer,
            on_dead_letters=DeadLetterPublisher(
                app, kind.dlq_topic, kind.topic, s.group_id, max_record_bytes=int(app.conf.producer_max_request_size)
            ),
            connection_timeout=s.db_connect_timeout_s,
            transaction_timeout=s.db_transaction_timeout_s,
            on_split=_log_split,
        )
        pipeline = Pipeline(
            topic=kind.topic,
            model=kind.model,
            sink=sink,
            cache=DedupeCache(table, kind.topic, s.dedupe_window_s, s.dedupe_max_keys),
            control=TopicControl(self, kind.topic),
            config=PipelineConfig(
                batch_size=s.batch_size,
                max_wait_s=s.batch_max_wait_s,
                max_inflight=s.pool_max_size,
                retry_initial_s=s.retry_initial_s,
                retry_max_s=s.retry_max_s,
                drain_timeout_s=s.drain_timeout_s,
                hold_records=max(2 * s.batch_size, 100),
                hold_bytes=s.buffer_max_bytes // 4,
                on_data_loss=s.on_data_loss,
                progress_log_s=s.progress_log_s,
                labelled_tenants=s.telemetry_tenant_set,
            ),
            decode_context=kind.context,
            decoder=kind.decode,
            on_crash=self.crash,
            budget=self.budget,
        )
        self.sinks[kind.topic] = sink
        self.pipelines[kind.topic] = pipeline
        runtime = self

        async def consume(stream: Any) -> None:
            await runtime.open()
            reader = ChannelReader(app, stream, s.batch_size)
            pipeline.on_commit = lambda p, offset: runtime.kafka_offsets.__setitem__(TP(kind.topic, p), offset)
            ticker = asyncio.create_task(_tick(pipeline, s.progress_log_s))
            try:
                while True:
                    # Decoded a slice at a time, giving way after each: a queue with fetches
                    # waiting never suspends `next_chunk`, and a backlog's fetches would all be
                    # decoded before any partition's writer sent its batch (0.2 s of a start's
                    # first commit); each round trip of a transaction would wait for the decoding
                    # of everything fetched meanwhile.
                    for part in slices(await reader.next_chunk(), INGEST_SLICE):
                        pipeline.ingest(part)
                        await asyncio.sleep(0)
            except StopAsyncIteration:
                pass  # Faust stops an agent by throwing this into its channel
            except Exception as exc:
                await runtime.crash(exc)
            finally:
                ticker.cancel()
                try:
                    await asyncio.shield(pipeline.drain())
                finally:
                    await runtime.release()

        consume.__name__ = f"{kind.name}_sink"
        app.agent(topic, name=f"eventsink.{kind.name}")(consume)

    def _on_unreadable(self, tp: TP, offset: int, detail: str) -> None:
        pipeline = self.pipelines.get(tp.topic)
        if pipeline is not None:
            pipeline.block(
                tp.partition,
                "unreadable",
                f"the Kafka client cannot read the record batch at offset {offset} ({detail}); after looking at it "
                f"(eventsink tail cannot read it either), go on without it: eventsink ledger skip --topic {tp.topic} "
                f"--partition {tp.partition} --to <its last offset>",
                until=offset,
                keep_before=offset,
            )

    async def _on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        self.rebalances.started()
        # Not ours to commit anymore (the new owner commits from its ledger).
        self.kafka_offsets = {tp: o for tp, o in self.kafka_offsets.items() if tp not in revoked}
        reader = self.rebalance_reader
        # What the reader reads on stays in its pipeline until the new assignment.
        read = reader.start(revoked) if reader is not None and self.crashed is None else set()
        for topic, pipeline in self.pipelines.items():
            pipeline.on_revoked({tp.partition for tp in revoked if tp.topic == topic and tp not in read})
        self.app.consumer.log_gaps.forget(revoked)  # type: ignore[attr-defined]
        self.app.consumer.forget_held(revoked)  # type: ignore[attr-defined]

    async def _on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        telemetry.REBALANCES.inc()
        self.kafka_committed = {tp: o for tp, o in self.kafka_committed.items() if tp in assigned}
        moved = self.rebalance_reader.release(assigned) if self.rebalance_reader is not None else set()
        for topic, pipeline in self.pipelines.items():
            pipeline.on_revoked({tp.partition for tp in moved if tp.topic == topic})
            mine = {tp.partition for tp in assigned if tp.topic == topic}
            pipeline.on_assigned(mine)
            # The generation tells which of the members' assignments belong to one rebalance.
            log.info(
                "partitions assigned", topic=topic, partitions=sorted(mine), generation=self.app.consumer_generation_id
            )


async def _tick(pipeline: Pipeline, interval_s: float) -> None:
    while True:
        await asyncio.sleep(min(interval_s, 5.0))
        try:
            pipeline.tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("progress log failed")


def source_and_dlq_specs(settings: Settings, partitions: int | None = None) -> list[topics.TopicSpec]:
    n, r = partitions or settings.topic_partitions, settings.topic_replication
    specs = []
    for kind in kinds(settings):
        specs.append(topics.TopicSpec(kind.topic, n, r, topics.SOURCE_CONFIG))
        specs.append(topics.TopicSpec(kind.dlq_topic, n, r, topics.DLQ_CONFIG))
    return specs


def changelog_topic(settings: Settings, kind: Kind) -> str:
    """The name Faust gives the dedupe table's changelog of a kind."""
    return f"{settings.group_id}-dedupe-{kind.name}-changelog"


def changelog_specs(settings: Settings, partitions: dict[str, int]) -> list[topics.TopicSpec]:
    """Changelogs must have as many partitions as their source topic (Faust co-partitions them)."""
    return [
        topics.TopicSpec(
            changelog_topic(settings, k), partitions[k.topic], settings.topic_replication, topics.CHANGELOG_CONFIG
        )
        for k in kinds(settings)
    ]


def build(settings: Settings, partitions: dict[str, int]) -> tuple[EventsinkApp, Runtime]:
    app = EventsinkApp(settings.group_id, **faust_config(settings))
    runtime = Runtime(settings, app, partitions)
    return app, runtime


def _log_split(batch: Batch[Any], exc: BaseException) -> None:
    """A batch ran out of time and is written in halves (`Sink.write`): each half may wait as
    long again, so it is said and counted as a retry, as a batch retried whole is."""
    telemetry.BATCH_RETRIES.labels(batch.topic, "timed out, split").inc()
    log.warning(
        "batch ran out of time; writing it in halves",
        topic=batch.topic,
        partition=batch.partition,
        first_offset=batch.first_offset,
        records=len(batch),
        error=str(exc),
        fix="a slow table, or a lock held by another session (pg_stat_activity, pg_locks); the halves are "
        "retried at once and split again while they run out of time: EVENTSINK_STATEMENT_TIMEOUT_MS and "
        "EVENTSINK_DB_TRANSACTION_TIMEOUT_S bound each attempt",
    )
