"""The connection pool every sink shares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from sinks.local_settings import LocalSettings
from sinks.secrets import register_dsn


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


class Pool(AsyncConnectionPool):
    """A pool that carries the settings each batch transaction sets for itself (`local`): they
    are per transaction, not per connection, so that they hold through PgBouncer."""

    def __init__(self, *args: Any, local: LocalSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local = local


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
) -> Pool:
    """Create (but do not open) a pool whose connections have the staging tables ready.

    TCP keepalives make a connection that a network fault left half-open fail within seconds
    instead of hanging a batch until the kernel gives up. A lock timeout makes a writer that waits
    on another's row lock give up (and retry) instead of waiting without end, and the idle-in-
    transaction timeout lets the server end the session of a frozen writer that holds a
    partition's ledger lock; its late commit then fails, and the ledger makes the retry harmless.
    The three are set by each batch transaction (`Pool.local`), not on the session.
    """
    register_dsn(dsn)
    ddl = tuple(stage_ddl)

    async def configure(conn: psycopg.AsyncConnection) -> None:
        set_json_dumps(_dumps, context=conn)
        for statement in ddl:
            await conn.execute(statement)
        await conn.commit()

    local = LocalSettings(statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms)
    return Pool(
        dsn,
        local=local,
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
            # No statement prepared by name on the server: through a pooler in transaction mode
            # (PgBouncer 1.18) the next transaction runs on another server connection, where the
            # name is missing or another client's. A batch runs a handful of statements.
            "prepare_threshold": None,
        },
        reconnect_timeout=float("inf"),
    )
