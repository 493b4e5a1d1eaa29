"""Staging: a batch's rows copied (binary COPY) into a temporary table of the batch's own
transaction, from which one set-based statement applies them.

The table is created by the transaction and dropped by its commit (`ON COMMIT DROP`), never kept
by the session: a backend that holds a temporary table drops it in a last transaction when it
exits, and under synchronous replication that commit waits for the standby; if the standby was
just promoted (a failover), the backend never exits and the old primary cannot shut down. A
session-lived table also breaks under PgBouncer's transaction pooling (the next transaction may
run on another server connection). Creating it per transaction costs catalog work, measured by
`bench/staging_ddl.py` (see bench/RESULTS.md): about 1.5 ms of PostgreSQL's CPU per transaction
on the benchmark's machine, most of what a batch of a few rows costs the server. A writer whose
kind is one set-based statement (metric) can take a batch without the table (metric: up to
2,000 records):
`Staging.inline` is the same rows as a FROM item of arrays, one per column (`Staging.arrays`),
bound as the statement's binary parameters.

The staging table, the COPY's column types and each record's row tuple are all generated from
the event model's columns (`schemas.columns.columns_of`), plus the record's Kafka offset: one
declaration per column, so a staged type cannot silently narrow what the schema accepted.

`StagedWriter` is what every kind's writer shares (`sinks.core.sink.RowWriter`); the kind's own
part is `apply`: stage the batch, then its statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection, AsyncCursor
from pydantic import BaseModel

from schemas.columns import Column, columns_of, jsonb_text
from sinks.core.batch import Outcome, Record

OFFSET = Column("kafka_offset", "int8")
E = TypeVar("E", bound=BaseModel)
Records = Sequence[Record[E]]  # one partition's records, as a writer is given them


@dataclass(frozen=True)
class Staging:
    """The staging table of one event model: `<table>` with the model's columns + kafka_offset."""

    table: str
    columns: tuple[Column, ...]

    @classmethod
    def of(cls, model: type[BaseModel], table: str) -> Staging:
        return cls(table, (*columns_of(model), OFFSET))

    @property
    def ddl(self) -> str:
        """Created by the transaction that stages, dropped by its commit (or its rollback)."""
        body = ",\n    ".join(f"{c.name} {c.pg_type}" for c in self.columns)
        return f"CREATE TEMP TABLE {self.table} (\n    {body}\n) ON COMMIT DROP"

    @property
    def copy(self) -> str:
        return f"COPY {self.table} ({', '.join(c.name for c in self.columns)}) FROM STDIN (FORMAT BINARY)"

    @property
    def types(self) -> list[str]:
        return [c.pg_type for c in self.columns]

    @property
    def drop(self) -> str:
        return f"DROP TABLE {self.table}"

    @property
    def inline(self) -> str:
        """The staged rows as a FROM item named like the staging table, from one array parameter
        per column (`arrays`, in column order): for a statement that reads them once. A jsonb
        column travels as text (serialised as the pool's JSON dumper does) and is cast back.

        The arrays go in binary (`%b`), as the COPY does: psycopg's text array dumper quotes and
        escapes every element with a regular expression, which cost the worker 3 to 5 times the
        binary one per row (bench/RESULTS.md, ninth round). A column NULL in every record is the
        exception: psycopg cannot type a list of None alone and sends the text `{NULL,...}`,
        read as NULLs because the transaction sets `array_nulls` on (sinks/local_settings.py)."""
        arrays = ", ".join(f"%b::{_array_element(c)}[]" for c in self.columns)
        names = ", ".join(c.name for c in self.columns)
        select = ", ".join(f"{c.name}::jsonb AS {c.name}" if c.pg_type == "jsonb" else c.name for c in self.columns)
        return f"(SELECT {select} FROM unnest({arrays}) AS u ({names})) AS {self.table}"

    def arrays(self, records: Sequence[Record[Any]]) -> list[list[Any]]:
        """The `inline` FROM item's parameters: each column's values, in column order."""
        arrays: list[list[Any]] = [list(values) for values in zip(*self.rows(records), strict=True)]
        for i, column in enumerate(self.columns):
            if column.pg_type == "jsonb":
                arrays[i] = [None if v is None else jsonb_text(v).decode() for v in arrays[i]]
        return arrays

    def rows(self, records: Iterable[Record[Any]]) -> Iterable[tuple[Any, ...]]:
        """Each record's row: its event's fields in column order, then its offset."""
        fields = attrgetter(*(c.name for c in self.columns[:-1]))
        for record in records:
            yield (*fields(record.event), record.offset)

    async def stage(self, conn: AsyncConnection, records: Sequence[Record[Any]]) -> AsyncCursor:
        """Create the staging table, COPY the records into it; return a binary cursor for what
        follows. Once per transaction (or savepoint: see `StagedWriter.upsert_one`)."""
        await conn.execute(self.ddl)
        cur = conn.cursor(binary=True)
        async with cur.copy(self.copy) as copy:
            copy.set_types(self.types)
            for row in self.rows(records):
                await copy.write_row(row)
        return cur


def _array_element(column: Column) -> str:
    return "text" if column.pg_type == "jsonb" else column.pg_type


class StagedWriter(Generic[E]):
    """A kind's writer: `apply` COPYs a batch into the kind's staging table and applies it (or,
    for a kind whose statement reads the rows once, may bind a small batch inline).

    A subclass names its kind and staging table in its header,
    `class MetricWriter(StagedWriter[MetricEvent], kind="metric", staging=STAGING)`, with
    `ordered=True` when what a record does depends on the records before it. (`apply` is the
    kind's own frame in a profile: `bench/report_mixed.py` charges each kind by it.)
    """

    kind: str
    staging: Staging
    stage_ddl: tuple[str, ...]
    ordered: bool

    def __init_subclass__(cls, *, kind: str, staging: Staging, ordered: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Nothing to create per connection: the staging table is the transaction's (`Staging.stage`).
        cls.kind, cls.staging, cls.stage_ddl, cls.ordered = kind, staging, (), ordered

    async def upsert(self, conn: AsyncConnection, topic: str, partition: int, records: Records[E]) -> Outcome:
        if not records:
            return Outcome()
        return await self.apply(conn, topic, partition, records)

    async def apply(self, conn: AsyncConnection, topic: str, partition: int, records: Records[E]) -> Outcome:
        """`upsert` of one record or more: `self.staging.stage` them, then the kind's statements."""
        raise NotImplementedError

    async def prepare(self, conn: AsyncConnection, records: Records[E]) -> None:
        """Nothing to take ahead unless the kind says so: a row that takes only its own key's lock."""

    async def upsert_one(self, conn: AsyncConnection, topic: str, partition: int, record: Record[E]) -> Outcome:
        """One record through the bulk path, for a batch redone row by row, each record in a
        savepoint of the same transaction: the staging table it created is dropped before the
        next record creates its own (a record that failed took its table with its savepoint).
        """
        outcome = await self.upsert(conn, topic, partition, [record])
        await conn.execute(self.staging.drop)
        return outcome
