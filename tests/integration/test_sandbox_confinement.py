"""Confinement seen from inside the real generator and tester images, on the real node.

Each sandbox Job is built by the operator's own builder (smartspec.builders.jobs), so its pod
has exactly the security context, volumes and service-account settings a run gets; only the
container's command is swapped for a probe that reports, from inside the container: its uid,
effective capabilities, no_new_privs and seccomp mode (/proc/self/status), whether a
service-account token is mounted, which paths it can write (the root filesystem and the
instructions mount must refuse; /workspace and /tmp must accept), and any string shaped like
a provider key in its environment or readable files. CORE-004 "Sandbox contract";
specs/TEST-001-control-plane.md, "Real node".
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1 import GenerationRun
from smartspec.builders.jobs import (
    S3_EGRESS_ANY_HTTPS,
    SandboxRole,
    SandboxSettings,
    build_generator_job,
    build_instructions_secret,
    build_test_job,
)
from testcluster.harness import wait_for
from testcluster.plugin import Cluster
from testcluster.realnode import RealNode
from testcluster.rest import Rest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"

# Runs in the image's own python; prints one JSON line.
PROBE = r"""
import json, os, re
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
def write(path):
    try:
        with open(os.path.join(path, ".probe"), "w") as handle:
            handle.write("x")
        os.unlink(os.path.join(path, ".probe"))
        return "ok"
    except OSError as error:
        return error.strerror
key = re.compile(r"sk-[A-Za-z0-9_-]{16,}")
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
volumes = [m for m in mounts if m != "/" and not m.startswith(("/proc", "/sys", "/dev"))]
files = []
for top in ("/etc", "/var", "/run", "/tmp", "/workspace", "/root", "/home", "/opt", *volumes):
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.isfile(path) and os.path.getsize(path) < 4_000_000:
                    with open(path, errors="ignore") as handle:
                        if key.search(handle.read()):
                            files.append(path)
            except OSError:
                pass
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "CapEff": status["CapEff"].strip(), "CapPrm": status["CapPrm"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(), "Seccomp": status["Seccomp"].strip(),
    "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount"),
    "writes": {p: write(p) for p in ("/", "/etc", "/usr/local/lib", "/var/run/smartspec",
                                     "/workspace", "/tmp")},
    "key_env": sorted(k for k, v in os.environ.items() if key.search(v)),
    "key_files": files,
}))
"""
READ_ONLY = "Read-only file system"


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> RealNode:
    if cluster.real_node is None:
        pytest.skip("needs the real node: the fake node runs pods as host processes")
    return cluster.real_node


def _run(namespace: str) -> GenerationRun:
    document: dict[str, Any] = yaml.safe_load((EXAMPLE / "generationrun-builtin.yaml").read_text())
    document["metadata"].update(namespace=namespace, uid=f"uid-{secrets.token_hex(8)}")
    return GenerationRun.model_validate(document)


def _probe(rest: Rest, namespace: str, role: SandboxRole) -> dict[str, Any]:
    run = _run(namespace)
    settings = SandboxSettings(
        generator_image="ghcr.io/smartspec/sandbox-generator:0.1.0",
        tester_image="ghcr.io/smartspec/sandbox-tester:0.1.0",
        s3_egress=S3_EGRESS_ANY_HTTPS,
    )
    secret = build_instructions_secret(run, 1, role, json.dumps({"role": role.value}).encode())
    build = build_generator_job if role is SandboxRole.GENERATOR else build_test_job
    job = build(
        run, 1, settings, instructions_secret=secret["metadata"]["name"], deadline_seconds=120
    )
    # The run object is not in the API: owned by it, the garbage collector would delete both.
    job["metadata"].pop("ownerReferences", None)
    secret["metadata"].pop("ownerReferences", None)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python", "-c", PROBE]
    rest.post(f"/api/v1/namespaces/{namespace}/secrets", secret)
    rest.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    def finished() -> dict[str, Any] | None:
        pods = rest.get(
            f"/api/v1/namespaces/{namespace}/pods",
            labelSelector=f"job-name={job['metadata']['name']}",
        )["items"]
        done = [p for p in pods if p.get("status", {}).get("phase") in ("Succeeded", "Failed")]
        return done[0] if done else None

    pod = wait_for(finished, f"the {role} probe pod", timeout=120)
    status = pod["status"]["containerStatuses"][0]
    assert status["containerID"].startswith("containerd://")
    log = rest.text(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/log")
    assert pod["status"]["phase"] == "Succeeded", log
    report: dict[str, Any] = json.loads(log.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("role", list(SandboxRole), ids=str)
def test_sandbox_container_is_confined(
    cluster: Cluster, node: RealNode, namespace: str, role: SandboxRole
) -> None:
    seen = _probe(cluster.rest("admin"), namespace, role)
    assert (seen["uid"], seen["gid"]) == (65532, 65532)
    assert seen["CapEff"] == seen["CapPrm"] == "0000000000000000"
    assert seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == "2"  # filter mode: the runtime's default profile
    assert seen["token"] is False
    assert seen["writes"] == {
        "/": READ_ONLY,
        "/etc": READ_ONLY,
        "/usr/local/lib": READ_ONLY,
        "/var/run/smartspec": READ_ONLY,
        "/workspace": "ok",
        "/tmp": "ok",
    }
    assert seen["key_env"] == []
    assert seen["key_files"] == []
