"""tail's backlog window, trimmed by the records themselves (a broker's offsets may say less)."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Reason, Rejected
from streams.tools.reader import Start
from streams.tools.tail import TailRow, _window

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def rows() -> list[TailRow]:
    """Partition 0: offsets 0..9, partition 1: offsets 0..3; one second apart per offset."""
    return [
        TailRow("t", p, o, T0 + o * 1000, None, b"x", Rejected(Reason.INVALID_JSON, "x"))
        for p, n in ((0, 10), (1, 4))
        for o in range(n)
    ]


def test_last_n_keeps_the_last_n_of_each_partition() -> None:
    kept = _window(rows(), Start(last=3))
    assert sorted((r.partition, r.offset) for r in kept) == [(0, 7), (0, 8), (0, 9), (1, 1), (1, 2), (1, 3)]
    assert _window(rows(), Start(last=0)) == []


def test_since_keeps_the_records_at_or_after_the_time() -> None:
    since = datetime.fromtimestamp((T0 + 8000) / 1000, UTC)
    assert [(r.partition, r.offset) for r in _window(rows(), Start(since=since, last=None))] == [(0, 8), (0, 9)]


def test_from_the_beginning_keeps_everything() -> None:
    assert len(_window(rows(), Start(from_beginning=True))) == 14


def test_a_since_out_of_range_is_a_value_error_saying_what_is_valid() -> None:
    import pytest

    from streams.tools.tail import parse_since

    now = datetime(2026, 1, 1, tzinfo=UTC)
    for text in ("99999999d", "999999999999h", "1" + "0" * 30 + "s"):
        with pytest.raises(ValueError, match="reaches before year 1"):
            parse_since(text, now)
    with pytest.raises(ValueError, match="takes a duration such as 10m"):
        parse_since("99999-01-01", now)
    assert parse_since("2d", now) == datetime(2025, 12, 30, tzinfo=UTC)
