"""What a worker's web server says: its endpoints and its Prometheus samples."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import WorkerProcess


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def json_body(url: str) -> dict:
    """The JSON an endpoint answers, whatever its status (a 503 says why); {} when none came."""
    _, raw = get(url)
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}


def samples(w: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"{w.web}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))
