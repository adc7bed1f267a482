"""The generator program: `python -m smartspec.sandbox.generator`.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract", "Object layout in
S3", "Manifest" and "Exit codes".

Steps: read the instructions (role generator); fetch the pinned Spec snapshot and check its
sha256 against spec.contentHash; read what the previous attempt left (section "Feedback");
generate with the builtin or the llm backend; scan every generated file for credentials;
upload each file under `files/<path>`, then `manifest.json` last, so a manifest's presence
means the attempt's code is complete. A failed generation uploads no file but
`feedback/generation.json` (the failure's kind and message, and the answer's files with
anything credential-like redacted) and exits 3, or 4 for a credential. Ends with one JSON
line on stdout whose detail names the failure kind; progress and reasons go to stderr.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from typing import Any

import smartspec
from smartspec.api.sandbox import (
    FILES_PREFIX,
    GENERATION_FEEDBACK_FORMAT,
    GENERATION_FEEDBACK_KEY,
    MANIFEST_FORMAT,
    MANIFEST_KEY,
    ExitCode,
    GenerationFeedback,
    GeneratorInstructions,
    Limits,
    Manifest,
)
from smartspec.api.v1alpha1.generationrun import Backend, FailureKind
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import HASH_PREFIX, canonical_json

from . import Generation, Outcome, ProgramExit, builtin, llm, run_program
from .exchange import MAX_SNAPSHOT_BYTES, read_pinned_spec, store
from .feedback import PreviousAttempt, credential_findings, read_previous_attempt, redacted_files
from .instructions import load_role_instructions
from .transfer import TransferError, upload

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "build_manifest",
    "check_limits",
    "content_type",
    "failed_generation",
    "main",
    "publish",
]

PROGRAM = "smartspec-generator"
MAX_REPORTED_FINDINGS = 20
"""Findings listed in the final line; it stays short enough for a termination message."""

_CONTENT_TYPES = {
    ".py": "text/x-python; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".toml": "application/toml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".cfg": "text/plain; charset=utf-8",
    ".ini": "text/plain; charset=utf-8",
}


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the generator; returns the exit code (CORE-004, "Exit codes")."""
    return run_program(PROGRAM, lambda: _generate(environ))


def _generate(environ: Mapping[str, str] | None) -> Outcome:
    instructions = load_role_instructions(environ, GeneratorInstructions, "generator")
    spec = read_pinned_spec(instructions.spec)
    pinned = instructions.spec
    _say(f"read spec {pinned.name} revision {pinned.revision} ({pinned.content_hash})")
    previous = _previous_attempt(instructions)
    try:
        generation = _run_backend(instructions, spec, previous)
    except llm.GenerationFailed as failure:
        raise failed_generation(instructions, failure) from None
    return publish(instructions, generation)


def publish(instructions: GeneratorInstructions, generation: Generation) -> Outcome:
    """The end of every backend: check the limits, scan for credentials, upload each file,
    then the manifest last; or the failure, with its feedback for the next attempt."""
    try:
        check_limits(generation, instructions.limits)
        # Task descriptions come from the model too: they are scanned with the files.
        findings = credential_findings(generation.files, generation.tasks)
        if findings:
            raise llm.GenerationFailed(
                FailureKind.CREDENTIAL_DETECTED,
                f"generated code contains {len(findings)} credential finding(s); nothing was "
                "uploaded but a redacted copy for the next attempt",
                generation.usage,
                files=redacted_files(generation.files),
                findings=tuple(findings),
            )
    except llm.GenerationFailed as failure:
        raise failed_generation(instructions, failure) from None
    manifest = canonical_json(build_manifest(instructions, generation))

    total = 0
    for item in generation.files:
        store(instructions.upload, FILES_PREFIX + item.path, item.content, content_type(item.path))
        total += len(item.content)
    manifest_key = store(instructions.upload, MANIFEST_KEY, manifest, "application/json")
    digest = HASH_PREFIX + hashlib.sha256(manifest).hexdigest()
    _say(
        f"uploaded {len(generation.files)} files ({total} bytes) and {MANIFEST_KEY} "
        f"({digest}) under {instructions.upload.key_prefix}"
    )
    return Outcome(
        ExitCode.OK,
        "Generated",
        {
            "message": f"generated {len(generation.files)} files",
            "manifestKey": manifest_key,
            "manifestSha256": digest,
            "files": len(generation.files),
            "bytes": total,
            "tasks": len(generation.tasks),
            "usage": generation.usage.to_wire(),
        },
    )


def _previous_attempt(instructions: GeneratorInstructions) -> PreviousAttempt | None:
    feedback = instructions.feedback
    if feedback is None:
        return None
    if instructions.generator.backend is Backend.BUILTIN:
        _say("ignoring feedback: the builtin backend is deterministic")
        return None
    previous = read_previous_attempt(feedback)
    _say(
        f"feedback: attempt {previous.attempt} failed ({previous.kind.value}); "
        f"{len(previous.files)} file(s) to repair"
        + (f", {len(previous.report.failures)} test failure(s)" if previous.report else "")
    )
    return previous


