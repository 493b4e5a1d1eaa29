"""Assigning partitions by backlog (streams.worker.backlog): the swaps, on Faust's own
assignment objects as the leader's assignor sees them."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from faust.assignor.client_assignment import ClientAssignment

from streams.worker.backlog import Backlog, balance
from streams.worker.faust_internals import _swap_by_backlog, assigned_alike

# The benchmark's metric topic, per partition (bench/RESULTS.md): the skew that motivated it.
BENCH = dict(enumerate([51_450, 23_738, 15_831, 4_067, 31_449, 39_672, 11_901, 19_900]))


def loads(assignment: dict[str, set[int]], weights: dict[int, int]) -> dict[str, int]:
    return {m: sum(weights[p] for p in ps) for m, ps in assignment.items()}


def best_split(weights: dict[int, int], sizes: tuple[int, ...]) -> int:
    """The lowest possible maximum load over every split into members of these sizes (brute
    force: the oracle, independent of `balance`)."""
    parts = sorted(weights)
    best = None
    if len(sizes) == 2:
        for first in itertools.combinations(parts, sizes[0]):
            a = sum(weights[p] for p in first)
            worst = max(a, sum(weights.values()) - a)
            best = worst if best is None else min(best, worst)
    assert best is not None
    return best


def test_round_robin_on_the_benchmark_topic_is_evened_out() -> None:
    assignment = {"a": {0, 2, 4, 6}, "b": {1, 3, 5, 7}}  # Faust's round robin, fresh group
    before = loads(assignment, BENCH)
    assert max(before.values()) == 110_631  # 56 % of 198,008
    swaps = balance(assignment, BENCH)
    assert swaps
    assert sorted(map(len, assignment.values())) == [4, 4]  # counts kept
    assert set().union(*assignment.values()) == set(range(8))  # each partition once
    after = loads(assignment, BENCH)
    # Within 1 % of the total of the best split there is (found by brute force).
    assert max(after.values()) <= best_split(BENCH, (4, 4)) + 0.01 * sum(BENCH.values())


def test_an_even_assignment_is_left_alone() -> None:
    weights = {p: 1000 for p in range(8)}
    assignment = {"a": {0, 1, 2, 3}, "b": {4, 5, 6, 7}}
    assert balance(assignment, weights) == []
    assert assignment == {"a": {0, 1, 2, 3}, "b": {4, 5, 6, 7}}


def test_three_members_uneven_counts() -> None:
    weights = {0: 900, 1: 800, 2: 10, 3: 10, 4: 10, 5: 10, 6: 10, 7: 10}
    assignment = {"a": {0, 1, 2}, "b": {3, 4, 5}, "c": {6, 7}}
    balance(assignment, weights)
    assert sorted(len(ps) for ps in assignment.values()) == [2, 3, 3]
    after = loads(assignment, weights)
    assert max(after.values()) <= 920  # 0 and 1 no longer on one member


def test_nothing_to_weigh() -> None:
    assert balance({"a": {0}, "b": {1}}, {}) == []
    assert balance({"a": {0, 1}}, {0: 5, 1: 9}) == []


def test_weights_sum_the_given_topics_and_need_the_threshold() -> None:
    measured = {"t": {0: 10, 1: 20}, "u": {0: 5, 1: -3}, "v": {0: 1000}}

    async def measure() -> dict[str, dict[int, int]]:
        return measured

    backlog = Backlog(measure, min_records=35)
    assert backlog.weights(["t"]) is None  # never measured
    asyncio.run(backlog.refresh())
    assert backlog.weights(["t", "u"]) == {0: 15, 1: 20}  # per partition; a negative counts 0
    assert backlog.weights(["t"]) is None  # 30 records: below the threshold
    assert backlog.weights(["v"]) == {0: 1000}  # another group's topics weigh on their own
    assert backlog.weights(["missing"]) is None


def test_an_old_measurement_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def measure() -> dict[str, dict[int, int]]:
        return {"t": {0: 100, 1: 1}}

    backlog = Backlog(measure, min_records=1, interval_s=10.0)
    asyncio.run(backlog.refresh())
    assert backlog.weights(["t"]) == {0: 100, 1: 1}
    assert backlog.measured_at is not None
    now = backlog.measured_at
    monkeypatch.setattr("streams.worker.backlog.time.monotonic", lambda: now + 31.0)
    assert backlog.weights(["t"]) is None


def test_a_measurement_that_hangs_is_given_up_and_the_last_one_kept() -> None:
    calls = 0

    async def measure() -> dict[str, dict[int, int]]:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(3600)  # a database or broker that stopped answering
        return {"t": {0: 7}}

    backlog = Backlog(measure, min_records=1, interval_s=0.05)
    asyncio.run(backlog.refresh())
    with pytest.raises(TimeoutError):
        asyncio.run(backlog.refresh())
    assert backlog.records == {"t": {0: 7}}


def test_many_members_are_balanced_too() -> None:
    """The least gain is a share of a member's mean load, not of the whole group's: with 32
    members, each holds about 3 % of the backlog, and a gain relative to the total stopped at
    the first swap."""
    rng = random.Random(5)
    weights = {p: int(rng.lognormvariate(8, 0.6)) for p in range(256)}
    members = [f"m{i:02}" for i in range(32)]
    assignment = {m: {p for p in range(256) if p % 32 == i} for i, m in enumerate(members)}  # round robin
    before = max(loads(assignment, weights).values())
    balance(assignment, weights)
    after = max(loads(assignment, weights).values())
    floor = max(max(weights.values()), sum(weights.values()) / 32)  # no assignment does better
    assert sorted(map(len, assignment.values())) == [8] * 32
    assert after - floor <= 0.1 * (before - floor), (before, after, floor)


def faust_assignment(actives: dict[str, list[int]], standbys: dict[str, list[int]] | None = None) -> ClientAssignment:
    return ClientAssignment(actives=dict(actives), standbys=dict(standbys or {}))


def test_swaps_move_a_partition_with_its_changelog_and_leave_other_topics() -> None:
    topics = ["metrics", "g-dedupe-metric-changelog"]
    a = faust_assignment({"metrics": [0, 2, 4, 6], "g-dedupe-metric-changelog": [0, 2, 4, 6], "g-__leader": [0]})
    b = faust_assignment({"metrics": [1, 3, 5, 7], "g-dedupe-metric-changelog": [1, 3, 5, 7]})
    assert _swap_by_backlog({"a": a, "b": b}, topics, BENCH)
    for x in (a, b):
        assert x.actives["metrics"] == x.actives["g-dedupe-metric-changelog"]
    assert sorted(a.actives["metrics"] + b.actives["metrics"]) == list(range(8))
    assert a.actives["g-__leader"] == [0]  # not one of ours: untouched
    load_a = sum(BENCH[p] for p in a.actives["metrics"])
    assert abs(load_a - sum(BENCH.values()) / 2) < 0.02 * sum(BENCH.values())


@pytest.mark.parametrize(
    "b_actives, b_standbys",
    [
        # Not copartitioned as expected: a source partition without its changelog partition.
        ({"metrics": [1, 3, 5, 7], "g-dedupe-metric-changelog": [1, 3, 5]}, {}),
        # Standby replicas of a changelog: swapping actives could make one both.
        ({"metrics": [1, 3, 5, 7], "g-dedupe-metric-changelog": [1, 3, 5, 7]}, {"g-dedupe-metric-changelog": [0]}),
    ],
)
def test_an_assignment_it_does_not_understand_is_left_as_faust_made_it(
    b_actives: dict[str, list[int]], b_standbys: dict[str, list[int]]
) -> None:
    topics = ["metrics", "g-dedupe-metric-changelog"]
    a = faust_assignment({"metrics": [0, 2, 4, 6], "g-dedupe-metric-changelog": [0, 2, 4, 6]})
    b = faust_assignment(b_actives, b_standbys)
    assert not _swap_by_backlog({"a": a, "b": b}, topics, BENCH)
    assert a.actives["metrics"] == [0, 2, 4, 6]
    assert b.actives == b_actives


def test_sources_assigned_alike_are_weighed_together() -> None:
    """Faust assigns copartitioned topics alike; topics of another partition count (or other
    subscribers) apart: each set is balanced on its own weights."""
    a = faust_assignment({"metrics": [0, 2], "chat": [0, 2], "analysis": [0, 1, 2, 3]})
    b = faust_assignment({"metrics": [1, 3], "chat": [1, 3], "analysis": [4, 5, 6, 7]})
    c = faust_assignment({})  # subscribed to nothing of ours
    sets = assigned_alike({"a": a, "b": b, "c": c}, ["metrics", "chat", "analysis", "unknown"])
    assert sorted(sets) == [["analysis"], ["metrics", "chat"]]
