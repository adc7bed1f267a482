"""The GenerationRun state machine: (run, spec, budget, observed Jobs, results, now) → decision.

Contract: specs/CORE-004-generation-runs.md, section "Behaviour".

Pure: the reconciler gathers observations (the Spec's status, the budget, the run's Jobs and
what the sandboxes left in S3), calls `decide`, then carries out the actions and writes the
status. Every action is idempotent by name (`<run>-gen-<k>`, `<run>-test-<k>`), so running
`decide` again after a crash anywhere asks for the same Jobs, never a second one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from smartspec.api.gateway import RefusalCode
from smartspec.api.sandbox import ExitCode
from smartspec.api.v1alpha1.common import ConditionStatus
from smartspec.api.v1alpha1.generationrun import (
    Artifacts,
    AttemptResult,
    AttemptStatus,
    ConditionType,
    Evidence,
    FailureKind,
    GenerationRun,
    GenerationRunStatus,
    Phase,
    PinnedSpec,
    Reason,
)
from smartspec.api.v1alpha1.spec import Lifecycle
from smartspec.logic.conditions import set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.naming import generator_job_name, test_job_name

# The run's reason when the gateway's refusal ended an attempt: retrying cannot help.
REFUSAL_REASONS = {
    RefusalCode.BUDGET_EXHAUSTED: Reason.BUDGET_EXHAUSTED,
    RefusalCode.RUN_CAP_REACHED: Reason.RUN_CAP_REACHED,
    RefusalCode.BUDGET_NOT_FOUND: Reason.BUDGET_NOT_FOUND,
    RefusalCode.MODEL_NOT_ALLOWED: Reason.MODEL_NOT_ALLOWED,
}


@dataclass(frozen=True)
class SpecObservation:
    """What admission needs of the Spec a run names."""

    lifecycle: Lifecycle
    ready: bool
    ready_reason: str
    revision: int | None
    content_hash: str | None
    snapshot_uri: str | None
    history: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    """contentHash -> (revision, snapshotUri) of the revisions the Spec still lists."""


@dataclass(frozen=True)
class BudgetObservation:
    """What admission needs of the run's CreditBudget."""

    exhausted: bool
    model_allowed: bool


class JobState(StrEnum):
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


OOM_KILLED = "OOMKilled"
"""A container's termination reason when its memory cgroup ran out (kubelet's wording)."""


@dataclass(frozen=True)
class JobObservation:
    """A sandbox Job as the reconciler saw it (with its pod's exit code when finished)."""

    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    """Why the container ended: its result line's message, else its termination message."""
    refusal: RefusalCode | None = None
    """The gateway's refusal code from the generator's result line, when one ended it."""
    failure_kind: FailureKind | None = None
    """How the sandbox program says its work failed (its result line's `kind`)."""
    feedback_sha256: str | None = None
    """sha256 of the generation feedback document the generator stored, if it did."""
    pod_ip: str | None = None
    """The running pod's IP (for a local model server sidecar)."""


@dataclass(frozen=True)
class ManifestObservation:
    """Read from the attempt's manifest after the generator Job succeeded."""

    artifacts_uri: str
    manifest_sha256: str
    file_count: int
    tasks_total: int


@dataclass(frozen=True)
class ReportObservation:
    """Read from the attempt's report/summary.json after the test Job finished."""

    report_uri: str
    summary_sha256: str
    passed: int
    failed: int
    skipped: int
    requirements_covered: int
    requirements_total: int
    all_passed: bool
    error: str | None = None
    """Why the tests gave no result (pytest killed at the time limit, or crashed), if so."""


class ActionKind(StrEnum):
    CREATE_GENERATOR_JOB = "CreateGeneratorJob"
    CREATE_TEST_JOB = "CreateTestJob"
    SUSPEND_JOBS = "SuspendJobs"
    RESUME_JOBS = "ResumeJobs"
    DELETE_ACTIVE_JOBS = "DeleteActiveJobs"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    attempt: int = 0


