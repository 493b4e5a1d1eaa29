"""Settings errors name the environment variable and what it accepts; misspelt variables are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.settings import SettingsError, load, unknown_variables, variable_names


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("EVENTSINK_", "KAFKA_", "DATABASE_URL")):
            monkeypatch.delenv(name)


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load()
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("EVENTSINK_ENV", "prod", "EVENTSINK_ENV must be one of development, production"),
        ("EVENTSINK_BATCH_SIZE", "zero", "EVENTSINK_BATCH_SIZE must be an integer, at least 1 and at most 50,000"),
        ("EVENTSINK_BATCH_SIZE", "0", "EVENTSINK_BATCH_SIZE must be an integer, at least 1 and at most 50,000"),
        ("EVENTSINK_DRAIN_TIMEOUT_S", "-1", "EVENTSINK_DRAIN_TIMEOUT_S must be a number, above 0"),
        ("EVENTSINK_WEB_ENABLED", "maybe", "EVENTSINK_WEB_ENABLED must be true or false"),
        ("EVENTSINK_ON_DATA_LOSS", "ignore", "EVENTSINK_ON_DATA_LOSS must be one of stop, skip"),
        ("EVENTSINK_CHAT_UNKNOWN_FIELDS", "drop", "EVENTSINK_CHAT_UNKNOWN_FIELDS must be one of keep, ignore, reject"),
    ],
)
def test_an_invalid_value_names_the_variable_and_what_it_accepts(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert refusal(monkeypatch, **{variable: value}) == expected


def test_the_variable_named_is_the_one_set_and_every_problem_is_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(
        monkeypatch,
        EVENTSINK_DATABASE_URL="postgresql://u:pa ss@h/db",
        eventsink_web_port="0",
        EVENTSINK_KAFKA_SECURITY_PROTOCOL="TLS",
    )
    assert message.startswith("EVENTSINK_DATABASE_URL: DATABASE_URL is not a valid PostgreSQL connection string")
    assert "eventsink_web_port must be an integer, at least 1 and at most 65,535" in message
    assert "EVENTSINK_KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" in message
    assert "pa ss" not in message
    assert "web_port:" not in message and "env:" not in message  # field names are not what people set


def test_misspelt_eventsink_variables_are_named_with_the_closest_valid_one() -> None:
    environ = {
        "EVENTSINK_BACTH_SIZE": "10",
        "EVENTSINK_DRAIN_TIMEOUT": "5",
        "eventsink_grup_id": "g",
        "EVENTSINK_NOTHING_LIKE_IT_AT_ALL": "x",
        # What is read is not reported: aliases, *_FILE secrets, old names, any case.
        "EVENTSINK_BATCH_SIZE": "10",
        "EVENTSINK_DATABASE_URL": "postgresql://h/db",
        "EVENTSINK_KAFKA_SASL_PASSWORD_FILE": "/run/secrets/sasl",
        "EVENTSINK_METRICS_TENANTS": "",
        "eventsink_log_level": "INFO",
        "EVENTSINK_TESTCONTAINERS": "1",
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    }
    assert unknown_variables(environ) == {
        "EVENTSINK_BACTH_SIZE": "EVENTSINK_BATCH_SIZE",
        "EVENTSINK_DRAIN_TIMEOUT": "EVENTSINK_DRAIN_TIMEOUT_S",
        "EVENTSINK_NOTHING_LIKE_IT_AT_ALL": None,
        "eventsink_grup_id": "EVENTSINK_GROUP_ID",
    }


def test_every_setting_has_a_variable_the_warning_knows() -> None:
    names = variable_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "DATABASE_URL_FILE", "EVENTSINK_BATCH_SIZE"} <= names
    assert unknown_variables({name: "" for name in names}) == {}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # The report: a worker would dead-letter into its own source topic.
        ({"EVENTSINK_METRICS_DLQ_TOPIC": "metrics"}, ["EVENTSINK_METRICS_TOPIC", "EVENTSINK_METRICS_DLQ_TOPIC"]),
        # The report: two kinds on one topic (each would dead-letter the other's records).
        ({"EVENTSINK_METRICS_TOPIC": "chat"}, ["EVENTSINK_METRICS_TOPIC", "EVENTSINK_CHAT_TOPIC"]),
        # A source topic named like another kind's default dead-letter topic.
        ({"EVENTSINK_ANALYSIS_TOPIC": "chat.dlq"}, ["EVENTSINK_ANALYSIS_TOPIC", "EVENTSINK_CHAT_DLQ_TOPIC"]),
        # Two dead-letter topics set to one name.
        (
            {"EVENTSINK_CHAT_DLQ_TOPIC": "dead", "EVENTSINK_ANALYSIS_DLQ_TOPIC": "dead"},
            ["EVENTSINK_CHAT_DLQ_TOPIC", "EVENTSINK_ANALYSIS_DLQ_TOPIC"],
        ),
    ],
)
def test_two_topics_of_one_name_are_refused_naming_both_variables(
    env: dict[str, str], named: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal(monkeypatch, **env)
    for variable in named:
        assert variable in message, message
    assert "need six names" in message


def test_a_dead_letter_topic_cannot_be_named_like_a_record_of_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, EVENTSINK_METRICS_DLQ_TOPIC="chat.dlq.replays")
    assert message.startswith(
        "EVENTSINK_METRICS_DLQ_TOPIC is 'chat.dlq.replays': a dead-letter topic cannot end in .replays"
    )


def test_six_distinct_topic_names_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSINK_METRICS_TOPIC", "m")
    monkeypatch.setenv("EVENTSINK_CHAT_TOPIC", "c")
    monkeypatch.setenv("EVENTSINK_CHAT_DLQ_TOPIC", "m-dead")
    loaded = load()
    dead_letters = (loaded.metrics_dlq_topic, loaded.chat_dlq_topic, loaded.analysis_dlq_topic)
    assert dead_letters == ("m.dlq", "m-dead", "analysis.dlq")


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("dlq", "list", "metrics"), {"EVENTSINK_METRICS_DLQ_TOPIC": "metrics"}),
        (("verify", "chat"), {"EVENTSINK_METRICS_TOPIC": "chat"}),
    ],
)
def test_the_commands_of_the_report_refuse_contradicting_topics_as_a_usage_error(
    args: tuple[str, ...], env: dict[str, str]
) -> None:
    """`dlq list` answered 'metrics is a source topic', `verify` a false 'inconsistent' (exit 1):
    the settings are refused first (no broker needed: they load before anything connects)."""
    from tests.helpers import eventsink

    done = eventsink(*args, env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings: "), done.stderr
    assert all(variable in lines[0] for variable in env), lines[0]


def test_an_empty_database_url_is_refused_not_read_as_libpqs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL="" (a variable that expanded to nothing) was libpq's defaults: the OS user's
    database on the local socket, which `migrate` would have written into."""
    message = refusal(monkeypatch, DATABASE_URL="")
    assert message.startswith("DATABASE_URL is empty: set a PostgreSQL connection string")
    assert refusal(monkeypatch, DATABASE_URL="  ").startswith("DATABASE_URL is empty")


