"""The sandbox programs' results as the operator reads them: exit codes and the result line.

Contract: specs/CORE-004-generation-runs.md, section "Exit codes".

Both sandbox programs end with one JSON line on stdout, `{"result": ..., "detail": {...}}`,
which the pod's termination message carries to the run reconciler, and a documented exit
code. The reconciler reads the line with `parse_result_line` and acts on its structured
fields (such as the gateway's refusal code), never on the wording of its message.
"""

from __future__ import annotations

import json
from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartspec.api.gateway import RefusalCode
from smartspec.api.v1alpha1.generationrun import FailureKind

__all__ = ["ExitCode", "ResultDetail", "ResultLine", "parse_result_line"]


class ExitCode(IntEnum):
    """Exit codes of both sandbox programs (CORE-004, "Exit codes")."""

    OK = 0
    """Generator: files and manifest uploaded. Tester: report uploaded, every test passed."""
    TESTS_FAILED = 1
    """Tester: report uploaded, tests failed (the feedback for the next attempt)."""
    BAD_INPUT = 2
    """Either: bad instructions or storage failure."""
    GENERATION_FAILED = 3
    """Generator: the model answer was unusable, the gateway refused, or the spec is unsupported."""
    CREDENTIAL_DETECTED = 4
    """Generator: generated code contains a credential; nothing was uploaded."""
    ARTIFACT_MISMATCH = 5
    """Tester: a file does not match the manifest (sha256 or size); nothing was run."""


class ResultDetail(BaseModel):
    """The fields of a result line's detail that the operator acts on; others are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    message: str = ""
    kind: FailureKind | None = None
    """How the program's attempt failed (absent when it did not)."""
    refusal: RefusalCode | None = None
    """The gateway's refusal code, when a refusal ended the generation."""
    feedback_sha256: str | None = Field(default=None, alias="feedbackSha256")
    """sha256 of the generation feedback document the generator stored, if it did."""


class ResultLine(BaseModel):
    """A sandbox program's final stdout line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: str
    detail: ResultDetail


def parse_result_line(text: str) -> ResultLine | None:
    """The last line of `text` that is a result line (a termination message may hold log
    lines before it), or None when there is none."""
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if not stripped.startswith("{"):
            continue
        try:
            return ResultLine.model_validate(json.loads(stripped))
        except (ValueError, ValidationError):
            continue
    return None
