"""The analysis rules, written again from the README ("Chat and analysis"), not from
`sinks/writers/lifecycle.py`: a plain replay of the events, to check the workers' fold against.

The README's rules, as this module reads them:

- lifecycle events (every status but `deleted`) are ordered by rank (pending < processing <
  completed | failed) then time; status, progress, result and error come from the latest; a
  completed event without progress means 100 %; status never goes backwards; a terminal state
  (completed, failed) is final: of two terminal events the earlier stands; events of the same
  rank and time are taken in dedupe_id order, the greater standing (of two terminal events too).
- `deleted` is a soft delete: the row keeps its last lifecycle fields, status says `deleted`,
  deleted_at is the first delete's time, and nothing revives it.
- kind and media_url come from the earliest event carrying them; created_at / updated_at are the
  earliest / latest event times; version counts the distinct events (distinct dedupe_ids).
- the same events give the same row in any order, with any duplicates.
- an event older than the row's state when it arrives is superseded: it changes no lifecycle
  field. A lifecycle event is older when it does not become the row's latest lifecycle event; a
  delete is older when the row is already deleted.

The 100 % and the rule for ties were not in the README when this reference was first written:
they are the workers' choices, found by these tests, and the README now states them.

Events are anything with the attributes dedupe_id, status, occurred_at, progress, result,
error, kind, media_url (the workers' `Step` is one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

RANKS = {"pending": 1, "processing": 2, "completed": 3, "failed": 3}


def _terminal(event: Any) -> bool:
    return event.status in ("completed", "failed")


def _distinct(events: Iterable[Any]) -> list[Any]:
    """One event per dedupe_id (a duplicate is the same event sent again)."""
    seen: dict[str, Any] = {}
    for e in events:
        seen.setdefault(e.dedupe_id, e)
    return list(seen.values())


def latest_lifecycle_event(events: Iterable[Any]) -> Any | None:
    """The lifecycle event the row's status, progress, result and error come from.

    Replays the lifecycle events in the order they happened: an event moves the row forward or
    sideways (a later report of the same rank), never backwards, and nothing moves a terminal
    state except an equally early terminal event with a greater dedupe_id.
    """
    happened = sorted(
        (e for e in _distinct(events) if e.status != "deleted"), key=lambda e: (e.occurred_at, e.dedupe_id)
    )
    current = None
    for e in happened:
        if current is None:
            current = e
        elif _terminal(current):
            if _terminal(e) and e.occurred_at == current.occurred_at:
                current = e  # same time, greater dedupe_id (the replay's order)
        elif RANKS[e.status] >= RANKS[current.status]:
            current = e
    return current


def row(events: Iterable[Any]) -> dict[str, Any]:
    """The analysis_requests row the events make: the columns a fold decides."""
    events = _distinct(events)
    if not events:
        raise ValueError("an analysis has at least one event")
    current = latest_lifecycle_event(events)
    deletes = sorted(e.occurred_at for e in events if e.status == "deleted")
    by_time = sorted(events, key=lambda e: (e.occurred_at, e.dedupe_id))

    def earliest(field: str) -> Any:
        for e in by_time:
            if getattr(e, field) is not None:
                return getattr(e, field)
        return None

    progress = None
    if current is not None:
        progress = current.progress
        if progress is None and current.status == "completed":
            progress = 100
    return {
        "status": "deleted" if deletes else current.status,
        "progress": progress,
        "result": current.result if current is not None else None,
        "error": current.error if current is not None else None,
        "kind": earliest("kind"),
        "media_url": earliest("media_url"),
        "version": len(events),
        "created_at": by_time[0].occurred_at,
        "updated_at": by_time[-1].occurred_at,
        "deleted_at": deletes[0] if deletes else None,
    }


def superseded(before: Iterable[Any], arriving: Sequence[Any]) -> set[str]:
    """dedupe_ids of the arriving events (distinct, in delivery order) that are older than the
    row's state when they arrive, the row having absorbed `before` already."""
    absorbed = _distinct(before)
    out = set()
    for e in arriving:
        if e.status == "deleted":
            if any(a.status == "deleted" for a in absorbed):
                out.add(e.dedupe_id)
        elif latest_lifecycle_event([*absorbed, e]) is not e:
            out.add(e.dedupe_id)
        absorbed.append(e)
    return out
