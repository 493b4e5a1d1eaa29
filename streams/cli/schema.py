"""`eventsink schema export`: the wire contract as JSON Schema and AsyncAPI files.

The files describe the default deployment (topic names, group, partitions are the settings'
defaults, not the environment's), so that the committed copies under `schemas/published/` are
the same on every machine and a test can compare them with what the models generate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

import schemas
from schemas import export as contract
from streams.cli.console import err
from streams.settings import Settings

PUBLISHED = Path(schemas.__file__).resolve().parent / "published"


def _default(name: str) -> str:
    return str(Settings.model_fields[name].default)


def default_documents() -> dict[str, str]:
    """Every published file, for the default topic names: name -> text."""
    topics = [
        contract.Topic(kind, _default(f"{setting}_topic"), f"{_default(f'{setting}_topic')}.dlq")
        for kind, setting in (("metric", "metrics"), ("chat", "chat"), ("analysis", "analysis"))
    ]
    return contract.documents(topics, _default("group_id"), int(_default("topic_partitions")))


@click.group()
def schema() -> None:
    """The published wire contract (JSON Schema per kind, AsyncAPI for the topics)."""


@schema.command("export")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=PUBLISHED,
    show_default="schemas/published",
    help="Directory to write the files into.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit with status 1 if a file differs from the models.")
def export(out: Path, check: bool) -> None:
    """Write a JSON Schema (draft 2020-12) per event kind and the AsyncAPI 3.0 document."""
    files = default_documents()
    if check:
        stale = [n for n, text in files.items() if not (out / n).is_file() or (out / n).read_text() != text]
        for name in stale:
            err.print(f"{out / name} differs from what the models generate")
        if stale:
            err.print("run `eventsink schema export` and commit the result")
            sys.exit(1)
        err.print(f"{len(files)} files in {out} match the models")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    err.print(f"wrote {', '.join(sorted(files))} to {out}")
