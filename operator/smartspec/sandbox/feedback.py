"""What the previous attempt left, read back and told to the model within a byte budget.

Contract: specs/CORE-004-generation-runs.md, section "Feedback".

The instructions' `feedback` names only documents the previous attempt produced: its test
report when its tests ran, its generator's feedback document when generation failed, and
its files when it generated code. Each is checked against the sha256 the operator recorded;
one that cannot be read or does not match is left out and the prompt says so, because a
lost document must not cost the attempt that could still repair from the rest.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import ValidationError

from smartspec.api.sandbox import (
    CredentialFinding,
    DocumentRef,
    Feedback,
    FeedbackFile,
    GenerationFeedback,
    TestReport,
)
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.logic.canonical import HASH_PREFIX
from smartspec.logic.credential_scan import redact_credentials, scan_text

from . import GeneratedFile, Task
from .transfer import TransferError, download

__all__ = [
    "ADVICE",
    "PreviousAttempt",
    "credential_findings",
    "feedback_text",
    "read_previous_attempt",
    "redacted_files",
]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MIN_SECTION_BYTES = 256

# What each kind means for the model, in one sentence of advice.
ADVICE = {
    FailureKind.ANSWER_NOT_PARSEABLE: "Your answer could not be read as the JSON object asked "
    "for. Answer with exactly one JSON object and nothing else.",
    FailureKind.ANSWER_INVALID: "Your answer was JSON but did not follow the format or its "
    "limits. Follow the format exactly.",
    FailureKind.ANSWER_TRUNCATED: "Your answer was cut off at the token limit. Keep the "
    "project smaller: fewer files, shorter files, no comments that are not needed.",
    FailureKind.ANSWER_EMPTY: "Your answer was empty. Answer with the JSON object.",
    FailureKind.CODE_DOES_NOT_COMPILE: "Some generated Python did not compile or imported a "
    "module that does not exist. Fix exactly those problems.",
    FailureKind.CREDENTIAL_DETECTED: "The generated code contained something that looks like "
    "a credential (shown redacted below). Never write credentials, tokens, passwords or keys; "
    "read them from the environment instead.",
    FailureKind.MODEL_UNAVAILABLE: "The model could not be reached; no answer was received. "
    "Answer as you would have.",
    FailureKind.TESTS_FAILED: "The project was generated and its tests ran; some failed. Fix "
    "the causes.",
    FailureKind.TEST_TIMEOUT: "The tests did not finish within their time limit. Look for "
    "tests or code that wait forever (servers, loops, blocking calls without timeouts).",
    FailureKind.OOM_KILLED: "A process ran out of memory. Avoid large allocations.",
    FailureKind.ATTEMPT_TIMEOUT: "The attempt ran past its deadline.",
    FailureKind.SANDBOX_ERROR: "The sandbox could not finish the attempt.",
    FailureKind.GATEWAY_REFUSED: "The model call was refused.",
    FailureKind.AGENT_FAILED: "The coding agent failed (its exit status is below) or wrote no "
    "file. The files it left are below: finish the project from them.",
    FailureKind.AGENT_TIMEOUT: "The coding agent ran out of time and was stopped. Work in "
    "smaller steps; the files it left are below.",
}


@dataclass(frozen=True)
class PreviousAttempt:
    """The previous attempt's outcome and what could be read of its documents."""

    attempt: int
    kind: FailureKind
    message: str
    report: TestReport | None = None
    generation: GenerationFeedback | None = None
    files: tuple[tuple[str, str], ...] = ()
    """(path, text) of the files to repair: the generated files, or the failed answer's."""
    unreadable: tuple[str, ...] = field(default=())
    """Why documents named by the feedback are missing from this view."""


def read_previous_attempt(feedback: Feedback) -> PreviousAttempt:
    """Download and check what `feedback` names."""
    unreadable: list[str] = []
    report = generation = None
    if feedback.report is not None:
        raw = _fetch(feedback.report, "the test report", unreadable)
        report = _parse(raw, TestReport, "the test report", unreadable)
    if feedback.generation is not None:
        raw = _fetch(feedback.generation, "the generation feedback", unreadable)
        generation = _parse(raw, GenerationFeedback, "the generation feedback", unreadable)
    files: list[tuple[str, str]] = []
    for ref in feedback.files:
        raw = _fetch(DocumentRef(url=ref.url, sha256=ref.sha256), ref.path, unreadable)
        if raw is not None:
            files.append((ref.path, raw.decode("utf-8", errors="replace")))
    if generation is not None and not files:
        files = [(item.path, item.content) for item in generation.files]
    for problem in unreadable:
        sys.stderr.write(f"smartspec-generator: feedback: {problem}\n")
    return PreviousAttempt(
        attempt=feedback.attempt,
        kind=feedback.kind,
        message=feedback.message,
        report=report,
        generation=generation,
        files=tuple(files),
        unreadable=tuple(unreadable),
    )


