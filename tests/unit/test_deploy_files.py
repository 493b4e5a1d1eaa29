"""docker-compose.yml, deploy/Dockerfile and deploy/kubernetes agree with the code and with each other.

None of them can run here (no Docker engine, no cluster): they are parsed, and every setting they
set is checked against `streams.settings.Settings`, every command against the `eventsink` CLI,
every port against the worker's, and the environment each container gets is loaded as Settings.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices

from streams import settings as settings_module
from streams.cli import cli
from streams.settings import Settings, SettingsError, load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# Variables our containers may set that are not eventsink settings.
NOT_SETTINGS = {"PYTHONUNBUFFERED"}
# After the drain, Faust commits offsets, leaves the group and stops its producer.
SHUTDOWN_MARGIN_S = 10
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


# -- what the code accepts -------------------------------------------------------------------------


@cache
def setting_names() -> frozenset[str]:
    """Every environment variable Settings reads (upper case), `X_FILE` secrets included."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    names.update(f"{name}_FILE" for names_ in settings_module.FILE_SECRETS.values() for name in names_)
    return frozenset(names)


def not_settings(env: dict[str, Any]) -> list[str]:
    return sorted(k for k in env if k.upper() not in setting_names() and k not in NOT_SETTINGS)


def subcommand(args: list[str]) -> str:
    """The `eventsink` subcommand `args` invoke; parses its options as the CLI would (UsageError if not)."""
    command: click.Command = cli
    path, rest = [], list(args)
    while isinstance(command, click.Group):
        assert rest, f"`eventsink {' '.join(path)}` needs a subcommand"
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{rest[0]!r} is not an eventsink command ({' '.join(path) or 'top level'})"
        path.append(rest.pop(0))
        command = sub
    command.make_context(f"eventsink {' '.join(path)}", rest)
    return " ".join(path)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings loaded from exactly `env`, as a container with that environment would."""
    import os

    for name in list(os.environ):
        if name.upper() in setting_names() or name.startswith(("EVENTSINK_", "KAFKA_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load()
    except SettingsError as exc:
        raise AssertionError(f"these variables do not make valid settings: {exc}") from None


# -- docker-compose.yml and deploy/Dockerfile -------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def ours(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    return build.get("dockerfile") == "deploy/Dockerfile" or str(service.get("image", "")).startswith("eventsink:")


def eventsink_services() -> dict[str, dict[str, Any]]:
    found = {name: svc for name, svc in compose()["services"].items() if ours(svc)}
    assert {"migrate", "worker"} <= set(found)
    return found


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"]


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[last_from:]


def exec_form(instruction: str) -> list[str]:
    args = [a for ins, a in final_stage() if ins == instruction]
    assert len(args) == 1, f"one {instruction} in the final stage, got {args}"
    assert args[0].startswith("["), f"{instruction} must use the exec form (a JSON array), so signals reach eventsink"
    return yaml.safe_load(args[0])


def image_env() -> dict[str, str]:
    env = {}
    for ins, args in final_stage():
        if ins == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def arg_default(name: str) -> str:
    for ins, args in final_stage():
        if ins == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name} with a default in the final stage")


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def compose_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from({**image_env(), **compose_env(compose()["services"][name])}, monkeypatch)


def duration_s(value: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    assert parts and value, f"unreadable duration {value!r}"
    return int(parts[1] or 0) * 60 + float(parts[2] or 0)


def documented_runs() -> list[tuple[str, list[str]]]:
    """`docker compose run [options] SERVICE ARGS...` in the compose file's comments."""
    comments = [line.lstrip("#").strip() for line in (ROOT / "docker-compose.yml").read_text().splitlines()]
    text = "\n".join(line for line in comments).replace("\\\n", " ")
    with_value = {"--user", "-u", "-v", "--volume", "-e", "--env", "-w", "--workdir", "--name", "-p", "--publish"}
    runs = []
    for line in text.splitlines():
        for segment in line.split("&&"):
            if "docker compose run" not in segment:
                continue  # prose, where an apostrophe is not a shell quote
            words = shlex.split(segment)
            if words[:3] != ["docker", "compose", "run"]:
                continue
            rest = words[3:]
            while rest[0].startswith("-"):
                rest = rest[2:] if rest[0] in with_value else rest[1:]
            runs.append((rest[0], rest[1:]))
    return runs