@dataclass
class Observations:
    """Everything `decide` reads besides the run itself."""

    spec: SpecObservation | None
    budget: BudgetObservation | None
    jobs: dict[str, JobObservation]
    generator_results: dict[int, ManifestObservation] = field(default_factory=dict)
    local_model_port: int | None = None
    """Port of the model-server sidecar when the run's model is a local one."""
    run_tokens_configured: bool = True
    """The operator has run-token keys, so it can give an llm run access to the gateway."""
    agent_image_allowed: bool = True
    """A platform admin allows the run's agent image (always True for other backends)."""
    test_results: dict[int, ReportObservation] = field(default_factory=dict)


@dataclass
class Decision:
    status: GenerationRunStatus
    actions: list[Action] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    requeue_seconds: float | None = None


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


def decide(run: GenerationRun, seen: Observations, now: datetime) -> Decision:
    """The next status and the actions that get the run there."""
    status = (run.status or GenerationRunStatus()).model_copy(deep=True)
    decision = Decision(status=status)
    status.observed_generation = run.metadata.generation
    if status.phase in TERMINAL_PHASES:
        return decision
    if status.pinned_spec is None:
        _admit(run, seen, now, decision)
        return decision
    if _timed_out(run, now):
        _fail(decision, Reason.RUN_TIMEOUT, "the run exceeded timeouts.totalSeconds", now)
        decision.actions.append(Action(ActionKind.DELETE_ACTIVE_JOBS))
        return decision
    if run.spec.suspend:
        if status.phase != Phase.SUSPENDED:
            status.phase = Phase.SUSPENDED
            decision.actions.append(Action(ActionKind.SUSPEND_JOBS))
            decision.events.append(EventRecord("Normal", Reason.SUSPENDED, "run suspended"))
        return decision
    if status.phase == Phase.SUSPENDED:
        attempt = _current(decision)
        status.phase = Phase.TESTING if attempt.test_job else Phase.GENERATING
        decision.actions.append(Action(ActionKind.RESUME_JOBS))
        decision.events.append(EventRecord("Normal", "Resumed", "run resumed"))
    _advance(run, seen, now, decision)
    return decision


def _set(
    decision: Decision,
    kind: ConditionType,
    value: ConditionStatus,
    *,
    why: tuple[str, str],
    now: datetime,
) -> None:
    reason, message = why
    decision.status.conditions = set_condition(
        decision.status.conditions,
        condition_type=kind,
        status=value,
        reason=reason,
        message=message[:32768],
        observed_generation=decision.status.observed_generation,
        now=now,
    )


def _admit(run: GenerationRun, seen: Observations, now: datetime, decision: Decision) -> None:
    refusal = _admission_refusal(run, seen)
    if refusal is not None:
        reason, message, terminal = refusal
        _set(decision, ConditionType.ADMITTED, "False", why=(reason, message), now=now)
        if terminal:
            _fail(decision, reason, message, now)
        else:
            decision.status.phase = Phase.PENDING
            decision.requeue_seconds = 10
        if not _already_reported(run, ConditionType.ADMITTED, reason):
            decision.events.append(EventRecord("Warning", reason, message))
        return
    if seen.spec is None:
        raise ValueError("admission passed without a Spec")
    revision, content_hash, snapshot_uri = _pinned_revision(run, seen.spec)
    if snapshot_uri is None:
        raise ValueError("admission passed without a snapshot")
    decision.status.pinned_spec = PinnedSpec(
        name=run.spec.spec_ref.name,
        revision=revision,
        content_hash=content_hash,
        snapshot_uri=snapshot_uri,
    )
    decision.status.start_time = now
    message = f"building Spec {run.spec.spec_ref.name} revision {revision} ({content_hash})"
    _set(decision, ConditionType.ADMITTED, "True", why=(Reason.ADMITTED, message), now=now)
    decision.events.append(EventRecord("Normal", Reason.ADMITTED, message))
    _start_attempt(run, 1, now, decision)


def _admission_refusal(run: GenerationRun, seen: Observations) -> tuple[Reason, str, bool] | None:
    """(reason, message, terminal) when the run may not start (yet)."""
    spec = seen.spec
    if spec is None:
        name = run.spec.spec_ref.name
        return Reason.SPEC_NOT_FOUND, f"Spec {name} does not exist in this namespace", False
    return (
        _agent_refusal(run, seen)
        or _spec_refusal(run, spec)
        or _gateway_refusal(run, seen)
        or _budget_refusal(run, seen.budget)
    )


