"""The Spec registry end to end: the real operator process, API server, admission and S3.

Contract: specs/CORE-002-spec-registry.md. Every fake credential here is built at run time
from two halves, so no file of this repository contains one whole.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1 import Spec
from smartspec.logic.canonical import canonical_json, content_hash
from smartspec.logic.object_keys import spec_snapshot_key
from testcluster.harness import OperatorProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.rest import ApiException, Rest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAKE_AWS_KEY = "AKIA" + "QYLPMN5HFAKEKEY1"
FAKE_PRIVATE_KEY = "-----BEGIN " + "EC PRIVATE KEY-----"

StartOperator = Callable[[str], OperatorProcess]


def spec_document() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples/todo-service/spec.yaml").read_text())
    assert isinstance(document, dict)
    return document


def specs_url(namespace: str, name: str = "") -> str:
    base = f"/apis/smartspec.dev/v1alpha1/namespaces/{namespace}/specs"
    return f"{base}/{name}" if name else base


def condition(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in spec.get("status", {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    return {}


def wait_revision(rest: Rest, namespace: str, name: str, revision: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        spec = rest.get(specs_url(namespace, name))
        ready = condition(spec, "Ready")
        status = spec.get("status", {})
        if status.get("revision") == revision and ready.get("status") == "True":
            return spec
        return None

    return wait_for(probe, f"Spec {name} Ready at revision {revision}")


def snapshot_keys(s3_client: Any, bucket: str, namespace: str) -> list[str]:
    response = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{namespace}/specs/")
    return sorted(item["Key"] for item in response.get("Contents", []))


def handled(rest: Rest, namespace: str, name: str, label: str) -> bool:
    """Whether kopf recorded handling a change that set this label (its diff-base annotation)."""
    annotations = rest.get(specs_url(namespace, name))["metadata"].get("annotations", {})
    return f'"{label}"' in annotations.get("smartspec.dev/last-handled-configuration", "")


def test_content_edits_bump_the_revision_and_write_one_snapshot_each(
    cluster: Cluster, tenant: str, start_operator: StartOperator, s3_client: Any, s3: Any
) -> None:
    operator = start_operator(tenant)
    builder = cluster.rest("builder")
    builder.post(specs_url(tenant), spec_document())
    first = wait_revision(builder, tenant, "todo-api", 1)
    status = first["status"]

    keys = snapshot_keys(s3_client, s3.bucket, tenant)
    assert keys == [spec_snapshot_key(tenant, status["contentHash"])]
    stored = s3_client.get_object(Bucket=s3.bucket, Key=keys[0])["Body"].read()
    assert f"sha256:{hashlib.sha256(stored).hexdigest()}" == status["contentHash"]
    # The content is the model's normal form (defaults included), whatever the YAML omitted.
    content = Spec.model_validate(first).spec.content()
    assert stored == canonical_json(content)
    assert status["contentHash"] == content_hash(content)
    assert status["snapshotUri"] == f"s3://{s3.bucket}/{keys[0]}"

    # Labels are metadata: handled, but no new revision and no new snapshot.
    builder.patch(specs_url(tenant, "todo-api"), {"metadata": {"labels": {"tier": "gold"}}})
    wait_for(lambda: handled(builder, tenant, "todo-api", "tier"), "the label edit to be handled")
    after_label = builder.get(specs_url(tenant, "todo-api"))["status"]
    assert (after_label["revision"], after_label["contentHash"]) == (1, status["contentHash"])
    assert len(snapshot_keys(s3_client, s3.bucket, tenant)) == 1

    builder.patch(specs_url(tenant, "todo-api"), {"spec": {"summary": "A smaller to-do API."}})
    second = wait_revision(builder, tenant, "todo-api", 2)["status"]
    assert second["contentHash"] != status["contentHash"]
    assert len(snapshot_keys(s3_client, s3.bucket, tenant)) == 2
    assert [entry["revision"] for entry in second["history"]] == [1, 2]
    assert second["observedGeneration"] == 2
    assert operator.metric("smartspec_snapshot_writes_total", result="created") == 2

    events = cluster.rest("admin").get(
        f"/api/v1/namespaces/{tenant}/events",
        fieldSelector="involvedObject.name=todo-api",
    )
    reasons = {event["reason"] for event in events["items"]}
    assert {"RevisionObserved", "SnapshotStored"} <= reasons


def test_approval_is_governed_by_the_api_server(
    cluster: Cluster, tenant: str, approval_policy: None
) -> None:
    builder = cluster.rest("builder")
    builder.post(specs_url(tenant), spec_document())
    path = specs_url(tenant, "todo-api")

    approve = {"spec": {"lifecycle": "Approved"}}

    def builder_is_refused() -> str | None:
        # A dry run passes admission without persisting, so waiting for the new policy to
        # become active cannot approve the Spec by accident.
        try:
            builder.request("PATCH", path, approve, query={"dryRun": "All"}, content_type=MERGE)
        except ApiException as error:
            return str(json.loads(error.body or "{}").get("message", ""))
        return None

    wait_for(builder_is_refused, "the approval policy to become active")
    with pytest.raises(ApiException) as refused:
        builder.patch(path, approve)
    assert refused.value.status == 403
    message = json.loads(refused.value.body or "{}")["message"]
    assert "only members of smartspec:approvers may approve a Spec" in message
    assert "builder is not one" in message
    assert builder.get(path)["spec"]["lifecycle"] == "Draft"

    approved = cluster.rest("approver").patch(path, {"spec": {"lifecycle": "Approved"}})
    assert approved["spec"]["lifecycle"] == "Approved"

    with pytest.raises(ApiException) as caught:
        builder.patch(path, {"spec": {"title": "Sneaky change"}})
    assert caught.value.status == 422
    assert "content of an Approved or Deprecated Spec is immutable" in str(caught.value.body)


MERGE = "application/merge-patch+json"


def test_a_spec_holding_credentials_is_invalid_and_the_values_go_nowhere(
    cluster: Cluster, tenant: str, start_operator: StartOperator, s3_client: Any, s3: Any
) -> None:
    operator = start_operator(tenant)
    builder = cluster.rest("builder")
    document = spec_document()
    document["spec"]["requirements"][0]["text"] = f"Upload with access key {FAKE_AWS_KEY} daily."
    document["spec"]["requirements"][1]["acceptanceCriteria"].append(
        f"The service signs with {FAKE_PRIVATE_KEY} at start-up."
    )
    builder.post(specs_url(tenant), document)

    def invalid() -> dict[str, Any] | None:
        spec = builder.get(specs_url(tenant, "todo-api"))
        valid = condition(spec, "Valid")
        return spec if valid.get("status") == "False" else None

    spec = wait_for(invalid, "the Spec to be reported invalid")
    assert condition(spec, "Valid")["reason"] == "SecretDetected"
    assert condition(spec, "Ready")["reason"] == "Invalid"
    paths = {(f["path"], f["code"]) for f in spec["status"]["findings"]}
    assert ("spec.requirements[0].text", "SecretDetected") in paths
    assert ("spec.requirements[1].acceptanceCriteria[1]", "SecretDetected") in paths
    assert snapshot_keys(s3_client, s3.bucket, tenant) == [], "no snapshot of a secret"

    events = cluster.rest("admin").get(f"/api/v1/namespaces/{tenant}/events")
    wait_for(
        lambda: any(e["reason"] == "SecretDetected" for e in events_in(cluster, tenant)),
        "a SecretDetected Event",
    )
    operator.stop()
    leaks = {
        "status": json.dumps(spec["status"]),
        "events": json.dumps(events_in(cluster, tenant)),
        "operator log": operator.log(),
    }
    for where, text in leaks.items():
        assert FAKE_AWS_KEY not in text, f"the fake AWS key leaked into the {where}"
        assert "EC PRIVATE KEY" not in text, f"the fake private key leaked into the {where}"
    assert events is not None


def events_in(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.rest("admin").get(
        f"/api/v1/namespaces/{namespace}/events"
    )["items"]
    return items


def test_restarts_never_duplicate_a_snapshot_or_lose_a_revision(
    cluster: Cluster, tenant: str, start_operator: StartOperator, s3_client: Any, s3: Any
) -> None:
    builder = cluster.rest("builder")
    operator = start_operator(tenant)
    builder.post(specs_url(tenant), spec_document())
    wait_revision(builder, tenant, "todo-api", 1)
    assert operator.stop(signal.SIGKILL) != 0  # a crash, not a clean shutdown

    # While the operator is down the content changes, and we leave the store as a crash
    # right after the snapshot write would have: object present, status not yet updated.
    builder.patch(specs_url(tenant, "todo-api"), {"spec": {"summary": "Edited while down."}})
    edited = builder.get(specs_url(tenant, "todo-api"))
    content = Spec.model_validate(edited).spec.content()
    key = spec_snapshot_key(tenant, content_hash(content))
    s3_client.put_object(Bucket=s3.bucket, Key=key, Body=canonical_json(content))

    restarted = start_operator(tenant)
    status = wait_revision(builder, tenant, "todo-api", 2)["status"]
    assert status["contentHash"] == content_hash(content)
    assert len(snapshot_keys(s3_client, s3.bucket, tenant)) == 2
    assert restarted.metric("smartspec_snapshot_writes_total", result="existed") == 1
    assert restarted.metric("smartspec_snapshot_writes_total", result="created") == 0

    # A clean restart with nothing changed writes nothing and keeps the revision.
    restarted.stop()
    again = start_operator(tenant)
    builder.patch(specs_url(tenant, "todo-api"), {"metadata": {"labels": {"after": "restart"}}})
    wait_for(lambda: handled(builder, tenant, "todo-api", "after"), "the label edit")
    final = builder.get(specs_url(tenant, "todo-api"))["status"]
    assert final["revision"] == 2
    assert [entry["revision"] for entry in final["history"]] == [1, 2]
    assert len(snapshot_keys(s3_client, s3.bucket, tenant)) == 2
    assert again.metric("smartspec_snapshot_writes_total", result="created") == 0


def test_missing_dependency_is_reported_then_resolved(
    cluster: Cluster, tenant: str, start_operator: StartOperator
) -> None:
    start_operator(tenant)
    builder = cluster.rest("builder")
    dependent = spec_document()
    dependent["metadata"]["name"] = "todo-ui"
    dependent["spec"]["dependsOn"] = [{"name": "todo-api", "minVersion": "1.0.0"}]
    builder.post(specs_url(tenant), dependent)

    def reason() -> str | None:
        return condition(builder.get(specs_url(tenant, "todo-ui")), "Valid").get("reason")

    wait_for(lambda: reason() == "DependencyMissing", "DependencyMissing on todo-ui")
    builder.post(specs_url(tenant), spec_document())
    wait_for(lambda: reason() == "LintPassed", "todo-ui to become Valid once todo-api exists")
    wait_revision(builder, tenant, "todo-ui", 1)
