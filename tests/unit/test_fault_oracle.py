"""The fault suite's oracle fails where a worker's own verdict hides a lost event: a valid record
the workers dead-lettered (`db_rejected`, an outage error taken for the record's) is not fine
because the DLQ holds it."""

from __future__ import annotations

from collections import Counter
from uuid import uuid4

import pytest

from streams.tools.expected import Expected, Invalid
from tests.faults.traffic import Published, _as_sent


def topic(refused: dict, dead: Counter, invalid: list[Invalid]) -> Expected:
    t = uuid4()
    return Expected(
        "metric",
        "metrics",
        records=3,
        events={(t, "a"): [], (t, "b"): []},
        invalid=invalid,
        refused=refused,
        dead_lettered=dead,
    )


def test_a_valid_record_in_the_dlq_fails_the_oracle() -> None:
    sent = Published(sent=3, unique=2, invalid=1)
    bad = Invalid(0, 2, "tenant", "invalid_json")
    _as_sent("metrics", topic({}, Counter({(0, 2): 1}), [bad]), sent)  # as it must be
    with pytest.raises(AssertionError, match="valid records dead-lettered"):
        _as_sent("metrics", topic({(0, 1): "db_rejected"}, Counter({(0, 1): 1, (0, 2): 1}), [bad]), sent)
    with pytest.raises(AssertionError, match="not dead-lettered"):
        _as_sent("metrics", topic({}, Counter(), [bad]), sent)
    with pytest.raises(AssertionError, match="the traffic sent 3"):
        _as_sent("metrics", topic({}, Counter({(0, 2): 1}), [bad]), Published(sent=4, unique=3, invalid=1))
