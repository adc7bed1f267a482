"""The sandbox programs against a real S3 endpoint and a real OpenAI-compatible server.

specs/CORE-004-generation-runs.md: "Sandbox contract", "Object layout in S3", "Manifest",
"Test report" and "Exit codes". The generator and the tester run as subprocesses, exactly
as in a Job: instructions in SMARTSPEC_INSTRUCTIONS, storage only through presigned URLs
(boto3 presigns them for a real S3 server, SeaweedFS; the subprocesses get no AWS_* variable
at all), and the model through tests/stubs/openai_stub.py standing in for the gateway.

The first sections unit-test the pieces (instructions, transfer, the llm backend) the same
way: over TCP, never with mocks.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.gateway import RefusalCode
from smartspec.api.sandbox import (
    GatewayAccess,
    GeneratorInstructions,
    GeneratorSettings,
    Limits,
    TesterInstructions,
    TestReport,
    UploadPolicy,
    check_relative_path,
)
from smartspec.api.v1alpha1 import Spec
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import canonical_json, content_hash
from smartspec.sandbox import Usage
from smartspec.sandbox.feedback import PreviousAttempt
from smartspec.sandbox.instructions import InstructionsError, load_instructions, parse_instructions
from smartspec.sandbox.llm import GenerationFailed, generate
from smartspec.sandbox.transfer import TransferError, download, upload
from stubs.openai_stub import Reply, StubServer
from testcluster.controlplane import free_port
from testcluster.s3 import S3Endpoint, S3Server, resolve_weed

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service" / "spec.yaml"
TOKEN = "sst1.test-run-token-value"  # noqa: S105 - a dummy run token for the stub
MODEL = "stub-model"
# AWS's documented example key id, assembled at run time so no file holds it whole.
FAKE_AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"


# ------------------------------------------------------------------ fixtures and helpers


@dataclass(frozen=True)
class Bucket:
    """The test bucket, through boto3: the test's view of storage, with credentials."""

    endpoint: S3Endpoint
    client: Any

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.endpoint.bucket, Key=key, Body=body)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.endpoint.bucket, Key=key)["Body"].read()
        return body

    def keys(self, prefix: str) -> list[str]:
        answer = self.client.list_objects_v2(Bucket=self.endpoint.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def presigned_get(self, key: str) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.endpoint.bucket, "Key": key}, ExpiresIn=600
        )
        return url

    def presigned_post(self, prefix: str) -> dict[str, Any]:
        post = self.client.generate_presigned_post(
            Bucket=self.endpoint.bucket,
            Key=prefix + "${filename}",
            Conditions=[["starts-with", "$key", prefix]],
            ExpiresIn=600,
        )
        return {"url": post["url"], "fields": post["fields"], "keyPrefix": prefix}


@pytest.fixture(scope="module")
def bucket() -> Iterator[Bucket]:
    with tempfile.TemporaryDirectory(prefix="smartspec-s3-") as run_dir:
        bucket_name = f"smartspec-sandbox-{secrets.token_hex(4)}"
        server = S3Server(resolve_weed(REPO), Path(run_dir), bucket_name)
        endpoint = server.start()
        try:
            yield Bucket(endpoint, endpoint.client("admin"))
        finally:
            server.stop()


@dataclass(frozen=True)
class Snapshot:
    key: str
    content_hash: str
    spec: SpecSpec


@pytest.fixture(scope="module")
def snapshot(bucket: Bucket) -> Snapshot:
    """The example's canonical content, stored as the Spec reconciler stores snapshots."""
    spec = Spec.model_validate(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))).spec
    body = canonical_json(spec.content())
    digest = content_hash(spec.content())
    key = f"team-a/specs/todo-api/{digest.removeprefix('sha256:')}.json"
    bucket.put(key, body)
    return Snapshot(key, digest, spec)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(models=[MODEL]) as server:
        yield server


@dataclass(frozen=True)
class Attempt:
    name: str
    uid: str
    number: int = 1

    @property
    def prefix(self) -> str:
        return f"team-a/runs/{self.name}/{self.uid}/attempt-{self.number}/"

    def run(self) -> dict[str, Any]:
        return {"namespace": "team-a", "name": self.name, "uid": self.uid, "attempt": self.number}

    def next(self) -> Attempt:
        return Attempt(self.name, self.uid, self.number + 1)


def new_attempt(name: str) -> Attempt:
    return Attempt(name, str(uuid.uuid4()))


def instructions_for_generator(
    bucket: Bucket,
    snapshot: Snapshot,
    attempt: Attempt,
    *,
    backend: str = "builtin",
    gateway_url: str | None = None,
    feedback: dict[str, Any] | None = None,
    content_hash: str | None = None,
) -> dict[str, Any]:
    llm = backend == "llm"
    return {
        "role": "generator",
        "run": attempt.run(),
        "spec": {
            "name": "todo-api",
            "revision": 1,
            "contentHash": content_hash or snapshot.content_hash,
            "snapshotUrl": bucket.presigned_get(snapshot.key),
        },
        "generator": {
            "backend": backend,
            "model": MODEL if llm else None,
            "temperatureMilli": 200,
            "maxTokens": 4096,
            "seed": 42,
        },
        "gateway": {"baseUrl": gateway_url, "token": TOKEN} if llm else None,
        "feedback": feedback,
        "upload": bucket.presigned_post(attempt.prefix),
        "limits": {"maxFiles": 200, "maxFileBytes": 262144, "maxTotalBytes": 2097152},
    }


