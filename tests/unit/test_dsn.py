"""Credentials never leave the process in text."""

from __future__ import annotations

from sinks.dsn import redact_dsn, register_secret, scrub


def test_redact_keeps_everything_but_the_password() -> None:
    shown = redact_dsn("postgresql://app:s3cr3t-Pw@db.internal:6432/events?sslmode=require")
    assert "s3cr3t-Pw" not in shown
    assert all(part in shown for part in ("app", "db.internal", "6432", "events", "sslmode=require"))


def test_scrub_removes_passwords_in_urls_key_values_and_registered_secrets() -> None:
    register_secret("hunter2-registered")
    text = scrub(
        "failed: postgresql://u:hunter2@h/db and password=hunter3 and password='a b' and hunter2-registered somewhere"
    )
    assert "hunter2" not in text and "hunter3" not in text and "'a b'" not in text
    assert text.count("***") == 4
