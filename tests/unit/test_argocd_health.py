"""The Argo CD health checks in examples/gitops/health, executed by a real Lua interpreter.

Each script runs in Lua 5.1 (the dialect of gopher-lua, which Argo CD embeds) through lupa,
with only the base functions and the string, table and math libraries visible, and reading an
undefined global is an error (so a typo cannot silently read nil). The committed
examples/gitops/argocd-cm.yaml must equal tools/render_argocd_cm.py's rendering.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1 import creditbudget, generationrun, spec

REPO = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO / "examples" / "gitops" / "health"
ARGOCD_CM = REPO / "examples" / "gitops" / "argocd-cm.yaml"
ARGO_HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

RUNNER = """
function(source, name, obj)
  local chunk, err = loadstring(source, "=" .. name)
  if chunk == nil then error(err) end
  local env = {
    obj = obj, ipairs = ipairs, pairs = pairs, next = next, tostring = tostring,
    tonumber = tonumber, type = type, error = error, pcall = pcall, select = select,
    string = string, table = table, math = math,
  }
  setmetatable(env, {__index = function(_, key) error("undefined global " .. key, 2) end})
  setfenv(chunk, env)
  local hs = chunk()
  return hs.status, hs.message
end
"""


@cache
def _runner() -> Any:
    lua51 = pytest.importorskip(
        "lupa.lua51", reason="lupa (pip install lupa) is needed to execute the Lua health checks"
    )
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    return runtime, runtime.eval(RUNNER)


def run_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run examples/gitops/health/<kind>.lua on obj as Argo CD would; (status, message)."""
    runtime, runner = _runner()
    source = (HEALTH_DIR / f"{kind}.lua").read_text(encoding="utf-8")
    status, message = runner(source, f"{kind}.lua", runtime.table_from(obj, recursive=True))
    return str(status), str(message)


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-31T12:00:00Z",
        "observedGeneration": 1,
    }


def resource(
    kind: str, status: dict[str, Any] | None, generation: int = 1, **spec_fields: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "sample", "namespace": "team-a", "generation": generation},
        "spec": dict(spec_fields),
    }
    if status is not None:
        obj["status"] = status
    return obj


# ---------------------------------------------------------------- GenerationRun
def run(
    phase: str | None, *conditions: dict[str, Any], generation: int = 1, **extra: Any
) -> dict[str, Any]:
    suspend = extra.pop("suspend", None)
    status: dict[str, Any] = {"observedGeneration": extra.pop("observed", 1), **extra}
    if phase is not None:
        status["phase"] = phase
    status["conditions"] = list(conditions)
    fields: dict[str, Any] = {"specRef": {"name": "todo-api"}}
    if suspend is not None:
        fields["suspend"] = suspend
    return resource("GenerationRun", status, generation, **fields)


