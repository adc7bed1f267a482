"""The CRDs on a real kube-apiserver: install, accept the examples, refuse bad input with
field paths (schema and CEL), and let only platform admins write budgets.

Contract: specs/CORE-001-resources.md; environment: specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from testcluster.plugin import Cluster
from testcluster.rest import ApiException, Rest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service"
PLURALS = {"Spec": "specs", "GenerationRun": "generationruns", "CreditBudget": "creditbudgets"}


def example(name: str) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLE / name).read_text())
    assert isinstance(document, dict)
    return document


def collection(namespace: str, kind: str) -> str:
    return f"/apis/smartspec.dev/v1alpha1/namespaces/{namespace}/{PLURALS[kind]}"


def create(rest: Rest, namespace: str, document: dict[str, Any]) -> dict[str, Any]:
    return rest.post(collection(namespace, document["kind"]), document, fieldValidation="Strict")


def refusal(call: Callable[[], object]) -> tuple[int, str]:
    """Run a call that must fail; its HTTP status and the server's message."""
    with pytest.raises(ApiException) as caught:
        call()
    body = json.loads(caught.value.body or "{}")
    return int(caught.value.status or 0), str(body.get("message", caught.value.body))


def test_crds_install_and_are_established(crds: list[str]) -> None:
    assert set(crds) == {
        "specs.smartspec.dev",
        "generationruns.smartspec.dev",
        "creditbudgets.smartspec.dev",
    }


def test_every_example_applies_and_gets_schema_defaults(cluster: Cluster, tenant: str) -> None:
    create(cluster.rest("platform_admin"), tenant, example("creditbudget.yaml"))
    builder = cluster.rest("builder")
    create(builder, tenant, example("spec.yaml"))
    create(builder, tenant, example("generationrun-llm.yaml"))
    stored = create(builder, tenant, example("generationrun-builtin.yaml"))
    assert stored["spec"]["budgetRef"] == {"name": "default"}, "defaulted by the API server"
    assert stored["spec"]["generator"]["maxTokens"] == 4096
    listed = builder.get(collection(tenant, "GenerationRun"))
    assert {item["metadata"]["name"] for item in listed["items"]} == {
        "todo-api-llm",
        "todo-api-builtin",
    }


