"""Structured logs: JSON lines (or key=value on a terminal), secrets scrubbed on the way out.

Faust's, aiokafka's and psycopg's stdlib loggers go through the same formatter, so a log
pipeline sees one format from the whole worker. Secrets (`sinks.secrets`) are removed twice:
from every value of the event at any depth, then from the rendered line (which catches an object
whose `str()` or `repr()` the renderer calls, and the escaped forms JSON gives a secret).
Warnings and uncaught exceptions (in any thread) go through the same path.

Levels say who must act: error is for a person on call, and every error of ours says what to do.
Libraries log what is routine for a worker at error level (aiokafka: each failed connection
attempt while a broker is away, `Unclosed AIOKafkaConsumer` after a client failed to start): their
known noise is demoted (`_demoted`), while the failure itself is reported by us (a command's last
line, the worker's reachability checks) with the fix.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import orjson
import structlog

from sinks.secrets import scrub, scrub_data

_QUIET = {"aiokafka": logging.WARNING, "kafka": logging.WARNING, "psycopg.pool": logging.WARNING}


def _demoted(record: logging.LogRecord) -> int | None:
    """The level a known library message deserves, below the one it came with (None: as it came)."""
    name = record.name
    if name == "asyncio" and str(record.msg).startswith(("Unclosed AIOKafka", "Unclosed AIOKafkaProducer")):
        # aiokafka's __del__ for a client whose start failed: the failure is reported on its own.
        return logging.DEBUG
    if name == "faust.tables.recovery" and "Worker ready" in str(record.msg):
        # Tables recovered, whether or not the database answers: the worker says "worker ready"
        # itself when it is (`streams.worker.reachability`).
        return logging.DEBUG
    if name.startswith("aiokafka"):
        if "because it is rebalancing" in str(record.msg):
            return logging.INFO  # a heartbeat during a rebalance (a member joined or left): routine
        if record.levelno >= logging.ERROR and record.exc_info is None:
            # A retry's symptom (connection refused, node not ready, coordinator dead), repeated each
            # attempt; aiokafka's unexpected errors come with a traceback and keep their level.
            return logging.WARNING
    return None


# A demoted message repeated (aiokafka retries every few milliseconds while a broker is away) is
# logged once per this many seconds.
REPEAT_S = 60.0


class _Demote(logging.Filter):
    """Rewrites the level of known library noise, drops it when it falls below the root's, and
    lets the same demoted message through once per `REPEAT_S`."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        level = _demoted(record)
        if level is None or level >= record.levelno:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        if level < logging.getLogger().getEffectiveLevel():
            return False
        key = (record.name, str(record.msg))
        last = self._last.get(key)
        if last is not None and record.created - last < REPEAT_S:
            return False
        if len(self._last) > 1000:  # templates, not messages: a bound that is never reached
            self._last.clear()
        self._last[key] = record.created
        return True


def _scrub(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    scrubbed: dict[str, Any] = scrub_data(event)
    return scrubbed


class _ScrubRendered:
    """A renderer whose output is scrubbed as a whole."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        return scrub(str(self.renderer(logger, name, event)))


def _log_uncaught(log: logging.Logger) -> None:
    """Uncaught exceptions, of the main thread or any other, logged (scrubbed) rather than printed."""

    def main_hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        log.critical("uncaught exception (a bug: report it with this traceback)", exc_info=(kind, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log.error(
            "uncaught exception in thread %s (a bug: report it with this traceback)",
            getattr(args.thread, "name", "?"),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub,
            _ScrubRendered(renderer),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_Demote())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    logging.captureWarnings(True)
    _log_uncaught(logging.getLogger("eventsink"))


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
