"""The chart's objects are valid to a real kube-apiserver (v1.35.4, TEST-001).

`helm template` output (production CI values: every optional object but the Prometheus
Operator's, whose CRDs this control plane does not have) is POSTed object by object with
the admin identity, into a fresh namespace enforcing Pod Security "restricted".
Deployments, and a Pod made of each one's template, are validated with a server-side dry
run only here (with any node); test_chart_helm.py installs the chart with the real helm and
runs those pods from the built image on the real node. Everything else is
created for real: the CRDs (Established), the ClusterRoles (which the API server accepts
only if their rules are well-formed), the ValidatingAdmissionPolicy (its CEL compiled by the
server, with no type-checking warnings) and its binding, Service, ConfigMap, HPA, PDB.
"""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from testcluster.harness import (
    GatewayProcess,
    OperatorProcess,
    wait_for,
    write_gateway_config,
)
from testcluster.plugin import Cluster
from testcluster.rest import ApiException, Rest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "smartspec"
BUILD_HELM = REPO / "tools" / "build-helm.sh"
GO_MISSING = 3  # build-helm.sh's exit status when it needs Go and finds none
RELEASE = "chartcheck"

Doc = dict[str, Any]

# kind -> (plural, namespaced); the group version comes from the object's apiVersion.
PLURALS: dict[str, tuple[str, bool]] = {
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "ConfigMap": ("configmaps", True),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "Deployment": ("deployments", True),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "ServiceAccount": ("serviceaccounts", True),
    "ValidatingAdmissionPolicy": ("validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": ("validatingadmissionpolicybindings", False),
}
DRY_RUN_ONLY = {"Deployment"}


def resolve_helm() -> Path:
    """$HELM_BIN, else tools/build-helm.sh -q (as tests/unit/test_chart.py does)."""
    if os.environ.get("HELM_BIN"):
        return Path(os.environ["HELM_BIN"])
    result = subprocess.run(
        ["bash", str(BUILD_HELM), "-q"], cwd=REPO, stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode == GO_MISSING:
        pytest.skip("helm is not cached and no Go toolchain can build it (tools/build-helm.sh)")
    if result.returncode != 0:
        pytest.fail(f"{BUILD_HELM} failed with exit code {result.returncode}; see its output")
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("export HELM_BIN="))


def collection_path(doc: Doc, namespace: str) -> str:
    plural, namespaced = PLURALS[doc["kind"]]
    group_version = doc["apiVersion"]
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"


def create_or_replace(rest: Rest, path: str, doc: Doc, **query: Any) -> Doc:
    try:
        return rest.post(path, doc, **query)
    except ApiException as error:
        if error.status != 409:
            raise
    current = rest.get(f"{path}/{doc['metadata']['name']}")
    doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    return rest.put(f"{path}/{doc['metadata']['name']}", doc, **query)


@pytest.fixture
def rendered(namespace: str) -> list[Doc]:
    values = CHART / "ci" / "production-values.yaml"
    result = subprocess.run(
        [
            str(resolve_helm()),
            "template",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            "-f",
            str(values),
            "--set",
            "monitoring.enabled=false",
            # A chart-generated run-token Secret too (production values name an existing one).
            "--set",
            "runToken.existingSecret=",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture
def cleanup_cluster_scoped(cluster: Cluster) -> Iterator[list[str]]:
    """Paths of the cluster-scoped objects created (CRDs are shared: left in place)."""
    created: list[str] = []
    yield created
    admin = cluster.rest("admin")
    for path in reversed(created):
        try:
            admin.delete(path)
        except ApiException as error:
            if error.status != 404:
                raise


def test_every_rendered_object_is_accepted_by_the_api_server(
    cluster: Cluster,
    crds: list[str],
    namespace: str,
    rendered: list[Doc],
    cleanup_cluster_scoped: list[str],
) -> None:
    admin = cluster.rest("admin")
    kinds = {d["kind"] for d in rendered}
    assert kinds <= PLURALS.keys(), f"no REST path known for {kinds - PLURALS.keys()}"
    assert {"CustomResourceDefinition", "ValidatingAdmissionPolicy", "Deployment"} <= kinds
    # CRDs first: the chart's are the ones the `crds` fixture installed, plus labels.
    order = sorted(rendered, key=lambda d: d["kind"] != "CustomResourceDefinition")
    accepted: list[str] = []
    for doc in order:
        path = collection_path(doc, namespace)
        name = doc["metadata"]["name"]
        query = {"dryRun": "All"} if doc["kind"] in DRY_RUN_ONLY else {}
        answer = create_or_replace(admin, path, doc, fieldValidation="Strict", **query)
        assert answer["metadata"]["name"] == name
        if not PLURALS[doc["kind"]][1] and doc["kind"] != "CustomResourceDefinition":
            cleanup_cluster_scoped.append(f"{path}/{name}")
        accepted.append(f"{doc['kind']}/{name}")
    assert len(accepted) == len(rendered)

    # Each Deployment's pod, dry-run into this namespace, which enforces Pod Security
    # "restricted" (latest): the API server itself judges the security contexts.
    for doc in rendered:
        if doc["kind"] == "Deployment":
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{doc['metadata']['name']}-dry-run",
                    "labels": doc["spec"]["template"]["metadata"]["labels"],
                },
                "spec": doc["spec"]["template"]["spec"],
            }
            pods = f"/api/v1/namespaces/{namespace}/pods"
            admin.post(pods, pod, dryRun="All", fieldValidation="Strict")
            # The namespace does enforce: the same pod allowed to escalate is refused.
            escalating = copy.deepcopy(pod)
            escalating["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = (
                True
            )
            with pytest.raises(ApiException) as refused:
                admin.post(pods, escalating, dryRun="All")
            assert refused.value.status == 403
            assert "allowPrivilegeEscalation" in str(refused.value.body)

    # The CRDs as the chart renders them are Established (kept by helm on uninstall).
    for doc in rendered:
        if doc["kind"] == "CustomResourceDefinition":
            crd = admin.get(f"{collection_path(doc, namespace)}/{doc['metadata']['name']}")
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # The policy's CEL compiled and type-checked cleanly against the Spec CRD.
    policy_doc = next(d for d in rendered if d["kind"] == "ValidatingAdmissionPolicy")
    policy_path = f"{collection_path(policy_doc, namespace)}/{policy_doc['metadata']['name']}"
    deadline = time.monotonic() + 30
    while True:
        status = admin.get(policy_path).get("status") or {}
        if status.get("observedGeneration"):
            break
        assert time.monotonic() < deadline, "ValidatingAdmissionPolicy never type-checked"
        time.sleep(0.2)
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status

    # The process roles' bindings point at the ServiceAccounts created in the namespace.
    for component in ("operator", "gateway"):
        binding = admin.get(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"
            f"{RELEASE}-smartspec-{component}"
        )
        account = binding["subjects"][0]
        assert account["namespace"] == namespace
        admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account['name']}")


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token)."""
    admin = cluster.rest("admin")
    answer = admin.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    config = yaml.safe_load(cluster.kubeconfig("admin").read_text())
    for user in config["users"]:
        user["user"] = {"token": answer["status"]["token"]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_example_runs_under_the_charts_service_accounts_alone(
    cluster: Cluster,
    crds: list[str],
    namespace: str,
    rendered: list[Doc],
    cleanup_cluster_scoped: list[str],
    tenant: str,
    namespace_factory: Callable[[], str],
    local_node: Any,
    s3: Any,
    stub: Any,
    tmp_path: Path,
) -> None:
    """The operator and the gateway run with the chart's ServiceAccounts and nothing else:
    a permission missing from the chart's ClusterRoles fails this test."""
    admin = cluster.rest("admin")
    for doc in sorted(rendered, key=lambda d: d["kind"] != "CustomResourceDefinition"):
        if doc["kind"] in DRY_RUN_ONLY:
            continue
        path = collection_path(doc, namespace)
        create_or_replace(admin, path, doc, fieldValidation="Strict")
        if not PLURALS[doc["kind"]][1] and doc["kind"] != "CustomResourceDefinition":
            cleanup_cluster_scoped.append(f"{path}/{doc['metadata']['name']}")
    accounts = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["metadata"]["name"]
        for d in rendered
        if d["kind"] == "ServiceAccount"
    }
    secret = next(
        d for d in rendered if d["kind"] == "Secret" and "run-token" in d["metadata"]["name"]
    )
    stored = admin.get(f"/api/v1/namespaces/{namespace}/secrets/{secret['metadata']['name']}")
    keys = tmp_path / "chart-token-keys"
    keys.write_bytes(base64.b64decode(next(iter(stored["data"].values()))))

    gateway = GatewayProcess(
        cluster,
        s3,
        config_path=write_gateway_config(tmp_path / "gateway.yaml", stub.url),
        keys_path=keys,
        log_path=tmp_path / "gateway.log",
        replica="chart-gateway",
        kubeconfig=service_account_kubeconfig(
            cluster, namespace, accounts["gateway"], tmp_path / "gateway.kubeconfig"
        ),
    )
    gateway.start()
    operator = OperatorProcess(
        cluster,
        s3,
        [tenant],
        tmp_path / "operator.log",
        {
            "SMARTSPEC_TOKEN_KEYS_FILE": str(keys),
            "SMARTSPEC_GATEWAY_URL": f"{gateway.url}/v1",
            # Elected through the chart's Lease Role, bound in the release namespace only.
            "SMARTSPEC_LEADER_ELECTION_NAMESPACE": namespace,
        },
        kubeconfig=service_account_kubeconfig(
            cluster, namespace, accounts["operator"], tmp_path / "operator.kubeconfig"
        ),
    )
    operator.start()
    try:
        builder = cluster.rest("builder")
        api = f"/apis/smartspec.dev/v1alpha1/namespaces/{tenant}"
        example = REPO / "examples" / "todo-service"
        builder.post(f"{api}/specs", yaml.safe_load((example / "spec.yaml").read_text()))
        run = yaml.safe_load((example / "generationrun-builtin.yaml").read_text())
        builder.post(f"{api}/generationruns", run)

        def finished() -> dict[str, Any] | None:
            status: dict[str, Any] = (
                admin.get(f"{api}/generationruns/todo-api-builtin").get("status") or {}
            )
            return status if status.get("phase") in {"Succeeded", "Failed"} else None

        status = wait_for(finished, "the example run under the chart's RBAC", timeout=240)
        assert status["phase"] == "Succeeded", operator.log()[-3000:]

        # The gateway's account reads runs and budgets and writes their status: one call in
        # a namespace the operator does not watch, so only the gateway touches the run.
        other = namespace_factory()
        other_api = f"/apis/smartspec.dev/v1alpha1/namespaces/{other}"
        cluster.rest("platform_admin").post(
            f"{other_api}/creditbudgets",
            {
                "apiVersion": "smartspec.dev/v1alpha1",
                "kind": "CreditBudget",
                "metadata": {"name": "default"},
                "spec": {"limitCredits": 100_000},
            },
        )
        direct = {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "GenerationRun",
            "metadata": {"name": "direct"},
            "spec": {
                "specRef": {"name": "todo-api"},
                "generator": {"backend": "llm", "model": "stub-model"},
            },
        }
        created = cluster.rest("builder").post(f"{other_api}/generationruns", direct)
        admin.patch(
            f"{other_api}/generationruns/direct/status",
            {"status": {"phase": "Generating", "attempt": 1}},
        )
        claims = RunTokenClaims(
            namespace=other,
            run="direct",
            run_uid=created["metadata"]["uid"],
            attempt=1,
            budget="default",
            spec_revision=1,
            expires_at=int(time.time()) + 600,
        )
        token = mint_run_token(claims, keys.read_bytes().split()[0])
        answer = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={
                "model": "stub-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 16,
            },
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

        def charged() -> int | None:
            budget = admin.get(f"{other_api}/creditbudgets/default").get("status") or {}
            usage = (admin.get(f"{other_api}/generationruns/direct").get("status") or {}).get(
                "usage"
            ) or {}
            settled = budget.get("spentCredits", 0) > 0 and budget.get("reservedCredits") == 0
            return int(budget["spentCredits"]) if settled and usage.get("calls") == 1 else None

        wait_for(charged, "the gateway's settlement under its chart account")
    finally:
        operator.stop()
        gateway.stop()
