"""What the GenerationRun integration tests share: the example manifests, the operator's
settings for them, and waiting for a run to finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from smartspec.builders.rbac import OPERATOR_LEADER_ELECTION_ROLE
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.rest import Rest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service"
API = "/apis/smartspec.dev/v1alpha1/namespaces"


def example(name: str) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLE / name).read_text())
    assert isinstance(document, dict)
    return document


def run_status(rest: Rest, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (
        rest.get(f"{API}/{namespace}/generationruns/{name}").get("status") or {}
    )
    return status


def finished(rest: Rest, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = run_status(rest, namespace, name)
        return status if status.get("phase") in {"Succeeded", "Failed"} else None

    return wait_for(probe, f"run {name} to finish", timeout=240)


def operator_env(tmp_path: Path, gateway_url: str = "http://127.0.0.1:9/v1") -> dict[str, str]:
    keys = tmp_path / "operator-token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    return {
        "SMARTSPEC_TOKEN_KEYS_FILE": str(keys),
        "SMARTSPEC_GATEWAY_URL": gateway_url,
        "SMARTSPEC_GATEWAY_NAMESPACE": "smartspec",
    }


def bind_leader_election(rest: Rest, namespace: str) -> None:
    """The operator's leader-election role, bound in this namespace only (as the chart's
    Role is), for operators that keep their Lease there."""
    rest.post(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        {
            "metadata": {"name": "operator-leader-election"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": OPERATOR_LEADER_ELECTION_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "operator"}
            ],
        },
    )


def wait_for_attestations(rest: Rest, namespace: str) -> None:
    """Every Succeeded or Failed run in the namespace has status.provenance (CORE-005)."""
    path = f"/apis/smartspec.dev/v1alpha1/namespaces/{namespace}/generationruns"

    def unattested() -> list[str]:
        return [
            run["metadata"]["name"]
            for run in rest.get(path)["items"]
            if (run.get("status") or {}).get("phase") in {"Succeeded", "Failed"}
            and not run["status"].get("provenance")
        ]

    # The operator waits up to a minute for the gateway's last charges before it signs.
    wait_for(lambda: not unattested(), f"every finished run in {namespace} to be attested", 90)
