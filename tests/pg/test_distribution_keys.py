"""Ready to be distributed by tenant (README, "Outgrowing one PostgreSQL"): read from the catalogue
of a fully migrated database, every primary key, unique constraint, unique index and foreign key
of a tenant's table includes `tenant_id` (Citus refuses to distribute a table otherwise), and the
tables without a tenant are the reference tables listed here, each with its reason."""

from __future__ import annotations

import psycopg
import pytest

from sinks.migrate import available

# Tables that hold no tenant's rows: on Citus they are reference tables (one copy on every node,
# written in the same transaction as any shard) or stay on the coordinator. A new table either
# has tenant_id in every key or is added here with its reason.
REFERENCE_TABLES = {
    "schema_migrations": "which migrations ran: the schema's own bookkeeping, no tenant",
    "offsets_ledger": "per (group, topic, partition): one batch's transaction locks it with every tenant's rows",
    "lost_ranges": "offsets of a partition lost to retention: per partition, not per tenant",
    "dead_letter_payloads": "a dead letter's original record, which may name no readable tenant (it failed to decode)",
    "retention_horizons": "how far retention pruned each table: one row per table, for every tenant",
    "ledger_changes": "what operators changed in the ledger (ledger skip and reset): per partition, not per tenant",
}

TABLES = """
SELECT c.oid, c.relname,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
FROM pg_class c
WHERE c.relnamespace = 'eventsink'::regnamespace AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""
# Primary keys, unique and exclusion constraints, and unique indexes that no constraint declares:
# each with its columns' names. Expressions count as columns without a name.
UNIQUE_KEYS = """
SELECT i.indexrelid::regclass::text,
       CASE con.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint'
                        WHEN 'x' THEN 'exclusion constraint' ELSE 'unique index' END,
       array(SELECT a.attname FROM unnest(i.indkey) AS k(attnum)
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
FROM pg_index i
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = %s AND (i.indisunique OR i.indisprimary OR con.oid IS NOT NULL)
"""
FOREIGN_KEYS = """
SELECT con.conname, con.confrelid::regclass::text,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.n),
       array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.n)
FROM pg_constraint con
WHERE con.conrelid = %s AND con.contype = 'f'
"""


def catalogue(dsn: str) -> list[tuple[str, bool, list[tuple[str, str, list[str | None]]], list[tuple]]]:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(TABLES).fetchall()
        return [
            (
                name,
                has_tenant,
                [tuple(r) for r in conn.execute(UNIQUE_KEYS, (oid,))],  # type: ignore[misc]
                [tuple(r) for r in conn.execute(FOREIGN_KEYS, (oid,))],
            )
            for oid, name, has_tenant in tables
        ]


def test_every_key_of_a_tenant_table_includes_tenant_id(database_url: str) -> None:
    found = catalogue(database_url)
    assert {name for name, *_ in found} >= {"metrics_raw", "chat_sessions", "chat_messages", "analysis_requests"}
    problems = []
    for name, has_tenant, keys, foreign in found:
        if name in REFERENCE_TABLES:
            if has_tenant:
                problems.append(f"{name} is listed as a reference table but has tenant_id: distribute it instead")
            continue
        if not has_tenant:
            problems.append(f"{name} has no tenant_id and is not a listed reference table")
            continue
        assert keys, f"{name} has no primary key"
        for index, kind, columns in keys:
            if "tenant_id" not in columns:
                problems.append(f"{name}: {kind} {index} on {columns} lacks tenant_id")
        for constraint, target, columns, referenced in foreign:
            # Between distributed tables, Citus wants the distribution columns matched.
            if target.removeprefix("eventsink.") in REFERENCE_TABLES:
                continue
            pairs = dict(zip(columns, referenced, strict=True))
            if pairs.get("tenant_id") != "tenant_id":
                problems.append(f"{name}: foreign key {constraint} to {target} does not match tenant_id with tenant_id")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("table", sorted(REFERENCE_TABLES))
def test_each_reference_table_exists(database_url: str, table: str) -> None:
    """An exception for a table that is gone would hide nothing now but mislead later."""
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"eventsink.{table}",)).fetchone() != (None,)


def test_the_key_migration_run_again_changes_nothing(own_database: str) -> None:
    """0008 is idempotent: on a schema that has its keys, running it again rebuilds no index."""
    keys = "SELECT conname, conindid FROM pg_constraint WHERE connamespace = 'eventsink'::regnamespace ORDER BY 1"
    migration = next(m for m in available() if m.name == "tenant_keys")
    with psycopg.connect(own_database, autocommit=True) as conn:
        before = conn.execute(keys).fetchall()
        conn.execute(migration.up)  # type: ignore[arg-type]
        assert conn.execute(keys).fetchall() == before
