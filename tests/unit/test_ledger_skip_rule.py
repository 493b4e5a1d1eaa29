"""What `eventsink ledger skip --to` accepts: only offsets the broker deleted, unless the operator
says they give up on records it still has; never offsets not written yet. (The embedded broker
cannot move a log's start, so the accepted case of retention is shown here, the refusals also
through the real CLI in tests/e2e/test_operator_guards.py.)"""

from __future__ import annotations

import pytest

from streams.cli.ledger import OVERRIDE, skip_refusal

# A partition whose broker log runs from 100 (retention deleted 0..99) to 149; ledger at 41.
START, END, LEDGER = 100, 150, 41


@pytest.mark.parametrize("to", [42, 60, 99])
def test_offsets_the_broker_deleted_may_be_given_up(to: int) -> None:
    assert skip_refusal("m[0]", to, START, END, LEDGER, lose_live_records=False) is None


@pytest.mark.parametrize("to", [100, 120, 149])
def test_offsets_the_broker_still_has_are_refused_unless_overridden(to: int) -> None:
    refused = skip_refusal("m[0]", to, START, END, LEDGER, lose_live_records=False)
    assert refused is not None and f"offsets 100 to {to}" in refused and "--to 99 at most" in refused
    assert OVERRIDE in refused
    assert skip_refusal("m[0]", to, START, END, LEDGER, lose_live_records=True) is None


@pytest.mark.parametrize("override", [False, True])
@pytest.mark.parametrize("to", [150, 10_000])
def test_offsets_not_written_yet_are_always_refused(to: int, override: bool) -> None:
    refused = skip_refusal("m[0]", to, START, END, LEDGER, lose_live_records=override)
    assert refused is not None and "not written yet" in refused and "ends at offset 149" in refused


def test_a_ledger_at_or_past_the_offset_is_refused() -> None:
    refused = skip_refusal("m[0]", 41, START, END, LEDGER, lose_live_records=True)
    assert refused is not None and "already at or past offset 41" in refused


def test_with_nothing_deleted_no_offset_may_be_given_up_without_the_override() -> None:
    refused = skip_refusal("m[0]", 5, 0, END, -1, lose_live_records=False)
    assert refused is not None and "offsets 0 to 5" in refused and "no offset after the ledger was deleted" in refused
