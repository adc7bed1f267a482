"""The agent backend's programs for real: prepare, the POSIX-shell launcher, finish.

specs/CORE-004-generation-runs.md, "Agent backend". Each test plays one generator pod in a
temporary directory: `python -m smartspec.sandbox.agent prepare`, then the launcher exactly
as the pod runs it (`/bin/sh -c LAUNCHER_SCRIPT ...`, with dash where the machine's /bin/sh is
dash) around a stand-in agent (a shell command: what a real agent CLI does is the real
node's test), then `finish`, against a real S3 server through presigned URLs only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smartspec.api.sandbox import AGENT_SPEC_FILE, AGENT_TASK_FILE, AgentStatus
from smartspec.builders.agent_job import LAUNCHER_SCRIPT
from unit.test_sandbox_programs import (
    REPO,
    Attempt,
    Bucket,
    Snapshot,
    bucket,
    instructions_for_generator,
    new_attempt,
    sha256,
    snapshot,
)

__all__ = ["bucket", "snapshot"]  # fixtures, imported for pytest

CONFTEST = (
    "def pytest_configure(config):\n"
    '    config.addinivalue_line("markers", "requirement(id): requirement demonstrated")\n'
)
APP = "def add(a, b):\n    return a + b\n"
TESTS = (
    "import pytest\n\nfrom app import add\n\n\n"
    '@pytest.mark.requirement("REQ-001")\n'
    "def test_add():\n    assert add(2, 3) == 5\n"
)


@dataclass(frozen=True)
class Pod:
    """One generator pod's volumes: the workspace and the agent's status directory."""

    workspace: Path
    status: Path
    instructions: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SMARTSPEC_"))}
        return env | {
            "SMARTSPEC_INSTRUCTIONS": self.instructions,
            "SMARTSPEC_WORKSPACE": str(self.workspace),
            "SMARTSPEC_AGENT_STATUS_DIR": str(self.status),
            **extra,
        }

    def step(self, name: str) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [sys.executable, "-m", "smartspec.sandbox.agent", name],
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        final = json.loads(done.stdout.strip().splitlines()[-1])
        return done.returncode, final["detail"], done.stderr

    def agent(self, script: str, timeout_seconds: int = 60) -> subprocess.CompletedProcess[str]:
        """The launcher as the pod runs it, around `sh -c script` in the workspace."""
        return subprocess.run(
            ["/bin/sh", "-c", LAUNCHER_SCRIPT, "smartspec-agent-launcher", "sh", "-c", script],
            env=self.env(SMARTSPEC_AGENT_TIMEOUT_SECONDS=str(timeout_seconds), HOME="/tmp"),
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def pod(tmp_path: Path, bucket: Bucket, snapshot: Snapshot) -> Pod:
    return make_pod(tmp_path, bucket, snapshot, new_attempt("todo-api-agent"))


def make_pod(
    tmp_path: Path,
    bucket: Bucket,
    snapshot: Snapshot,
    attempt: Attempt,
    feedback: dict[str, Any] | None = None,
) -> Pod:
    document = instructions_for_generator(
        bucket,
        snapshot,
        attempt,
        backend="llm",
        gateway_url="http://127.0.0.1:9/v1",
        feedback=feedback,
    )
    document["generator"]["backend"] = "agent"
    document["generator"]["agentImage"] = "registry.example/agents/aider:0.86.1"
    workspace, status = (
        tmp_path / f"workspace-{attempt.number}",
        tmp_path / f"status-{attempt.number}",
    )
    workspace.mkdir()
    status.mkdir()
    return Pod(workspace, status, json.dumps(document))


def write_project(files: dict[str, str]) -> str:
    """A stand-in agent's shell script that writes these files."""
    lines = []
    for path, content in files.items():
        if "/" in path:
            lines.append(f"mkdir -p '{path.rsplit('/', 1)[0]}'")
        lines.append(f"cat > '{path}' <<'SMARTSPEC_EOF'\n{content}SMARTSPEC_EOF")
    return "\n".join(lines)


