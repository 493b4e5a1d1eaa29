"""The analysis state machine as a pure function of a set of events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sinks.writers.lifecycle import Step, fold, superseded

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


LIFE = [
    Step("p", "pending", at(0), kind="video", media_url="s3://a"),
    Step("r1", "processing", at(1), progress=10),
    Step("r2", "processing", at(2), progress=60),
    Step("c", "completed", at(3), result={"score": 0.9}),
]


def test_in_order_life_ends_completed_with_its_result() -> None:
    st = fold(LIFE)
    assert (st.status, st.progress, st.result, st.error) == ("completed", 100, {"score": 0.9}, None)
    assert (st.kind, st.media_url, st.version) == ("video", "s3://a", 4)
    assert (st.created_at, st.updated_at, st.deleted_at) == (at(0), at(3), None)


def test_status_never_goes_backwards() -> None:
    assert fold([*LIFE, Step("late", "processing", at(10), progress=5)]).status == "completed"
    assert fold([Step("r", "processing", at(5)), Step("p", "pending", at(9))]).status == "processing"


def test_progress_follows_the_latest_report() -> None:
    assert fold(LIFE[:3]).progress == 60
    assert fold([LIFE[0], LIFE[2], Step("r3", "processing", at(4), progress=40)]).progress == 40


def test_the_first_terminal_state_is_final() -> None:
    failed = Step("f", "failed", at(5), error="boom")
    st = fold([*LIFE, failed])
    assert (st.status, st.result, st.error) == ("completed", {"score": 0.9}, None)
    st = fold([LIFE[0], Step("f0", "failed", at(2), error="boom"), LIFE[3]])
    assert (st.status, st.error, st.result) == ("failed", "boom", None)


def test_delete_is_soft_and_nothing_revives_it() -> None:
    deleted = Step("d", "deleted", at(4))
    st = fold([*LIFE, deleted, Step("again", "processing", at(9), progress=1)])
    assert (st.status, st.deleted_at, st.result) == ("deleted", at(4), {"score": 0.9})
    assert fold([deleted]).status == "deleted"


def test_duplicates_count_once() -> None:
    assert fold([*LIFE, *LIFE]).version == 4


def test_late_events_are_superseded_on_arrival() -> None:
    assert superseded(LIFE[3:], LIFE[:3]) == {"p", "r1", "r2"}
    assert superseded(LIFE[:1], LIFE[1:]) == set()
    assert superseded([Step("d", "deleted", at(1))], [Step("d2", "deleted", at(2))]) == {"d2"}


@pytest.mark.parametrize("seed", range(20))
def test_any_order_gives_the_in_order_row(seed: int) -> None:
    import random

    rng = random.Random(seed)
    events = [*LIFE, Step("d", "deleted", at(7)), Step("r9", "processing", at(8), progress=99)]
    shuffled = rng.sample(events, len(events)) + rng.sample(events, 3)
    assert fold(shuffled) == fold(sorted(events, key=lambda s: s.occurred_at))
