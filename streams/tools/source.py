"""Which PostgreSQL a read-only tool read: the server libpq chose (with several hosts and
`target_session_attrs=prefer-standby`, a standby when one answers) and its role, from the server
itself (`pg_is_in_recovery()`), so that a report never leaves its reader guessing whether it saw
the primary or a standby that may lag behind it, nor which database of that server it read (a
tool pointed at the wrong database must say so where the operator can see it).

Only what libpq says it connected to is shown: host, port and database name, never the DSN (its
password and other secret parameters stay out of every report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

ROLE = "SELECT pg_is_in_recovery()"


@dataclass(frozen=True, slots=True)
class ReadFrom:
    server: str  # host:port (or socket directory:port) as libpq connected
    standby: bool
    database: str = ""  # the database name as libpq connected

    @property
    def where(self) -> str:
        """host:port/database."""
        return f"{self.server}/{self.database}" if self.database else self.server

    @property
    def role(self) -> str:
        return "standby" if self.standby else "primary"

    def __str__(self) -> str:
        return f"{self.where} ({self.role})"

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "database": self.database, "role": self.role}


def read_from(conn: psycopg.Connection[Any]) -> ReadFrom:
    row = conn.execute(ROLE).fetchone()
    return ReadFrom(f"{conn.info.host}:{conn.info.port}", bool(row and row[0]), conn.info.dbname)
