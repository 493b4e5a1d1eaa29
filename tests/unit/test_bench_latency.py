"""The latency scenario's arithmetic (bench/): percentiles, latencies, rates, the clock offset and
the report's goal line, against values computed by hand. No services."""

from __future__ import annotations

from array import array

import pytest

from bench import report_latency
from bench.commit_clock import ClockOffset, offset_of
from bench.latency import LatencyResults, LatencyRun, LatencySpec, latencies, schedule
from bench.latency_stats import Summary, fraction_rates, nearest, percentiles, summarise
from bench.paced import Paced
from bench.report_latency import goal, row


def test_percentiles_interpolate_between_neighbours() -> None:
    # Position (n - 1) * p in the sorted values: 3 * 0.5 = 1.5 -> 20 + 0.5 * 10; 3 * 0.95 = 2.85 ->
    # 30 + 0.85 * 10; 3 * 0.99 = 2.97 -> 30 + 0.97 * 10. The order of the input does not matter.
    assert percentiles([40, 10, 30, 20]) == pytest.approx([25.0, 38.5, 39.7])


def test_percentiles_of_an_even_grid_fall_on_values() -> None:
    # 1..101: position 100 * p is a whole index, so the p-th percentile is the value 1 + 100 * p.
    assert percentiles(list(range(1, 102)), (1, 50, 95, 99)) == pytest.approx([2.0, 51.0, 96.0, 100.0])


def test_one_value_is_every_percentile() -> None:
    assert percentiles([7.5]) == [7.5, 7.5, 7.5]


def test_percentiles_refuse_nothing_and_out_of_range_points() -> None:
    with pytest.raises(ValueError):
        percentiles([])
    with pytest.raises(ValueError):
        percentiles([1, 2], (0,))
    with pytest.raises(ValueError):
        percentiles([1, 2], (100,))


def test_summary_of_latencies() -> None:
    assert summarise([]) is None
    # Sorted: 100, 200, 300, 400, 1000; positions 2, 3.8, 3.96.
    assert summarise([300, 100, 1000, 200, 400]) == Summary(
        5, 300.0, pytest.approx(880.0), pytest.approx(976.0), 1000.0
    )


def test_latency_is_commit_minus_create_time() -> None:
    created = array("q", [1_000, 1_010, 1_020])
    timed = [(2, 1_520.5, 1_400.0), (0, 1_600.0, 1_500.0)]
    to_commit, to_received = latencies(created, timed)
    assert to_commit == [500.5, 600.0]
    assert to_received == [380.0, 500.0]


def test_a_run_knows_its_own_records_only() -> None:
    paced = Paced(100.0, "0a1b2c", array("q", [1, 2, 3]))
    assert [paced.index(d) for d in ("0a1b2c-0", "0a1b2c-2")] == [0, 2]
    # Past what was sent, a probe, another run's, a malformed id.
    assert [paced.index(d) for d in ("0a1b2c-3", "probe-1", "ffffff-1", "0a1b2c-x", "0a1b2c-")] == [None] * 5


def test_ack_latency_of_the_records_acknowledged() -> None:
    paced = Paced(5.0, "r", array("q", [1_000, 1_200, 1_400]), array("d", [1_005.5, 0.0, 1_420.0]))
    assert paced.to_ack_ms() == [5.5, 20.0]  # the second never acknowledged


def test_achieved_rate_is_over_the_intervals_between_sends() -> None:
    # 11 records sent over 2 s: 10 intervals, 5 per second.
    paced = Paced(5.0, "r", array("q", range(11)), seconds=2.0)
    assert paced.achieved == pytest.approx(5.0)


def test_rates_are_fractions_of_the_maximum() -> None:
    assert fraction_rates((0.25, 0.5, 0.75), 12_345) == {0.25: 3086, 0.5: 6172, 0.75: 9259}
    assert fraction_rates((0.00001,), 1000) == {0.00001: 1}
    with pytest.raises(ValueError):
        fraction_rates((0.5,), 0)
    assert nearest((0.25, 0.5, 0.75), 0.5) == 0.5
    assert nearest((0.2, 0.6), 0.5) == 0.6
    assert nearest((0.4, 0.6), 0.5) == 0.4  # a tie: the first


