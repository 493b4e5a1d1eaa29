"""Keeping database credentials out of logs, errors and CLI output."""

from __future__ import annotations

import re
import threading

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_lock = threading.Lock()
_secrets: set[str] = set()

# key=value and URL forms, for text we did not build ourselves.
_URL_PASSWORD = re.compile(r"(?P<scheme>postgres(?:ql)?://[^:/@\s]*:)(?P<pw>[^@\s]+)@", re.I)
_KV_PASSWORD = re.compile(r"(?P<k>password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def register_secret(value: str | None) -> None:
    """Remember a secret so that `scrub` removes it from any text."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)


def register_dsn(dsn: str) -> None:
    try:
        register_secret(conninfo_to_dict(dsn).get("password"))  # type: ignore[arg-type]
    except Exception:
        pass


def scrub(text: str) -> str:
    """Remove registered secrets and anything shaped like a password from text."""
    text = _URL_PASSWORD.sub(r"\g<scheme>***@", text)
    text = _KV_PASSWORD.sub(r"\g<k>***", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_dsn(dsn: str) -> str:
    """The DSN as it may be shown: host, port, database and user, never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return scrub(dsn)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)  # type: ignore[arg-type]


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def with_user(dsn: str, user: str) -> str:
    """The same server and database, another role (no password carried over)."""
    params = conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    return make_conninfo(**params)  # type: ignore[arg-type]


def database_of(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return str(params.get("dbname") or params.get("user") or "postgres")
