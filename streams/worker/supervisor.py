"""`eventsink worker --processes N`: N worker processes on one host, supervised.

Each child is a plain `eventsink worker` with its own web port (base + i) and Faust data
directory. A child that dies is restarted with a backoff that resets once it has run for a
minute; SIGTERM / SIGINT are forwarded to every child, which drain and leave the group, and the
supervisor exits when they all have (killing stragglers after the drain timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams import logs
from streams.settings import Settings

log = logs.get(__name__)
STABLE_S = 60.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    restart_at: float | None = field(default=None)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=self.env)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info(
            "worker process started",
            index=self.index,
            pid=self.proc.pid,
            restarts=self.restarts,
            web_port=self.env["EVENTSINK_WEB_PORT"],
        )


def _children(settings: Settings, processes: int) -> list[Child]:
    children = []
    for i in range(processes):
        env = {
            **os.environ,
            "EVENTSINK_WEB_PORT": str(settings.web_port + i),
            "EVENTSINK_DATA_DIR": str(Path(settings.data_dir) / f"process-{i}"),
        }
        children.append(Child(i, env))
    return children


def run(settings: Settings, processes: int) -> int:
    children = _children(settings, processes)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not stopping:
            log.info("stopping worker processes", signal=signal.Signals(signum).name)
        stopping.append(signum)
        for child in children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.start()
    deadline: float | None = None
    while True:
        now = time.monotonic()
        running = [c for c in children if c.proc and c.proc.poll() is None]
        if stopping:
            if not running:
                break
            deadline = deadline or now + settings.drain_timeout_s + 15
            if now > deadline:
                for c in running:
                    log.error(
                        "worker process did not stop in time; killing it",
                        index=c.index,
                        pid=c.proc.pid,  # type: ignore[union-attr]
                        fix="nothing is lost (the next owner starts at the ledger); its last lines say what held it",
                    )
                    c.proc.kill()  # type: ignore[union-attr]
            time.sleep(0.2)
            continue
        for child in children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.restart_at is None:
                uptime = now - child.started_at
                child.backoff_s = 1.0 if uptime > STABLE_S else min(MAX_BACKOFF_S, child.backoff_s * 2)
                child.restart_at = now + child.backoff_s
                log.error(
                    "worker process exited; restarting it",
                    index=child.index,
                    pid=child.proc.pid,
                    status=child.proc.returncode,
                    uptime_s=round(uptime, 1),
                    retry_in_s=child.backoff_s,
                    fix="its last lines above say why; nothing is lost (it restarts from the ledger)",
                )
            elif now >= child.restart_at:
                child.restarts += 1
                child.start()
        time.sleep(0.2)
    codes = [c.proc.returncode for c in children if c.proc]
    log.info("worker processes stopped", statuses=codes)
    if signal.SIGINT in stopping:  # Ctrl-C reaches the children too: they exit 130, as every command does
        return 130 if all(code in (0, 130) for code in codes) else 1
    return 0 if all(code == 0 for code in codes) else 1
