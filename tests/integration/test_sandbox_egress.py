"""Sandbox egress under an enforcing NetworkPolicy controller, on the real node.

The enforcer is kube-router's firewall alone (`--run-firewall`, no router, no service proxy),
v2.1.0 built from its Go module by tools/build-node.sh: iptables + ipset, which this kernel
has (the nft-queue enforcer finds no NFT_QUEUE and enforces nothing). It runs only for this
module and leaves no rule, set or table behind (testcluster.nodehost).

The generator's NetworkPolicy is the operator's own (smartspec.builders.jobs, an llm run, S3
egress pinned to the S3 server's address and port). A probe pod carrying the generator's
labels tries TCP connections to: the gateway (a pod labelled like the chart's gateway pods,
in the gateway namespace), S3 on the node's bridge address, the API server, the run's tester
pod, another tenant's pod and a port on the node; right away, as a sandbox's own code would,
and again 5 s later. An identical probe without the generator's labels, run before the
policies exist, reaches every one of them, so each refusal is the policy's.

What this shows, and what it does not: once kube-router has seen the pod (the later round)
the policy holds: gateway and S3 only. kube-router writes a pod's rules only after the pod's
IP is published, so a new pod's first connections (the first round) pass unchecked; that gap
is recorded by an xfail test, and enforcement is claimed for checked pods only.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1 import GenerationRun
from smartspec.builders.jobs import (
    DEFAULT_GATEWAY_POD_LABELS,
    SandboxRole,
    SandboxSettings,
    build_network_policy,
    run_labels,
)
from testcluster.harness import wait_for
from testcluster.plugin import PSA_LABELS, Cluster
from testcluster.realnode import RealNode
from testcluster.rest import Rest
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"
IMAGE = "ghcr.io/smartspec/sandbox-generator:0.1.0"
PORT = 8000
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
SERVE = f"""
import socket
server = socket.socket()
server.bind(("0.0.0.0", {PORT}))
server.listen(64)
while True:
    server.accept()[0].close()
"""
# Connects to every target right away, and again 5 s later; prints both rounds'
# {name: "open" | error}.
PROBE = """
import json, socket, sys, time
def round():
    result = {}
    for name, address in json.loads(sys.argv[1]).items():
        try:
            socket.create_connection((address[0], address[1]), timeout=3).close()
            result[name] = "open"
        except OSError as error:
            result[name] = type(error).__name__
    return result
