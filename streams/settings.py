"""One settings object, read from environment variables (and `*_FILE` secrets)."""

from __future__ import annotations

import difflib
import os
import ssl
import types
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from uuid import UUID

from pydantic import AliasChoices, Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.codec import UnknownFields
from schemas.framing import ValueFormat
from sinks import secrets

SECURE_SSLMODES = ("require", "verify-ca", "verify-full")
# Old environment variable names that still work, and the names that replace them.
DEPRECATED_NAMES = {"EVENTSINK_METRICS_TENANTS": "EVENTSINK_TELEMETRY_TENANTS"}
SECURE_KAFKA = ("SSL", "SASL_SSL")
# EVENTSINK_* variables read by something other than Settings (the test suite's fixtures).
OTHER_NAMES = frozenset({"EVENTSINK_TESTCONTAINERS"})
# Settings that may come from a file: X_FILE=/path (Docker and Kubernetes secrets). Each one is a
# secret: its content is masked wherever it would appear (`sinks.secrets`).
FILE_SECRETS = {
    "database_url": ("DATABASE_URL", "EVENTSINK_DATABASE_URL"),
    "read_database_url": ("EVENTSINK_READ_DATABASE_URL",),
    "kafka_sasl_password": ("EVENTSINK_KAFKA_SASL_PASSWORD",),
    "kafka_ssl_password": ("EVENTSINK_KAFKA_SSL_PASSWORD",),
}


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"EVENTSINK_{name}")


