"""The chart installed by the real `helm install` on the real node, with the built images.

The operator and the gateway run as pods of ghcr.io/smartspec/smartspec (built from
operator/Dockerfile by tools/build-images.sh, imported into the node's containerd) under the
chart's ServiceAccounts and nothing else; the example's builtin run goes through the sandbox
images to Succeeded, which `kubectl wait --for=condition=Succeeded` sees; `helm upgrade`
keeps the run-token key (the chart's `lookup`); `helm uninstall` keeps the CRDs (crds.keep).
The values a cluster without kube-proxy or DNS needs are in testcluster.chart. Skipped where
the session has no real node (specs/TEST-001-control-plane.md, "Real node").
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testcluster.chart import HelmRelease, local_values, resolve_helm, s3_secret
from testcluster.harness import wait_for
from testcluster.plugin import PSA_LABELS, Cluster
from testcluster.realnode import RealNode
from testcluster.rest import ApiException, Rest
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service"
RELEASE = "helmproof"
FULLNAME = f"{RELEASE}-smartspec"
IMAGE = "ghcr.io/smartspec/smartspec:0.1.0"
SANDBOX_IMAGES = {
    "ghcr.io/smartspec/sandbox-generator:0.1.0",
    "ghcr.io/smartspec/sandbox-tester:0.1.0",
}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    if cluster.real_node is None:
        pytest.skip("needs the real node: pods of the chart's images cannot run on the fake one")
    cluster.real_node.ensure_images("operator")
    return cluster.real_node


def _namespace(admin: Rest, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    admin.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": PSA_LABELS}})
    wait_for(lambda: _exists(admin, f"/api/v1/namespaces/{name}/serviceaccounts/default"), name)
    return name


def _exists(rest: Rest, path: str) -> bool:
    try:
        rest.get(path)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _adopt_crds(admin: Rest, namespace: str) -> None:
    """CRDs other tests installed become the release's, as Helm adopts existing objects."""
    for crd in admin.get(CRDS)["items"]:
        if crd["spec"]["group"] == "smartspec.dev":
            admin.patch(
                f"{CRDS}/{crd['metadata']['name']}",
                {
                    "metadata": {
                        "labels": {"app.kubernetes.io/managed-by": "Helm"},
                        "annotations": {
                            "meta.helm.sh/release-name": RELEASE,
                            "meta.helm.sh/release-namespace": namespace,
                        },
                    }
                },
            )


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, node: RealNode, s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HelmRelease, str]]:
    """The chart installed by helm into a fresh namespace; its operator watches one tenant."""
    admin = cluster.rest("admin")
    namespace = _namespace(admin, "helmproof")
    tenant = _namespace(admin, "helmproof-tenant")
    admin.post(f"/api/v1/namespaces/{namespace}/secrets", s3_secret("s3-keys", s3))
    _adopt_crds(admin, namespace)
    chart = HelmRelease(resolve_helm(), cluster.kubeconfig("admin"), RELEASE, namespace)
    assert cluster.control_plane is not None
    values = local_values(
        api_host=node.address,
        api_port=cluster.control_plane.api_port,
        s3=s3,
        s3_keys="s3-keys",
        namespaces=[tenant],
    )
    # The session's other tests install deploy/'s approval policy themselves.
    values["approval"] = {"enabled": False}
    chart.install(values, tmp_path_factory.mktemp("helm") / "values.json")
    try:
        chart.wait_ready(admin)
        yield chart, tenant
    finally:
        chart.run("uninstall", RELEASE, check=False)
        for name in (namespace, tenant):
            admin.delete(f"/api/v1/namespaces/{name}")


def _pods(rest: Rest, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = rest.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector
    )["items"]
    return pods


def test_operator_and_gateway_run_as_pods_of_the_image_under_the_charts_accounts(
    cluster: Cluster, release: tuple[HelmRelease, str]
) -> None:
    chart, _ = release
    admin = cluster.rest("admin")
    for component in ("operator", "gateway"):
        pods = _pods(admin, chart.namespace, f"app.kubernetes.io/component={component}")
        assert [p["status"]["phase"] for p in pods] == ["Running"], component
        pod = pods[0]
        assert pod["spec"]["serviceAccountName"] == f"{FULLNAME}-{component}"
        status = pod["status"]["containerStatuses"][0]
        assert status["image"] == IMAGE
        assert status["containerID"].startswith("containerd://")
        assert status["ready"] is True
        # Its account holds the chart's ClusterRole and nothing more: no Secrets beyond its
        # own namespace's, no RBAC writes.
        user = f"system:serviceaccount:{chart.namespace}:{FULLNAME}-{component}"
        for verb, resource, namespace in (
            ("list", "secrets", "kube-system"),
            ("create", "clusterrolebindings", None),
            ("delete", "nodes", None),
        ):
            assert not _allowed(admin, user, verb, resource, namespace), (user, verb, resource)
    operator = f"system:serviceaccount:{chart.namespace}:{FULLNAME}-operator"
    assert _allowed(admin, operator, "create", "jobs", "default", group="batch")


