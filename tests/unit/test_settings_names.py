"""Renamed settings keep working under their old names, with a warning that names the new one."""

from __future__ import annotations

import uuid

import pytest

from streams.settings import Settings, deprecated_names


def test_the_old_telemetry_tenants_name_still_works_and_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = str(uuid.uuid4())
    monkeypatch.setenv("EVENTSINK_METRICS_TENANTS", tenant)
    assert Settings().telemetry_tenant_set == {uuid.UUID(tenant)}
    assert deprecated_names() == {"EVENTSINK_METRICS_TENANTS": "EVENTSINK_TELEMETRY_TENANTS"}


def test_the_new_name_wins_and_is_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    monkeypatch.setenv("EVENTSINK_TELEMETRY_TENANTS", new)
    assert Settings().telemetry_tenant_set == {uuid.UUID(new)}
    assert deprecated_names() == {}
    monkeypatch.setenv("EVENTSINK_METRICS_TENANTS", old)
    assert Settings().telemetry_tenant_set == {uuid.UUID(new)}
