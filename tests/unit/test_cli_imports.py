"""`eventsink worker` starts without importing the other commands' modules: two workers starting
together on a small host are CPU-bound, and each module imported is start-up CPU. The other
commands are loaded by name (`streams.cli.main.LAZY_COMMANDS`), and all of them are there."""

from __future__ import annotations

import subprocess
import sys

import click

from streams.cli.main import LAZY_COMMANDS, cli

# What only other commands use: their modules, and what they alone import.
NOT_FOR_THE_WORKER = {module for module, _ in LAZY_COMMANDS.values()} | {
    "rich.progress",
    "sinks.migrate",
    "streams.cli.names",
    "streams.publish",
    "streams.tools.verify",
}


def test_every_command_is_listed_and_loads_under_its_name() -> None:
    context = click.Context(cli)
    names = cli.list_commands(context)
    assert names == sorted({"migrate", "worker", "run", *LAZY_COMMANDS})
    for name in names:
        command = cli.get_command(context, name)
        assert command is not None and command.name == name, name
    assert cli.get_command(context, "no-such-command") is None


def test_the_worker_command_imports_no_other_command() -> None:
    started = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "streams.cli", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    imported = {
        line.rpartition("|")[2].strip() for line in started.stderr.splitlines() if line.startswith("import time:")
    }
    assert "streams.cli.main" in imported  # what is below means something
    assert not imported & NOT_FOR_THE_WORKER
