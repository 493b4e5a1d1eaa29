"""What eventsink changes in aiokafka's private classes, in one place (aiokafka 0.14.0).

The worker (`streams.worker.faust_internals`) and the group-less reader (`streams.tools.reader`)
both read records through aiokafka's fetcher; both need to know which partition raised when a
record batch cannot be read, and the worker needs to know when a partition's fetch position was
moved by anything but consumption. Tested in tests/unit/test_faust_internals.py.

aiokafka is pinned (pyproject.toml) to the version whose internals were read: this module,
`streams.worker.faust_internals` (the consumer thread, the fetcher, the coordinator's generation),
`streams.tools.identity` (Metadata v12 declared with aiokafka's protocol types) and
`streams.worker.deadletters` (aiokafka's record batch builder) rely on it. `check_version` refuses
another one where the private API is first used: when a worker starts, and in `instrument`.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiokafka.consumer.fetcher import FetchResult
from aiokafka.consumer.subscription_state import TopicPartitionState

AIOKAFKA_VERSION = "0.14.0"


class UnsupportedAiokafka(RuntimeError):
    """The installed aiokafka is not the one eventsink's private-API modules were written against."""


def check_version() -> None:
    """Refuse to run on an aiokafka whose internals were not read and tested."""
    installed = metadata.version("aiokafka")
    if installed != AIOKAFKA_VERSION:
        raise UnsupportedAiokafka(
            f"eventsink reaches into aiokafka's private API as of {AIOKAFKA_VERSION}, and aiokafka {installed} "
            f"is installed: install aiokafka=={AIOKAFKA_VERSION}, or port streams/aiokafka_internals.py, "
            "streams/worker/faust_internals.py and streams/tools/identity.py and run their tests "
            "(tests/unit/test_faust_internals.py, tests/e2e/test_world_changes.py)"
        )


def unreadable(exc: BaseException) -> tuple[Any, int] | None:
    """(aiokafka TopicPartition, offset) of the record batch an exception failed to read, if it
    came from reading fetched records after `instrument()`."""
    tp = getattr(exc, "_eventsink_partition", None)
    return None if tp is None else (tp, exc._eventsink_offset)  # type: ignore[attr-defined]


def instrument() -> None:
    """Installed once per process, on aiokafka's classes:

    - count, per partition state, every move of the fetch position that is not consumption (a
      seek, a reset, a reset awaited), for `LogGaps`;
    - name the partition on an exception raised while reading its fetched records, so that the
      consumer can stop that partition alone (`LedgerConsumerThread._fetch_records`), and a
      reader can step over it (`streams.tools.reader`).
    """
    check_version()
    if getattr(TopicPartitionState, "_eventsink_jumps_counted", False):
        return

    def getall(self: Any, max_records: int | None = None) -> Any:
        # aiokafka's FetchResult.getall, except when reading a record raises: the records read
        # before it are returned (the position moves to the unreadable one), and the exception
        # names its partition and offset when that is where the next read fails.
        tp = self._topic_partition
        if not self.check_assignment(tp) or not self.has_more():
            return []
        records = []
        try:
            for record in self._partition_records:
                records.append(record)
                if max_records is not None and len(records) >= max_records:
                    self._update_position()
                    break
            else:
                self._update_position()
                self._partition_records = None
        except Exception as exc:
            exc._eventsink_partition = tp  # type: ignore[attr-defined]
            exc._eventsink_offset = self._partition_records.next_fetch_offset  # type: ignore[attr-defined]
            if not records:
                raise
            self._update_position()
            self._partition_records = None
        return records

    FetchResult.getall = getall  # type: ignore[method-assign]
    for name in ("seek", "reset_to", "await_reset"):
        original = getattr(TopicPartitionState, name)

        def counted(self: Any, *args: Any, __original: Any = original) -> Any:
            self._eventsink_jumps = getattr(self, "_eventsink_jumps", 0) + 1
            return __original(self, *args)

        setattr(TopicPartitionState, name, counted)
    TopicPartitionState._eventsink_jumps_counted = True  # type: ignore[attr-defined]
