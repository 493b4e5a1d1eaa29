"""`eventsink tail` and `eventsink lag` against a real broker, the workers left undisturbed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.helpers import Scenario, WorkerProcess, commit_group_offsets, committed_offsets, wait_applied, wait_until
from tests.web import samples, total
from tests.workload import Sent, create_topics, metric_json, send_raw


async def group_state(bootstrap: str, group: str) -> str:
    """The consumer group's state as the broker describes it (Stable, PreparingRebalance, ...)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return described[0].groups[0][2]


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def loaded(scenario: Scenario) -> tuple[Scenario, Sent, str, str]:
    s, sent = scenario, Sent()
    create_topics(s)
    a, b = sent.tenants[0], sent.tenants[1]
    send_raw(s, sent, [(a.encode(), metric_json(a, f"a{i}", value=i)) for i in range(6)], partition=0, one_by_one=True)
    send_raw(
        s, sent, [(b.encode(), metric_json(b, f"b{i}", value=100 + i)) for i in range(4)], partition=1, one_by_one=True
    )
    send_raw(s, sent, [(a.encode(), b'{"tenant_id": "' + a.encode() + b'", "value": "needle"}')], partition=0)
    return s, sent, a, b


def test_tail_decodes_filters_and_marks_invalid_records(loaded: tuple[Scenario, Sent, str, str]) -> None:
    s, _, a, b = loaded
    everything = json_lines(s.cli("tail", s.topic, "--from-beginning", "--format", "json"))
    assert len(everything) == 11
    invalid = [r for r in everything if not r["valid"]]
    assert (
        len(invalid) == 1
        and invalid[0]["error"]["reason"] == "invalid_event"
        and "name" in invalid[0]["error"]["detail"]
    )
    assert {r["event"]["tenant_id"] for r in everything if r["valid"]} == {a, b}
    only_b = json_lines(s.cli("tail", s.topic, "--from-beginning", "--format", "json", "--tenant", b))
    assert [r["event"]["value"] for r in only_b] == [100.0, 101.0, 102.0, 103.0]
    grep = json_lines(s.cli("tail", s.topic, "--from-beginning", "--format", "json", "--grep", "needle"))
    assert [r["offset"] for r in grep] == [6]
    last = json_lines(s.cli("tail", s.topic, "--last", "2", "--format", "json", "--partition", "0"))
    assert [(r["partition"], r["offset"]) for r in last] == [(0, 5), (0, 6)]
    pretty = s.cli("tail", s.topic, "--from-beginning", "--partition", "1")
    assert pretty.returncode == 0 and pretty.stdout.count("\n") == 4 and "cpu=100" in pretty.stdout


