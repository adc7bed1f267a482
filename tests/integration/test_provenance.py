"""Signed provenance of finished runs, checked by `smartspec verify` and by sigstore's cosign.

Contract: specs/CORE-005-provenance.md. The real operator, API server, Job controller,
gateway, S3 (SeaweedFS) and node run the pipeline; the model is the local stub scripted with
canned answers. Verification runs as an auditor would: the `smartspec` command with the
public key, a builder's kubeconfig and S3 credentials that may only read the bucket. cosign
(built from its Go module by tools/build-cosign.sh) is the verifier nobody here wrote.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.logic.canonical import canonical_json
from smartspec.logic.ledger import Segment
from stubs import model_faults
from stubs.openai_stub import StubServer
from testcluster.gateway_calls import API, create_budget
from testcluster.harness import TEST_TOKEN_KEY, provenance_keys, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service"
SLSA = "https://slsa.dev/provenance/v1"
FAILED_RUN = "https://smartspec.dev/provenance/failed-run/v1"


class Tenant:
    """A namespace with the example Spec, a budget, a gateway and an operator (with its
    provenance key), and the tools an auditor uses against its runs."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        s3: S3Endpoint,
        stub: StubServer,
        keys: Path,
        operator_env: dict[str, str],
    ) -> None:
        self.cluster, self.namespace, self.s3, self.stub = cluster, namespace, s3, stub
        self.operator_env = operator_env
        self.operator: Any = None
        self.public_key = keys.parent / "provenance.pub"
        smartspec("provenance", "public-key", "--keys-file", str(keys), out=self.public_key)
        self.admin_s3 = s3.client("admin")

    def run(self, name: str, replies: list[Any], *, max_attempts: int = 1) -> dict[str, Any]:
        """An llm run answered by `replies`; its status once it is finished and attested."""
        self.stub.script.extend(replies)
        document: dict[str, Any] = yaml.safe_load((EXAMPLE / "generationrun-llm.yaml").read_text())
        document["metadata"]["name"] = name
        spec = document["spec"]
        spec["generator"].update(model="stub-model", maxTokens=60_000, repairTurns=0)
        spec.update(sandbox={}, maxAttempts=max_attempts)
        del spec["maxCredits"]
        self.cluster.rest("builder").post(f"{API}/{self.namespace}/generationruns", document)
        path = f"{API}/{self.namespace}/generationruns/{name}"

        def attested() -> dict[str, Any] | None:
            status: dict[str, Any] = self.cluster.rest("admin").get(path).get("status") or {}
            return status if status.get("provenance") else None

        return wait_for(attested, f"run {name} to finish and be attested", timeout=300)

    def verify_run(self, name: str) -> subprocess.CompletedProcess[str]:
        return smartspec(
            "verify",
            "run",
            f"{self.namespace}/{name}",
            "--key",
            str(self.public_key),
            env=self.auditor_env(),
            check=False,
        )

    def auditor_env(self) -> dict[str, str]:
        return {
            **self.s3.env("auditor"),
            "SMARTSPEC_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "KUBECONFIG": str(self.cluster.kubeconfig("builder")),
        }

    def get(self, uri: str) -> bytes:
        body: bytes = self.admin_s3.get_object(Bucket=self.s3.bucket, Key=key_of(uri))[
            "Body"
        ].read()
        return body

    def put(self, uri: str, body: bytes) -> None:
        self.admin_s3.put_object(Bucket=self.s3.bucket, Key=key_of(uri), Body=body)

    @contextmanager
    def tampered(self, uri: str, body: bytes) -> Iterator[None]:
        """The object replaced (as someone with write access could), then put back."""
        original = self.get(uri)
        self.put(uri, body)
        try:
            yield
        finally:
            self.put(uri, original)


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def smartspec(
    *args: str, env: dict[str, str] | None = None, out: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "smartspec", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and result.returncode != 0:
        pytest.fail(f"smartspec {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    if out is not None:
        out.write_text(result.stdout)
    return result


def cosign() -> Path:
    """cosign, built from its Go module (cached) by the project's build script."""
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "build-cosign.sh"), "-q"],
        stdout=subprocess.PIPE,
        check=False,
    )
    lines = result.stdout.decode().strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("export COSIGN_BIN="):
        pytest.fail(f"tools/build-cosign.sh failed with exit code {result.returncode}")
    return Path(lines[-1].split("=", 1)[1])