class FileSecrets(PydanticBaseSettingsSource):
    """`DATABASE_URL_FILE=/run/secrets/db` reads DATABASE_URL from that file (one trailing newline
    dropped). Setting both X and X_FILE is refused: which one wins would be a guess."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for name in FILE_SECRETS.get(field_name, ()):
            path = os.environ.get(f"{name}_FILE")
            if not path:
                continue
            # SettingsError, not pydantic's ValidationError: a source's error is not one.
            if any(os.environ.get(n) for n in FILE_SECRETS[field_name]):
                raise SettingsError(f"set {name} or {name}_FILE, not both")
            try:
                # Trailing line ends dropped: an editor's, `echo`'s, or both (a DSN never ends in one).
                content = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(f"{name}_FILE={path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise SettingsError(f"{name}_FILE={path}: not text (UTF-8)") from None
            if not content.strip():
                raise SettingsError(f"{name}_FILE={path} is empty")
            # A DSN's pieces are host names and words: its secrets are registered by `register_dsn`.
            secrets.register(content, pieces=field_name != "database_url")
            return content, field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    """Every knob of eventsink. Unprefixed names for the two everybody sets, EVENTSINK_* else."""

    model_config = SettingsConfigDict(env_prefix="EVENTSINK_", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/eventsink"),
        validation_alias=_env("DATABASE_URL"),
    )
    # Where the analysts' read-only tools (`verify`, `chat history`) read: a standby, or a DSN
    # with several hosts and target_session_attrs=prefer-standby. Unset: DATABASE_URL.
    read_database_url: SecretStr | None = None
    env: Literal["development", "production"] = "development"

    # Kafka security (aiokafka and Faust alike).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # The passphrase of an encrypted client key (EVENTSINK_KAFKA_SSL_KEYFILE, or the certfile when
    # the key is in it).
    kafka_ssl_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True

    # Topics. Dead-letter topics default to "<topic>.dlq".
    metrics_topic: str = "metrics"
    metrics_dlq_topic: str | None = None
    chat_topic: str = "chat"
    chat_dlq_topic: str | None = None
    analysis_topic: str = "analysis"
    analysis_dlq_topic: str | None = None
    # The kinds a worker consumes (comma-separated): metric, chat, analysis.
    kinds: str = "metric,chat,analysis"
    chat_max_content_bytes: int = Field(64 * 1024, ge=1, le=10 * 1024 * 1024)
    # Top-level fields a kind's contract does not know: keep them (attributes column), ignore
    # them, or reject the record (DLQ, unknown_field). Per kind, so one can stay strict.
    metric_unknown_fields: UnknownFields = "keep"
    chat_unknown_fields: UnknownFields = "keep"
    analysis_unknown_fields: UnknownFields = "keep"
    # How a kind's values are written: plain UTF-8 JSON, or JSON behind the header of Confluent's
    # Schema Registry serializers (schemas/framing.py). Per kind; `json` stays strict.
    metric_value_format: ValueFormat = "json"
    chat_value_format: ValueFormat = "json"
    analysis_value_format: ValueFormat = "json"
    topic_partitions: int = Field(8, ge=1, description="partitions of topics eventsink creates")
    topic_replication: int = Field(1, ge=1)

    # Consumer group and batching.
    group_id: str = "eventsink"
    # The most records of one partition's batch. It binds only when records wait (a backlog, a
    # burst): a light stream's batches hold what arrived during the previous transaction. 5000
    # rather than 1000: a backlog is applied in a fifth of the transactions (each pays a few round
    # trips, a temporary table above 2,000 metric records, and a commit), which took the metric
    # benchmark's 200,000 events about 0.5 s sooner with a lower peak RSS (bench/RESULTS.md,
    # 2026-12-06).
    batch_size: int = Field(5000, ge=1, le=50_000)
    # 0 (adaptive): a partition's records are written as soon as its writer is free, and a busy
    # stream's batch fills with what arrived during the previous transaction. N > 0: a batch
    # also waits up to N ms for `batch_size` records (fewer, larger transactions).
    batch_max_wait_ms: int = Field(0, ge=0)
    session_timeout_ms: int = Field(10_000, ge=1000)
    # A rebalance longer than this (seconds, from the worker's revocation to the end of its table
    # recovery) makes /healthz "degraded" and is logged: nothing is applied while it lasts. Above
    # the group's rebalance timeout (60 s), the longest a rebalance waits for a member.
    rebalance_degraded_s: float = Field(120.0, gt=0)
    # At a rebalance, read the partitions given up outside the group until the new assignment
    # (streams.worker.rebalance_reader): partitions that do not move keep committing through the
    # group's join instead of stopping for it (about 4 s on Tansu). The ledger keeps it
    # exactly-once; false: stop at every rebalance, as the group protocol does.
    read_during_rebalance: bool = True
    # When the group's backlog is at least this many records, its leader assigns partitions by
    # backlog (each member keeps as many, the heaviest swapped with lighter ones) instead of by
    # count alone, so that a group scaled out to catch up finishes together
    # (streams.worker.backlog). 0: always by count, as Faust does.
    assign_by_backlog_records: int = Field(50_000, ge=0)
    # How long a fetch may wait for records (Kafka's consumer default is 500 ms; Faust hard-codes
    # 1500 ms). A broker that waits it out when records are there (Tansu does, in part) adds it
    # to latency: 100 ms halved p50 from Kafka timestamp to commit at 50 % load (bench/RESULTS.md);
    # an idle worker sends 10 fetches a second instead of 2.
    fetch_max_wait_ms: int = Field(100, ge=1, le=30_000)
    # Records one fetch hands the agents at most. They are decoded before a partition's hold
    # (2 x batch_size buffered) can stop them, so this is also how far past its hold a
    # partition's buffer grows: 5000 gave a peak RSS of 237 to 282 MB on the metric benchmark,
    # 1000 165 to 189 MB at the same events/s (bench/RESULTS.md, 2026-12-06).
    max_poll_records: int = Field(1000, ge=1)
    stream_buffer_maxsize: int = Field(20_000, ge=100)
    # Allocations between two collections of Python's young generation (Python's default: 700;
    # 0 keeps it). See streams.worker.run._tune_gc.
    gc_young_threshold: int = Field(100_000, ge=0, le=10_000_000)
    # What fetched records not yet applied may weigh in a worker (bytes, counting each value
    # twice: its bytes and their decoded copy); fetching waits above it. Bounds memory whatever
    # the records' size; a quarter of it is the most one partition holds while its batch waits.
    buffer_max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)

    # How often a worker checks that each topic is still the log its ledger counted (topic ids).
    log_check_s: float = Field(10.0, gt=0)
    # Offsets deleted by the broker (retention) before they were applied: stop the partition until
    # an operator decides (`eventsink ledger skip`), or skip them and record the loss.
    on_data_loss: Literal["stop", "skip"] = "stop"
    # Who an operator's change of the ledger is recorded as (`eventsink ledger history`); the OS
    # user when unset.
    operator: str | None = None

    # Dedupe cache (the database is the real dedupe; this only saves it work).
    dedupe_window_s: float = Field(900.0, gt=0)
    dedupe_max_keys: int = Field(500_000, ge=0)

    # Database.
    # Connections each kind's pool keeps open (at most pool_max_size). More would be ready for a
    # starting worker's first batches, but every worker of three kinds would hold 3 x that many
    # connections even when idle (the test suite's parallel workers ran out of PostgreSQL's 100).
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(4, ge=1)
    statement_timeout_ms: int = Field(60_000, ge=100)
    # A writer waiting longer than this for a row lock gives up and retries its batch (transient).
    lock_timeout_ms: int = Field(30_000, ge=100)
    # The server ends a session idle inside a transaction this long (a frozen worker holding a
    # partition's ledger lock): its late commit then fails, harmlessly. Above the dead-letter
    # delivery timeout (30 s), during which a batch's transaction waits for the broker.
    idle_in_transaction_timeout_ms: int = Field(60_000, ge=31_000)
    # How long a batch waits for a pool connection, and the bound on the check of a connection
    # idle for more than a second before it is handed out (`sinks.pool`).
    db_connect_timeout_s: float = Field(10.0, gt=0)
    # The client's bound on one batch's transaction, whatever the server does (it may not answer:
    # a backend stuck on a promoted synchronous standby, a half-open connection). Past it the
    # connection is closed and the batch retried. Above the statement and lock timeouts.
    db_transaction_timeout_s: float = Field(120.0, gt=0)
    # /healthz answers 503 once no node taking writes has been reachable this long: a supervisor
    # restarts the worker (its DNS, its connections, its state all new).
    db_unreachable_unhealthy_s: float = Field(300.0, gt=0)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(30.0, gt=0)

    # Worker process.
    drain_timeout_s: float = Field(30.0, gt=0)
    progress_log_s: float = Field(30.0, gt=0, description="how often a worker logs its totals")
    data_dir: Path = Path(".eventsink/data")
    table_store: str = "memory://"
    web_enabled: bool = True
    web_port: int = Field(6066, ge=1, le=65535)
    # Tenants that get their own telemetry label (cardinality: never all of them).
    telemetry_tenants: str = Field(
        "", validation_alias=AliasChoices("EVENTSINK_TELEMETRY_TENANTS", "EVENTSINK_METRICS_TENANTS")
    )
    use_uvloop: bool = True

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FileSecrets(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("database_url", mode="after")
    @classmethod
    def _remember_dsn_secrets(cls, value: SecretStr) -> SecretStr:
        dsn = value.get_secret_value()
        if not dsn.strip():
            # libpq would take an empty string for its defaults (the OS user's database on the
            # local socket): a variable that expanded to nothing must not pick a database.
            raise ValueError(
                "DATABASE_URL is empty: set a PostgreSQL connection string "
                "(postgresql://USER@HOST:5432/DATABASE), or unset it for postgresql://postgres@127.0.0.1:5432/eventsink"
            )
        secrets.register_dsn(dsn)
        try:
            secrets.dsn_secrets(dsn)
        except Exception as exc:
            # libpq's complaint quotes the text around the error, maybe a piece of the password.
            raise ValueError(
                f"DATABASE_URL is not a valid PostgreSQL connection string ({secrets.libpq_message(str(exc)).strip()})"
            ) from None
        return value

    @field_validator("read_database_url", mode="after")
    @classmethod
    def _remember_read_dsn_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None  # set to nothing: unset, so the analysts' tools read DATABASE_URL, as documented
        if value is not None:
            secrets.register_dsn(value.get_secret_value())
            try:
                secrets.dsn_secrets(value.get_secret_value())
            except Exception as exc:
                raise ValueError(
                    "EVENTSINK_READ_DATABASE_URL is not a valid PostgreSQL connection string "
                    f"({secrets.libpq_message(str(exc))})"
                ) from None
        return value

    @field_validator("kafka_sasl_password", "kafka_ssl_password", mode="after")
    @classmethod
    def _remember_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secrets.register(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _production_is_encrypted(self) -> Settings:
        if self.env != "production":
            return self
        from psycopg.conninfo import conninfo_to_dict  # here: `topic_names` serves publishers without psycopg

        try:
            sslmode = conninfo_to_dict(self.dsn).get("sslmode")
        except Exception:
            raise ValueError("DATABASE_URL is not a valid PostgreSQL connection string") from None
        if sslmode not in SECURE_SSLMODES:
            raise ValueError(
                f"EVENTSINK_ENV=production refuses a database connection with sslmode={sslmode or '(unset)'}: "
                "add sslmode=verify-full (or require / verify-ca) to DATABASE_URL"
            )
        if self.kafka_security_protocol not in SECURE_KAFKA:
            raise ValueError(
                f"EVENTSINK_ENV=production refuses Kafka over {self.kafka_security_protocol}: set "
                "EVENTSINK_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL (with EVENTSINK_KAFKA_SSL_CAFILE if the "
                "brokers' CA is not in the system store)"
            )
        return self

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"EVENTSINK_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs EVENTSINK_KAFKA_SASL_USERNAME "
                "and EVENTSINK_KAFKA_SASL_PASSWORD (or EVENTSINK_KAFKA_SASL_PASSWORD_FILE)"
            )
        return self

    @model_validator(mode="after")
    def _dlq_names(self) -> Settings:
        defaulted = set()
        for name in ("metrics", "chat", "analysis"):
            if not getattr(self, f"{name}_dlq_topic"):
                setattr(self, f"{name}_dlq_topic", f"{getattr(self, f'{name}_topic')}.dlq")
                defaulted.add(f"{name}_dlq_topic")
        unknown = set(self.kind_names) - {"metric", "chat", "analysis"}
        if unknown:
            raise ValueError(f"unknown event kinds in EVENTSINK_KINDS: {sorted(unknown)}")
        self._topics_are_distinct(defaulted)
        return self

    def _topics_are_distinct(self, defaulted: set[str]) -> None:
        """Six topics, six names: a dead-letter topic that is a source topic feeds a worker its own
        dead letters (and `dlq` refuses to read it); two kinds on one topic dead-letter each other's
        records as invalid. A dead-letter topic named `X.replays` would share its name with the
        record of X's replays (`dlq replay`)."""
        fields = [f"{n}_{t}" for t in ("topic", "dlq_topic") for n in ("metrics", "chat", "analysis")]

        def variable(field: str) -> str:
            if field in defaulted:  # the name nobody set: say where it comes from
                return (
                    f"EVENTSINK_{field.upper()} (unset: EVENTSINK_{field.removesuffix('_dlq_topic').upper()}_TOPIC.dlq)"
                )
            return f"EVENTSINK_{field.upper()}"

        by_name: dict[str, list[str]] = {}
        for field in fields:
            by_name.setdefault(getattr(self, field), []).append(field)
        problems = [
            f"{' and '.join(variable(f) for f in same)} are {'both' if len(same) == 2 else 'all'} {name!r}"
            for name, same in by_name.items()
            if len(same) > 1
        ]
        if problems:
            problems[-1] += " (the three topics and three dead-letter topics need six names)"
        problems += [
            f"{variable(f)} is {getattr(self, f)!r}: a dead-letter topic cannot end in .replays (the record of "
            "another dead-letter topic's replays)"
            for f in fields[3:]
            if getattr(self, f).endswith(".replays")
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def telemetry_tenant_set(self) -> frozenset[UUID]:
        return frozenset(UUID(t.strip()) for t in self.telemetry_tenants.split(",") if t.strip())

    @property
    def kind_names(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def read_dsn(self) -> str:
        """Where read-only tools read (EVENTSINK_READ_DATABASE_URL, else DATABASE_URL)."""
        return self.read_database_url.get_secret_value() if self.read_database_url else self.dsn

    @property
    def dsn_display(self) -> str:
        from sinks.dsn import redact_dsn

        return redact_dsn(self.dsn)

    def short_secrets(self) -> list[str]:
        """The secrets too short to be masked wherever they appear (see `sinks.secrets.MIN_LENGTH`)."""
        found = [
            f"the {name} of DATABASE_URL"
            for name, value in secrets.dsn_secrets(self.dsn).items()
            if len(value) < secrets.MIN_LENGTH
        ]
        for name, value in (
            ("EVENTSINK_KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
            ("EVENTSINK_KAFKA_SSL_PASSWORD", self.kafka_ssl_password),
        ):
            if value is not None and 0 < len(value.get_secret_value()) < secrets.MIN_LENGTH:
                found.append(name)
        return found

    @cached_property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None)
        context.check_hostname = self.kafka_ssl_check_hostname
        if self.kafka_ssl_certfile:
            # Never OpenSSL's own prompt for a passphrase (it would hang a worker): without a
            # passphrase set, an encrypted key fails to load.
            password = self.kafka_ssl_password.get_secret_value() if self.kafka_ssl_password else ""
            try:
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                    password=lambda: password,
                )
            except (ssl.SSLError, OSError) as exc:
                raise SettingsError(
                    f"cannot load the Kafka client certificate {self.kafka_ssl_certfile} and key "
                    f"{self.kafka_ssl_keyfile or '(in the certificate file)'}: {exc}; an encrypted key needs its "
                    "passphrase in EVENTSINK_KAFKA_SSL_PASSWORD (or EVENTSINK_KAFKA_SSL_PASSWORD_FILE)"
                ) from None
        return context

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka client arguments for the configured security (empty for PLAINTEXT)."""
        options: dict[str, Any] = {}
        if self.kafka_security_protocol != "PLAINTEXT":
            options["security_protocol"] = self.kafka_security_protocol
        if self.kafka_security_protocol.endswith("SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
        return options

    def faust_credentials(self) -> Any:
        """Faust's broker_credentials for the configured security (None for PLAINTEXT)."""
        import faust

        if self.kafka_security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password.get_secret_value(),  # type: ignore[union-attr]
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.kafka_security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return None

    @property
    def batch_max_wait_s(self) -> float:
        return self.batch_max_wait_ms / 1000.0


def deprecated_names(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The deprecated variables set in the environment, with the name to use instead."""
    env = os.environ if environ is None else environ
    return {old: new for old, new in DEPRECATED_NAMES.items() if old in env}


def _field_variables(name: str, field: FieldInfo) -> list[str]:
    """The environment variables of a field, the preferred one first (upper case)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices]
    if isinstance(alias, str):
        return [alias.upper()]
    return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]