def _agent_refusal(run: GenerationRun, seen: Observations) -> tuple[Reason, str, bool] | None:
    agent = run.spec.generator.agent
    if agent is None or seen.agent_image_allowed:
        return None
    return (
        Reason.AGENT_IMAGE_NOT_ALLOWED,
        f"agent image {agent.image} is not one the platform allows (the operator's "
        "SMARTSPEC_AGENT_IMAGES, chart value operator.sandbox.agentImages)",
        True,
    )


def _gateway_refusal(run: GenerationRun, seen: Observations) -> tuple[Reason, str, bool] | None:
    if run.spec.generator.backend.calls_models and not seen.run_tokens_configured:
        # An operator setting, not the run's fault: wait for the operator to be fixed.
        return (
            Reason.GATEWAY_NOT_CONFIGURED,
            "the operator has no run-token keys (SMARTSPEC_TOKEN_KEYS_FILE), so it cannot "
            "give an llm or agent run access to the gateway; builtin runs are not affected",
            False,
        )
    return None


def _spec_refusal(run: GenerationRun, spec: SpecObservation) -> tuple[Reason, str, bool] | None:
    name = run.spec.spec_ref.name
    pinned = run.spec.spec_ref.content_hash
    known = pinned is None or pinned == spec.content_hash or pinned in spec.history
    checks: list[tuple[bool, Reason, str, bool]] = [
        (
            spec.lifecycle is Lifecycle.DEPRECATED,
            Reason.SPEC_DEPRECATED,
            f"Spec {name} is Deprecated and accepts no new runs",
            True,
        ),
        (
            spec.lifecycle is not Lifecycle.APPROVED and not run.spec.allow_draft,
            Reason.SPEC_NOT_APPROVED,
            f"Spec {name} is {spec.lifecycle.value}; approve it or set allowDraft: true",
            False,
        ),
        (
            not known,
            Reason.SPEC_HASH_MISMATCH,
            f"Spec {name} has no revision with content hash {pinned}",
            True,
        ),
        (
            (pinned is None or pinned == spec.content_hash) and not spec.ready,
            Reason.SPEC_NOT_READY,
            f"Spec {name} is not Ready ({spec.ready_reason})",
            False,
        ),
        (
            pinned is not None and pinned in spec.history and spec.history[pinned][1] is None,
            Reason.SPEC_NOT_READY,
            f"revision {pinned} of Spec {name} has no snapshot",
            False,
        ),
    ]
    return next(((r, m, t) for failed, r, m, t in checks if failed), None)


def _budget_refusal(
    run: GenerationRun, budget: BudgetObservation | None
) -> tuple[Reason, str, bool] | None:
    if not run.spec.generator.backend.calls_models:
        return None  # the builtin generator calls no model and costs nothing
    if budget is None:
        name = run.spec.budget_ref.name
        return Reason.BUDGET_NOT_FOUND, f"CreditBudget {name} does not exist", False
    if not budget.model_allowed:
        model = run.spec.generator.model
        return Reason.MODEL_NOT_ALLOWED, f"model {model} is not allowed by the budget", True
    if budget.exhausted:
        return Reason.BUDGET_EXHAUSTED, "the budget has no credits left this period", True
    return None


def _pinned_revision(run: GenerationRun, spec: SpecObservation) -> tuple[int, str, str | None]:
    pinned = run.spec.spec_ref.content_hash
    if pinned is not None and pinned != spec.content_hash:
        revision, snapshot_uri = spec.history[pinned]
        return revision, pinned, snapshot_uri
    if spec.revision is None or spec.content_hash is None:
        raise ValueError("a Ready Spec has a revision and a content hash")
    return spec.revision, spec.content_hash, spec.snapshot_uri


def _already_reported(run: GenerationRun, kind: ConditionType, reason: str) -> bool:
    for condition in run.status.conditions if run.status else []:
        if condition.type == kind and condition.reason == reason:
            return True
    return False