def test_an_empty_read_database_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example:5432/events")
    monkeypatch.setenv("EVENTSINK_READ_DATABASE_URL", "")
    s = load()
    assert s.read_database_url is None and s.read_dsn == s.dsn


def test_database_url_file_problems_are_settings_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """They were plain ValueErrors, which the CLI reported as failures (exit 1), not usage errors."""
    missing = tmp_path / "missing"
    assert (
        refusal(monkeypatch, DATABASE_URL_FILE=str(missing))
        == f"DATABASE_URL_FILE={missing}: No such file or directory"
    )
    assert refusal(monkeypatch, DATABASE_URL_FILE=str(tmp_path)) == f"DATABASE_URL_FILE={tmp_path}: Is a directory"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert refusal(monkeypatch, DATABASE_URL_FILE=str(empty)) == f"DATABASE_URL_FILE={empty} is empty"
    dsn = tmp_path / "dsn"
    dsn.write_text("postgresql://app@db.example:5432/events\n")
    assert refusal(monkeypatch, DATABASE_URL_FILE=str(dsn), DATABASE_URL="x") == (
        "set DATABASE_URL or DATABASE_URL_FILE, not both"
    )


def test_a_database_url_file_may_end_in_several_line_ends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dsn = tmp_path / "dsn"
    dsn.write_text("postgresql://app@db.example:5432/events\r\n\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(dsn))
    assert load().dsn == "postgresql://app@db.example:5432/events"
