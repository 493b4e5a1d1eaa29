"""Errors of the database area, typed by what the caller should do about them."""

from __future__ import annotations

import psycopg
import psycopg_pool


class SinkError(Exception):
    """Base class of every error raised by `sinks`."""


class TransientSinkError(SinkError):
    """The batch cannot be applied now (database down, timeout, conflict, broker refusing a dead
    letter): retry the same batch later."""


class PoolBusy(TransientSinkError):
    """No pool connection came in time while this sink's own transactions held every connection
    its pool may make: the database answers, its transactions take long (locks, load, a slow
    broker for dead letters). Not a database out of reach (`no_primary` of its cause is not
    consulted)."""


class OffsetGap(SinkError):
    """The batch does not follow the ledger: records between would be skipped if applied."""

    def __init__(self, topic: str, partition: int, expected: int, first: int) -> None:
        super().__init__(f"{topic}[{partition}]: ledger expects offset {expected}, batch starts at {first}")
        self.topic = topic
        self.partition = partition
        self.expected = expected
        self.first = first


class ClaimRefused(SinkError):
    """The batch's own claims about its offsets do not hold (an offset twice, a range the records
    do not fill, a jump between records no verified hole explains): a bug on the stream side.
    Nothing is applied."""

    def __init__(self, topic: str, partition: int, why: str) -> None:
        super().__init__(f"{topic}[{partition}]: batch refused: {why}")
        self.topic = topic
        self.partition = partition


class LogChanged(SinkError):
    """The partition's log is not the one the ledger counted (the topic was deleted and created
    again, or the cluster was replaced): applying would skip or mix records. An operator decides
    (`eventsink ledger reset`)."""

    def __init__(self, topic: str, partition: int, what: str, ledger: object, now: object) -> None:
        super().__init__(
            f"{topic}[{partition}]: the ledger counted {what} {ledger}, the broker now serves {what} {now}; "
            f"nothing is applied until an operator runs `eventsink ledger reset --topic {topic}`"
        )
        self.topic = topic
        self.partition = partition
        self.what = what


class MigrationError(SinkError):
    """A migration could not be applied, or the applied ones were edited."""


# SQLSTATE classes that mean "not now", whatever the records: connection (08), transaction
# rollback such as serialization failures and deadlocks (40), insufficient resources (53),
# object in use or lock timeout (55), operator intervention such as a statement timeout or an
# administrator's shutdown (57), system errors (58), and a transaction the server ended (25).
# And what no record's value can cause, so that every record of every batch would meet it: the
# statement or the schema is wrong (42: a bad deploy, a renamed table or column, a changed type)
# or the server is (XX: internal error, corrupted data or index). Dead-lettering would drain the
# stream into the DLQ; the partition waits instead (stalled, alerted on) until it is fixed.
_TRANSIENT_CLASSES = frozenset({"08", "25", "40", "42", "53", "55", "57", "58", "XX"})
# And what an operator must fix before anything can be written, which waiting loses nothing
# to: a wrong password, database or schema name (the missing table, column, function or
# privilege are class 42, above).
_TRANSIENT_STATES = frozenset({"28000", "28P01", "3D000", "3F000"})


def is_transient(exc: BaseException) -> bool:
    """True when the same batch may succeed later: retry it, never dead-letter it.

    Everything else raised while applying a record (a constraint, a value the database or the
    driver cannot take, a programming error) is the record's or the code's fault: the batch is
    redone record by record and what still fails becomes a dead letter.
    """
    if isinstance(exc, TransientSinkError | psycopg_pool.PoolTimeout | TimeoutError | OSError):
        return True
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        if not sqlstate:
            # No SQLSTATE: the client lost the connection (OperationalError, InterfaceError), or
            # it could not adapt a value (DataError, ProgrammingError), which is the record's.
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_STATES
    return False


# Errors after which the connection is worth nothing: it is lost (08), its server is shutting
# down or restarting (57P01-57P03), or it reaches a server that became a standby (25006: a
# failover demoted it). The caller closes it, and the next one goes to whichever node takes writes.
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03", "25006"})


def connection_is_spent(exc: BaseException) -> bool:
    """True when the connection that raised `exc` must be closed, not given back to the pool."""
    if isinstance(exc, TimeoutError):
        return True  # a round trip past its bound: the connection's state is unknown
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        if not sqlstate:
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return sqlstate[:2] == "08" or sqlstate in _CONNECTION_STATES
    return isinstance(exc, OSError)


def no_primary(exc: BaseException) -> bool:
    """True when `exc` says no node taking writes could be reached (as opposed to a database that
    answers but refuses for now: a lock or statement timeout, a missing table)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True  # no connection could be made (nor freed) in time
    return connection_is_spent(exc)


def timed_out(exc: BaseException) -> bool:
    """True for a statement that ran out of time (the server's `statement_timeout`, or the client's
    bound): a smaller batch may fit where the whole one did not."""
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, psycopg.Error) and exc.sqlstate == "57014"


# Raised by our own code, whatever the record: a writer after a bad deploy (a renamed field, a
# missing import) would raise one for every record, and dead-lettering would drain the stream.
_BUGS = (AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


def is_bug(exc: BaseException) -> bool:
    """True when no record's value can have caused the error: never dead-letter the record for
    it (the pipeline retries a few times, then the worker restarts from the ledger)."""
    return isinstance(exc, _BUGS)


def describe(exc: BaseException) -> str:
    """One line saying what refused a record, for its dead letter."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return f"database refused the record ({exc.sqlstate}): {first_line}"
    return f"the record could not be written: {type(exc).__name__}: {first_line}"
