"""The documents of the sandbox contract: instructions, manifest and test report.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract", "Manifest" and
"Test report".

Every model is camelCase on the wire and refuses unknown fields, so a typo in what the
operator writes fails loudly in the sandbox instead of being silently ignored. Error
messages name fields, never their values: the instructions carry a run token and presigned
URLs, and neither may end up in a log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from smartspec.api.v1alpha1.common import (
    CONTENT_HASH_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    NAME_MAX_LENGTH,
)
from smartspec.api.v1alpha1.generationrun import MAX_ATTEMPTS, MAX_TOKENS, Backend
from smartspec.api.v1alpha1.spec import REQUIREMENT_ID_PATTERN

__all__ = [
    "INSTRUCTIONS_ENV",
    "INSTRUCTIONS_FILE_ENV",
    "MANIFEST_FORMAT",
    "REPORT_FORMAT",
    "FeedbackSource",
    "FileRef",
    "GatewayAccess",
    "GeneratorInstructions",
    "GeneratorSettings",
    "InstructionsError",
    "Limits",
    "Manifest",
    "ManifestFile",
    "ManifestGenerator",
    "ManifestRef",
    "ManifestSpec",
    "ManifestTask",
    "ManifestUsage",
    "RequirementEvidence",
    "RunRef",
    "SpecRef",
    "TestCounts",
    "TestFailure",
    "TestReport",
    "TesterInstructions",
    "UploadPolicy",
    "check_relative_path",
    "describe_validation_error",
    "load_instructions",
    "parse_instructions",
]

INSTRUCTIONS_FILE_ENV = "SMARTSPEC_INSTRUCTIONS_FILE"
INSTRUCTIONS_ENV = "SMARTSPEC_INSTRUCTIONS"
MANIFEST_FORMAT = "smartspec.dev/manifest/v1"
REPORT_FORMAT = "smartspec.dev/test-report/v1"

MAX_INSTRUCTIONS_BYTES = 4 * 1024 * 1024
"""Instructions list one URL per file; a few MiB is far beyond any real run."""
MAX_PATH_LENGTH = 512
MAX_FILES = 10_000
URL_PATTERN = r"^https?://[^\s]+$"
SHA256_PATTERN = CONTENT_HASH_PATTERN

Url = Annotated[str, Field(min_length=1, max_length=16_384, pattern=URL_PATTERN)]
Sha256 = Annotated[str, Field(max_length=71, pattern=SHA256_PATTERN)]
RequirementId = Annotated[str, Field(max_length=64, pattern=REQUIREMENT_ID_PATTERN)]


def check_relative_path(path: str) -> str:
    """`path` if it is a safe relative object path, else ValueError saying why.

    CORE-004: paths are relative, use `/`, contain no `..` and name regular files. The
    rule is deliberately literal (any `..` substring is refused, not only a `..` segment):
    the same string becomes part of an S3 key and of a file name in the tester's directory.
    """
    reason = _path_problem(path)
    if reason is not None:
        raise ValueError(f"path {reason}")
    return path


_PATH_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda path: not path, "is empty"),
    (lambda path: len(path) > MAX_PATH_LENGTH, f"is longer than {MAX_PATH_LENGTH} characters"),
    (lambda path: ".." in path, "contains '..'"),
    (lambda path: path.startswith("/"), "is absolute (starts with '/')"),
    (lambda path: "\\" in path, "contains a backslash; use '/'"),
    (lambda path: path.endswith("/"), "ends with '/' (it must name a file)"),
    (
        lambda path: any(ord(char) < 32 or ord(char) == 127 for char in path),
        "contains a control character",
    ),
    (
        lambda path: any(segment in ("", ".") for segment in path.split("/")),
        "has an empty or '.' segment",
    ),
    # "C:" or "scheme:" prefixes are absolute on some systems and confusing everywhere.
    (lambda path: ":" in path.split("/", 1)[0], "starts with a drive or scheme prefix"),
)


def _path_problem(path: str) -> str | None:
    return next((reason for rule, reason in _PATH_RULES if rule(path)), None)


class ContractModel(BaseModel):
    """Base of the sandbox documents: camelCase aliases, unknown fields refused, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-compatible camelCase form (nulls kept: the contract shows them)."""
        return self.model_dump(mode="json", by_alias=True)


# ------------------------------------------------------------------ instructions


class RunRef(ContractModel):
    """Which run and attempt the sandbox works for."""

    namespace: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)
    uid: str = Field(min_length=1, max_length=128)
    attempt: int = Field(ge=1, le=MAX_ATTEMPTS, strict=True)


class SpecRef(ContractModel):
    """The pinned Spec revision and a presigned GET of its canonical content."""

    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)
    revision: int = Field(ge=1, strict=True)
    content_hash: Sha256
    snapshot_url: Url


class GeneratorSettings(ContractModel):
    """Backend, model and sampling settings, copied from the run's spec.generator."""

    backend: Backend
    model: str | None = Field(default=None, min_length=1, max_length=128)
    temperature_milli: int = Field(default=0, ge=0, le=2000, strict=True)
    max_tokens: int = Field(default=4096, ge=1, le=MAX_TOKENS, strict=True)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)


