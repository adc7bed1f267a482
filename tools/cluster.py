"""`make cluster-up` / `make cluster-down`: a local SmartSpec cluster on a real node, kept running.

up    starts a keeper process that owns everything: the control plane (listening on the node's
      bridge address), the real node (kubelet + containerd + runc, tests/testcluster/realnode.py),
      S3 (SeaweedFS on the bridge address), the three images built from the Dockerfiles, and the
      chart installed by the real `helm install` (release smartspec in namespace smartspec). It
      adds a tenant namespace team-a (Pod Security restricted) where the groups
      smartspec:builders and smartspec:platform-admins hold the chart's roles, and prints
      `KUBECONFIG=<path>` (an admin kubeconfig whose namespace is team-a) as its last line.
      Running it again while the cluster is up prints the same line.
down  asks the keeper to stop everything and put the host back (processes, mounts, bridge,
      cgroups, sysctls); if the keeper died, undoes what its node record lists.

Logs, kubeconfigs and state live in ~/.cache/smartspec/cluster. Needs root and the node's
packages (tools/build-node.sh); `make demo` falls back to the fake node where they are missing.
See specs/TEST-001-control-plane.md, "Local cluster".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import config

from testcluster.chart import HelmRelease, local_values, resolve_helm, s3_secret
from testcluster.controlplane import ControlPlane, resolve_binaries
from testcluster.nodehost import clean_stale
from testcluster.realnode import RealNode, plan_real_node
from testcluster.rest import ApiException, Rest
from testcluster.s3 import S3Server, resolve_weed

HOME = Path(
    os.environ.get("SMARTSPEC_CLUSTER_DIR", Path.home() / ".cache" / "smartspec" / "cluster")
)
STATE = HOME / "state.json"
LOG = HOME / "keeper.log"
RELEASE = NAMESPACE = "smartspec"
TENANT = "team-a"
NO_REAL_NODE = 2  # the exit status of `up` on a machine that cannot run a node
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def say(text: str) -> None:
    print(text, flush=True)


def read_state() -> dict[str, Any] | None:
    """The running cluster's state, or None when no keeper is alive."""
    try:
        state: dict[str, Any] = json.loads(STATE.read_text())
        cmdline = Path(f"/proc/{state['keeper']}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    return state if b"cluster.py" in cmdline and b"serve" in cmdline else None


# ---------------------------------------------------------------- up


def up(timeout: float) -> int:
    if (state := read_state()) is not None:
        say(f"the cluster is already up (keeper pid {state['keeper']}); make cluster-down stops it")
        say(f"KUBECONFIG={state['kubeconfig']}")
        return 0
    HOME.mkdir(parents=True, exist_ok=True)
    STATE.unlink(missing_ok=True)
    started = time.monotonic()
    with LOG.open("ab") as log:
        keeper = subprocess.Popen(  # noqa: S603 - this script, by its own path
            [sys.executable, __file__, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make cluster-up`
        )
    say(f"starting (keeper pid {keeper.pid}, log {LOG}); a first run builds binaries and images")
    offset = LOG.stat().st_size
    while time.monotonic() - started < timeout:
        offset = _echo_log(offset)
        if keeper.poll() is not None:
            say(f"the keeper exited with {keeper.returncode}; see {LOG}")
            return NO_REAL_NODE if keeper.returncode == NO_REAL_NODE else 1
        if (state := read_state()) is not None and state.get("ready"):
            say(f"up in {time.monotonic() - started:.0f} s: {state['summary']}")
            say("kubectl apply -f examples/todo-service/ runs the example; make cluster-down stops")
            say(f"KUBECONFIG={state['kubeconfig']}")
            return 0
        time.sleep(0.5)
    say(f"not ready after {timeout:.0f} s; stopping it (log {LOG})")
    down(timeout=120)
    return 1


def _echo_log(offset: int) -> int:
    with LOG.open("rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            if line.startswith("cluster: "):
                say("  " + line.removeprefix("cluster: "))
        return fh.tell()


# ---------------------------------------------------------------- the keeper


def serve() -> int:
    """Start everything, record the state, wait for SIGTERM, then stop everything."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    run = HOME / "run"
    shutil.rmtree(run, ignore_errors=True)
    binaries = resolve_binaries(REPO)
    node, why_not = plan_real_node(REPO, binaries.kube_apiserver.parent, run / "node")
    if node is None:
        print(f"cluster: no real node on this machine: {why_not}", flush=True)
        return NO_REAL_NODE
    plane = ControlPlane(
        binaries, run / "control-plane", bind_address=node.address, kubelet_client=True
    )
    s3_server = S3Server(resolve_weed(REPO), run / "s3", "smartspec", host=node.address)
    try:
        if note := node.prepare_host():
            print(f"cluster: {note}", flush=True)
        _start(run, node, plane, s3_server)
        while True:
            time.sleep(5)
            node.check_alive()
            plane.check_alive()
    except KeyboardInterrupt:
        print("cluster: stopping", flush=True)
        return 0
    finally:
        problems = node.stop()
        s3_server.stop()
        plane.stop()
        STATE.unlink(missing_ok=True)
        outcome = f"NOT restored: {problems}" if problems else "restored"
        print(f"cluster: stopped; host {outcome}", flush=True)


def _start(run: Path, node: RealNode, plane: ControlPlane, s3_server: S3Server) -> None:
    t0 = time.monotonic()
    plane.start()
    print(f"cluster: control plane ready on {plane.server}", flush=True)
    node.start(plane)
    node.ensure_images("operator")
    print(f"cluster: node {node.name} Ready; images imported", flush=True)
    s3 = s3_server.start()
    print(f"cluster: S3 (SeaweedFS) at {s3.endpoint_url}, bucket {s3.bucket}", flush=True)
    admin = Rest(config.new_client_from_config(config_file=str(plane.kubeconfig("admin"))))  # type: ignore[no-untyped-call]
    for name, labels in ((NAMESPACE, {}), (TENANT, RESTRICTED)):
        admin.post("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
    admin.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", s3_secret("smartspec-s3", s3))
    release = HelmRelease(resolve_helm(), plane.kubeconfig("admin"), RELEASE, NAMESPACE)
    values = local_values(
        api_host=node.address,
        api_port=plane.api_port,
        s3=s3,
        s3_keys="smartspec-s3",
        namespaces=[],
    )
    release.install(values, run / "values.json")
    release.wait_ready(admin)
    print(f"cluster: helm release {RELEASE} installed; operator and gateway Ready", flush=True)
    _bind(admin, "smartspec-platform-admin", "smartspec:platform-admins", None)
    _bind(admin, "smartspec-builder", "smartspec:builders", TENANT)
    kubeconfig = run / "kubeconfig"
    document = json.loads(plane.kubeconfig("admin").read_text())
    document["contexts"][0]["context"]["namespace"] = TENANT
    kubeconfig.write_text(json.dumps(document, indent=2))
    kubeconfig.chmod(0o600)
    # The demo reads the run's artifacts with the S3 admin's keys: private to root.
    s3_file = run / "s3.json"
    s3_file.write_text(
        json.dumps({"endpoint": s3.endpoint_url, "bucket": s3.bucket, **s3.env("admin")})
    )
    s3_file.chmod(0o600)
    summary = (
        f"API {plane.server}, node {node.name} ({node.address}), S3 {s3.endpoint_url}, "
        f"chart {RELEASE}/{NAMESPACE}, tenant {TENANT}"
    )
    STATE.write_text(
        json.dumps(
            {
                "keeper": os.getpid(),
                "ready": True,
                "kubeconfig": str(kubeconfig),
                "kubeconfigs": {k: str(v) for k, v in plane.kubeconfigs.items()},
                "kubectl": str(node.tools.kube("kubectl")),
                "s3": str(s3_file),
                "summary": summary,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    )


def _bind(admin: Rest, role: str, group: str, namespace: str | None) -> None:
    path = "/apis/rbac.authorization.k8s.io/v1/"
    path += f"namespaces/{namespace}/rolebindings" if namespace else "clusterrolebindings"
    body = {
        "metadata": {"name": f"{role}-{group.replace(':', '-')}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }
    try:
        admin.post(path, body)
    except ApiException as error:
        if error.status != 409:
            raise


# ---------------------------------------------------------------- down


def down(timeout: float) -> int:
    state = read_state()
    if state is None:
        note = clean_stale()
        say(note or "no cluster is running")
        return 0
    os.kill(int(state["keeper"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_state() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    while Path(f"/proc/{state['keeper']}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if Path(f"/proc/{state['keeper']}").exists():
        say(f"the keeper did not stop within {timeout:.0f} s; see {LOG}")
        return 1
    say(LOG.read_text(errors="replace").splitlines()[-1].removeprefix("cluster: "))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait")
    arguments = parser.parse_args()
    if arguments.command == "up":
        return up(arguments.timeout)
    if arguments.command == "down":
        return down(min(arguments.timeout, 300))
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())
