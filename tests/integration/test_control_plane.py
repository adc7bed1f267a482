"""Integration tests of the test environment itself: the real control plane, the node of this
machine (real, or the fake local node; the fake node's own tests skip on a real one), RBAC
with the static-token identities and the S3 endpoint.

See specs/TEST-001-control-plane.md. Polls with generous timeouts; no speed assertions.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from testcluster.localnode import LocalNode
from testcluster.plugin import Cluster
from testcluster.realnode import RealNode
from testcluster.rest import ApiException, Obj, Rest
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
# Imported into the real node's containerd (tools/build-images.sh); the fake node ignores it.
IMAGE = "ghcr.io/smartspec/sandbox-tester:0.1.0"

# The securityContext the Pod Security "restricted" profile requires of every container.
RESTRICTED_SC: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod_spec(command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "containers": [
            {"name": "main", "image": IMAGE, "command": command, "securityContext": RESTRICTED_SC}
        ],
        **extra,
    }


def _py(code: str) -> list[str]:
    # The image's python on the real node, this interpreter on the fake one (first on PATH).
    return ["python", "-c", code]


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _message(exc: ApiException) -> str:
    """The ``message`` of the Status object the API server answered with."""
    return str(json.loads(str(exc.body))["message"])


def _pod(rest: Rest, ns: str, name: str) -> Obj:
    return rest.get(f"/api/v1/namespaces/{ns}/pods/{name}")


def _pod_in_phase(rest: Rest, ns: str, name: str, phase: str) -> Obj | None:
    pod = _pod(rest, ns, name)
    return pod if pod.get("status", {}).get("phase") == phase else None


def test_pod_security_restricted_is_enforced(cluster: Cluster, namespace: str) -> None:
    rest = cluster.rest()
    pods = f"/api/v1/namespaces/{namespace}/pods"
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["true"],
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    with pytest.raises(ApiException) as excinfo:
        rest.post(pods, privileged)
    assert excinfo.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in _message(excinfo.value)

    compliant = {"metadata": {"name": "compliant"}, "spec": _pod_spec(["true"])}
    created = rest.post(pods, compliant)
    assert created["metadata"]["name"] == "compliant"


def _job(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": _pod_spec(command)}},
    }


def _job_condition(rest: Rest, ns: str, name: str) -> str | None:
    job = rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_jobs_complete_and_fail_through_job_controller(
    cluster: Cluster, namespace: str, local_node: LocalNode | RealNode
) -> None:
    rest = cluster.rest()
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    rest.post(jobs, _job("ok", _py("import sys; sys.exit(0)")))
    rest.post(jobs, _job("bad", _py("import sys; sys.exit(1)")))

    assert (
        _wait_for("job ok to finish", lambda: _job_condition(rest, namespace, "ok")) == "Complete"
    )
    assert (
        _wait_for("job bad to finish", lambda: _job_condition(rest, namespace, "bad")) == "Failed"
    )

    for job, phase, code in (("ok", "Succeeded", 0), ("bad", "Failed", 1)):
        pods = rest.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"job-name={job}")[
            "items"
        ]
        assert [p["status"]["phase"] for p in pods] == [phase]
        assert pods[0]["spec"]["nodeName"] == local_node.name
        term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == code
    bad = rest.get(f"{jobs}/bad")
    failed = [c for c in bad["status"]["conditions"] if c["type"] == "Failed"]
    assert failed[0]["reason"] == "BackoffLimitExceeded"


def test_local_node_env_deadline_and_deletion(
    cluster: Cluster, namespace: str, fake_node: LocalNode
) -> None:
    rest = cluster.rest()
    rest.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}},
    )
    env_pod: Obj = {
        "metadata": {"name": "env"},
        "spec": _pod_spec(
            _py(
                "import os; print(os.environ['LITERAL'], os.environ['FROM_SECRET'], "
                "os.environ['POD'], '$(LITERAL)-x')"
            ),
        ),
    }
    env_pod["spec"]["containers"][0]["env"] = [
        {"name": "LITERAL", "value": "plain"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    slow = {
        "metadata": {"name": "slow"},
        "spec": _pod_spec(_py("import time; time.sleep(600)"), activeDeadlineSeconds=2),
    }
    victim = {
        "metadata": {"name": "victim"},
        "spec": _pod_spec(_py("import time; time.sleep(600)"), terminationGracePeriodSeconds=1),
    }
    for body in (env_pod, slow, victim):
        rest.post(f"/api/v1/namespaces/{namespace}/pods", body)

    env_done = _wait_for(
        "env pod to succeed", lambda: _pod_in_phase(rest, namespace, "env", "Succeeded")
    )
    assert env_done["spec"]["nodeName"] == fake_node.name
    assert fake_node.logs(namespace, "env").strip() == "plain s3cr3t env plain-x"

    slow_done = _wait_for(
        "slow pod to hit its deadline", lambda: _pod_in_phase(rest, namespace, "slow", "Failed")
    )
    assert slow_done["status"]["reason"] == "DeadlineExceeded"

    _wait_for("victim pod to run", lambda: _pod_in_phase(rest, namespace, "victim", "Running"))
    rest.delete(f"/api/v1/namespaces/{namespace}/pods/victim")

    def gone() -> bool:
        try:
            _pod(rest, namespace, "victim")
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    _wait_for("deleted pod to disappear (process killed, grace-0 delete)", gone)


def test_local_node_restarts_on_failure(
    cluster: Cluster, namespace: str, fake_node: LocalNode
) -> None:
    # Fails on the first attempt, succeeds on the second (the pod's work dir persists).
    code = (
        "import os, sys; first = not os.path.exists('seen'); open('seen', 'w').close(); "
        "sys.exit(3 if first else 0)"
    )
    rest = cluster.rest()
    spec = _pod_spec(_py(code))
    spec["restartPolicy"] = "OnFailure"
    rest.post(f"/api/v1/namespaces/{namespace}/pods", {"metadata": {"name": "flaky"}, "spec": spec})
    pod = _wait_for(
        "flaky pod to succeed after a restart",
        lambda: _pod_in_phase(rest, namespace, "flaky", "Succeeded"),
    )
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["exitCode"] == 0


def test_builder_cannot_list_secrets_in_kube_system(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as excinfo:
        cluster.rest("builder").get("/api/v1/namespaces/kube-system/secrets")
    assert excinfo.value.status == 403
    assert 'User "builder" cannot list resource "secrets"' in _message(excinfo.value)


def test_s3_endpoint_put_get(s3: S3Endpoint) -> None:
    s3c = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
    )
    s3c.put_object(Bucket=s3.bucket, Key="dir/hello.txt", Body=b"hello smartspec")
    got = s3c.get_object(Bucket=s3.bucket, Key="dir/hello.txt")["Body"].read()
    assert got == b"hello smartspec"
    # The bucket is the session's: other tests' objects may be there too.
    listing = s3c.list_objects_v2(Bucket=s3.bucket, Prefix="dir/")["Contents"]
    assert [o["Key"] for o in listing] == ["dir/hello.txt"]


def test_local_node_materialises_secret_and_empty_dir_volumes(
    cluster: Cluster, namespace: str, fake_node: LocalNode
) -> None:
    """A program told by env where its mounted Secret is finds it; so does its workspace."""
    rest = cluster.rest()
    secret = base64.b64encode(b'{"role": "generator"}').decode()
    rest.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "instructions"}, "data": {"instructions.json": secret}},
    )
    check = (
        "import json, os, pathlib, sys\n"
        "data = json.loads(pathlib.Path(os.environ['INSTRUCTIONS_FILE']).read_text())\n"
        "pathlib.Path(os.environ['WORKSPACE'], 'out.txt').write_text('ok')\n"
        "sys.exit(0 if data == {'role': 'generator'} else 3)\n"
    )
    pod = _pod_spec(
        _py(check),
        volumes=[
            {
                "name": "instructions",
                "secret": {
                    "secretName": "instructions",
                    "defaultMode": 256,
                    "items": [{"key": "instructions.json", "path": "instructions.json"}],
                },
            },
            {"name": "workspace", "emptyDir": {}},
        ],
    )
    pod["containers"][0]["env"] = [
        {"name": "INSTRUCTIONS_FILE", "value": "/var/run/smartspec/instructions.json"},
        {"name": "WORKSPACE", "value": "/workspace"},
    ]
    pod["containers"][0]["volumeMounts"] = [
        {"name": "instructions", "mountPath": "/var/run/smartspec", "readOnly": True},
        {"name": "workspace", "mountPath": "/workspace"},
    ]
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    rest.post(
        jobs,
        {"metadata": {"name": "mounts"}, "spec": {"backoffLimit": 0, "template": {"spec": pod}}},
    )
    outcome = _wait_for("job mounts to finish", lambda: _job_condition(rest, namespace, "mounts"))
    pods = rest.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="job-name=mounts")
    assert outcome == "Complete", [p["status"] for p in pods["items"]]