def _timed_out(run: GenerationRun, now: datetime) -> bool:
    start = run.status.start_time if run.status else None
    return start is not None and now - start > timedelta(seconds=run.spec.timeouts.total_seconds)


def _fail(decision: Decision, reason: str, message: str, now: datetime) -> None:
    status = decision.status
    status.phase = Phase.FAILED
    status.completion_time = now
    _set(decision, ConditionType.SUCCEEDED, "False", why=(reason, message), now=now)
    decision.events.append(EventRecord("Warning", reason, message))


def _start_attempt(run: GenerationRun, attempt: int, now: datetime, decision: Decision) -> None:
    status = decision.status
    status.attempt = attempt
    status.phase = Phase.GENERATING
    status.attempts = [a for a in status.attempts if a.number != attempt] + [
        AttemptStatus(
            number=attempt,
            generator_job=generator_job_name(run.metadata.name, attempt),
            result=AttemptResult.RUNNING,
            started_at=now,
        )
    ]
    status.progress = None
    message = f"attempt {attempt} of {run.spec.max_attempts}: generating"
    _set(decision, ConditionType.GENERATED, "False", why=(Reason.GENERATING, message), now=now)
    decision.actions.append(Action(ActionKind.CREATE_GENERATOR_JOB, attempt))
    decision.events.append(EventRecord("Normal", Reason.GENERATING, message))


def _current(decision: Decision) -> AttemptStatus:
    number = decision.status.attempt or 1
    return next(a for a in decision.status.attempts if a.number == number)


def _advance(run: GenerationRun, seen: Observations, now: datetime, decision: Decision) -> None:
    if decision.status.phase == Phase.GENERATING:
        _advance_generation(run, seen, now, decision)
    else:
        _advance_testing(run, seen, now, decision)


def _advance_generation(
    run: GenerationRun, seen: Observations, now: datetime, decision: Decision
) -> None:
    status = decision.status
    attempt = _current(decision)
    job = seen.jobs.get(generator_job_name(run.metadata.name, attempt.number))
    if job is None:
        decision.actions.append(Action(ActionKind.CREATE_GENERATOR_JOB, attempt.number))
        return
    if job.state in {JobState.ACTIVE, JobState.SUSPENDED}:
        if seen.local_model_port is not None and job.pod_ip:
            # The gateway routes this attempt's calls to the sidecar in the generator pod.
            attempt.model_endpoint = f"http://{job.pod_ip}:{seen.local_model_port}/v1"
        return
    if job.state is JobState.FAILED:
        _attempt_failed_in_generation(run, job, now, decision)
        return
    result = seen.generator_results.get(attempt.number)
    if result is None:
        message = "the generator succeeded but left no manifest"
        _attempt_failed(run, now, decision, FailureKind.SANDBOX_ERROR, message)
        return
    status.artifacts = Artifacts(
        uri=result.artifacts_uri,
        manifest_sha256=result.manifest_sha256,
        file_count=result.file_count,
    )
    status.phase = Phase.TESTING
    attempt.test_job = test_job_name(run.metadata.name, attempt.number)
    message = f"attempt {attempt.number}: {result.file_count} files generated; testing"
    _set(decision, ConditionType.GENERATED, "True", why=(Reason.GENERATED, message), now=now)
    _set(decision, ConditionType.TESTED, "False", why=(Reason.TESTING, message), now=now)
    decision.actions.append(Action(ActionKind.CREATE_TEST_JOB, attempt.number))
    decision.events.append(EventRecord("Normal", Reason.GENERATED, message))


