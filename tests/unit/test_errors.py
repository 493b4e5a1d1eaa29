"""What the sink retries and what it isolates, by the error's type and SQLSTATE."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from psycopg import errors

from sinks.errors import TransientSinkError, describe, is_bug, is_transient


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08006",  # connection failure
        "40001",  # serialization failure
        "40P01",  # deadlock detected
        "53300",  # too many connections
        "55P03",  # lock not available (lock_timeout)
        "57014",  # query canceled (statement_timeout)
        "57P01",  # admin shutdown
        "25P03",  # idle in transaction session timeout
        "42P01",  # undefined table: migrations not applied yet
        "42501",  # insufficient privilege: an operator must grant it
        "28P01",  # invalid password
        # No record's value causes these; every record of every batch would meet them (a bad
        # deploy): waiting, not dead-lettering the stream.
        "42601",  # syntax error
        "42703",  # undefined column (renamed or dropped)
        "42804",  # datatype mismatch (a column's type changed)
        "XX000",  # internal error
        "XX001",  # data corrupted
    ],
)
def test_not_now_is_transient(sqlstate: str) -> None:
    assert is_transient(errors.lookup(sqlstate)())


@pytest.mark.parametrize(
    "sqlstate",
    [
        "23505",  # unique violation
        "23514",  # check violation
        "22003",  # numeric value out of range
        "22P02",  # invalid text representation
        "22021",  # character not in repertoire
        "54000",  # program limit exceeded (an index row too large)
    ],
)
def test_what_a_record_causes_is_not_transient(sqlstate: str) -> None:
    assert not is_transient(errors.lookup(sqlstate)())


def test_client_side_errors_are_the_records_unless_the_connection_is_gone() -> None:
    assert not is_transient(psycopg.DataError("int too large to convert"))
    assert not is_transient(OverflowError("Python int too large to convert to C long"))
    assert not is_transient(ValueError("bad value"))
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert is_transient(psycopg.InterfaceError("the connection is closed"))
    assert is_transient(psycopg_pool.PoolTimeout("couldn't get a connection"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TransientSinkError("dead letters not delivered"))


def test_the_detail_names_the_sqlstate_or_the_client_error() -> None:
    assert describe(errors.lookup("23514")('new row violates check constraint "x"\nDETAIL: ...')) == (
        'database refused the record (23514): new row violates check constraint "x"'
    )
    assert describe(OverflowError("int too large")) == "the record could not be written: OverflowError: int too large"


def test_errors_of_our_own_code_are_bugs_not_the_records() -> None:
    assert is_bug(AttributeError("'MetricEvent' object has no attribute 'x'"))
    assert is_bug(NameError("name 'x' is not defined"))
    assert not is_bug(OverflowError("Python int too large to convert to C long"))
    assert not is_bug(errors.lookup("23514")())
