"""`eventsink produce metrics|chat|analysis`: load generation with a progress bar."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click
import orjson

from streams import aio
from streams.cli.console import err, progress_bar, settings
from streams.publish.publisher import Publisher

# The options every kind's command takes: --json, and the fields every kind's load shares
# (`streams.dev.loadgen.metric.Load`), which reach the command as `**shared`.
COMMON = [
    click.option("--tenants", "-t", type=click.IntRange(min=1), default=5, show_default=True),
    click.option(
        "--duplicates",
        type=click.FloatRange(0, 0.9),
        default=0.1,
        show_default=True,
        help="Fraction of records that re-send an earlier event.",
    ),
    click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Records per second (default: as fast as possible).",
    ),
    click.option("--seed", type=int, default=None, help="Make the workload reproducible."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."),
]


def invalid_option(help_text: str) -> Callable[..., Any]:
    return click.option("--invalid", type=click.FloatRange(0, 1), default=0.0, show_default=True, help=help_text)


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(COMMON):
        fn = option(fn)
    return fn


def _run(
    topic: str,
    total: int | None,
    make: Callable[[Publisher, str, Callable[[int], None], Any], Awaitable[Any]],
    report: Any,
    as_json: bool,
    what: str,
) -> None:
    """Send the load, then say what was sent: all of it, or what was sent before Ctrl-C stopped it
    (then the command exits 130, as every command does)."""
    s = settings()
    acknowledged = 0

    async def go() -> Any:
        with progress_bar() as bar:
            task = bar.add_task(topic, total=total)

            def progress(n: int) -> None:
                nonlocal acknowledged
                acknowledged = n
                bar.update(task, completed=n)

            async with Publisher(s.bootstrap_list, **s.kafka_security()) as pub:
                return await make(pub, topic, progress, report)

    try:
        aio.run(go())
    except KeyboardInterrupt:
        _say(report, topic, what, as_json, stopped_after=acknowledged)
        raise
    _say(report, topic, what, as_json)


def _say(report: Any, topic: str, what: str, as_json: bool, stopped_after: int | None = None) -> None:
    if as_json:
        extra = {} if stopped_after is None else {"interrupted": True, "acknowledged": stopped_after}
        click.echo(orjson.dumps({**report.as_dict(), **extra}).decode())
        return
    counts = f"{report.unique} unique {what}, {report.duplicates} duplicates, {report.invalid} invalid"
    if stopped_after is not None:
        err.print(
            f"stopped: {report.sent} records sent to {topic} before the interruption ({counts}); "
            f"{stopped_after} of them acknowledged by the broker by then, the rest flushed as the producer closed",
            highlight=False,
        )
        return
    err.print(
        f"sent {report.sent} records to {topic} in {report.seconds:.1f}s: {counts} "
        f"({report.sent / max(report.seconds, 1e-9):,.0f} records/s)"
    )


@click.group()
def produce() -> None:
    """Generate load: realistic events with duplicates and invalid records mixed in."""


@produce.command("metrics")
@click.option(
    "--count", "-n", type=click.IntRange(min=1), default=10_000, show_default=True, help="Records to send in all."
)
@invalid_option("Fraction of records that are invalid.")
@common
def metrics(count: int, invalid: float, as_json: bool, **shared: Any) -> None:
    """Publish metric events."""
    from streams.dev.loadgen.metric import LoadReport, MetricLoad, produce_metrics

    load = MetricLoad(count=count, invalid=invalid, **shared)
    _run(
        settings().metrics_topic,
        count,
        lambda p, t, cb, r: produce_metrics(p, t, load, cb, r),
        LoadReport(),
        as_json,
        "events",
    )


@produce.command("chat")
@click.option("--conversations", "-c", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--turns",
    type=(click.IntRange(min=1), click.IntRange(min=1)),
    default=(2, 8),
    show_default=True,
    metavar="MIN MAX",
    help="Messages per conversation: at least MIN, at most MAX.",
)
@invalid_option("Fraction of records that are invalid (too large, bad role, ...).")
@common
def chat(conversations: int, turns: tuple[int, int], invalid: float, as_json: bool, **shared: Any) -> None:
    """Publish conversations: several turns each, interleaved as live traffic would be."""
    from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat

    if turns[0] > turns[1]:
        raise click.BadParameter(
            f"MIN {turns[0]} is above MAX {turns[1]}: give MIN MAX, e.g. 2 8", param_hint="--turns"
        )
    s = settings()
    load = ChatLoad(
        conversations=conversations,
        min_turns=turns[0],
        max_turns=turns[1],
        invalid=invalid,
        max_content_bytes=s.chat_max_content_bytes,
        **shared,
    )
    _run(s.chat_topic, None, lambda p, t, cb, r: produce_chat(p, t, load, cb, r), ChatReport(), as_json, "messages")


@produce.command("analysis")
@click.option("--analyses", "-a", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--out-of-order",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Fraction of analyses whose events are published shuffled.",
)
@common
def analysis(analyses: int, out_of_order: float, as_json: bool, **shared: Any) -> None:
    """Publish analyses walking through their states (pending, processing, completed|failed, deleted)."""
    from streams.dev.loadgen.analysis import AnalysisLoad, AnalysisReport, produce_analysis

    load = AnalysisLoad(analyses=analyses, out_of_order=out_of_order, **shared)
    _run(
        settings().analysis_topic,
        None,
        lambda p, t, cb, r: produce_analysis(p, t, load, cb, r),
        AnalysisReport(),
        as_json,
        "events",
    )
