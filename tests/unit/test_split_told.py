"""A batch that ran out of time and is written in halves is said and counted by the worker
(`Sink(on_split=...)`, wired in `streams.worker.app`): each half may wait as long again, and a
cascade of halvings must not go unseen (found by a helper holding the ledger's lock for 25 s)."""

from __future__ import annotations

import structlog

from sinks.core.batch import Batch
from streams.worker import app as worker_app
from streams.worker import telemetry


def test_a_split_batch_is_logged_as_a_warning_and_counted_as_a_retry() -> None:
    batch: Batch[object] = Batch("metrics", 3, 100, 149)
    counter = telemetry.BATCH_RETRIES.labels("metrics", "timed out, split")
    before = counter._value.get()
    with structlog.testing.capture_logs() as logs:
        worker_app._log_split(batch, RuntimeError("the transaction ran past its 3 s bound (transaction_timeout)"))
    assert counter._value.get() == before + 1
    (line,) = logs
    assert line["log_level"] == "warning" and line["event"] == "batch ran out of time; writing it in halves"
    assert (line["topic"], line["partition"], line["first_offset"]) == ("metrics", 3, 100)
    assert line["error"] == "the transaction ran past its 3 s bound (transaction_timeout)"
