"""The interpreter that runs Quix Streams: a venv of its own, kept apart from .venv.

Every quixstreams 3.x release pins pydantic<2.14 and pydantic-settings<2.16; installing it into
.venv would downgrade the pydantic eventsink is measured (and tested) with. The venv is made
from the base interpreter of .venv and reinstalled when bench/requirements-quix.txt changes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-quix.txt"
VENV = HERE / "out" / "venv-quix"
APP = HERE / "quix_app.py"


def _python() -> Path:
    return VENV / "bin" / "python"


def ensure() -> Path:
    """The venv's python, made or updated first if needed."""
    stamp = VENV / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted and _python().is_file():
        return _python()
    subprocess.run([sys._base_executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [
            str(_python()),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return _python()


def version() -> str:
    result = subprocess.run(
        [str(_python()), "-c", "import importlib.metadata as m; print(m.version('quixstreams'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def changelog_topic(group: str, topic: str) -> str:
    """The name Quix gives the changelog of the default state store of a one-topic dataframe
    (`TopicManager._internal_name` in quixstreams/models/topics/manager.py)."""
    return f"changelog__{group}--{topic}--default"
