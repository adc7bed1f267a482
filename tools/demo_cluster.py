"""`make demo` on a real node: the example applied with kubectl to the cluster of `make cluster-up`.

Starts the cluster when none is up (tools/cluster.py: control plane, kubelet + containerd node,
S3, images built from the Dockerfiles, the chart installed by helm), then applies the example
CreditBudget as a platform admin and the Spec and builtin GenerationRun as a builder, with
kubectl, watches the run to Succeeded and prints its status, the sandbox pods (containerd
containers of the generator and tester images) and the stored artifacts. The cluster keeps
running afterwards; `make cluster-down` stops it. tools/demo.py falls back to the fake node
where no real node can run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

TOOLS = Path(__file__).resolve().parent
EXAMPLE = TOOLS.parent / "examples" / "todo-service"
# tools/cluster.py's state file and tenant namespace.
HOME = Path(
    os.environ.get("SMARTSPEC_CLUSTER_DIR", Path.home() / ".cache" / "smartspec" / "cluster")
)
TENANT = "team-a"
RUN = "todo-api-builtin"
NO_REAL_NODE = 2


def say(text: str) -> None:
    print(text, flush=True)


def read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((HOME / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if Path(f"/proc/{state['keeper']}").exists() else None


def run(timeout: float) -> int:
    """The demo; exit status 2 when this machine cannot run a real node."""
    started = time.monotonic()
    state = read_state()
    if state is None:
        say("1/4 starting the local cluster (make cluster-up; a first run builds everything) ...")
        up = subprocess.run([sys.executable, str(TOOLS / "cluster.py"), "up"], check=False)  # noqa: S603
        if up.returncode != 0:
            return up.returncode
        state = read_state()
        if state is None:
            return 1
    else:
        say(f"1/4 using the running cluster ({state['summary']})")

    def kubectl(identity: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = state["kubeconfigs"][identity]
        argv = [state["kubectl"], "--kubeconfig", config, "-n", TENANT, *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)  # noqa: S603

    say(f"2/4 kubectl apply in {TENANT}: budget as a platform admin, spec and run as a builder")
    kubectl("builder", "delete", "generationrun", RUN, "--ignore-not-found", "--wait")
    applied_at = time.monotonic()
    for identity, files in (
        ("platform_admin", ["creditbudget.yaml"]),
        ("builder", ["spec.yaml", "generationrun-builtin.yaml"]),
    ):
        result = kubectl(identity, "apply", *(f"--filename={EXAMPLE / f}" for f in files))
        say("    " + result.stdout.strip().replace("\n", "\n    ") + result.stderr.strip())
        if result.returncode != 0:
            return 1

    say("3/4 running: generator Job, then test Job, as containerd containers ...")
    status = watch(kubectl, timeout)
    say(f"    apply -> {status.get('phase')} in {time.monotonic() - applied_at:.1f} s")

    say("4/4 result")
    report(kubectl, status, Path(state["s3"]))
    say(f"\nwall time {time.monotonic() - started:.0f} s; the cluster keeps running:")
    say(f"  KUBECONFIG={state['kubeconfig']}   (make cluster-down stops it)")
    return 0 if status.get("phase") == "Succeeded" else 1


def watch(kubectl: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = kubectl("builder", "get", "generationrun", RUN, "-o", "json")
        if got.returncode == 0:
            status = json.loads(got.stdout).get("status") or {}
        line = f"    phase={status.get('phase', 'Pending')} attempt={status.get('attempt', '-')}"
        if line != last:
            say(line)
            last = line
        if status.get("phase") in {"Succeeded", "Failed"}:
            return status
        time.sleep(0.3)
    say(f"    the run did not finish within {timeout:.0f} s")
    return status


def report(kubectl: Any, status: dict[str, Any], s3_file: Path) -> None:
    conditions = {c["type"]: f"{c['status']} ({c['reason']})" for c in status.get("conditions", [])}
    evidence = status.get("evidence", {})
    for kind in ("Admitted", "Generated", "Tested", "Succeeded"):
        say(f"    {kind + ':':<13} {conditions.get(kind, '-')}")
    say(
        f"    tests:        {evidence.get('testsPassed', 0)} passed, "
        f"{evidence.get('testsFailed', 0)} failed; requirements covered "
        f"{evidence.get('requirementsCovered', 0)}/{evidence.get('requirementsTotal', 0)}"
    )
    container = ".status.containerStatuses[0]"
    columns = (
        f"POD:.metadata.name,IMAGE:{container}.image,CONTAINER:{container}.containerID,"
        "NODE:.spec.nodeName"
    )
    pods = kubectl(
        "admin", "get", "pods", "-l", f"smartspec.dev/run={RUN}", "-o", f"custom-columns={columns}"
    )
    say("    sandbox pods:\n      " + pods.stdout.strip().replace("\n", "\n      "))
    artifacts = status.get("artifacts", {})
    uri = artifacts.get("uri")
    say(f"    artifacts:    {uri} ({artifacts.get('fileCount')} files)")
    if uri:
        s3 = json.loads(s3_file.read_text())
        client = boto3.client(
            "s3",
            endpoint_url=s3["endpoint"],
            aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
            region_name=s3["AWS_REGION"],
        )
        prefix = uri.split("/", 3)[3]
        for item in client.list_objects_v2(Bucket=s3["bucket"], Prefix=prefix).get("Contents", []):
            say(f"      {item['Key'][len(prefix) :]:<28} {item['Size']:>7} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the run")
    return run(parser.parse_args().timeout)


if __name__ == "__main__":
    raise SystemExit(main())
