"""Kafka's committed offsets (monitoring, and the lag KEDA scales on) follow the ledger even when
the broker refuses a commit: the refused offsets are committed next time, the newest winning."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.worker import app as worker_app
from streams.worker.app import Runtime

A, B = TP("metrics", 0), TP("metrics", 1)


class Broker:
    """What the runtime's commit reaches: refuses while `refusing`, records what it accepted."""

    def __init__(self) -> None:
        self.refusing = False
        self.committed: list[dict[TP, int]] = []

    async def __call__(self, app: Any, offsets: dict[TP, int]) -> bool:
        if self.refusing:
            return False
        self.committed.append(dict(offsets))
        return True


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    b = Broker()
    monkeypatch.setattr(worker_app, "commit_offsets", b)
    return b


def runtime() -> Any:
    return SimpleNamespace(app=None, kafka_offsets={}, kafka_committed={})


async def test_offsets_the_broker_refused_are_committed_next_time(broker: Broker) -> None:
    rt = runtime()
    rt.kafka_offsets = {A: 10, B: 20}
    broker.refusing = True
    await Runtime.commit_offsets(rt)
    assert rt.kafka_committed == {}
    # Meanwhile partition 0 committed a newer batch; partition 1 stays idle.
    rt.kafka_offsets[A] = 15
    broker.refusing = False
    await Runtime.commit_offsets(rt)
    assert broker.committed == [{A: 15, B: 20}]
    assert rt.kafka_committed == {A: 15, B: 20}
    await Runtime.commit_offsets(rt)  # nothing new: nothing committed again
    assert len(broker.committed) == 1


async def test_nothing_is_committed_while_the_group_rebalances(broker: Broker) -> None:
    """A commit in the old generation is refused (ILLEGAL_GENERATION) and makes aiokafka rejoin:
    one more rebalance. Batches read through a rebalance commit during it; their offsets wait."""
    rt = runtime()
    rt.app = SimpleNamespace(rebalancing=True)
    rt.kafka_offsets = {A: 10}
    await Runtime.commit_offsets(rt)
    assert broker.committed == []
    rt.app.rebalancing = False
    await Runtime.commit_offsets(rt)
    assert broker.committed == [{A: 10}]
