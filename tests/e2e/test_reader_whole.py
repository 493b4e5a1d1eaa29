"""The group-less reader against a broker that stops answering for a while, a topic being
written while it is read and a record batch the client cannot read: a read returns the whole topic
(what it can read of it) or says it could not, never a part of it as if it were all (verify, the
oracle and DLQ replay read through it).

The broker is a Tansu of the test's own whose advertised address is a TCP proxy in front of it:
every connection after bootstrap goes through the proxy, which can hold what it forwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from streams.dev.embedded import EmbeddedKafka, free_port
from streams.tools.reader import Reader, ReadStalled
from streams.tools.topics import TopicSpec, ensure_topics
from tests.producers import Raw, header_key_not_utf8, produce_aiokafka, produce_batch
from tests.proxy import TcpProxy

pytestmark = pytest.mark.e2e

TOPIC = "reader-whole"
PARTITIONS = 3
# 2 MB per partition, twice what one fetch brings (the client's max_partition_fetch_bytes): the
# topic takes several round trips to read, so a stall can land in the middle.
RECORDS = 6000
VALUE_BYTES = 1000


@pytest.fixture
def proxied_broker() -> Iterator[tuple[str, TcpProxy]]:
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy:
        broker = EmbeddedKafka(port=port, advertised_port=proxy.port).start()
        try:
            yield f"127.0.0.1:{proxy.port}", proxy
        finally:
            broker.stop()


async def publish(bootstrap: str, count: int, prefix: str = "r") -> dict[int, list[bytes]]:
    """`count` records spread over the partitions; partition -> values in offset order."""
    raws = [Raw(value(prefix, n), partition=n % PARTITIONS) for n in range(count)]
    placed = await produce_aiokafka(bootstrap, TOPIC, raws)
    out: dict[int, list[bytes]] = {}
    for (p, _), raw in sorted(zip(placed, raws, strict=True), key=lambda pr: pr[0]):
        out.setdefault(p, []).append(raw.value)  # type: ignore[arg-type]
    return out


def value(prefix: str, n: int) -> bytes:
    return f"{prefix}{n:06d}".encode().ljust(VALUE_BYTES, b".")


async def prepared(bootstrap: str, count: int) -> dict[int, list[bytes]]:
    await ensure_topics([bootstrap], [TopicSpec(TOPIC, PARTITIONS)])
    return await publish(bootstrap, count)


def by_partition(records: list) -> dict[int, list[bytes]]:  # type: ignore[type-arg]
    out: dict[int, list[bytes]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(r.partition, []).append(r.value)
    return out


def test_a_broker_that_stops_answering_mid_read_is_waited_for(proxied_broker: tuple[str, TcpProxy]) -> None:
    """Held for 4 s after the first chunk, twice the quiet the reader once took for the end (it
    then returned the first chunk as the whole topic): every record comes, in order."""
    bootstrap, proxy = proxied_broker
    sent = asyncio.run(prepared(bootstrap, RECORDS))
    held_s = 4.0

    async def go() -> tuple[list, float]:  # type: ignore[type-arg]
        got: list = []  # type: ignore[type-arg]
        held_at = 0.0
        async with Reader(bootstrap) as reader:
            async for chunk in reader.read(TOPIC):
                if not got:
                    proxy.hold()
                    held_at = time.monotonic()
                    # Released from another thread once the proxy has kept something back.
                    threading.Thread(target=release_later, args=(proxy, held_s), daemon=True).start()
                got.extend(chunk)
        return got, time.monotonic() - held_at

    got, after_hold = asyncio.run(go())
    assert proxy.held > 0, "the proxy held nothing back: the read was over before the stall"
    assert after_hold >= held_s, after_hold
    assert by_partition(got) == sent, {p: (len(v), len(sent.get(p, []))) for p, v in by_partition(got).items()}


def release_later(proxy: TcpProxy, held_s: float) -> None:
    deadline = time.monotonic() + 30
    while proxy.held == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(held_s)  # the stall being tested: how long the broker says nothing
    proxy.release()


def test_a_broker_that_never_answers_again_is_an_error_not_a_short_read(
    proxied_broker: tuple[str, TcpProxy],
) -> None:
    bootstrap, proxy = proxied_broker
    sent = asyncio.run(prepared(bootstrap, RECORDS))

    async def go() -> list:  # type: ignore[type-arg]
        got: list = []  # type: ignore[type-arg]
        async with Reader(bootstrap) as reader:
            try:
                async for chunk in reader.read(TOPIC, stall_s=3.0):
                    if not got:
                        proxy.hold()
                    got.extend(chunk)
            finally:
                proxy.release()  # the reader's close talks to the broker
        return got

    with pytest.raises(ReadStalled) as stalled:
        asyncio.run(go())
    short = stalled.value.short
    assert short, "stalled, yet no partition named short of its end"
    for p, at in short.items():
        assert at is not None, f"partition {p}: no position"
        position, end = at
        # Tansu's end offset is the first offset of the partition's last batch + 1.
        assert position < end <= len(sent[p]), (p, position, end, len(sent[p]))
    assert "stopped short of its end" in str(stalled.value)


def test_a_topic_being_written_is_read_to_where_it_was_and_the_read_ends(
    proxied_broker: tuple[str, TcpProxy],
) -> None:
    """A producer that never pauses: the read still ends, with every record there at its start."""
    bootstrap, _ = proxied_broker
    before = asyncio.run(prepared(bootstrap, 2000))

    async def go() -> tuple[list, int]:  # type: ignore[type-arg]
        stop, writing_began = asyncio.Event(), asyncio.Event()
        written = 0

        async def writing() -> None:
            nonlocal written
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
            await producer.start()
            try:
                while not stop.is_set():
                    await asyncio.gather(*[await producer.send(TOPIC, b"live") for _ in range(50)])
                    written += 50
                    writing_began.set()
                    await asyncio.sleep(0.02)
            finally:
                await producer.stop()

        writer = asyncio.create_task(writing())
        try:
            await asyncio.wait([writer, asyncio.create_task(writing_began.wait())], return_when=asyncio.FIRST_COMPLETED)
            at_start = written
            async with Reader(bootstrap) as reader:
                got = await asyncio.wait_for(reader.read_all(TOPIC), 60)
            assert not writer.done(), "the writer stopped: the read's end proves nothing"
            return got, written - at_start
        finally:
            stop.set()
            await writer

    records, during = asyncio.run(go())
    assert during > 0, "nothing was written while the topic was read"
    got = by_partition(records)
    for p, values in before.items():
        assert got[p][: len(values)] == values, p


def test_a_batch_the_client_cannot_read_costs_no_other_record(proxied_broker: tuple[str, TcpProxy]) -> None:
    """An unreadable batch first in partitions 1 and 2: aiokafka raises for the fetch and drops
    what partition 0 had given in the same call; the reader reads that again."""
    bootstrap, _ = proxied_broker
    asyncio.run(ensure_topics([bootstrap], [TopicSpec(TOPIC, PARTITIONS)]))
    bad = {p: produce_batch(bootstrap, TOPIC, p, header_key_not_utf8(b"unreadable")) for p in (1, 2)}
    sent = asyncio.run(publish(bootstrap, 1500))

    async def go() -> tuple[list, list]:  # type: ignore[type-arg]
        async with Reader(bootstrap) as reader:
            return await reader.read_all(TOPIC), reader.unreadable

    records, unreadable = asyncio.run(go())
    assert {(u.partition, u.offset) for u in unreadable} == set(bad.items())
    got = by_partition([r for r in records if r.value != b"unreadable"])
    assert got == sent, {p: (len(got.get(p, [])), len(v)) for p, v in sent.items()}
