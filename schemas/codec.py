"""orjson codecs, and the one decode path every consumer of the topics uses.

`decode` is total: for any bytes it returns `Decoded` or `Rejected` with a stable reason and a
truthful detail, so a worker can route the record to its dead-letter topic and a tail can show why.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError

from schemas.deadletter import MAX_DETAIL, Reason
from schemas.fields import NO_NUL, NUL_MESSAGE

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    event: M


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


def encode(event: BaseModel) -> bytes:
    """Serialise an event to its wire form (UTF-8 JSON, timestamps in RFC 3339)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def encode_key(tenant_id: UUID) -> bytes:
    return str(tenant_id).encode()


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NO_NUL:
            msg = NUL_MESSAGE
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _json_failure(raw: bytes, exc: orjson.JSONDecodeError) -> Rejected:
    """Why orjson refused the value, in words that are true of this value."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejected(Reason.INVALID_UTF8, f"value is not valid UTF-8 ({uexc.reason} at byte {uexc.start})")
    if exc.msg.startswith("number is infinity"):
        return Rejected(
            Reason.INVALID_EVENT, f"a number is too large for a double (it would be Infinity) at char {exc.pos}"
        )
    constants: list[str] = []
    try:
        json.loads(raw, parse_constant=lambda name: constants.append(name) or 0.0)
    except (ValueError, RecursionError):
        pass
    if constants:
        # Python's json reads NaN and Infinity, which JSON does not have.
        return Rejected(Reason.INVALID_EVENT, f"value contains {constants[0]}: numbers must be finite")
    return Rejected(Reason.INVALID_JSON, f"value is not JSON: {exc.msg} at char {exc.pos}")


# Integer literals of 19 digits or more may be beyond 64 bits, which orjson reads as a float
# (silently rounding them); such values are parsed again, exactly.
_LONG_INTEGER = re.compile(rb"\d{19}")


def _exact(raw: bytes, obj: Any) -> Any:
    if _LONG_INTEGER.search(raw) is None:
        return obj
    return json.loads(raw)


def decode(
    raw: bytes | None, model: type[M], key: bytes | None = None, context: dict[str, Any] | None = None
) -> Decoded[M] | Rejected:
    """Decode and validate one record value; check that the record key names the same tenant.

    Total: returns `Decoded` or `Rejected` for any bytes and never raises. A Rejected's detail
    is printable (control characters escaped). `context` carries deployment limits to the
    model's validators (chat's max_content_bytes).
    """
    try:
        result = _decode(raw, model, key, context)
    except Exception as exc:  # a bug or a library limit must cost one dead letter, not a partition
        result = Rejected(Reason.INVALID_EVENT, f"value could not be decoded: {type(exc).__name__}: {exc}"[:MAX_DETAIL])
    if isinstance(result, Rejected) and not result.detail.isprintable():
        return Rejected(result.reason, printable(result.detail))
    return result


def printable(text: str) -> str:
    """`text` with every non-printable character escaped (\\x1b, \\n, \\ud83d): a detail quotes
    field names and characters from the record, and is read on terminals."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _decode(
    raw: bytes | None, model: type[M], key: bytes | None, context: dict[str, Any] | None
) -> Decoded[M] | Rejected:
    if raw is None:
        return Rejected(Reason.INVALID_JSON, "value is empty (a tombstone)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _json_failure(raw, exc)
    if not isinstance(obj, dict):
        return Rejected(Reason.NOT_AN_OBJECT, f"value is JSON {type(obj).__name__}, not an object")
    try:
        obj = _exact(raw, obj)
    except (ValueError, RecursionError) as exc:
        return Rejected(Reason.INVALID_JSON, f"value is not JSON this decoder can read exactly: {exc}")
    try:
        event = model.model_validate(obj, context=context)
    except ValidationError as exc:
        too_large = any(e["type"] == "too_large" for e in exc.errors(include_url=False, include_input=False))
        return Rejected(Reason.TOO_LARGE if too_large else Reason.INVALID_EVENT, _describe(exc))
    tenant_id: UUID = event.tenant_id  # type: ignore[attr-defined]
    if key is not None and not _same_tenant(key, obj.get("tenant_id"), tenant_id):
        return Rejected(Reason.KEY_MISMATCH, f"record key {key[:64]!r} is not the event's tenant_id {tenant_id}")
    return Decoded(event)


def _same_tenant(key: bytes, text: object, tenant_id: UUID) -> bool:
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if key_text == text:
        return True
    try:
        return UUID(key_text) == tenant_id
    except ValueError:
        return False


def dedupe_digest(tenant_id: UUID, dedupe_id: str) -> bytes:
    """16-byte digest of the idempotency key (tenant_id, dedupe_id)."""
    return hashlib.blake2b(tenant_id.bytes + dedupe_id.encode(), digest_size=16).digest()