def failed_generation(
    instructions: GeneratorInstructions, failure: llm.GenerationFailed
) -> ProgramExit:
    """The program's end for a failed generation: the feedback document stored for the next
    attempt (when one can follow), and a result line that says which kind of failure."""
    backend = instructions.generator.backend.value
    message = f"{backend} generation failed: {failure}"
    detail: dict[str, Any] = {"kind": failure.kind.value, "usage": failure.usage.to_wire()}
    if failure.refusal is not None:
        detail["refusal"] = failure.refusal.value
    else:
        document = GenerationFeedback(
            format=GENERATION_FEEDBACK_FORMAT,
            kind=failure.kind,
            message=message[:4096],
            files=list(failure.files),
            answer_excerpt=failure.answer_excerpt,
            findings=list(failure.findings[:100]),
        )
        body = canonical_json(document.to_wire())
        try:
            upload(instructions.upload, GENERATION_FEEDBACK_KEY, body, "application/json")
            detail["feedbackSha256"] = HASH_PREFIX + hashlib.sha256(body).hexdigest()
        except TransferError as error:
            # The next attempt is still told the kind and the message, from the run.
            _say(f"cannot store the feedback for the next attempt: {error}")
    if failure.kind is FailureKind.CREDENTIAL_DETECTED:
        for finding in failure.findings:
            _say(f"credential detected: {finding.location}: {finding.rule}")
        detail["findings"] = [f.to_wire() for f in failure.findings[:MAX_REPORTED_FINDINGS]]
        detail["findingsTotal"] = len(failure.findings)
        return ProgramExit(ExitCode.CREDENTIAL_DETECTED, "SecretDetected", message, **detail)
    return ProgramExit(ExitCode.GENERATION_FAILED, "GenerationFailed", message, **detail)


def _run_backend(
    instructions: GeneratorInstructions, spec: SpecSpec, previous: PreviousAttempt | None
) -> Generation:
    settings = instructions.generator
    if settings.backend is Backend.AGENT:
        raise llm.GenerationFailed(
            FailureKind.SANDBOX_ERROR,
            "the agent backend runs smartspec.sandbox.agent, not the generator program",
        )
    if settings.backend is Backend.BUILTIN:
        try:
            generation = builtin.generate(spec)
        except builtin.UnsupportedSpec as error:
            raise llm.GenerationFailed(FailureKind.SANDBOX_ERROR, str(error)) from None
    else:
        if instructions.gateway is None:  # refused by the instructions model already
            raise llm.GenerationFailed(
                FailureKind.SANDBOX_ERROR, "gateway is required for the llm backend"
            )
        generation = llm.generate(
            spec, settings, instructions.gateway, instructions.limits, previous
        )
    usage = generation.usage
    _say(
        f"{settings.backend.value} backend produced {len(generation.files)} files "
        f"({usage.calls} model calls, {usage.prompt_tokens}+{usage.completion_tokens} tokens)"
    )
    return generation


def check_limits(generation: Generation, limits: Limits) -> None:
    """Refuse output over instructions.limits, whichever backend wrote it."""
    files = generation.files
    problem = None
    total = sum(len(item.content) for item in files)
    largest = max(files, key=lambda item: len(item.content), default=None)
    if not files:
        problem = "no files were generated"
    elif len(files) > limits.max_files:
        problem = f"{len(files)} files, over the limit of {limits.max_files}"
    elif largest is not None and len(largest.content) > limits.max_file_bytes:
        problem = (
            f"{largest.path} has {len(largest.content)} bytes, over the limit of "
            f"{limits.max_file_bytes}"
        )
    elif total > limits.max_total_bytes:
        problem = f"{total} bytes in all, over the limit of {limits.max_total_bytes}"
    if problem is not None:
        raise llm.GenerationFailed(FailureKind.ANSWER_INVALID, problem, generation.usage)


def build_manifest(
    instructions: GeneratorInstructions, generation: Generation
) -> dict[str, object]:
    """manifest.json's document (CORE-004, "Manifest"), validated against its model."""
    run, spec, settings = instructions.run, instructions.spec, instructions.generator
    document: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "run": {
            "namespace": run.namespace,
            "name": run.name,
            "uid": run.uid,
            "attempt": run.attempt,
        },
        "spec": {"name": spec.name, "revision": spec.revision, "contentHash": spec.content_hash},
        "generator": {
            "backend": settings.backend.value,
            "model": settings.model if settings.backend.calls_models else None,
            "version": smartspec.__version__,
            # Only an agent's manifest names its image: the others stay byte for byte as
            # before (their digests are in attestations and replays).
            **({"agentImage": settings.agent_image} if settings.agent_image else {}),
        },
        "files": [
            {
                "path": item.path,
                "sha256": HASH_PREFIX + hashlib.sha256(item.content).hexdigest(),
                "size": len(item.content),
                "requirements": list(item.requirements),
            }
            for item in sorted(generation.files, key=lambda item: item.path)
        ],
        "tasks": [
            {
                "file": task.file,
                "requirements": list(task.requirements),
                "description": task.description,
            }
            for task in generation.tasks
        ],
        "usage": generation.usage.to_wire(),
    }
    Manifest.model_validate(document)  # what the tester will read must parse
    return document


def content_type(path: str) -> str:
    """A fixed table, not the mimetypes module: its answers depend on the host's files."""
    name = path.rsplit("/", 1)[-1]
    suffix = name[name.rfind(".") :] if "." in name else ""
    return _CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")


def _say(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
