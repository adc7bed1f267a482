"""The Helm chart installed by the real `helm` onto the local cluster with a real node.

Used by `make cluster-up` (tools/cluster.py) and the chart proofs
(tests/integration/test_chart_helm.py). The chart itself is unchanged; what a cluster
without kube-proxy or cluster DNS needs comes in as values (specs/TEST-001-control-plane.md,
"Real node"):

* the operator and the gateway reach the API server on the node's bridge address:
  `KUBERNETES_SERVICE_HOST`/`_PORT` in `extraEnv` (no Service IPs are routed here);
* S3 runs on the host, on the bridge address: `s3.endpointUrl`, and a Secret with one key
  pair per process (the operator's and the gateway's scoped S3 identities) read through
  `extraEnv` `secretKeyRef`s, since `s3.credentialsSecret` would give both the same keys;
* sandbox egress to S3 is that address and port (`operator.sandbox.s3Egress`);
* one gateway replica (runs are reconciled on events: no polling interval to shorten).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rest import ApiException, Rest
from .s3 import S3Endpoint

__all__ = ["HelmRelease", "local_values", "resolve_helm", "s3_secret"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "smartspec"


def resolve_helm() -> Path:
    """$HELM_BIN, else the cached build of tools/build-helm.sh (built when missing)."""
    if os.environ.get("HELM_BIN"):
        return Path(os.environ["HELM_BIN"])
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "build-helm.sh"), "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tools/build-helm.sh failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("export HELM_BIN="))


def s3_secret(name: str, s3: S3Endpoint) -> dict[str, Any]:
    """A Secret with the operator's and the gateway's S3 key pairs, and retention's
    credentials file (the chart's `retention.s3CredentialsSecret` format)."""
    data = {
        f"{identity}-{field}": getattr(s3.credentials[identity], attribute)
        for identity in ("operator", "gateway")
        for field, attribute in (("id", "access_key_id"), ("secret", "secret_access_key"))
    }
    data["credentials"] = s3.credentials_text("retention")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _env(api_host: str, api_port: int, secret: str, identity: str) -> list[dict[str, Any]]:
    def key(field: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": secret, "key": f"{identity}-{field}"}}

    return [
        {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": key("id")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": key("secret")},
    ]


def local_values(
    *, api_host: str, api_port: int, s3: S3Endpoint, s3_keys: str, namespaces: list[str]
) -> dict[str, Any]:
    """Chart values for the local cluster (see the module docstring)."""
    s3_host, _, s3_port = s3.endpoint_url.removeprefix("http://").partition(":")
    return {
        "s3": {"bucket": s3.bucket, "endpointUrl": s3.endpoint_url, "region": s3.region},
        "retention": {"s3CredentialsSecret": s3_keys},
        "operator": {
            "namespaces": namespaces,
            "extraEnv": _env(api_host, api_port, s3_keys, "operator"),
            "sandbox": {
                "s3Egress": [
                    {
                        "to": [{"ipBlock": {"cidr": f"{s3_host}/32"}}],
                        "ports": [{"port": int(s3_port), "protocol": "TCP"}],
                    }
                ]
            },
        },
        "gateway": {
            "replicas": 1,
            "extraEnv": _env(api_host, api_port, s3_keys, "gateway"),
        },
    }


@dataclass(frozen=True)
class HelmRelease:
    """One release of charts/smartspec, driven through the helm CLI."""

    helm: Path
    kubeconfig: Path
    release: str
    namespace: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.helm), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr}")
        return result

    def install(self, values: dict[str, Any], values_file: Path, *extra: str) -> str:
        """`helm install` (creating the namespace) with a values file; returns helm's notes."""
        values_file.write_text(json.dumps(values, indent=1))
        args = ("install", self.release, str(CHART), "--create-namespace", "-f", str(values_file))
        return self.run(*args, *extra).stdout

    def upgrade(self, *extra: str) -> str:
        args = ("upgrade", self.release, str(CHART), "--reuse-values", *extra)
        return self.run(*args).stdout

    def uninstall(self) -> str:
        return self.run("uninstall", self.release, "--wait").stdout

    def wait_ready(self, rest: Rest, timeout: float = 240) -> list[dict[str, Any]]:
        """Wait until the release's operator and gateway pods are all Ready; returns them."""
        deadline = time.monotonic() + timeout
        selector = f"app.kubernetes.io/instance={self.release}"
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                pods = rest.get(
                    f"/api/v1/namespaces/{self.namespace}/pods", labelSelector=selector
                )["items"]
            except ApiException:
                pods = []
            components = {
                p["metadata"]["labels"].get("app.kubernetes.io/component")
                for p in pods
                if _ready(p) and not p["metadata"].get("deletionTimestamp")
            }
            if {"operator", "gateway"} <= components:
                return pods
            time.sleep(0.5)
        states = {p["metadata"]["name"]: p.get("status", {}) for p in pods}
        raise RuntimeError(f"release {self.release} not Ready after {timeout:.0f} s: {states}")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
