"""Bad input at volume: 500 malformed manifests (tests/fuzz/manifests.py) applied to the real
API server with a running operator.

Contract: specs/CORE-001-resources.md, section "Validation". Invariants:
1. the API server never answers 5xx, and each refusal names the broken field (or one above or
   below it), as `kubectl apply` shows it;
2. the API server and `smartspec validate` agree: what the CRD schema admits, the operator's
   own types parse, and what `validate` refuses the API server refuses too, so no object is
   admitted that the operator cannot read. One known exception: whether a time zone exists
   is no check a CRD schema can make; such a budget is admitted and reported Ready=False
   `InvalidTimeZone` by the operator (tested below);
3. the operator does not crash, and none of its reconciles ends in an error.
Duplicate keys are a parser's concern (kubectl refuses them before sending) and stay with
`smartspec validate` (tests/unit/test_manifest_fuzz.py).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from fuzz.manifests import cases, related
from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.logic.budget import TIME_ZONE_FIELD
from testcluster.harness import OperatorProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.rest import ApiException
from testcluster.runs import API, operator_env

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CASES = 500
SEED = int(os.environ.get("SMARTSPEC_FUZZ_SEED", "20261202"))
PLURALS = {"Spec": "specs", "GenerationRun": "generationruns", "CreditBudget": "creditbudgets"}
_FIELD = re.compile(r"\b((?:metadata|spec|status)(?:\.[\w-]+|\[\d+\])*)")


def test_malformed_manifests_are_refused_by_the_api_server_naming_the_field(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    print(f"fuzz seed: {SEED} (SMARTSPEC_FUZZ_SEED={SEED} replays these cases)")
    operator = start_operator(tenant, **operator_env(tmp_path))
    users = {
        "Spec": cluster.rest("builder"),
        "GenerationRun": cluster.rest("builder"),
        "CreditBudget": cluster.rest("platform_admin"),
    }
    outcomes: Counter[str] = Counter()
    disagreements: list[str] = []
    for case in cases(CASES * 7 // 6, SEED):
        if case.document is None:
            continue  # duplicate keys: see the module docstring
        document = case.document
        kind = document["kind"]
        document["metadata"]["name"] = f"fuzz-{case.number}"
        # Budgets: one name per namespace is all there is, so those are checked, not kept.
        dry_run = {"dryRun": "All"} if kind == "CreditBudget" else {}
        try:
            users[kind].post(
                f"{API}/{tenant}/{PLURALS[kind]}", document, fieldValidation="Strict", **dry_run
            )
            admitted, message = True, ""
        except ApiException as error:
            admitted, status = False, error.status
            message = json.loads(error.body or "{}").get("message", "")
        else:
            status = 201
        assert status < 500, f"{case}: {status} {message}"
        try:
            parse_manifest(document, str(case))
            parsed = True
        except ManifestError:
            parsed = False
        outcomes[f"{case.kind}: {'admitted' if admitted else 'refused'}"] += 1
        if admitted and not parsed and case.path == TIME_ZONE_FIELD:
            outcomes["time zone admitted, refused by the operator's types"] += 1
        elif admitted != parsed:
            side = "API server admits, validate refuses" if admitted else "only validate admits"
            disagreements.append(f"{case}: {side} {message[:300]}")
        if not admitted:
            fields = _FIELD.findall(message)
            assert any(related(field, case.path) for field in fields), f"{case}: {message}"
    print(dict(sorted(outcomes.items())))
    print("\n".join(disagreements))
    assert not disagreements
    assert operator.running
    assert operator.metric("smartspec_reconciles_total", kind="Spec", outcome="error") == 0
    assert operator.metric("smartspec_reconciles_total", kind="GenerationRun", outcome="error") == 0


def test_a_budget_with_an_unknown_time_zone_is_reported_not_ready(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    start_operator(tenant, **operator_env(tmp_path))
    budget = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "CreditBudget",
        "metadata": {"name": "default"},
        "spec": {"limitCredits": 1000, "period": {"type": "Daily", "timeZone": "Europe/Pariss"}},
    }
    admin = cluster.rest("platform_admin")
    admin.post(f"{API}/{tenant}/creditbudgets", budget)  # the schema cannot know zone names

    def ready() -> dict[str, str] | None:
        status = admin.get(f"{API}/{tenant}/creditbudgets/default").get("status") or {}
        found = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return found[0] if found else None

    condition = wait_for(ready, "the budget's Ready condition")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidTimeZone")
    assert "spec.period.timeZone" in condition["message"]
    assert "Europe/Pariss" in condition["message"]
    events = cluster.rest("admin").get(f"/api/v1/namespaces/{tenant}/events")["items"]
    assert [e["reason"] for e in events if e["involvedObject"]["kind"] == "CreditBudget"] == [
        "InvalidTimeZone"
    ]
