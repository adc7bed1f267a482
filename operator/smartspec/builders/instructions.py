"""The instructions documents the sandbox programs read (CORE-004, "Sandbox contract").

Contract: specs/CORE-004-generation-runs.md.

Pure: URLs, upload policies and the run token are made by the reconciler and passed in;
this module builds them into the contract's own models (`smartspec.api.sandbox`), so a
document the sandbox would refuse is refused here, before any Job exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smartspec.api.sandbox import (
    Feedback,
    FileRef,
    GatewayAccess,
    GeneratorInstructions,
    GeneratorSettings,
    Limits,
    ManifestRef,
    RunRef,
    SpecRef,
    TesterInstructions,
    UploadPolicy,
)
from smartspec.api.v1alpha1 import GenerationRun
from smartspec.api.v1alpha1.generationrun import PinnedSpec
from smartspec.logic.canonical import canonical_json


def _run_ref(run: GenerationRun, attempt: int) -> RunRef:
    return RunRef(
        namespace=run.metadata.namespace or "",
        name=run.metadata.name,
        uid=run.metadata.uid or "",
        attempt=attempt,
    )


def _spec_ref(pinned: PinnedSpec, snapshot_url: str) -> SpecRef:
    return SpecRef(
        name=pinned.name,
        revision=pinned.revision,
        content_hash=pinned.content_hash,
        snapshot_url=snapshot_url,
    )


def build_generator_instructions(
    run: GenerationRun,
    attempt: int,
    pinned: PinnedSpec,
    *,
    snapshot_url: str,
    upload: Mapping[str, Any],
    feedback: Feedback | None,
    gateway_base_url: str | None,
    token: str | None,
) -> bytes:
    """The generator's instructions; the gateway block only for backends that call models."""
    generator = run.spec.generator
    llm = generator.backend.calls_models
    if llm and (gateway_base_url is None or token is None):
        raise ValueError(f"an {generator.backend.value} run needs the gateway URL and a run token")
    document = GeneratorInstructions(
        role="generator",
        run=_run_ref(run, attempt),
        spec=_spec_ref(pinned, snapshot_url),
        generator=GeneratorSettings(
            backend=generator.backend,
            model=generator.model,
            temperature_milli=generator.temperature_milli,
            max_tokens=generator.max_tokens,
            seed=generator.seed,
            output_format=generator.output_format,
            repair_turns=generator.repair_turns,
            feedback_max_bytes=generator.feedback_max_bytes,
            agent_image=generator.agent.image if generator.agent is not None else None,
        ),
        gateway=GatewayAccess(base_url=gateway_base_url or "", token=token or "") if llm else None,
        feedback=feedback,
        upload=UploadPolicy.model_validate(upload),
        limits=Limits(),
    )
    return canonical_json(document.to_wire())


def build_tester_instructions(
    run: GenerationRun,
    attempt: int,
    pinned: PinnedSpec,
    *,
    snapshot_url: str,
    manifest_url: str,
    manifest_sha256: str,
    files: Sequence[FileRef],
    upload: Mapping[str, Any],
    timeout_seconds: int,
) -> bytes:
    """The tester's instructions: every file with its expected hash and a URL to read it."""
    document = TesterInstructions(
        role="tester",
        run=_run_ref(run, attempt),
        spec=_spec_ref(pinned, snapshot_url),
        manifest=ManifestRef(url=manifest_url, sha256=manifest_sha256),
        files=list(files),
        upload=UploadPolicy.model_validate(upload),
        timeout_seconds=timeout_seconds,
    )
    return canonical_json(document.to_wire())