def instructions_for_tester(
    bucket: Bucket,
    snapshot: Snapshot,
    attempt: Attempt,
    manifest_sha256: str,
    *,
    timeout_seconds: int = 300,
) -> dict[str, Any]:
    """Built the way the run reconciler builds them: from the stored manifest."""
    manifest = json.loads(bucket.get(attempt.prefix + "manifest.json"))
    return {
        "role": "tester",
        "run": attempt.run(),
        "spec": {
            "name": "todo-api",
            "revision": 1,
            "contentHash": snapshot.content_hash,
            "snapshotUrl": bucket.presigned_get(snapshot.key),
        },
        "manifest": {
            "url": bucket.presigned_get(attempt.prefix + "manifest.json"),
            "sha256": manifest_sha256,
        },
        "files": [
            {
                "path": entry["path"],
                "sha256": entry["sha256"],
                "size": entry["size"],
                "url": bucket.presigned_get(attempt.prefix + "files/" + entry["path"]),
            }
            for entry in manifest["files"]
        ],
        "upload": bucket.presigned_post(attempt.prefix),
        "timeoutSeconds": timeout_seconds,
    }


@dataclass(frozen=True)
class Finished:
    code: int
    result: str
    detail: dict[str, Any]
    stderr: str
    stdout: str


# The sandbox images carry no time-zone database (no system zoneinfo, no tzdata wheel): run
# the programs the same way, so one that needs a zone at import or at run time fails here.
WITHOUT_TZ_DATABASE = (
    "import runpy, sys; sys.modules['tzdata'] = None; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def run_program(program: str, instructions: dict[str, Any] | str) -> Finished:
    """`python -m smartspec.sandbox.<program>` with the instructions, no AWS variable and no
    time-zone database."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and not name.startswith("SMARTSPEC_")
    }
    env["SMARTSPEC_INSTRUCTIONS"] = (
        instructions if isinstance(instructions, str) else json.dumps(instructions)
    )
    empty = tempfile.mkdtemp(prefix="no-zoneinfo-")
    env.update(PYTHONTZPATH=empty, TZDIR=empty)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TZ_DATABASE, f"smartspec.sandbox.{program}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no final line on stdout; stderr:\n{done.stderr}"
    final = json.loads(lines[-1])
    assert set(final) == {"result", "detail"}
    return Finished(done.returncode, final["result"], final["detail"], done.stderr, done.stdout)


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def generate_builtin(bucket: Bucket, snapshot: Snapshot, attempt: Attempt) -> Finished:
    done = run_program("generator", instructions_for_generator(bucket, snapshot, attempt))
    assert done.code == 0, done.stderr
    return done


def answer(files: dict[str, str], requirements: dict[str, list[str]] | None = None) -> str:
    """A model answer in the protocol's JSON shape."""
    return json.dumps(
        {
            "files": [
                {
                    "path": path,
                    "content": content,
                    "requirements": (requirements or {}).get(path, []),
                }
                for path, content in files.items()
            ],
            "tasks": [
                {"file": path, "requirements": [], "description": f"writes {path}"}
                for path in files
            ],
        }
    )


CONFTEST = (
    "def pytest_configure(config):\n"
    '    config.addinivalue_line("markers", "requirement(id): requirement demonstrated")\n'
)
WRONG_APP = "def add(a, b):\n    return a - b  # deliberately wrong\n"
WRONG_TESTS = (
    "import pytest\n\nfrom app import add\n\n\n"
    '@pytest.mark.requirement("REQ-001")\n'
    "def test_add_sums():\n    assert add(2, 3) == 5\n\n\n"
    '@pytest.mark.requirement("REQ-002")\n'
    "def test_add_zero():\n    assert add(4, 0) == 4\n"
)


# ------------------------------------------------------------------ instructions


def valid_generator_document() -> dict[str, Any]:
    return {
        "role": "generator",
        "run": {"namespace": "team-a", "name": "todo-api-llm", "uid": "u-1", "attempt": 2},
        "spec": {
            "name": "todo-api",
            "revision": 3,
            "contentHash": "sha256:" + "a" * 64,
            "snapshotUrl": "https://s3.example/snap?X-Amz-Signature=abc",
        },
        "generator": {"backend": "llm", "model": "gpt-4o-mini", "temperatureMilli": 200},
        "gateway": {"baseUrl": "http://gateway:8000/v1", "token": TOKEN},
        "feedback": {
            "attempt": 1,
            "kind": "TestsFailed",
            "message": "attempt 1: 2 of 5 tests failed",
            "report": {"url": "https://s3.example/summary.json", "sha256": "sha256:" + "b" * 64},
        },
        "upload": {"url": "https://s3.example/b", "fields": {"policy": "p"}, "keyPrefix": "a/b/"},
        "limits": {"maxFiles": 10, "maxFileBytes": 100, "maxTotalBytes": 1000},
    }


def test_generator_instructions_parse_with_camel_case_fields() -> None:
    parsed = parse_instructions(json.dumps(valid_generator_document()), "test")
    assert isinstance(parsed, GeneratorInstructions)
    assert parsed.generator.temperature_milli == 200
    assert parsed.generator.max_tokens == 4096
    assert parsed.upload.key_prefix == "a/b/"
    assert parsed.limits.max_files == 10
    assert TOKEN not in repr(parsed)


def test_invalid_instructions_name_every_bad_field_and_never_the_token() -> None:
    document = valid_generator_document()
    document["generator"]["temperatureMilli"] = "hot"
    del document["run"]["attempt"]
    document["spec"]["colour"] = "blue"
    document["gateway"]["token"] = TOKEN
    with pytest.raises(InstructionsError) as caught:
        parse_instructions(json.dumps(document), "SMARTSPEC_INSTRUCTIONS")
    message = str(caught.value)
    assert message.startswith("SMARTSPEC_INSTRUCTIONS: invalid generator instructions")
    assert "generator.temperatureMilli: Input should be a valid integer" in message
    assert "run.attempt: Field required" in message
    assert "spec.colour: Extra inputs are not permitted" in message
    assert len(caught.value.problems) == 3
    assert TOKEN not in message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"gateway": None}, "gateway is required for the llm backend"),
        ({"generator": {"backend": "llm"}}, "generator.model is required"),
        ({"generator": {"backend": "builtin"}}, "gateway must be null for the builtin backend"),
        ({"role": "reviewer"}, "role: must be 'generator' or 'tester'"),
        ({"upload": {"url": "https://x/b", "fields": {}, "keyPrefix": "/a/"}}, "keyPrefix"),
        ({"spec": {"name": "t", "revision": 1, "contentHash": "md5:1", "snapshotUrl": "x"}},
         "spec.contentHash"),
    ],
)  # fmt: skip
def test_inconsistent_instructions_are_refused(change: dict[str, Any], problem: str) -> None:
    document = {**valid_generator_document(), **change}
    with pytest.raises(InstructionsError, match=problem):
        parse_instructions(json.dumps(document), "test")


