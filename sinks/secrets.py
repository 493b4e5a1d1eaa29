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
  percent-encoded (a URL), quoted as in a libpq conninfo, and each of those JSON-escaped again;
  and every piece of `MIN_LENGTH` characters of each (`windows`), wherever a message cuts it.

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
from urllib.parse import quote, quote_plus, unquote, unquote_plus
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


_lock = threading.Lock()
_secrets: set[str] = set()  # every spelling of every registered secret
_pattern: re.Pattern[str] | None = None
_short: frozenset[str] = frozenset()  # the registered spellings of exactly MIN_LENGTH characters
_NEVER = re.compile(r"(?!)(x)")  # matches nothing (every registered spelling is a window)


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


# Where a library's message may cut a secret it quotes: its own quoting stops at a quote, a
# backslash escapes, a space ends a word, a URL's or a conninfo's syntax ends a token.
_CUTS = frozenset("\"'\\ \t\r\n=&@:/?#,;%")


def fragments(secret: str) -> set[str]:
    """The pieces of `secret` a message may quote alone: what comes before and after each quote,
    backslash, space or URL/conninfo delimiter in it (libpq quoted `my pass"TAIL` and a masker
    stopping at the quote left `TAIL` in view)."""
    found: set[str] = set()
    cuts = [i for i, c in enumerate(secret) if c in _CUTS]
    for i in cuts:
        found.add(secret[:i])
        found.add(secret[i + 1 :])
        # With the cut character too: a message quoting `%ZZ%2"` (libpq's quote closing on the
        # password's own) shows a piece too short to mask without it.
        found.add(secret[: i + 1])
        found.add(secret[i:])
    for a, b in zip([-1, *cuts], [*cuts, len(secret)], strict=True):
        found.add(secret[a + 1 : b])
    return {f for f in found if len(f.strip()) >= MIN_LENGTH}


def windows(secret: str) -> set[str]:
    """Every piece of `MIN_LENGTH` characters of `secret`, of each of its spellings, and of the
    spellings of its `fragments` (a repr or a conninfo quotes a fragment otherwise than the whole).

    Masking them all makes "no `MIN_LENGTH`-character piece of a secret appears" hold by
    construction, wherever a message cuts the secret (`x#frag` of `only?q@x#frag/x`, quoted by a
    resolver, spans a delimiter: no fragment held it). A piece of punctuation alone is left out:
    it tells nothing of the secret and would mask runs of spaces or dashes everywhere."""
    found: set[str] = set()
    for piece in {secret} | fragments(secret):
        for form in spellings(piece) | {piece}:
            found.update(form[i : i + MIN_LENGTH] for i in range(len(form) - MIN_LENGTH + 1))
    return {w for w in found if any(c.isalnum() for c in w)}


def register(secret: str | None, *, pieces: bool = True) -> bool:
    """Remember a secret so that `scrub` masks it anywhere, with every piece of it a message may
    quote alone (`windows`; `pieces=False` for a whole DSN, whose pieces are host names and words).
    False if it is too short to be masked by value (it is then masked by label only); True for
    None and the empty string (nothing to hide)."""
    global _pattern
    if not secret:
        return True
    if len(secret) < MIN_LENGTH:
        return False
    forms = spellings(secret)
    if pieces:
        forms |= windows(secret)
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


_SCHEME = re.compile(r"^\s*[a-z][a-z0-9+.\-]*://", re.I)
_QUERY_PARAM = re.compile(r"[?&]([^=&#]+)=([^&#]*)")
_KEYWORD_PARAM = re.compile(r"(?:^|\s)([\w-]+)\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)")
_NEXT_QUERY_PARAM = re.compile(r"&([\w-]+)=")
_NEXT_KEYWORD_PARAM = re.compile(r"\s+([\w-]+)\s*=")


def _to_next_parameter(text: str, start: int, following: re.Pattern[str]) -> str:
    """`text` from `start` to the next parameter libpq knows (`&sslmode=`, ` host=`): a value
    holding the delimiter itself, as libpq would not read it."""
    for m in following.finditer(text, start):
        if m[1].lower() in _libpq()[1]:
            return text[start : m.start()]
    return text[start:]


