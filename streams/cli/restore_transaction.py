"""A backup restored in one transaction that also checks its row counts before it commits.

`pg_restore --single-transaction` commits as soon as the archive is applied, so the counts could
only be read afterwards, by another session: a worker left running (the restore warns about it)
could write in between, and a faithful restore was then reported as differing from its
manifest. Here pg_restore writes the archive as a script (`-f -`) and psql applies it in a
transaction this module opens: the manifest's counts are checked by a statement of that same
transaction, and COMMIT is sent only once pg_restore has exited 0 and the check has passed. If
anything fails (pg_restore, a statement, the check), psql stops (ON_ERROR_STOP) or its input ends
without a COMMIT, and the server rolls the transaction back: nothing changes. Both tools die
with this process (Linux's parent-death signal): a restore whose tool was killed (SIGTERM, SIGKILL)
must not go on and commit behind its back.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import orjson

# Raised by the check; the caller recognises it in psql's error.
COUNTS_DIFFER = "eventsink restore: the restored row counts differ from the backup's manifest"
CHUNK = 1 << 20


class RestoreFailed(Exception):
    """The restore did not commit. `tool` failed (pg_restore or psql); `detail` is its stderr."""

    def __init__(self, tool: str, detail: str) -> None:
        super().__init__(f"{tool} failed: {detail}")
        self.tool = tool
        self.detail = detail


def count_check(schema: str, expected: dict[str, int]) -> str:
    """A statement that raises COUNTS_DIFFER unless the schema's tables hold exactly `expected`
    rows ({table: rows}, the tables of the backup's manifest, no more, no fewer). Every name is
    qualified: the script pg_restore writes empties search_path."""
    literal = orjson.dumps(expected).decode().replace("'", "''")
    quoted_schema = schema.replace("'", "''")
    return f"""
DO $eventsink_check$
DECLARE
    expected jsonb := '{literal}'::jsonb;
    found jsonb := '{{}}'::jsonb;
    tbl text;
    n bigint;
BEGIN
    FOR tbl IN
        SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
        WHERE s.nspname = '{quoted_schema}' AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %I.%I', '{quoted_schema}', tbl) INTO n;
        found := found || pg_catalog.jsonb_build_object(tbl, n);
    END LOOP;
    IF found <> expected THEN
        RAISE EXCEPTION '{COUNTS_DIFFER.replace("'", "''")}: %', found;
    END IF;
END
$eventsink_check$;
"""


PR_SET_PDEATHSIG = 1


def _parent_death_kills() -> Callable[[], None] | None:
    """What a child runs before exec so that it is killed when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def restore(
    pg_restore: Sequence[str],
    psql: Sequence[str],
    env: dict[str, str],
    check: str | None,
    progress: Callable[[int], object] = lambda _: None,
) -> None:
    """Run `pg_restore` (a command writing the archive as a script to stdout) into `psql` (a
    command reading a script from stdin, with ON_ERROR_STOP) inside BEGIN … `check` … COMMIT.

    `progress` is told the bytes of script applied so far. Raises RestoreFailed (nothing was
    committed) when either tool fails.
    """
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        arm = _parent_death_kills()
        producer = subprocess.Popen(pg_restore, env=env, stdout=subprocess.PIPE, stderr=restore_err, preexec_fn=arm)
        consumer = subprocess.Popen(
            psql, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err, preexec_fn=arm
        )
        assert producer.stdout is not None and consumer.stdin is not None
        sent, fed = 0, True
        try:
            try:
                consumer.stdin.write(b"BEGIN;\n")
                while chunk := producer.stdout.read(CHUNK):
                    consumer.stdin.write(chunk)
                    sent += len(chunk)
                    progress(sent)
                produced = producer.wait()
                if produced == 0:
                    # Only now: a pg_restore that died half-way must not leave its half committed.
                    consumer.stdin.write(f"\n{check or ''}\nCOMMIT;\n".encode())
            except BrokenPipeError:
                fed = False  # psql stopped at an error (ON_ERROR_STOP): its stderr says which
            finally:
                try:
                    consumer.stdin.close()
                except BrokenPipeError:
                    fed = False
            applied = consumer.wait()
        finally:
            for proc in (producer, consumer):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if producer.returncode != 0 and fed:
            raise RestoreFailed(Path(pg_restore[0]).name, _text(restore_err, producer.returncode))
        if applied != 0 or not fed:
            raise RestoreFailed(Path(psql[0]).name, _text(psql_err, applied))


def _text(stream: IO[bytes], status: int | None) -> str:
    stream.seek(0)
    text = stream.read().decode("utf-8", "replace").strip()
    return text or f"exit status {status}"
