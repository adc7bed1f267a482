"""The `GenerationRun` resource: one execution that turns a pinned Spec revision into tested code.

Contract: specs/CORE-001-resources.md, section "GenerationRun".

A run is an execution record, so its spec is immutable once created except `suspend`: what
ran must always be what the object says. Temperature is an integer in thousandths
(`temperatureMilli`), following the Kubernetes rule that spec fields never hold floats
(floats do not round-trip exactly, and runs must be reproducible).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from smartspec.api.gateway import RefusalCode

from .common import (
    AGE_COLUMN,
    CONDITIONS_LIST_SCHEMA,
    QUANTITY_PATTERN,
    AwareDatetime,
    CelRule,
    Condition,
    ContentHash,
    Credits,
    LocalObjectReference,
    PrinterColumn,
    Resource,
    ResourceName,
    WireModel,
)

KIND = "GenerationRun"
PLURAL = "generationruns"
MAX_ATTEMPTS = 10
MAX_TOKENS = 1_000_000
DEFAULT_BUDGET_NAME = "default"


class ConditionType(StrEnum):
    """Condition types a GenerationRun reports."""

    ADMITTED = "Admitted"
    """Spec Ready (and Approved unless allowDraft), budget available, model allowed."""
    GENERATED = "Generated"
    """The current attempt's generator Job finished and its artifacts are stored."""
    TESTED = "Tested"
    """The current attempt's test Job finished and its report is stored."""
    SUCCEEDED = "Succeeded"
    """Terminal: True when generated tests ran and passed, False when the run failed."""
    ARTIFACTS_DELETED = "ArtifactsDeleted"
    """Retention or deletion removed the run's stored files (True), or is retrying (False)."""


class Reason(StrEnum):
    """Reasons of GenerationRun conditions (PascalCase, stable).

    A failed attempt's Generated or Tested condition, and the Succeeded condition of a run
    whose last attempt failed, take the attempt's `FailureKind` as their reason.
    """

    ADMITTED = "Admitted"
    INVALID = "Invalid"
    """The API server admitted a run the operator's types refuse; the message says why."""
    SPEC_NOT_FOUND = "SpecNotFound"
    SPEC_NOT_READY = "SpecNotReady"
    SPEC_NOT_APPROVED = "SpecNotApproved"
    SPEC_DEPRECATED = "SpecDeprecated"
    SPEC_HASH_MISMATCH = "SpecHashMismatch"
    BUDGET_NOT_FOUND = "BudgetNotFound"
    GATEWAY_NOT_CONFIGURED = "GatewayNotConfigured"
    """The operator has no run-token keys: llm runs wait until it does."""
    BUDGET_EXHAUSTED = "BudgetExhausted"
    RUN_CAP_REACHED = "RunCapReached"
    """The run's own cap (maxCredits or the budget's perRunLimitCredits) is spent."""
    MODEL_NOT_ALLOWED = "ModelNotAllowed"
    AGENT_IMAGE_NOT_ALLOWED = "AgentImageNotAllowed"
    """The run's agent image matches none of the operator's allowed patterns."""
    GENERATING = "Generating"
    GENERATED = "Generated"
    TESTING = "Testing"
    TESTS_PASSED = "TestsPassed"
    RUN_TIMEOUT = "RunTimeout"
    SUSPENDED = "Suspended"
    RETENTION_EXPIRED = "RetentionExpired"
    """The files outlived the tenant's artifactSeconds and were deleted (CORE-001)."""
    DELETE_FAILED = "DeleteFailed"
    """Deleting the run's files failed; the operator retries with backoff."""
    ABANDONED = "Abandoned"
    """The run was let go (forced, or past the finalizer's deadline) with files left in the
    store; the retention sweep deletes them once it can."""


class Phase(StrEnum):
    """One-word summary for printer columns; conditions carry the detail."""

    PENDING = "Pending"
    GENERATING = "Generating"
    TESTING = "Testing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Backend(StrEnum):
    """Which generator writes the code."""

    LLM = "llm"
    """A model called through the SmartSpec LLM gateway."""
    BUILTIN = "builtin"
    """A deterministic generator for entity/endpoint specs; no model, zero credits."""
    AGENT = "agent"
    """A coding agent's image (Aider, OpenCode, ...) run in the generator sandbox; its model
    calls go through the gateway with the run token (CORE-004, "Agent backend")."""

    @property
    def calls_models(self) -> bool:
        """Whether the backend calls models: it needs a run token, a budget and a model."""
        return self is not Backend.BUILTIN


