"""The local demo (`make demo`): the example scenario through the whole pipeline, on this machine.

Starts a real control plane (etcd, kube-apiserver, kube-controller-manager built from Go
modules), a real S3 server (SeaweedFS, built from its Go module), the SmartSpec operator and
gateway as processes, and the test-only local node, then applies the example CreditBudget,
Spec and builtin GenerationRun as a platform admin and a builder would, shows the run's
progress, and prints its status, cost, test results and where the artifacts are.

Where this machine can run a real node (root and the packages of tools/build-node.sh), `make
demo` runs tools/demo_cluster.py instead: the same example applied with kubectl to the cluster
of `make cluster-up`, the sandboxes in containers. Only where it cannot (or with
SMARTSPEC_NODE=fake) does it fall back to this: sandbox Jobs run as LOCAL PROCESSES with no
container isolation (the fake local node of specs/TEST-001-control-plane.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml

from testcluster.harness import TEST_TOKEN_KEY, GatewayProcess, OperatorProcess
from testcluster.localnode import LocalNode
from testcluster.stack import LocalStack

NAMESPACE = "team-a"
NO_REAL_NODE = 2  # tools/demo_cluster.py's exit status where no real node can run
EXAMPLE = REPO / "examples" / "todo-service"
API = f"/apis/smartspec.dev/v1alpha1/namespaces/{NAMESPACE}"


def say(text: str) -> None:
    print(text, flush=True)


def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLE / name).read_text())
    return loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for the run")
    arguments = parser.parse_args()
    if os.environ.get("SMARTSPEC_NODE") != "fake":
        real = subprocess.run(  # noqa: S603 - our own script
            [
                sys.executable,
                str(REPO / "tools" / "demo_cluster.py"),
                "--timeout",
                str(arguments.timeout),
            ],
            check=False,
        )
        if real.returncode != NO_REAL_NODE:
            return real.returncode
        say("WARNING: no real node on this machine (see above): falling back to the FAKE local")
        say("         node, where sandbox Jobs run as host processes with NO container isolation.")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="smartspec-demo-"))
    say("SmartSpec local demo")
    say("  NOTE: sandbox Jobs run as local processes here, with NO container isolation;")
    say("        on a cluster they run in Pod Security 'restricted' pods.")
    say("1/5 starting the control plane (a first run compiles it: several minutes) and S3 ...")
    with LocalStack(work) as stack:
        cluster, s3 = stack.cluster, stack.s3
        if cluster is None or s3 is None:
            raise RuntimeError("the local stack did not start")
        say(f"    API server {stack.plane.server if stack.plane else ''}; bucket {s3.bucket}")
        say("2/5 starting the local node, the gateway and the operator ...")
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        node = stack.own(LocalNode(cluster.new_api_client("admin"), base_env={"PATH": path}))
        node.start()
        keys = work / "token-keys"
        keys.write_bytes(TEST_TOKEN_KEY + b"\n")
        config = work / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "name": "gpt-4o-mini",
                            "litellmModel": "openai/gpt-4o-mini",
                            "apiKeyEnv": "OPENAI_API_KEY",
                        }
                    ]
                }
            )
        )
        gateway = stack.own(
            GatewayProcess(
                cluster,
                s3,
                config_path=config,
                keys_path=keys,
                log_path=work / "gateway.log",
                replica="demo-gateway",
            )
        )
        gateway.start()
        stack.tenant(NAMESPACE)
        operator = stack.own(
            OperatorProcess(
                cluster,
                s3,
                [NAMESPACE],
                work / "operator.log",
                {
                    "SMARTSPEC_TOKEN_KEYS_FILE": str(keys),
                    "SMARTSPEC_GATEWAY_URL": f"{gateway.url}/v1",
                    "SMARTSPEC_LOG_LEVEL": "INFO",
                },
            )
        )
        operator.start()
        say(f"    gateway {gateway.url} (the demo run uses the builtin generator: no model call)")

        say("3/5 applying the example as a platform admin (budget) and a builder (spec, run) ...")
        cluster.rest("platform_admin").post(f"{API}/creditbudgets", document("creditbudget.yaml"))
        builder = cluster.rest("builder")
        builder.post(f"{API}/specs", document("spec.yaml"))
        builder.post(f"{API}/generationruns", document("generationrun-builtin.yaml"))

        say("4/5 running (generator Job, then test Job) ...")
        status = watch(stack, "todo-api-builtin", arguments.timeout)

        say("5/5 result")
        report(stack, status)
        say(f"\nlogs and kubeconfigs: {work}   wall time: {time.monotonic() - started:.0f} s")
        return 0 if status.get("phase") == "Succeeded" else 1


def watch(stack: LocalStack, name: str, timeout: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = stack.admin.get(f"{API}/generationruns/{name}").get("status") or {}
        line = f"    phase={status.get('phase', 'Pending')} attempt={status.get('attempt', '-')}"
        if status.get("evidence"):
            line += f" tests={status['evidence'].get('summary')}"
        if line != last:
            say(line)
            last = line
        if status.get("phase") in {"Succeeded", "Failed"}:
            return status
        time.sleep(0.5)
    say(f"    the run did not finish within {timeout} s")
    return status


def report(stack: LocalStack, status: dict[str, Any]) -> None:
    conditions = {c["type"]: f"{c['status']} ({c['reason']})" for c in status.get("conditions", [])}
    pinned = status.get("pinnedSpec", {})
    evidence = status.get("evidence", {})
    usage = status.get("usage") or {"credits": 0, "calls": 0}
    say(f"    phase:        {status.get('phase')}")
    for kind in ("Admitted", "Generated", "Tested", "Succeeded"):
        say(f"    {kind + ':':<13} {conditions.get(kind, '-')}")
    say(
        f"    spec:         {pinned.get('name')} revision {pinned.get('revision')} "
        f"{pinned.get('contentHash', '')[:23]}..."
    )
    say(f"    cost:         {usage.get('credits', 0)} credits, {usage.get('calls', 0)} model calls")
    say(
        f"    tests:        {evidence.get('testsPassed', 0)} passed, "
        f"{evidence.get('testsFailed', 0)} failed; requirements covered "
        f"{evidence.get('requirementsCovered', 0)}/{evidence.get('requirementsTotal', 0)}"
    )
    artifacts = status.get("artifacts", {})
    say(f"    artifacts:    {artifacts.get('uri')} ({artifacts.get('fileCount')} files)")
    say(f"    manifest:     sha256 {artifacts.get('manifestSha256', '')[7:23]}...")
    say(f"    test report:  {evidence.get('reportUri')}")
    uri = artifacts.get("uri")
    if uri:
        s3 = stack.s3
        if s3 is None:
            return
        client = s3.client("admin")  # listing is the admin's: the processes' keys cannot list
        prefix = uri.split("/", 3)[3]
        listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
        for item in listing.get("Contents", []):
            say(f"      {item['Key'][len(prefix) :]:<28} {item['Size']:>7} bytes")
        summary_key = prefix.removesuffix("files/") + "report/summary.json"
        summary = json.loads(client.get_object(Bucket=s3.bucket, Key=summary_key)["Body"].read())
        for requirement, result in sorted(summary.get("requirements", {}).items()):
            mark = "passed" if result.get("passed") else "NOT covered"
            say(f"    {requirement}: {mark} by {len(result.get('tests', []))} tests")


if __name__ == "__main__":
    raise SystemExit(main())