def test_instructions_come_from_the_file_first(tmp_path: Path) -> None:
    document = valid_generator_document()
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    loaded = load_instructions(
        {"SMARTSPEC_INSTRUCTIONS_FILE": str(path), "SMARTSPEC_INSTRUCTIONS": "not json"}
    )
    assert loaded.role == "generator"
    with pytest.raises(
        InstructionsError, match=r"SMARTSPEC_INSTRUCTIONS_FILE \(.*\): cannot read the file"
    ):
        load_instructions({"SMARTSPEC_INSTRUCTIONS_FILE": str(tmp_path / "absent.json")})
    with pytest.raises(InstructionsError, match="neither SMARTSPEC_INSTRUCTIONS_FILE nor"):
        load_instructions({})
    with pytest.raises(InstructionsError, match="SMARTSPEC_INSTRUCTIONS: not JSON"):
        load_instructions({"SMARTSPEC_INSTRUCTIONS": "{oops"})


def test_tester_instructions_refuse_unsafe_and_duplicate_paths() -> None:
    file = {"path": "app.py", "sha256": "sha256:" + "b" * 64, "size": 1, "url": "http://s/a"}
    document = {
        "role": "tester",
        "run": {"namespace": "team-a", "name": "r", "uid": "u", "attempt": 1},
        "spec": {
            "name": "s",
            "revision": 1,
            "contentHash": "sha256:" + "a" * 64,
            "snapshotUrl": "http://s/snap",
        },
        "manifest": {"url": "http://s/m", "sha256": "sha256:" + "c" * 64},
        "files": [file],
        "upload": {"url": "http://s/b", "fields": {}, "keyPrefix": "p/"},
    }
    parsed = parse_instructions(json.dumps(document), "test")
    assert isinstance(parsed, TesterInstructions)
    assert parsed.timeout_seconds == 600
    with pytest.raises(InstructionsError, match=r"files\[1\]\.path: path contains '\.\.'"):
        parse_instructions(
            json.dumps({**document, "files": [file, {**file, "path": "../etc/passwd"}]}), "t"
        )
    with pytest.raises(InstructionsError, match="listed twice"):
        parse_instructions(json.dumps({**document, "files": [file, file]}), "t")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "is empty"),
        ("../x.py", "contains '..'"),
        ("a/../../x.py", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("a\\b.py", "backslash"),
        ("pkg/", "ends with '/'"),
        ("a//b.py", "empty or '.' segment"),
        ("./a.py", "empty or '.' segment"),
        ("C:/x.py", "drive or scheme"),
        ("a\nb.py", "control character"),
    ],
)
def test_unsafe_paths_are_refused(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_relative_path(path)
    assert check_relative_path("pkg/sub/mod.py") == "pkg/sub/mod.py"


# ------------------------------------------------------------------ transfer


def test_upload_and_download_through_presigned_urls(bucket: Bucket) -> None:
    prefix = f"team-a/runs/transfer/{uuid.uuid4()}/attempt-1/"
    policy = UploadPolicy.model_validate(bucket.presigned_post(prefix))
    body = b"print('hello')\n" * 100
    key = upload(policy, "files/pkg/mod.py", body, "text/x-python")
    assert key == prefix + "files/pkg/mod.py"
    assert bucket.get(key) == body
    url = bucket.presigned_get(key)
    assert download(url) == body

    with pytest.raises(TransferError, match="over the limit of 10") as caught:
        download(url, max_bytes=10)
    assert "Signature" not in str(caught.value)  # the signature is a credential
    with pytest.raises(TransferError, match="HTTP 404 NoSuchKey"):
        download(bucket.presigned_get(prefix + "absent"))


@pytest.mark.parametrize("suffix", ["../escape.txt", "/abs.txt", "a\\b.txt", "files/a/../../b"])
def test_upload_refuses_unsafe_key_suffixes(suffix: str) -> None:
    # The port is closed: a refusal must come before any request.
    policy = UploadPolicy(url=f"http://127.0.0.1:{free_port()}/b", fields={}, key_prefix="p/")
    with pytest.raises(TransferError, match="refusing to upload"):
        upload(policy, suffix, b"x", "text/plain")


def test_connection_errors_are_retried_a_bounded_number_of_times() -> None:
    url = f"http://127.0.0.1:{free_port()}/snapshot?X-Amz-Signature=secret"
    with pytest.raises(TransferError, match="gave up after 2 attempts") as caught:
        download(url, attempts=2)
    assert "secret" not in str(caught.value)


# ------------------------------------------------------------------ the llm backend


def llm_settings(**changes: Any) -> GeneratorSettings:
    values: dict[str, Any] = {
        "backend": "llm",
        "model": MODEL,
        "temperature_milli": 200,
        "max_tokens": 4096,
        "seed": 42,
        "repair_turns": 0,
        "output_format": "Text",
    }
    values.update(changes)
    return GeneratorSettings.model_validate(values)


def call_llm(
    stub: StubServer,
    reply: str | Callable[[dict[str, Any]], str],
    *,
    previous: PreviousAttempt | None = None,
    limits: Limits | None = None,
    spec: SpecSpec | None = None,
    **settings: Any,
) -> Any:
    stub.reply_fn = reply if callable(reply) else (lambda body: reply)
    return generate(
        spec or example_spec(),
        llm_settings(**settings),
        GatewayAccess(base_url=stub.url + "/v1", token=TOKEN),
        limits or Limits(),
        previous,
        timeout=30,
    )


def example_spec() -> SpecSpec:
    return Spec.model_validate(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))).spec


