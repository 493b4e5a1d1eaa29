"""The analysis state machine, pure: a row is a function of the set of its events.

Every event is kept in `analysis_events` (unique per tenant and dedupe_id), and the row of
`analysis_requests` is folded from all of them each time one arrives. The fold orders lifecycle
events by rank (pending < processing < completed | failed) and then by time, so the same set of
events gives the same row whatever order and however many times they are delivered:

- status, progress, result and error come from the lifecycle event latest in that order; a
  terminal state is final (of two terminal events the earlier one stands); a `deleted` event is
  a soft delete that nothing revives: the row keeps its last lifecycle fields, `status` says
  `deleted` and `deleted_at` is the first delete's time;
- kind and media_url are descriptive: the earliest event carrying each sets it;
- created_at / updated_at are the earliest / latest event times, version counts the distinct
  events the row absorbed (so it is the same for any order of delivery and only grows).

An event older than the row's lifecycle state when it arrives is applied-but-superseded: kept,
flagged, counted, and changes no lifecycle field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.analysis import AnalysisEvent

RANK = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}
TERMINAL = frozenset({"completed", "failed"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Step:
    """One analysis event, as the fold sees it."""

    dedupe_id: str
    status: str
    occurred_at: datetime
    progress: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    media_url: str | None = None


@dataclass(frozen=True, slots=True)
class State:
    status: str
    progress: int | None
    result: dict[str, Any] | None
    error: str | None
    kind: str | None
    media_url: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    def row(self) -> tuple[Any, ...]:
        """The values of ROW_COLUMNS, as analysis_requests stores them."""
        return tuple(getattr(self, c) for c in ROW_COLUMNS)


# The columns of analysis_requests a fold decides (id and tenant_id aside).
ROW_COLUMNS = tuple(State.__dataclass_fields__)


def lifecycle_key(step: Step) -> tuple[int, int, str]:
    """Greater means later in the analysis's life."""
    micros = (step.occurred_at - _EPOCH) // timedelta(microseconds=1)
    return RANK[step.status], (-micros if step.status in TERMINAL else micros), step.dedupe_id


def fold(steps: Iterable[Step]) -> State:
    steps = list({s.dedupe_id: s for s in steps}.values())
    if not steps:
        raise ValueError("an analysis has at least one event")
    lifecycle = [s for s in steps if s.status != "deleted"]
    deletes = [s.occurred_at for s in steps if s.status == "deleted"]
    current = max(lifecycle, key=lifecycle_key, default=None)
    by_time = sorted(steps, key=lambda s: (s.occurred_at, s.dedupe_id))
    progress = None
    if current is not None:
        progress = (
            current.progress if current.progress is not None else (100 if current.status == "completed" else None)
        )
    return State(
        status="deleted" if deletes else current.status,  # type: ignore[union-attr]
        progress=progress,
        result=current.result if current else None,
        error=current.error if current else None,
        kind=next((s.kind for s in by_time if s.kind is not None), None),
        media_url=next((s.media_url for s in by_time if s.media_url is not None), None),
        version=len(steps),
        created_at=by_time[0].occurred_at,
        updated_at=by_time[-1].occurred_at,
        deleted_at=min(deletes) if deletes else None,
    )


def superseded(before: Iterable[Step], arriving: Sequence[Step]) -> set[str]:
    """dedupe_ids of arriving events (in delivery order) older than the state they met."""
    key = max((lifecycle_key(s) for s in before if s.status != "deleted"), default=None)
    deleted = any(s.status == "deleted" for s in before)
    out = set()
    for step in arriving:
        if step.status == "deleted":
            if deleted:
                out.add(step.dedupe_id)
            deleted = True
        elif key is not None and lifecycle_key(step) < key:
            out.add(step.dedupe_id)
        else:
            key = lifecycle_key(step)
    return out


def step_of(event: AnalysisEvent) -> Step:
    return Step(
        event.dedupe_id,
        event.status,
        event.occurred_at,
        event.progress,
        event.result,
        event.error,
        event.kind,
        event.media_url,
    )
