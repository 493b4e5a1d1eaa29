"""The commands operators type refuse mistakes: a name that matches nothing is a usage error, a
check that read nothing never says all is well, and a change to the ledger that can lose or
re-apply data is refused unless it can be right, and is recorded when it is made.

The real CLI, the real broker, the real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable

import orjson
import psycopg
import pytest

from tests.helpers import Scenario, WorkerProcess, commit_group_offsets, count_by_tenant, ledger, wait_applied
from tests.workload import Sent, create_topics, metric_json, send_raw

OVERRIDE = "--lose-records-the-broker-still-has"
NOT_A_UUID = "not-a-uuid"


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a usage error prints (asserted: exit 2, nothing on stdout, one line)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def lost(s: Scenario, partition: int) -> int:
    """The ledger's count of offsets given up as lost in a partition of the scenario's topic."""
    with psycopg.connect(s.dsn) as conn:
        row = conn.execute(
            "SELECT lost FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s AND partition = %s",
            (s.group, s.topic, partition),
        ).fetchone()
    assert row is not None
    return int(row[0])


Args = Callable[[Scenario], list[str]]

# Every command that takes a topic, a tenant, a group, a partition or a migration version, with
# one that does not exist; and what the one line says exists or is valid ({topic}, {dlq}: the
# scenario's).
MISTAKES: dict[str, tuple[Args, str]] = {
    "verify topic": (lambda s: ["verify", "metrcs"], "eventsink's topics are metrics-"),
    "verify a DLQ": (lambda s: ["verify", s.dlq_topic], "give its source topic '{topic}'"),
    "verify a kind": (lambda s: ["verify", "metric"], "'metric' is a kind of event; its topic is '{topic}'"),
    "lag a kind": (lambda s: ["lag", "--topic", "metric"], "'metric' is a kind of event; its topic is '{topic}'"),
    "verify tenant": (lambda s: ["verify", s.topic, "--tenant", NOT_A_UUID], "is not a tenant id: give a UUID"),
    "verify group": (lambda s: ["verify", s.topic, "--group", "nosuch"], "no consumer group 'nosuch'"),
    "tail topic": (lambda s: ["tail", "metrcs"], "no topic 'metrcs': eventsink's topics are"),
    "tail typed topic": (lambda s: ["tail", "nosuch", "--type", "metric"], "'nosuch' does not exist on the broker"),
    "ledger skip group": (
        lambda s: ["ledger", "skip", "--topic", s.topic, "--partition", "0", "--to", "1", "--group", "nosuch"],
        "no consumer group 'nosuch'",
    ),
    "ledger reset group": (
        lambda s: ["ledger", "reset", "--topic", s.topic, "--group", "nosuch"],
        "no consumer group 'nosuch'",
    ),
    "tail mistyped topic": (
        lambda s: ["tail", s.topic, "--type", "chat"],
        "'{topic}' carries metric events by these settings: leave --type out, or give --type metric",
    ),
    "tail tenant": (lambda s: ["tail", s.topic, "--tenant", NOT_A_UUID], "is not a tenant id"),
    "tail partition": (
        lambda s: ["tail", s.topic, "--partition", "9"],
        "has no partition 9: its partitions are 0 to 3",
    ),
    "lag topic": (lambda s: ["lag", "--topic", "nosuch", "--max-lag", "0"], "no topic 'nosuch'"),
    "lag group": (lambda s: ["lag", "--group", "nosuch", "--max-lag", "0"], "no consumer group 'nosuch'"),
    "ledger show topic": (lambda s: ["ledger", "show", "--topic", "nosuch"], "counts no topic 'nosuch'"),
    "ledger show group": (lambda s: ["ledger", "show", "--group", "nosuch"], "no consumer group 'nosuch'"),
    "ledger history group": (lambda s: ["ledger", "history", "--group", "nosuch"], "no consumer group 'nosuch'"),
    "ledger reset topic": (lambda s: ["ledger", "reset", "--topic", "nosuch"], "no topic 'nosuch'"),
    "ledger reset partition": (
        lambda s: ["ledger", "reset", "--topic", s.topic, "--partition", "9"],
        "has no partition of",
    ),
    "ledger skip topic": (
        lambda s: ["ledger", "skip", "--topic", "nosuch", "--partition", "0", "--to", "1"],
        "no topic 'nosuch'",
    ),
    "ledger skip partition": (
        lambda s: ["ledger", "skip", "--topic", s.topic, "--partition", "9", "--to", "1"],
        "has no partition 9: its partitions are 0 to 3",
    ),
    "migrate to": (lambda s: ["migrate", "--to", "999"], "no migration 999: versions are 1 to"),
    "migrate down to": (lambda s: ["migrate", "--down-to", "999"], "no migration 999: versions are 0 to"),
    "chat history tenant": (
        lambda s: ["chat", "history", str(uuid.uuid4()), "--tenant", NOT_A_UUID],
        "is not a tenant id",
    ),
    "dlq list a source topic": (
        lambda s: ["dlq", "list", s.topic],
        "is a source topic, not a dead-letter topic: use {dlq}",
    ),
}


# The mistakes checked after the configured group (EVENTSINK_GROUP_ID), which must exist first:
# here the broker knows it, as it does once a worker joined.
AFTER_THE_GROUP = {"lag topic", "ledger show topic", "ledger reset partition", "ledger skip partition"}


def known_to_the_broker(s: Scenario) -> None:
    """The scenario's group exists on the broker (committed offsets), as after a worker joined."""
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: 0 for p in range(4)}))


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_name_that_matches_nothing_is_a_usage_error_saying_what_is_valid(scenario: Scenario, mistake: str) -> None:
    s = scenario
    create_topics(s)
    if mistake in AFTER_THE_GROUP:
        known_to_the_broker(s)
    args, says = MISTAKES[mistake]
    assert says.format(topic=s.topic, dlq=s.dlq_topic) in usage_error(s.cli(*args(s)))