def _advance_testing(
    run: GenerationRun, seen: Observations, now: datetime, decision: Decision
) -> None:
    status = decision.status
    attempt = _current(decision)
    job = seen.jobs.get(test_job_name(run.metadata.name, attempt.number))
    if job is None:
        decision.actions.append(Action(ActionKind.CREATE_TEST_JOB, attempt.number))
        return
    if job.state in {JobState.ACTIVE, JobState.SUSPENDED}:
        return
    report = seen.test_results.get(attempt.number)
    if report is not None:
        status.evidence = Evidence(
            report_uri=report.report_uri,
            tests_passed=report.passed,
            tests_failed=report.failed,
            tests_skipped=report.skipped,
            requirements_covered=report.requirements_covered,
            requirements_total=report.requirements_total,
            summary=f"{report.passed}/{report.passed + report.failed}",
        )
        attempt.tests_passed, attempt.tests_failed = report.passed, report.failed
        # The next attempt is fed this report: it exists, so it may be read.
        attempt.feedback_digest = report.summary_sha256
    if job.state is JobState.SUCCEEDED and report is not None and report.all_passed:
        attempt.result = AttemptResult.PASSED
        attempt.finished_at = now
        message = f"attempt {attempt.number}: {report.passed} tests passed"
        _set(decision, ConditionType.TESTED, "True", why=(Reason.TESTS_PASSED, message), now=now)
        _set(decision, ConditionType.SUCCEEDED, "True", why=(Reason.TESTS_PASSED, message), now=now)
        status.phase = Phase.SUCCEEDED
        status.completion_time = now
        decision.events.append(EventRecord("Normal", Reason.TESTS_PASSED, message))
        return
    kind, message = _test_failure(job, report)
    message = f"attempt {attempt.number}: {message}"
    refusal = refusal_of_attempt(run, attempt.number)
    if refusal is None:
        _attempt_failed(run, now, decision, kind, message)
        return
    # The budget or its policy refused a call of this attempt (an agent may go on to its
    # tests regardless): another attempt would be refused too.
    message += f"; the gateway refused one of its calls ({refusal.value})"
    reason = REFUSAL_REASONS[refusal]
    _attempt_failed(run, now, decision, kind, message, reason=reason, retry=False)


def refusal_of_attempt(run: GenerationRun, number: int) -> RefusalCode | None:
    """The gateway's budget or policy refusal of one of this attempt's calls, as it wrote it
    on the run before answering (status.refusal), if any."""
    refusal = run.status.refusal if run.status is not None else None
    return refusal.code if refusal is not None and refusal.attempt == number else None


def _test_failure(job: JobObservation, report: ReportObservation | None) -> tuple[FailureKind, str]:
    """How a test Job that did not pass failed, from its structured results."""
    if job.reason == OOM_KILLED:
        return FailureKind.OOM_KILLED, "the test container ran out of memory (OOMKilled)"
    if job.reason == "DeadlineExceeded":
        return FailureKind.TEST_TIMEOUT, "the test Job ran past the attempt's deadline"
    if job.failure_kind is FailureKind.TEST_TIMEOUT:
        return FailureKind.TEST_TIMEOUT, report.error if report and report.error else (
            job.message or "the tests did not finish within their time limit"
        )
    if report is not None and job.exit_code == ExitCode.TESTS_FAILED:
        if report.error is not None:
            return FailureKind.TESTS_FAILED, report.error
        total = report.passed + report.failed
        return FailureKind.TESTS_FAILED, f"{report.failed} of {total} tests failed"
    detail = job.message or f"the test Job failed ({job.reason or 'no report'})"
    return job.failure_kind or FailureKind.SANDBOX_ERROR, detail


def _attempt_failed_in_generation(
    run: GenerationRun, job: JobObservation, now: datetime, decision: Decision
) -> None:
    detail = job.message or job.reason or "the generator Job failed"
    if job.reason == OOM_KILLED:
        message = "the generator container ran out of memory (OOMKilled at its memory limit)"
        _attempt_failed(run, now, decision, FailureKind.OOM_KILLED, message)
    elif job.reason == "DeadlineExceeded":
        message = "the attempt exceeded its deadline"
        _attempt_failed(run, now, decision, FailureKind.ATTEMPT_TIMEOUT, message)
    elif (refusal := job.refusal or refusal_of_attempt(run, _current(decision).number)) is not None:
        # The budget or its policy refused: another attempt would be refused too. An agent
        # does not say so itself; the gateway wrote it on the run (status.refusal).
        kind, reason = FailureKind.GATEWAY_REFUSED, REFUSAL_REASONS[refusal]
        if job.refusal is None:
            detail += f"; the gateway refused one of its calls ({refusal.value})"
        _attempt_failed(run, now, decision, kind, detail, reason=reason, retry=False)
    else:
        kind = job.failure_kind or FailureKind.SANDBOX_ERROR
        _current(decision).feedback_digest = job.feedback_sha256
        _attempt_failed(run, now, decision, kind, detail)


