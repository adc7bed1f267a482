"""Fixtures that run the real operator process against the real control plane.

The operator runs as `smartspec operator` in a subprocess with the operator identity's
kubeconfig and exactly the ClusterRole in deploy/rbac-operator.yaml, so a missing permission
fails these tests. See specs/TEST-001-control-plane.md and specs/CORE-002-spec-registry.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smartspec.builders.rbac import BUILDER_ROLE, GATEWAY_ROLE, OPERATOR_ROLE, PLATFORM_ADMIN_ROLE
from stubs import model_faults
from stubs.openai_stub import StubServer
from testcluster.gateway_calls import create_budget
from testcluster.harness import (
    TEST_TOKEN_KEY,
    GatewayProcess,
    OperatorProcess,
    apply_documents,
    write_gateway_config,
)
from testcluster.plugin import Cluster
from testcluster.rest import ApiException, Rest
from testcluster.runs import API, example, wait_for_attestations
from testcluster.s3 import S3Endpoint

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def bind_cluster_role(rest: Rest, role: str, kind: str, subject: str) -> None:
    """A ClusterRoleBinding of `role` to one User or Group (idempotent)."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{role}-{subject.replace(':', '-')}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    }
    try:
        rest.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
    except ApiException as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="session")
def operator_rbac(cluster: Cluster, crds: list[str]) -> None:
    """deploy/rbac-operator.yaml, bound to the operator identity and nothing more."""
    admin = cluster.rest("admin")
    apply_documents(admin, DEPLOY / "rbac-operator.yaml")
    apply_documents(admin, DEPLOY / "rbac-operator-leader-election.yaml")  # bound per test
    apply_documents(admin, DEPLOY / "rbac-users.yaml")
    bind_cluster_role(admin, OPERATOR_ROLE, "User", "operator")


@pytest.fixture(scope="session")
def platform_admins(cluster: Cluster, operator_rbac: None) -> None:
    """The platform-admin ClusterRole bound cluster-wide to the platform-admins group."""
    bind_cluster_role(
        cluster.rest("admin"), PLATFORM_ADMIN_ROLE, "Group", "smartspec:platform-admins"
    )


@pytest.fixture(scope="session")
def approval_policy(cluster: Cluster, crds: list[str]) -> None:
    """deploy/admission-policies.yaml, installed cluster-wide as in production."""
    apply_documents(cluster.rest("admin"), DEPLOY / "admission-policies.yaml")


@pytest.fixture
def tenant(cluster: Cluster, namespace: str, operator_rbac: None, platform_admins: None) -> str:
    """A namespace where builders and approvers hold the builder role."""
    bind_builders(cluster, namespace)
    return namespace


@pytest.fixture
def namespace_factory(
    cluster: Cluster, operator_rbac: None, platform_admins: None
) -> Iterator[Callable[[], str]]:
    """More tenant namespaces (restricted, builders bound), deleted after the test."""
    created: list[str] = []
    admin = cluster.rest("admin")

    def create() -> str:
        name = f"t-extra-{secrets.token_hex(4)}"
        admin.post(
            "/api/v1/namespaces",
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                }
            },
        )
        bind_builders(cluster, name)
        created.append(name)
        return name

    yield create
    for name in created:
        admin.delete(f"/api/v1/namespaces/{name}")


def bind_builders(cluster: Cluster, namespace: str) -> None:
    """Builders and approvers hold the builder role in this namespace."""
    cluster.rest("admin").post(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        {
            "metadata": {"name": "builders"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": BUILDER_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
                for group in ("smartspec:builders", "smartspec:approvers")
            ],
        },
    )


@pytest.fixture
def start_operator(
    cluster: Cluster, s3: S3Endpoint, operator_rbac: None, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start an operator watching one namespace; it is stopped after the test, once every
    run that finished in its namespace carries its signed provenance (CORE-005)."""
    started: list[tuple[str, OperatorProcess]] = []

    def start(namespace: str, **extra_env: str) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        process = OperatorProcess(cluster, s3, [namespace], log_path, extra_env)
        process.start()
        started.append((namespace, process))
        return process

    yield start
    try:
        watched = {namespace for namespace, process in started if process.running}
        for namespace in sorted(watched):
            wait_for_attestations(cluster.rest("admin"), namespace)
    finally:
        for _, process in started:
            if process.running:
                process.stop()


@pytest.fixture
def s3_client(s3: S3Endpoint) -> Any:
    """An admin client: the tests' own view of the bucket (the processes get scoped keys)."""
    return s3.client("admin")


# ---------------------------------------------------------------- gateway


@pytest.fixture(scope="session")
def gateway_rbac(cluster: Cluster, crds: list[str]) -> None:
    """deploy/rbac-gateway.yaml bound to the gateway identity, and nothing more."""
    admin = cluster.rest("admin")
    apply_documents(admin, DEPLOY / "rbac-gateway.yaml")
    bind_cluster_role(admin, GATEWAY_ROLE, "User", "gateway")


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A local OpenAI-compatible model server (a test stub: its answers are canned)."""
    server = StubServer(models=["stub-model", "stub-backup", "local-llama"]).start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture
def start_gateway(
    cluster: Cluster, s3: S3Endpoint, gateway_rbac: None, stub: StubServer, tmp_path: Path
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway replicas against the stub; all are stopped (leases returned) after."""
    started: list[GatewayProcess] = []
    keys = tmp_path / "token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    config = write_gateway_config(tmp_path / "gateway.yaml", stub.url)

    def start(**extra_env: str) -> GatewayProcess:
        replica = f"gw-{len(started)}"
        process = GatewayProcess(
            cluster,
            s3,
            config_path=config,
            keys_path=keys,
            log_path=tmp_path / f"{replica}.log",
            replica=replica,
            extra_env=extra_env,
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running:
            process.stop()


@pytest.fixture
def faulty(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_gateway: Callable[..., GatewayProcess],
    stub: StubServer,
) -> GatewayProcess:
    """For the fault suite: a gateway whose stub model answers every call with the canned
    correct project, a budget with room, and the example Spec in the tenant."""
    stub.reply_fn = model_faults.answer_with()  # every call: the canned correct project
    gateway = start_gateway()
    create_budget(cluster, tenant, 500_000_000)
    cluster.rest("builder").post(f"{API}/{tenant}/specs", example("spec.yaml"))
    return gateway
