"""The sandbox programs: the generator and the tester that run inside a GenerationRun's Jobs.

Contract: specs/CORE-004-generation-runs.md, section "Sandbox contract".

Both programs read one JSON instructions document (`instructions`), move bytes only through
presigned URLs (`transfer`), and end with one JSON line on stdout and a documented exit code.
The generator writes code with a deterministic builtin backend (`builtin`) or a model called
through the SmartSpec gateway (`llm`); the tester runs the generated pytest suite and records
which requirement each test demonstrates (`requirement_plugin`).

This package runs in a small image with no cluster, cloud or model-provider credentials: it
must never import kopf, kubernetes, boto3 or litellm.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from smartspec.api.sandbox import ExitCode

__all__ = [
    "ExitCode",
    "GeneratedFile",
    "Generation",
    "Outcome",
    "ProgramExit",
    "Task",
    "Usage",
    "print_result",
    "run_program",
]


@dataclass(frozen=True)
class GeneratedFile:
    """One generated file: a safe relative path, its bytes and the requirements it serves."""

    path: str
    content: bytes
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """One planned unit of work (a file), as listed under `tasks` in the manifest."""

    file: str
    requirements: tuple[str, ...]
    description: str


@dataclass
class Usage:
    """Model calls and tokens spent by one generation (zero for the builtin backend)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_wire(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class Generation:
    """What a backend produced: files (sorted by path) and tasks, plus the usage it cost."""

    files: tuple[GeneratedFile, ...]
    tasks: tuple[Task, ...]
    usage: Usage = field(default_factory=Usage)


def print_result(result: str, detail: dict[str, Any]) -> None:
    """The one final JSON line on stdout: {"result": …, "detail": …} (CORE-004, "Exit codes")."""
    line = json.dumps({"result": result, "detail": detail}, ensure_ascii=False)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Outcome:
    """How a program ended: exit code, the final line's result word and its detail."""

    code: ExitCode
    result: str
    detail: dict[str, Any]


class ProgramExit(Exception):  # noqa: N818 - control flow, like SystemExit
    """Stop the program with this code; `message` goes to stderr and into the final line."""

    def __init__(self, code: ExitCode, result: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.outcome = Outcome(code, result, {"message": message, **detail})


def run_program(name: str, body: Callable[[], Outcome]) -> int:
    """Run a sandbox program: one final JSON line on stdout, the exit code returned.

    An unexpected exception is a bug or an environment problem, never a verdict on the
    generated code, so it ends with exit code 2 (not 1, which means "tests failed").
    """
    try:
        with _stopped_by_sigterm(name):
            outcome = body()
    except ProgramExit as stop:
        outcome = stop.outcome
        sys.stderr.write(f"{name}: {stop}\n")
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        message = f"internal error: {type(error).__name__}: {error}"
        sys.stderr.write(f"{name}: {message}\n")
        outcome = Outcome(ExitCode.BAD_INPUT, "Error", {"message": message})
    sys.stderr.flush()
    print_result(outcome.result, outcome.detail)
    return int(outcome.code)


@contextlib.contextmanager
def _stopped_by_sigterm(name: str) -> Iterator[None]:
    """Exit 143 without a result line on SIGTERM (the kubelet stopping the pod). As PID 1 of
    its container the program would ignore it, and the pod would wait out its grace period."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (tests call programs in-process)
        return

    def stop(signum: int, frame: object) -> None:
        sys.stderr.write(f"{name}: stopped by signal {signum}\n")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
