"""What creating the staging table in every transaction costs (issue 20).

A batch's transaction stages its rows in a temporary table. It used to be session-lived
(created once per connection, `ON COMMIT DELETE ROWS`); it is now the transaction's own
(`CREATE TEMP TABLE ... ON COMMIT DROP`, see sinks/writers/staging.py). This times, for each
way and batch size, transactions that stage a batch of metric rows (binary COPY) and commit,
on one connection, and prints the median and the 90th percentile per transaction. The commits
do not wait for the WAL flush (`synchronous_commit = off`), whose time on a loaded disk would
hide what is measured; the two ways alternate, in rounds, so that a change of load hits both.

    .venv/bin/python -m bench.staging_ddl [--dsn URL] [--transactions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import psycopg

from sinks.core.batch import Record
from sinks.writers.metric import STAGING

SIZES = (1, 100, 1000)


def records(n: int) -> list[Record]:
    from schemas.metric import MetricEvent

    tenant = uuid.uuid4()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Record(
            o,
            MetricEvent.model_construct(
                tenant_id=tenant, dedupe_id=f"d{o}", name="cpu", value=1.0, occurred_at=at, tags={"h": "a"}, unit=None
            ),
            None,
            None,
        )
        for o in range(n)
    ]


async def per_transaction(dsn: str, way: str, batch: list[Record], n: int) -> list[float]:
    session_ddl = STAGING.ddl.replace("CREATE TEMP TABLE", "CREATE TEMP TABLE IF NOT EXISTS").replace(
        "ON COMMIT DROP", "ON COMMIT DELETE ROWS"
    )
    times = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("SET synchronous_commit = off")
        if way == "session":
            await conn.execute(session_ddl)
            await conn.commit()
        for _ in range(n):
            started = time.perf_counter()
            if way == "transaction":
                await conn.execute(STAGING.ddl)
            cur = conn.cursor(binary=True)
            async with cur.copy(STAGING.copy) as copy:
                copy.set_types(STAGING.types)
                for row in STAGING.rows(batch):
                    await copy.write_row(row)
            await conn.execute(f"SELECT count(*) FROM {STAGING.table}")
            await conn.commit()
            times.append(time.perf_counter() - started)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--transactions", type=int, default=300)
    args = parser.parse_args()
    print(f"{'rows':>5} {'staging table':<22} {'median ms':>10} {'p90 ms':>8}")
    for size in SIZES:
        batch = records(size)
        found: dict[str, list[float]] = {"session": [], "transaction": []}
        for _ in range(10):
            for way in found:
                found[way] += (await per_transaction(args.dsn, way, batch, args.transactions // 10 + 2))[2:]
        for way, times in found.items():
            times.sort()
            label = "per session (old)" if way == "session" else "per transaction (new)"
            p90 = times[int(len(times) * 0.9)]
            print(f"{size:>5} {label:<22} {statistics.median(times) * 1000:>10.3f} {p90 * 1000:>8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
