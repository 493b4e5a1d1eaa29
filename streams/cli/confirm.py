"""The one way a command that can lose data asks before it does: `--yes`, or a person at a terminal."""

from __future__ import annotations

import sys

import click


def confirm(question: str, yes: bool) -> None:
    """Go on if `yes`, or if the person at the terminal says so; without a terminal (a script, a
    job, `</dev/null`) refuse as a usage error (exit 2, one line): nobody answered, so nothing is
    lost by default."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Pass --yes to confirm")
    click.confirm(question, abort=True, err=True)