ADMITTED = cond("Admitted", "True", "Admitted", "spec todo-api revision 1, budget default")
RUN_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no-status",
        resource("GenerationRun", None, specRef={"name": "todo-api"}),
        "Progressing",
        "waiting for the operator to admit the run",
    ),
    (
        "pending-not-admitted",
        run("Pending", cond("Admitted", "False", "SpecNotReady", "Spec todo-api is not Ready")),
        "Progressing",
        "Pending (SpecNotReady: Spec todo-api is not Ready)",
    ),
    (
        "pending-no-conditions",
        run("Pending"),
        "Progressing",
        "Pending",
    ),
    (
        "generating",
        run(
            "Generating",
            ADMITTED,
            cond("Generated", "Unknown", "Generating", "generator Job todo-gen-1 running"),
            attempt=1,
        ),
        "Progressing",
        "Generating, attempt 1 (Generating: generator Job todo-gen-1 running)",
    ),
    (
        "testing",
        run(
            "Testing",
            ADMITTED,
            cond("Generated", "True", "Generated", "5 files"),
            cond("Tested", "Unknown", "Testing", "test Job todo-test-2 running"),
            attempt=2,
        ),
        "Progressing",
        "Testing, attempt 2 (Testing: test Job todo-test-2 running)",
    ),
    (
        "succeeded",
        run(
            "Succeeded",
            ADMITTED,
            cond("Succeeded", "True", "TestsPassed", "20 tests passed"),
            attempt=1,
            evidence={
                "reportUri": "s3://b/r",
                "testsPassed": 20,
                "testsFailed": 0,
                "summary": "20/20",
            },
        ),
        "Healthy",
        "TestsPassed: 20 tests passed (tests 20/20)",
    ),
    (
        "succeeded-no-condition-yet",
        run("Succeeded"),
        "Healthy",
        "Succeeded",
    ),
    (
        "failed-attempts-exhausted",
        run(
            "Failed",
            ADMITTED,
            cond("Succeeded", "False", "AttemptsExhausted", "3 attempts, tests still failing"),
        ),
        "Degraded",
        "AttemptsExhausted: 3 attempts, tests still failing",
    ),
    (
        "failed-budget-exhausted",
        run("Failed", cond("Succeeded", "False", "BudgetExhausted", "budget default exhausted")),
        "Degraded",
        "BudgetExhausted: budget default exhausted",
    ),
    (
        "failed-run-timeout-no-message",
        run("Failed", cond("Succeeded", "False", "RunTimeout")),
        "Degraded",
        "RunTimeout",
    ),
    (
        "failed-wins-over-suspend",
        run("Failed", cond("Succeeded", "False", "AttemptTimeout", "x"), suspend=True),
        "Degraded",
        "AttemptTimeout: x",
    ),
    (
        "succeeded-wins-over-unobserved-generation",
        run("Succeeded", cond("Succeeded", "True", "TestsPassed"), generation=2),
        "Healthy",
        "TestsPassed",
    ),
    (
        "suspend-requested-not-yet-observed",
        run("Generating", ADMITTED, suspend=True, generation=2),
        "Suspended",
        "spec.suspend is true",
    ),
    (
        "suspended-phase",
        run(
            "Suspended",
            cond("Succeeded", "Unknown", "Suspended", "suspended at attempt 1"),
            suspend=True,
        ),
        "Suspended",
        "spec.suspend is true",
    ),
    (
        "suspended-phase-spec-unset",
        run("Suspended", cond("Succeeded", "Unknown", "Suspended", "suspended at attempt 1")),
        "Suspended",
        "Suspended: suspended at attempt 1",
    ),
    (
        "resumed-not-yet-observed",
        run("Suspended", suspend=False, generation=3, observed=2),
        "Progressing",
        "waiting for the operator to observe generation 3",
    ),
    (
        "observed-generation-missing",
        run("Pending", generation=1, observed=None),
        "Progressing",
        "waiting for the operator to observe generation 1",
    ),
]


# ---------------------------------------------------------------- Spec
def spec_obj(
    *conditions: dict[str, Any], generation: int = 1, observed: int | None = 1
) -> dict[str, Any]:
    status: dict[str, Any] = {"revision": 1, "conditions": list(conditions)}
    if observed is not None:
        status["observedGeneration"] = observed
    return resource("Spec", status, generation, title="To-do", lifecycle="Draft")