def test_tail_follows_new_records(loaded: tuple[Scenario, Sent, str, str]) -> None:
    s, sent, a, _ = loaded
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "tail", s.topic, "--follow", "--format", "json", "--last", "0"],
        env=s.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Live once it says so: what is sent from then on is shown, nothing before it.
        assert "the backlog is over" in proc.stderr.readline()  # type: ignore[union-attr]
        send_raw(s, sent, [(a.encode(), metric_json(a, "live-1")), (a.encode(), metric_json(a, "live-2"))])
        lines = [orjson.loads(proc.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)
    assert [r["event"]["dedupe_id"] for r in lines] == ["live-1", "live-2"]


def test_tail_shows_dead_letters_with_their_reason(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    send_raw(
        s, sent, [(tenant.encode(), b"not json at all"), (tenant.encode(), metric_json(tenant, "ok"))], partition=2
    )
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        w.stop()
    rows = json_lines(s.cli("tail", s.dlq_topic, "--from-beginning", "--format", "json"))
    assert len(rows) == 1
    assert rows[0]["dlq"]["reason"] == "invalid_json"
    assert (rows[0]["dlq"]["source_topic"], rows[0]["dlq"]["source_partition"], rows[0]["dlq"]["source_offset"]) == (
        s.topic,
        2,
        0,
    )
    assert "DLQ invalid_json" in s.cli("tail", s.dlq_topic, "--from-beginning").stdout


@pytest.mark.e2e
def test_tail_and_lag_leave_the_group_alone_and_lag_counts_a_known_backlog(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    send_raw(
        s, sent, [(tenant.encode(), metric_json(tenant, f"e{i}")) for i in range(40)], partition=0, one_by_one=True
    )
    send_raw(
        s, sent, [(tenant.encode(), metric_json(tenant, f"f{i}")) for i in range(25)], partition=3, one_by_one=True
    )
    # The group exists on the broker before any worker ran (`lag` refuses a group nobody knows):
    # it committed offset 0 where the records are, nothing elsewhere.
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {0: 0, 3: 0}))
    before = json_lines(s.cli("lag", "--json"))[0]
    by_partition = {p["partition"]: p for p in before["partitions"] if p["topic"] == s.topic}
    assert {p: (v["end_offset"], v["committed"], v["applied"], v["ledger_lag"]) for p, v in by_partition.items()} == {
        0: (40, 0, 0, 40),
        1: (0, None, 0, 0),
        2: (0, None, 0, 0),
        3: (25, 0, 0, 25),
    }
    failing = s.cli("lag", "--max-lag", "64")
    assert failing.returncode == 1 and "65" in failing.stdout
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        assignments = sum(1 for e in w.logs() if e.get("event") == "partitions assigned")
        # Kafka's committed offsets follow the ledger, a commit interval later.
        expected = {0: 40, 1: None, 2: None, 3: 25}
        committed = wait_until(
            lambda: asyncio.run(committed_offsets(s.bootstrap, s.group, s.topic, range(4))) == expected and expected,
            30,
            what="Kafka commits from the ledger",
        )
        wait_until(lambda: asyncio.run(group_state(s.bootstrap, s.group)) == "Stable", 30, what="a stable group")
        generation = total(samples(w), "eventsink_group_generation")
        assert generation >= 0
        tail = s.cli("tail", s.topic, "--from-beginning", "--format", "json")
        assert len(tail.stdout.splitlines()) == 65
        # Had tail joined the group, the worker would have joined a new generation before tail got
        # a record; and the group would rebalance again as tail left, until stable again.
        wait_until(lambda: asyncio.run(group_state(s.bootstrap, s.group)) == "Stable", 30, what="a stable group")
        assert total(samples(w), "eventsink_group_generation") == generation, "tail caused a rebalance"
        assert sum(1 for e in w.logs() if e.get("event") == "partitions assigned") == assignments
        assert asyncio.run(committed_offsets(s.bootstrap, s.group, s.topic, range(4))) == committed
    finally:
        assert w.stop() == 0
    send_raw(s, sent, [(tenant.encode(), metric_json(tenant, f"g{i}")) for i in range(7)], partition=0, one_by_one=True)
    after = {p["partition"]: p for p in json_lines(s.cli("lag", "--json"))[0]["partitions"] if p["topic"] == s.topic}
    assert (after[0]["end_offset"], after[0]["committed"], after[0]["applied"]) == (47, 40, 40)
    assert (after[0]["kafka_lag"], after[0]["ledger_lag"], after[3]["ledger_lag"]) == (7, 7, 0)
    assert s.cli("lag", "--max-lag", "7").returncode == 0
    human = s.cli("lag")
    assert human.returncode == 0 and "total" in human.stdout and s.topic in human.stdout


def test_topics_create_is_explicit_and_idempotent(scenario: Scenario) -> None:
    s = scenario
    first = s.cli("topics", "create", "--partitions", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") >= 6 and "cleanup.policy=compact" in first.stdout
    again = s.cli("topics", "create", "--partitions", "3")
    assert again.returncode == 0 and "created" not in again.stdout.replace("(created", "")
    listed = s.cli("topics", "list")
    assert s.chat_topic in listed.stdout and "missing" not in listed.stdout
    # Existing with another partition count: warned on stderr, the table alone on stdout.
    other = s.cli("topics", "create", "--partitions", "5")
    assert other.returncode == 0, other.stderr
    assert "existing with another partition count" in " ".join(other.stderr.split())
    assert "another partition count" not in other.stdout


@pytest.mark.e2e
def test_tail_guesses_the_kind_or_asks_for_it(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    other = f"other-{uuid.uuid4().hex[:6]}"
    send_raw(s, Sent(), [(None, b"{}")], topic=other)  # a topic that is not eventsink's
    asked = s.cli("tail", other)
    assert asked.returncode == 2 and "give --type metric|chat|analysis" in asked.stderr, asked.stderr
    typo = s.cli("tail", f"other-{uuid.uuid4().hex[:6]}")
    assert typo.returncode == 2 and "eventsink's topics are" in typo.stderr, typo.stderr
    missing = s.cli("tail", f"other-{uuid.uuid4().hex[:6]}", "--type", "chat")
    assert missing.returncode == 2 and "does not exist on the broker" in missing.stderr
