"""The published contract: generated from the models, committed, and judging records as the
workers do (jsonschema against `schemas.codec.decode`, the function every worker decodes with)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from schemas.codec import Decoded, Rejected, decode
from schemas.deadletter import Reason
from schemas.export import ASYNCAPI_FILE, MODELS
from streams.cli.schema import PUBLISHED, default_documents
from streams.dev.loadgen.analysis import AnalysisLoad, produce_analysis
from streams.dev.loadgen.chat import ChatLoad, produce_chat
from streams.dev.loadgen.metric import MetricLoad, produce_metrics
from streams.kinds import by_name
from streams.settings import Settings
from tests.contract import GAPS, NOT_JSON, SAMPLES, VALID, VALUE, schema_faults

KINDS = ("metric", "chat", "analysis")


def worker_verdict(kind: str, value: bytes | None, key: bytes | None = None) -> Decoded | Rejected:
    """What a worker with the default settings does with the record."""
    k = by_name(Settings(), kind)
    return decode(value, k.model, key, k.context)


def test_the_committed_files_are_what_the_models_generate() -> None:
    generated = default_documents()
    committed = {p.name: p.read_text() for p in PUBLISHED.iterdir()}
    assert committed.keys() == generated.keys(), "run `eventsink schema export` and commit the result"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: run `eventsink schema export` and commit the result"


def test_export_writes_the_files_and_check_finds_a_stale_one(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "streams.cli", "schema", "export", "--out", str(tmp_path), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert run("--check").returncode == 1, "an empty directory is not up to date"
    assert run().returncode == 0
    assert {p.name for p in tmp_path.iterdir()} == set(default_documents())
    assert run("--check").returncode == 0
    schema = tmp_path / "chat.schema.json"
    schema.write_text(schema.read_text().replace('"tool"', '"robot"'))
    stale = run("--check")
    assert stale.returncode == 1 and "chat.schema.json differs" in stale.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_is_draft_2020_12_and_names_every_wire_field(kind: str) -> None:
    schema = json.loads((PUBLISHED / f"{kind}.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(MODELS[kind].model_fields) - {"attributes"}
    assert schema["additionalProperties"] is True  # the tolerant reader (policy keep)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_asyncapi_document_describes_the_topics_their_keys_and_dead_letters() -> None:
    doc = json.loads((PUBLISHED / ASYNCAPI_FILE).read_text())
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        _resolve(doc, ref)  # every reference resolves inside the document
    s = Settings.model_construct()
    addresses = {c["address"] for c in doc["channels"].values()}
    topics = {s.metrics_topic, s.chat_topic, s.analysis_topic}
    assert addresses == topics | {f"{t}.dlq" for t in topics}
    for kind in KINDS:
        message = doc["components"]["messages"][kind]
        assert message["bindings"]["kafka"]["key"]["format"] == "uuid"
        payload = _resolve(doc, message["payload"]["$ref"])
        published = json.loads((PUBLISHED / f"{kind}.schema.json").read_text())
        assert payload == {k: v for k, v in published.items() if not k.startswith("$")}
        headers = doc["components"]["messages"][f"{kind}DeadLetter"]["headers"]
        assert headers["properties"]["eventsink.reason"]["enum"] == [r.value for r in Reason]
        operations = [o for o in doc["operations"].values() if kind in o["channel"]["$ref"].split("/")[-1]]
        assert {o["action"] for o in operations} == {"receive", "send"}
        for op in operations:  # AsyncAPI 3: an operation's messages are its channel's
            channel = op["channel"]["$ref"]
            assert all(m["$ref"].startswith(f"{channel}/messages/") for m in op["messages"])


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.kind}-{s.name}")
def test_a_record_the_schema_rejects_is_dead_lettered_for_the_same_field(sample: Any) -> None:
    assert schema_faults(sample.kind, sample.value) == {sample.field}
    verdict = worker_verdict(sample.kind, sample.value)
    assert isinstance(verdict, Rejected), verdict
    assert verdict.reason.value == sample.reason
    assert sample.field in verdict.detail


def test_every_kind_and_field_has_invalid_samples() -> None:
    assert {s.kind for s in SAMPLES} == set(KINDS)
    assert {s.reason for s in SAMPLES} == {"invalid_event", "unsupported_version"}


@pytest.mark.parametrize(("kind", "value"), VALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VALID)])
def test_a_record_the_schema_accepts_is_applied(kind: str, value: bytes) -> None:
    assert schema_faults(kind, value) == set()
    assert isinstance(worker_verdict(kind, value), Decoded)


@pytest.mark.parametrize(("kind", "what", "value", "schema_ok", "worker_ok"), GAPS, ids=[g[1] for g in GAPS])
def test_what_the_schema_cannot_say(kind: str, what: str, value: bytes, schema_ok: bool, worker_ok: bool) -> None:
    """The README lists these; a gap that closes (or opens) must change the README too."""
    assert (not schema_faults(kind, value)) is schema_ok, what
    assert isinstance(worker_verdict(kind, value), Decoded) is worker_ok, what


class Recorder:
    """What a load generator sends, kept instead of sent: the generators' own output is what is
    judged here, not a broker (tests/e2e/test_evolution.py sends them through a real one)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> Any:
        self.records.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(partition=0, offset=len(self.records) - 1))
        return done


def generated_records() -> list[tuple[str, bytes | None, bytes]]:
    async def go() -> list[tuple[str, bytes | None, bytes]]:
        rec = Recorder()
        await produce_metrics(rec, "metric", MetricLoad(count=3000, invalid=0.2, seed=11))  # type: ignore[arg-type]
        await produce_chat(rec, "chat", ChatLoad(conversations=150, invalid=0.1, seed=12))  # type: ignore[arg-type]
        await produce_analysis(rec, "analysis", AnalysisLoad(analyses=150, seed=13))  # type: ignore[arg-type]
        return rec.records

    return asyncio.run(go())


@pytest.mark.slow
def test_every_generated_record_is_judged_by_the_schema_as_the_worker_judges_it() -> None:
    records = generated_records()
    rejected: dict[str, int] = {}
    gaps = 0
    for kind, key, value in records:
        faults = schema_faults(kind, value)
        verdict = worker_verdict(kind, value, key)
        if isinstance(verdict, Rejected) and verdict.reason is Reason.TOO_LARGE and not faults:
            gaps += 1  # chat content over the deployment's byte limit: see test_what_the_schema_cannot_say
            continue
        assert bool(faults) == isinstance(verdict, Rejected), (kind, value[:200], faults, verdict)
        if faults:
            rejected[kind] = rejected.get(kind, 0) + 1
            named = faults - {NOT_JSON, VALUE}
            assert all(re.search(rf"\b{re.escape(f)}\b", verdict.detail) for f in named), (faults, verdict.detail)  # type: ignore[union-attr]
    assert len(records) > 4000
    assert rejected.get("metric", 0) > 400 and rejected.get("chat", 0) > 40 and gaps > 5