def _fetch(ref: DocumentRef, what: str, problems: list[str]) -> bytes | None:
    try:
        raw = download(ref.url, max_bytes=MAX_DOCUMENT_BYTES)
    except TransferError as error:
        problems.append(f"{what} could not be read: {error}")
        return None
    actual = HASH_PREFIX + hashlib.sha256(raw).hexdigest()
    if actual != ref.sha256:
        problems.append(f"{what} has sha256 {actual}, not the recorded {ref.sha256}: not used")
        return None
    return raw


ModelT = TypeVar("ModelT", TestReport, GenerationFeedback)


def _parse(raw: bytes | None, model: type[ModelT], what: str, problems: list[str]) -> ModelT | None:
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        problems.append(f"{what} is not valid: {error.error_count()} problem(s)")
        return None


def feedback_text(previous: PreviousAttempt, max_bytes: int) -> str:
    """The prompt's section about the previous attempt, at most `max_bytes` UTF-8 bytes.

    Order of priority: the kind and its message, then the failure detail (test failures
    with their output, requirements without a passing test; or the answer's problems),
    then the files to repair. What does not fit is named, never silently dropped.
    """
    head = [
        f"Attempt {previous.attempt} failed ({previous.kind.value}). "
        + ADVICE.get(previous.kind, ""),
        f"What went wrong: {previous.message}",
    ]
    head += [f"(Not available: {problem}.)" for problem in previous.unreadable]
    budget = _Budget(max_bytes)
    budget.take("\n".join(head))
    detail = _detail_lines(previous)
    if detail:
        budget.take_lines(detail, reserve=max_bytes // 2 if previous.files else 0)
    if previous.files:
        budget.take(
            "The previous attempt's files follow. Repair them rather than starting over, and "
            "answer with the complete project again (every file, not a diff)."
        )
        budget.take_files(previous.files)
    else:
        budget.take("Answer with the complete project (every file).")
    return "\n".join(budget.parts)


def _detail_lines(previous: PreviousAttempt) -> list[str]:
    lines: list[str] = []
    report = previous.report
    if report is not None:
        counts = report.tests
        lines.append(
            f"Test result: {report.result}. Tests: {counts.passed} passed, {counts.failed} "
            f"failed, {counts.errors} errors, {counts.skipped} skipped."
        )
        missing = [
            rid for rid, evidence in sorted(report.requirements.items()) if not evidence.passed
        ]
        if missing:
            lines.append("Requirements without a passing test: " + ", ".join(missing) + ".")
        for failure in report.failures:
            entry = f"- {failure.test}:\n{failure.message}"
            if failure.output:
                entry += f"\nOutput:\n{failure.output}"
            lines.append(entry)
    generation = previous.generation
    if generation is not None:
        for finding in generation.findings:
            lines.append(f"- credential-like text at {finding.location} ({finding.rule})")
        if generation.answer_excerpt:
            lines.append("The answer began and ended like this:\n" + generation.answer_excerpt)
    return lines


class _Budget:
    """Collects text parts while their UTF-8 size stays within a limit."""

    def __init__(self, max_bytes: int) -> None:
        self.left = max_bytes
        self.parts: list[str] = []

    def take(self, text: str) -> bool:
        size = len(text.encode("utf-8")) + 1
        if size > self.left:
            return False
        self.parts.append(text)
        self.left -= size
        return True

    def take_lines(self, lines: list[str], *, reserve: int) -> None:
        """Whole lines while they fit, keeping `reserve` bytes for what follows."""
        for index, line in enumerate(lines):
            if self.left - reserve < MIN_SECTION_BYTES or not self._fits(line, reserve):
                self.take(f"({len(lines) - index} more lines of detail left out for size.)")
                return
            self.take(line)

    def take_files(self, files: tuple[tuple[str, str], ...]) -> None:
        for index, (path, text) in enumerate(files):
            if not self.take(f"=== {path}\n{text}"):
                left_out = ", ".join(name for name, _ in files[index:])
                self.take(f"(Left out for size, rewrite them too: {left_out}.)")
                return

    def _fits(self, text: str, reserve: int) -> bool:
        return len(text.encode("utf-8")) + 1 <= self.left - reserve


def credential_findings(
    files: tuple[GeneratedFile, ...], tasks: tuple[Task, ...]
) -> list[CredentialFinding]:
    documents = [(item.path, item.content.decode("utf-8", errors="replace")) for item in files]
    documents += [(f"tasks[{index}]", task.description) for index, task in enumerate(tasks)]
    return [
        CredentialFinding(location=hit.path, rule=hit.rule_id)
        for path, text in documents
        for hit in scan_text(text, path=path)
    ]


def redacted_files(files: tuple[GeneratedFile, ...]) -> tuple[FeedbackFile, ...]:
    """The answer's files as stored for the next attempt: credentials never leave redacted."""
    stored = []
    for item in files:
        text = item.content.decode("utf-8", errors="replace")
        clean = redact_credentials(text)
        stored.append(FeedbackFile(path=item.path, content=clean, redacted=clean != text))
    return tuple(stored)
