"""`python -m bench.run`: load the topics, run each contender on them alone, report.

    python -m bench.run [--scenario metric|mixed|latency|memory|rebalance|all] [--events N] [--partitions 8]
                        [--tenants 50] [--duplicates 0.1] [--repeat N] [--rounds N]
                        [--only eventsink,reference,plain,quix,eventsink2,quix-1s,...]
                        [--rates 0.25,0.5,0.75] [--duration 60] [--max-rate N] [--low-rate 100]
                        [--producer aiokafka|confluent] [--content-bytes B] [--db-delay-ms MS] [--memory-seconds S]
                        [--rebalance-rate N] [--rebalance-seconds S] [--join-at S] [--leave-at S]
                        [--at REV] [--baseline REV] [--profile] [--record]

metric: every contender on one metric topic. mixed: eventsink's (one worker, two workers) on
metric, chat and analysis topics split 70/20/10. latency: eventsink's worker (default batches at
every rate, two other batch settings at 50 %), Quix Streams and the plain loop (the anchor) on
a topic published to at fixed fractions of one worker's maximum (measured by the metric
scenario's eventsink runs, or by one such run, unless --max-rate gives it); percentiles of
CreateTime -> row committed, in --rounds rounds. memory: one
worker's peak RSS on a backlog of 64 KiB chat messages, the database as it is and made slow
(bench/memory.py). rebalance: a second worker joins one that consumes a topic published to at a
fixed rate, then leaves; the longest interval without a commit on the partitions that did not
move, and on those that did (bench/rebalance.py). Starts its own Tansu unless KAFKA_BOOTSTRAP_SERVERS is set; uses
DATABASE_URL, else the PostgreSQL on 127.0.0.1:5432, else an embedded one. Logs of every
process: bench/out/<run id>/<scenario>/.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import psutil
import psycopg

from bench import latency, memory, mixed, quixenv, rebalance, report, report_metric, revision
from bench.contenders import CONTENDERS, MIXED_CONTENDERS, SESSION_TIMEOUT_MS, baseline
from bench.latency import LATENCY_CONTENDERS, LatencySpec
from bench.paced import PRODUCERS
from bench.services import Services, services
from bench.session import Session, say
from bench.workload import Workload, WorkloadSpec, load
from sinks.dsn import redact_dsn

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "RESULTS.md"
VERSIONS = ("faust-streaming", "aiokafka", "psycopg", "pydantic", "orjson", "uvloop")
SCENARIOS = {
    "metric": CONTENDERS,
    "mixed": MIXED_CONTENDERS,
    "latency": LATENCY_CONTENDERS,
    "memory": memory.CONTENDERS,
    "rebalance": rebalance.CONTENDERS,
}
REBALANCE_FRACTION = 0.25  # of one worker's maximum, the rebalance scenario's default rate
EVENTS = {"metric": 200_000, "mixed": 200_000, "latency": 200_000, "memory": memory.DEFAULT_EVENTS}


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
    p.add_argument(
        "--repeat", type=int, default=1, help="runs of every contender; medians are reported (latency: see --rounds)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="latency: rounds of the whole schedule, the contenders' order rotated each round; each round "
        "is reported, and eventsink's p99 against the plain loop's round by round",
    )
    p.add_argument(
        "--only",
        help=f"comma-separated, of {', '.join(dict.fromkeys([*CONTENDERS, *LATENCY_CONTENDERS]))} (the mixed "
        f"scenario has eventsink and eventsink2 only, the latency one {', '.join(LATENCY_CONTENDERS)}; "
        "default: all); the order rotates with each repeat",
    )
    p.add_argument(
        "--rates",
        default="0.25,0.5,0.75",
        help="latency: comma-separated fractions of the maximum rate to publish at, in the order run",
    )
    p.add_argument("--duration", type=float, default=60.0, help="latency: seconds of publishing per run")
    p.add_argument(
        "--max-rate",
        type=float,
        help="latency: one worker's maximum, records/s (default: the median steady events/s of the metric "
        "scenario's eventsink runs, or of one such run made for it)",
    )
    p.add_argument(
        "--drain", type=float, default=30.0, help="latency, rebalance: seconds rows may take after the last send"
    )
    p.add_argument(
        "--low-rate", type=int, default=100, help="latency: records/s of one more run of eventsink's default (0: none)"
    )
    p.add_argument(
        "--producer",
        choices=PRODUCERS,
        default="aiokafka",
        help="latency, rebalance: the paced producer's client (default: aiokafka; confluent: librdkafka)",
    )
    p.add_argument(
        "--rebalance-rate",
        type=int,
        help="rebalance: records/s published (default: 25 %% of one worker's maximum, as for latency)",
    )
    p.add_argument("--rebalance-seconds", type=float, default=40.0, help="rebalance: seconds of publishing")
    p.add_argument("--join-at", type=float, default=10.0, help="rebalance: seconds after the first send B joins")
    p.add_argument("--leave-at", type=float, default=25.0, help="rebalance: seconds after the first send B leaves")
    p.add_argument("--at", metavar="REV", help="measure eventsink's sources at this git revision, not the tree")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="metric scenario: also measure one worker at this revision (contender `baseline`), in the same rounds",
    )
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
    try:
        args.fractions = tuple(float(f) for f in args.rates.split(",") if f.strip())
    except ValueError:
        p.error(f"--rates takes fractions such as 0.25,0.5,0.75, not {args.rates!r}")
    if not args.fractions or any(f <= 0 for f in args.fractions) or len(set(args.fractions)) < len(args.fractions):
        p.error("--rates takes distinct positive fractions")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if (args.max_rate is not None and args.max_rate <= 0) or args.duration <= 0:
        p.error("--max-rate and --duration must be positive")
    if args.rebalance_rate is not None and args.rebalance_rate <= 0:
        p.error("--rebalance-rate must be positive")
    if not 0 < args.join_at < args.leave_at < args.rebalance_seconds:
        p.error("rebalance: 0 < --join-at < --leave-at < --rebalance-seconds")
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


def uses_quix(args: argparse.Namespace) -> bool:
    return any(n.startswith("quix") for s in ("metric", "latency") if s in args.scenarios for n in names_in(args, s))


def max_rate(
    args: argparse.Namespace, session: Session, metric_results: report_metric.Results | None, metric: Workload | None
) -> tuple[float, str]:
    """One worker's maximum for the latency scenario: given, from the metric scenario's eventsink
    runs (median steady events/s), or measured now by one such run."""
    if args.max_rate:
        return args.max_rate, "given with --max-rate"
    runs = metric_results.of("eventsink") if metric_results is not None else []
    where = "the metric scenario of this invocation"
    if metric is None or not any(m.ok for m in runs):
        if metric is None:
            spec = WorkloadSpec(
                args.events or EVENTS["metric"], args.partitions, args.tenants, args.duplicates, args.seed
            )
            metric = load(session.services.bootstrap, f"bench.metrics.{session.workdir.name}", spec)
        runs = [session.run("maxrate", "eventsink", CONTENDERS["eventsink"], metric, 1)]
        where = "a run of its own in this invocation"
    rates = [m.steady_events_per_s for m in runs if m.ok and m.steady_events_per_s]
    if not rates:
        raise SystemExit("latency: one worker's maximum could not be measured (its run failed); give --max-rate")
    return statistics.median(rates), (
        f"the median steady events/s of one `eventsink worker` over {len(rates)} run(s) on the metric workload "
        f"({metric.spec.events:,} records, {metric.spec.duplicates:.0%} duplicates), {where}"
    )


def benchmark(args: argparse.Namespace, svc: Services, workdir: Path) -> report.Results:
    start_load = os.getloadavg()[0]
    # The revision is resolved, and the sources described, once: HEAD may move during the run.
    at = revision.resolve(args.at) if args.at else None
    src = revision.snapshot(workdir / "src", at)
    sources = revision.describe(src, at)
    say(f"broker {svc.bootstrap}, PostgreSQL {redact_dsn(svc.admin_dsn)}, logs in {workdir}")
    run_metric, run_mixed, run_latency, run_memory, run_rebalance = (
        bool(names_in(args, s)) and s in args.scenarios for s in SCENARIOS
    )
    metric_load: Workload | None = None
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
    metric_results = mixed_results = latency_results = None
    if run_metric:
        names, contenders = names_in(args, "metric"), dict(CONTENDERS)
        if args.baseline:
            base = revision.resolve(args.baseline)
            contenders["baseline"] = baseline(revision.snapshot(workdir / "src-baseline", base), args.baseline)
            names.append("baseline")
            sources += f"; `baseline`: {revision.describe(workdir / 'src-baseline', base)}"
        metric_results = session.scenario("metric", contenders, names, metric_load, args.repeat, args.profile)
    if run_mixed:
        names = names_in(args, "mixed")
        mixed_results = session.scenario("mixed", MIXED_CONTENDERS, names, mixed_load, args.repeat, args.profile)
    if run_latency:
        rate, how = max_rate(args, session, metric_results, metric_load)
        say(f"latency: one worker's maximum {rate:,.0f} records/s ({how})")
        lspec = LatencySpec(
            args.fractions,
            args.duration,
            args.partitions,
            args.tenants,
            args.seed,
            args.drain,
            low_rate=args.low_rate,
            producer=args.producer,
        )
        latency_results = latency.scenario(session, names_in(args, "latency"), lspec, rate, how, args.rounds)
    memory_results = None
    if run_memory:
        memory_results = memory.scenario(svc, workdir, src, memory.spec_from(args, args.events or EVENTS["memory"]))
    rebalance_results = None
    if run_rebalance:
        if args.rebalance_rate:
            rrate, rhow = args.rebalance_rate, "given with --rebalance-rate"
        else:
            top, how = max_rate(args, session, metric_results, metric_load)
            rrate, rhow = (
                max(1, round(top * REBALANCE_FRACTION)),
                f"{REBALANCE_FRACTION:.0%} of {top:,.0f} records/s, {how}",
            )
        rspec = rebalance.RebalanceSpec(
            rrate,
            rhow,
            args.rebalance_seconds,
            args.join_at,
            args.leave_at,
            args.partitions,
            args.tenants,
            args.seed,
            args.drain,
            producer=args.producer,
        )
        rebalance_results = rebalance.scenario(session, rspec, args.repeat, SESSION_TIMEOUT_MS)
    return report.Results(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine(svc.admin_dsn, uses_quix(args), start_load),
        services=svc.description,
        eventsink=f"{sources} (snapshot taken at the start; every process ran it); "
        f"EVENTSINK_* inherited from the environment: {inherited_settings()}",
        repeat=args.repeat,
        metric=metric_results,
        mixed=mixed_results,
        latency=latency_results,
        memory=memory_results,
        rebalance=rebalance_results,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = OUT / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)
    started = time.monotonic()
    if uses_quix(args):
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
