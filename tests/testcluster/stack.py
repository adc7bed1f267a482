"""The whole local stack in one object, for the demo and the benchmarks (not for tests, which
use the pytest fixtures): control plane, S3, CRDs, deploy/ manifests and the bindings of the
operator, gateway, builder and platform-admin identities. See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .controlplane import ControlPlane, resolve_binaries
from .harness import apply_documents
from .plugin import Cluster
from .rest import ApiException, Rest
from .s3 import S3Endpoint, S3Server, resolve_weed

REPO = Path(__file__).resolve().parents[2]
BINDINGS = (
    ("smartspec-operator", "User", "operator"),
    ("smartspec-gateway", "User", "gateway"),
    ("smartspec-platform-admin", "Group", "smartspec:platform-admins"),
)


@dataclass
class LocalStack:
    """Start with `with LocalStack(work_dir) as stack:`; everything stops on exit."""

    work_dir: Path
    bucket: str = "smartspec"
    plane: ControlPlane | None = None
    s3_server: S3Server | None = None
    s3: S3Endpoint | None = None
    cluster: Cluster | None = None
    _started: list[Any] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.plane = ControlPlane(resolve_binaries(REPO), self.work_dir / "cluster")
        self.plane.start()
        self.s3_server = S3Server(resolve_weed(REPO), self.work_dir / "s3", self.bucket)
        self.s3 = self.s3_server.start()
        self.cluster = Cluster("local", self.plane.kubeconfigs, self.plane, self.work_dir)
        self._install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in reversed(self._started):
            with contextlib.suppress(Exception):
                process.stop()
        if self.cluster is not None:
            self.cluster.close()
        if self.s3_server is not None:
            self.s3_server.stop()
        if self.plane is not None:
            self.plane.stop()

    def own(self, process: Any) -> Any:
        """Stop this process (anything with .stop()) when the stack stops."""
        self._started.append(process)
        return process

    @property
    def admin(self) -> Rest:
        assert self.cluster is not None
        return self.cluster.rest("admin")

    def _install(self) -> None:
        admin = self.admin
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        names = []
        for path in sorted((REPO / "crds").glob("*.yaml")):
            document = yaml.safe_load(path.read_text())
            admin.post(crds, document)
            names.append(document["metadata"]["name"])
        deadline = time.monotonic() + 60
        while names and time.monotonic() < deadline:
            conditions = admin.get(f"{crds}/{names[0]}").get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                names.pop(0)
            else:
                time.sleep(0.2)
        for path in sorted((REPO / "deploy").glob("*.yaml")):
            apply_documents(admin, path)
        for role, kind, subject in BINDINGS:
            self.bind(role, kind, subject)

    def bind(self, role: str, kind: str, subject: str, namespace: str | None = None) -> None:
        """Bind a ClusterRole to a User or Group, cluster-wide or in one namespace."""
        name = f"{role}-{subject.replace(':', '-')}"
        body = {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
        }
        path = "/apis/rbac.authorization.k8s.io/v1/"
        path += f"namespaces/{namespace}/rolebindings" if namespace else "clusterrolebindings"
        try:
            self.admin.post(path, body)
        except ApiException as error:
            if error.status != 409:
                raise

    def tenant(self, name: str) -> str:
        """A namespace enforcing Pod Security restricted, where builders may build."""
        labels = {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        self.admin.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
        deadline = time.monotonic() + 30
        while True:  # pods are refused until the namespace's default service account exists
            try:
                self.admin.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
                break
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.bind("smartspec-builder", "Group", "smartspec:builders", namespace=name)
        return name
