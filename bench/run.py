"""`python -m bench.run`: load the topics, run each contender on them alone, report.

    python -m bench.run [--scenario metric|mixed|memory|all] [--events N] [--partitions 8] [--tenants 50]
                        [--duplicates 0.1] [--repeat N] [--only eventsink,reference,quix,eventsink2,quix-1s]
                        [--at REV] [--profile] [--record] [--content-bytes B] [--db-delay-ms MS] [--memory-seconds S]

metric: every contender on one metric topic. mixed: eventsink's (one worker, two workers) on
metric, chat and analysis topics split 70/20/10. memory: one worker's peak RSS on a backlog of
64 KiB chat messages, the database as it is and made slow (bench/memory.py). Starts its own Tansu
unless KAFKA_BOOTSTRAP_SERVERS is set; uses DATABASE_URL, else the PostgreSQL on 127.0.0.1:5432, else an
embedded one. Logs of every process: bench/out/<run id>/<scenario>/.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import psutil
import psycopg

from bench import memory, mixed, quixenv, report, revision
from bench.contenders import CONTENDERS, MIXED_CONTENDERS
from bench.services import Services, services
from bench.session import Session, say
from bench.workload import WorkloadSpec, load
from sinks.dsn import redact_dsn

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "RESULTS.md"
VERSIONS = ("faust-streaming", "aiokafka", "psycopg", "pydantic", "orjson", "uvloop")
SCENARIOS = {"metric": CONTENDERS, "mixed": MIXED_CONTENDERS, "memory": memory.CONTENDERS}
EVENTS = {"metric": 200_000, "mixed": 200_000, "memory": memory.DEFAULT_EVENTS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all", help="which scenario(s) to run")
    p.add_argument(
        "--events",
        type=int,
        help="records loaded, per scenario (default: " + ", ".join(f"{s} {n:,}" for s, n in EVENTS.items()) + ")",
    )
    p.add_argument("--partitions", type=int, default=8, help="of every topic")
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--duplicates", type=float, default=0.1, help="fraction of records re-sending an earlier one")
    p.add_argument("--seed", type=int, default=1, help="seed of the load generators")
    p.add_argument("--repeat", type=int, default=1, help="runs of every contender; medians are reported")
    p.add_argument(
        "--only",
        help=f"comma-separated, of {', '.join(CONTENDERS)} (the mixed scenario has eventsink and eventsink2 "
        "only; default: all); the order rotates with each repeat",
    )
    p.add_argument("--at", metavar="REV", help="measure eventsink's sources at this git revision, not the tree")
    p.add_argument("--profile", action="store_true", help="also run one worker per scenario under py-spy")
    p.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.relative_to(HERE.parent)}")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a contender may take")
    memory.add_arguments(p)
    args = p.parse_args(argv)
    args.scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if "memory" in args.scenarios:
        memory.check_arguments(p, args, args.events or EVENTS["memory"])
    known = list(dict.fromkeys(n for s in args.scenarios for n in SCENARIOS[s]))
    args.only = [n.strip() for n in (args.only or ",".join(known)).split(",") if n.strip()]
    if set(args.only) - set(known) or not args.only or len(set(args.only)) < len(args.only):
        p.error(f"--only takes each of {', '.join(known)} at most once")
    return args


def machine(admin_dsn: str, with_quix: bool, start_load: float) -> str:
    with psycopg.connect(admin_dsn) as conn:
        (pg,) = conn.execute("SHOW server_version").fetchone()  # type: ignore[misc]
    versions = [f"{name} {metadata.version(name)}" for name in VERSIONS]
    if with_quix:
        versions.append(f"quixstreams {quixenv.version()} (own venv)")
    ram = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores, {ram:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg.split()[0]}; {', '.join(versions)}; "
        f"load average (1 min) at start {start_load:.2f}, at end {os.getloadavg()[0]:.2f}"
    )


def inherited_settings() -> str:
    """EVENTSINK_* variables of our environment: the contenders inherit those they do not set."""
    found = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("EVENTSINK_")]
    return ", ".join(found) or "none"


def names_in(args: argparse.Namespace, scenario: str) -> list[str]:
    return [n for n in args.only if n in SCENARIOS[scenario]]


def benchmark(args: argparse.Namespace, svc: Services, workdir: Path) -> report.Results:
    start_load = os.getloadavg()[0]
    # The revision is resolved, and the sources described, once: HEAD may move during the run.
    at = revision.resolve(args.at) if args.at else None
    src = revision.snapshot(workdir / "src", at)
    sources = revision.describe(src, at)
    say(f"broker {svc.bootstrap}, PostgreSQL {redact_dsn(svc.admin_dsn)}, logs in {workdir}")
    run_metric, run_mixed, run_memory = (bool(names_in(args, s)) and s in args.scenarios for s in SCENARIOS)
    # Every topic is loaded before any contender starts (the memory scenario's, ~800 MB, at its turn).
    if run_metric:
        spec = WorkloadSpec(args.events or EVENTS["metric"], args.partitions, args.tenants, args.duplicates, args.seed)
        metric_load = load(svc.bootstrap, f"bench.metrics.{workdir.name}", spec)
        say(f"metric: loaded {metric_load.sent:,} records ({metric_load.unique:,} unique)")
    if run_mixed:
        mspec = mixed.MixedSpec(
            args.events or EVENTS["mixed"], args.partitions, args.tenants, args.duplicates, args.seed
        )
        mixed_load = mixed.load(svc.bootstrap, f"bench.mixed.{workdir.name}", mspec)
        counts = ", ".join(f"{t} {n:,}" for t, n in mixed_load.sent_per_topic.items())
        say(f"mixed: loaded {mixed_load.sent:,} records ({counts})")
    session = Session(svc, workdir, src, args.timeout)
    metric_results = mixed_results = None
    if run_metric:
        names = names_in(args, "metric")
        metric_results = session.scenario("metric", CONTENDERS, names, metric_load, args.repeat, args.profile)
    if run_mixed:
        names = names_in(args, "mixed")
        mixed_results = session.scenario("mixed", MIXED_CONTENDERS, names, mixed_load, args.repeat, args.profile)
    memory_results = None
    if run_memory:
        memory_results = memory.scenario(svc, workdir, src, memory.spec_from(args, args.events or EVENTS["memory"]))
    return report.Results(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine(svc.admin_dsn, run_metric and any(n.startswith("quix") for n in args.only), start_load),
        services=svc.description,
        eventsink=f"{sources} (snapshot taken at the start; every process ran it); "
        f"EVENTSINK_* inherited from the environment: {inherited_settings()}",
        repeat=args.repeat,
        metric=metric_results,
        mixed=mixed_results,
        memory=memory_results,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = OUT / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)
    started = time.monotonic()
    if "metric" in args.scenarios and any(name.startswith("quix") for name in args.only):
        say(f"Quix Streams venv: {quixenv.ensure()}")
    with services(workdir) as svc:
        results = benchmark(args, svc, workdir)
    text = report.render(results)
    print(text)
    say(f"took {time.monotonic() - started:.0f}s")
    if args.record:
        report.append(RESULTS, text)
        say(f"appended to {RESULTS}")
    return 0 if results.ok else 1


if __name__ == "__main__":
    sys.exit(main())
