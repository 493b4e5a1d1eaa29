"""`eventsink topics create`: every topic eventsink uses, with explicit configs."""

from __future__ import annotations

import click
from rich.table import Table

from streams import aio
from streams.cli.console import err, out, settings
from streams.tools.topics import ensure_topics, partition_counts


@click.group()
def topics() -> None:
    """Manage eventsink's topics."""


@topics.command("create")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Partitions of the source and DLQ topics (default: EVENTSINK_TOPIC_PARTITIONS).",
)
@click.option(
    "--replication",
    type=click.IntRange(min=1),
    default=None,
    help="Replication factor (default: EVENTSINK_TOPIC_REPLICATION).",
)
def create(partitions: int | None, replication: int | None) -> None:
    """Create the source topics, their DLQs and the group's table changelogs, if missing.

    Configs are always set explicitly (cleanup policy, retention): some brokers (Tansu) only
    report the configs that were set, and Faust checks its changelogs' settings.
    """
    # Lazily: the worker's module imports Faust, which every other command can do without.
    from streams.worker.app import changelog_specs, source_and_dlq_specs

    s = settings()
    if replication is not None:
        s.topic_replication = replication
    specs = source_and_dlq_specs(s, partitions)
    created: list[str] = []

    async def go() -> dict[str, int]:
        counts = await ensure_topics(s.bootstrap_list, specs, created, s.kafka_security())
        changelogs = changelog_specs(s, counts)
        counts.update(await ensure_topics(s.bootstrap_list, changelogs, created, s.kafka_security()))
        return counts

    counts = aio.run(go())
    everything = [*specs, *changelog_specs(s, counts)]
    table = Table("topic", "partitions", "configs", "state")
    for spec in everything:
        config = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        state = "created" if spec.name in created else "exists"
        table.add_row(spec.name, str(counts.get(spec.name, "?")), config, state)
    out.print(table)
    other = [sp.name for sp in specs if counts.get(sp.name) != sp.partitions]
    if other:
        # A warning, on stderr: stdout is the table, for whoever reads it.
        err.print(
            f"[yellow]existing with another partition count: {', '.join(other)} "
            "(topics are never altered here; see README, Scaling)[/]",
            highlight=False,
        )


@topics.command("list")
def list_topics() -> None:
    """Partition counts of eventsink's topics."""
    # Lazily: the worker's module imports Faust, which every other command can do without.
    from streams.worker.app import source_and_dlq_specs

    s = settings()
    names = [sp.name for sp in source_and_dlq_specs(s)]
    counts = aio.run(partition_counts(s.bootstrap_list, names, s.kafka_security()))
    table = Table("topic", "partitions")
    for name in names:
        table.add_row(name, str(counts.get(name) or "missing"))
    out.print(table)