def test_one_rate_contenders_run_once_at_the_middle() -> None:
    names = ["eventsink", "eventsink-100ms", "quix"]
    assert schedule(names, (0.25, 0.5, 0.75)) == [
        (0.25, "eventsink"),
        (0.25, "quix"),
        (0.5, "eventsink"),
        (0.5, "eventsink-100ms"),
        (0.5, "quix"),
        (0.75, "eventsink"),
        (0.75, "quix"),
    ]


def test_each_round_rotates_the_contenders_order() -> None:
    names = ["eventsink", "plain", "quix"]
    assert schedule(names, (0.5,), 1) == [(0.5, "eventsink"), (0.5, "plain"), (0.5, "quix")]
    assert schedule(names, (0.5,), 2) == [(0.5, "plain"), (0.5, "quix"), (0.5, "eventsink")]
    assert schedule(names, (0.5,), 4) == schedule(names, (0.5,), 1)
    # The plain loop is an anchor at every rate; a one-rate contender still runs at the middle only.
    assert schedule(["eventsink", "plain", "quix-1s"], (0.25, 0.5), 2) == [
        (0.25, "plain"),
        (0.25, "eventsink"),
        (0.5, "plain"),
        (0.5, "quix-1s"),
        (0.5, "eventsink"),
    ]


def test_clock_offset_is_against_the_middle_of_the_round_trip() -> None:
    found = offset_of(100.000, 100.0105, 100.020)
    assert found.offset_ms == pytest.approx(0.5)
    assert found.uncertainty_ms == pytest.approx(10.0)


def _run(
    p99: float,
    fraction: float = 0.5,
    rate: int = 500,
    missing: int = 0,
    contender: str = "eventsink",
    rnd: int = 1,
    broker_cpu_s: float | None = None,
) -> LatencyRun:
    paced = Paced(500.0, "r", array("q", range(1000)), seconds=1.998)
    return LatencyRun(
        contender,
        fraction,
        rate,
        paced,
        committed=1000 - missing,
        to_commit=Summary(1000 - missing, min(300.0, p99), min(700.0, p99), p99, 1200.0),
        to_received=Summary(1000 - missing, 250.0, 650.0, 900.0, 1100.0),
        to_ack=Summary(1000, 4.0, 9.0, 12.4, 30.0),
        transactions=20,
        ready_s=4.3,
        cpu_s=0.05,
        harness_cpu_s=0.02,
        busy_cpu_s=3.05,
        seconds=2.0,
        rss_mb=150.4,
        round=rnd,
        broker_cpu_s=broker_cpu_s,
    )


def _results(p99: float, missing: int = 0, low_p99: float | None = None) -> LatencyResults:
    spec = LatencySpec((0.25, 0.5), 60.0, 8, 50, 1)
    runs = [_run(p99, missing=missing)]
    if low_p99 is not None:
        runs.append(_run(low_p99, fraction=100 / 1000.0 / 100, rate=100))
    return LatencyResults(spec, 1000.0, "given", runs, ClockOffset(0.0, 0.1), ["eventsink"])


def test_goal_is_p99_at_most_300_ms_at_half_load() -> None:
    mid = goal(_results(300.0)).splitlines()[0]
    assert mid.startswith("- met:") and "p99 300 ms" in mid
    assert goal(_results(301.0)).splitlines()[0].startswith("- **not met**:")
    assert goal(_results(200.0, missing=3)).splitlines()[0].startswith("- **not met**:")  # a record never committed


def test_goal_at_a_light_rate_is_p99_below_the_former_batch_wait() -> None:
    assert goal(_results(300.0)).splitlines()[1].startswith("- not measured:")
    assert goal(_results(300.0, low_p99=499.0)).splitlines()[1].startswith("- met:")
    low = goal(_results(300.0, low_p99=500.0)).splitlines()[1]
    assert low.startswith("- **not met**:") and "100 records/s" in low


