"""EVENTSINK_READ_DATABASE_URL, where the read-only tools read: its secrets are masked like
DATABASE_URL's, from the variable or its _FILE, and unset it means DATABASE_URL."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from sinks import secrets
from streams.settings import SettingsError, load
from tests.unit.test_secrets import assert_absent


def test_unset_the_tools_read_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTSINK_READ_DATABASE_URL", raising=False)
    settings = load(database_url="postgresql://app@primary/x")
    assert settings.read_dsn == "postgresql://app@primary/x"


def test_its_secrets_are_registered_from_the_variable_and_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for source in ("variable", "file"):
        password = f"read-{uuid.uuid4().hex}"
        dsn = f"postgresql://analyst:{quote(password)}@standby/x?target_session_attrs=prefer-standby"
        if source == "file":
            file = tmp_path / "read_dsn"
            file.write_text(dsn + "\n")
            monkeypatch.delenv("EVENTSINK_READ_DATABASE_URL", raising=False)
            monkeypatch.setenv("EVENTSINK_READ_DATABASE_URL_FILE", str(file))
        else:
            monkeypatch.setenv("EVENTSINK_READ_DATABASE_URL", dsn)
        settings = load(database_url="postgresql://app@primary/x")
        assert settings.read_dsn == dsn, source
        assert_absent(password, secrets.scrub(f"{settings!r} {settings.read_dsn}"))


def test_an_unparseable_read_dsn_is_refused_by_name_without_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSINK_READ_DATABASE_URL", "password=abc defgh host=x")
    with pytest.raises(SettingsError) as refused:
        load()
    assert "EVENTSINK_READ_DATABASE_URL is not a valid PostgreSQL connection string" in str(refused.value)
    assert "defgh" not in str(refused.value)
