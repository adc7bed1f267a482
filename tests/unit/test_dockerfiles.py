"""The container images' Dockerfiles keep the documented contract, checked without an engine.

Images: operator/Dockerfile (`smartspec operator|gateway`), sandbox-images/generator and
sandbox-images/tester (specs/CORE-004-generation-runs.md, "Sandbox contract"; see
sandbox-images/README.md). A small parser reads each Dockerfile (comments, parser directives,
line continuations, exec-form JSON) and the tests check: an explicit, non-latest base tag; a
numeric non-root final USER; no credential-like ENV or ARG with a value; no remote ADD; the
ENTRYPOINT names a command or module that exists; a HEALTHCHECK or a note that the
orchestrator probes instead; COPY sources exist in the build context (the repository root);
and each sandbox image installs every distribution its program imports.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from smartspec import cli
from smartspec.api.sandbox import TESTER_MODULES

REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def named(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def final_stage(self) -> list[Instruction]:
        starts = [i for i, item in enumerate(self.instructions) if item.keyword == "FROM"]
        return self.instructions[starts[-1] :]


def parse_dockerfile(text: str, path: Path = Path("Dockerfile")) -> Dockerfile:
    """Instructions with their continuation lines joined; comments kept separately.

    Follows the Dockerfile reference: `#` starts a comment only at the start of a line
    (also inside a continued instruction, where the comment line is dropped), a trailing
    backslash continues the instruction, and keywords are case-insensitive.
    """
    parsed = Dockerfile(path)
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            parsed.comments.append(stripped.lstrip("#").strip())
            continue
        if not stripped and not pending:
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if continued:
            continue
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        parsed.instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    assert not pending, f"{path}: the last instruction ends with a continuation"
    return parsed


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"{instruction.keyword} must use the exec (JSON) form"
    assert all(isinstance(item, str) for item in value)
    return [str(item) for item in value]


def env_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """(name, value) of an ENV or ARG instruction; value "" when none is given."""
    tokens = shlex.split(instruction.arguments)
    if instruction.keyword == "ENV" and tokens and "=" not in tokens[0]:
        return [(tokens[0], " ".join(tokens[1:]))]  # legacy `ENV NAME value`
    return [(name, value) for name, _, value in (token.partition("=") for token in tokens)]


IMAGES = {
    "operator": REPO / "operator" / "Dockerfile",
    "generator": REPO / "sandbox-images" / "generator" / "Dockerfile",
    "tester": REPO / "sandbox-images" / "tester" / "Dockerfile",
}
ENTRYPOINTS = {
    "operator": ["smartspec"],
    "generator": ["python", "-m", "smartspec.sandbox.generator"],
    "tester": ["python", "-m", "smartspec.sandbox.tester"],
}
# What each sandbox program may import besides the standard library and smartspec.
SANDBOX_PACKAGES = {"generator": {"pydantic", "openai"}, "tester": {"pydantic", "pytest"}}


def load(image: str) -> Dockerfile:
    path = IMAGES[image]
    return parse_dockerfile(path.read_text(encoding="utf-8"), path)


# ---------------------------------------------------------------- the parser itself
def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS build\n"
        "\n"
        "RUN pip install a \\\n"
        "# a comment inside the continuation\n"
        "    b \\\n"
        "  && echo done\n"
        'env A=1 B="two words"\n'
        "ENV LEGACY some value\n"
        'ENTRYPOINT ["smartspec"]\n'
    )
    assert [item.keyword for item in parsed.instructions] == [
        "FROM",
        "RUN",
        "ENV",
        "ENV",
        "ENTRYPOINT",
    ]
    assert parsed.instructions[1] == Instruction("RUN", "pip install a b && echo done", 4)
    assert parsed.comments == ["syntax=docker/dockerfile:1", "a comment inside the continuation"]
    assert env_pairs(parsed.instructions[2]) == [("A", "1"), ("B", "two words")]
    assert env_pairs(parsed.instructions[3]) == [("LEGACY", "some value")]
    assert exec_form(parsed.instructions[4]) == ["smartspec"]


# ---------------------------------------------------------------- every image
@pytest.mark.parametrize("image", IMAGES)
def test_base_images_carry_an_explicit_tag(image: str) -> None:
    dockerfile = load(image)
    stages: set[str] = set()
    froms = dockerfile.named("FROM")
    assert froms, f"{image}: no FROM"
    # ARGs before the first FROM may name the base; their defaults are what users build.
    first_from = dockerfile.instructions.index(froms[0])
    global_args = dict(
        pair for item in dockerfile.instructions[:first_from] for pair in env_pairs(item)
    )
    for instruction in froms:
        tokens = [t for t in instruction.arguments.split() if not t.startswith("--platform")]
        reference = tokens[0]
        argument = re.fullmatch(r"\$\{?(\w+)\}?", reference)
        if argument:
            assert global_args.get(argument[1]), f"{image}: {reference} has no default"
            reference = global_args[argument[1]]
        if len(tokens) >= 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2].lower())
        if reference.lower() in stages:
            continue
        name, _, digest = reference.partition("@")
        last = name.rsplit("/", 1)[-1]
        assert ":" in last or digest, f"{image}: {reference} has no tag"
        tag = last.partition(":")[2]
        assert tag != "latest", f"{image}: {reference} uses latest"
        assert not tag.startswith("$"), f"{image}: {reference} tag comes from a build argument"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [item for item in load(image).final_stage() if item.keyword == "USER"]
    assert users, f"{image}: the final stage sets no USER, so it runs as root"
    user = users[-1].arguments
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{image}: USER {user} is not numeric uid[:gid]"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0, f"{image}: USER {user} is root"
    assert not gid or int(gid) != 0, f"{image}: USER {user} has the root group"


@pytest.mark.parametrize("image", IMAGES)
def test_no_credentials_in_env_or_args(image: str) -> None:
    dockerfile = load(image)
    for instruction in dockerfile.named("ENV") + dockerfile.named("ARG"):
        for name, value in env_pairs(instruction):
            assert not (SECRET_NAME.search(name) and value), (
                f"{image}:{instruction.line}: {instruction.keyword} {name} bakes in a value"
            )


@pytest.mark.parametrize("image", IMAGES)
def test_no_remote_add(image: str) -> None:
    for instruction in load(image).named("ADD"):
        assert not re.search(r"(^|\s)(https?|git@|ftp)[:/]", instruction.arguments), (
            f"{image}:{instruction.line}: ADD of a remote source; download and verify in RUN"
        )


@pytest.mark.parametrize("image", IMAGES)
def test_healthcheck_or_orchestrator_probes(image: str) -> None:
    dockerfile = load(image)
    noted = any("orchestrator probes" in comment for comment in dockerfile.comments)
    assert dockerfile.named("HEALTHCHECK") or noted, (
        f"{image}: add a HEALTHCHECK or a comment saying the orchestrator probes instead"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_in_the_build_context(image: str) -> None:
    for instruction in load(image).named("COPY"):
        tokens = shlex.split(instruction.arguments)
        if any(token.startswith("--from") for token in tokens):
            continue
        sources = [token for token in tokens if not token.startswith("--")][:-1]
        assert sources, f"{image}:{instruction.line}: COPY without a source"
        for source in sources:
            assert (REPO / source).exists(), f"{image}:{instruction.line}: {source} not in repo"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_matches_the_documented_command(image: str) -> None:
    entrypoints = [item for item in load(image).final_stage() if item.keyword == "ENTRYPOINT"]
    assert entrypoints, f"{image}: no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == ENTRYPOINTS[image]


# ---------------------------------------------------------------- the commands exist
def test_operator_entrypoint_is_the_smartspec_cli() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["smartspec"] == "smartspec.cli:main"
    assert callable(cli.main)
    cmds = [item for item in load("operator").final_stage() if item.keyword == "CMD"]
    assert cmds, "operator: no CMD"
    assert exec_form(cmds[-1]) == ["operator"]
    parser = cli._build_parser()
    subcommands = {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
    assert {"operator", "gateway"} <= subcommands


@pytest.mark.parametrize("image", ["generator", "tester"])
def test_sandbox_entrypoint_module_imports(image: str) -> None:
    module = importlib.import_module(ENTRYPOINTS[image][-1])
    assert callable(module.main)


def installed_requirements(image: str) -> set[str]:
    """Distributions named by `pip install` in the final stage (wheel paths excluded)."""
    names: set[str] = set()
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-f", "--find-links", "-i"}
    for instruction in load(image).final_stage():
        if instruction.keyword != "RUN":
            continue
        for command in instruction.arguments.split("&&"):
            tokens = shlex.split(command)
            while tokens and tokens[0].startswith("--"):  # RUN flags: --mount=..., --network=...
                tokens.pop(0)
            if tokens[:2] != ["pip", "install"]:
                continue
            skip = False
            for token in tokens[2:]:
                if skip:
                    skip = False
                elif token in takes_value:
                    skip = True
                elif not token.startswith("-") and "/" not in token:
                    names.add(canonicalize_name(Requirement(token).name))
    return names


def dependency_closure(names: set[str]) -> set[str]:
    """The names and everything they require unconditionally, from the installed metadata."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