def test_llm_generation_sends_the_spec_and_parses_files(stub: StubServer) -> None:
    reply = answer(
        {"test_app.py": WRONG_TESTS, "app.py": WRONG_APP, "conftest.py": CONFTEST},
        {"app.py": ["REQ-001"], "test_app.py": ["REQ-001", "REQ-002"]},
    )
    generation = call_llm(stub, reply)
    assert [f.path for f in generation.files] == ["app.py", "conftest.py", "test_app.py"]
    assert generation.files[0].content == WRONG_APP.encode()
    assert generation.files[0].requirements == ("REQ-001",)
    assert [t.file for t in generation.tasks] == ["test_app.py", "app.py", "conftest.py"]
    assert generation.usage.calls == 1
    assert generation.usage.prompt_tokens > 0
    assert generation.usage.completion_tokens > 0

    (request,) = stub.requests
    assert request["model"] == MODEL
    assert request["temperature"] == 0.2
    assert request["max_tokens"] == 4096
    assert request["seed"] == 42
    assert stub.request_headers[0]["Authorization"] == f"Bearer {TOKEN}"
    system, user = request["messages"]
    assert system["role"] == "system"
    assert "exactly ONE JSON object" in system["content"]
    assert '@pytest.mark.requirement("REQ-001")' in system["content"]
    assert "conftest.py" in system["content"]
    assert canonical_json(example_spec().content()).decode() in user["content"]
    assert "previous attempt" not in user["content"]


def test_llm_answer_in_markdown_fences_is_accepted(stub: StubServer) -> None:
    reply = "Here is the project:\n```json\n" + answer({"app.py": WRONG_APP}) + "\n```\nDone."
    generation = call_llm(stub, reply, seed=None)
    assert [f.path for f in generation.files] == ["app.py"]
    assert "seed" not in stub.requests[0]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"files": [', "the answer is not valid JSON"),
        ("I cannot do that.", "the answer is not valid JSON"),
        ("[1, 2]", "is a JSON list, not the object asked for"),
        ('{"tasks": []}', 'no "files" array'),
        (answer({"../evil.py": "x"}), r"files\[0\] '../evil.py': path contains '\.\.'"),
        (answer({"/etc/cron.d/x": "x"}), "path is absolute"),
        (answer({"app.py": "x"}, {"app.py": ["REQ-999"]}), "cites REQ-999, which the spec"),
        ('{"files": [{"path": "a.py", "content": 5}]}', r'files\[0\] \(a.py\) has no "content"'),
        ('{"files": [{"path": "a.py", "content": "", "requirements": "REQ-001"}]}',
         "not an array of requirement id strings"),
        ('{"files": [{"path": "a.py", "content": ""}], "tasks": [{"file": "b.py"}]}',
         r"tasks\[0\]\.file must name one of the answer's files"),
    ],
)  # fmt: skip
def test_unusable_llm_answers_fail_with_the_reason(
    stub: StubServer, reply: str, reason: str
) -> None:
    with pytest.raises(GenerationFailed, match=reason) as caught:
        call_llm(stub, reply)
    assert caught.value.usage.calls == 1  # the call was made (and charged) all the same