def test_goal_not_measured_without_a_default_run_at_half_load() -> None:
    results = _results(500.0)
    other = LatencyResults(results.spec, 1000.0, "given", [], None, [])
    assert goal(other).startswith("- not measured:")


def _rounds(ours: list[float], plain: list[float | None]) -> LatencyResults:
    spec = LatencySpec((0.5,), 60.0, 8, 50, 1, low_rate=0)  # no light run: no line for it
    runs = [_run(p, rnd=k) for k, p in enumerate(ours, 1)]
    runs += [_run(p, contender="plain", rnd=k) for k, p in enumerate(plain, 1) if p is not None]
    return LatencyResults(spec, 1000.0, "given", runs, None, ["eventsink", "plain"], len(ours))


def test_goal_is_met_only_when_every_round_meets_it() -> None:
    met = goal(_rounds([250.0, 300.0], [200.0, 150.0])).splitlines()[0]
    assert met.startswith("- met:") and "round 1: p50 250 ms, p99 250 ms" in met and "round 2:" in met
    assert goal(_rounds([250.0, 301.0], [200.0, 150.0])).splitlines()[0].startswith("- **not met**:")


def test_anchor_gives_eventsinks_p99_over_the_plain_loops_per_round() -> None:
    anchor = goal(_rounds([900.0, 600.0, 500.0], [600.0, 200.0, 400.0])).splitlines()[-1]
    assert anchor == (
        "- anchor: the plain loop at 50% load, p99 by round: 600 ms, 200 ms, 400 ms (above 300 ms in 2 of 3); "
        "eventsink's p99 / the plain loop's, by round: 1.50, 3.00, 1.25 (median 1.50)"
    )
    # A round without the plain loop has no ratio; without the plain loop at all, no anchor line.
    partial = goal(_rounds([900.0, 600.0], [600.0, None])).splitlines()[-1]
    assert partial.endswith("by round: 1.50 (median 1.50)")
    assert len(goal(_results(300.0)).splitlines()) == 2
    assert len(goal(_rounds([900.0], [None])).splitlines()) == 1


def test_an_anchor_line_per_load_the_plain_loop_ran_at() -> None:
    spec = LatencySpec((0.25, 0.5), 60.0, 8, 50, 1, low_rate=0)
    runs = [
        _run(100.0, fraction=0.25),
        _run(50.0, fraction=0.25, contender="plain"),
        _run(900.0),
        _run(450.0, contender="plain"),
    ]
    lines = goal(LatencyResults(spec, 1000.0, "given", runs, None, ["eventsink", "plain"])).splitlines()
    assert lines[1].startswith("- anchor: the plain loop at 25% load, p99 by round: 50 ms (above 300 ms in 0 of 1)")
    assert lines[1].endswith("by round: 2.00 (median 2.00)")
    assert lines[2].startswith("- anchor: the plain loop at 50% load, p99 by round: 450 ms (above 300 ms in 1 of 1)")


def test_report_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_latency, "CORES", 2)
    (run,) = _results(950.0).runs
    assert row(run) == [
        "eventsink",
        "50%",
        "1",
        "500",
        "500",  # 999 intervals in 1.998 s
        "1,000",
        "1,000",
        "300",
        "700",
        "950",
        "1,200",
        "900",
        "12",
        "50",  # 1000 rows in 20 transactions
        "50",  # 0.05 s of CPU for 1000 records
        "150",
        "4.3",
        "76%",  # 3.05 CPU s busy in 2 s of 2 cores
        "20",  # 0.02 s of the harness's CPU for 1000 records
        "-",  # the broker was not the run's
        "1.49",  # (3.05 - 0.05 - 0.02) CPU s in 2 s
    ]
    with_broker = row(_run(950.0, rnd=2, broker_cpu_s=1.2))
    assert with_broker[2] == "2"
    assert with_broker[-2:] == ["0.60", "0.89"]  # 1.2 CPU s in 2 s; (3.05 - 0.05 - 0.02 - 1.2) in 2 s