def userinfo_passwords(dsn: str, *, before_query: bool) -> set[str]:
    """What a URL's user info holds after `user:`, up to the first and up to the last `@` (a
    password may hold one); `before_query`: only an `@` before any `?`."""
    scheme = _SCHEME.match(dsn)
    if not scheme:
        return set()
    rest = dsn[scheme.end() :]
    if before_query and "?" in rest:
        rest = rest[: rest.index("?")]
    found = set()
    for at in {rest.find("@"), rest.rfind("@")} - {-1}:
        _, colon, password = rest[:at].partition(":")
        if colon:
            found.add(password)
    return found


def dsn_candidates(dsn: str) -> set[str]:
    """Whatever a DSN's secrets may be, read leniently, without libpq: for a DSN libpq cannot
    parse (its message quotes text around the error), and for the spellings a DSN gives them.

    The password of a URL's user info (up to the first and up to the last `@`: a password may
    hold one), secret query parameters (`?password=`, `&sslpassword=`), secret `key=value`
    parameters (single-quoted with backslash escapes, or bare), each as far as the next delimiter
    and as far as the next parameter, each also percent-decoded and unescaped. Taking too much
    only masks text that is not there."""
    names = _libpq()[0]
    found = userinfo_passwords(dsn, before_query=False)
    scheme = _SCHEME.match(dsn)
    if scheme:
        rest = dsn[scheme.end() :]
        for m in _QUERY_PARAM.finditer(rest):
            if unquote_plus(m[1]).lower() in names:
                found.add(m[2])
                found.add(_to_next_parameter(rest, m.start(2), _NEXT_QUERY_PARAM))
    for m in _KEYWORD_PARAM.finditer(dsn):
        if m[1].lower() not in names:
            continue
        raw = m[2]
        if raw.startswith("'"):
            raw = raw[1:-1] if len(raw) > 1 and raw.endswith("'") else raw[1:]
        found.add(_to_next_parameter(dsn, m.start(2), _NEXT_KEYWORD_PARAM))
        found.add(raw)
        found.add(re.sub(r"\\(.)", r"\1", raw))
    for value in list(found):
        found.add(unquote(value))
        found.add(unquote_plus(value))
    return {f for f in found if f}


def register_dsn(dsn: str) -> list[str]:
    """Register the secret parameters of a DSN, as libpq reads them and as the DSN spells them.

    A DSN libpq parses: each secret value, and each spelling of it in the DSN (percent-encoded,
    backslash-escaped: the `dsn_candidates` that decode to it). A DSN libpq cannot parse: the
    whole DSN, and every candidate (its secrets cannot be told apart: libpq's message quotes text
    around the error). Returns the names of the secrets too short to be masked by value.
    """
    candidates = dsn_candidates(dsn)
    try:
        found = dsn_secrets(dsn)
    except Exception:
        register(dsn, pieces=False)
        for candidate in candidates:
            register(candidate)
        return []
    # What libpq reads, and how the DSN spells it; and what its author meant as a URL's password
    # even where libpq read it otherwise (`u:123456/@h` is user u, port 123456 to libpq).
    values = set(found.values())
    for candidate in candidates:
        read = {candidate, unquote(candidate), unquote_plus(candidate), re.sub(r"\\(.)", r"\1", candidate)}
        if (read | {r.strip() for r in read}) & values:  # libpq drops the spaces around a value
            register(candidate)
    # An `@` after a `?` may be the password's (`u:pw?@x@h`: libpq reads `?` as the query's start,
    # its message then quotes `x@h` as a host) or a query parameter's: both readings are masked.
    for password in userinfo_passwords(dsn, before_query=True) | userinfo_passwords(dsn, before_query=False):
        register(password)
        register(unquote(password))
    return [name for name, value in found.items() if not register(value)]