def test_a_tenant_in_any_spelling_a_worker_accepts_is_the_same_tenant(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    known_to_the_broker(s)
    a, b = sent.tenants[0], sent.tenants[1]
    send_raw(s, sent, [(a.encode(), metric_json(a, f"a{i}")) for i in range(3)], partition=0)
    send_raw(s, sent, [(b.encode(), metric_json(b, f"b{i}")) for i in range(2)], partition=0)
    # A worker takes this key as tenant a's too (the record is invalid: dead-lettered under a).
    send_raw(s, sent, [(uuid.UUID(a).hex.upper().encode(), b"not json")], partition=0)
    spellings = [a, uuid.UUID(a).hex, a.upper(), f"{{{a}}}", f"urn:uuid:{a}"]
    for spelling in spellings:
        done = s.cli("tail", s.topic, "--from-beginning", "--format", "json", "--tenant", spelling)
        assert done.returncode == 0, done.stderr
        rows = [orjson.loads(line) for line in done.stdout.splitlines()]
        assert [(r["offset"], r["valid"]) for r in rows] == [(0, True), (1, True), (2, True), (5, False)], spelling
    reports = []
    for spelling in spellings:
        done = s.cli("verify", s.topic, "--json", "--tenant", spelling)
        assert done.stdout, done.stderr
        reports.append(orjson.loads(done.stdout)["tenants"])
    assert all(r == reports[0] for r in reports)
    assert [(t["tenant"], t["seen"]) for t in reports[0]] == [(a, 4)]


def test_a_check_that_read_nothing_never_says_consistent(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    known_to_the_broker(s)
    nobody = str(uuid.uuid4())
    empty = s.cli("verify", s.topic)
    assert empty.returncode == 1 and "consistent" not in empty.stderr
    assert "holds no records: nothing to verify" in empty.stderr
    a = sent.tenants[0]
    send_raw(s, sent, [(a.encode(), metric_json(a, "a0"))], partition=0)
    none_of_theirs = s.cli("verify", s.topic, "--tenant", nobody)
    assert none_of_theirs.returncode == 1 and "consistent" not in none_of_theirs.stderr
    assert f"holds no records of tenant {nobody}" in none_of_theirs.stderr


def test_skipping_offsets_the_broker_still_has_is_refused_and_they_are_then_applied(scenario: Scenario) -> None:
    """The mistake of issue 18: `ledger skip --to` past the ledger, over records the broker has
    (or has not written yet). Refused; the records are then applied by the next worker."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    records = [(tenant.encode(), metric_json(tenant, f"a{i}")) for i in range(10)]
    send_raw(s, sent, records, partition=1, unique={tenant: 10}, one_by_one=True)
    w = WorkerProcess(s.env(), s.data_dir / "w1.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    last = sent.last_offsets[1]
    skip = ["ledger", "skip", "--topic", s.topic, "--partition", "1"]
    assert "is not written yet" in usage_error(s.cli(*skip, "--to", str(last + 50)))
    assert "is not written yet" in usage_error(s.cli(*skip, "--to", str(last + 50), OVERRIDE))
    assert "already at or past offset" in usage_error(s.cli(*skip, "--to", str(last)))
    # The log was not recreated: a reset would apply it again from offset 0.
    assert "refused" in usage_error(s.cli("ledger", "reset", "--topic", s.topic))
    more = [(tenant.encode(), metric_json(tenant, f"b{i}")) for i in range(20)]
    send_raw(s, sent, more, partition=1, unique={tenant: 20}, one_by_one=True)
    for dry in ([], ["--dry-run"]):
        refused = usage_error(s.cli(*skip, "--to", str(last + 10), *dry))
        assert f"the broker still has {s.topic}[1] offsets {last + 1} to {last + 10}" in refused and OVERRIDE in refused
    assert ledger(s.dsn, s.group, s.topic)[1]["last_offset"] == last  # nothing changed
    w = WorkerProcess(s.env(), s.data_dir / "w2.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    assert count_by_tenant(s.dsn, [tenant]) == {tenant: 30}
    assert lost(s, 1) == 0


def test_a_dry_run_shows_the_real_runs_plan_and_the_change_is_recorded_and_listed(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    send_raw(s, sent, [(tenant.encode(), metric_json(tenant, f"a{i}")) for i in range(8)], partition=2, one_by_one=True)
    known_to_the_broker(s)  # a skip changes a group's ledger: the group must exist
    skip = ["ledger", "skip", "--topic", s.topic, "--partition", "2", "--to", "4", OVERRIDE]
    dry = s.cli(*skip, "--dry-run", EVENTSINK_OPERATOR="alice")
    assert dry.returncode == 0, dry.stderr
    # The group given as --group rather than EVENTSINK_GROUP_ID: the same plan.
    named = s.cli(*skip, "--dry-run", "--group", s.group, EVENTSINK_OPERATOR="alice", EVENTSINK_GROUP_ID="other")
    assert named.returncode == 0 and named.stderr == dry.stderr, named.stderr
    assert ledger(s.dsn, s.group, s.topic) == {}
    nothing = s.cli("ledger", "history", "--topic", s.topic, "--json")
    assert nothing.returncode == 0 and nothing.stdout == "", nothing.stderr
    done = s.cli(*skip, EVENTSINK_OPERATOR="alice")
    assert done.returncode == 0, done.stderr
    planned, made = dry.stderr.strip().splitlines(), done.stderr.strip().splitlines()
    assert planned[:-1] == made[:-1] and planned[-1] == "dry run: nothing changed"
    assert f"{s.topic}[2]: 5 offset(s), 0 to 4, given up as lost; last offset -1 -> 4" in made[0]
    assert ledger(s.dsn, s.group, s.topic)[2]["last_offset"] == 4 and lost(s, 2) == 5
    listed = s.cli("ledger", "history", "--topic", s.topic, "--json")
    assert listed.returncode == 0, listed.stderr
    [change] = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (change["operator"], change["action"], change["consumer_group"], change["partition"]) == (
        "alice",
        "skip",
        s.group,
        2,
    )
    assert (change["before_offset"], change["after_offset"]) == (-1, 4)
    assert change["command"].startswith("eventsink ledger skip --topic") and OVERRIDE in change["reason"]
    table = s.cli("ledger", "history")
    assert table.returncode == 0 and "alice" in table.stdout and f"{s.topic}[2]" in table.stdout


def test_a_group_the_broker_knows_is_a_group_before_the_ledger_counts_anything(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    a = sent.tenants[0]
    send_raw(s, sent, [(a.encode(), metric_json(a, f"a{i}")) for i in range(3)], partition=0, one_by_one=True)
    other = f"other-{s.name}"
    asyncio.run(commit_group_offsets(s.bootstrap, other, s.topic, {0: 1, 1: 0, 2: 0, 3: 0}))
    done = s.cli("lag", "--group", other, "--topic", s.topic, "--json")
    assert done.returncode == 0, done.stderr
    lags = {p["partition"]: p for p in orjson.loads(done.stdout)["partitions"]}
    assert (lags[0]["committed"], lags[0]["kafka_lag"], lags[0]["ledger_lag"]) == (1, 2, 3)


def test_the_configured_group_is_checked_like_a_group_named_with_group(scenario: Scenario) -> None:
    """A misspelt EVENTSINK_GROUP_ID reads as no group, never as an empty ledger, a consistent
    topic, totals of 0 or a plan to change a group that does not exist."""
    s, sent = scenario, Sent()
    create_topics(s)
    a = sent.tenants[0]
    send_raw(s, sent, [(a.encode(), metric_json(a, f"a{i}")) for i in range(3)], partition=0, one_by_one=True)
    typo = f"typo-{s.name}"
    commands = [
        ["ledger", "show"],
        ["verify", s.topic],
        ["lag"],
        ["lag", "--topic", s.topic],
        ["ledger", "skip", "--topic", s.topic, "--partition", "0", "--to", "1", OVERRIDE, "--dry-run"],
        ["ledger", "reset", "--topic", s.topic, "--dry-run"],
    ]
    for args in commands:
        line = usage_error(s.cli(*args, EVENTSINK_GROUP_ID=typo))
        assert f"no consumer group '{typo}' (from EVENTSINK_GROUP_ID) in the ledger or on the broker" in line, args
        assert "the ledger knows" in line and "the broker knows" in line, args
    assert ledger(s.dsn, typo, s.topic) == {}
    # The same group once the broker knows it (a worker joined it): no longer a mistake.
    asyncio.run(commit_group_offsets(s.bootstrap, typo, s.topic, {p: 0 for p in range(4)}))
    shown = s.cli("ledger", "show", EVENTSINK_GROUP_ID=typo)
    assert shown.returncode == 0 and f"the ledger of group {typo} has no partition yet" in shown.stderr, shown.stderr


HUGE = "99999999999999999999"
NUMBERS_OUT_OF_RANGE: dict[str, tuple[Args, str]] = {
    "tail --since": (lambda s: ["tail", s.topic, "--since", "99999999d"], "reaches before year 1"),
    "verify --since": (lambda s: ["verify", s.topic, "--since", "99999999d"], "reaches before year 1"),
    "dlq list --since": (lambda s: ["dlq", "list", s.dlq_topic, "--since", "99999999d"], "reaches before year 1"),
    "dlq replay --since": (
        lambda s: ["dlq", "replay", s.dlq_topic, "--since", "99999999d", "--dry-run"],
        "reaches before year 1",
    ),
    "ledger history --limit": (lambda s: ["ledger", "history", "--limit", HUGE], "is not in the range 1<=x<="),
    "dlq list --limit": (lambda s: ["dlq", "list", s.dlq_topic, "--limit", HUGE], "is not in the range 1<=x<="),
    "ledger skip --to": (
        lambda s: ["ledger", "skip", "--topic", s.topic, "--partition", "0", "--to", HUGE],
        "is not in the range 0<=x<=",
    ),
    "lag --max-lag": (lambda s: ["lag", "--max-lag", HUGE], "is not in the range 0<=x<="),
}


def test_a_number_out_of_range_is_a_usage_error_not_a_crash(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    for name, (args, says) in NUMBERS_OUT_OF_RANGE.items():
        line = usage_error(s.cli(*args(s)))
        assert says in line and "Error" not in line.split(":", 1)[1], (name, line)


def test_a_viewer_that_shows_nothing_or_part_says_so(scenario: Scenario) -> None:
    """`tail` with a filter no record matches says so on stderr (exit 0, stdout empty); `dlq list
    --json` cut at --limit says how many it left out (stdout stays the letters alone)."""
    s, sent = scenario, Sent()
    create_topics(s)
    a = sent.tenants[0]
    records = [(a.encode(), metric_json(a, "ok"))] + [(a.encode(), f"not json {i}".encode()) for i in range(3)]
    send_raw(s, sent, records, partition=0, unique={a: 1}, one_by_one=True)
    nobody = str(uuid.uuid4())
    tailed = s.cli("tail", s.topic, "--tenant", nobody, "--last", "5")
    assert tailed.returncode == 0 and tailed.stdout == "", tailed
    assert tailed.stderr.strip().splitlines() == [f"no record of {s.topic} matched (--tenant {nobody})"]
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    listed = s.cli("dlq", "list", s.dlq_topic, "--json", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 2
    assert "2 of 3 shown (--limit 2)" in listed.stderr
    whole = s.cli("dlq", "list", s.dlq_topic, "--json")
    assert len(whole.stdout.splitlines()) == 3 and "shown" not in whole.stderr, whole.stderr


def test_dlq_replay_to_is_an_existing_topic_that_is_no_dead_letter_topic_nor_replay_log(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    a = sent.tenants[0]
    send_raw(s, sent, [(a.encode(), b"not json")], partition=0, one_by_one=True)
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    replay = ["dlq", "replay", s.dlq_topic]
    typo = f"{s.topic}z"
    refusals = {
        typo: f"topic '{typo}' does not exist on the broker",
        f"{s.chat_topic}.dlq": "is a dead-letter topic",
        f"{s.dlq_topic}.replays": "is a replay log",
    }
    for to, says in refusals.items():
        line = usage_error(s.cli(*replay, "--to", to))
        assert says in line and "give an existing topic that is no dead-letter or .replays topic" in line, line
        assert s.topic in line, line  # the valid targets named
    topics = asyncio.run(_topics(s.bootstrap))
    assert typo not in topics and f"{s.dlq_topic}.replays" not in topics  # nothing created, nothing sent
    dry = s.cli(*replay, "--to", s.topic, "--dry-run")
    assert dry.returncode == 0 and f"would replay 1 record(s) from {s.dlq_topic} to {s.topic}" in dry.stderr, dry


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _send_at(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], timestamp_ms: int) -> None:
    """Records whose own timestamp is `timestamp_ms` (as a producer may set it)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key, partition=0, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


def test_verify_since_reads_the_records_of_the_window_by_their_own_timestamps(scenario: Scenario) -> None:
    """Tansu answers "the offset for a time after the last record" with offset 0: verify --since
    must not take that for a window, or it checks everything and says consistent."""
    import time

    s, sent = scenario, Sent()
    create_topics(s)
    known_to_the_broker(s)
    a, b = sent.tenants[0], sent.tenants[1]
    hour_ago = int(time.time() * 1000) - 3_600_000
    asyncio.run(_send_at(s.bootstrap, s.topic, [(a.encode(), metric_json(a, f"old{i}")) for i in range(5)], hour_ago))
    for since in ("1m", "2099-01-01T00:00:00Z"):
        for json in ([], ["--json"]):
            done = s.cli("verify", s.topic, "--since", since, *json)
            assert done.returncode == 1 and done.stdout == "", done
            assert f"{s.topic} holds no records since {since}: nothing to verify" in done.stderr, done.stderr
            assert "consistent" not in done.stderr
    send_raw(s, sent, [(b.encode(), metric_json(b, f"new{i}")) for i in range(2)], partition=0, one_by_one=True)
    window = s.cli("verify", s.topic, "--since", "10m", "--json")
    assert window.stdout, window.stderr
    assert [(t["tenant"], t["seen"]) for t in orjson.loads(window.stdout)["tenants"]] == [(b, 2)]
    whole = s.cli("verify", s.topic, "--json")
    assert sorted((t["tenant"], t["seen"]) for t in orjson.loads(whole.stdout)["tenants"]) == sorted([(a, 5), (b, 2)])


def test_a_skip_in_a_database_its_workers_never_wrote_to_is_refused(scenario: Scenario) -> None:
    """`ledger skip` with DATABASE_URL naming another database: the group's workers committed
    offsets in Kafka (they commit only what their ledger holds), and this database has no ledger
    row of theirs; the skip would be recorded where they never look. Refused, naming the database."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    send_raw(s, sent, [(tenant.encode(), metric_json(tenant, f"a{i}")) for i in range(8)], partition=2, one_by_one=True)
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {2: 6}))  # as its workers would have
    skip = ["ledger", "skip", "--topic", s.topic, "--partition", "2", "--to", "4", OVERRIDE]
    for dry in (["--dry-run"], []):
        refused = usage_error(s.cli(*skip, *dry))
        database = psycopg.conninfo.conninfo_to_dict(s.worker_dsn or s.dsn)["dbname"]
        assert (
            f"the ledger of group {s.group} in database " in refused and f"/{database} has no {s.topic}[2]" in refused
        )
        assert "behind the offset 6 the group committed for it in Kafka" in refused
        assert "check DATABASE_URL" in refused
    assert ledger(s.dsn, s.group, s.topic) == {}  # nothing recorded
    # A row here, but behind what the group committed: not its workers' ledger, or one that lost
    # commits they will apply again. Refused too; once the ledger leads again, the skip is planned.
    with psycopg.connect(s.dsn) as conn:
        conn.execute(
            "INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition, last_offset) "
            "VALUES (%s, %s, 2, 1)",
            (s.group, s.topic),
        )
    behind = usage_error(s.cli(*skip, "--dry-run"))
    assert f"has {s.topic}[2] at offset 1, behind the offset 6 the group committed" in behind
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {2: 2}))
    planned = s.cli(*skip, "--dry-run")
    assert planned.returncode == 0 and "last offset 1 -> 4" in planned.stderr, planned.stderr