class SpecReference(WireModel):
    """The Spec a run builds from, optionally pinned to one content hash."""

    name: ResourceName
    """Name of the Spec in the run's namespace."""
    content_hash: ContentHash | None = None
    """Pin: build only from the revision with this content hash (sha256:<hex>)."""


class OutputFormat(StrEnum):
    """How the llm generator asks the model for files."""

    AUTO = "Auto"
    """JsonSchema where the gateway says the model enforces a JSON schema, else Text."""
    JSON_SCHEMA = "JsonSchema"
    """response_format json_schema: the provider constrains the answer to the files schema."""
    TEXT = "Text"
    """The format is only asked for in the prompt; a tolerant parser reads the answer."""


MAX_REPAIR_TURNS = 5
MAX_AGENT_ARGS = 64
MAX_AGENT_ENV = 64
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_AGENT_ENV = (
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "HOME",
    "TMPDIR",
)
"""Set by the operator in the agent's container; a run may not override them."""
RESERVED_AGENT_ENV_PREFIX = "SMARTSPEC_"
SECRET_LOOKING_ENV = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
"""Words in an env name that say it holds a secret: a run's env is stored in the run object
for anyone who can read it, so a secret never belongs there (the gateway holds the keys)."""


AgentArgument = Annotated[str, Field(min_length=1, max_length=4096)]


class EnvVar(WireModel):
    """One environment variable of the agent's container (a literal, non-secret value)."""

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN)
    """Variable name."""
    value: str = Field(default="", max_length=4096)
    """Literal value; $(NAME) references expand as in any container's env."""

    # The API server refuses them at apply time; agent_env_problem says the same to the
    # operator, which also reads runs admitted before these rules.
    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!self.name.matches('(?i)^("
            + "|".join([*RESERVED_AGENT_ENV, RESERVED_AGENT_ENV_PREFIX + ".*"])
            + ")$')",
            message="generator.agent.env: this name is set by the operator; a run cannot "
            "override it",
            field_path=".name",
        ),
        CelRule(
            rule="!self.name.matches('(?i)(" + "|".join(SECRET_LOOKING_ENV) + ")')",
            message="generator.agent.env: the name says it holds a secret; secrets never go "
            "in a run (the agent reaches models through the gateway with the run token)",
            field_path=".name",
        ),
    )


