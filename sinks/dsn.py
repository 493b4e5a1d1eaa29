"""PostgreSQL connection strings: shown without their secrets, and derived for another database or role."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.secrets import MASK, SECRET_PARAMS, scrub


def redact_dsn(dsn: str) -> str:
    """The DSN as it may be shown: host, port, database, user and options, each secret parameter
    (password, sslpassword, ... see `sinks.secrets.SECRET_PARAMS`) as `***`."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "(a connection string libpq cannot parse)"
    for key in SECRET_PARAMS & params.keys():
        params[key] = MASK
    return make_conninfo(**params)  # type: ignore[arg-type]


def server_and_database(dsn: str) -> str:
    """`host:port/database` of a DSN, to name the database an operator pointed a command at;
    never its credentials. Raises what libpq raises for a DSN it cannot parse."""
    params = conninfo_to_dict(dsn)
    return scrub(f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '?')}")


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