def _attempt_failed(
    run: GenerationRun,
    now: datetime,
    decision: Decision,
    kind: FailureKind,
    message: str,
    *,
    reason: str | None = None,
    retry: bool = True,
) -> None:
    """The current attempt failed this way: record it, report it once, and go on to the
    next attempt (its prompt is told `kind` and `message`) or end the run."""
    attempt = _current(decision)
    testing = decision.status.phase == Phase.TESTING
    attempt.result = AttemptResult.FAILED if testing else AttemptResult.ERROR
    attempt.failure_kind = kind
    attempt.reason = reason or kind.value
    attempt.message = message[:4096]
    attempt.finished_at = now
    condition = ConditionType.TESTED if testing else ConditionType.GENERATED
    why = (attempt.reason, message[:32768])
    _set(decision, condition, "False", why=why, now=now)
    decision.events.append(EventRecord("Warning", attempt.reason, message))
    if retry and attempt.number < run.spec.max_attempts:
        _start_attempt(run, attempt.number + 1, now, decision)
        return
    if retry:
        message = f"{message}; no attempts left ({run.spec.max_attempts})"
    _fail(decision, attempt.reason, message, now)


@dataclass(frozen=True)
class FeedbackPlan:
    """What attempt k is told of attempt k-1 and which of its documents it may read."""

    attempt: int
    kind: FailureKind
    message: str
    report_sha256: str | None
    """The previous attempt's test report, when its tests ran and left one."""
    generation_sha256: str | None
    """The previous generator's feedback document, when it failed and stored one."""
    with_files: bool
    """The previous attempt generated code (its manifest and files exist)."""


def feedback_plan(status: GenerationRunStatus, attempt: int) -> FeedbackPlan | None:
    """The feedback for `attempt`, from the previous attempt's recorded outcome.

    `feedbackDigest` names the test report when the attempt reached testing (it has a test
    Job), else the generator's feedback document: so a document is offered only when the
    attempt that should have written it did.
    """
    previous = next((a for a in status.attempts if a.number == attempt - 1), None)
    if previous is None or previous.failure_kind is None:
        return None
    tested = previous.test_job is not None
    return FeedbackPlan(
        attempt=previous.number,
        kind=previous.failure_kind,
        message=previous.message or "",
        report_sha256=previous.feedback_digest if tested else None,
        generation_sha256=None if tested else previous.feedback_digest,
        with_files=tested,
    )


def next_look(
    run: GenerationRun, decision: Decision, now: datetime, resync_seconds: float
) -> float | None:
    """Seconds until the run must be looked at again though nothing reported a change:
    a recheck it asked for, its total timeout, or the slow resync of a live run (a safety
    net for a lost event). None for a finished run: it costs nothing from now on."""
    status = decision.status
    if status.phase in TERMINAL_PHASES:
        return None
    looks = [] if run.spec.suspend else [resync_seconds]
    if decision.requeue_seconds is not None:
        looks.append(decision.requeue_seconds)
    if status.start_time is not None:
        ends = status.start_time + timedelta(seconds=run.spec.timeouts.total_seconds)
        looks.append(max(0.0, (ends - now).total_seconds()) + 0.5)
    return min(looks) if looks else None


def settled(run: GenerationRun, seen: Observations, decision: Decision, now: datetime) -> bool:
    """Whether deciding again on the status `decision` writes, with the same observations,
    changes nothing and asks only for what this decision already did: the echo of that
    write then carries no news, and the reconciler need not read the run again for it."""
    after = run.model_copy(update={"status": decision.status})
    again = decide(after, seen, now)
    return (
        not again.events
        and again.status.to_wire() == decision.status.to_wire()
        and all(action in decision.actions for action in again.actions)
    )


def is_terminal(run: GenerationRun) -> bool:
    return run.status is not None and run.status.phase in TERMINAL_PHASES