class AgentSettings(WireModel):
    """The coding agent run as the generator when backend is agent (CORE-004, "Agent
    backend"): the operator adds the gateway's URLs, the run token and the workspace."""

    image: str = Field(min_length=1, max_length=512)
    """Image holding the agent CLI; it needs /bin/sh (the launcher is a POSIX shell script)."""
    command: list[AgentArgument] = Field(min_length=1, max_length=MAX_AGENT_ARGS)
    """The agent's executable and leading arguments; $(SMARTSPEC_MODEL),
    $(SMARTSPEC_TASK_FILE), $(OPENAI_BASE_URL) and the other env names expand."""
    args: list[AgentArgument] = Field(default_factory=list, max_length=MAX_AGENT_ARGS)
    """More arguments, after command."""
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_AGENT_ENV,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Non-secret environment: no name that says KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL,
    none of the names the operator sets, nothing starting SMARTSPEC_."""
    timeout_seconds: int = Field(default=900, ge=30, le=86400, strict=True)
    """The agent is stopped (TERM, then KILL after 10 s) past this, and the attempt fails
    with AgentTimeout, keeping what it wrote for the next attempt; the attempt's own
    deadline still bounds it."""

    @model_validator(mode="after")
    def _env_is_not_ours_nor_secret(self) -> AgentSettings:
        for index, variable in enumerate(self.env):
            problem = agent_env_problem(variable.name)
            if problem is not None:
                raise ValueError(f"generator.agent.env[{index}] ({variable.name}): {problem}")
        names = [variable.name for variable in self.env]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"generator.agent.env names {', '.join(duplicates)} more than once")
        return self


def agent_env_problem(name: str) -> str | None:
    """Why a run may not set this env name for its agent, or None."""
    upper = name.upper()
    if upper in RESERVED_AGENT_ENV or upper.startswith(RESERVED_AGENT_ENV_PREFIX):
        return "set by the operator; a run cannot override it"
    for word in SECRET_LOOKING_ENV:
        if word in upper:
            return (
                f"the name says it holds a secret ({word}); secrets never go in a run: the "
                "agent reaches models through the gateway with the run token"
            )
    return None


class GeneratorSettings(WireModel):
    """How code is generated."""

    backend: Backend = Backend.LLM
    """llm (through the gateway) or builtin (deterministic, no model)."""
    model: str | None = Field(default=None, min_length=1, max_length=128)
    """Model name as the gateway knows it; required for the llm backend."""
    temperature_milli: int = Field(default=0, ge=0, le=2000, strict=True)
    """Sampling temperature in thousandths (200 means 0.2); 0 for the most repeatable output."""
    max_tokens: int = Field(default=4096, ge=1, le=MAX_TOKENS, strict=True)
    """Upper bound of completion tokens for each model call."""
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)
    """Sampling seed passed to providers that support one."""
    output_format: OutputFormat = OutputFormat.AUTO
    """Auto, JsonSchema or Text: how the model is asked for its files."""
    repair_turns: int = Field(default=1, ge=0, le=MAX_REPAIR_TURNS, strict=True)
    """Follow-up calls within one attempt when an answer cannot be used (each charged and
    ledgered like any call) before the attempt counts as failed."""
    feedback_max_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576, strict=True)
    """Bytes of failure detail and previous files the next attempt's prompt may carry."""
    agent: AgentSettings | None = None
    """The coding agent; required when backend is agent, refused otherwise."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.backend == 'builtin' || has(self.model)",
            message="generator.model is required when generator.backend is llm or agent",
            field_path=".model",
            reason="FieldValueRequired",
        ),
        CelRule(
            rule="(self.backend == 'agent') == has(self.agent)",
            message="generator.agent is required when generator.backend is agent, and only then",
            field_path=".agent",
        ),
    )

    @model_validator(mode="after")
    def _backend_needs(self) -> GeneratorSettings:
        if self.backend.calls_models and self.model is None:
            raise ValueError(
                f"generator.model is required when generator.backend is {self.backend.value}"
            )
        if (self.backend is Backend.AGENT) != (self.agent is not None):
            raise ValueError(
                "generator.agent is required when generator.backend is agent, and only then"
            )
        return self


class Timeouts(WireModel):
    """Wall-clock limits; exceeding one fails the attempt or the run with a reason."""

    attempt_seconds: int = Field(default=1800, ge=60, le=86400, strict=True)
    """Limit for one attempt (generation plus tests)."""
    total_seconds: int = Field(default=7200, ge=60, le=7 * 86400, strict=True)
    """Limit for the whole run, all attempts included."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.attemptSeconds <= self.totalSeconds",
            message="timeouts.attemptSeconds must not exceed timeouts.totalSeconds",
            field_path=".attemptSeconds",
        ),
    )

    @model_validator(mode="after")
    def _attempt_fits_total(self) -> Timeouts:
        if self.attempt_seconds > self.total_seconds:
            raise ValueError("timeouts.attemptSeconds must not exceed timeouts.totalSeconds")
        return self


Quantity = Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)]


class ResourceList(WireModel):
    """CPU and memory quantities, as in a container's resources."""

    cpu: Quantity | None = None
    """CPU quantity, e.g. 500m or 2."""
    memory: Quantity | None = None
    """Memory quantity, e.g. 512Mi."""


class ResourceRequirements(WireModel):
    """Requests and limits for a sandbox container."""

    requests: ResourceList | None = None
    """Guaranteed resources."""
    limits: ResourceList | None = None
    """Hard caps."""


class SandboxOverrides(WireModel):
    """Per-run changes to the sandbox Jobs; the operator's defaults apply otherwise."""

    runtime_class_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    """RuntimeClass for stronger isolation, e.g. gvisor or kata."""
    generator_resources: ResourceRequirements | None = None
    """Resources of the generator container."""
    tester_resources: ResourceRequirements | None = None
    """Resources of the tester container."""


