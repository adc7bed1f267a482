"""The documents of the sandbox contract: instructions, manifest, test report, feedback.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract", "Manifest", "Test
report" and "Feedback".

Every model is camelCase on the wire and refuses unknown fields, so a typo in what the
operator writes fails loudly in the sandbox instead of being silently ignored. Error
messages name fields, never their values: the instructions carry a run token and presigned
URLs, and neither may end up in a log. The builders make these documents, the sandbox
programs read and write them, and the reconciler reads the manifest and the report with
the same models.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from smartspec.api.v1alpha1.common import (
    CONTENT_HASH_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    NAME_MAX_LENGTH,
)
from smartspec.api.v1alpha1.generationrun import (
    MAX_ATTEMPTS,
    MAX_REPAIR_TURNS,
    MAX_TOKENS,
    Backend,
    FailureKind,
    OutputFormat,
)
from smartspec.api.v1alpha1.spec import REQUIREMENT_ID_PATTERN

from .paths import check_relative_path

MANIFEST_FORMAT = "smartspec.dev/manifest/v1"
REPORT_FORMAT = "smartspec.dev/test-report/v1"
GENERATION_FEEDBACK_FORMAT: Final = "smartspec.dev/generation-feedback/v1"
SESSION_FAILURE = "(pytest session)"
"""The test id of a report's failure about the whole pytest session (it gave no result)."""
MAX_FILES = 10_000
URL_PATTERN = r"^https?://[^\s]+$"
SHA256_PATTERN = CONTENT_HASH_PATTERN

Url = Annotated[str, Field(min_length=1, max_length=16_384, pattern=URL_PATTERN)]
Sha256 = Annotated[str, Field(max_length=71, pattern=SHA256_PATTERN)]
RequirementId = Annotated[str, Field(max_length=64, pattern=REQUIREMENT_ID_PATTERN)]


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
    output_format: OutputFormat = OutputFormat.AUTO
    repair_turns: int = Field(default=1, ge=0, le=MAX_REPAIR_TURNS, strict=True)
    feedback_max_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576, strict=True)
    agent_image: str | None = Field(default=None, min_length=1, max_length=512)
    """The agent backend's image (for the manifest); set only for that backend."""


AGENT_STATUS_FORMAT = "smartspec.dev/agent-status/v1"


class AgentStatus(ContractModel):
    """How the coding agent ended, as its launcher recorded it (CORE-004, "Agent backend").

    The agent runs as the same user and could rewrite this file: it only chooses the failure
    kind reported; the files are scanned and tested whatever it says."""

    format: Literal["smartspec.dev/agent-status/v1"]
    exit_code: int = Field(ge=0, le=255, strict=True)
    """The agent's exit status; 128+N when signal N ended it."""
    timed_out: bool
    """The launcher's watchdog stopped it at its timeout."""
    started_at: int = Field(ge=0, strict=True)
    """Unix seconds (0 when the image has no `date`)."""
    finished_at: int = Field(ge=0, strict=True)


class GatewayAccess(ContractModel):
    """Where the gateway listens and the run token that authenticates this run."""

    base_url: Url
    token: str = Field(min_length=1, max_length=8192, repr=False)


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


class DocumentRef(ContractModel):
    """A presigned GET of one stored document and the sha256 it must have."""

    url: Url
    sha256: Sha256


class Feedback(ContractModel):
    """What the previous attempt left for this one: how it failed, and what to repair from.

    Only documents that attempt produced are named: `report` when its tests ran,
    `generation` when its generator failed and said why, `files` when it generated code.
    """

    attempt: int = Field(ge=1, le=MAX_ATTEMPTS, strict=True)
    kind: FailureKind
    message: str = Field(max_length=4096)
    report: DocumentRef | None = None
    generation: DocumentRef | None = None
    files: list[FileRef] = Field(default_factory=list, max_length=MAX_FILES)


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
    feedback: Feedback | None = None
    upload: UploadPolicy
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _backend_matches_gateway(self) -> GeneratorInstructions:
        backend = self.generator.backend
        if backend.calls_models:
            if self.gateway is None:
                raise ValueError(f"gateway is required for the {backend.value} backend")
            if self.generator.model is None:
                raise ValueError(f"generator.model is required for the {backend.value} backend")
        elif self.gateway is not None:
            # The builtin backend calls no model, so it must not be handed a run token.
            raise ValueError("gateway must be null for the builtin backend")
        return self


class ManifestRef(ContractModel):
    """A presigned GET of manifest.json and the sha256 the generator reported for it."""

    url: Url
    sha256: Sha256


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
    agent_image: str | None = None
    """The agent backend's image, as the run named it."""


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
    output: str = Field(default="", max_length=2000)
    """What the test printed (captured stdout and stderr), cut to its end."""


class TestReport(ContractModel):
    """report/summary.json: counts, requirement coverage and failure messages."""

    __test__ = False

    format: Literal["smartspec.dev/test-report/v1"]
    result: Literal["passed", "failed", "error"]
    tests: TestCounts
    requirements: dict[str, RequirementEvidence]
    failures: list[TestFailure]
    duration_seconds: float = Field(ge=0)


# ------------------------------------------------------------------ generation feedback


class FeedbackFile(ContractModel):
    """One file of a failed generation, for the next attempt to repair."""

    path: str
    content: str
    redacted: bool = False
    """Lines that looked like a credential were replaced before the file was stored."""

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        return check_relative_path(value)


class CredentialFinding(ContractModel):
    """Where a credential was found, and by which rule; never the text itself."""

    location: str = Field(max_length=600)
    rule: str = Field(max_length=64)


class GenerationFeedback(ContractModel):
    """feedback/generation.json: why a generation failed, written by the generator.

    The next attempt's generator reads it (through `Feedback.generation`) and shows the
    model what went wrong and, when the answer had files, those files to repair.
    """

    format: Literal["smartspec.dev/generation-feedback/v1"]
    kind: FailureKind
    message: str = Field(max_length=4096)
    files: list[FeedbackFile] = Field(default_factory=list, max_length=MAX_FILES)
    answer_excerpt: str | None = Field(default=None, max_length=8192)
    """The start and end of an answer that could not be read as files."""
    findings: list[CredentialFinding] = Field(default_factory=list, max_length=100)
