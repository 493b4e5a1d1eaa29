"""orjson codecs, and the one decode path every consumer of the topics uses.

`decode` is total: for any bytes it returns `Decoded` or `Rejected` with a stable reason and a
truthful detail, so a worker can route the record to its dead-letter topic and a tail can show why.

Forward compatible (the tolerant reader): a top-level field the model does not know is kept in
the event's `attributes` (policy `keep`, the default), dropped (`ignore`) or refused as
`unknown_field` (`reject`); either way its name is reported. Everything else stays strict: types,
ranges, required fields. An event whose `schema_version` is newer than the model's
`SCHEMA_VERSION` is refused as `unsupported_version` before anything else is checked, since a
newer major version may have changed what its fields mean.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError

from schemas.columns import parse_uuid
from schemas.deadletter import MAX_DETAIL, Reason
from schemas.envelope import ATTRIBUTES
from schemas.fields import NO_NUL, NUL_MESSAGE

M = TypeVar("M", bound=BaseModel)

# What decoding does with a top-level field the model does not know (validation context key).
UnknownFields = Literal["keep", "ignore", "reject"]
UNKNOWN_FIELDS = "unknown_fields"
SCHEMA_VERSION = "schema_version"


@dataclass(frozen=True, slots=True)
class Decoded(Generic[M]):
    event: M
    # Top-level fields the model does not know (kept in event.attributes, or ignored), sorted.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str
    # Top-level fields the model does not know, when they are known to be there.
    unknown: tuple[str, ...] = ()


def encode(event: BaseModel) -> bytes:
    """Serialise an event to its wire form (UTF-8 JSON, timestamps in RFC 3339); kept unknown
    fields (`attributes`) go back to the top level, where they came from."""
    body = event.model_dump(mode="json", exclude_none=True)
    kept = getattr(event, ATTRIBUTES, None)
    return orjson.dumps({**kept, **body} if kept else body)


def encode_key(tenant_id: UUID) -> bytes:
    return str(tenant_id).encode()


def _describe(exc: ValidationError, unknown: tuple[str, ...] = ()) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        if unknown and err["loc"][:1] == (ATTRIBUTES,):
            loc = f"unknown fields {_names(unknown)} (kept as attributes)"
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


def _names(fields: tuple[str, ...], limit: int = 10) -> str:
    shown = ", ".join(repr(f[:100]) for f in fields[:limit])
    return shown + (f" and {len(fields) - limit} more" if len(fields) > limit else "")


@cache
def wire_fields(model: type[BaseModel]) -> frozenset[str]:
    """The top-level fields of the model's wire contract (every field but `attributes`)."""
    return frozenset(model.model_fields) - {ATTRIBUTES}


def decode(
    raw: bytes | None, model: type[M], key: bytes | None = None, context: dict[str, Any] | None = None
) -> Decoded[M] | Rejected:
    """Decode and validate one record value; check that the record key names the same tenant.

    Total: returns `Decoded` or `Rejected` for any bytes and never raises. A Rejected's detail
    is printable (control characters escaped). `context` carries deployment settings to decoding
    and to the model's validators: `unknown_fields` (keep, ignore or reject; keep when absent) and
    chat's `max_content_bytes`.
    """
    try:
        result = _decode(raw, model, key, context)
    except Exception as exc:  # a bug or a library limit must cost one dead letter, not a partition
        result = Rejected(Reason.INVALID_EVENT, f"value could not be decoded: {type(exc).__name__}: {exc}"[:MAX_DETAIL])
    if isinstance(result, Rejected) and not result.detail.isprintable():
        return Rejected(result.reason, printable(result.detail), result.unknown)
    return result