def test_prepare_agent_finish_uploads_what_the_agent_wrote(
    pod: Pod, bucket: Bucket, snapshot: Snapshot
) -> None:
    code, detail, stderr = pod.step("prepare")
    assert code == 0, stderr
    task = (pod.workspace / AGENT_TASK_FILE).read_text()
    for requirement in snapshot.spec.requirements:
        assert f"### {requirement.id}" in task
        for criterion in requirement.acceptance_criteria:
            assert criterion in task
    assert '@pytest.mark.requirement("REQ-001")' in task, "the tester's rules are in the task"
    assert (pod.workspace / AGENT_SPEC_FILE).read_bytes() == bucket.get(snapshot.key)

    secret = pod.workspace.parent / "instructions.json"
    secret.write_text("presigned upload URLs")
    script = write_project({"app.py": APP, "tests/test_app.py": TESTS, "conftest.py": CONFTEST})
    script += (
        f"\nln -s '{secret}' leak.txt\nmkdir -p .aider.cache __pycache__\n"
        "echo x > .aider.chat.history.md\necho x > __pycache__/app.cpython-311.pyc\n"
        "mkfifo pipe\n"
    )
    launched = pod.agent(script)
    assert launched.returncode == 0, launched.stderr
    status = AgentStatus.model_validate_json((pod.status / "status.json").read_bytes())
    assert (status.exit_code, status.timed_out) == (0, False)

    code, detail, stderr = pod.step("finish")
    assert code == 0, stderr
    attempt = json.loads(pod.instructions)["run"]
    prefix = f"team-a/runs/{attempt['name']}/{attempt['uid']}/attempt-1/"
    manifest = json.loads(bucket.get(prefix + "manifest.json"))
    assert [f["path"] for f in manifest["files"]] == ["app.py", "conftest.py", "tests/test_app.py"]
    assert manifest["generator"]["backend"] == "agent"
    assert manifest["generator"]["agentImage"] == "registry.example/agents/aider:0.86.1"
    assert manifest["usage"] == {"calls": 0, "promptTokens": 0, "completionTokens": 0}
    assert bucket.get(prefix + "files/app.py") == APP.encode()
    assert detail["manifestSha256"] == sha256(bucket.get(prefix + "manifest.json"))
    assert "leak.txt: not a regular file" in stderr
    assert not any("leak" in key or "pipe" in key for key in bucket.keys(prefix))


def test_a_failing_agent_feeds_its_files_to_the_next_attempt(
    tmp_path: Path, bucket: Bucket, snapshot: Snapshot
) -> None:
    first = new_attempt("todo-api-agent-fails")
    pod = make_pod(tmp_path, bucket, snapshot, first)
    assert pod.step("prepare")[0] == 0
    pod.agent(write_project({"app.py": APP}) + "\necho 'API error 402' >&2\nexit 7")
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AgentFailed")
    assert "the agent exited 7" in detail["message"]
    assert bucket.keys(first.prefix + "files/") == [], "a failed attempt uploads no code"
    stored = bucket.get(first.prefix + "feedback/generation.json")
    assert json.loads(stored)["files"][0]["path"] == "app.py"

    feedback = {
        "attempt": 1,
        "kind": "AgentFailed",
        "message": detail["message"],
        "generation": {
            "url": bucket.presigned_get(first.prefix + "feedback/generation.json"),
            "sha256": sha256(stored),
        },
        "files": [],
    }
    second = make_pod(tmp_path, bucket, snapshot, first.next(), feedback)
    code, detail, stderr = second.step("prepare")
    assert code == 0, stderr
    assert (second.workspace / "app.py").read_text() == APP, "the agent starts from its files"
    task = (second.workspace / AGENT_TASK_FILE).read_text()
    assert "# The previous attempt" in task
    assert "the agent exited 7" in task


def test_an_agent_past_its_timeout_is_stopped_and_said_so(pod: Pod) -> None:
    assert pod.step("prepare")[0] == 0
    launched = pod.agent(write_project({"app.py": APP}) + "\ntrap '' TERM\nsleep 60", 1)
    assert "timed out: true" in launched.stderr
    status = AgentStatus.model_validate_json((pod.status / "status.json").read_bytes())
    assert (status.timed_out, status.exit_code) == (True, 137), "TERM ignored: KILL"
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AgentTimeout")


def test_no_status_or_a_forged_one_is_an_agent_failure(pod: Pod) -> None:
    assert pod.step("prepare")[0] == 0
    (pod.workspace / "app.py").write_text(APP)
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AgentFailed")
    assert "left no status" in detail["message"]
    (pod.status / "status.json").write_text('{"exitCode": "fine"}')
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AgentFailed")
    assert "not the launcher's record" in detail["message"]


def test_nothing_written_oversized_or_a_credential_fails_the_attempt(
    pod: Pod, bucket: Bucket
) -> None:
    assert pod.step("prepare")[0] == 0
    pod.agent("true")
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AgentFailed")
    assert detail["message"].endswith("the agent exited 0 but wrote no file")

    (pod.workspace / "big.bin").write_bytes(b"x" * 262_145)
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (3, "AnswerInvalid")
    assert "big.bin has 262145 bytes, over the limit of 262144" in detail["message"]
    (pod.workspace / "big.bin").unlink()

    key_id = "AKIA" + "IOSFODNN7EXAMPLE"
    (pod.workspace / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{key_id}"\n')
    code, detail, _ = pod.step("finish")
    assert (code, detail["kind"]) == (4, "CredentialDetected")
    prefix = json.loads(pod.instructions)["upload"]["keyPrefix"]
    assert bucket.keys(prefix + "files/") == []
    assert key_id not in bucket.get(prefix + "feedback/generation.json").decode()
