"""Names the sandbox contract fixes: object keys, environment variables, safe paths.

Contract: specs/CORE-004-generation-runs.md, sections "Object layout in S3" and "Sandbox
contract". One spelling of each, imported by the sandbox programs, the builders and the
reconciler.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "AGENT_INPUT_DIR",
    "AGENT_SPEC_FILE",
    "AGENT_STATUS_DIR",
    "AGENT_STATUS_FILE",
    "AGENT_TASK_FILE",
    "AGENT_TIMED_OUT_FILE",
    "FILES_PREFIX",
    "GENERATION_FEEDBACK_KEY",
    "INSTRUCTIONS_ENV",
    "INSTRUCTIONS_FILE_ENV",
    "MANIFEST_KEY",
    "MAX_PATH_LENGTH",
    "REPORT_JUNIT_KEY",
    "REPORT_SUMMARY_KEY",
    "REQUIREMENT_REPORT_ENV",
    "TESTER_MODULES",
    "check_relative_path",
]

# Under an attempt's prefix, <ns>/runs/<run>/<uid>/attempt-<k>/:
FILES_PREFIX = "files/"
"""Every generated file, by its relative path."""
MANIFEST_KEY = "manifest.json"
"""The generator's manifest; written last, so its presence means the code is complete."""
GENERATION_FEEDBACK_KEY = "feedback/generation.json"
"""Why a generation failed, for the next attempt (written only when it failed)."""
REPORT_SUMMARY_KEY = "report/summary.json"
REPORT_JUNIT_KEY = "report/junit.xml"

INSTRUCTIONS_FILE_ENV = "SMARTSPEC_INSTRUCTIONS_FILE"
"""The mounted instructions file (the Job's Secret); read first."""
INSTRUCTIONS_ENV = "SMARTSPEC_INSTRUCTIONS"
"""The instructions as one JSON string, when no file is named."""
REQUIREMENT_REPORT_ENV = "SMARTSPEC_REQUIREMENT_REPORT"
"""Where the tester's pytest plugin writes each test's requirement markers."""

# The agent backend's workspace (CORE-004, "Agent backend"), relative to the workspace root:
AGENT_INPUT_DIR = ".smartspec"
"""What prepare writes for the agent; a dot directory, so finish never collects it."""
AGENT_TASK_FILE = f"{AGENT_INPUT_DIR}/task.md"
"""The agent's instructions: the rules, the rendered spec, the previous attempt's feedback."""
AGENT_SPEC_FILE = f"{AGENT_INPUT_DIR}/spec.json"
"""The pinned Spec revision as canonical JSON (the hash-checked snapshot's content)."""
AGENT_STATUS_DIR = "/var/run/smartspec-agent"
"""A volume shared by the agent's launcher (writes) and finish (reads), not the workspace."""
AGENT_STATUS_FILE = "status.json"
"""The launcher's record of how the agent ended, written last by an atomic rename."""
AGENT_TIMED_OUT_FILE = "timed-out"
"""Created by the launcher's watchdog before it stops the agent."""

MAX_PATH_LENGTH = 512

TESTER_MODULES = frozenset(
    {
        "_pytest",
        "annotated_types",
        "iniconfig",
        "packaging",
        "pluggy",
        "py",
        "pydantic",
        "pydantic_core",
        "pygments",
        "pytest",
        "typing_extensions",
        "typing_inspection",
    }
)
"""Top-level modules, besides the standard library, that generated code can import in the
tester image (pytest and pydantic with their dependencies; tests/unit/test_dockerfiles.py
checks this against what the image installs)."""


def check_relative_path(path: str) -> str:
    """`path` if it is a safe relative object path, else ValueError saying why.

    CORE-004: paths are relative, use `/`, contain no `..` and name regular files. The
    rule is deliberately literal (any `..` substring is refused, not only a `..` segment):
    the same string becomes part of an S3 key and of a file name in the tester's directory.
    """
    reason = _path_problem(path)
    if reason is not None:
        raise ValueError(f"path {reason}")
    return path


_PATH_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda path: not path, "is empty"),
    (lambda path: len(path) > MAX_PATH_LENGTH, f"is longer than {MAX_PATH_LENGTH} characters"),
    (lambda path: ".." in path, "contains '..'"),
    (lambda path: path.startswith("/"), "is absolute (starts with '/')"),
    (lambda path: "\\" in path, "contains a backslash; use '/'"),
    (lambda path: path.endswith("/"), "ends with '/' (it must name a file)"),
    (
        lambda path: any(ord(char) < 32 or ord(char) == 127 for char in path),
        "contains a control character",
    ),
    (
        lambda path: any(segment in ("", ".") for segment in path.split("/")),
        "has an empty or '.' segment",
    ),
    # "C:" or "scheme:" prefixes are absolute on some systems and confusing everywhere.
    (lambda path: ":" in path.split("/", 1)[0], "starts with a drive or scheme prefix"),
)


def _path_problem(path: str) -> str | None:
    return next((reason for rule, reason in _PATH_RULES if rule(path)), None)
