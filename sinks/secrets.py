"""Secrets: every credential eventsink handles, and keeping each one out of what it writes.

A secret is any value that grants access: the DSN's password and libpq's other secret connection
parameters (`SECRET_PARAMS`), the Kafka SASL password, the passphrase of a Kafka client key, and
the content of any `*_FILE` secret. Settings `register` each one as soon as it is read; `scrub`
then removes them from any text, and `scrub_data` from any structure (logs, JSON bodies).

Two complementary defences:

- **by label**: a value introduced as a secret (`password=...`, `sslpassword='...'`, the password
  of a URL's user info, a JSON or log field named like `*password*`, `*passphrase*`, `*secret*`)
  is masked whatever it is, registered or not;
- **by value**: a registered secret is masked wherever it appears, in every spelling text can give
  it: as is, JSON-escaped (`"` → `\\"`), as a Python repr (`str()` of a dict or an exception),
  percent-encoded (a URL), quoted as in a libpq conninfo, and each of those JSON-escaped again.

A secret shorter than `MIN_LENGTH` characters is masked by label only: replacing every occurrence
of two or three common characters would garble every line, and the pattern of the masks would
give the secret away. `register` reports it, and the CLI warns about it (`short_secrets`).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterable
from datetime import date, datetime, time
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit
from uuid import UUID

MASK = "***"
MIN_LENGTH = 6
# Named here too so that a libpq too old to know one still has it masked (see `_libpq`).
KNOWN_SECRET_PARAMS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)


@functools.cache
def _libpq() -> tuple[frozenset[str], frozenset[str]]:
    """libpq's secret parameters and all its parameter names, asked of libpq when first needed
    (importing this module, as the settings do, imports no database driver: publishers use them).

    libpq marks its secret parameters with the display character "*" (password, sslpassword,
    oauth_client_secret); the SCRAM keys are marked "debug" but are as good as the password."""
    from psycopg import pq

    defaults = pq.Conninfo.get_defaults()
    secret = KNOWN_SECRET_PARAMS | {o.keyword.decode() for o in defaults if o.dispchar == b"*"}
    return frozenset(secret), frozenset(o.keyword.decode() for o in defaults)


def __getattr__(name: str) -> frozenset[str]:
    # SECRET_PARAMS: libpq's secret connection parameters; LIBPQ_KEYWORDS: its parameter names,
    # safe to quote in an error message (values are not).
    if name == "SECRET_PARAMS":
        return _libpq()[0]
    if name == "LIBPQ_KEYWORDS":
        return _libpq()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# A key naming a secret: password, sslpassword, sasl_plain_password, passphrase, client_secret...
# (a word boundary after it, so that `password_file`, a path, is not one).
_SECRET_KEY = r"[\w.-]*(?:password|passwd|passphrase|secret)"
SECRET_KEY = re.compile(rf"^{_SECRET_KEY}$", re.I)
_LABELLED = [
    # scheme://user:PASSWORD@host
    re.compile(r"(?P<k>\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<v>[^@\s]+)(?=@)", re.I),
    # key=value and key: value, the value bare, 'single-' or "double-quoted" (a conninfo, a URL
    # query, structlog's console rendering, a YAML line)
    re.compile(
        rf"""(?P<k>\b{_SECRET_KEY}\b\s*[=:]\s*)(?P<v>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&'",;)}}\]]+)""",
        re.I,
    ),
    # "key": "value" (JSON), 'key': 'value' (a Python repr), \"key\": \"value\" (JSON in JSON)
    re.compile(rf"""(?P<k>"{_SECRET_KEY}"\s*:\s*)(?P<v>"(?:[^"\\]|\\.)*")""", re.I),
    re.compile(rf"""(?P<k>'{_SECRET_KEY}'\s*:\s*)(?P<v>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", re.I),
    re.compile(rf"""(?P<k>\\"{_SECRET_KEY}\\"\s*:\s*)(?P<v>\\"(?:(?!\\").)*\\")""", re.I),
]


