"""The tester program: `python -m smartspec.sandbox.tester`.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract", "Manifest", "Test
report" and "Exit codes".

Steps: read the instructions (role tester); fetch manifest.json and check its sha256; check
every listed file against the manifest, then fetch each and check its sha256 and size (any
mismatch: exit 5, nothing run); write the files into a fresh directory and run pytest there
under a time limit, with a plugin that records each test's requirement markers; upload
`report/junit.xml` and `report/summary.json`; exit 0 when every test passed, else 1.

The generated code runs in a child process that does not inherit the instructions'
environment variables, so it cannot read the upload policy from its environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from smartspec.api.sandbox import (
    INSTRUCTIONS_ENV,
    INSTRUCTIONS_FILE_ENV,
    REPORT_JUNIT_KEY,
    REPORT_SUMMARY_KEY,
    REQUIREMENT_REPORT_ENV,
    SESSION_FAILURE,
    ExitCode,
    Manifest,
    ManifestFile,
    RequirementEvidence,
    TestCounts,
    TesterInstructions,
    TestFailure,
    TestReport,
    describe_validation_error,
)
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import HASH_PREFIX

from . import Outcome, ProgramExit, run_program
from .exchange import read_pinned_spec, store
from .instructions import load_role_instructions
from .transfer import TooLargeError, TransferError, download

__all__ = ["build_report", "main", "read_junit"]

PROGRAM = "smartspec-tester"
PLUGIN = "smartspec.sandbox.requirement_plugin"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_CHARS = 2000
OUTPUT_TAIL_CHARS = 4000


@dataclass(frozen=True)
class PytestRun:
    """What one pytest run left behind."""

    exit_status: int | None
    """pytest's exit status; None when it was killed at the time limit."""
    output: str
    duration_seconds: float
    junit: bytes | None
    markers: dict[str, Any] | None


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the tester; returns the exit code (CORE-004, "Exit codes")."""
    return run_program(PROGRAM, lambda: _test(environ))


def _test(environ: Mapping[str, str] | None) -> Outcome:
    instructions = load_role_instructions(environ, TesterInstructions, "tester")
    manifest = _read_manifest(instructions)
    expected = _check_listing(instructions, manifest)
    # The spec names every requirement, so the report can show the ones no test cites.
    spec = read_pinned_spec(instructions.spec)
    workspace = Path(tempfile.mkdtemp(prefix="smartspec-tester-"))
    try:
        project = workspace / "project"
        project.mkdir()
        _fetch_files(instructions, expected, project)
        run = _run_pytest(project, workspace / "evidence", instructions.timeout_seconds)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    report, junit = build_report(run, spec, instructions.timeout_seconds)
    summary = json.dumps(report.to_wire(), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    store(instructions.upload, REPORT_JUNIT_KEY, junit, "application/xml")
    summary_key = store(instructions.upload, REPORT_SUMMARY_KEY, summary, "application/json")
    counts = report.tests
    covered = sorted(rid for rid, evidence in report.requirements.items() if evidence.passed)
    message = (
        f"{report.result}: {counts.passed} passed, {counts.failed} failed, {counts.errors} "
        f"errors, {counts.skipped} skipped; requirements demonstrated: "
        f"{', '.join(covered) or 'none'}"
    )
    _say(message)
    passed = report.result == "passed"
    detail: dict[str, Any] = {}
    if not passed:
        timed_out = run.exit_status is None
        kind = FailureKind.TEST_TIMEOUT if timed_out else FailureKind.TESTS_FAILED
        detail["kind"] = kind.value
    return Outcome(
        ExitCode.OK if passed else ExitCode.TESTS_FAILED,
        "TestsPassed" if passed else "TestsFailed",
        {
            **detail,
            "message": message,
            "summaryKey": summary_key,
            "summarySha256": HASH_PREFIX + hashlib.sha256(summary).hexdigest(),
            "tests": counts.to_wire(),
            "requirementsCovered": len(covered),
        },
    )


def _read_manifest(instructions: TesterInstructions) -> Manifest:
    reference = instructions.manifest
    try:
        raw = download(reference.url, max_bytes=MAX_MANIFEST_BYTES)
    except TransferError as error:
        raise ProgramExit(
            ExitCode.BAD_INPUT, "Error", f"cannot read manifest.json: {error}"
        ) from None
    actual = HASH_PREFIX + hashlib.sha256(raw).hexdigest()
    if actual != reference.sha256:
        raise ProgramExit(
            ExitCode.ARTIFACT_MISMATCH,
            "ArtifactMismatch",
            f"manifest.json has sha256 {actual}, but the instructions expect "
            f"{reference.sha256}; nothing was run",
        )
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as error:
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            "manifest.json is not a valid manifest: " + "; ".join(describe_validation_error(error)),
        ) from None


def _check_listing(instructions: TesterInstructions, manifest: Manifest) -> dict[str, ManifestFile]:
    """The manifest's entry for each file to fetch, after checking both lists agree."""
    mismatches = []
    if manifest.spec.content_hash != instructions.spec.content_hash:
        mismatches.append(
            f"the manifest was generated from {manifest.spec.content_hash}, not the pinned "
            f"{instructions.spec.content_hash}"
        )
    run = instructions.run
    if (manifest.run.uid, manifest.run.attempt) != (run.uid, run.attempt):
        mismatches.append(
            f"the manifest belongs to run uid {manifest.run.uid} attempt {manifest.run.attempt}, "
            f"not uid {run.uid} attempt {run.attempt}"
        )
    listed = {entry.path: entry for entry in manifest.files}
    for entry in instructions.files:
        recorded = listed.get(entry.path)
        if recorded is None:
            mismatches.append(f"{entry.path} is not in the manifest")
        elif (recorded.sha256, recorded.size) != (entry.sha256, entry.size):
            mismatches.append(
                f"{entry.path}: the instructions say {entry.sha256} ({entry.size} bytes), the "
                f"manifest says {recorded.sha256} ({recorded.size} bytes)"
            )
    if mismatches:
        raise ProgramExit(
            ExitCode.ARTIFACT_MISMATCH,
            "ArtifactMismatch",
            "the files do not match the manifest: " + "; ".join(mismatches) + "; nothing was run",
        )
    given = {entry.path for entry in instructions.files}
    missing = sorted(path for path in listed if path not in given)
    if missing:
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            "the instructions give no URL for manifest file(s): " + ", ".join(missing),
        )
    return listed