# -- deploy/kubernetes -----------------------------------------------------------------------------


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    docs = []
    for resource in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return tuple(docs)


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def secret_data(name: str) -> dict[str, str]:
    secret = k8s("Secret", name)
    assert "data" not in secret, "placeholders belong in stringData (readable), not base64 data"
    return secret["stringData"]


# The container running eventsink in each workload (the Job also applies roles.sql around it).
EVENTSINK_CONTAINER = {"Deployment": "worker", "Job": "migrate"}


def all_containers(kind: str) -> list[dict[str, Any]]:
    spec = k8s(kind)["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def workload(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, the container running eventsink) of the Deployment or the Job."""
    spec = k8s(kind)["spec"]["template"]["spec"]
    if kind == "Deployment":
        assert len(spec["containers"]) == 1 and not spec.get("initContainers")
    found = [c for c in all_containers(kind) if c["name"] == EVENTSINK_CONTAINER[kind]]
    assert len(found) == 1, f"{kind}: one container named {EVENTSINK_CONTAINER[kind]}"
    return spec, found[0]


def container_env(kind: str, files: Path) -> dict[str, str]:
    """The environment the container gets (image ENV, envFrom, env), with the Secret volumes written
    under `files` and `*_FILE` paths pointed there: what the kubelet would do."""
    spec, container = workload(kind)
    env = dict(image_env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(source["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            env[var["name"]] = k8s("ConfigMap", ref["configMapKeyRef"]["name"])["data"][ref["configMapKeyRef"]["key"]]
        else:
            env[var["name"]] = secret_data(ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    for volume in spec.get("volumes", []):
        if "secret" not in volume or volume["name"] not in mounts:
            continue
        data = secret_data(volume["secret"]["secretName"])
        for item in volume["secret"].get("items") or [{"key": k, "path": k} for k in data]:
            path = files / mounts[volume["name"]].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])
    for name, value in env.items():
        if name.endswith("_FILE"):
            env[name] = str(files / value.lstrip("/"))
    return env


def k8s_settings(kind: str, files: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(container_env(kind, files), monkeypatch)


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"no container port named {port!r}"
    return named[port]


# -- the checker itself ----------------------------------------------------------------------------


def test_a_misspelt_setting_is_caught() -> None:
    assert not_settings({"EVENTSINK_BATCH_SIZE": "1", "DATABASE_URL_FILE": "/s", "PYTHONUNBUFFERED": "1"}) == []
    assert not_settings({"EVENTSINK_BACTH_SIZE": "1", "DATABSE_URL": "x", "EVENTSINK_GROUP_ID_FILE": "/s"}) == [
        "DATABSE_URL",
        "EVENTSINK_BACTH_SIZE",
        "EVENTSINK_GROUP_ID_FILE",
    ]
    with pytest.raises(AssertionError, match="not an eventsink command"):
        subcommand(["wroker"])
    with pytest.raises(click.UsageError):
        subcommand(["produce", "metrics", "--cuont", "3"])


# -- settings --------------------------------------------------------------------------------------


def test_every_variable_the_deploy_files_set_is_a_real_setting(tmp_path: Path) -> None:
    sources = {"deploy/Dockerfile ENV": image_env()}
    for name, service in eventsink_services().items():
        sources[f"docker-compose.yml {name}"] = compose_env(service)
    sources["configmap.yaml"] = k8s("ConfigMap", "eventsink-config")["data"]
    for kind in ("Deployment", "Job"):
        _, container = workload(kind)
        sources[f"{kind} env"] = {v["name"]: "" for v in container.get("env", [])}
    for where, env in sources.items():
        assert env, f"{where} sets nothing"
        assert not_settings(env) == [], f"{where} sets variables eventsink does not read"


def test_worker_and_migrate_are_given_the_broker_and_the_database(tmp_path: Path) -> None:
    for name in ("worker", "migrate"):
        env = compose_env(compose()["services"][name])
        assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} <= set(env), f"compose {name}"
    for kind in ("Deployment", "Job"):
        env = container_env(kind, tmp_path / kind)
        assert "KAFKA_BOOTSTRAP_SERVERS" in env, kind
        assert {"DATABASE_URL", "DATABASE_URL_FILE"} & set(env), kind


def test_compose_containers_get_valid_development_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in eventsink_services():
        s = compose_settings(name, monkeypatch)
        assert s.env == "development" and conninfo_to_dict(s.dsn)["host"] == "postgres"
        broker = [k for k, svc in compose()["services"].items() if "kafka" in str(svc.get("image", ""))]
        assert [h.split(":")[0] for h in s.bootstrap_list] == broker, "the broker is the compose Kafka service"


def test_kubernetes_pods_get_valid_production_settings_with_secrets_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = secret_data("eventsink-secrets")
    worker = k8s_settings("Deployment", tmp_path / "worker", monkeypatch)
    assert worker.env == "production"
    assert worker.dsn == secrets["DATABASE_URL"]
    assert (
        worker.kafka_sasl_password
        and worker.kafka_sasl_password.get_secret_value() == secrets["EVENTSINK_KAFKA_SASL_PASSWORD"]
    )
    job = k8s_settings("Job", tmp_path / "job", monkeypatch)
    assert job.env == "production" and job.dsn == secrets["MIGRATE_DATABASE_URL"]
    # The roles of deploy/sql/roles.sql: workers write, the migrator owns the schema.
    roles = (DEPLOY / "sql" / "roles.sql").read_text()
    for dsn, role in ((worker.dsn, "eventsink_writer"), (job.dsn, "eventsink_migrator")):
        assert conninfo_to_dict(dsn)["user"] == role and f"'{role}'" in roles


def test_kubernetes_secrets_reach_pods_as_files_only_the_pod_user_reads() -> None:
    secrets = secret_data("eventsink-secrets")
    for kind in ("Deployment", "Job"):
        spec, container = workload(kind)
        named = {v["name"] for v in container.get("env", [])}
        secret_variables = {name for names in settings_module.FILE_SECRETS.values() for name in names}
        assert not secret_variables & named, f"{kind}: a secret in an env var"
        assert not container.get("envFrom", []) or all("secretRef" not in s for s in container["envFrom"])
        for volume in spec["volumes"]:
            if "secret" in volume:
                mode = volume["secret"]["defaultMode"]
                assert mode & 0o007 == 0, f"{kind}: secret files readable by others ({mode:o})"
                assert mode & 0o040 and spec["securityContext"]["fsGroup"], f"{kind}: the pod's group must read them"
                assert all(item["key"] in secrets for item in volume["secret"]["items"])


# -- ports -----------------------------------------------------------------------------------------


def test_compose_worker_port_healthcheck_and_prometheus_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = compose()["services"]["worker"]
    port = compose_settings("worker", monkeypatch).web_port
    assert [int(p) for p in worker["expose"]] == [port]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert [int(a.split()[0].split("/")[0]) for ins, a in final_stage() if ins == "EXPOSE"] == [port]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "eventsink")
    for sd in job["dns_sd_configs"]:
        assert sd["port"] == port
        assert set(sd["names"]) <= set(compose()["services"]), "scraped names are compose services"


def test_kubernetes_probes_service_and_scrape_annotations_use_the_worker_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = k8s_settings("Deployment", tmp_path, monkeypatch).web_port
    container = workload("Deployment")[1]
    served = set(re.findall(r'app\.page\("([^"]+)"\)', (ROOT / "streams" / "worker" / "web.py").read_text()))
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    for name, probe in probes.items():
        assert probe["path"] in served, f"{name}: the worker serves no {probe['path']}"
        assert container_port(container, probe["port"]) == port, name
    service = k8s("Service", "eventsink-metrics")
    [service_port] = service["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port == service_port["port"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in served
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items(), "selects the worker pods"
    assert k8s("Deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# -- health checks and dependencies ----------------------------------------------------------------


def one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        if one_shot(service):
            continue  # a run-to-completion service (migrate) is waited for by its exit status
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} has no healthcheck"


def test_compose_depends_on_conditions_are_satisfiable() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = dep["condition"]
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s health, it has no check"
            elif condition == "service_completed_successfully":
                assert one_shot(services[target]), f"{name} waits for {target} to exit, but it restarts"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


# -- state and roles in compose ---------------------------------------------------------------------


def named_volume_at(service: dict[str, Any], path: str) -> str | None:
    """The named volume (declared at the top level) mounted at `path` or above it, if any."""
    for volume in service.get("volumes") or []:
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if source in (compose().get("volumes") or {}) and (path == target or path.startswith(target + "/")):
            return source
    return None


def waits_for(name: str, condition: str) -> set[str]:
    """Every service `name` waits for with `condition`, directly or through the services it waits for."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for target, dep in (compose()["services"][todo.pop()].get("depends_on") or {}).items():
            if dep["condition"] == condition and target not in found:
                found.add(target)
                todo.append(target)
    return found


def psql_runs(path_in_container: str) -> list[str]:
    """Compose services whose command is psql applying the file at `path_in_container`."""
    runs = []
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if command[:1] == ["psql"] and (f"--file={path_in_container}" in command or path_in_container in command):
            assert "ON_ERROR_STOP=1" in command, f"{name}: psql must stop at the first error"
            runs.append(name)
    return runs


def test_kafka_and_postgres_keep_their_data_in_volumes_and_kafka_its_cluster_id() -> None:
    """A broker without a volume comes back empty: its topics get new ids, which the ledger (kept in
    the PostgreSQL volume) refuses, and every partition stops (log_changed)."""
    services = compose()["services"]
    postgres = services["postgres"]
    assert named_volume_at(postgres, compose_env(postgres).get("PGDATA", "/var/lib/postgresql/data"))
    kafka = services["kafka"]
    env = compose_env(kafka)
    # apache/kafka writes its log to /tmp/kraft-combined-logs unless told otherwise.
    log_dirs = env.get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs").split(",")
    for log_dir in log_dirs:
        assert named_volume_at(kafka, log_dir), f"kafka's log {log_dir} is on no named volume"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env.get("CLUSTER_ID", "")), "a fixed cluster id (the ledger checks it)"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "ledger reset" in text and "log_changed" in text, "the compose file says what a fresh broker means"


def test_compose_creates_the_roles_of_roles_sql_and_eventsink_uses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    roles_sql = (DEPLOY / "sql" / "roles.sql").read_text()
    superuser = compose_env(services["postgres"])["POSTGRES_USER"]
    mounted = {
        name: target
        for name, service in services.items()
        for source, target, *_ in (v.split(":") for v in service.get("volumes") or [])
        if (ROOT / source).resolve() == (DEPLOY / "sql" / "roles.sql").resolve()
    }
    assert len(set(mounted.values())) == 1, (
        f"deploy/sql/roles.sql is mounted by no service (or at two paths): {mounted}"
    )
    appliers = psql_runs(next(iter(mounted.values())))
    assert appliers and set(appliers) <= set(mounted)
    passwords: dict[str, str] = {}
    for name in appliers:
        env = compose_env(services[name])
        assert env["PGHOST"] == "postgres" and env["PGUSER"] == superuser, f"{name} runs roles.sql as the superuser"
        for command in services[name]["command"]:
            match = re.fullmatch(r"--command=ALTER ROLE (\w+) LOGIN PASSWORD '([^']+)'", command)
            if match:
                passwords[match[1]] = match[2]
    expected = {"migrate": "eventsink_migrator", "worker": "eventsink_writer"}
    for name in eventsink_services():
        dsn = conninfo_to_dict(compose_settings(name, monkeypatch).dsn)
        role = expected[name]
        assert dsn["user"] == role != superuser and f"'{role}'" in roles_sql, f"compose {name} connects as {role}"
        assert passwords.get(role) == dsn["password"], f"db-roles gives {role} the password {name} uses"
    # Before migrate (the migrator must exist and own the schema), and again after it (the grants on
    # the tables migrate created) before any worker starts.
    before = [a for a in appliers if a in waits_for("migrate", "service_completed_successfully")]
    after = [a for a in appliers if "migrate" in waits_for(a, "service_completed_successfully")]
    assert before and after, "roles.sql runs before and after migrate"
    assert set(after) <= waits_for("worker", "service_completed_successfully")


# -- the image and its commands --------------------------------------------------------------------


def test_the_image_runs_as_a_numeric_non_root_user_that_kubernetes_also_requires() -> None:
    users = [args for ins, args in final_stage() if ins == "USER"]
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric, so runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) != 0
    created = " ".join(args for ins, args in final_stage() if ins == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    for kind in ("Deployment", "Job"):
        context = workload(kind)[0]["securityContext"]
        assert context["runAsNonRoot"] is True, kind
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), kind
        assert workload(kind)[1]["securityContext"]["allowPrivilegeEscalation"] is False, kind


def test_the_image_entrypoint_is_eventsink_and_every_command_is_a_real_subcommand() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["eventsink"] == "streams.cli:main"
    assert exec_form("ENTRYPOINT") == ["eventsink"]
    assert subcommand(exec_form("CMD")) == "worker"
    commands = {name: svc["command"] for name, svc in eventsink_services().items()}
    assert {name: subcommand(args) for name, args in commands.items()} == {"migrate": "migrate", "worker": "worker"}
    for service, args in documented_runs():
        assert ours(compose()["services"][service]), f"documented `docker compose run {service}`"
        subcommand(args)
    assert {subcommand(args) for _, args in documented_runs()} >= {"produce metrics", "backup"}
    for kind, expected in (("Deployment", "worker"), ("Job", "migrate")):
        container = workload(kind)[1]
        assert "command" not in container, f"{kind}: keep the image's entrypoint"
        assert subcommand(container["args"]) == expected


def test_the_image_can_back_up_the_compose_postgres() -> None:
    """pg_dump refuses a server newer than itself: the image's client is at least the server's version."""
    server = compose()["services"]["postgres"]["image"]
    server_major = int(re.fullmatch(r"postgres:(\d+).*", server)[1])  # type: ignore[index]
    default = int(arg_default("PG_MAJOR"))
    assert default >= server_major, f"deploy/Dockerfile's postgresql-client-{default} cannot dump {server}"
    for name, service in eventsink_services().items():
        client = int(service["build"].get("args", {}).get("PG_MAJOR", default))
        assert client >= server_major, f"compose {name}: postgresql-client-{client} cannot dump {server}"
    assert any('"postgresql-client-${PG_MAJOR}"' in a for ins, a in final_stage() if ins == "RUN")


def test_the_build_context_copies_what_exists_and_ignores_the_venv() -> None:
    for ins, args in dockerfile():
        if ins == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    bases = [a for ins, a in dockerfile() if ins == "FROM"]
    assert len({b.split()[0] for b in bases}) == 1, "build and runtime stages share one base image"


# -- shutdown --------------------------------------------------------------------------------------


def test_termination_grace_outlasts_the_drain_and_the_last_batch_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = k8s_settings("Deployment", tmp_path, monkeypatch)
    needed = s.drain_timeout_s + s.batch_max_wait_s + SHUTDOWN_MARGIN_S
    grace = workload("Deployment")[0]["terminationGracePeriodSeconds"]
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < drain + batch wait + shutdown ({needed})"
    s = compose_settings("worker", monkeypatch)
    grace = duration_s(compose()["services"]["worker"]["stop_grace_period"])
    assert grace >= s.drain_timeout_s + s.batch_max_wait_s + SHUTDOWN_MARGIN_S, "compose stop_grace_period"


def test_rollouts_replace_workers_without_surging_past_the_partition_count() -> None:
    strategy = k8s("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxSurge"] == 0
    assert "replicas" not in k8s("Deployment")["spec"], "KEDA owns the replica count"
    assert k8s("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# -- autoscaling -----------------------------------------------------------------------------------


def test_keda_scales_the_workers_on_the_lag_of_each_topic_up_to_the_partition_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = k8s_settings("Deployment", tmp_path, monkeypatch)
    scaled = k8s("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == k8s("Deployment")["metadata"]["name"]
    assert scaled["maxReplicaCount"] == s.topic_partitions, "one worker per partition at most"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    triggers = scaled["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == {s.metrics_topic, s.chat_topic, s.analysis_topic}
    secrets = secret_data("eventsink-secrets")
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == s.kafka_bootstrap_servers
        assert meta["consumerGroup"] == s.group_id
        assert int(meta["lagThreshold"]) > 0
        assert meta["offsetResetPolicy"] == "earliest", "the workers start a new group from the beginning"
        assert meta["allowIdleConsumers"] == "false"
        assert meta.get("sasl", "none") == (
            KEDA_SASL[s.kafka_sasl_mechanism] if s.kafka_security_protocol.startswith("SASL") else "none"
        )
        assert (meta.get("tls") == "enable") == (s.kafka_security_protocol in ("SSL", "SASL_SSL"))
        auth = k8s("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]["secretTargetRef"]
        assert {a["parameter"] for a in auth} >= {"username", "password"}
        assert all(a["name"] == "eventsink-secrets" and a["key"] in secrets for a in auth)


# -- the migration Job -----------------------------------------------------------------------------


def test_the_migration_job_runs_migrate_once_with_the_worker_image() -> None:
    job = k8s("Job")
    spec, container = workload("Job")
    assert subcommand(container["args"]) == "migrate"
    assert container["image"] == workload("Deployment")[1]["image"], "migrations of the version the workers run"
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0


def test_the_migration_job_creates_the_roles_before_migrating_and_grants_after() -> None:
    """roles.sql (in the image) runs as an administrator before `eventsink migrate` (the migrator must
    exist and own the schema) and again after it (grants on the tables it created); the administrator's
    credential reaches only those steps, as a libpq service file, never the command line or env."""
    spec = k8s("Job")["spec"]["template"]["spec"]
    order = [c["name"] for c in all_containers("Job")]
    assert [c["name"] for c in spec["containers"]] == [order[-1]], "the last step is the pod's container"
    copied = [a.split() for ins, a in final_stage() if ins == "COPY" and "roles.sql" in a]
    assert len(copied) == 1 and (ROOT / copied[0][0]).resolve() == (DEPLOY / "sql" / "roles.sql").resolve()
    in_image = copied[0][-1]
    appliers = []
    for container in all_containers("Job"):
        command = container.get("command") or []
        if command[:1] != ["psql"]:
            continue
        assert f"--file={in_image}" in command and "ON_ERROR_STOP=1" in command, container["name"]
        assert container["image"] == workload("Job")[1]["image"], "roles.sql of the version being migrated"
        env = {v["name"]: v["value"] for v in container["env"]}
        assert set(env) == {"PGSERVICEFILE", "PGSERVICE"}, "the credential comes from a service file"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[str(Path(env["PGSERVICEFILE"]).parent)])
        [item] = volume["secret"]["items"]
        assert item["path"] == Path(env["PGSERVICEFILE"]).name
        service = secret_data(volume["secret"]["secretName"])[item["key"]]
        assert f"[{env['PGSERVICE']}]" in service and "password=" in service
        appliers.append(container["name"])
    migrate = order.index(EVENTSINK_CONTAINER["Job"])
    assert any(order.index(a) < migrate for a in appliers) and any(order.index(a) > migrate for a in appliers)
    admin_volumes = {v["name"] for v in spec["volumes"] if "secret" in v and "ADMIN_PG_SERVICE" in str(v)}
    assert not admin_volumes & {m["name"] for m in workload("Job")[1]["volumeMounts"]}, "migrate never sees it"


# -- resources and files ---------------------------------------------------------------------------


def test_containers_request_resources_and_cap_memory() -> None:
    for kind in ("Deployment", "Job"):
        for container in all_containers(kind):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), f"{kind} {container['name']}"
            assert "memory" in resources["limits"], f"{kind} {container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True


def test_the_worker_writes_its_data_dir_on_a_volume_under_a_read_only_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = k8s_settings("Deployment", tmp_path, monkeypatch).data_dir
    spec, container = workload("Deployment")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounted = [Path(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in writable]
    assert any(data_dir == m or m in data_dir.parents for m in mounted), f"{data_dir} is not on a writable volume"
    assert Path("/tmp") in mounted


def test_kustomization_lists_every_manifest_and_pins_one_image() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    images = {workload(kind)[1]["image"] for kind in ("Deployment", "Job")}
    assert images == {i["name"] for i in kustomization()["images"]}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_manifests() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    image = next(f"{i['newName']}:{i['newTag']}" for i in kustomization()["images"])
    pods = [d["spec"]["template"]["spec"] for d in built if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == 2 and all(p["containers"][0]["image"] == image for p in pods)
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"} == {kustomization()["namespace"]}


# -- reproducible installs -------------------------------------------------------------------------


def test_every_install_of_the_project_is_constrained_by_the_lock() -> None:
    """The image, `make` and CI install the versions requirements.lock pins, nothing resolved anew."""
    steps = dockerfile()
    copied = [args.split()[:-1] for ins, args in steps if ins == "COPY" and not args.startswith("--from")]
    assert any("requirements.lock" in sources for sources in copied), "the build stage copies the lock"
    pip_runs = [args for ins, args in steps if ins == "RUN" and re.search(r"\bpip (install|wheel)\b", args)]
    assert pip_runs
    for run in pip_runs:
        assert "--upgrade" not in run, f"an unpinned upgrade in the image: {run}"
        assert "-c requirements.lock" in run or "--no-index" in run, f"resolves versions at build time: {run}"
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install|\$\(PIP\)", line)]
    assert "PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK)" in makefile
    for line in installs:
        assert "$(PIP)" in line or "-c $(LOCK)" in line or re.search(r"'(uv|pip)==\$\((UV|PIP)_VERSION\)'", line), line
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(LOCK\)$", makefile, re.M), "a new lock reinstalls .venv"
    assert re.search(r"^lock:", makefile, re.M), "make lock regenerates it"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
