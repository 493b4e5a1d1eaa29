"""The rebalance scenario's arithmetic (bench/rebalance.py): gaps between a partition's commits,
which partitions moved, the handover. No services."""

from __future__ import annotations

from pathlib import Path

from bench.rebalance import Assignment, Commit, Gap, analyse, assignments, foreign, gaps, longest


def c(partition: int, at: float, worker: str = "A") -> Commit:
    return Commit(partition, at, worker, 1)


def test_gaps_are_whole_intervals_ending_in_the_window() -> None:
    commits = [c(0, 0), c(1, 100), c(0, 500), c(0, 3000), c(1, 3100), c(0, 3500), c(0, 9000)]
    # Window (1000, 4000]: p0 500 -> 3000 (begins before the window: counted whole), 3000 -> 3500;
    # p1 100 -> 3100; p0 3500 -> 9000 ends after the window.
    found = gaps(commits, [0, 1], 1000, 4000)
    assert found == [Gap(0, 500, 3000), Gap(1, 100, 3100), Gap(0, 3000, 3500)]
    assert longest(found) == Gap(1, 100, 3100)
    assert gaps(commits, [1], 0, 100) == []
    assert longest([]) is None


def test_join_and_leave_split_the_partitions_by_as_assignments() -> None:
    found = [
        Assignment(0, "A", frozenset(range(4))),
        Assignment(2000, "A", frozenset({2, 3})),
        Assignment(2100, "B", frozenset({0, 1})),
        Assignment(6000, "A", frozenset(range(4))),
    ]
    commits = [
        c(0, 500), c(2, 600), c(3, 700), c(1, 800),
        c(2, 2500), c(0, 2600, "B"), c(3, 2700), c(1, 2800, "B"),
        c(1, 5000, "B"), c(2, 6500), c(1, 6600), c(3, 6700), c(0, 6800),
    ]  # fmt: skip
    join = analyse(commits, found, "join", 1000, 4000, 4)
    assert join.unmoved == {2, 3} and join.moved == {0, 1}
    assert join.unmoved_gap == Gap(3, 700, 2700)
    assert join.moved_gap == Gap(0, 500, 2600)
    assert join.assigned_ms == 1000 and join.b_assigned_ms == 1100
    assert join.handover_ms == 1600  # B's first commit at 2600
    assert join.a_last_ms is None  # A made no commit between the join and its assignment
    leave = analyse(commits, found, "leave", 4000, float("inf"), 4)
    assert leave.unmoved == {2, 3} and leave.moved == {0, 1}
    assert leave.unmoved_gap == Gap(2, 2500, 6500)
    assert leave.moved_gap == Gap(0, 2600, 6800)
    assert leave.handover_ms == 2600  # A's first commit on 0 or 1 after the leave: p1 at 6600
    assert foreign(commits, found) == 0
    assert foreign([*commits, c(0, 3000)], found) == 1  # A on p0 while B had it


def test_assignments_are_read_from_json_logs(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text(
        '{"event": "worker starting", "timestamp": "2026-12-06T07:07:17.471Z"}\n'
        "not json, partitions assigned\n"
        '{"event": "partitions assigned", "topic": "t", "partitions": [4, 5], '
        '"timestamp": "2026-12-06T07:07:21.978Z"}\n'
    )
    (a,) = assignments(log, "A")
    assert a.worker == "A" and a.partitions == {4, 5}
    assert a.at_ms == 1796540841978.0  # UTC