class GenerationRunSpec(WireModel):
    """What to run. Immutable after creation except suspend."""

    spec_ref: SpecReference
    """The Spec to build from, optionally pinned to a content hash."""
    generator: GeneratorSettings
    """Backend, model and sampling settings."""
    budget_ref: LocalObjectReference = LocalObjectReference(name=DEFAULT_BUDGET_NAME)
    """CreditBudget in the run's namespace that pays for the model calls (default: default)."""
    max_credits: Credits | None = None
    """Cap on this run's credits; admission refuses a cap above the budget's perRunLimit."""
    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS, strict=True)
    """Attempts (generate, then test) before the run fails; failures feed the next attempt."""
    timeouts: Timeouts = Timeouts()
    """Per-attempt and total wall-clock limits."""
    sandbox: SandboxOverrides | None = None
    """RuntimeClass and resources for the sandbox Jobs."""
    replay_of: LocalObjectReference | None = None
    """Replay this earlier run from its stored transcripts, calling no provider."""
    allow_draft: bool = False
    """Admit a Spec that is still Draft (for trying a spec out before approval)."""
    suspend: bool = False
    """Pause: no new Job starts while true; the only field that may change after creation."""


def _immutable_rule(wire_name: str, always_present: bool) -> CelRule:
    if always_present:
        rule = f"self.{wire_name} == oldSelf.{wire_name}"
    else:
        rule = (
            f"has(self.{wire_name}) == has(oldSelf.{wire_name}) && "
            f"(!has(self.{wire_name}) || self.{wire_name} == oldSelf.{wire_name})"
        )
    return CelRule(
        rule=rule,
        message=f"spec.{wire_name} is immutable once the run exists; create a new run",
        field_path=f".{wire_name}",
        reason="FieldValueForbidden",
    )


# Everything but suspend is pinned at creation. Fields with a schema default are always
# present after API-server defaulting, so a plain equality is enough for them.
GenerationRunSpec.CEL_RULES = tuple(
    _immutable_rule(
        field.alias or name, always_present=field.is_required() or field.default is not None
    )
    for name, field in GenerationRunSpec.model_fields.items()
    if name != "suspend"
)


class FailureKind(StrEnum):
    """How an attempt failed: what the next attempt's prompt is told (CORE-004, "Feedback")."""

    ANSWER_NOT_PARSEABLE = "AnswerNotParseable"
    """The model's answer is not the JSON object asked for (prose, invalid JSON)."""
    ANSWER_INVALID = "AnswerInvalid"
    """The answer parses but breaks the format: wrong shape, no files, an unsafe path, an
    undeclared requirement id, over the size limits."""
    ANSWER_TRUNCATED = "AnswerTruncated"
    """The answer was cut off at maxTokens (finish_reason length)."""
    ANSWER_EMPTY = "AnswerEmpty"
    """The model answered with no text."""
    CODE_DOES_NOT_COMPILE = "CodeDoesNotCompile"
    """A generated Python file has a syntax error or imports a module that does not exist."""
    CREDENTIAL_DETECTED = "CredentialDetected"
    """The generated code holds something that looks like a credential."""
    MODEL_UNAVAILABLE = "ModelUnavailable"
    """Every route failed (rate limits, provider errors, timeouts) or the gateway was
    unreachable; nothing was charged for the failed call."""
    GATEWAY_REFUSED = "GatewayRefused"
    """The gateway refused the call on the budget or its policy: no attempt can follow."""
    TESTS_FAILED = "TestsFailed"
    """The generated tests ran and some failed, errored, or none ran."""
    TEST_TIMEOUT = "TestTimeout"
    """The tests did not finish within their time limit."""
    OOM_KILLED = "OOMKilled"
    """A sandbox container reached its memory limit and was killed."""
    ATTEMPT_TIMEOUT = "AttemptTimeout"
    """A sandbox Job ran past the attempt's deadline."""
    SANDBOX_ERROR = "SandboxError"
    """A sandbox program ended without its result: it crashed, or storage failed."""
    AGENT_FAILED = "AgentFailed"
    """The coding agent exited non-zero, was killed, or wrote no file."""
    AGENT_TIMEOUT = "AgentTimeout"
    """The coding agent ran past generator.agent.timeoutSeconds and was stopped."""


class AttemptResult(StrEnum):
    """Outcome of one attempt."""

    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    ERROR = "Error"


