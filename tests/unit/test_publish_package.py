"""Services that publish events import the models, the codec and the publisher without Faust and
without the database driver (streams/publish)."""

from __future__ import annotations

import subprocess
import sys


def test_the_publish_package_imports_neither_faust_nor_the_database_driver() -> None:
    code = (
        "import sys, streams.publish as p; "
        "assert p.Publisher and p.MetricEvent and p.decode and p.encode; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode', 'psycopg', 'psycopg_pool')); "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