def _fetch_files(
    instructions: TesterInstructions, expected: dict[str, ManifestFile], project: Path
) -> None:
    contents: dict[str, bytes] = {}
    for entry in instructions.files:
        recorded = expected[entry.path]
        try:
            # One byte over the recorded size is enough to see a mismatch.
            body = download(entry.url, max_bytes=recorded.size + 1)
        except TooLargeError:
            raise ProgramExit(
                ExitCode.ARTIFACT_MISMATCH,
                "ArtifactMismatch",
                f"{entry.path} is larger than the {recorded.size} bytes the manifest records; "
                "nothing was run",
            ) from None
        except TransferError as error:
            raise ProgramExit(
                ExitCode.BAD_INPUT, "Error", f"cannot read {entry.path}: {error}"
            ) from None
        actual = HASH_PREFIX + hashlib.sha256(body).hexdigest()
        if len(body) != recorded.size or actual != recorded.sha256:
            raise ProgramExit(
                ExitCode.ARTIFACT_MISMATCH,
                "ArtifactMismatch",
                f"{entry.path} has sha256 {actual} ({len(body)} bytes), but the manifest "
                f"records {recorded.sha256} ({recorded.size} bytes); nothing was run",
            )
        contents[entry.path] = body
    # Written only after every file checked out, so a mismatch leaves nothing runnable.
    root = project.resolve()
    for path, body in sorted(contents.items()):
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise ProgramExit(
                ExitCode.ARTIFACT_MISMATCH, "ArtifactMismatch", f"{path} leaves the project"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as handle:
            handle.write(body)
    _say(f"fetched and verified {len(contents)} files")


def _run_pytest(project: Path, evidence: Path, timeout_seconds: int) -> PytestRun:
    evidence.mkdir()
    junit_path, markers_path = evidence / "junit.xml", evidence / "markers.json"
    output_path = evidence / "output.log"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (INSTRUCTIONS_ENV, INSTRUCTIONS_FILE_ENV)
    }
    env[REQUIREMENT_REPORT_ENV] = str(markers_path)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN,
        f"--junitxml={junit_path}",
        f"--rootdir={project}",
    ]
    _say(f"running pytest (time limit {timeout_seconds} s)")
    started = time.monotonic()
    # Output goes to a file, not a pipe: a process the tests leave behind could hold a pipe
    # open and make a finished run look like a hung one.
    with output_path.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - fixed command: this interpreter's pytest
            command,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one kill reaches its children
        )
        exit_status: int | None

        def stop_tests(signum: int, frame: object) -> None:
            # Stopped from outside (the Job's deadline, a deleted pod): the tests run in a
            # session of their own, so they go first, then this program, as SIGTERM asks.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop_tests)
        try:
            exit_status = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            exit_status = None
        finally:
            signal.signal(signal.SIGTERM, previous)
        # Killed at the limit, or cleaned up after: nothing the tests started outlives them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    duration = time.monotonic() - started
    text = output_path.read_bytes().decode("utf-8", errors="replace")
    sys.stderr.write(text[-OUTPUT_TAIL_CHARS:])
    if not text.endswith("\n"):
        sys.stderr.write("\n")
    junit = junit_path.read_bytes() if junit_path.is_file() else None
    markers = None
    if markers_path.is_file():
        try:
            loaded = json.loads(markers_path.read_text(encoding="utf-8"))
            markers = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            markers = None
    return PytestRun(exit_status, text, duration, junit, markers)


