"""The settings a batch transaction runs under, set at its start and gone at its end.

A session setting (`SET`, or `options=-c ...` in the DSN) does not survive a pooler in
transaction mode: PgBouncer drops the startup `options`, and a client's next transaction may run
on another server connection, whose session settings are someone else's (and a client's `SET`
stays on a connection others use next). So each batch transaction sets its own with
`set_config(..., is_local => true)`: they hold until its commit or rollback, on whichever server
connection it runs, directly connected or through PgBouncer alike.
"""

from __future__ import annotations

from dataclasses import dataclass

# eventsink's statements name their schema; the path only keeps anything of the session's (or of
# another client's on a pooled connection) from shadowing a built-in. Temporary tables (the
# staging tables) are still found first, as PostgreSQL always looks in pg_temp first for tables.
SEARCH_PATH = "pg_catalog, eventsink"

# array_nulls: psycopg sends a list of None alone (a column NULL in every record of an inline
# batch, `sinks.writers.staging.Staging.inline`) as the text array `{NULL,...}`, which a database
# or role with `array_nulls = off` would read as the string 'NULL'.
APPLY = """
SELECT set_config('statement_timeout', %s, true),
       set_config('lock_timeout', %s, true),
       set_config('idle_in_transaction_session_timeout', %s, true),
       set_config('search_path', %s, true),
       set_config('array_nulls', 'on', true)
"""


@dataclass(frozen=True, slots=True)
class LocalSettings:
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 30_000
    idle_in_transaction_timeout_ms: int = 60_000
    search_path: str = SEARCH_PATH

    @property
    def params(self) -> tuple[str, str, str, str]:
        """APPLY's parameters: run it first thing in the transaction (`sinks.core.sink`'s BEGIN)."""
        return (
            f"{int(self.statement_timeout_ms)}ms",
            f"{int(self.lock_timeout_ms)}ms",
            f"{int(self.idle_in_transaction_timeout_ms)}ms",
            self.search_path,
        )
