"""Canned model answers for the generate → test loop, one per way a real model's answer goes
wrong, built from the spec in the request (specs/CORE-004-generation-runs.md, "Feedback").

A test scripts the stub (`StubServer.script`) with these replies, one per model call. The
code they contain is the builtin generator's project for the requested spec, so the
"correct" answer really passes its tests and the broken ones fail in a known way. They test
the loop's plumbing, never model quality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.sandbox import builtin

from .openai_stub import Reply

__all__ = [
    "FAULTS",
    "answer_with",
    "correct",
    "credential",
    "empty",
    "failing_tests",
    "hanging_tests",
    "invalid_json",
    "kills_tester",
    "not_compiling",
    "prose",
    "spec_of",
    "truncated",
    "wrong_schema",
]

Change = Callable[[dict[str, str]], dict[str, str]]


def spec_of(body: dict[str, Any]) -> SpecSpec:
    """The spec a generator request carries (its first user message)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    spec_json = user.split("canonical JSON:\n", 1)[1].split("\n\nRequirement ids:", 1)[0]
    return SpecSpec.model_validate({**json.loads(spec_json), "lifecycle": "Draft"})


def project_of(body: dict[str, Any]) -> dict[str, str]:
    """path -> content of the builtin generator's project for the request's spec."""
    generation = builtin.generate(spec_of(body))
    return {item.path: item.content.decode() for item in generation.files}


def answer_with(change: Change | None = None) -> Callable[[dict[str, Any]], str]:
    """A JSON answer holding the project, changed by `change` first."""

    def reply(body: dict[str, Any]) -> str:
        files = project_of(body)
        if change is not None:
            files = change(files)
        return json.dumps({"files": [{"path": p, "content": c} for p, c in files.items()]})

    return reply


def _with(path: str, old: str, new: str) -> Change:
    def change(files: dict[str, str]) -> dict[str, str]:
        assert old in files[path], f"{old!r} is not in the canned {path}"
        return {**files, path: files[path].replace(old, new)}

    return change


def correct() -> Reply:
    return Reply(answer_with())


def failing_tests() -> Reply:
    """Code that compiles but answers 200 where its tests expect 201."""
    return Reply(answer_with(_with("app.py", "201", "200")))


def not_compiling() -> Reply:
    return Reply(answer_with(lambda files: {**files, "app.py": files["app.py"] + "\ndef (:\n"}))


def hanging_tests() -> Reply:
    """A suite whose first test never returns: the tester's time limit must stop it."""

    def change(files: dict[str, str]) -> dict[str, str]:
        hang = "\n\ndef test_000_waits_forever():\n    import time\n    time.sleep(3600)\n"
        return {**files, "test_app.py": files["test_app.py"] + hang}

    return Reply(answer_with(change))


def credential() -> Reply:
    """Code with an AWS-style access key id in it."""
    leak = '\nAWS_ACCESS_KEY_ID = "AKIAQWERTYUIOPASDFGH"\n'
    return Reply(answer_with(lambda files: {**files, "app.py": files["app.py"] + leak}))


def prose() -> Reply:
    return Reply(
        "Sure! Here is how I would build the to-do service: a small HTTP server with "
        "create, read, update and delete endpoints, and tests for each requirement."
    )


def invalid_json() -> Reply:
    return Reply(lambda body: answer_with()(body)[:-40])


def wrong_schema() -> Reply:
    return Reply(json.dumps({"project": {"app.py": "print('hello')"}}))


def truncated() -> Reply:
    return Reply(lambda body: answer_with()(body)[:200], finish_reason="length")


def empty() -> Reply:
    return Reply("")


FAULTS: dict[str, Callable[[], Reply]] = {
    "prose": prose,
    "invalid-json": invalid_json,
    "wrong-schema": wrong_schema,
    "not-compiling": not_compiling,
    "truncated": truncated,
    "empty": empty,
    "credential": credential,
    "failing-tests": failing_tests,
}


def kills_tester() -> Reply:
    """A conftest.py that stops pytest's parent, the tester, mid-suite: it exits without a
    report, as when its pod is deleted or evicted. SIGTERM, not SIGKILL: in a real container
    the tester is PID 1, which ignores SIGKILL sent from inside its own PID namespace; SIGTERM
    reaches the handler it installs for the kubelet's stop."""
    kill = "\nimport os as _os, signal as _signal\n_os.kill(_os.getppid(), _signal.SIGTERM)\n"
    return Reply(answer_with(lambda files: {**files, "conftest.py": files["conftest.py"] + kill}))