# Imports the module with every distribution outside the allowed set hidden, as in the image:
# optional imports (try/except ImportError) degrade as they would there; hard ones fail.
IMPORT_PROBE = """
import importlib, importlib.abc, importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top == "smartspec":
            return None
        dists = {canonical(d) for d in owners.get(top, [])}
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"{name} is not installed in the image", name=name)
        return None
sys.meta_path.insert(0, Hide())
importlib.import_module(sys.argv[2])
"""


@pytest.mark.parametrize("image", ["generator", "tester"])
def test_sandbox_image_installs_what_its_program_imports(image: str) -> None:
    requested = installed_requirements(image)
    assert requested == SANDBOX_PACKAGES[image], f"{image}: pip installs {sorted(requested)}"
    allowed = dependency_closure(requested)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, json.dumps(sorted(allowed)), ENTRYPOINTS[image][-1]],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"{image}: {result.stderr[-2000:]}"


def test_the_code_check_knows_what_the_tester_image_provides() -> None:
    # The generator refuses code importing modules the tester cannot import; that list
    # must be exactly the top-level modules of what the tester image installs.
    installed = dependency_closure(installed_requirements("tester"))
    owners = importlib.metadata.packages_distributions()
    modules = {
        module
        for module, dists in owners.items()
        if any(canonicalize_name(dist) in installed for dist in dists)
    }
    assert modules == TESTER_MODULES
