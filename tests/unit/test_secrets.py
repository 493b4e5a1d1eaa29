"""Secrets never leave the process in text: masked by value in every spelling, and by label."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sinks import secrets
from sinks.dsn import redact_dsn
from streams import logs
from streams.cli.console import ScrubbedStream
from streams.settings import SettingsError, load
from tests.strategies import hostile_passwords, leaked
from tests.tls import encrypted_client_key, needs_openssl


def planted(tag: str = "") -> str:
    """A secret with what text escapes in one way or another: quotes, a backslash, a space, non-ASCII."""
    return f"s3\"cr'et {tag}\\{uuid.uuid4().hex[:12]}é"


def spelled(secret: str) -> list[str]:
    """The ways a test looks for a secret (independently of `secrets.spellings`)."""
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        secret.split("\\")[-1],  # the random tail: what makes it this secret
    ]


def assert_absent(secret: str, text: str) -> None:
    for form in spelled(secret):
        assert form not in text, f"{form!r} appears in {text!r}"


def test_redact_masks_every_secret_parameter_and_keeps_the_rest() -> None:
    shown = redact_dsn(
        "postgresql://app:s3cr3t-Pw@db.internal:6432/events?sslmode=require&sslpassword=key-pass-phrase"
        "&oauth_client_secret=oauth-client-secret&application_name=svc"
    )
    for secret in ("s3cr3t-Pw", "key-pass-phrase", "oauth-client-secret"):
        assert secret not in shown
    assert all(part in shown for part in ("app", "db.internal", "6432", "events", "sslmode=require", "svc"))
    assert shown.count("***") == 3
    assert "sslpassword" in secrets.SECRET_PARAMS and "password" in secrets.SECRET_PARAMS


def test_a_registered_secret_is_masked_in_every_spelling() -> None:
    secret = planted()
    assert secrets.register(secret)
    texts = [
        f"plain {secret} text",
        orjson.dumps({"nested": {"list": [secret]}}).decode(),
        json.dumps({"x": secret}),  # \u00e9: ASCII-only JSON
        str({"error": [secret, 1]}),  # repr of a container
        repr(ValueError(secret)),
        orjson.dumps({"repr": str({"k": secret})}).decode(),  # a repr inside JSON
        f"postgresql://u:{quote(secret, safe='')}@h/db",
        f"host=h password='{secret.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'",
    ]
    for text in texts:
        assert_absent(secret, secrets.scrub(text))
    assert secrets.scrub("nothing secret here") == "nothing secret here"


def test_values_labelled_as_secrets_are_masked_even_unregistered() -> None:
    cases = {
        "failed: postgresql://u:hunter2@h/db": "failed: postgresql://u:***@h/db",
        "password=hunter3 user=x": "password=*** user=x",
        "password='a b' user=x": "password='***' user=x",
        "?sslpassword=kp1&sslmode=require": "?sslpassword=***&sslmode=require",
        '{"sasl_plain_password": "p\\"w", "n": 1}': '{"sasl_plain_password": "***", "n": 1}',
        "{'kafka_ssl_password': 'pw', 'n': 1}": "{'kafka_ssl_password': '***', 'n': 1}",
        "client_secret: abc": "client_secret: ***",
    }
    # Unregistered: what other tests of this process registered (a bad DSN's pieces) is put aside.
    with fresh_registry():
        for text, expected in cases.items():
            assert secrets.scrub(text) == expected
    # A label that is not one: the name of a variable holding a path, counters.
    for text in ("DATABASE_URL_FILE=/run/secrets/db: No such file", "prompt_tokens=5", "no password supplied"):
        assert secrets.scrub(text) == text


def test_short_secrets_are_masked_by_label_only() -> None:
    assert not secrets.register("ab1")
    assert secrets.scrub("tab1e ab1") == "tab1e ab1"  # replacing it would garble text and show where it is
    assert secrets.scrub("password=ab1") == "password=***"
    assert secrets.register("") and secrets.register(None)
    settings = load(database_url="postgresql://u:ab1@h/db", kafka_sasl_password="xy")
    assert settings.short_secrets() == ["the password of DATABASE_URL", "EVENTSINK_KAFKA_SASL_PASSWORD"]
    assert load(database_url=f"postgresql://u:{uuid.uuid4().hex}@h/db").short_secrets() == []


def test_a_dsn_registers_each_secret_parameter_and_its_url_spelling() -> None:
    password, key_pass = planted("pw"), planted("ssl")
    dsn = f"postgresql://app:{quote(password, safe='')}@db/events?sslpassword={quote(key_pass)}"
    assert secrets.register_dsn(dsn) == []
    for secret in (password, key_pass):
        assert_absent(secret, secrets.scrub(f"{dsn} / {password} / {key_pass} / {json.dumps(dsn)}"))


def test_an_unparseable_dsn_is_refused_without_quoting_it() -> None:
    for dsn, fragment in (("postgresql://u:pa ss-word@h/db", "pa ss-word"), ("password=abc defgh host=x", "defgh")):
        with pytest.raises(SettingsError) as refused:
            load(database_url=dsn)
        assert "not a valid PostgreSQL connection string" in str(refused.value)
        assert fragment not in str(refused.value)
        assert secrets.scrub(dsn) == "***"  # registered whole: its secrets cannot be told apart


def test_settings_register_every_secret_they_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password, key_pass, sasl, ssl_pass = planted("pw"), planted("kp"), planted("sasl"), planted("tls")
    file = tmp_path / "ssl_password"
    file.write_text(ssl_pass + "\n")
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://app:{quote(password, safe='')}@db/x?sslpassword={quote(key_pass)}"
    )
    monkeypatch.setenv("EVENTSINK_KAFKA_SASL_PASSWORD", sasl)
    monkeypatch.setenv("EVENTSINK_KAFKA_SSL_PASSWORD_FILE", str(file))
    settings = load()
    assert settings.kafka_ssl_password is not None and settings.kafka_ssl_password.get_secret_value() == ssl_pass
    shown = f"{settings!r} {settings.dsn_display} {secrets.scrub(settings.dsn)}"
    for secret in (password, key_pass, sasl, ssl_pass):
        assert_absent(secret, shown)
        assert_absent(secret, secrets.scrub(f"[{secret}]"))


@needs_openssl
def test_an_encrypted_kafka_client_key_is_opened_with_its_passphrase(tmp_path: Path) -> None:
    passphrase = planted("key")
    cert, key = encrypted_client_key(tmp_path, passphrase)
    tls = {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_certfile": cert,
        "kafka_ssl_keyfile": key,
    }
    assert load(**tls, kafka_ssl_password=passphrase).ssl_context() is not None
    for wrong in ({}, {"kafka_ssl_password": planted("wrong")}):  # never OpenSSL's prompt: an error
        with pytest.raises(SettingsError, match="EVENTSINK_KAFKA_SSL_PASSWORD") as refused:
            load(**tls, **wrong).ssl_context()
        assert_absent(passphrase, str(refused.value))


@pytest.fixture
def log_to() -> Iterator[io.StringIO]:
    """Logs configured into a buffer; the process's logging and hooks restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    stream = io.StringIO()
    yield stream
    root.handlers, root.level, sys.excepthook, threading.excepthook = saved
    logging.captureWarnings(False)


