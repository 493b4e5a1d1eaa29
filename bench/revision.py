"""Which eventsink a run measures: a snapshot of its sources, taken when the run starts.

The snapshot is of the working tree, or with `--at REV` of a git revision (`git archive`), so a
recorded run can measure a commit while the tree is being edited. Every contender process starts
in the snapshot directory, so `python -m streams.cli` and `python -m bench.reference` import the
snapshot (the current directory comes first on sys.path; the editable install's finder comes
last): sources edited while the benchmark runs do not split it between two versions. Each
contender's database is migrated with the snapshot's migrations. The harness itself (bench/,
copied into the snapshot from the working tree, and the load generators it imports) is the
working tree's.

The snapshot is byte-compiled when it is taken, as pip compiles a package it installs (the
worker's image, deploy/Dockerfile): without it, where PYTHONDONTWRITEBYTECODE is set (this
machine's environment sets it), every process compiled eventsink's 83 modules again at each start,
0.15 s of a worker's start that no installed worker pays (bench/RESULTS.md, 2026-12-06).
"""

from __future__ import annotations

import compileall
import hashlib
import shutil
import subprocess
from pathlib import Path

from bench.measure import REPO

PACKAGES = ("streams", "sinks", "schemas")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def resolve(rev: str) -> str:
    """The commit `rev` names now."""
    return _git("rev-parse", "--verify", f"{rev}^{{commit}}")


def snapshot(dest: Path, rev: str | None = None) -> Path:
    """eventsink's packages of the working tree, or of `rev`; bench/ of the working tree; all
    byte-compiled."""
    ignore = shutil.ignore_patterns("__pycache__", "out")
    shutil.copytree(REPO / "bench", dest / "bench", ignore=ignore)
    if rev is None:
        for package in PACKAGES:
            shutil.copytree(REPO / package, dest / package, ignore=ignore)
    else:
        archive = subprocess.run(["git", "archive", rev, *PACKAGES], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    if not compileall.compile_dir(dest, quiet=1, workers=0):
        raise RuntimeError(f"the snapshot in {dest} does not compile")
    return dest


def migrations(src: Path) -> Path:
    return src / "sinks" / "migrations"


def digest(root: Path) -> str:
    """A digest of eventsink's sources (.py and .sql) under root."""
    h = hashlib.sha256()
    files = sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*") if p.suffix in {".py", ".sql"})
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def describe(src: Path, rev: str | None = None) -> str:
    """'<commit>[ + uncommitted changes], sources <digest of the snapshot>'."""
    try:
        if rev is not None:
            return f"{_git('rev-parse', '--short', rev)} (`--at`), sources {digest(src)}"
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", *PACKAGES)
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "no git", ""
    return f"{commit}{' + uncommitted changes' if dirty else ''}, sources {digest(src)}"
