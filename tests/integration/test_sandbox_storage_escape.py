"""Generated tests that try to use the tester's instructions to write outside their attempt.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract" and "Storage
self-check". The tester pod's instructions Secret is readable by the generated tests it
runs (same user): they hold presigned GET URLs and the attempt's upload policy. A generated
test file (from the stub model: canned, like every model answer in these tests) reads them
and tries every escape; the test only passes when each is refused and a write inside its own
prefix succeeds. From outside, the victims must be unchanged afterwards.

Real operator, gateway, API server, Job controller, node and S3 (SeaweedFS).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.sandbox import builtin
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
API = "/apis/smartspec.dev/v1alpha1/namespaces"

# The generated test. It finds the instructions where a generated test can: the mounted
# Secret in a pod, else (on the fake local node, which has no mounts) through its parent
# process, the tester, whose environment names the file.
ESCAPE_TEST = """
import json, os, urllib.error, urllib.request, uuid

import pytest

VICTIM = __VICTIM__


def instructions():
    path = "/var/run/smartspec/instructions.json"
    if not os.path.exists(path):
        with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
            names = dict(v.split(b"=", 1) for v in handle.read().split(b"\\0") if b"=" in v)
        path = names[b"SMARTSPEC_INSTRUCTIONS_FILE"].decode()
    with open(path) as handle:
        return json.load(handle)


def post(upload, key, body):
    boundary = uuid.uuid4().hex
    fields = {**upload["fields"], "key": key}
    parts = [
        f'--{boundary}\\r\\nContent-Disposition: form-data; name="{name}"\\r\\n\\r\\n'.encode()
        + f"{value}\\r\\n".encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\\r\\nContent-Disposition: form-data; name="file"; filename="x"\\r\\n'
        f"Content-Type: text/plain\\r\\n\\r\\n".encode() + body + b"\\r\\n"
    )
    parts.append(f"--{boundary}--\\r\\n".encode())
    request = urllib.request.Request(
        upload["url"], data=b"".join(parts), method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    return status_of(request)


def status_of(request):
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.requirement("REQ-001")
def test_the_instructions_grant_no_write_outside_this_attempt():
    found = instructions()
    upload, prefix = found["upload"], found["upload"]["keyPrefix"]
    namespace = prefix.split("/", 1)[0]
    snapshot = f"{namespace}/specs/sha256/{found['spec']['contentHash'][7:]}.json"
    escapes = {
        "sibling attempt": prefix.replace("/attempt-1/", "/attempt-2/") + "files/app.py",
        "prefix extension": prefix[:-1] + "0/files/app.py",
        "spec snapshot": snapshot,
        "other tenant": VICTIM,
        "dot segments, sibling": prefix + "../attempt-2/files/app.py",
        "dot segments, other tenant": prefix + "files/" + "../" * 8 + VICTIM,
    }
    refused = {name: post(upload, key, b"escaped") for name, key in escapes.items()}
    assert all(status in (400, 403) for status in refused.values()), refused
    # A presigned read moved to another key is refused as well.
    url = found["files"][0]["url"]
    path, query = url.split("?", 1)
    moved = path.split(prefix, 1)[0] + VICTIM + "?" + query
    assert status_of(urllib.request.Request(moved)) == 403
    assert status_of(urllib.request.Request(url, data=b"x", method="PUT")) == 403
    # The authority found is real: inside its own prefix the same policy writes.
    assert post(upload, prefix + "escape-probe/inside", b"inside") == 204
"""


def reply_with_escape_test(victim: str) -> Callable[[dict[str, Any]], str]:
    """A canned model answer: the builtin project plus the escaping test file."""

    def reply(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        spec_json = user.split("canonical JSON:\n", 1)[1].split("\n\nRequirement ids:", 1)[0]
        spec = SpecSpec.model_validate({**json.loads(spec_json), "lifecycle": "Draft"})
        files = [
            {
                "path": item.path,
                "content": item.content.decode(),
                "requirements": list(item.requirements),
            }
            for item in builtin.generate(spec).files
        ]
        files.append(
            {
                "path": "test_storage_escape.py",
                "content": ESCAPE_TEST.replace("__VICTIM__", json.dumps(victim)),
                "requirements": ["REQ-001"],
            }
        )
        return json.dumps({"files": files})

    return reply


def test_generated_tests_cannot_use_the_instructions_to_escape_their_attempt(
    cluster: Cluster,
    tenant: str,
    namespace_factory: Callable[[], str],
    local_node: Any,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    s3: S3Endpoint,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    other = namespace_factory()
    victim = f"{other}/runs/victim/{uuid.uuid4()}/attempt-1/manifest.json"
    s3_client.put_object(Bucket=s3.bucket, Key=victim, Body=b"victim")
    stub.reply_fn = reply_with_escape_test(victim)
    gateway = start_gateway()
    keys = tmp_path / "operator-token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    start_operator(
        tenant,
        SMARTSPEC_TOKEN_KEYS_FILE=str(keys),
        SMARTSPEC_GATEWAY_URL=f"{gateway.url}/v1",
        SMARTSPEC_GATEWAY_NAMESPACE="smartspec",
    )
    cluster.rest("platform_admin").post(
        f"{API}/{tenant}/creditbudgets",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "CreditBudget",
            "metadata": {"name": "default"},
            "spec": {"limitCredits": 5_000_000, "models": {"allow": ["stub-*"]}},
        },
    )
    builder = cluster.rest("builder")
    examples = REPO / "examples" / "todo-service"
    builder.post(f"{API}/{tenant}/specs", yaml.safe_load((examples / "spec.yaml").read_text()))
    run = yaml.safe_load((examples / "generationrun-llm.yaml").read_text())
    run["spec"]["generator"].update(model="stub-model", maxTokens=60_000)
    run["spec"]["sandbox"] = {}
    run["spec"]["maxAttempts"] = 1
    del run["spec"]["maxCredits"]
    builder.post(f"{API}/{tenant}/generationruns", run)

    admin = cluster.rest("admin")

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = (
            admin.get(f"{API}/{tenant}/generationruns/todo-api-llm").get("status") or {}
        )
        return status if status.get("phase") in {"Succeeded", "Failed"} else None

    status = wait_for(finished, "the run to finish", timeout=240)
    prefix = status["artifacts"]["uri"].split("/", 3)[3].removesuffix("files/")
    report = json.loads(
        s3_client.get_object(Bucket=s3.bucket, Key=prefix + "report/summary.json")["Body"].read()
    )
    assert status["phase"] == "Succeeded", json.dumps(report["failures"], indent=1)[:3000]
    assert report["tests"]["failed"] == 0
    assert report["tests"]["passed"] > 1

    # From outside: the victims are untouched, and the escape test did hold real authority.
    assert s3_client.get_object(Bucket=s3.bucket, Key=victim)["Body"].read() == b"victim"
    snapshot_key = status["pinnedSpec"]["snapshotUri"].split("/", 3)[3]
    snapshot = s3_client.get_object(Bucket=s3.bucket, Key=snapshot_key)["Body"].read()
    assert "sha256:" + hashlib.sha256(snapshot).hexdigest() == status["pinnedSpec"]["contentHash"]
    sibling = prefix.replace("/attempt-1/", "/attempt-2/")
    assert s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=sibling).get("KeyCount", 0) == 0
    extension = prefix[:-1] + "0/"
    assert s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=extension).get("KeyCount", 0) == 0
    inside = s3_client.get_object(Bucket=s3.bucket, Key=prefix + "escape-probe/inside")
    assert inside["Body"].read() == b"inside"
