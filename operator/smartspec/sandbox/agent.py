"""The agent backend's steps around a coding agent: `python -m smartspec.sandbox.agent STEP`.

Contract: specs/CORE-004-generation-runs.md, section "Agent backend" (and "Sandbox
contract", "Manifest", "Feedback", "Exit codes").

The generator pod of an agent run holds three containers, in this order:
- `prepare` (init, this program): reads the instructions, fetches the pinned Spec and checks
  its sha256, reads what the previous attempt left; writes the workspace: AGENT_TASK_FILE (the
  rules, the rendered spec, the previous attempt's feedback), AGENT_SPEC_FILE, and the
  previous attempt's files at their paths, so the agent repairs rather than restarts.
- `agent` (init, the run's image): the agent CLI under a POSIX-shell launcher that records
  its exit status (AgentStatus) and stops it at its timeout. It never sees the instructions
  (presigned upload URLs); it gets the gateway's URLs and the run token in its env.
- `generator` (main, this program's `finish`): collects the regular files the agent left
  (dot paths, symlinks and special files are never read), then ends like every backend
  (generator.publish): limits, credential scan, files, manifest last. An agent that failed,
  timed out or wrote nothing fails the attempt; the files it left go to the next attempt in
  feedback/generation.json (credentials redacted).

The sandbox cannot see the agent's model calls: the manifest's usage is zero, and the
gateway's figures (status.usage, the ledger) are the record.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from smartspec.api.sandbox import (
    AGENT_INPUT_DIR,
    AGENT_SPEC_FILE,
    AGENT_STATUS_DIR,
    AGENT_STATUS_FILE,
    AGENT_TASK_FILE,
    ExitCode,
    GeneratorInstructions,
    Limits,
    check_relative_path,
)
from smartspec.api.sandbox import AgentStatus as AgentStatusDocument
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import canonical_json

from . import GeneratedFile, Generation, Outcome, llm, run_program
from .exchange import read_pinned_spec
from .feedback import PreviousAttempt, feedback_text, read_previous_attempt, redacted_files
from .generator import failed_generation, publish
from .instructions import load_role_instructions
from .spec_markdown import render_spec

__all__ = ["collect_files", "main", "read_status", "task_text", "write_workspace"]

PROGRAM = "smartspec-agent"
WORKSPACE = Path("/workspace")
SKIPPED_NAMES = frozenset({"__pycache__", "node_modules"})
"""Directories an agent or its tools leave that are never part of the project."""
MAX_DEPTH = 32


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`prepare` or `finish` (CORE-004, "Agent backend"); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    workspace = Path((environ or os.environ).get("SMARTSPEC_WORKSPACE", str(WORKSPACE)))
    status_dir = Path((environ or os.environ).get("SMARTSPEC_AGENT_STATUS_DIR", AGENT_STATUS_DIR))
    if args == ["prepare"]:
        return run_program(f"{PROGRAM}-prepare", lambda: _prepare(environ, workspace))
    if args == ["finish"]:
        return run_program(f"{PROGRAM}-finish", lambda: _finish(environ, workspace, status_dir))
    sys.stderr.write(f"usage: python -m smartspec.sandbox.agent prepare|finish (got {args})\n")
    return int(ExitCode.BAD_INPUT)


# ---------------------------------------------------------------- prepare


def _prepare(environ: Mapping[str, str] | None, workspace: Path) -> Outcome:
    instructions = load_role_instructions(environ, GeneratorInstructions, "generator")
    spec = read_pinned_spec(instructions.spec)
    previous = read_previous_attempt(instructions.feedback) if instructions.feedback else None
    written = write_workspace(workspace, instructions, spec, previous)
    _say(f"workspace ready: {AGENT_TASK_FILE}, {AGENT_SPEC_FILE} and {written} earlier file(s)")
    return Outcome(
        ExitCode.OK,
        "Prepared",
        {"message": f"workspace ready with {written} file(s) of the previous attempt"},
    )


def write_workspace(
    workspace: Path,
    instructions: GeneratorInstructions,
    spec: SpecSpec,
    previous: PreviousAttempt | None,
) -> int:
    """The agent's inputs, and the previous attempt's files at their paths; returns how
    many of those were written (a path that is not safe is skipped and said)."""
    inputs = workspace / AGENT_INPUT_DIR
    inputs.mkdir(parents=True, exist_ok=True)
    (workspace / AGENT_SPEC_FILE).write_bytes(canonical_json(spec.content()))
    settings = instructions.generator
    text = task_text(spec, instructions.limits, previous, settings.feedback_max_bytes)
    (workspace / AGENT_TASK_FILE).write_text(text, encoding="utf-8")
    written = 0
    for path, content in previous.files if previous else ():
        try:
            check_relative_path(path)
        except ValueError as error:
            _say(f"not restoring {path!r}: {error}")
            continue
        target = workspace / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written += 1
    return written


def task_text(
    spec: SpecSpec, limits: Limits, previous: PreviousAttempt | None, feedback_max_bytes: int
) -> str:
    """What the agent is asked to do: one self-contained Markdown document."""
    parts = [
        "# Task",
        "",
        "Implement the specification below as a complete project in the current directory "
        "(the project root). Create or edit the files directly; do not ask questions, do not "
        "wait for confirmation, and stop when the project is complete. Do not touch "
        f"{AGENT_INPUT_DIR}/: it holds these instructions and the specification as JSON "
        f"({AGENT_SPEC_FILE}).",
        "",
        llm.project_rules(spec, limits),
        "",
        render_spec(spec),
    ]
    if previous is not None:
        parts += ["", "# The previous attempt", "", feedback_text(previous, feedback_max_bytes)]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------- finish


def _finish(environ: Mapping[str, str] | None, workspace: Path, status_dir: Path) -> Outcome:
    instructions = load_role_instructions(environ, GeneratorInstructions, "generator")
    status, problem = read_status(status_dir)
    try:
        files = collect_files(workspace, instructions.limits)
    except llm.GenerationFailed as failure:
        raise failed_generation(instructions, failure) from None
    _say(f"the agent left {len(files)} file(s); its status: {problem or _describe(status)}")
    ended_badly = _agent_failure(status, problem, files)
    if ended_badly is not None:
        raise failed_generation(instructions, ended_badly)
    return publish(instructions, Generation(files=files, tasks=()))


def read_status(status_dir: Path) -> tuple[AgentStatusDocument | None, str | None]:
    """The launcher's record, or why there is none (the launcher was killed, or the agent
    overwrote the file with something else)."""
    path = status_dir / AGENT_STATUS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "the agent's launcher left no status (it was killed before the agent ended)"
    except OSError as error:
        return None, f"cannot read the agent's status: {error.strerror}"
    try:
        return AgentStatusDocument.model_validate_json(raw), None
    except ValidationError as error:
        return None, f"the agent's status file is not the launcher's record: {error.errors()[0]}"


def _agent_failure(
    status: AgentStatusDocument | None, problem: str | None, files: tuple[GeneratedFile, ...]
) -> llm.GenerationFailed | None:
    kept = redacted_files(files)
    if status is None:
        return llm.GenerationFailed(FailureKind.AGENT_FAILED, problem or "no status", files=kept)
    if status.timed_out:
        seconds = status.finished_at - status.started_at
        message = f"the agent was stopped at its timeout ({_describe(status)}, {seconds} s)"
        return llm.GenerationFailed(FailureKind.AGENT_TIMEOUT, message, files=kept)
    if status.exit_code != 0:
        message = f"the agent {_describe(status)}; its output is in the pod's agent container log"
        return llm.GenerationFailed(FailureKind.AGENT_FAILED, message, files=kept)
    if not files:
        return llm.GenerationFailed(
            FailureKind.AGENT_FAILED, "the agent exited 0 but wrote no file"
        )
    return None


def _describe(status: AgentStatusDocument | None) -> str:
    if status is None:
        return "unknown"
    if status.exit_code > 128:
        return f"was killed by signal {status.exit_code - 128} (exit status {status.exit_code})"
    return f"exited {status.exit_code}"


def collect_files(workspace: Path, limits: Limits) -> tuple[GeneratedFile, ...]:
    """Every regular file under `workspace` but dot paths and SKIPPED_NAMES, by path.

    Nothing is followed: a symlink could point at this container's instructions (the
    presigned upload URLs), a FIFO would block the read. Sizes are checked before reading.
    """
    found: dict[str, bytes] = {}
    total = 0

    def walk(directory: Path, prefix: str, depth: int) -> None:
        nonlocal total
        if depth > MAX_DEPTH:
            raise _too_much(f"{prefix or '.'} is nested deeper than {MAX_DEPTH} directories")
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda item: item.name):
                if entry.name.startswith(".") or entry.name in SKIPPED_NAMES:
                    continue
                path = f"{prefix}{entry.name}"
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    walk(Path(entry.path), f"{path}/", depth + 1)
                    continue
                if not stat.S_ISREG(info.st_mode) or path.endswith(".pyc"):
                    _say(f"skipping {path}: not a regular file")
                    continue
                check = _path_problem(path)
                if check is not None:
                    raise _too_much(f"{path!r}: {check}")
                if info.st_size > limits.max_file_bytes:
                    raise _too_much(
                        f"{path} has {info.st_size} bytes, over the limit of "
                        f"{limits.max_file_bytes}"
                    )
                total += info.st_size
                if len(found) >= limits.max_files or total > limits.max_total_bytes:
                    raise _too_much(
                        f"the workspace holds more than {limits.max_files} files or "
                        f"{limits.max_total_bytes} bytes"
                    )
                found[path] = _read_regular(Path(entry.path))

    walk(workspace, "", 0)
    return tuple(GeneratedFile(path, content) for path, content in sorted(found.items()))


def _read_regular(path: Path) -> bytes:
    # O_NOFOLLOW|O_NONBLOCK: the entry was a regular file when listed; refuse if it changed.
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _too_much(f"{path} changed while it was read")
        return handle.read()


def _path_problem(path: str) -> str | None:
    try:
        check_relative_path(path)
    except ValueError as error:
        return str(error)
    return None


def _too_much(message: str) -> llm.GenerationFailed:
    return llm.GenerationFailed(FailureKind.ANSWER_INVALID, f"the agent's workspace: {message}")


def _say(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