class AttemptStatus(WireModel):
    """One generate-then-test attempt."""

    number: int = Field(ge=1, le=MAX_ATTEMPTS)
    """Attempt number, from 1."""
    generator_job: str | None = Field(default=None, max_length=63)
    """Name of the generator Job, <run>-gen-<number>."""
    test_job: str | None = Field(default=None, max_length=63)
    """Name of the test Job, <run>-test-<number>."""
    result: AttemptResult = AttemptResult.RUNNING
    """Running, Passed, Failed (tests failed) or Error (the attempt could not complete)."""
    reason: str | None = Field(default=None, max_length=1024)
    """PascalCase reason of the result."""
    failure_kind: FailureKind | None = None
    """How the attempt failed; the next attempt's prompt names it."""
    message: str | None = Field(default=None, max_length=4096)
    """Human-readable detail of the result."""
    tests_passed: int | None = Field(default=None, ge=0)
    """Generated tests that passed."""
    tests_failed: int | None = Field(default=None, ge=0)
    """Generated tests that failed or errored."""
    credits: Credits | None = None
    """Credits charged to this attempt."""
    feedback_digest: ContentHash | None = None
    """sha256 of the failure report fed to the next attempt."""
    model_endpoint: str | None = Field(default=None, max_length=256, pattern=r"^https?://")
    """OpenAI-compatible URL of this attempt's local model server (its generator pod's
    sidecar); the gateway routes the attempt's calls for a local model there."""
    started_at: AwareDatetime | None = None
    """When the attempt's generator Job was created."""
    finished_at: AwareDatetime | None = None
    """When the attempt's outcome was known."""


class PinnedSpec(WireModel):
    """The exact Spec revision the run builds from, fixed at admission."""

    name: ResourceName
    """Spec name."""
    revision: int = Field(ge=1)
    """Spec revision number."""
    content_hash: ContentHash
    """sha256 of the revision's canonical content."""
    snapshot_uri: str = Field(max_length=1024)
    """Where that content is stored; the generator reads only this."""


class Usage(WireModel):
    """Model usage of the run; written by the gateway only."""

    calls: int = Field(default=0, ge=0)
    """Model calls made."""
    prompt_tokens: int = Field(default=0, ge=0)
    """Prompt tokens over all calls."""
    completion_tokens: int = Field(default=0, ge=0)
    """Completion tokens over all calls."""
    credits: Credits = 0
    """Credits settled over all calls."""


class Artifacts(WireModel):
    """Where the generated code of the latest attempt is stored."""

    uri: str = Field(max_length=1024)
    """S3 prefix of the files, s3://bucket/key/."""
    manifest_sha256: ContentHash
    """sha256 of the manifest listing every file with its own sha256 and size."""
    file_count: int = Field(ge=0)
    """Number of files generated."""


class Evidence(WireModel):
    """Proof that the generated code was tested: a run succeeds only with evidence."""

    report_uri: str = Field(max_length=1024)
    """S3 URI of the test report (JUnit XML and summary) stored beside the code."""
    tests_passed: int = Field(ge=0)
    """Tests that passed."""
    tests_failed: int = Field(ge=0)
    """Tests that failed or errored."""
    tests_skipped: int = Field(default=0, ge=0)
    """Tests that were skipped."""
    requirements_covered: int = Field(default=0, ge=0)
    """Requirements cited by at least one passing test."""
    requirements_total: int = Field(default=0, ge=0)
    """Requirements in the pinned Spec revision."""
    summary: str | None = Field(default=None, max_length=32)
    """passed/total, for the printer column."""


class Progress(WireModel):
    """Generation progress within the current attempt."""

    tasks_done: int = Field(ge=0)
    """Tasks (files) generated so far."""
    tasks_total: int = Field(ge=0)
    """Tasks planned."""


class Provenance(WireModel):
    """Where the run's signed attestation is stored (specs/CORE-005-provenance.md)."""

    uri: str = Field(max_length=1024)
    """S3 URI of the DSSE envelope (an in-toto Statement v1), stored write-once beside the
    run's artifacts."""
    sha256: ContentHash
    """sha256 of the envelope's bytes, as sha256:<hex>."""
    key_id: str = Field(max_length=128)
    """Id of the key that signed it: sha256 of the public key's DER SubjectPublicKeyInfo."""
    predicate_type: str = Field(max_length=256)
    """https://slsa.dev/provenance/v1 for a Succeeded run,
    https://smartspec.dev/provenance/failed-run/v1 for a Failed one."""