def _compiled() -> tuple[re.Pattern[str] | None, frozenset[str]]:
    """The registered spellings longer than `MIN_LENGTH` as one pattern, and those of exactly
    `MIN_LENGTH` characters (the windows: hundreds per secret) as a set, looked up at each
    position of a text: an alternation of hundreds of literals tries each at every position."""
    global _pattern, _short
    with _lock:
        if _pattern is None and _secrets:
            _short = frozenset(s for s in _secrets if len(s) == MIN_LENGTH)
            # A spelling whose every piece is a registered window is masked by them already.
            longer = (s for s in _secrets if len(s) > MIN_LENGTH and not _covered(s, _short))
            ordered = sorted(longer, key=len, reverse=True)
            # A lookahead finds the longest secret starting at every position, overlapping ones
            # included: one secret masked from an earlier start must not leave another's tail.
            _pattern = re.compile("(?=(" + "|".join(re.escape(s) for s in ordered) + "))") if ordered else _NEVER
        if not _secrets:
            return None, frozenset()
        return _pattern, _short


def _covered(spelling: str, short: frozenset[str]) -> bool:
    """Whether every piece of `spelling` that `windows` keeps is registered."""
    pieces = (spelling[i : i + MIN_LENGTH] for i in range(len(spelling) - MIN_LENGTH + 1))
    return all(p in short or not any(c.isalnum() for c in p) for p in pieces)


def _registered_spans(text: str, pattern: re.Pattern[str], short: frozenset[str]) -> list[tuple[int, int]]:
    """Where each registered secret occurs in `text` (overlapping ones included)."""
    found = [(m.start(), m.start() + len(m[1])) for m in pattern.finditer(text)]
    if short:
        found += [(i, i + MIN_LENGTH) for i in range(len(text) - MIN_LENGTH + 1) if text[i : i + MIN_LENGTH] in short]
    return found


def _labelled_spans(text: str) -> list[tuple[int, int]]:
    """Where each value labelled as a secret stands in `text`, inside its quotes if quoted."""
    spans = []
    for labelled in _LABELLED:
        for m in labelled.finditer(text):
            start, end = m.span("v")
            value = m["v"]
            for quote_ in ('\\"', '"', "'"):
                if value.startswith(quote_) and len(value) >= 2 * len(quote_):
                    start, end = start + len(quote_), end - len(quote_)
                    break
            spans.append((start, end))
    return spans


def _mask(text: str, found: list[tuple[int, int]]) -> str:
    """`text` with the union of the spans masked, each run of overlapping spans once."""
    if not found:
        return text
    spans: list[list[int]] = []
    for start, end in sorted(found):
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], MASK]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def scrub(text: str) -> str:
    """`text` without any registered secret, nor any value labelled as a secret.

    Both are found in the text as it came, then masked together: masking one first could break
    the other (a registered piece such as a user name inside a URL would hide the `user:` that
    labels the password after it)."""
    pattern, short = _compiled()
    found = _registered_spans(text, pattern, short) if pattern is not None else []
    return _mask(text, found + _labelled_spans(text))


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
_QUOTED = re.compile(r'"([^"]*)"')


def libpq_message(message: str) -> str:
    """A libpq error about a connection string, without the text it quotes from it (libpq
    quotes the text around a syntax error, which may be a piece of a password, itself holding
    quotes); parameter names and syntax characters stay.

    From the first quoted piece that is not a parameter name to the last quote, everything is
    one `"…"`: a quote inside the quoted text cannot end the masking early."""
    text = scrub(message)
    keep = _libpq()[1] | _SYNTAX
    start, checked = None, 0
    for m in _QUOTED.finditer(text):
        if m[1] not in keep:
            start = m.start()
            break
        checked = m.end()
    if start is None:
        if '"' not in text[checked:]:
            return text.rstrip()
        start = text.index('"', checked)  # an unpaired quote: what follows may be quoted text
    end = text.rfind('"')
    return (text[:start] + '"…"' + (text[end + 1 :] if end > start else "")).rstrip()


def registered() -> Iterable[str]:
    """Every registered spelling (for tests)."""
    with _lock:
        return frozenset(_secrets)