def printable(text: str) -> str:
    """`text` with every non-printable character escaped (\\x1b, \\n, \\ud83d): a detail quotes
    field names and characters from the record, and is read on terminals."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _key_text(key: bytes) -> str:
    """A record key as text for a detail, quoted: UTF-8 as it is, other bytes escaped (\\xff),
    control characters escaped; the first 64 bytes."""
    return '"' + printable(key[:64].decode("utf-8", "backslashreplace")) + '"'


def _decode(
    raw: bytes | None, model: type[M], key: bytes | None, context: dict[str, Any] | None
) -> Decoded[M] | Rejected:
    if raw is None:
        return Rejected(Reason.INVALID_JSON, "value is empty (a tombstone)")
    # The common case, in one pass of pydantic-core's own JSON parser (integers exact, lone
    # surrogates, NaN and Infinity refused, as below). Anything it refuses, unknown fields
    # included, takes the path below, which knows why and what the kind's policy says. So does a
    # wire field that decodes to the name `attributes` (however its key was escaped: JSON lets any
    # character of a key be written \\uXXXX): it is an unknown field, which the parser would
    # have put into the model's own field. The test is on the decoded keys (the fields set), not
    # on the bytes.
    try:
        event = model.model_validate_json(raw, context=context)
    except ValidationError:
        pass
    else:
        if ATTRIBUTES not in event.model_fields_set:
            tenant_id: UUID = event.tenant_id  # type: ignore[attr-defined]
            if key is not None and _key_tenant(key) != tenant_id.int:
                return Rejected(
                    Reason.KEY_MISMATCH, f"record key {_key_text(key)} is not the event's tenant_id {tenant_id}"
                )
            return Decoded(event)
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
    version = obj.get(SCHEMA_VERSION)
    known = getattr(model, "SCHEMA_VERSION", None)
    if type(version) is int and known is not None and version > known:
        return Rejected(
            Reason.UNSUPPORTED_VERSION,
            f"schema_version {version} is newer than {known}, the newest version of {model.__name__} this reader knows",
        )
    wire = wire_fields(model)
    unknown: tuple[str, ...] = ()
    if not wire.issuperset(obj):
        unknown = tuple(sorted(k for k in obj if k not in wire))
        policy = (context or {}).get(UNKNOWN_FIELDS, "keep")
        if policy == "reject":
            plural = "s" if len(unknown) > 1 else ""
            detail = f"unknown field{plural} {_names(unknown)}: this kind refuses fields it does not know"
            return Rejected(Reason.UNKNOWN_FIELD, detail, unknown)
        known_part = {k: v for k, v in obj.items() if k in wire}
        if policy == "keep":
            known_part[ATTRIBUTES] = {k: obj[k] for k in unknown}
        obj = known_part
    try:
        event = model.model_validate(obj, context=context)
    except ValidationError as exc:
        too_large = any(e["type"] == "too_large" for e in exc.errors(include_url=False, include_input=False))
        return Rejected(Reason.TOO_LARGE if too_large else Reason.INVALID_EVENT, _describe(exc, unknown), unknown)
    tenant_id: UUID = event.tenant_id  # type: ignore[attr-defined]
    if key is not None and _key_tenant(key) != tenant_id.int:
        return Rejected(
            Reason.KEY_MISMATCH, f"record key {_key_text(key)} is not the event's tenant_id {tenant_id}", unknown
        )
    return Decoded(event, unknown)


# Every usual spelling of a UUID fits (urn:uuid: and 36 characters is 45). Longer keys are parsed
# each time, not cached, so that the cache holds at most 4,096 small keys whatever producers send.
_CACHED_KEY_BYTES = 64


def key_tenant(key: bytes | None) -> UUID | None:
    """The tenant a record key names (None: it names none), spelt as a `tenant_id` value must be
    (`schemas.columns.parse_uuid`): a key is a tenant exactly when the value's field would be."""
    found = None if key is None else _key_tenant(key)
    return None if found is None else UUID(int=found)


def _key_tenant(key: bytes) -> int | None:
    """The UUID a record key names, as an integer (None: it names none). Keys repeat (one per
    tenant): parsing each once saves a UUID's text or parse per record."""
    if len(key) > _CACHED_KEY_BYTES:
        return _parse_key_tenant(key)
    return _cached_key_tenant(key)


def _parse_key_tenant(key: bytes) -> int | None:
    try:
        tenant = parse_uuid(key.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    return None if tenant is None else tenant.int


_cached_key_tenant = lru_cache(maxsize=4096)(_parse_key_tenant)


def dedupe_digest(tenant_id: UUID, dedupe_id: str) -> bytes:
    """16-byte digest of the idempotency key (tenant_id, dedupe_id)."""
    return hashlib.blake2b(tenant_id.bytes + dedupe_id.encode(), digest_size=16).digest()
