"""The GenerationRun state machine (specs/CORE-004-generation-runs.md, "Behaviour")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.gateway import RefusalCode
from smartspec.api.v1alpha1 import GenerationRun
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.api.v1alpha1.spec import Lifecycle
from smartspec.logic.conditions import find_condition
from smartspec.logic.run_machine import (
    Action,
    ActionKind,
    BudgetObservation,
    Decision,
    FeedbackPlan,
    JobObservation,
    JobState,
    ManifestObservation,
    Observations,
    ReportObservation,
    SpecObservation,
    decide,
    feedback_plan,
    settled,
)

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HASH = "sha256:" + "a" * 64
OLD_HASH = "sha256:" + "b" * 64
READY_SPEC = SpecObservation(
    lifecycle=Lifecycle.APPROVED,
    ready=True,
    ready_reason="SnapshotStored",
    revision=3,
    content_hash=HASH,
    snapshot_uri="s3://b/ns/specs/sha256/aaa.json",
    history={OLD_HASH: (2, "s3://b/ns/specs/sha256/bbb.json"), HASH: (3, "s3://b/x")},
)
OK_BUDGET = BudgetObservation(exhausted=False, model_allowed=True)


def load_run(name: str = "generationrun-llm.yaml", **spec: Any) -> GenerationRun:
    document = yaml.safe_load((REPO / "examples/todo-service" / name).read_text())
    document["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    document["spec"].update(spec)
    return GenerationRun.model_validate(document)


def step(
    run: GenerationRun, seen: Observations, now: datetime = T0
) -> tuple[GenerationRun, Decision]:
    decision = decide(run, seen, now)
    return run.model_copy(update={"status": decision.status}), decision


def seen(**overrides: Any) -> Observations:
    observations = Observations(spec=READY_SPEC, budget=OK_BUDGET, jobs={})
    for name, value in overrides.items():
        setattr(observations, name, value)
    return observations


def reason(decision: Decision, kind: str) -> str | None:
    condition = find_condition(decision.status.conditions, kind)
    return None if condition is None else f"{condition.status}/{condition.reason}"


GEN_OK = ManifestObservation("s3://b/team-a/runs/todo-api-llm/uid-1/attempt-1/", HASH, 5, 5)


def report(passed: int, failed: int) -> ReportObservation:
    return ReportObservation(
        "s3://b/r/summary.json",
        "sha256:" + "c" * 64,
        passed,
        failed,
        0,
        3,
        4,
        all_passed=failed == 0 and passed > 0,
    )


def test_admission_pins_the_revision_and_asks_for_the_first_generator_job() -> None:
    run, decision = step(load_run(), seen())
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 1)]
    assert run.status is not None
    assert run.status.pinned_spec is not None
    assert (run.status.pinned_spec.revision, run.status.pinned_spec.content_hash) == (3, HASH)
    assert (run.status.phase, run.status.attempt) == ("Generating", 1)
    assert reason(decision, "Admitted") == "True/Admitted"


def test_a_pinned_older_revision_builds_from_its_own_snapshot() -> None:
    run, _ = step(load_run(specRef={"name": "todo-api", "contentHash": OLD_HASH}), seen())
    assert run.status is not None
    assert run.status.pinned_spec is not None
    assert run.status.pinned_spec.snapshot_uri == "s3://b/ns/specs/sha256/bbb.json"


@pytest.mark.parametrize(
    ("spec", "budget", "run_spec", "expected", "terminal"),
    [
        (None, OK_BUDGET, {}, "SpecNotFound", False),
        (
            READY_SPEC.__class__(**{**READY_SPEC.__dict__, "lifecycle": Lifecycle.DEPRECATED}),
            OK_BUDGET,
            {},
            "SpecDeprecated",
            True,
        ),
        (
            READY_SPEC.__class__(**{**READY_SPEC.__dict__, "lifecycle": Lifecycle.DRAFT}),
            OK_BUDGET,
            {"allowDraft": False},
            "SpecNotApproved",
            False,
        ),
        (
            READY_SPEC.__class__(
                **{**READY_SPEC.__dict__, "ready": False, "ready_reason": "Invalid"}
            ),
            OK_BUDGET,
            {},
            "SpecNotReady",
            False,
        ),
        (
            READY_SPEC,
            OK_BUDGET,
            {"specRef": {"name": "todo-api", "contentHash": "sha256:" + "f" * 64}},
            "SpecHashMismatch",
            True,
        ),
        (READY_SPEC, None, {}, "BudgetNotFound", False),
        (
            READY_SPEC,
            BudgetObservation(exhausted=True, model_allowed=True),
            {},
            "BudgetExhausted",
            True,
        ),
        (
            READY_SPEC,
            BudgetObservation(exhausted=False, model_allowed=False),
            {},
            "ModelNotAllowed",
            True,
        ),
    ],
)
def test_admission_refusals_create_no_job(
    spec: SpecObservation | None,
    budget: BudgetObservation | None,
    run_spec: dict[str, Any],
    expected: str,
    terminal: bool,
) -> None:
    run, decision = step(load_run(**run_spec), seen(spec=spec, budget=budget))
    assert decision.actions == []
    assert reason(decision, "Admitted") == f"False/{expected}"
    assert run.status is not None
    assert run.status.phase == ("Failed" if terminal else "Pending")
    assert (decision.requeue_seconds is None) == terminal


def test_builtin_runs_need_no_budget() -> None:
    _, decision = step(load_run("generationrun-builtin.yaml"), seen(budget=None))
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 1)]


def test_happy_path_generate_then_test_then_succeed() -> None:
    run, _ = step(load_run(), seen())
    jobs = {"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE)}
    run, decision = step(run, seen(jobs=jobs))
    assert decision.actions == []
    jobs["todo-api-llm-gen-1"] = JobObservation(JobState.SUCCEEDED, exit_code=0)
    run, decision = step(run, seen(jobs=jobs, generator_results={1: GEN_OK}))
    assert decision.actions == [Action(ActionKind.CREATE_TEST_JOB, 1)]
    assert run.status is not None
    assert run.status.phase == "Testing"
    jobs["todo-api-llm-test-1"] = JobObservation(JobState.SUCCEEDED, exit_code=0)
    run, decision = step(
        run, seen(jobs=jobs, generator_results={1: GEN_OK}, test_results={1: report(12, 0)})
    )
    assert run.status is not None
    assert run.status.phase == "Succeeded"
    assert reason(decision, "Succeeded") == "True/TestsPassed"
    assert run.status.evidence is not None
    assert run.status.evidence.summary == "12/12"
    assert run.status.completion_time == T0
    again = decide(run, seen(jobs=jobs), T0)
    assert again.actions == [], "a finished run asks for nothing"


def test_failed_tests_feed_the_next_attempt_until_attempts_run_out() -> None:
    run, _ = step(load_run(maxAttempts=2), seen())
    jobs = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": JobObservation(JobState.FAILED, exit_code=1),
    }
    observed = seen(jobs=jobs, generator_results={1: GEN_OK}, test_results={1: report(3, 2)})
    run, _ = step(run, observed)
    run, decision = step(run, observed)
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 2)]
    assert run.status is not None
    first = run.status.attempts[0]
    assert (first.result, first.feedback_digest) == ("Failed", "sha256:" + "c" * 64)
    jobs |= {
        "todo-api-llm-gen-2": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-2": JobObservation(JobState.FAILED, exit_code=1),
    }
    observed = seen(
        jobs=jobs,
        generator_results={1: GEN_OK, 2: GEN_OK},
        test_results={1: report(3, 2), 2: report(4, 1)},
    )
    run, _ = step(run, observed)
    run, decision = step(run, observed)
    assert run.status is not None
    assert run.status.phase == "Failed"
    # The run's reason names how its last attempt failed.
    assert reason(decision, "Succeeded") == "False/TestsFailed"
    assert [a.failure_kind for a in run.status.attempts] == ["TestsFailed", "TestsFailed"]
    assert decision.actions == []


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (RefusalCode.BUDGET_EXHAUSTED, "BudgetExhausted"),
        (RefusalCode.RUN_CAP_REACHED, "RunCapReached"),
        (RefusalCode.MODEL_NOT_ALLOWED, "ModelNotAllowed"),
        (RefusalCode.BUDGET_NOT_FOUND, "BudgetNotFound"),
    ],
)
def test_a_gateway_refusal_fails_the_run_with_its_reason_and_no_other_job(
    refusal: RefusalCode, expected: str
) -> None:
    run, _ = step(load_run(), seen())
    message = "the gateway refused the call: HTTP 402 budget_exceeded: 10 credits left"
    jobs = {
        "todo-api-llm-gen-1": JobObservation(
            JobState.FAILED, exit_code=3, message=message, refusal=refusal
        )
    }
    run, decision = step(run, seen(jobs=jobs))
    assert run.status is not None
    assert run.status.phase == "Failed"
    assert reason(decision, "Succeeded") == f"False/{expected}"
    condition = find_condition(decision.status.conditions, "Succeeded")
    assert condition is not None
    assert condition.message == message
    assert decision.actions == []


def test_a_message_that_mentions_a_refusal_is_not_read_as_one() -> None:
    # The run's reason comes from the structured refusal code, never from the wording.
    run, _ = step(load_run(), seen())
    jobs = {
        "todo-api-llm-gen-1": JobObservation(
            JobState.FAILED,
            exit_code=3,
            message="the answer is not valid JSON: 'budget_exhausted' budget_exceeded",
            failure_kind=FailureKind.ANSWER_NOT_PARSEABLE,
        )
    }
    run, decision = step(run, seen(jobs=jobs))
    assert decision.status.attempts[0].reason == "AnswerNotParseable"
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 2)]


def test_a_credential_in_generated_code_gets_another_attempt_to_remove_it() -> None:
    run, _ = step(load_run(maxAttempts=2), seen())
    digest = "sha256:" + "d" * 64
    credential = JobObservation(
        JobState.FAILED,
        exit_code=4,
        message="generated code contains 1 credential finding(s)",
        failure_kind=FailureKind.CREDENTIAL_DETECTED,
        feedback_sha256=digest,
    )
    run, decision = step(run, seen(jobs={"todo-api-llm-gen-1": credential}))
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 2)]
    assert run.status is not None
    plan = feedback_plan(run.status, 2)
    assert plan == FeedbackPlan(
        attempt=1,
        kind=FailureKind.CREDENTIAL_DETECTED,
        message="generated code contains 1 credential finding(s)",
        report_sha256=None,
        generation_sha256=digest,
        with_files=False,
    )
    jobs = {"todo-api-llm-gen-1": credential, "todo-api-llm-gen-2": credential}
    run, decision = step(run, seen(jobs=jobs))
    assert reason(decision, "Succeeded") == "False/CredentialDetected"


def test_feedback_names_only_the_documents_the_previous_attempt_left() -> None:
    run, _ = step(load_run(), seen())
    assert run.status is not None
    assert feedback_plan(run.status, 1) is None
    # Tests ran: the report and the generated files, never a generation document.
    jobs = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": JobObservation(JobState.FAILED, exit_code=1),
    }
    observed = seen(jobs=jobs, generator_results={1: GEN_OK}, test_results={1: report(3, 2)})
    run, _ = step(run, observed)
    run, _ = step(run, observed)
    assert run.status is not None
    plan = feedback_plan(run.status, 2)
    assert plan is not None
    assert (plan.kind, plan.report_sha256, plan.generation_sha256, plan.with_files) == (
        FailureKind.TESTS_FAILED,
        "sha256:" + "c" * 64,
        None,
        True,
    )
    # The test Job died without a report: the files, and no report to read.
    run2, _ = step(load_run(), seen())
    jobs2 = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": JobObservation(JobState.FAILED, exit_code=137, reason="Error"),
    }
    observed2 = seen(jobs=jobs2, generator_results={1: GEN_OK})
    run2, _ = step(run2, observed2)
    run2, decision = step(run2, observed2)
    assert decision.status.attempts[0].failure_kind is FailureKind.SANDBOX_ERROR
    plan2 = feedback_plan(decision.status, 2)
    assert plan2 is not None
    assert (plan2.report_sha256, plan2.generation_sha256, plan2.with_files) == (None, None, True)


@pytest.mark.parametrize(
    ("job", "kind"),
    [
        (JobObservation(JobState.FAILED, reason="DeadlineExceeded"), "TestTimeout"),
        (JobObservation(JobState.FAILED, exit_code=137, reason="OOMKilled"), "OOMKilled"),
        (
            JobObservation(JobState.FAILED, exit_code=1, failure_kind=FailureKind.TEST_TIMEOUT),
            "TestTimeout",
        ),
        (JobObservation(JobState.FAILED, exit_code=2, message="storage failed"), "SandboxError"),
    ],
)
def test_every_way_a_test_job_ends_badly_is_a_kind_and_another_attempt(
    job: JobObservation, kind: str
) -> None:
    run, _ = step(load_run(), seen())
    jobs = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": job,
    }
    observed = seen(jobs=jobs, generator_results={1: GEN_OK})
    run, _ = step(run, observed)
    run, decision = step(run, observed)
    first = decision.status.attempts[0]
    assert (first.failure_kind, first.reason) == (kind, kind)
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 2)]
    warnings = [e for e in decision.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == [kind], "one Event for the failed attempt"


def test_attempt_deadline_moves_to_the_next_attempt() -> None:
    run, _ = step(load_run(), seen())
    jobs = {"todo-api-llm-gen-1": JobObservation(JobState.FAILED, reason="DeadlineExceeded")}
    run, decision = step(run, seen(jobs=jobs))
    assert decision.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 2)]
    assert run.status is not None
    assert run.status.attempts[0].reason == "AttemptTimeout"


def test_total_timeout_fails_and_stops_jobs() -> None:
    run, _ = step(load_run(), seen())
    late = T0 + timedelta(seconds=5401)
    run, decision = step(
        run, seen(jobs={"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE)}), late
    )
    assert reason(decision, "Succeeded") == "False/RunTimeout"
    assert decision.actions == [Action(ActionKind.DELETE_ACTIVE_JOBS)]


def test_suspend_and_resume() -> None:
    run, _ = step(load_run(), seen())
    jobs = {"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE)}
    suspended = run.model_copy(update={"spec": run.spec.model_copy(update={"suspend": True})})
    suspended, decision = step(suspended, seen(jobs=jobs))
    assert decision.actions == [Action(ActionKind.SUSPEND_JOBS)]
    assert suspended.status is not None
    assert suspended.status.phase == "Suspended"
    resumed = suspended.model_copy(
        update={"spec": suspended.spec.model_copy(update={"suspend": False})}
    )
    _, decision = step(resumed, seen(jobs=jobs))
    assert decision.actions == [Action(ActionKind.RESUME_JOBS)]


def test_deciding_again_after_a_crash_asks_for_the_same_job_only() -> None:
    run, first = step(load_run(), seen())
    # The operator died after writing status but before creating the Job.
    _, again = step(run, seen())
    assert again.actions == first.actions == [Action(ActionKind.CREATE_GENERATOR_JOB, 1)]
    # Once the Job exists nothing more is asked.
    _, after = step(run, seen(jobs={"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE)}))
    assert after.actions == []


def test_a_write_is_settled_only_when_deciding_again_on_it_changes_nothing() -> None:
    run = load_run(maxAttempts=2)
    admitted = decide(run, seen(), T0)
    assert settled(run, seen(), admitted, T0), "the Job it asked for is all there is"
    run, _ = step(run, seen())
    jobs = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": JobObservation(JobState.FAILED, exit_code=1),
    }
    observed = seen(jobs=jobs, generator_results={1: GEN_OK}, test_results={1: report(3, 2)})
    testing = decide(run, observed, T0)
    assert testing.status.phase == "Testing"
    assert not settled(run, observed, testing, T0), "its test Job already failed: look again"
    suspended = run.model_copy(update={"spec": run.spec.model_copy(update={"suspend": True})})
    active = seen(jobs={"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE)})
    assert settled(suspended, active, decide(suspended, active, T0), T0)


def test_a_local_model_attempt_records_its_sidecar_endpoint() -> None:
    run, _ = step(load_run(), seen())
    jobs = {"todo-api-llm-gen-1": JobObservation(JobState.ACTIVE, pod_ip="10.0.0.7")}
    run, decision = step(run, seen(jobs=jobs, local_model_port=8001))
    assert decision.actions == []
    assert run.status is not None
    assert run.status.attempts[0].model_endpoint == "http://10.0.0.7:8001/v1"


def test_an_llm_run_waits_while_the_operator_has_no_run_token_keys() -> None:
    run, decision = step(load_run(), seen(run_tokens_configured=False))
    assert run.status is not None
    assert run.status.phase == "Pending"
    assert reason(decision, "Admitted") == "False/GatewayNotConfigured"
    assert decision.actions == []
    _, decision = step(load_run("generationrun-builtin.yaml"), seen(run_tokens_configured=False))
    assert reason(decision, "Admitted") == "True/Admitted"
