"""The connection pool every sink shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from schemas.columns import jsonb_text
from sinks.local_settings import LocalSettings
from sinks.secrets import register_dsn

RECONNECT_CHAIN_S = 2.0


class ReadOnlyNode(psycopg.OperationalError):
    """The connection reaches a standby (or a node that a failover demoted): it cannot write."""


def _dumps(obj: object) -> str:
    # As `schemas.columns.JsonObject` measured it: a float keeps a fraction, so jsonb gives it back.
    return jsonb_text(obj).decode()


# A connection given back this recently is handed out again without a check: under load it saves
# a round trip per batch, and a server that became read-only within that time still refuses the
# batch's first write (SQLSTATE 25006), which closes the connection and retries the batch.
RECHECK_AFTER_S = 1.0


class Pool(AsyncConnectionPool):
    """A pool that carries the settings each batch transaction sets for itself (`local`): they
    are per transaction, not per connection, so that they hold through PgBouncer."""

    def __init__(self, *args: Any, local: LocalSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local = local
        # When each connection came back from a transaction that ended cleanly (by id: psycopg's
        # connections do not take attributes of ours, and a closed one is never handed out again).
        self._returned: dict[int, float] = {}

    async def putconn(self, conn: psycopg.AsyncConnection) -> None:
        if not conn.closed and conn.info.pipeline_status != psycopg.pq.PipelineStatus.OFF:
            # Left in pipeline mode (an interrupted pipeline): a COPY on it would fail.
            await conn.close()
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            if len(self._returned) > 4 * (self.max_size + 1):
                self._returned.clear()  # ids of connections the pool closed while idle (their lifetime)
            self._returned[id(conn)] = time.monotonic()
        else:
            self._returned.pop(id(conn), None)
        await super().putconn(conn)

    def fresh(self, conn: psycopg.AsyncConnection) -> bool:
        """Given back cleanly less than `RECHECK_AFTER_S` ago (and taken out now: forgotten)."""
        returned = self._returned.pop(id(conn), None)
        return returned is not None and time.monotonic() - returned < RECHECK_AFTER_S


async def _writable(conn: psycopg.AsyncConnection) -> None:
    """Raise `ReadOnlyNode` unless the connection's server takes writes. `target_session_attrs=
    read-write` asks the same of libpq when connecting, but a DSN may not say it, and a node that
    was primary when the connection was made may have been demoted since."""
    autocommit = conn.autocommit
    await conn.set_autocommit(True)  # the check opens no transaction
    try:
        # A standby's transactions are read-only, and so are those of a server told to refuse writes.
        cur = await conn.execute("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool")
        row = await cur.fetchone()
    finally:
        await conn.set_autocommit(autocommit)
    if row is None or row[0]:
        # Closed, so that the pool discards it: a connection that fails the check but looks
        # healthy would be put back and handed out again, until the request times out.
        await conn.close()
        raise ReadOnlyNode("the server is a standby (read-only); looking for the primary")


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
    check_timeout_s: float = 10.0,
) -> Pool:
    """Create (but do not open) a pool whose connections reach a primary, carrying the settings
    each batch transaction sets for itself (`Pool.local`), with `stage_ddl` (none by default) run
    on each.

    Every connection is checked when made and again when it is handed out after more than
    `RECHECK_AFTER_S` idle (one round trip, given `check_timeout_s` seconds): a lost one, one
    whose server does not answer, or one that reaches a node that became a standby, is
    discarded, and the pool connects again; with a multi-host DSN and
    `target_session_attrs=read-write`, libpq tries the hosts in turn and keeps the one that takes
    writes.

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
        await _writable(conn)
        set_json_dumps(_dumps, context=conn)
        for statement in ddl:
            await conn.execute(statement)
        await conn.commit()

    local = LocalSettings(statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms)

    async def check(conn: psycopg.AsyncConnection) -> None:
        if pool.fresh(conn):
            return
        # Bounded: psycopg_pool's getconn timeout does not cover the check, and a server that
        # stopped answering (a frozen node, a network path that holds the connection open) would
        # hold the batch that asked for ever, its /healthz saying nothing. Past the bound psycopg
        # cancels the query (up to 10 s more) and closes the connection.
        try:
            async with asyncio.timeout(check_timeout_s):
                await _writable(conn)
        except TimeoutError:
            await conn.close()  # the pool discards it
            raise

    pool = Pool(
        dsn,
        local=local,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        configure=configure,
        check=check,
        kwargs={
            # A batch transaction sends its own BEGIN and COMMIT, each in one simple query with the
            # statements beside it (`sinks.core.sink.Sink.write`): psycopg's implicit BEGIN would
            # cost a round trip of its own.
            "autocommit": True,
            # psycopg's JSON dumper (the COPY path's jsonb) always encodes UTF-8, while the server
            # reads what it is sent in the client encoding, which PGCLIENTENCODING may change: under
            # LATIN1, 'ü' was stored as 'Ã¼'. Pinned, every value reads as it was encoded.
            "client_encoding": "UTF8",
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
        # How long one chain of reconnection attempts (at 0, 1, 2 s) lasts before the pool gives up on it; the
        # next request for a connection starts a new chain at once. psycopg_pool doubles the wait
        # between the attempts of a chain without limit: an endless chain (the old setting) waited
        # 8, 16, 32 s... between attempts after an outage, long after a failover was over.
        reconnect_timeout=RECONNECT_CHAIN_S,
    )
    return pool
