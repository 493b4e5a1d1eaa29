"""Staging: a batch's rows copied (binary COPY) into a session-local temporary table, from which
one set-based statement applies them.

The staging table, the COPY's column types and each record's row tuple are all generated from
the event model's columns (`schemas.columns.columns_of`), plus the record's Kafka offset: one
declaration per column, so a staged type cannot silently narrow what the schema accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import psycopg
from pydantic import BaseModel

from schemas.columns import Column, columns_of
from sinks.core.batch import Outcome, Record

OFFSET = Column("kafka_offset", "int8")


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
        """Created once per connection; emptied by every commit."""
        body = ",\n    ".join(f"{c.name} {c.pg_type}" for c in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.table} (\n    {body}\n) ON COMMIT DELETE ROWS"

    @property
    def copy(self) -> str:
        return f"COPY {self.table} ({', '.join(c.name for c in self.columns)}) FROM STDIN (FORMAT BINARY)"

    @property
    def types(self) -> list[str]:
        return [c.pg_type for c in self.columns]

    @property
    def clear(self) -> str:
        return f"TRUNCATE {self.table}"

    def rows(self, records: Iterable[Record[Any]]) -> Iterable[tuple[Any, ...]]:
        """Each record's row: its event's fields in column order, then its offset."""
        fields = attrgetter(*(c.name for c in self.columns[:-1]))
        for record in records:
            yield (*fields(record.event), record.offset)

    async def stage(self, conn: psycopg.AsyncConnection, records: Sequence[Record[Any]]) -> psycopg.AsyncCursor:
        """COPY the records into the staging table; return a binary cursor for what follows."""
        cur = conn.cursor(binary=True)
        async with cur.copy(self.copy) as copy:
            copy.set_types(self.types)
            for row in self.rows(records):
                await copy.write_row(row)
        return cur


async def restage_one(
    writer: Any, staging: Staging, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[Any]
) -> Outcome:
    """One record through the bulk path, for a batch redone row by row.

    The staging table empties only at commit; in that redo it still holds the rows of the
    records tried before in the same transaction.
    """
    await conn.execute(staging.clear)
    return await writer.upsert(conn, topic, partition, [record])