class GatewayAccess(ContractModel):
    """Where the gateway listens and the run token that authenticates this run."""

    base_url: Url
    token: str = Field(min_length=1, max_length=8192, repr=False)


class FeedbackSource(ContractModel):
    """A presigned GET of the previous attempt's report/summary.json."""

    url: Url


class UploadPolicy(ContractModel):
    """An S3 presigned POST whose policy allows any key starting with `keyPrefix`."""

    url: Url
    fields: dict[str, str] = Field(repr=False)
    key_prefix: str = Field(min_length=1, max_length=1024)

    @field_validator("key_prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        if not value.endswith("/") or value.startswith("/") or ".." in value:
            raise ValueError("keyPrefix must be relative, contain no '..' and end with '/'")
        return value


class Limits(ContractModel):
    """Bounds on what a generator may upload."""

    max_files: int = Field(default=200, ge=1, le=MAX_FILES, strict=True)
    max_file_bytes: int = Field(default=262_144, ge=1, strict=True)
    max_total_bytes: int = Field(default=2_097_152, ge=1, strict=True)


class GeneratorInstructions(ContractModel):
    """Everything the generator needs (CORE-004, generator instructions)."""

    role: Literal["generator"]
    run: RunRef
    spec: SpecRef
    generator: GeneratorSettings
    gateway: GatewayAccess | None = None
    feedback: FeedbackSource | None = None
    upload: UploadPolicy
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _backend_matches_gateway(self) -> GeneratorInstructions:
        if self.generator.backend is Backend.LLM:
            if self.gateway is None:
                raise ValueError("gateway is required for the llm backend")
            if self.generator.model is None:
                raise ValueError("generator.model is required for the llm backend")
        elif self.gateway is not None:
            # The builtin backend calls no model, so it must not be handed a run token.
            raise ValueError("gateway must be null for the builtin backend")
        return self


class ManifestRef(ContractModel):
    """A presigned GET of manifest.json and the sha256 the generator reported for it."""

    url: Url
    sha256: Sha256


class FileRef(ContractModel):
    """One generated file to fetch, with the sha256 and size the manifest gives it."""

    path: str
    sha256: Sha256
    size: int = Field(ge=0, strict=True)
    url: Url

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return check_relative_path(value)


class TesterInstructions(ContractModel):
    """Everything the tester needs (CORE-004, tester instructions)."""

    __test__ = False  # not a pytest test class, whatever its name

    role: Literal["tester"]
    run: RunRef
    spec: SpecRef
    manifest: ManifestRef
    files: list[FileRef] = Field(min_length=1, max_length=MAX_FILES)
    upload: UploadPolicy
    timeout_seconds: int = Field(default=600, ge=1, le=86_400, strict=True)

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, value: list[FileRef]) -> list[FileRef]:
        seen: set[str] = set()
        for entry in value:
            if entry.path in seen:
                raise ValueError(f"path {entry.path!r} is listed twice")
            seen.add(entry.path)
        return value