def test_llm_answers_over_the_limits_are_refused(stub: StubServer) -> None:
    files = {f"m{i}.py": "x = 1\n" for i in range(3)}
    with pytest.raises(GenerationFailed, match="3 files, over the limit of 2"):
        call_llm(stub, answer(files), limits=Limits(max_files=2))
    with pytest.raises(GenerationFailed, match=r"m0.py\) has 6 bytes, over the limit of 5"):
        call_llm(stub, answer(files), limits=Limits(max_file_bytes=5))
    with pytest.raises(GenerationFailed, match="18 bytes of files, over the limit of 10"):
        call_llm(stub, answer(files), limits=Limits(max_total_bytes=10))


def test_a_cut_off_answer_is_a_failure(stub: StubServer) -> None:
    with pytest.raises(GenerationFailed, match="cut off at maxTokens=5"):
        call_llm(stub, answer({"app.py": WRONG_APP}), max_tokens=5)


def test_feedback_from_the_previous_attempt_is_in_the_prompt(stub: StubServer) -> None:
    feedback = TestReport.model_validate(
        {
            "format": "smartspec.dev/test-report/v1",
            "result": "failed",
            "tests": {"passed": 1, "failed": 1, "errors": 0, "skipped": 0},
            "requirements": {
                "REQ-001": {"tests": ["test_app.py::test_add_sums"], "passed": False},
                "REQ-002": {"tests": ["test_app.py::test_add_zero"], "passed": True},
            },
            "failures": [{"test": "test_app.py::test_add_sums", "message": "assert -1 == 5"}],
            "durationSeconds": 0.5,
        }
    )
    previous = PreviousAttempt(
        attempt=1,
        kind=FailureKind.TESTS_FAILED,
        message="attempt 1: 1 of 2 tests failed",
        report=feedback,
        files=(("app.py", WRONG_APP),),
    )
    call_llm(stub, answer({"app.py": WRONG_APP}), previous=previous)
    user = stub.requests[0]["messages"][1]["content"]
    assert "Attempt 1 failed (TestsFailed)." in user
    assert "What went wrong: attempt 1: 1 of 2 tests failed" in user
    assert f"=== app.py\n{WRONG_APP}" in user
    assert "Tests: 1 passed, 1 failed, 0 errors, 0 skipped." in user
    assert "Requirements without a passing test: REQ-001." in user
    assert "- test_app.py::test_add_sums:\nassert -1 == 5" in user


def test_gateway_errors_name_the_status_and_code(stub: StubServer) -> None:
    stub.script.append(429)
    with pytest.raises(GenerationFailed, match=r"HTTP 429 rate_limit_error \(code rate_limit"):
        call_llm(stub, answer({"app.py": WRONG_APP}))