LINT_OK = cond("Valid", "True", "LintPassed", "no findings")
SPEC_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no-status",
        resource("Spec", None, title="To-do"),
        "Progressing",
        "waiting for the operator to validate the Spec",
    ),
    (
        "ready",
        spec_obj(LINT_OK, cond("Ready", "True", "SnapshotStored", "revision 1 stored at s3://x")),
        "Healthy",
        "SnapshotStored: revision 1 stored at s3://x",
    ),
    (
        "lint-failed",
        spec_obj(
            cond("Valid", "False", "LintFailed", "2 errors"),
            cond("Ready", "False", "Invalid", "the Spec is not Valid; runs cannot use it"),
        ),
        "Degraded",
        "LintFailed: 2 errors",
    ),
    (
        "secret-detected",
        spec_obj(cond("Valid", "False", "SecretDetected", "spec.summary holds a credential")),
        "Degraded",
        "SecretDetected: spec.summary holds a credential",
    ),
    (
        "dependency-missing",
        spec_obj(cond("Valid", "False", "DependencyMissing", "Spec auth not found")),
        "Degraded",
        "DependencyMissing: Spec auth not found",
    ),
    (
        "deprecated",
        spec_obj(
            LINT_OK,
            cond("Ready", "False", "Deprecated", "the Spec is Deprecated and accepts no new runs"),
        ),
        "Healthy",
        "deprecated: the Spec is Deprecated and accepts no new runs",
    ),
    (
        "deprecated-no-message",
        spec_obj(LINT_OK, cond("Ready", "False", "Deprecated")),
        "Healthy",
        "deprecated",
    ),
    (
        "snapshot-failed",
        spec_obj(LINT_OK, cond("Ready", "False", "SnapshotFailed", "revision 2: S3 unavailable")),
        "Degraded",
        "SnapshotFailed: revision 2: S3 unavailable",
    ),
    (
        "valid-ready-unknown",
        spec_obj(LINT_OK, cond("Ready", "Unknown", "SnapshotFailed", "retrying")),
        "Progressing",
        "SnapshotFailed: retrying",
    ),
    (
        "valid-no-ready-yet",
        spec_obj(LINT_OK),
        "Progressing",
        "waiting for the Ready condition",
    ),
    (
        "empty-status",
        resource("Spec", {}, title="To-do"),
        "Progressing",
        "waiting for the operator to observe generation 1",
    ),
    (
        "stale-generation-hides-old-ready",
        spec_obj(LINT_OK, cond("Ready", "True", "SnapshotStored"), generation=2, observed=1),
        "Progressing",
        "waiting for the operator to observe generation 2",
    ),
    (
        "stale-generation-hides-old-failure",
        spec_obj(cond("Valid", "False", "LintFailed"), generation=5, observed=4),
        "Progressing",
        "waiting for the operator to observe generation 5",
    ),
    (
        "no-generation-in-metadata",
        {
            "metadata": {"name": "s"},
            "status": {"conditions": [cond("Ready", "True", "SnapshotStored")]},
        },
        "Healthy",
        "SnapshotStored",
    ),
]


# ---------------------------------------------------------------- CreditBudget
def budget(
    *conditions: dict[str, Any], generation: int = 1, observed: int | None = 1
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "spentCredits": 1000,
        "reservedCredits": 0,
        "remainingCredits": 499000,
        "conditions": list(conditions),
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return resource("CreditBudget", status, generation, limitCredits=500000)


READY = cond("Ready", "True", "AccountingCurrent", "accounting current")
AVAILABLE = cond("BudgetExhausted", "False", "CreditsAvailable", "credits remain this period")
BELOW = cond("ThresholdReached", "False", "BelowThresholds", "below 80%")
BUDGET_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no-status",
        resource("CreditBudget", None, limitCredits=1),
        "Progressing",
        "waiting for the operator to evaluate the budget",
    ),
    (
        "gateway-accounting-only",
        resource("CreditBudget", {"spentCredits": 10}, limitCredits=1),
        "Progressing",
        "waiting for the operator to evaluate the budget",
    ),
    (
        "ready",
        budget(READY, AVAILABLE, BELOW),
        "Healthy",
        "AccountingCurrent: accounting current",
    ),
    (
        "exhausted",
        budget(READY, cond("BudgetExhausted", "True", "LimitReached", "500000 of 500000 spent")),
        "Degraded",
        "LimitReached: 500000 of 500000 spent",
    ),
    (
        "exhausted-wins-over-threshold",
        budget(
            READY,
            cond("BudgetExhausted", "True", "LimitReached"),
            cond("ThresholdReached", "True", "ThresholdCrossed", "95% crossed"),
        ),
        "Degraded",
        "LimitReached",
    ),
    (
        "threshold-crossed",
        budget(
            READY,
            AVAILABLE,
            cond("ThresholdReached", "True", "ThresholdCrossed", "80% of the limit spent"),
        ),
        "Healthy",
        "warning: ThresholdCrossed: 80% of the limit spent",
    ),
    (
        "rolled-over",
        budget(READY, cond("BudgetExhausted", "False", "PeriodRolledOver", "new period"), BELOW),
        "Healthy",
        "AccountingCurrent: accounting current",
    ),
    (
        "invalid-time-zone",
        budget(cond("Ready", "False", "InvalidTimeZone", "Mars/Olympus is not an IANA zone")),
        "Degraded",
        "InvalidTimeZone: Mars/Olympus is not an IANA zone",
    ),
    (
        "ready-unknown",
        budget(cond("Ready", "Unknown", "AccountingCurrent", "syncing")),
        "Progressing",
        "AccountingCurrent: syncing",
    ),
    (
        "no-ready-condition",
        budget(AVAILABLE),
        "Progressing",
        "waiting for the Ready condition",
    ),
    (
        "limit-raised-not-yet-observed",
        budget(READY, cond("BudgetExhausted", "True", "LimitReached"), generation=2, observed=1),
        "Progressing",
        "waiting for the operator to observe generation 2",
    ),
    (
        "observed-generation-missing",
        budget(READY, observed=None),
        "Progressing",
        "waiting for the operator to observe generation 1",
    ),
    (
        "observed-newer-than-cached-generation",
        budget(READY, generation=3, observed=4),
        "Healthy",
        "AccountingCurrent: accounting current",
    ),
]


