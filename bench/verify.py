"""What a contender's database must hold once it is done: the metric check, and the protocol
every scenario's check follows (bench/verify_mixed.py is the mixed workload's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import psycopg

PER_TENANT = "SELECT tenant_id::text, count(*) FROM eventsink.metrics_raw GROUP BY 1"
DUPLICATE_KEYS = (
    "SELECT count(*) FROM (SELECT 1 FROM eventsink.metrics_raw GROUP BY tenant_id, dedupe_id HAVING count(*) > 1) d"
)


class Verdict(Protocol):
    """The outcome of a check: pass or not, the rows it counted, and one cell for the report."""

    @property
    def ok(self) -> bool: ...

    @property
    def rows(self) -> int: ...

    def summary(self) -> str: ...


@dataclass(frozen=True)
class Check:
    """eventsink.metrics_raw against the load: rows == unique, no key twice, every tenant exact."""

    rows: int
    unique: int
    duplicate_keys: int
    tenants_off: int  # tenants whose row count differs from what was sent

    @property
    def ok(self) -> bool:
        return self.rows == self.unique and self.duplicate_keys == 0 and self.tenants_off == 0

    def summary(self) -> str:
        if self.ok:
            return f"yes ({self.rows:,})"
        return f"**no**: {self.rows:,} rows, {self.duplicate_keys} dup keys, {self.tenants_off} tenants off"


def check_metrics(conn: psycopg.Connection, unique_per_tenant: Mapping[str, int]) -> Check:
    per_tenant: dict[str, int] = dict(conn.execute(PER_TENANT).fetchall())  # type: ignore[arg-type]
    (duplicate_keys,) = conn.execute(DUPLICATE_KEYS).fetchone()  # type: ignore[misc]
    expected = unique_per_tenant
    off = sum(1 for t in expected.keys() | per_tenant.keys() if per_tenant.get(t, 0) != expected.get(t, 0))
    return Check(sum(per_tenant.values()), sum(expected.values()), int(duplicate_keys), off)


def verify_metrics(dsn: str, unique_per_tenant: Mapping[str, int]) -> Check:
    with psycopg.connect(dsn) as conn:
        return check_metrics(conn, unique_per_tenant)
