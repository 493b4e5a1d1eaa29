"""Whether a connection reaches PostgreSQL itself, or a pooler (PgBouncer) that hands its
transactions to whichever server connection is free.

What needs a session of its own (a session-level advisory lock, an exported snapshot with
pg_dump's own session beside it, session settings) is not safe through a pooler in
transaction mode: `migrate`, `backup` and `restore` ask this and refuse.

The check: the process id libpq learnt when it connected (the BackendKeyData message of the
startup) is the server backend's own on a direct connection, or through a plain TCP proxy; a
pooler answers the startup itself and sends a key of its own (PgBouncer: a random one), so it
differs from `pg_backend_pid()`, the backend that actually runs the statement.
"""

from __future__ import annotations

from typing import Any

import psycopg

POOLER_HINT = (
    "DATABASE_URL reaches a connection pooler (PgBouncer or alike), not PostgreSQL itself: {what} needs a "
    "direct connection ({why}). Point DATABASE_URL at the server (its host and port, not the pooler's) for this "
    "command; workers may keep the pooler"
)


def through_pooler(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is not None and int(row[0]) != conn.info.backend_pid