def cosign_verify(
    envelope: Path, blob: Path, public_key: Path, predicate_type: str
) -> subprocess.CompletedProcess[str]:
    """`cosign verify-blob-attestation --key`: the signature, the type, the blob's digest
    among the subjects. No transparency log: the key is the trust root here."""
    return subprocess.run(
        [
            str(cosign()),
            "verify-blob-attestation",
            "--key",
            str(public_key),
            "--signature",
            str(envelope),
            "--type",
            predicate_type,
            "--insecure-ignore-tlog=true",
            str(blob),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def statement_of(envelope: bytes) -> dict[str, Any]:
    statement: dict[str, Any] = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return statement


def descriptors(statement: dict[str, Any], section: str, name: str) -> list[dict[str, Any]]:
    predicate = statement["predicate"]
    found = (
        predicate["buildDefinition"]["resolvedDependencies"]
        if section == "dependencies"
        else predicate["runDetails"]["byproducts"]
    )
    return [d for d in found if d["name"] == name]


@pytest.fixture
def tenant(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
) -> Tenant:
    gateway = start_gateway()
    token_keys = tmp_path / "operator-token-keys"
    token_keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    operator_env = {
        "SMARTSPEC_TOKEN_KEYS_FILE": str(token_keys),
        "SMARTSPEC_GATEWAY_URL": f"{gateway.url}/v1",
        "SMARTSPEC_GATEWAY_NAMESPACE": "smartspec",
    }
    operator = start_operator(tenant, **operator_env)
    create_budget(cluster, tenant, 50_000_000)
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    cluster.rest("builder").post(f"{API}/{tenant}/specs", spec)
    result = Tenant(cluster, tenant, s3, stub, provenance_keys(tmp_path), operator_env)
    result.operator = operator
    return result


def test_a_real_run_verifies_and_each_tampered_input_is_named(
    tenant: Tenant, tmp_path: Path
) -> None:
    status = tenant.run(
        "todo-api-llm", [model_faults.failing_tests(), model_faults.correct()], max_attempts=2
    )
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    provenance = status["provenance"]
    assert provenance["predicateType"] == SLSA
    envelope = tenant.get(provenance["uri"])
    statement = statement_of(envelope)
    transcripts = descriptors(statement, "dependencies", "transcript")
    assert [t["annotations"]["attempt"] for t in transcripts] == [1, 2]
    (ledger,) = descriptors(statement, "byproducts", "ledger")
    assert ledger["annotations"]["credits"] == status["usage"]["credits"] > 0
    (snapshot,) = descriptors(statement, "dependencies", "spec-snapshot")
    assert snapshot["digest"]["sha256"] == status["pinnedSpec"]["contentHash"].removeprefix(
        "sha256:"
    )
    images = [
        d
        for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        if d["name"] in {"generator-image", "tester-image"}
    ]
    assert {d["name"] for d in images} == {"generator-image", "tester-image"}
    if tenant.cluster.real_node is not None:
        # containerd reports the image each sandbox ran by digest; the fake node has none.
        assert all(len(d["digest"]["sha256"]) == 64 for d in images), images
    assert len(statement["subject"]) == status["artifacts"]["fileCount"]

    verified = tenant.verify_run("todo-api-llm")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "run attestation OK" in verified.stdout

    # Each input in turn: replaced in the bucket, named by the verifier, put back.
    app = next(s for s in statement["subject"] if s["name"] == "app.py")
    with tenant.tampered(app["uri"], b"print('not what was tested')\n"):
        failed = tenant.verify_run("todo-api-llm")
    assert failed.returncode == 1
    assert f"FAILED file app.py: {app['uri']} has sha256" in failed.stdout, failed.stdout

    transcript = transcripts[1]
    forged = json.loads(tenant.get(transcript["uri"]))
    forged["responseBody"] += " "  # one byte more in the answer the model gave
    with tenant.tampered(transcript["uri"], canonical_json(forged)):
        failed = tenant.verify_run("todo-api-llm")
    assert failed.returncode == 1
    call = transcript["annotations"]["callId"]
    assert f"FAILED transcript (attempt 2, call {call}): " in failed.stdout, failed.stdout

    with tenant.tampered(snapshot["uri"], b'{"title":"a different spec"}'):
        failed = tenant.verify_run("todo-api-llm")
    assert failed.returncode == 1
    assert f"FAILED spec snapshot: {snapshot['uri']} has sha256" in failed.stdout, failed.stdout

    segment = Segment.model_validate_json(tenant.get(ledger["uri"]))
    cheaper = [
        {**entry.model_dump(), "credits": 1} if entry.kind == "settle" else entry.model_dump()
        for entry in segment.entries
    ]
    edited = canonical_json({**segment.model_dump(mode="json"), "entries": cheaper})
    with tenant.tampered(ledger["uri"], edited):
        failed = tenant.verify_run("todo-api-llm")
    assert failed.returncode == 1
    assert "FAILED ledger: entry " in failed.stdout, failed.stdout
    assert "does not match its hash" in failed.stdout

    # Everything put back: it verifies again, so each failure above was its tamper's.
    again = tenant.verify_run("todo-api-llm")
    assert again.returncode == 0, again.stdout

    # The auditor's path: the envelope file, the public key and read access to the bucket.
    envelope_file = tmp_path / "provenance.dsse.json"
    envelope_file.write_bytes(envelope)
    offline = smartspec(
        "verify",
        "attestation",
        str(envelope_file),
        "--key",
        str(tenant.public_key),
        env={k: v for k, v in tenant.auditor_env().items() if k != "KUBECONFIG"},
        check=False,
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "attestation OK" in offline.stdout

    # The independent verifier accepts the real attestation for a generated file...
    blob = tmp_path / "app.py"
    blob.write_bytes(tenant.get(app["uri"]))
    accepted = cosign_verify(envelope_file, blob, tenant.public_key, SLSA)
    assert accepted.returncode == 0, accepted.stderr
    assert "Verified OK" in accepted.stdout + accepted.stderr
    # ...and refuses a tampered file, and an envelope whose statement was edited.
    blob.write_bytes(b"print('not what was tested')\n")
    refused = cosign_verify(envelope_file, blob, tenant.public_key, SLSA)
    assert refused.returncode != 0
    assert "no matching subject digest found" in refused.stderr, refused.stderr
    blob.write_bytes(tenant.get(app["uri"]))
    document = json.loads(envelope)
    forged_statement = statement_of(envelope)
    forged_statement["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example"
    document["payload"] = base64.b64encode(canonical_json(forged_statement)).decode()
    forged_file = tmp_path / "forged.dsse.json"
    forged_file.write_text(json.dumps(document))
    refused = cosign_verify(forged_file, blob, tenant.public_key, SLSA)
    assert refused.returncode != 0
    assert "Verified OK" not in refused.stdout + refused.stderr
    ours = smartspec(
        "verify",
        "attestation",
        str(forged_file),
        "--key",
        str(tenant.public_key),
        env=tenant.auditor_env(),
        check=False,
    )
    assert ours.returncode == 1
    assert "FAILED signature: no given public key verifies the envelope" in ours.stdout


def test_a_failed_run_is_attested_with_its_failure_and_never_as_slsa_provenance(
    tenant: Tenant, tmp_path: Path
) -> None:
    status = tenant.run("todo-api-llm", [model_faults.failing_tests()], max_attempts=1)
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:3000]
    provenance = status["provenance"]
    assert provenance["predicateType"] == FAILED_RUN
    envelope = tenant.get(provenance["uri"])
    statement = statement_of(envelope)
    failure = statement["predicate"]["failure"]
    assert (failure["result"], failure["reason"]) == ("Failed", "TestsFailed")
    assert failure["attempts"][0]["failureKind"] == "TestsFailed"
    (report,) = descriptors(statement, "byproducts", "test-report")
    assert report["annotations"]["result"] == "failed"

    verified = tenant.verify_run("todo-api-llm")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Failed (https://smartspec.dev/provenance/failed-run/v1)" in verified.stdout

    envelope_file = tmp_path / "failed.dsse.json"
    envelope_file.write_bytes(envelope)
    blob = tmp_path / "app.py"
    app = next(s for s in statement["subject"] if s["name"] == "app.py")
    blob.write_bytes(tenant.get(app["uri"]))
    # Asked for SLSA provenance of the failed run's code, cosign refuses; asked what it is,
    # cosign confirms a failed run signed by this key.
    as_slsa = cosign_verify(envelope_file, blob, tenant.public_key, SLSA)
    assert as_slsa.returncode != 0
    assert "Verified OK" not in as_slsa.stdout + as_slsa.stderr
    as_failed = cosign_verify(envelope_file, blob, tenant.public_key, FAILED_RUN)
    assert as_failed.returncode == 0, as_failed.stderr


def test_an_operator_killed_and_restarted_keeps_one_attestation(
    tenant: Tenant, start_operator: Callable[..., Any], tmp_path: Path
) -> None:
    status = tenant.run("todo-api-llm", [model_faults.correct()])
    first = status["provenance"]
    stored = tenant.get(first["uri"])
    # A crash between storing the envelope and writing the status: the operator dies, the
    # status has no provenance, and the restarted operator must adopt the stored envelope
    # rather than make (and fail to store) another.
    assert tenant.operator.stop(signal.SIGKILL) != 0
    path = f"{API}/{tenant.namespace}/generationruns/todo-api-llm"
    tenant.cluster.rest("admin").patch(f"{path}/status", {"status": {"provenance": None}})
    start_operator(tenant.namespace, **tenant.operator_env)

    def readopted() -> dict[str, Any] | None:
        found: dict[str, Any] | None = (
            tenant.cluster.rest("admin").get(path).get("status") or {}
        ).get("provenance")
        return found

    assert wait_for(readopted, "the stored attestation to be adopted again") == first
    assert tenant.get(first["uri"]) == stored
