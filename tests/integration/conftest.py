"""Fixtures that run the real operator process against the real control plane.

The operator runs as `smartspec operator` in a subprocess with the operator identity's
kubeconfig and exactly the ClusterRole in deploy/rbac-operator.yaml, so a missing permission
fails these tests. See specs/TEST-001-control-plane.md and specs/CORE-002-spec-registry.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from smartspec.builders.rbac import BUILDER_ROLE, OPERATOR_ROLE, PLATFORM_ADMIN_ROLE
from testcluster.harness import OperatorProcess, apply_documents
from testcluster.plugin import Cluster
from testcluster.rest import ApiException
from testcluster.s3 import S3Endpoint

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="session")
def operator_rbac(cluster: Cluster, crds: list[str]) -> None:
    """deploy/rbac-operator.yaml, bound to the operator identity and nothing more."""
    admin = cluster.rest("admin")
    apply_documents(admin, DEPLOY / "rbac-operator.yaml")
    apply_documents(admin, DEPLOY / "rbac-users.yaml")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "smartspec-operator"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": OPERATOR_ROLE,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "operator"}],
    }
    try:
        admin.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
    except ApiException as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="session")
def platform_admins(cluster: Cluster, operator_rbac: None) -> None:
    """The platform-admin ClusterRole bound cluster-wide to the platform-admins group."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "smartspec-platform-admins"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": PLATFORM_ADMIN_ROLE,
        },
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "smartspec:platform-admins",
            }
        ],
    }
    try:
        cluster.rest("admin").post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding
        )
    except ApiException as error:
        if error.status != 409:
            raise


@pytest.fixture(scope="session")
def approval_policy(cluster: Cluster, crds: list[str]) -> None:
    """deploy/admission-policies.yaml, installed cluster-wide as in production."""
    apply_documents(cluster.rest("admin"), DEPLOY / "admission-policies.yaml")


@pytest.fixture
def tenant(cluster: Cluster, namespace: str, operator_rbac: None, platform_admins: None) -> str:
    """A namespace where builders and approvers hold the builder role."""
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
    return namespace


@pytest.fixture
def start_operator(
    cluster: Cluster, s3: S3Endpoint, operator_rbac: None, tmp_path: Path
) -> Iterator[Callable[[str], OperatorProcess]]:
    """Start an operator watching one namespace; it is stopped after the test."""
    started: list[OperatorProcess] = []

    def start(namespace: str) -> OperatorProcess:
        process = OperatorProcess(
            cluster, s3, [namespace], tmp_path / f"operator-{len(started)}.log"
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running:
            process.stop()


@pytest.fixture
def s3_client(s3: S3Endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        region_name=s3.region,
    )