first = round()
time.sleep(5)
print(json.dumps({"first": first, "later": round()}))
"""


@pytest.fixture(scope="module")
def enforcer(cluster: Cluster) -> Iterator[RealNode]:
    node = cluster.real_node
    if node is None:
        pytest.skip("needs the real node: the fake node has no network to police")
    node.start_enforcer(cluster.kubeconfig("admin"))
    try:
        yield node
    finally:
        node.stop_enforcer()


def _namespace(admin: Rest, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    admin.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": PSA_LABELS}})
    wait_for(lambda: _has_default_account(admin, name), f"namespace {name}")
    return name


def _has_default_account(admin: Rest, namespace: str) -> bool:
    return any(
        a["metadata"]["name"] == "default"
        for a in admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts")["items"]
    )


def _pod(name: str, labels: dict[str, str], command: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }


def _running_ip(admin: Rest, namespace: str, name: str) -> str:
    def ip() -> str | None:
        status = admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}").get("status", {})
        return str(status["podIP"]) if status.get("phase") == "Running" else None

    return wait_for(ip, f"pod {namespace}/{name} to run")


def _probe(admin: Rest, namespace: str, name: str, labels: dict[str, str], targets: Any) -> Any:
    command = ["python", "-c", PROBE, json.dumps(targets)]
    admin.post(f"/api/v1/namespaces/{namespace}/pods", _pod(name, labels, command))

    def done() -> str | None:
        pod = admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            return None
        return admin.text(f"/api/v1/namespaces/{namespace}/pods/{name}/log")

    return json.loads(wait_for(done, f"probe {name}", timeout=90).strip().splitlines()[-1])


@contextlib.contextmanager
def _node_port(address: str) -> Iterator[int]:
    """A TCP listener on the node's bridge address, standing in for any host service."""
    server = socket.create_server((address, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


FORBIDDEN = ("api-server", "tester", "other-tenant", "node-port")


@pytest.fixture(scope="module")
def generator_probe(cluster: Cluster, enforcer: RealNode, s3: S3Endpoint) -> dict[str, Any]:
    """What a generator pod reached, in both rounds (one run of the probes for the module)."""
    with _node_port(cluster.host_address) as node_port:
        return _generator_probe(cluster, s3, node_port)


def _generator_probe(cluster: Cluster, s3: S3Endpoint, node_port: int) -> dict[str, Any]:
    admin = cluster.rest("admin")
    assert cluster.control_plane is not None
    gateways, tenant, other = (
        _namespace(admin, p) for p in ("egress-gw", "egress", "egress-other")
    )
    document = yaml.safe_load((EXAMPLE / "generationrun-llm.yaml").read_text())
    document["metadata"].update(namespace=tenant, uid=f"uid-{secrets.token_hex(8)}")
    run = GenerationRun.model_validate(document)
    s3_host, _, s3_port = s3.endpoint_url.removeprefix("http://").partition(":")
    settings = SandboxSettings(
        generator_image=IMAGE,
        tester_image=IMAGE,
        s3_egress=[
            {
                "to": [{"ipBlock": {"cidr": f"{s3_host}/32"}}],
                "ports": [{"port": int(s3_port), "protocol": "TCP"}],
            }
        ],
        gateway_namespace=gateways,
    )
    serve = ["python", "-c", SERVE]
    for namespace, name, labels in (
        (gateways, "gateway", dict(DEFAULT_GATEWAY_POD_LABELS)),
        (tenant, "tester", run_labels(run, SandboxRole.TESTER, 1)),
        (other, "other-tenant", {"app": "other"}),
    ):
        admin.post(f"/api/v1/namespaces/{namespace}/pods", _pod(name, labels, serve))
    targets = {
        "gateway": (_running_ip(admin, gateways, "gateway"), PORT),
        "s3": (s3_host, int(s3_port)),
        "api-server": (cluster.host_address, cluster.control_plane.api_port),
        "tester": (_running_ip(admin, tenant, "tester"), PORT),
        "other-tenant": (_running_ip(admin, other, "other-tenant"), PORT),
        "node-port": (cluster.host_address, node_port),
    }

    before = _probe(admin, tenant, "before", {"app": "control"}, targets)
    everything = dict.fromkeys(targets, "open")
    assert before == {"first": everything, "later": everything}, "all answer with no policy"

    for role in SandboxRole:
        policy = build_network_policy(run, settings, role)
        policy["metadata"].pop("ownerReferences", None)  # the run object is not in the API
        admin.post(f"/apis/networking.k8s.io/v1/namespaces/{tenant}/networkpolicies", policy)

    labels = run_labels(run, SandboxRole.GENERATOR, 1)
    seen: dict[str, Any] = _probe(admin, tenant, "generator", labels, targets)
    return seen


def test_the_generator_reaches_only_the_gateway_and_s3_once_checked(
    generator_probe: dict[str, Any],
) -> None:
    later = generator_probe["later"]
    assert (later["gateway"], later["s3"]) == ("open", "open"), generator_probe
    assert [k for k in FORBIDDEN if later[k] == "open"] == [], generator_probe


@pytest.mark.xfail(
    reason="kube-router v2.1.0 writes a pod's rules only after its IP is published: a new "
    "pod's first connections pass unchecked (measured here: API server, other tenant and node "
    "port reached at container start)",
    strict=False,
)
def test_the_generators_first_connections_are_checked_too(
    generator_probe: dict[str, Any],
) -> None:
    first = generator_probe["first"]
    assert [k for k in FORBIDDEN if first[k] == "open"] == [], generator_probe
