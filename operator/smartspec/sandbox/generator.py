"""The generator program: `python -m smartspec.sandbox.generator`.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract", "Object layout in
S3", "Manifest" and "Exit codes".

Steps: read the instructions (role generator); fetch the pinned Spec snapshot and check its
sha256 against spec.contentHash; generate with the builtin or the llm backend; scan every
generated file for credentials (any hit: upload nothing, exit 4); upload each file under
`files/<path>`, then `manifest.json` last, so a manifest's presence means the attempt's code
is complete. Ends with one JSON line on stdout; progress and reasons go to stderr.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping

from pydantic import ValidationError

import smartspec
from smartspec.api.v1alpha1.generationrun import Backend
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import HASH_PREFIX, canonical_json
from smartspec.logic.credential_scan import scan_text

from . import ExitCode, Generation, Outcome, ProgramExit, builtin, llm, run_program
from .exchange import MAX_SNAPSHOT_BYTES, read_pinned_spec, store
from .instructions import (
    MANIFEST_FORMAT,
    GeneratorInstructions,
    Limits,
    Manifest,
    TestReport,
    describe_validation_error,
    load_role_instructions,
)
from .transfer import TransferError, download

__all__ = ["MAX_SNAPSHOT_BYTES", "build_manifest", "check_limits", "content_type", "main"]

PROGRAM = "smartspec-generator"
MAX_FEEDBACK_BYTES = 4 * 1024 * 1024
MANIFEST_KEY = "manifest.json"
MAX_REPORTED_FINDINGS = 20
"""Findings listed in the final line; it stays short enough for a termination message."""
FILES_PREFIX = "files/"

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
    feedback = _read_feedback(instructions)
    generation = _run_backend(instructions, spec, feedback)
    check_limits(generation, instructions.limits)
    manifest = canonical_json(build_manifest(instructions, generation))
    # Task descriptions come from the model too, so the manifest is scanned with the files.
    _refuse_credentials(
        [*((f.path, f.content) for f in generation.files), (MANIFEST_KEY, manifest)]
    )

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


def _read_feedback(instructions: GeneratorInstructions) -> TestReport | None:
    if instructions.feedback is None:
        return None
    if instructions.generator.backend is Backend.BUILTIN:
        _say("ignoring feedback: the builtin backend is deterministic")
        return None
    try:
        raw = download(instructions.feedback.url, max_bytes=MAX_FEEDBACK_BYTES)
        report = TestReport.model_validate_json(raw)
    except TransferError as error:
        raise ProgramExit(
            ExitCode.BAD_INPUT, "Error", f"cannot read the previous attempt's report: {error}"
        ) from None
    except ValidationError as error:
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            "the previous attempt's report is not a test report: "
            + "; ".join(describe_validation_error(error)),
        ) from None
    _say(f"feedback: previous attempt {report.result}, {len(report.failures)} failure(s)")
    return report


def _run_backend(
    instructions: GeneratorInstructions, spec: SpecSpec, feedback: TestReport | None
) -> Generation:
    settings = instructions.generator
    try:
        if settings.backend is Backend.BUILTIN:
            generation = builtin.generate(spec)
        else:
            if instructions.gateway is None:  # refused by the instructions model already
                raise llm.GenerationFailed("gateway is required for the llm backend")
            generation = llm.generate(
                spec, settings, instructions.gateway, instructions.limits, feedback
            )
    except builtin.UnsupportedSpec as error:
        raise ProgramExit(
            ExitCode.GENERATION_FAILED,
            "GenerationFailed",
            f"{settings.backend.value} generation failed: {error}",
            usage=None,
        ) from None
    except llm.GenerationFailed as error:
        refusal = {"refusal": error.refusal.value} if error.refusal is not None else {}
        raise ProgramExit(
            ExitCode.GENERATION_FAILED,
            "GenerationFailed",
            f"{settings.backend.value} generation failed: {error}",
            usage=error.usage.to_wire(),
            **refusal,
        ) from None
    usage = generation.usage
    _say(
        f"{settings.backend.value} backend produced {len(generation.files)} files "
        f"({usage.calls} model calls, {usage.prompt_tokens}+{usage.completion_tokens} tokens)"
    )
    return generation


def check_limits(generation: Generation, limits: Limits) -> None:
    """Refuse output over instructions.limits (exit 3), whichever backend wrote it."""
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
        raise ProgramExit(ExitCode.GENERATION_FAILED, "GenerationFailed", problem)


def _refuse_credentials(documents: list[tuple[str, bytes]]) -> None:
    findings = []
    for path, content in documents:
        text = content.decode("utf-8", errors="replace")
        for hit in scan_text(text, path=path):
            # Location and rule only: the matched text must not reach any log.
            findings.append({"location": hit.path, "rule": hit.rule_id})
            _say(f"credential detected: {hit.path}: {hit.rule_id} ({hit.description})")
    if findings:
        raise ProgramExit(
            ExitCode.CREDENTIAL_DETECTED,
            "SecretDetected",
            f"generated code contains {len(findings)} credential finding(s); nothing was uploaded",
            findings=findings[:MAX_REPORTED_FINDINGS],
            findingsTotal=len(findings),
        )


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
            "model": settings.model if settings.backend is Backend.LLM else None,
            "version": smartspec.__version__,
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
