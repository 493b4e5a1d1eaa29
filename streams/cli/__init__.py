"""The `eventsink` command line: one module per area, `main` wires them."""

from streams.cli.main import cli, main

__all__ = ["cli", "main"]