class Retention(WireModel):
    """What retention deleted of a finished run that is kept (CORE-001 "Retention")."""

    artifacts_deleted_at: AwareDatetime
    """When the files, manifests, feedback and reports were deleted; the attestation stays,
    and status.artifacts and status.evidence keep the digests an auditor checks."""
    objects_deleted: int = Field(ge=0)
    """Objects deleted."""
    bytes_deleted: int = Field(ge=0)
    """Bytes deleted."""


class GatewayRefusal(WireModel):
    """The latest refusal of this run's model calls on the budget or policy, recorded by the
    gateway before it answers (an agent's own handling of the error is not trusted to say)."""

    attempt: int = Field(ge=1, le=MAX_ATTEMPTS)
    """The attempt whose call was refused."""
    code: RefusalCode
    """budget_exhausted, run_cap_reached, budget_not_found or model_not_allowed."""
    message: str = Field(max_length=1024)
    """The refusal's message, figures included."""
    time: AwareDatetime
    """When the gateway refused."""


GATEWAY_STATUS_KEYS = frozenset({"usage", "refusal"})
"""The status keys the gateway writes; the run reconciler never sends them."""


class GenerationRunStatus(WireModel):
    """Observed state of a run. usage and refusal are written by the gateway, the rest by the
    run reconciler."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the status describes."""
    phase: Phase | None = None
    """Summary for printer columns; read conditions for detail."""
    attempt: int | None = Field(default=None, ge=0, le=MAX_ATTEMPTS)
    """The current (or last) attempt number."""
    attempts: list[AttemptStatus] = Field(
        default_factory=list,
        max_length=MAX_ATTEMPTS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["number"],
        },
    )
    """Every attempt so far, by number."""
    pinned_spec: PinnedSpec | None = None
    """The Spec revision fixed at admission."""
    usage: Usage | None = None
    """Model calls, tokens and credits (gateway-written)."""
    refusal: GatewayRefusal | None = None
    """The latest budget or policy refusal of the run's calls (gateway-written)."""
    artifacts: Artifacts | None = None
    """Generated code of the latest attempt."""
    evidence: Evidence | None = None
    """Test evidence of the latest attempt."""
    progress: Progress | None = None
    """Tasks done out of planned in the current attempt."""
    start_time: AwareDatetime | None = None
    """When the run was admitted."""
    completion_time: AwareDatetime | None = None
    """When the run reached Succeeded or Failed."""
    provenance: Provenance | None = None
    """The signed attestation of the finished run; absent until it is stored."""
    retention: Retention | None = None
    """Set when retention deleted the files of this kept run."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, json_schema_extra=CONDITIONS_LIST_SCHEMA
    )
    """Admitted, Generated, Tested, Succeeded, ArtifactsDeleted."""


class GenerationRun(Resource):
    """One generation of tested code from a pinned Spec (smartspec.dev/v1alpha1 GenerationRun)."""

    KIND: ClassVar[str] = KIND
    PLURAL: ClassVar[str] = PLURAL
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("genrun", "gr")
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Spec", "string", ".spec.specRef.name", "Spec built from"),
        PrinterColumn("Phase", "string", ".status.phase", "Summary of the conditions"),
        PrinterColumn("Attempt", "integer", ".status.attempt", "Current attempt"),
        PrinterColumn("Credits", "integer", ".status.usage.credits", "Credits settled"),
        PrinterColumn("Tests", "string", ".status.evidence.summary", "Tests passed/total"),
        PrinterColumn(
            "Last-Failure",
            "string",
            ".status.attempts[-1:].failureKind",
            "How the latest attempt failed",
        ),
        PrinterColumn("Model", "string", ".spec.generator.model", "Model", priority=1),
        PrinterColumn(
            "Reason",
            "string",
            '.status.conditions[?(@.type=="Succeeded")].reason',
            "Why it ended",
            priority=1,
        ),
        AGE_COLUMN,
    )

    kind: Literal["GenerationRun"]
    spec: GenerationRunSpec
    """What to run."""
    status: GenerationRunStatus | None = None
    """Observed state, written by the operator and the gateway."""
