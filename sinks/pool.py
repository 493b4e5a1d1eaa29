"""The connection pool every sink shares."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from schemas.columns import jsonb_text
from sinks.secrets import register_dsn


def _dumps(obj: object) -> str:
    # As `schemas.columns.JsonObject` measured it: a float keeps a fraction, so jsonb gives it back.
    return jsonb_text(obj).decode()


def open_pool(
    dsn: str,
    *,
    stage_ddl: Iterable[str] = (),
    min_size: int = 1,
    max_size: int = 4,
    statement_timeout_ms: int = 60_000,
    lock_timeout_ms: int = 30_000,
    idle_in_transaction_timeout_ms: int = 60_000,
    name: str = "eventsink",
) -> AsyncConnectionPool:
    """Create (but do not open) a pool whose connections have the staging tables ready.

    TCP keepalives make a connection that a network fault left half-open fail within seconds
    instead of hanging a batch until the kernel gives up. A lock timeout makes a writer that waits
    on another's row lock give up (and retry) instead of waiting without end, and the idle-in-
    transaction timeout lets the server end the session of a frozen writer that holds a
    partition's ledger lock; its late commit then fails, and the ledger makes the retry harmless.
    """
    register_dsn(dsn)
    ddl = tuple(stage_ddl)

    async def configure(conn: psycopg.AsyncConnection) -> None:
        set_json_dumps(_dumps, context=conn)
        await conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
        await conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        await conn.execute(f"SET idle_in_transaction_session_timeout = {int(idle_in_transaction_timeout_ms)}")
        for statement in ddl:
            await conn.execute(statement)
        await conn.commit()

    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        configure=configure,
        kwargs={
            "autocommit": False,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "connect_timeout": 10,
            "application_name": name,
        },
        reconnect_timeout=float("inf"),
    )