def read_junit(junit: bytes) -> TestCounts:
    """Test counts from a JUnit XML report (a <testsuite>, or <testsuites> around them)."""
    root = ET.fromstring(junit)  # noqa: S314 - our own pytest's output, not remote input
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = errors = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", "0"))
        failed += int(suite.get("failures", "0"))
        errors += int(suite.get("errors", "0"))
        skipped += int(suite.get("skipped", "0"))
    passed = max(0, total - failed - errors - skipped)
    return TestCounts(passed=passed, failed=failed, errors=errors, skipped=skipped)


def build_report(run: PytestRun, spec: SpecSpec, timeout_seconds: int) -> tuple[TestReport, bytes]:
    """summary.json's report and the junit.xml to store beside it."""
    problem = None
    counts = TestCounts(passed=0, failed=0, errors=0, skipped=0)
    if run.exit_status is None:
        problem = f"pytest did not finish within {timeout_seconds} s and was killed"
    elif run.junit is None:
        problem = f"pytest exited with status {run.exit_status} and wrote no junit.xml"
    else:
        try:
            counts = read_junit(run.junit)
        except (ET.ParseError, ValueError) as error:
            problem = f"pytest's junit.xml cannot be read: {error}"
    junit = run.junit if problem is None and run.junit is not None else None
    if problem is None and run.markers is None:
        problem = "the requirement plugin wrote no report"

    tests: list[dict[str, Any]] = []
    collection_errors: list[dict[str, Any]] = []
    if run.markers is not None:
        tests = [t for t in run.markers.get("tests", []) if isinstance(t, dict)]
        collection_errors = [
            e for e in run.markers.get("collectionErrors", []) if isinstance(e, dict)
        ]
    failures = [
        TestFailure(
            test=str(t.get("nodeid")),
            message=_clip(t.get("message")),
            output=str(t.get("output") or "")[-MAX_MESSAGE_CHARS:],
        )
        for t in tests
        if t.get("outcome") in ("failed", "error")
    ]
    failures += [
        TestFailure(test=str(e.get("nodeid") or "(collection)"), message=_clip(e.get("message")))
        for e in collection_errors
    ]

    result: Literal["passed", "failed", "error"]
    if problem is not None:
        result = "error"
        tail = run.output[-max(0, MAX_MESSAGE_CHARS - len(problem) - 1) :]
        failures.append(TestFailure(test=SESSION_FAILURE, message=_clip(f"{problem}\n{tail}")))
    elif counts.passed + counts.failed + counts.errors == 0:
        result = "failed"  # no test ran, so nothing is demonstrated
        failures.append(TestFailure(test=SESSION_FAILURE, message="no test ran"))
    elif counts.failed or counts.errors or failures:
        result = "failed"
    else:
        result = "passed"
    if junit is None:
        # The report folder always holds both files; this one records why pytest gave none.
        junit = _error_junit(problem or "no junit.xml", run.duration_seconds)

    report = TestReport(
        format="smartspec.dev/test-report/v1",
        result=result,
        tests=counts,
        requirements=_requirements(tests, spec),
        failures=failures,
        duration_seconds=round(run.duration_seconds, 3),
    )
    return report, junit


def _requirements(tests: list[dict[str, Any]], spec: SpecSpec) -> dict[str, RequirementEvidence]:
    """Every requirement of the pinned spec, in its order, with the tests that cite it.

    Exactly the spec's requirements: the run's evidence counts covered out of these, so an
    id that the spec does not declare (a typo in a marker) is reported, not counted.
    """
    citing: dict[str, list[dict[str, Any]]] = {req.id: [] for req in spec.requirements}
    undeclared: set[str] = set()
    for test in tests:
        for rid in test.get("requirements", []):
            if str(rid) in citing:
                citing[str(rid)].append(test)
            else:
                undeclared.add(str(rid))
    if undeclared:
        _say(f"tests cite requirements the spec does not declare: {', '.join(sorted(undeclared))}")
    evidence = {}
    for rid, cited in citing.items():
        outcomes = [test.get("outcome") for test in cited]
        passed = "passed" in outcomes and not any(o in ("failed", "error") for o in outcomes)
        evidence[rid] = RequirementEvidence(
            tests=sorted(str(test.get("nodeid")) for test in cited), passed=passed
        )
    return evidence


def _error_junit(message: str, duration: float) -> bytes:
    suite = ET.Element(
        "testsuite",
        {
            "name": "pytest",
            "tests": "1",
            "errors": "1",
            "failures": "0",
            "skipped": "0",
            "time": f"{duration:.3f}",
        },
    )
    case = ET.SubElement(suite, "testcase", {"classname": "smartspec", "name": "pytest-session"})
    ET.SubElement(case, "error", {"message": message}).text = message
    root = ET.Element("testsuites")
    root.append(suite)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _clip(value: object) -> str:
    return str(value or "")[:MAX_MESSAGE_CHARS]


def _say(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