def _masked(match: re.Match[str]) -> str:
    """The label kept, the value masked, its quotes kept (so that JSON stays JSON)."""
    value = match["v"]
    if value.startswith(MASK):  # masked already (a bare value would take the punctuation after it)
        return match[0]
    for quote_ in ('\\"', '"', "'"):
        if value.startswith(quote_) and len(value) >= 2 * len(quote_):
            return f"{match['k']}{quote_}{MASK}{quote_}"
    return match["k"] + MASK


_lock = threading.Lock()
_secrets: set[str] = set()  # every spelling of every registered secret
_pattern: re.Pattern[str] | None = None


def spellings(secret: str) -> set[str]:
    """The ways `secret` can appear in text eventsink or a library writes (see the module doc)."""
    conninfo = secret.replace("\\", "\\\\").replace("'", "\\'")
    base = {secret, repr(secret)[1:-1], conninfo, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    base.add(repr(secret.encode("utf-8", "surrogateescape"))[2:-1])  # a repr of bytes
    forms = set(base)
    for form in base:
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
        forms.add(json.dumps(form)[1:-1])  # \uXXXX for what is not ASCII
    return {f for f in forms if len(f) >= MIN_LENGTH}


def register(secret: str | None) -> bool:
    """Remember a secret so that `scrub` masks it anywhere. False if it is too short to be masked
    by value (it is then masked by label only); True for None and the empty string (nothing to hide)."""
    global _pattern
    if not secret:
        return True
    if len(secret) < MIN_LENGTH:
        return False
    forms = spellings(secret)
    with _lock:
        if not forms <= _secrets:
            _secrets.update(forms)
            _pattern = None
    return True


def dsn_secrets(dsn: str) -> dict[str, str]:
    """The secret parameters of a PostgreSQL DSN (URL or key=value), by name. Raises
    psycopg.ProgrammingError if libpq cannot parse it."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return {k: str(v) for k, v in params.items() if k in _libpq()[0] and v is not None and str(v)}


def register_dsn(dsn: str) -> list[str]:
    """Register the secret parameters of a DSN, as libpq reads them and as the URL spells them.

    A DSN libpq cannot parse is registered whole: its secrets cannot be told apart. Returns the
    names of the secrets too short to be masked by value.
    """
    try:
        found = dsn_secrets(dsn)
    except Exception:
        register(dsn)
        return []
    short = [name for name, value in found.items() if not register(value)]
    if "://" in dsn:  # the spelling in the URL itself, whatever percent-encoding its author chose
        try:
            split = urlsplit(dsn)
            register(split.password)
            for pair in split.query.split("&"):
                key, _, value = pair.partition("=")
                if key in _libpq()[0]:
                    register(value)
        except ValueError:
            pass
    return short


def _compiled() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            ordered = sorted(_secrets, key=len, reverse=True)  # the longest spelling first
            _pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return _pattern


def scrub(text: str) -> str:
    """`text` without any registered secret, nor any value labelled as a secret."""
    pattern = _compiled()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for labelled in _LABELLED:
        text = labelled.sub(_masked, text)
    return text


def scrub_data(value: Any) -> Any:
    """A copy of `value` with every string scrubbed, at any depth (dicts, lists, tuples, sets);
    a field whose name says it is a secret is masked whole. Other objects become their scrubbed
    `str()`, which is what a JSON rendering would show; numbers, booleans and None stay."""
    if value is None or isinstance(value, bool | int | float | datetime | date | time | UUID):
        return value  # what a renderer shows as is (and can carry no secret)
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            (scrub(k) if isinstance(k, str) else k): (
                MASK if isinstance(k, str) and SECRET_KEY.match(k) and v is not None else scrub_data(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_data(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return scrub(bytes(value).decode("utf-8", "replace"))
    return scrub(str(value))


_SYNTAX = {"", "=", "&", "?", "/", ":", "@"}


def libpq_message(message: str) -> str:
    """A libpq error about a connection string, without the fragments it quotes from it (libpq
    quotes the text around a syntax error, which may be a piece of a password); parameter names stay."""
    return re.sub(r'"([^"]*)"', lambda m: m[0] if m[1] in _libpq()[1] or m[1] in _SYNTAX else '"…"', scrub(message))


def registered() -> Iterable[str]:
    """Every registered spelling (for tests)."""
    with _lock:
        return frozenset(_secrets)