def variable_names() -> frozenset[str]:
    """Every environment variable Settings reads (upper case), `X_FILE` secrets included."""
    names = {v for name, field in Settings.model_fields.items() for v in _field_variables(name, field)}
    names.update(f"{name}_FILE" for group in FILE_SECRETS.values() for name in group)
    return frozenset(names)


def unknown_variables(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """EVENTSINK_* variables set that no setting reads (a misspelling, silently ignored
    otherwise), each with the closest valid name, or None when none is close."""
    env = os.environ if environ is None else environ
    prefix = "EVENTSINK_"
    known = variable_names() | OTHER_NAMES
    # Compared without the prefix every candidate shares, which would make any name look close.
    candidates = sorted(n.removeprefix(prefix) for n in known - set(DEPRECATED_NAMES) if n.startswith(prefix))
    unknown: dict[str, str | None] = {}
    for name in sorted(env):
        upper = name.upper()  # pydantic-settings reads variables case-insensitively
        if upper.startswith(prefix) and upper not in known:
            close = difflib.get_close_matches(upper.removeprefix(prefix), candidates, n=1, cutoff=0.6)
            unknown[name] = prefix + close[0] if close else None
    return unknown


def _variable_of(loc: tuple[Any, ...], environ: dict[str, str]) -> str:
    """The environment variable an error's location names: the one set, when a field has several."""
    if not loc:
        return ""
    head = str(loc[0])
    for name, field in Settings.model_fields.items():
        variables = _field_variables(name, field)
        if head == name or head.upper() in variables:
            present = sorted((k for k in environ if k.upper() in variables), key=lambda k: variables.index(k.upper()))
            return (present or variables)[0]
    return head


def _plain(annotation: Any) -> Any:
    """`X | None` -> X."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _bounds(field: FieldInfo) -> str:
    low = high = ""
    for rule in field.metadata:
        if getattr(rule, "ge", None) is not None:
            low = f"at least {rule.ge:,}"
        elif getattr(rule, "gt", None) is not None:
            low = f"above {rule.gt:,}"
        if getattr(rule, "le", None) is not None:
            high = f"at most {rule.le:,}"
        elif getattr(rule, "lt", None) is not None:
            high = f"below {rule.lt:,}"
    return " and ".join(b for b in (low, high) if b)


def valid_values(field: FieldInfo) -> str:
    """What a field accepts, in words: `one of a, b`, `an integer, at least 1 and at most 50,000`."""
    annotation = _plain(field.annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    words = {int: "an integer", float: "a number", bool: "true or false", Path: "a path", str: "text"}
    word = words.get(annotation, "")
    bounds = _bounds(field)
    return f"{word}, {bounds}" if word and bounds else word or bounds


# What a publishing service needs of the settings: the topic of each kind, as the workers read them.
TOPIC_FIELDS = {"metric": "metrics_topic", "chat": "chat_topic", "analysis": "analysis_topic"}


def topic_names() -> dict[str, str]:
    """Each kind's topic from the environment (EVENTSINK_METRICS_TOPIC, ...), read by the same
    fields as `Settings`, without the rest: a service publishing events has its own DATABASE_URL
    and secrets, none of eventsink's business (and no database driver to import)."""

    class _Topics(BaseSettings):
        model_config = Settings.model_config

    fields: dict[str, Any] = {f: (str, Settings.model_fields[f]) for f in TOPIC_FIELDS.values()}
    topics = create_model("TopicNames", __base__=_Topics, **fields)()
    return {kind: getattr(topics, f) for kind, f in TOPIC_FIELDS.items()}


class SettingsError(ValueError):
    """The environment does not make valid settings; the message names each problem, no values."""


def _problem(error: Any, environ: dict[str, str]) -> str:
    message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())  # one line
    variable = _variable_of(tuple(error["loc"]), environ)
    if not variable or message.startswith(variable):
        return message
    field = next((f for n, f in Settings.model_fields.items() if variable.upper() in _field_variables(n, f)), None)
    valid = valid_values(field) if field is not None and error["type"] != "value_error" else ""
    return f"{variable} must be {valid}" if valid else f"{variable}: {message}"


def load(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [_problem(e, dict(os.environ)) for e in exc.errors(include_input=False, include_url=False)]
        raise SettingsError("; ".join(dict.fromkeys(problems))) from None