class _BudgetRefusal(http.server.BaseHTTPRequestHandler):
    """Answers like the gateway does when the run's credit cap is reached (CORE-003)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {
                "error": {
                    "message": "the run has 0 credits left; this call needs up to 4196",
                    "type": "budget_exceeded",
                    "code": "run_cap_reached",
                    "remaining_credits": 0,
                }
            }
        ).encode()
        self.send_response(402)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_budget_refusal_names_the_gateway_error_code() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BudgetRefusal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        gateway = GatewayAccess(base_url=f"http://127.0.0.1:{server.server_port}/v1", token=TOKEN)
        with pytest.raises(GenerationFailed) as caught:
            generate(example_spec(), llm_settings(), gateway, Limits(), None, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert str(caught.value) == (
        "the gateway refused the call: HTTP 402 budget_exceeded (code run_cap_reached): "
        "the run has 0 credits left; this call needs up to 4196"
    )
    assert caught.value.refusal is RefusalCode.RUN_CAP_REACHED
    assert caught.value.usage == Usage()


def test_unreachable_gateway_is_a_generation_failure() -> None:
    gateway = GatewayAccess(base_url=f"http://127.0.0.1:{free_port()}/v1", token=TOKEN)
    with pytest.raises(GenerationFailed, match=r"cannot reach the gateway at http://127\.0\.0\.1"):
        generate(example_spec(), llm_settings(), gateway, Limits(), None, timeout=10)


def test_non_python_specs_are_refused_before_any_call(stub: StubServer) -> None:
    body = example_spec().content()
    body["constraints"] = {"language": "go"}
    with pytest.raises(GenerationFailed, match=r"constraints\.language is 'go'"):
        call_llm(stub, answer({"main.go": "package main"}), spec=SpecSpec.model_validate(body))
    assert stub.requests == []


# ------------------------------------------------------------------ the programs, end to end


def test_builtin_generation_then_tests_pass(bucket: Bucket, snapshot: Snapshot) -> None:
    attempt = new_attempt("todo-builtin")
    done = generate_builtin(bucket, snapshot, attempt)
    assert done.result == "Generated"
    assert "uploaded 5 files" in done.stderr

    names = ["README.md", "app.py", "conftest.py", "requirements.txt", "test_app.py"]
    assert bucket.keys(attempt.prefix) == sorted(
        [attempt.prefix + "manifest.json"] + [attempt.prefix + "files/" + n for n in names]
    )
    manifest_bytes = bucket.get(attempt.prefix + "manifest.json")
    assert done.detail["manifestSha256"] == sha256(manifest_bytes)
    assert done.detail["manifestKey"] == attempt.prefix + "manifest.json"
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == "smartspec.dev/manifest/v1"
    assert manifest["run"] == attempt.run()
    assert manifest["spec"] == {
        "name": "todo-api",
        "revision": 1,
        "contentHash": snapshot.content_hash,
    }
    assert manifest["generator"] == {"backend": "builtin", "model": None, "version": "0.1.0"}
    assert manifest["usage"] == {"calls": 0, "promptTokens": 0, "completionTokens": 0}
    assert [entry["path"] for entry in manifest["files"]] == names
    for entry in manifest["files"]:
        stored = bucket.get(attempt.prefix + "files/" + entry["path"])
        assert entry["sha256"] == sha256(stored)
        assert entry["size"] == len(stored)
    assert {task["file"] for task in manifest["tasks"]} == set(names)

    tested = run_program(
        "tester", instructions_for_tester(bucket, snapshot, attempt, done.detail["manifestSha256"])
    )
    assert tested.code == 0, tested.stderr
    assert tested.result == "TestsPassed"
    summary_bytes = bucket.get(attempt.prefix + "report/summary.json")
    assert tested.detail["summarySha256"] == sha256(summary_bytes)
    summary = json.loads(summary_bytes)
    assert list(summary) == [
        "format",
        "result",
        "tests",
        "requirements",
        "failures",
        "durationSeconds",
    ]
    assert summary["format"] == "smartspec.dev/test-report/v1"
    assert summary["result"] == "passed"
    assert summary["failures"] == []
    assert summary["tests"]["failed"] == summary["tests"]["errors"] == 0
    assert summary["tests"]["passed"] >= 15
    for rid in ("REQ-001", "REQ-002", "REQ-003"):
        assert summary["requirements"][rid]["passed"] is True
        assert summary["requirements"][rid]["tests"]
    assert (
        "test_app.py::test_post_todos_creates_item" in summary["requirements"]["REQ-001"]["tests"]
    )
    junit = bucket.get(attempt.prefix + "report/junit.xml")
    assert b"<testsuite" in junit
    assert b"test_post_todos_creates_item" in junit


def test_a_tampered_file_stops_the_tester(bucket: Bucket, snapshot: Snapshot) -> None:
    attempt = new_attempt("todo-tampered")
    done = generate_builtin(bucket, snapshot, attempt)
    instructions = instructions_for_tester(bucket, snapshot, attempt, done.detail["manifestSha256"])
    bucket.put(attempt.prefix + "files/app.py", b"import os\nos.system('true')\n")

    tested = run_program("tester", instructions)
    assert tested.code == 5
    assert tested.result == "ArtifactMismatch"
    assert "app.py has sha256 sha256:" in tested.detail["message"]
    assert "nothing was run" in tested.detail["message"]
    assert not bucket.keys(attempt.prefix + "report/")


def test_a_manifest_that_does_not_match_stops_the_tester(
    bucket: Bucket, snapshot: Snapshot
) -> None:
    attempt = new_attempt("todo-manifest")
    generate_builtin(bucket, snapshot, attempt)
    wrong = "sha256:" + "0" * 64
    tested = run_program("tester", instructions_for_tester(bucket, snapshot, attempt, wrong))
    assert tested.code == 5
    assert f"the instructions expect {wrong}" in tested.detail["message"]

    # A file entry whose size disagrees with the manifest is refused before any download.
    done = generate_builtin(bucket, snapshot, attempt.next())
    instructions = instructions_for_tester(
        bucket, snapshot, attempt.next(), done.detail["manifestSha256"]
    )
    instructions["files"][0]["size"] += 1
    tested = run_program("tester", instructions)
    assert tested.code == 5
    assert "the files do not match the manifest" in tested.detail["message"]


def test_a_generated_credential_uploads_nothing(
    bucket: Bucket, snapshot: Snapshot, stub: StubServer
) -> None:
    attempt = new_attempt("todo-secret")
    leaky = f'"""Settings."""\n\nREGION = "us-east-1"\nKEY_ID = "{FAKE_AWS_KEY_ID}"\n'
    stub.reply_fn = lambda body: answer({"app.py": WRONG_APP, "settings.py": leaky})
    done = run_program(
        "generator",
        instructions_for_generator(
            bucket, snapshot, attempt, backend="llm", gateway_url=stub.url + "/v1"
        ),
    )
    assert done.code == 4, done.stderr
    assert done.result == "SecretDetected"
    assert done.detail["kind"] == "CredentialDetected"
    assert done.detail["findings"] == [{"location": "settings.py:4", "rule": "AwsAccessKeyId"}]
    assert done.detail["findingsTotal"] == 1
    assert done.detail["usage"]["calls"] == 2, "one repair turn, then the attempt is spent"
    assert "settings.py:4: AwsAccessKeyId" in done.stderr
    assert FAKE_AWS_KEY_ID not in done.stderr + done.stdout
    # No generated file is stored; only the feedback, with the credential redacted.
    feedback_key = attempt.prefix + "feedback/generation.json"
    assert bucket.keys(attempt.prefix) == [feedback_key]
    stored = bucket.get(feedback_key)
    assert done.detail["feedbackSha256"] == sha256(stored)
    assert FAKE_AWS_KEY_ID.encode() not in stored
    document = json.loads(stored)
    assert document["kind"] == "CredentialDetected"
    settings = next(f for f in document["files"] if f["path"] == "settings.py")
    assert settings["redacted"] is True
    assert "[REDACTED:AwsAccessKeyId]" in settings["content"]
    # The repair turn showed the model its answer without the credential.
    repair = stub.requests[1]["messages"]
    assert repair[2]["role"] == "assistant"
    assert FAKE_AWS_KEY_ID not in repair[2]["content"]
    assert "CredentialDetected" in repair[3]["content"]


def test_a_repair_turn_fixes_an_unusable_answer_within_the_attempt(
    bucket: Bucket, snapshot: Snapshot, stub: StubServer
) -> None:
    attempt = new_attempt("todo-repair")
    stub.script.extend([Reply("Here is the plan: first the model, then the routes."), "ok"])
    stub.reply_fn = lambda body: answer({"app.py": WRONG_APP})
    done = run_program(
        "generator",
        instructions_for_generator(
            bucket, snapshot, attempt, backend="llm", gateway_url=stub.url + "/v1"
        ),
    )
    assert done.code == 0, done.stderr
    assert done.detail["usage"]["calls"] == 2
    second = stub.requests[1]["messages"]
    assert second[2] == {
        "role": "assistant",
        "content": "Here is the plan: first the model, then the routes.",
    }
    assert second[3]["content"].startswith("That answer cannot be used (AnswerNotParseable)")


def test_a_snapshot_that_does_not_match_the_pinned_hash_is_refused(
    bucket: Bucket, snapshot: Snapshot
) -> None:
    attempt = new_attempt("todo-hash")
    pinned = "sha256:" + "1" * 64
    done = run_program(
        "generator", instructions_for_generator(bucket, snapshot, attempt, content_hash=pinned)
    )
    assert done.code == 2
    assert done.result == "Error"
    assert (
        f"has sha256 {snapshot.content_hash}, but spec.contentHash is {pinned}"
        in (done.detail["message"])
    )
    assert bucket.keys(attempt.prefix) == []


def test_bad_instructions_exit_2_naming_the_field(bucket: Bucket, snapshot: Snapshot) -> None:
    attempt = new_attempt("todo-bad")
    instructions = instructions_for_generator(bucket, snapshot, attempt)
    instructions["generator"]["temperatureMilli"] = "warm"
    done = run_program("generator", instructions)
    assert done.code == 2
    assert "SMARTSPEC_INSTRUCTIONS: invalid generator instructions" in done.stderr
    assert "generator.temperatureMilli: Input should be a valid integer" in done.stderr
    assert "generator.temperatureMilli" in done.detail["message"]

    done = run_program("tester", "{not json")
    assert done.code == 2
    assert "SMARTSPEC_INSTRUCTIONS: not JSON" in done.detail["message"]

    done = run_program("tester", instructions_for_generator(bucket, snapshot, attempt))
    assert done.code == 2
    assert "role 'generator'; this program is the tester" in done.detail["message"]


def test_failing_generated_tests_fail_the_tester_and_feed_the_next_attempt(
    bucket: Bucket, snapshot: Snapshot, stub: StubServer
) -> None:
    attempt = new_attempt("todo-llm")
    stub.reply_fn = lambda body: answer(
        {"app.py": WRONG_APP, "test_app.py": WRONG_TESTS, "conftest.py": CONFTEST},
        {"app.py": ["REQ-001", "REQ-002"], "test_app.py": ["REQ-001", "REQ-002"]},
    )
    instructions = instructions_for_generator(
        bucket, snapshot, attempt, backend="llm", gateway_url=stub.url + "/v1"
    )
    done = run_program("generator", instructions)
    assert done.code == 0, done.stderr
    manifest = json.loads(bucket.get(attempt.prefix + "manifest.json"))
    assert manifest["generator"] == {"backend": "llm", "model": MODEL, "version": "0.1.0"}
    assert manifest["usage"]["calls"] == 1
    assert manifest["usage"]["completionTokens"] > 0
    assert done.detail["usage"] == manifest["usage"]

    tested = run_program(
        "tester", instructions_for_tester(bucket, snapshot, attempt, done.detail["manifestSha256"])
    )
    assert tested.code == 1, tested.stderr
    assert tested.result == "TestsFailed"
    summary = json.loads(bucket.get(attempt.prefix + "report/summary.json"))
    assert summary["result"] == "failed"
    assert summary["tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    (failure,) = summary["failures"]
    assert failure["test"] == "test_app.py::test_add_sums"
    assert "assert -1 == 5" in failure["message"]
    assert len(failure["message"]) <= 2000
    assert summary["requirements"]["REQ-001"] == {
        "tests": ["test_app.py::test_add_sums"],
        "passed": False,
    }
    assert summary["requirements"]["REQ-002"]["passed"] is True
    # Requirements no test cites are listed too, so the feedback shows them.
    assert summary["requirements"]["REQ-004"] == {"tests": [], "passed": False}

    # Attempt 2 reads that report and attempt 1's files, and passes both to the model.
    summary_key = attempt.prefix + "report/summary.json"
    report_ref = {
        "url": bucket.presigned_get(summary_key),
        "sha256": sha256(bucket.get(summary_key)),
    }
    feedback: dict[str, Any] = {
        "attempt": 1,
        "kind": "TestsFailed",
        "message": "attempt 1: 1 of 2 tests failed",
        "report": report_ref,
        "files": [
            {
                "path": entry["path"],
                "sha256": entry["sha256"],
                "size": entry["size"],
                "url": bucket.presigned_get(attempt.prefix + "files/" + entry["path"]),
            }
            for entry in manifest["files"]
        ],
    }
    retry = instructions_for_generator(
        bucket,
        snapshot,
        attempt.next(),
        backend="llm",
        gateway_url=stub.url + "/v1",
        feedback=feedback,
    )
    again = run_program("generator", retry)
    assert again.code == 0, again.stderr
    prompt = stub.requests[-1]["messages"][1]["content"]
    assert "Attempt 1 failed (TestsFailed)." in prompt
    assert "- test_app.py::test_add_sums:" in prompt
    assert "Requirements without a passing test: REQ-001, REQ-003, REQ-004." in prompt
    assert f"=== app.py\n{WRONG_APP}" in prompt, "the files to repair are in the prompt"

    # A report that is not what the operator recorded is not used, and the prompt says so.
    report_ref["sha256"] = "sha256:" + "0" * 64
    tampered = instructions_for_generator(
        bucket,
        snapshot,
        attempt.next().next(),
        backend="llm",
        gateway_url=stub.url + "/v1",
        feedback=feedback,
    )
    assert run_program("generator", tampered).code == 0
    prompt = stub.requests[-1]["messages"][1]["content"]
    assert "- test_app.py::test_add_sums:" not in prompt
    assert "(Not available: the test report has sha256" in prompt


def test_a_hanging_suite_is_killed_at_the_time_limit(
    bucket: Bucket, snapshot: Snapshot, stub: StubServer
) -> None:
    attempt = new_attempt("todo-hang")
    hanging = (
        "import time\n\nimport pytest\n\n\n"
        '@pytest.mark.requirement("REQ-001")\n'
        "def test_waits_forever():\n    time.sleep(120)\n"
    )
    stub.reply_fn = lambda body: answer({"test_app.py": hanging, "conftest.py": CONFTEST})
    done = run_program(
        "generator",
        instructions_for_generator(
            bucket, snapshot, attempt, backend="llm", gateway_url=stub.url + "/v1"
        ),
    )
    assert done.code == 0, done.stderr
    tested = run_program(
        "tester",
        instructions_for_tester(
            bucket, snapshot, attempt, done.detail["manifestSha256"], timeout_seconds=3
        ),
    )
    assert tested.code == 1, tested.stderr
    summary = json.loads(bucket.get(attempt.prefix + "report/summary.json"))
    assert summary["result"] == "error"
    assert summary["failures"][-1]["test"] == "(pytest session)"
    assert "did not finish within 3 s" in summary["failures"][-1]["message"]
    assert summary["durationSeconds"] < 60
    assert b"did not finish within 3 s" in bucket.get(attempt.prefix + "report/junit.xml")


def test_a_generator_stopped_by_sigterm_exits_at_once_without_a_result(
    bucket: Bucket, snapshot: Snapshot, stub: StubServer
) -> None:
    # In its container the generator is PID 1, where a signal without a handler is dropped:
    # the kubelet's SIGTERM (a deleted or timed-out pod) must end it, not its grace period.
    stub.script.append("stall")  # the model call hangs until the program is stopped
    stub.stall_seconds = 5  # then the stub itself lets go, so that it stops cleanly
    attempt = new_attempt("todo-llm")
    instructions = instructions_for_generator(
        bucket, snapshot, attempt, backend="llm", gateway_url=stub.url + "/v1"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SMARTSPEC_"))}
    env["SMARTSPEC_INSTRUCTIONS"] = json.dumps(instructions)
    process = subprocess.Popen(
        [sys.executable, "-m", "smartspec.sandbox.generator"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not stub.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stub.requests, "the generator never called the model"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr  # handled: the default action would be -15
    assert "generator: stopped by signal 15" in stderr
    assert stdout.strip() == "", "no result line: the attempt is a SandboxError"