class InstructionsError(Exception):
    """The instructions are missing, unreadable or invalid; `problems` names each field."""

    def __init__(self, source: str, summary: str, problems: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems or []
        detail = "".join(f"\n  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {summary}{detail}")


RoleT = TypeVar("RoleT", GeneratorInstructions, TesterInstructions)


def load_instructions(
    environ: Mapping[str, str] | None = None,
) -> GeneratorInstructions | TesterInstructions:
    """Read the instructions from SMARTSPEC_INSTRUCTIONS_FILE, else SMARTSPEC_INSTRUCTIONS."""
    env = os.environ if environ is None else environ
    file_name = env.get(INSTRUCTIONS_FILE_ENV, "")
    if file_name:
        source = f"{INSTRUCTIONS_FILE_ENV} ({file_name})"
        try:
            with Path(file_name).open("rb") as handle:
                raw = handle.read(MAX_INSTRUCTIONS_BYTES + 1)
        except OSError as error:
            raise InstructionsError(source, f"cannot read the file: {error.strerror}") from None
        if len(raw) > MAX_INSTRUCTIONS_BYTES:
            raise InstructionsError(source, f"larger than {MAX_INSTRUCTIONS_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InstructionsError(source, "not UTF-8 text") from None
        return parse_instructions(text, source)
    text = env.get(INSTRUCTIONS_ENV, "")
    if text:
        return parse_instructions(text, INSTRUCTIONS_ENV)
    raise InstructionsError(
        INSTRUCTIONS_ENV, f"no instructions: neither {INSTRUCTIONS_FILE_ENV} nor it is set"
    )


def load_role_instructions(
    environ: Mapping[str, str] | None, expected: type[RoleT], program: str
) -> RoleT:
    """The instructions, which must be for `program`'s role; ProgramExit(BAD_INPUT) if not."""
    from smartspec.sandbox import ExitCode, ProgramExit  # noqa: PLC0415 (the package imports us)

    try:
        instructions = load_instructions(environ)
    except InstructionsError as error:
        raise ProgramExit(ExitCode.BAD_INPUT, "Error", str(error)) from None
    if not isinstance(instructions, expected):
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            f"the instructions have role {instructions.role!r}; this program is the {program}",
        )
    return instructions


def parse_instructions(text: str, source: str) -> GeneratorInstructions | TesterInstructions:
    """Validate one instructions document; `source` names where it came from in errors."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InstructionsError(
            source, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(document, dict):
        raise InstructionsError(source, "not a JSON object")
    role = document.get("role")
    model: type[GeneratorInstructions] | type[TesterInstructions]
    if role == "generator":
        model = GeneratorInstructions
    elif role == "tester":
        model = TesterInstructions
    else:
        raise InstructionsError(
            source, "invalid instructions", ["role: must be 'generator' or 'tester'"]
        )
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise InstructionsError(
            source, f"invalid {role} instructions", describe_validation_error(error)
        ) from None


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem, `field.path: message`, without the offending values."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        location = ""
        for part in item["loc"]:
            location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{location or '(document)'}: {message}")
    return problems


# ------------------------------------------------------------------ manifest


class ManifestRun(ContractModel):
    namespace: str
    name: str
    uid: str
    attempt: int = Field(ge=1)


class ManifestSpec(ContractModel):
    name: str
    revision: int = Field(ge=1)
    content_hash: Sha256


class ManifestGenerator(ContractModel):
    backend: Backend
    model: str | None
    version: str


class ManifestFile(ContractModel):
    path: str
    sha256: Sha256
    size: int = Field(ge=0, strict=True)
    requirements: list[RequirementId] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return check_relative_path(value)


class ManifestTask(ContractModel):
    file: str
    requirements: list[RequirementId] = Field(default_factory=list)
    description: str = Field(max_length=4000)


class ManifestUsage(ContractModel):
    calls: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class Manifest(ContractModel):
    """manifest.json: what the generator produced, each file with its sha256 and size."""

    format: Literal["smartspec.dev/manifest/v1"]
    run: ManifestRun
    spec: ManifestSpec
    generator: ManifestGenerator
    files: list[ManifestFile] = Field(max_length=MAX_FILES)
    tasks: list[ManifestTask] = Field(default_factory=list)
    usage: ManifestUsage

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, value: list[ManifestFile]) -> list[ManifestFile]:
        paths = [entry.path for entry in value]
        duplicated = sorted({path for path in paths if paths.count(path) > 1})
        if duplicated:
            raise ValueError(f"paths listed more than once: {', '.join(duplicated)}")
        return value


# ------------------------------------------------------------------ test report


class TestCounts(ContractModel):
    __test__ = False  # not a pytest test class, whatever its name

    passed: int = Field(ge=0)
    failed: int = Field(ge=0)
    errors: int = Field(ge=0)
    skipped: int = Field(ge=0)


class RequirementEvidence(ContractModel):
    tests: list[str]
    passed: bool


class TestFailure(ContractModel):
    __test__ = False

    test: str
    message: str = Field(max_length=2000)


class TestReport(ContractModel):
    """report/summary.json: counts, requirement coverage and failure messages."""

    __test__ = False

    format: Literal["smartspec.dev/test-report/v1"]
    result: Literal["passed", "failed", "error"]
    tests: TestCounts
    requirements: dict[str, RequirementEvidence]
    failures: list[TestFailure]
    duration_seconds: float = Field(ge=0)