class Carrier:
    """An object whose str() holds a secret (an exception, a config object)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __str__(self) -> str:
        return f"Carrier(dsn=postgresql://u:{self.secret}@h)"

    __repr__ = __str__


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logs_are_scrubbed_at_any_depth_and_in_any_rendering(fmt: str, log_to: io.StringIO) -> None:
    secret, unregistered = planted("log"), "unregistered-" + uuid.uuid4().hex
    secrets.register(secret)
    logs.configure("INFO", fmt, log_to)
    log = logs.get("test")
    log.info("nested", data={"a": [{"b": (secret,)}], "n": 1}, listed=[secret], obj=Carrier(unregistered))
    log.info("labelled", config={"kafka_sasl_password": unregistered, "user": "u"}, pin={"sslpassword": 98765432})
    log.info(f"in the event text {secret}")
    try:
        raise ValueError({"dsn": secret})
    except ValueError:
        log.exception("failed")
    logging.getLogger("psycopg.foreign").warning("foreign %s and %r", secret, {"x": secret})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"a warning about {secret}", UserWarning, stacklevel=1)
    worker = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError(secret)), name="boom")
    worker.start()
    worker.join()
    text = log_to.getvalue()
    assert_absent(secret, text)
    assert unregistered not in text and "98765432" not in text
    lines = text.strip().splitlines()
    assert any("uncaught exception in thread boom" in line for line in lines)
    assert any("a warning about ***" in line for line in lines)
    if fmt == "json":
        entries = [orjson.loads(line) for line in lines]  # still JSON once scrubbed
        nested = next(e for e in entries if e["event"] == "nested")
        assert nested["data"] == {"a": [{"b": ["***"]}], "n": 1} and nested["listed"] == ["***"]
        assert next(e for e in entries if e["event"] == "labelled")["config"] == {
            "kafka_sasl_password": "***",
            "user": "u",
        }


def test_the_output_guard_scrubs_lines_written_in_pieces() -> None:
    secret = planted("out")
    secrets.register(secret)
    sink = io.StringIO()
    guarded = ScrubbedStream(sink)
    half = len(secret) // 2
    guarded.write(f"start {secret[:half]}")
    guarded.write(f"{secret[half:]} end\nnext ")
    assert sink.getvalue() == "start *** end\n"
    guarded.flush()  # a partial line (a prompt) is written on flush
    guarded.buffer.write(f"{secret} as bytes\n".encode())
    assert sink.getvalue() == "start *** end\nnext *** as bytes\n"


def dsn_spellings(password: str) -> dict[str, str]:
    """The ways a DSN may carry a password, each a way people write them (valid or not)."""
    encoded = quote(password, safe="")
    conninfo = password.replace("\\", "\\\\").replace("'", "\\'")
    return {
        "url": f"postgresql://app:{password}@127.0.0.1:1/db",
        "url-encoded": f"postgresql://app:{encoded}@127.0.0.1:1/db",
        "url-partly-encoded": f"postgresql://app:{quote(password, safe=chr(34) + chr(39) + ' ')}@127.0.0.1:1/db",
        "query": f"postgresql://app@127.0.0.1:1/db?sslmode=disable&password={encoded}",
        "query-raw": f"postgresql://app@127.0.0.1:1/db?password={password}&sslmode=disable",
        "multi-host": f"postgresql://app:{encoded}@127.0.0.1:1,127.0.0.1:2/db?target_session_attrs=any",
        "conninfo": f"host=127.0.0.1 port=1 user=app password='{conninfo}' dbname=db",
        "conninfo-bare": f"host=127.0.0.1 port=1 password={password} dbname=db",
        "sslpassword": f"host=127.0.0.1 port=1 sslpassword='{conninfo}' dbname=db",
    }


def third_party_quotes(password: str) -> list[str]:
    """What a library may write about a secret it was given: all of it, or the part before or
    after a quote or a space (where its own quoting or tokenising stops), quoted, repr'd, in JSON."""
    cuts = [i for i, c in enumerate(password) if c in "\"' \\=&@:/"]
    parts = [password, *(password[:i] for i in cuts), *(password[i + 1 :] for i in cuts)]
    texts = []
    for part in parts:
        texts += [f'error near "{part}"', f"value {part!r} refused", json.dumps({"error": part}), f"at '{part}'"]
    return texts


