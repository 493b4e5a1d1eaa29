"""A record batch the Kafka client itself cannot read stops its partition alone, loudly.

No producer library writes such a batch (a header key that is not UTF-8: aiokafka wants str
keys, librdkafka turns bytes into their repr), so the test writes it through the Kafka protocol
by hand. aiokafka then raises for the whole fetch, every time, and drops what the other
partitions had fetched in that call: without isolation every partition of the worker stalls.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import orjson
import pytest

from tests.helpers import Scenario, WorkerProcess, count_by_tenant, ledger, wait_applied, wait_until
from tests.producers import header_key_not_utf8, produce_batch
from tests.web import get, samples, total
from tests.workload import Sent, create_topics, metric_json, publish, send_raw

pytestmark = pytest.mark.e2e


def test_a_batch_the_client_cannot_read_stops_only_its_partition_until_skipped(scenario: Scenario) -> None:
    # Eight tenants (keys): three could all hash to one of the four partitions (1 in 16).
    s, sent = scenario, Sent(tenants=[str(uuid.uuid4()) for _ in range(8)])
    create_topics(s)
    publish(s, sent, 1200, duplicates=0.0, seed=401)
    assert len(sent.last_offsets) >= 2
    bad = min(sent.last_offsets)
    tenant = next(t for t in sent.tenants if t)  # any tenant: the record is never decoded
    produce_batch(s.bootstrap, s.topic, bad, header_key_not_utf8(metric_json(tenant, "unreadable")))
    bad_offset = sent.last_offsets[bad] + 1
    # Valid records after it, in the same partition: they wait behind it, never skipped silently.
    after = send_raw(
        s,
        sent,
        [(tenant.encode(), metric_json(tenant, f"after-{i}")) for i in range(5)],
        partition=bad,
        unique={tenant: 5},
    )
    assert after[0] == (bad, bad_offset + 1)
    w = WorkerProcess(s.env(EVENTSINK_LOG_CHECK_S="1"), s.data_dir / "w.log").start()
    try:
        others = {p: o for p, o in sent.last_offsets.items() if p != bad}
        wait_applied(s.dsn, s.group, s.topic, others)
        wait_until(
            lambda: total(samples(w), "eventsink_partition_blocked", partition=str(bad), reason="unreadable") == 1,
            60,
            what="the partition with the unreadable batch stopped",
        )
        # Everything before the unreadable record is applied; nothing after it, until the operator.
        wait_applied(s.dsn, s.group, s.topic, {bad: bad_offset - 1})
        assert ledger(s.dsn, s.group, s.topic)[bad]["last_offset"] == bad_offset - 1
        status, body = get(f"{w.web}/healthz")
        assert status == 200 and orjson.loads(body)["stopped_partitions"] == {f"{s.topic}[{bad}]": "unreadable"}
        assert total(samples(w), "eventsink_fetch_errors_total") >= 1
        skip = ["ledger", "skip", "--topic", s.topic, "--partition", str(bad), "--to", str(bad_offset)]
        # The broker still has the batch: refused unless the operator says they give up on it.
        refused = s.cli(*skip)
        assert refused.returncode == 2 and "--lose-records-the-broker-still-has" in refused.stderr, refused.stderr
        skip.append("--lose-records-the-broker-still-has")
        dry = s.cli(*skip, "--dry-run")
        assert dry.returncode == 0 and "1 offset(s)" in dry.stderr and "dry run: nothing changed" in dry.stderr
        assert ledger(s.dsn, s.group, s.topic)[bad]["last_offset"] == bad_offset - 1  # nothing changed
        skipped = s.cli(*skip)
        assert skipped.returncode == 0 and "recorded as lost" in skipped.stderr, skipped.stderr
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    assert count_by_tenant(s.dsn, sent.tenants) == dict(sent.unique_per_tenant)
    assert ledger(s.dsn, s.group, s.topic)[bad]["last_offset"] == sent.last_offsets[bad]
    # verify shows the offset given up, as recorded (the topic still holds it; nothing else is off).
    verified = subprocess.run(
        [sys.executable, "-m", "streams.cli", "verify", s.topic, "--json"],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.stdout, verified.stderr
    report = orjson.loads(verified.stdout)
    assert report["lost_offsets"] == 1
    given_up = {"partition": bad, "first_offset": bad_offset, "last_offset": bad_offset, "reason": "operator"}
    assert report["lost"] == [given_up]
    assert [(u["partition"], u["offset"]) for u in report["unreadable"]] == [(bad, bad_offset)]
    assert report["ok"], report["problems"]
    # tail steps over it too, and says so.
    tailed = subprocess.run(
        [sys.executable, "-m", "streams.cli", "tail", s.topic, "--from-beginning", "--format", "json"],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tailed.returncode == 0, tailed.stderr
    assert f"[{bad}]@{bad_offset}: the Kafka client cannot read this record batch" in tailed.stderr
    assert len(tailed.stdout.splitlines()) == sum(o + 1 for o in sent.last_offsets.values()) - 1
    assert not any("\x1b" in line for line in w.log_text().splitlines())
