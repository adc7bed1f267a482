"""The instructions documents the sandbox programs read (CORE-004, "Sandbox contract").

Contract: specs/CORE-004-generation-runs.md.

Pure: URLs, upload policies and the run token are made by the reconciler and passed in;
this module only shapes them into the documents the generator and tester read, so the
contract lives in one place on the operator's side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from smartspec.api.v1alpha1 import GenerationRun
from smartspec.api.v1alpha1.generationrun import Backend, PinnedSpec

DEFAULT_LIMITS = {"maxFiles": 200, "maxFileBytes": 262_144, "maxTotalBytes": 2_097_152}


def _run_block(run: GenerationRun, attempt: int) -> dict[str, Any]:
    return {
        "namespace": run.metadata.namespace,
        "name": run.metadata.name,
        "uid": run.metadata.uid,
        "attempt": attempt,
    }


def _spec_block(pinned: PinnedSpec, snapshot_url: str) -> dict[str, Any]:
    return {
        "name": pinned.name,
        "revision": pinned.revision,
        "contentHash": pinned.content_hash,
        "snapshotUrl": snapshot_url,
    }


def build_generator_instructions(
    run: GenerationRun,
    attempt: int,
    pinned: PinnedSpec,
    *,
    snapshot_url: str,
    upload: Mapping[str, Any],
    feedback_url: str | None,
    gateway_base_url: str | None,
    token: str | None,
) -> bytes:
    """The generator's instructions; the gateway block only for the llm backend."""
    generator = run.spec.generator
    llm = generator.backend is Backend.LLM
    if llm and (gateway_base_url is None or token is None):
        raise ValueError("an llm run needs the gateway URL and a run token")
    document = {
        "role": "generator",
        "run": _run_block(run, attempt),
        "spec": _spec_block(pinned, snapshot_url),
        "generator": {
            "backend": generator.backend.value,
            "model": generator.model,
            "temperatureMilli": generator.temperature_milli,
            "maxTokens": generator.max_tokens,
            "seed": generator.seed,
        },
        "gateway": {"baseUrl": gateway_base_url, "token": token} if llm else None,
        "feedback": {"url": feedback_url} if feedback_url else None,
        "upload": dict(upload),
        "limits": DEFAULT_LIMITS,
    }
    return json.dumps(document, sort_keys=True).encode()


def build_tester_instructions(
    run: GenerationRun,
    attempt: int,
    pinned: PinnedSpec,
    *,
    snapshot_url: str,
    manifest_url: str,
    manifest_sha256: str,
    files: Sequence[Mapping[str, Any]],
    upload: Mapping[str, Any],
    timeout_seconds: int,
) -> bytes:
    """The tester's instructions: every file with its expected hash and a URL to read it."""
    document = {
        "role": "tester",
        "run": _run_block(run, attempt),
        "spec": _spec_block(pinned, snapshot_url),
        "manifest": {"url": manifest_url, "sha256": manifest_sha256},
        "files": [dict(item) for item in files],
        "upload": dict(upload),
        "timeoutSeconds": timeout_seconds,
    }
    return json.dumps(document, sort_keys=True).encode()