def _allowed(
    admin: Rest, user: str, verb: str, resource: str, namespace: str | None, group: str = ""
) -> bool:
    attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"]
    review = admin.post(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {"spec": {"user": user, "groups": groups, "resourceAttributes": attributes}},
    )
    return bool(review["status"].get("allowed"))


def _kubectl(cluster: Cluster, identity: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert cluster.real_node is not None
    return subprocess.run(
        [
            str(cluster.real_node.tools.kube("kubectl")),
            "--kubeconfig",
            str(cluster.kubeconfig(identity)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_example_run_succeeds_in_sandbox_containers_and_kubectl_wait_sees_it(
    cluster: Cluster, release: tuple[HelmRelease, str]
) -> None:
    _, tenant = release
    admin = cluster.rest("admin")
    for role, group in (
        ("builder", "smartspec:builders"),
        ("platform-admin", "smartspec:platform-admins"),
    ):
        admin.post(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{tenant}/rolebindings",
            {
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{FULLNAME}-{role}",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
                ],
            },
        )
    budget = _kubectl(
        cluster, "platform_admin", "-n", tenant, "apply", "-f", str(EXAMPLE / "creditbudget.yaml")
    )
    assert budget.returncode == 0, budget.stderr
    applied = _kubectl(
        cluster,
        "builder",
        "-n",
        tenant,
        "apply",
        "-f",
        str(EXAMPLE / "spec.yaml"),
        "-f",
        str(EXAMPLE / "generationrun-builtin.yaml"),
    )
    assert applied.returncode == 0, applied.stderr
    waited = _kubectl(
        cluster,
        "builder",
        "-n",
        tenant,
        "wait",
        "--for=condition=Succeeded",
        "generationrun/todo-api-builtin",
        "--timeout=240s",
    )
    run = admin.get(
        f"/apis/smartspec.dev/v1alpha1/namespaces/{tenant}/generationruns/todo-api-builtin"
    )
    assert waited.returncode == 0, (waited.stderr, run.get("status"))
    assert run["status"]["phase"] == "Succeeded"
    assert run["status"]["evidence"]["testsFailed"] == 0
    # The generator and the tester ran as containerd containers of the sandbox images.
    pods = _pods(admin, tenant, "smartspec.dev/run=todo-api-builtin")
    ran = {(p["status"]["containerStatuses"][0]["image"], p["status"]["phase"]) for p in pods}
    assert ran == {(image, "Succeeded") for image in SANDBOX_IMAGES}
    assert all(
        p["status"]["containerStatuses"][0]["containerID"].startswith("containerd://") for p in pods
    )


def test_helm_upgrade_keeps_the_run_token_key(
    cluster: Cluster, release: tuple[HelmRelease, str]
) -> None:
    chart, _ = release
    admin = cluster.rest("admin")
    path = f"/api/v1/namespaces/{chart.namespace}/secrets/{FULLNAME}-run-token-keys"
    before = admin.get(path)["data"]
    chart.upgrade("--set", "logLevel=DEBUG")
    assert admin.get(path)["data"] == before
    chart.wait_ready(admin)


def test_helm_uninstall_keeps_the_crds_and_the_resources(
    cluster: Cluster, release: tuple[HelmRelease, str]
) -> None:
    chart, tenant = release
    admin = cluster.rest("admin")
    chart.uninstall()
    selector = f"app.kubernetes.io/instance={RELEASE}"
    wait_for(lambda: not _pods(admin, chart.namespace, selector), "the release's pods to go")
    for plural in ("specs", "generationruns", "creditbudgets"):
        crd = admin.get(f"{CRDS}/{plural}.smartspec.dev")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert _exists(admin, f"/apis/smartspec.dev/v1alpha1/namespaces/{tenant}/specs/todo-api")