def _ids(cases: list[tuple[str, dict[str, Any], str, str]]) -> list[str]:
    return [case[0] for case in cases]


@pytest.mark.parametrize(("name", "obj", "status", "message"), RUN_CASES, ids=_ids(RUN_CASES))
def test_generationrun_health(name: str, obj: dict[str, Any], status: str, message: str) -> None:
    assert run_health("generationrun", obj) == (status, message), name


@pytest.mark.parametrize(("name", "obj", "status", "message"), SPEC_CASES, ids=_ids(SPEC_CASES))
def test_spec_health(name: str, obj: dict[str, Any], status: str, message: str) -> None:
    assert run_health("spec", obj) == (status, message), name


@pytest.mark.parametrize(("name", "obj", "status", "message"), BUDGET_CASES, ids=_ids(BUDGET_CASES))
def test_creditbudget_health(name: str, obj: dict[str, Any], status: str, message: str) -> None:
    assert run_health("creditbudget", obj) == (status, message), name


@pytest.mark.parametrize(
    ("kind", "cases"),
    [("generationrun", RUN_CASES), ("spec", SPEC_CASES), ("creditbudget", BUDGET_CASES)],
)
def test_at_least_ten_cases_and_valid_statuses(
    kind: str, cases: list[tuple[str, dict[str, Any], str, str]]
) -> None:
    assert len(cases) >= 10, kind
    assert len(set(_ids(cases))) == len(cases), f"{kind}: duplicate case ids"
    assert {case[2] for case in cases} <= ARGO_HEALTH_STATUSES


@pytest.mark.parametrize(
    ("kind", "module", "words"),
    [
        ("generationrun", generationrun, {p.value for p in generationrun.Phase}),
        ("spec", spec, set()),
        ("creditbudget", creditbudget, set()),
    ],
)
def test_scripts_name_only_real_condition_types_and_reasons(
    kind: str, module: ModuleType, words: set[str]
) -> None:
    """A renamed condition type, reason or phase must not silently break a health check."""
    source = (HEALTH_DIR / f"{kind}.lua").read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    types = set(re.findall(r'condition\(status, "([A-Za-z]+)"\)', code))
    compared = set(re.findall(r'(?:reason|phase) == "([A-Za-z]+)"', code))
    assert types, kind
    known_types = {member.value for member in module.ConditionType}
    known_reasons = {member.value for member in module.Reason}
    assert types <= known_types, types - known_types
    assert compared <= known_reasons | words, compared - known_reasons - words


def test_argocd_cm_is_rendered_from_the_lua_files() -> None:
    loaded = importlib.util.spec_from_file_location(
        "render_argocd_cm", REPO / "tools" / "render_argocd_cm.py"
    )
    assert loaded is not None
    assert loaded.loader is not None
    renderer = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(renderer)
    committed = ARGOCD_CM.read_text(encoding="utf-8")
    assert committed == renderer.render(), "run: python tools/render_argocd_cm.py"
    data = yaml.safe_load(committed)["data"]
    for kind, file_name in [
        ("Spec", "spec.lua"),
        ("GenerationRun", "generationrun.lua"),
        ("CreditBudget", "creditbudget.lua"),
    ]:
        key = f"resource.customizations.health.smartspec.dev_{kind}"
        assert data[key] == (HEALTH_DIR / file_name).read_text(encoding="utf-8"), key
