"""The workers' analysis fold (`sinks.writers.lifecycle`) against the README's rules, written again
in `tests/unit/reference_lifecycle.py`, on random events delivered in random orders."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.writers.lifecycle import Step, fold, superseded
from tests.unit import reference_lifecycle as reference

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STATUSES = ("pending", "processing", "completed", "failed", "deleted")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@st.composite
def events(draw: st.DrawFn) -> list[Step]:
    """1 to 8 distinct events of one analysis: few distinct times (ties are common), optional
    fields present or not, result only with completed and error only with failed (the schema's rule)."""
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        status = draw(st.sampled_from(STATUSES))
        out.append(
            Step(
                dedupe_id=f"e{draw(st.integers(0, 99)):02d}-{i}",
                status=status,
                # Whole seconds and now and then a microsecond: ties, and times a tick apart.
                occurred_at=at(draw(st.integers(0, 4)) + draw(st.sampled_from([0, 0, 0, 1e-6]))),
                progress=draw(st.none() | st.integers(0, 100)),
                result=draw(st.none() | st.just({"score": i})) if status == "completed" else None,
                error=draw(st.none() | st.just(f"error {i}")) if status == "failed" else None,
                kind=draw(st.none() | st.sampled_from(["video", "audio"])),
                media_url=draw(st.none() | st.sampled_from(["s3://a", "s3://b"])),
            )
        )
    return out


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Step], list[Step]]:
    """Distinct events, and a delivery of them: a permutation with some sent again."""
    distinct = draw(events())
    order = draw(st.permutations(distinct))
    again = draw(st.lists(st.sampled_from(distinct), max_size=4))
    delivered = list(order)
    for e in again:
        delivered.insert(draw(st.integers(0, len(delivered))), e)
    return distinct, delivered


def production_row(steps: list[Step]) -> dict[str, Any]:
    return asdict(fold(steps))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_the_fold_is_the_readme_row_whatever_the_delivery(case: tuple[list[Step], list[Step]]) -> None:
    distinct, delivered = case
    want = reference.row(distinct)
    assert production_row(delivered) == want
    assert production_row(list(reversed(delivered))) == want


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.data())
def test_superseded_events_are_those_older_than_the_state_they_meet(
    case: tuple[list[Step], list[Step]], data: st.DataObject
) -> None:
    """In delivery order, duplicates dropped (the database drops them before the fold), and split
    anywhere into what the row already absorbed and what arrives in one batch."""
    _, delivered = case
    arrival = list({e.dedupe_id: e for e in reversed(delivered)}.values())[::-1]  # first copies, in order
    assert superseded([], arrival) == reference.superseded([], arrival)
    cut = data.draw(st.integers(0, len(arrival)), label="cut")
    before = data.draw(st.permutations(arrival[:cut]), label="before, in any order")
    assert superseded(before, arrival[cut:]) == reference.superseded(arrival[:cut], arrival[cut:])


def test_superseded_events_change_no_lifecycle_field() -> None:
    """What the README promises of a superseded event, on the reference itself: the row's status,
    progress, result and error are the same with and without it."""
    life = [
        Step("p", "pending", at(0)),
        Step("r", "processing", at(2), progress=40),
        Step("c", "completed", at(3), result={"ok": True}),
        Step("late", "processing", at(1), progress=10),
        Step("d", "deleted", at(4)),
        Step("d2", "deleted", at(5)),
    ]
    stale = reference.superseded([], life)
    assert stale == {"late", "d2"}
    lifecycle = ("status", "progress", "result", "error")
    kept = [e for e in life if e.dedupe_id not in stale]
    assert {f: reference.row(kept)[f] for f in lifecycle} == {f: reference.row(life)[f] for f in lifecycle}


def test_the_reference_reads_the_readme_as_written() -> None:
    """A few rows worked out by hand from the README's sentences."""
    pending = Step("p", "pending", at(0), kind="video", media_url="s3://a")
    working = Step("r", "processing", at(1), progress=30)
    done = Step("c", "completed", at(2), result={"score": 1})
    assert reference.row([pending, working, done]) == {
        "status": "completed",
        "progress": 100,  # completed without progress
        "result": {"score": 1},
        "error": None,
        "kind": "video",
        "media_url": "s3://a",
        "version": 3,
        "created_at": at(0),
        "updated_at": at(2),
        "deleted_at": None,
    }
    # Never backwards; of two terminal events the earlier stands.
    assert reference.row([done, Step("x", "pending", at(9))])["status"] == "completed"
    assert reference.row([done, Step("f", "failed", at(1), error="boom")])["status"] == "failed"
    # Soft delete: the last lifecycle fields stay, the first delete's time, nothing revives it.
    deleted = reference.row([working, Step("d1", "deleted", at(5)), Step("d0", "deleted", at(4)), done])
    assert (deleted["status"], deleted["result"], deleted["deleted_at"]) == ("deleted", {"score": 1}, at(4))
    assert reference.row([Step("d", "deleted", at(1))])["status"] == "deleted"