def mutated(name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(example(name))
    change(document["spec"])
    return document


RefusalCase = tuple[str, Callable[[dict[str, Any]], None], list[str]]
SCHEMA_REFUSALS: list[RefusalCase] = [
    ("spec.yaml", lambda s: s.pop("title"), ["spec.title: Required value"]),
    (
        "spec.yaml",
        lambda s: s.update(lifecycle="Final"),
        ['spec.lifecycle: Unsupported value: "Final"'],
    ),
    ("spec.yaml", lambda s: s.update(colour="blue"), ['unknown field "spec.colour"']),
    (
        "spec.yaml",
        lambda s: s["requirements"][1].update(id="REQ-001"),
        ["spec.requirements[1]: Duplicate value"],
    ),
    (
        "spec.yaml",
        lambda s: s["requirements"][0].update(acceptanceCriteria=[]),
        ["spec.requirements[0].acceptanceCriteria: Invalid value: 0"],
    ),
    (
        "spec.yaml",
        lambda s: s["interfaces"]["endpoints"][0].update(entity="Ghost"),
        [
            "spec.interfaces.endpoints",
            "every endpoint.entity must name an entity declared in interfaces.entities",
        ],
    ),
    (
        "creditbudget.yaml",
        lambda s: s.update(limitCredits=1.5),
        ['spec.limitCredits: Invalid value: "number"', "integer"],
    ),
    (
        "creditbudget.yaml",
        lambda s: s.update(perRunLimitCredits=600000),
        ["spec.perRunLimitCredits", "perRunLimitCredits must not exceed limitCredits"],
    ),
    (
        "creditbudget.yaml",
        lambda s: s.update(softThresholdsPercent=[80, 80]),
        ["spec.softThresholdsPercent[1]: Duplicate value: 80"],
    ),
    (
        "creditbudget.yaml",
        lambda s: s["period"].update(type="Hourly"),
        ['spec.period.type: Unsupported value: "Hourly"'],
    ),
    (
        "generationrun-llm.yaml",
        lambda s: s["generator"].pop("model"),
        [
            "spec.generator.model: Required value",
            "generator.model is required when generator.backend is llm",
        ],
    ),
    (
        "generationrun-llm.yaml",
        lambda s: s["generator"].update(temperatureMilli=0.2),
        ['spec.generator.temperatureMilli: Invalid value: "number"'],
    ),
    (
        "generationrun-llm.yaml",
        lambda s: s["timeouts"].update(attemptSeconds=6000),
        [
            "spec.timeouts.attemptSeconds",
            "timeouts.attemptSeconds must not exceed timeouts.totalSeconds",
        ],
    ),
    (
        "generationrun-llm.yaml",
        lambda s: s["specRef"].update(contentHash="md5:abc"),
        ["spec.specRef.contentHash: Invalid value"],
    ),
]


@pytest.mark.parametrize(
    "case", SCHEMA_REFUSALS, ids=[f"{file}-{i}" for i, (file, _, _) in enumerate(SCHEMA_REFUSALS)]
)
def test_malformed_resources_are_refused_with_field_paths(
    cluster: Cluster, namespace: str, crds: list[str], case: RefusalCase
) -> None:
    file, change, expected = case
    rest = cluster.rest("admin")
    status, message = refusal(lambda: create(rest, namespace, mutated(file, change)))
    # 422 Invalid for schema and CEL violations; 400 for strict decoding (unknown fields).
    assert status in {400, 422}, message
    for text in expected:
        assert text in message, message


def test_approved_spec_content_is_immutable(cluster: Cluster, tenant: str) -> None:
    namespace = tenant
    create(cluster.rest("builder"), namespace, example("spec.yaml"))
    path = f"{collection(namespace, 'Spec')}/todo-api"
    rest = cluster.rest("approver")
    rest.patch(path, {"spec": {"lifecycle": "Approved"}})

    status, message = refusal(lambda: rest.patch(path, {"spec": {"title": "Another title"}}))
    assert status == 422
    assert "the content of an Approved or Deprecated Spec is immutable" in message
    status, message = refusal(lambda: rest.patch(path, {"spec": {"lifecycle": "Draft"}}))
    assert "an Approved Spec cannot return to Draft" in message
    # Labels are metadata, not content; deprecation is a forward move.
    rest.patch(path, {"metadata": {"labels": {"reviewed": "yes"}}})
    rest.patch(path, {"spec": {"lifecycle": "Deprecated"}})
    status, message = refusal(lambda: rest.patch(path, {"spec": {"lifecycle": "Approved"}}))
    assert "a Deprecated Spec stays Deprecated" in message


def test_run_spec_is_immutable_except_suspend(
    cluster: Cluster, namespace: str, crds: list[str]
) -> None:
    rest = cluster.rest("admin")
    create(rest, namespace, example("generationrun-llm.yaml"))
    path = f"{collection(namespace, 'GenerationRun')}/todo-api-llm"
    status, message = refusal(lambda: rest.patch(path, {"spec": {"maxAttempts": 5}}))
    assert status == 422
    assert "spec.maxAttempts is immutable once the run exists" in message
    status, message = refusal(lambda: rest.patch(path, {"spec": {"replayOf": {"name": "x"}}}))
    assert "spec.replayOf is immutable once the run exists" in message
    updated = rest.patch(path, {"spec": {"suspend": True}})
    assert updated["spec"]["suspend"] is True


def test_only_platform_admins_write_budgets(cluster: Cluster, tenant: str) -> None:
    budget = example("creditbudget.yaml")
    builder = cluster.rest("builder")
    status, message = refusal(lambda: create(builder, tenant, budget))
    assert status == 403, message
    create(cluster.rest("platform_admin"), tenant, budget)
    path = f"{collection(tenant, 'CreditBudget')}/default"
    assert builder.get(path)["spec"]["limitCredits"] == 500000, "builders may read budgets"
    status, _ = refusal(lambda: builder.patch(path, {"spec": {"limitCredits": 10**9}}))
    assert status == 403
    status, _ = refusal(lambda: builder.patch(f"{path}/status", {"status": {"spentCredits": 0}}))
    assert status == 403
    updated = cluster.rest("platform_admin").patch(path, {"spec": {"limitCredits": 600000}})
    assert updated["spec"]["limitCredits"] == 600000


def kubectl(cluster: Cluster, identity: str, *args: str) -> str:
    completed = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig(identity)), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_shows_columns_categories_and_explains_fields(
    cluster: Cluster, tenant: str
) -> None:
    create(cluster.rest("platform_admin"), tenant, example("creditbudget.yaml"))
    create(cluster.rest("builder"), tenant, example("spec.yaml"))
    header = kubectl(cluster, "builder", "get", "creditbudgets", "-n", tenant).splitlines()[0]
    assert header.split() == ["NAME", "LIMIT", "SPENT", "RESERVED", "REMAINING", "PERIOD", "AGE"]
    everything = kubectl(cluster, "builder", "get", "smartspec", "-n", tenant)
    assert "creditbudget.smartspec.dev/default" in everything
    assert "spec.smartspec.dev/todo-api" in everything
    short = kubectl(cluster, "builder", "get", "sspec", "-n", tenant).splitlines()[0].split()
    assert short == ["NAME", "VERSION", "LIFECYCLE", "REVISION", "READY", "AGE"]
    explained = kubectl(
        cluster, "admin", "explain", "generationrun.spec.generator.temperatureMilli"
    )
    assert "Sampling temperature in thousandths" in explained
