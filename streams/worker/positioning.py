"""Where each assigned partition resumes, and whether its log is still the one the ledger counted.

- At assignment, every assigned partition is sought to its ledger offset + 1 (Faust would seek
  to Kafka's committed offsets, which can run ahead of what PostgreSQL applied); the ledgers of
  all topics are read at once, so with the database down assignment waits one timeout.
- Before that, and every `check_s` seconds while the worker runs, each topic's identity (Kafka's
  topic id, the cluster id) is compared with what the ledger recorded. A partition of another
  log (the topic was deleted and created again) is stopped, never skipped: an operator decides
  with `eventsink ledger reset`, after which the check resumes it from the ledger. Where the
  broker reports no topic id, a partition whose log ends below the ledger is taken for a new log.
- The pipeline asks here what lies in a hole after the ledger (`first_offset_from`), through one
  group-less `Reader` kept open, not a connection per question.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaClient
from faust.types import TP

from sinks.core.batch import LogIdentity
from sinks.core.ledger import Position, next_offset
from streams import logs
from streams.tools.identity import TopicIdentity, identities, log_changed
from streams.tools.reader import Reader

if TYPE_CHECKING:
    from streams.worker.app import Runtime
    from streams.worker.faust_internals import LedgerConsumer

log = logs.get(__name__)


class Positioning:
    """The ledger's view of where partitions are, for one worker."""

    def __init__(self, runtime: Runtime, bootstrap: list[str], security: Mapping[str, Any], check_s: float) -> None:
        self.runtime = runtime
        self.bootstrap = bootstrap
        self.security = dict(security)
        self.check_s = check_s
        self._identities: dict[str, TopicIdentity] = {}
        self._client: AIOKafkaClient | None = None
        self._probe: Reader | None = None  # one group-less reader kept open for the questions below
        self._checker: asyncio.Task[None] | None = None

    # -- identity -------------------------------------------------------------------------------

    def identity(self, topic: str) -> LogIdentity:
        known = self._identities.get(topic)
        return LogIdentity(known.topic_id, known.cluster_id) if known else LogIdentity()

    async def refresh_identities(self, topics: Iterable[str]) -> None:
        try:
            if self._client is None:
                self._client = AIOKafkaClient(bootstrap_servers=self.bootstrap, **self.security)
                await self._client.bootstrap()
            self._identities.update(await identities(self._client, topics))
        except Exception as exc:  # keep what was known; the ledger check falls back on offsets
            log.warning("topic ids unavailable", error=f"{type(exc).__name__}: {exc}")

    # -- at assignment --------------------------------------------------------------------------

    async def targets(self, consumer: LedgerConsumer) -> dict[TP, int]:
        """Next offset per assigned partition: the ledger's last applied offset + 1. Partitions of
        another log than the ledger's are stopped and left out."""
        runtime = self.runtime
        assignment = consumer.assignment()
        await runtime.ensure_open()
        wanted = {
            topic: sorted((tp for tp in assignment if tp.topic == topic), key=lambda tp: tp.partition)
            for topic in runtime.sinks
        }
        wanted = {topic: tps for topic, tps in wanted.items() if tps}
        # Partitions read through the rebalance stop being read there before the ledger is read:
        # from here the group's consumer delivers them, from the ledger.
        reader = runtime.rebalance_reader
        read = {tp for tps in wanted.values() for tp in tps if reader is not None and reader.finish(tp)}
        await self.refresh_identities(wanted)
        ledgers = await self._ledgers(wanted, "at assignment")
        targets: dict[TP, int] = {}
        for topic, tps in wanted.items():
            pipeline = runtime.pipelines[topic]
            unowned = pipeline.claim({tp.partition for tp in tps})
            if unowned:
                log.warning(
                    "assigned partitions were not their pipeline's; taken", topic=topic, partitions=sorted(unowned)
                )
            ledger = ledgers.get(topic)
            if ledger is None:
                for tp in tps:
                    if tp in read:
                        pipeline.sought(tp.partition, None)
                continue
            changed = await self._changed(topic, [tp.partition for tp in tps], ledger)
            for tp in tps:
                if tp.partition in changed:
                    pipeline.block(tp.partition, "log_changed", changed[tp.partition])
                    continue
                targets[tp] = next_offset(ledger.get(tp.partition))
                if tp in read:
                    pipeline.sought(tp.partition, targets[tp])
            pipeline.preload({tp.partition: targets[tp] - 1 for tp in tps if tp in targets})
            log.info("sought to the ledger", topic=topic, next_offsets={tp.partition: targets.get(tp) for tp in tps})
        return targets

    async def _ledgers(self, wanted: Mapping[str, Any], when: str) -> dict[str, dict[int, Position]]:
        runtime = self.runtime
        timeout = runtime.settings.db_connect_timeout_s
        # All topics at once: with the database down, assignment waits one timeout, not one per topic.
        found = await asyncio.gather(
            *(asyncio.wait_for(runtime.sinks[t].positions(t), timeout) for t in wanted), return_exceptions=True
        )
        ledgers = {}
        for topic, ledger in zip(wanted, found, strict=True):
            if isinstance(ledger, BaseException):
                # Then each partition's first batch meets the sink's checks instead.
                log.warning(
                    f"ledger unavailable {when}; positions will be checked per batch",
                    topic=topic,
                    error=str(ledger) or type(ledger).__name__,
                )
                continue
            ledgers[topic] = ledger
        return ledgers

    async def _changed(self, topic: str, partitions: list[int], ledger: Mapping[int, Position]) -> dict[int, str]:
        """Partitions whose log is not the one their ledger row counted, with why."""
        now = self._identities.get(topic)
        counted = {p: ledger[p] for p in partitions if p in ledger and ledger[p].last_offset >= 0}
        # The rule `eventsink lag` and `eventsink ledger reset` apply too (`log_changed`): ids first,
        # and end offsets (one request) only where the broker reports no topic id.
        changed = {}
        for p, pos in counted.items():
            why = log_changed(pos.last_offset, pos.topic_id, pos.cluster_id, now, None)
            if why is not None:
                changed[p] = why
        unknown = [p for p in counted if p not in changed]
        if unknown and (now is None or now.topic_id is None):
            ends = await self._end_offsets(topic, unknown)
            for p in unknown:
                pos = counted[p]
                why = log_changed(pos.last_offset, pos.topic_id, pos.cluster_id, now, ends.get(p))
                if why is not None:
                    changed[p] = why
        return changed

    # -- while running --------------------------------------------------------------------------

    def start(self) -> None:
        if self._checker is None:
            self._checker = asyncio.create_task(self._check_periodically(), name="log identity check")

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        for closing in (self._probe, self._client):
            if closing is not None:
                try:
                    await closing.close()
                except Exception as exc:
                    log.debug("closing a broker connection failed", error=str(exc))
        self._probe = self._client = None

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("log identity check failed", error=f"{type(exc).__name__}: {exc}")

    async def check(self) -> None:
        """Stop partitions whose log changed under the worker; resume stopped ones an operator
        reset (their ledger forgot the old log)."""
        runtime = self.runtime
        consumer = runtime.app.consumer
        owned: dict[str, list[int]] = {}
        for tp in consumer.assignment():
            if tp.topic in runtime.pipelines:
                owned.setdefault(tp.topic, []).append(tp.partition)
        if not owned:
            return
        await self.refresh_identities(owned)
        # What each pipeline had committed before the ledgers were read: a commit made meanwhile
        # is not mistaken for a ledger gone back.
        applied = {topic: dict(runtime.pipelines[topic].applied) for topic in owned}
        ledgers = await self._ledgers(owned, "at the periodic log check")
        for topic, partitions in owned.items():
            ledger = ledgers.get(topic)
            if ledger is None:
                continue
            pipeline = runtime.pipelines[topic]
            blocked = pipeline.blocked()
            changed = await self._changed(topic, partitions, ledger)
            for p in partitions:
                if p in changed and blocked.get(p) != "log_changed":
                    pipeline.block(p, "log_changed", changed[p])
                elif p not in changed and blocked.get(p) == "log_changed":
                    await pipeline.unblock(p, next_offset(ledger.get(p)))
                elif p not in blocked:
                    # No row reads as nothing applied: the database lost even the partition's first
                    # commit (a restore to before it, a failover to a standby that never had it).
                    await pipeline.behind(p, next_offset(ledger.get(p)), applied[topic].get(p))
                elif blocked.get(p) in ("data_lost", "unreadable", "gap_unresolved"):
                    position, until = ledger.get(p), pipeline.blocked_until(p)
                    if position is not None and until is not None and position.last_offset >= until:
                        # An operator recorded the loss (`eventsink ledger skip`).
                        await pipeline.unblock(p, position.last_offset + 1)

    # -- asking the broker ----------------------------------------------------------------------

    async def first_offset_from(
        self, topic: str, partition: int, offset: int, timeout: float = 10.0
    ) -> tuple[int, int]:
        """(first record at or after `offset`, log start offset) of a partition.

        Raises TimeoutError when no record arrives in time.
        """
        reader = self._reader()
        start = (await reader.beginning_offsets(topic, [partition]))[partition]
        return await reader.first_offset_from(topic, partition, max(offset, start), timeout), start

    async def _end_offsets(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return await self._reader().end_offsets(topic, partitions)

    def _reader(self) -> Reader:
        if self._probe is None:
            self._probe = Reader(self.bootstrap, self.security)
        return self._probe
