"""Every name an operator types, checked against what exists before a command acts on it.

Topics (source or dead-letter, where it matters), partitions, consumer groups, tenants and
migration versions. A name that matches nothing is a usage error (exit 2, one line saying what
exists or what a valid value looks like), never an empty table or a total of 0 that reads like
an answer. Every command that takes such a name calls one of these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click
import psycopg

from schemas.columns import parse_uuid
from sinks import migrate as migrations
from streams import aio
from streams.kinds import Kind, all_kinds
from streams.settings import Settings
from streams.tools.reader import Reader

TENANT_SPELLING = "a UUID such as 123e4567-e89b-12d3-a456-426614174000 (dashes, braces and urn:uuid: optional)"
GROUPS = "SELECT DISTINCT consumer_group FROM eventsink.offsets_ledger ORDER BY 1"
LEDGER_TOPICS = "SELECT DISTINCT topic FROM eventsink.offsets_ledger WHERE consumer_group = %s ORDER BY 1"


def _fail(message: str, hint: str | None) -> click.BadParameter:
    return click.BadParameter(message, param_hint=hint)


def _listed(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- tenants -----------------------------------------------------------------------------------


def tenant(value: str, hint: str | None = "--tenant") -> str:
    """The canonical text of a tenant id. Accepts exactly the spellings a worker accepts in a
    record key and in `tenant_id` (`schemas.columns.parse_uuid`: ASCII hex only)."""
    parsed = parse_uuid(value) if isinstance(value, str) else None
    if parsed is None:
        raise _fail(f"{value!r} is not a tenant id: give {TENANT_SPELLING}", hint)
    return str(parsed)


class TenantType(click.ParamType):
    """`type=TENANT` on an option: the value arrives as canonical UUID text."""

    name = "uuid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return tenant(str(value), None)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


TENANT = TenantType()


# -- topics ------------------------------------------------------------------------------------


def _topic_names(s: Settings) -> str:
    kinds = all_kinds(s)
    return f"{_listed(k.topic for k in kinds)} (dead letters: {_listed(k.dlq_topic for k in kinds)})"


def source_kind(s: Settings, topic: str, hint: str | None = "TOPIC") -> Kind:
    """The kind whose source topic is `topic`. A kind's name (metric, chat, analysis) is not a
    topic unless it is one: every command takes topics alone, as `tail` and `ledger show` do."""
    for kind in all_kinds(s):
        if topic == kind.topic:
            return kind
    for kind in all_kinds(s):
        if topic == kind.name:
            raise _fail(f"{topic!r} is a kind of event; its topic is {kind.topic!r}", hint)
    for kind in all_kinds(s):
        if topic == kind.dlq_topic:
            raise _fail(f"{topic!r} is a dead-letter topic; give its source topic {kind.topic!r}", hint)
    raise _fail(f"no topic {topic!r}: eventsink's topics are {_topic_names(s)}", hint)


def any_kind(s: Settings, topic: str) -> Kind | None:
    """The kind whose source or dead-letter topic is `topic`, None if it is none of eventsink's."""
    return next((k for k in all_kinds(s) if topic in (k.topic, k.dlq_topic)), None)


def unknown_topic(s: Settings, topic: str, hint: str | None = "TOPIC") -> click.BadParameter:
    """The usage error for a topic that is not one of eventsink's (raise it)."""
    return _fail(f"no topic {topic!r}: eventsink's topics are {_topic_names(s)}", hint)


def broker_partitions(s: Settings, topic: str, hint: str | None = "TOPIC") -> list[int]:
    """The partitions the broker has for `topic` now; a usage error if it has no such topic."""

    async def go() -> dict[str, int]:
        async with Reader(s.bootstrap_list, s.kafka_security()) as reader:
            return await reader.partition_counts([topic])

    count = aio.run(go()).get(topic, 0)
    if not count:
        raise _fail(f"topic {topic!r} does not exist on the broker (eventsink's topics are {_topic_names(s)})", hint)
    return list(range(count))


def partitions(s: Settings, topic: str, wanted: Iterable[int], hint: str | None = "--partition") -> list[int]:
    """`wanted` checked against the partitions `topic` has on the broker (all of them if empty)."""
    have = broker_partitions(s, topic)
    for p in wanted:
        if p not in have:
            raise _fail(f"{topic} has no partition {p}: its partitions are 0 to {len(have) - 1}", hint)
    return sorted(set(wanted)) or have


# -- consumer groups ---------------------------------------------------------------------------


def group(s: Settings, name: str | None, hint: str | None = "--group") -> str:
    """A consumer group, checked: it has rows in the ledger or exists on the broker (a group whose
    worker joined, or committed, before the ledger counted anything). None means the configured
    group (EVENTSINK_GROUP_ID), checked the same way: a misspelt setting must not read as an
    empty ledger or a consistent topic."""
    configured = name is None
    name = s.group_id if name is None else name
    with psycopg.connect(s.dsn) as conn:
        known = [str(r[0]) for r in conn.execute(GROUPS)]
    if name in known:
        return name

    async def on_broker() -> list[str]:
        async with Reader(s.bootstrap_list, s.kafka_security()) as reader:
            listed = await (await reader.admin()).list_consumer_groups()
            return [str(g[0]) for g in listed]

    broker: list[str] = []
    try:
        broker = aio.run(on_broker())
    except Exception:  # a broker that cannot list groups: the ledger's answer stands
        pass
    if name in broker:
        return name
    exist = f"the ledger knows {_listed(known)}; the broker knows {_listed(sorted(set(broker) - set(known)))}"
    if configured:
        raise _fail(
            f"no consumer group {name!r} (from EVENTSINK_GROUP_ID) in the ledger or on the broker; {exist}",
            "EVENTSINK_GROUP_ID",
        )
    raise _fail(f"no consumer group {name!r} in the ledger or on the broker; {exist}", hint)


def ledger_topics(s: Settings, group_id: str) -> list[str]:
    with psycopg.connect(s.dsn) as conn:
        return [str(r[0]) for r in conn.execute(LEDGER_TOPICS, (group_id,))]


def ledger_topic(s: Settings, topic: str, group_id: str, hint: str | None = "--topic") -> str:
    """A topic the ledger of `group_id` counts, or one of eventsink's source topics."""
    if any(topic == k.topic for k in all_kinds(s)):
        return topic
    counted = ledger_topics(s, group_id)
    if topic in counted:
        return topic
    raise _fail(f"the ledger of group {group_id} counts no topic {topic!r}; it counts {_listed(counted)}", hint)


# -- migrations --------------------------------------------------------------------------------


def migration_version(value: int, hint: str, *, none_is_valid: bool = False) -> int:
    """A migration version that exists (0 too where it means "none": `--down-to 0`)."""
    versions = [m.version for m in migrations.available()]
    if value in versions or (none_is_valid and value == 0):
        return value
    low = 0 if none_is_valid else versions[0]
    raise _fail(f"no migration {value}: versions are {low} to {versions[-1]}", hint)
