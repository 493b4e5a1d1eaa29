"""Errors of the database area, typed by what the caller should do about them."""

from __future__ import annotations

import psycopg
import psycopg_pool


class SinkError(Exception):
    """Base class of every error raised by `sinks`."""


class TransientSinkError(SinkError):
    """The database could not take the batch now (down, timeout, conflict): retry it later."""


class OffsetGap(SinkError):
    """The batch does not follow the ledger: records between would be skipped if applied."""

    def __init__(self, topic: str, partition: int, expected: int, first: int) -> None:
        super().__init__(f"{topic}[{partition}]: ledger expects offset {expected}, batch starts at {first}")
        self.topic = topic
        self.partition = partition
        self.expected = expected
        self.first = first


class MigrationError(SinkError):
    """A migration could not be applied, or the applied ones were edited."""


# SQLSTATE classes where one record's content is at fault (data exception, integrity
# constraint, program limit such as an index row too large): isolate and dead-letter it.
_RECORD_CLASSES = ("22", "23", "54")


def is_record_error(exc: BaseException) -> bool:
    """True when the error is caused by the content of a row, not by the database's state."""
    sqlstate = getattr(exc, "sqlstate", None)
    return bool(sqlstate) and sqlstate[:2] in _RECORD_CLASSES


def is_transient(exc: BaseException) -> bool:
    """Everything from the database that is not a record's fault is retried, never dead-lettered.

    That includes a missing table (migrations not applied yet): retrying until an operator
    runs `eventsink migrate` loses nothing, dead-lettering the stream would.
    """
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError | TimeoutError | OSError):
        return True
    if isinstance(exc, psycopg.Error):
        return not is_record_error(exc)
    return False