# The reports: `x#frag` (6 characters spanning a delimiter, quoted by the resolver), and a
# password holding a word of our own messages. `#` is among the hostile characters drawn.
REPORTED_PASSWORDS = ["only?q@x#frag/x", "aB3@@9?password=Kx"]


@given(password=hostile_passwords(), form=st.sampled_from(list(dsn_spellings("x"))))
@example(password="QJZVK2#only?q@x#Q2345Z/x", form="url")
@example(password="aB3@@9?password=KQJZVX", form="query-raw")
def test_no_piece_of_a_hostile_password_survives_any_message(password: str, form: str) -> None:
    """`postgresql://postgres:my pass"LEAKEDTAIL123@...` printed `"…"LEAKEDTAIL123"` inside
    libpq's parse error: the masking of libpq's quotes stopped at the quote in the password."""
    with fresh_registry():
        outputs = messages_about(password, dsn_spellings(password)[form])
    for text in outputs:
        assert leaked(password, text) == [], f"{form}: {text!r}"


@contextmanager
def fresh_registry() -> Iterator[None]:
    """An empty registry of secrets for one example, the process's own restored afterwards (each
    example registers its own secrets, as one command does)."""
    with secrets._lock:
        saved = set(secrets._secrets)
        secrets._secrets.clear()
        secrets._pattern = None
    try:
        yield
    finally:
        with secrets._lock:
            secrets._secrets.clear()
            secrets._secrets.update(saved)
            secrets._pattern = None


