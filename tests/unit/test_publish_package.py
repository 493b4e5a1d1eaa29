"""Services that publish events import the models, the codec and the publisher without Faust and
without the database driver (streams/publish)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_publish_package_imports_neither_faust_nor_the_database_driver() -> None:
    """Not when imported, nor when a Publisher reads its topics from the settings."""
    code = (
        "import sys, streams.publish as p; "
        "assert p.Publisher and p.MetricEvent and p.decode and p.encode; "
        "topics = p.publisher.default_topics(); "  # what a Publisher reads when it is created
        "assert set(topics.values()) == {'metrics', 'chat-x', 'analysis'}, topics; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode', 'psycopg', 'psycopg_pool')); "
        "print(heavy)"
    )
    # A service's own DATABASE_URL is not eventsink's business: the publisher reads only the topics.
    env = {**os.environ, "EVENTSINK_CHAT_TOPIC": "chat-x", "DATABASE_URL": "mysql://app:pw@db/app"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
