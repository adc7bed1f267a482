"""Figures of the real test node, printed (specs/TEST-001-control-plane.md, "Real node").

Starts the control plane and the real node (tests/testcluster/realnode.py), times each step,
creates restricted pods of the generator image one after another (create -> Running, and a
`true` command's create -> Succeeded), prints the node processes' resident memory, stops
everything and times that too. Tests never assert on time; this script only prints.

Usage: .venv/bin/python tools/measure_node.py [--pods 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import config

from testcluster.controlplane import ControlPlane, resolve_binaries
from testcluster.realnode import plan_real_node
from testcluster.rest import Rest

IMAGE = "ghcr.io/smartspec/sandbox-generator:0.1.0"
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, command: list[str]) -> dict[str, object]:
    container = {"name": "main", "image": IMAGE, "command": command, "securityContext": RESTRICTED}
    spec = {"restartPolicy": "Never", "automountServiceAccountToken": False}
    return {"metadata": {"name": name}, "spec": {**spec, "containers": [container]}}


def until(rest: Rest, path: str, phases: set[str]) -> float:
    start = time.monotonic()
    while rest.get(path).get("status", {}).get("phase") not in phases:
        time.sleep(0.02)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5)
    count = parser.parse_args().pods
    run = Path(tempfile.mkdtemp(prefix="smartspec-measure-"))
    binaries = resolve_binaries(REPO)
    node, why_not = plan_real_node(REPO, binaries.kube_apiserver.parent, run / "node")
    if node is None:
        print(f"no real node here: {why_not}")
        return 2
    plane = ControlPlane(binaries, run / "cp", bind_address=node.address, kubelet_client=True)
    t0 = time.monotonic()
    try:
        node.prepare_host()
        plane.start()
        print(f"control plane ready: {plane.startup_seconds['ready']:.1f} s")
        node.start(plane)
        s = node.startup_seconds
        print(
            f"node: containerd {s['containerd']:.2f} s, images imported by {s['images']:.1f} s, "
            f"Ready by {s['ready']:.1f} s (kubelet start to Ready {s['ready'] - s['images']:.1f} s)"
        )
        print(f"start to Ready in all: {time.monotonic() - t0:.1f} s")
        rest = Rest(config.new_client_from_config(config_file=str(plane.kubeconfig("admin"))))  # type: ignore[no-untyped-call]
        rest.post("/api/v1/namespaces", {"metadata": {"name": "measure"}})
        while not rest.get("/api/v1/namespaces/measure/serviceaccounts").get("items"):
            time.sleep(0.1)
        running, done = [], []
        for i in range(count):
            rest.post("/api/v1/namespaces/measure/pods", pod(f"sleep-{i}", ["sleep", "30"]))
            running.append(until(rest, f"/api/v1/namespaces/measure/pods/sleep-{i}", {"Running"}))
            rest.post("/api/v1/namespaces/measure/pods", pod(f"true-{i}", ["true"]))
            done.append(until(rest, f"/api/v1/namespaces/measure/pods/true-{i}", {"Succeeded"}))
        print(
            f"restricted pod create -> Running: median {statistics.median(running):.2f} s "
            f"(min {min(running):.2f}, max {max(running):.2f}, n={count})"
        )
        print(
            f"`true` create -> Succeeded: median {statistics.median(done):.2f} s "
            f"(min {min(done):.2f}, max {max(done):.2f})"
        )
        mib = {k: f"{v / 2**20:.0f} MiB" for k, v in node.rss().items()}
        print(f"RSS with {count} pods running: {mib}")
    finally:
        t1 = time.monotonic()
        problems = node.stop()
        plane.stop()
        left = problems or "nothing"
        print(f"stop and restore: {time.monotonic() - t1:.1f} s; not restored: {left}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
