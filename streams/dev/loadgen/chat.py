"""Chat load: conversations of several turns, duplicates and invalid messages mixed in.

The report says what was sent: counts, and how many conversations got at least one valid
message. What the database must hold is computed from the topic (`streams.tools.expected`).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from streams.dev.loadgen.metric import Counts, Load, Sender
from streams.publish.publisher import Publisher

MODELS = ("gpt-4o-mini", "claude-3-haiku", "llama-3-8b")
WORDS = "the a data model answer question why how latency error request user cache index query plan".split()


@dataclass
class Conversation:
    """A conversation being generated: who speaks, and how many valid messages were sent."""

    tenant_id: str
    user_id: str
    messages: int = 0


@dataclass
class ChatLoad(Load):
    conversations: int = 100
    min_turns: int = 2
    max_turns: int = 8
    invalid: float = 0.0
    max_content_bytes: int = 64 * 1024
    # Every valid message's content this many UTF-8 bytes (ASCII words), not a short sentence:
    # large-record loads (the benchmark's memory scenario). None: 3 to 60 words.
    content_bytes: int | None = None


@dataclass
class ChatReport(Counts):
    conversations: int = 0  # with at least one valid message

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "conversations": self.conversations}


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _filler(seed: int | None, size: int) -> str:
    """`size` bytes of words, from which large contents are sliced (no new words per message:
    a 64 KiB message would take thousands of draws)."""
    rng = random.Random(seed)
    text = ""
    while len(text) < size:
        text += " ".join(rng.choices(WORDS, k=16_384)) + " "
    return text[:size]


def _padded(text: str, rng: random.Random, filler: str, size: int) -> str:
    """`text` followed by a slice of `filler` from a random word on: exactly `size` bytes."""
    start = filler.find(" ", rng.randrange(len(filler) - size - 16)) + 1
    return (text + " " + filler[start : start + size])[:size]


def _message(rng: random.Random, conv_id: str, conv: Conversation, turn: int, at: datetime, dedupe_id: str) -> dict:
    role = "system" if turn == 0 and rng.random() < 0.2 else ("user" if turn % 2 == 0 else "assistant")
    if role == "assistant" and rng.random() < 0.1:
        role = "tool"
    body: dict[str, object] = {
        "tenant_id": conv.tenant_id,
        "dedupe_id": dedupe_id,
        "conversation_id": conv_id,
        "role": role,
        "content": _text(rng, rng.randint(3, 60)),
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }
    if role == "user":
        body["user_id"] = conv.user_id
    if role == "assistant":
        body["model"] = rng.choice(MODELS)
        body["prompt_tokens"] = rng.randint(10, 2000)
        body["completion_tokens"] = rng.randint(5, 800)
    return body


def _invalid(rng: random.Random, body: dict, limit: int, n: int) -> tuple[str, dict | bytes]:
    kind = ("too_large", "bad_role", "negative_tokens", "not_json")[n % 4]
    if kind == "too_large":
        return kind, {**body, "content": "x" * (limit + 1)}
    if kind == "bad_role":
        return kind, {**body, "role": "moderator"}
    if kind == "negative_tokens":
        return kind, {**body, "prompt_tokens": -1}
    return kind, b"{not json"


async def produce_chat(
    publisher: Publisher,
    topic: str,
    load: ChatLoad,
    on_progress: Callable[[int], None] | None = None,
    report: ChatReport | None = None,
) -> ChatReport:
    """Interleave the turns of `load.conversations` conversations, as live traffic would."""
    rng, tenants, run = load.start()
    report = report if report is not None else ChatReport()
    conversations: dict[str, Conversation] = {}
    remaining: dict[str, int] = {}
    for _ in range(load.conversations):
        conv_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tenant = rng.choice(tenants)
        conversations[conv_id] = Conversation(tenant, f"user-{rng.randrange(1000)}")
        remaining[conv_id] = rng.randint(load.min_turns, load.max_turns)
    turns: Counter[str] = Counter()
    # Re-sends pick among the last 500 records sent: only those are kept (large loads).
    sent_bytes: deque[tuple[bytes, bytes]] = deque(maxlen=500)
    size = load.content_bytes
    filler = _filler(load.seed, 1024 * 1024 + size + 16) if size else ""
    filler_rng = random.Random(load.seed)
    sender = Sender(publisher, topic, report, load.rate, on_progress)
    clock = datetime.now(UTC) - timedelta(hours=1)
    while remaining:
        conv_id = rng.choice(list(remaining))
        conv = conversations[conv_id]
        clock += timedelta(microseconds=rng.randrange(1, 2_000_000))
        body = _message(rng, conv_id, conv, turns[conv_id], clock, f"{run}-{conv_id[:8]}-{turns[conv_id]}")
        if size:
            body["content"] = _padded(str(body["content"]), filler_rng, filler, size)
        key = conv.tenant_id.encode()
        roll = rng.random()
        if roll < load.invalid:
            kind, bad = _invalid(rng, body, load.max_content_bytes, report.invalid)
            value = bad if isinstance(bad, bytes) else orjson.dumps(bad)
            report.invalid += 1
            report.invalid_kinds[kind] += 1
        elif roll < load.invalid + load.duplicates and sent_bytes:
            key, value = rng.choice(sent_bytes)
            report.duplicates += 1
        else:
            value = orjson.dumps(body)
            sent_bytes.append((key, value))
            report.unique += 1
            conv.messages += 1
            turns[conv_id] += 1
            remaining[conv_id] -= 1
            if not remaining[conv_id]:
                del remaining[conv_id]
        await sender.send(key, value)
    await sender.close()
    report.conversations = sum(1 for c in conversations.values() if c.messages)
    return report
