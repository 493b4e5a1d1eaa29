"""A tenant typed on the command line is accepted in exactly the spellings a worker accepts in a
record key (`schemas.codec`), and becomes the canonical UUID text."""

from __future__ import annotations

import uuid

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import _parse_key_tenant
from streams.cli.names import tenant

T = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
SPELLINGS = [
    str(T),
    T.hex,
    str(T).upper(),
    T.hex.upper(),
    f"{{{T}}}",
    f"urn:uuid:{T}",
]
# The value's `tenant_id` refuses these, so a worker refuses them as keys too (Python's uuid.UUID
# read them: an undashed urn, Bengali digits, a sign).
BENGALI = str.maketrans("0123456789", "০১২৩৪৫৬৭৮৯")
NOT_TENANTS = [
    "",
    "not-a-uuid",
    str(T)[:-1],
    str(T) + "0",
    f"tenant {T}",
    "0" * 31,
    f"urn:uuid:{T.hex}",
    str(T).translate(BENGALI),
    f"+{T.hex}",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_a_worker_accepts_is_the_same_tenant(spelling: str) -> None:
    assert _parse_key_tenant(spelling.encode()) == T.int
    assert tenant(spelling) == str(T)


@pytest.mark.parametrize("text", NOT_TENANTS)
def test_anything_else_is_a_usage_error_saying_what_a_tenant_looks_like(text: str) -> None:
    assert _parse_key_tenant(text.encode()) is None
    with pytest.raises(click.BadParameter) as raised:
        tenant(text)
    assert raised.value.exit_code == 2 and "a UUID such as" in raised.value.format_message()


@given(st.text(alphabet="0123456789abcdefABCDEF-{}urnid:", max_size=48))
def test_the_command_line_and_the_worker_agree_on_any_text(text: str) -> None:
    key = _parse_key_tenant(text.encode())
    try:
        typed: str | None = tenant(text)
    except click.BadParameter:
        typed = None
    assert typed == (None if key is None else str(uuid.UUID(int=key)))