def messages_about(password: str, dsn: str, *, libpq_reads_the_host: bool = True) -> list[str]:
    """What a command and the libraries under it may write about a DSN holding `password`
    (`libpq_reads_the_host`: False for a password libpq reads as a host, `u:pw@@9@h`)."""
    from psycopg.conninfo import conninfo_to_dict

    outputs = []
    try:
        # What every command does first: register the secrets, or refuse the DSN; then show it.
        shown = secrets.scrub(load(database_url=dsn).dsn_display)
    except SettingsError as exc:
        outputs.append(str(exc))
    else:
        # Masking the secrets masks nothing else of the DSN.
        assert "127.0.0.1" in shown or not libpq_reads_the_host, shown
        outputs.append(shown)
    try:
        conninfo_to_dict(dsn)
    except Exception as exc:  # libpq's own words, as a library would pass them on
        outputs.append(secrets.scrub(str(exc)))
    outputs += [secrets.scrub(text) for text in third_party_quotes(password)]
    outputs.append(secrets.scrub(f"{dsn} / {json.dumps(dsn)} / {dsn!r}"))
    return outputs


def test_the_dsn_of_the_report_leaks_nothing() -> None:
    dsn = 'postgresql://postgres:my pass"LEAKEDTAIL123@127.0.0.1/x'
    with pytest.raises(SettingsError) as refused:
        load(database_url=dsn)
    assert "LEAKED" not in str(refused.value) and "my pass" not in str(refused.value)
    assert "unexpected spaces found in" in str(refused.value)  # libpq's reason stays
    assert str(refused.value).count("\n") == 0


def windows_of(secret: str) -> set[str]:
    """Every piece of MIN_LENGTH characters holding a letter or a digit (independently of
    `secrets.windows`): punctuation alone is not masked, it tells nothing."""
    width = secrets.MIN_LENGTH
    pieces = {secret[i : i + width] for i in range(len(secret) - width + 1)}
    return {p for p in pieces if any(c.isalnum() for c in p)}


@pytest.mark.parametrize("password", REPORTED_PASSWORDS)
@pytest.mark.parametrize("form", ["url", "url-encoded", "query-raw", "conninfo"])
def test_no_window_of_a_reported_password_survives_any_message(password: str, form: str) -> None:
    """`failed to resolve host 'x#frag'`: every piece of 6 characters of the password, wherever a
    message cuts it, is masked (the windows are registered, not the pieces between delimiters)."""
    with fresh_registry():
        outputs = messages_about(password, dsn_spellings(password)[form], libpq_reads_the_host=False)
        outputs += [secrets.scrub(f"failed to resolve host '{piece}'") for piece in windows_of(password)]
        outputs += [secrets.scrub(f"near {piece[1:]}{piece[:1]}{piece}!") for piece in windows_of(password)]
    for text in outputs:
        assert [p for p in windows_of(password) if p in text] == [], f"{form}: {text!r}"


def test_scrubbing_a_line_stays_a_set_lookup_per_position() -> None:
    """The windows (hundreds per secret) are looked up, not tried one by one in a regex: the
    pattern keeps only spellings the windows do not cover."""
    with fresh_registry():
        for password in REPORTED_PASSWORDS:
            secrets.register_dsn(f"postgresql://app:{password}@127.0.0.1:1/db")
        pattern, short = secrets._compiled()
        assert pattern is not None and len(short) > 10
        assert "x#frag" in short and all(len(s) == secrets.MIN_LENGTH for s in short)
        assert not any(w in pattern.pattern for w in ("x\\#frag", "x\\#fra"))
