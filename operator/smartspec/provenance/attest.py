"""Sign a finished run's provenance and store it once: the run reconciler's one entry point.

Contract: specs/CORE-005-provenance.md, sections "When" and "Idempotence".

`attest_run` is called for a Succeeded or Failed run that has no `status.provenance` yet and
returns the status fields to write. The envelope's key is fixed per run uid and written with
`If-None-Match: *`, so however often an operator restarts mid-attestation a run has exactly
one attestation: an envelope already stored is adopted (after checking its signature and
whose run it is), never replaced. The statement holds only what the finished run recorded,
and both key types sign deterministically, so a retry produces the same bytes anyway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from smartspec import __version__
from smartspec.api.v1alpha1.generationrun import GenerationRun, Provenance
from smartspec.kube.client import KubeClient, KubeError
from smartspec.logic import provenance as p
from smartspec.observability.logs import get_logger
from smartspec.provenance.gather import (
    AttestationError,
    AttestationRefusedError,
    GatherSettings,
    gather,
    read,
)
from smartspec.provenance.keys import KeyRing, VerifyingKey
from smartspec.storage import S3ObjectStore, StorageError, StorageIntegrityError

log = get_logger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class ProvenanceSettings:
    """The keys and the builder identity attestations are made with."""

    keys: KeyRing
    builder_id: str = p.DEFAULT_BUILDER_ID
    ledger_lookback_seconds: int = 900
    """How far before the run's start the budget's ledger is read back (clock skew between
    the gateway and the API server, and the run's first call)."""
    usage_grace_seconds: int = 60
    """How long after the run ends the ledger and the run's usage may disagree before the
    attestation records them as they are."""


def lacks_provenance(status: Any) -> bool:
    """Whether a run's status (a mapping) is finished and not yet attested."""
    return bool(status.get("phase") in TERMINAL_PHASES and not status.get("provenance"))


async def attest_run(
    run: GenerationRun, kube: KubeClient, store: S3ObjectStore, settings: ProvenanceSettings
) -> dict[str, Any]:
    """The `status` fields of a finished run's attestation: `{"provenance": {...}}`.

    Raises AttestationError (with the delay before the next try) when it cannot be made now.
    """
    namespace, name, uid = run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    key = p.attestation_key(namespace, name, uid)
    try:
        existing = await read(store, key)
        if existing is not None:
            return _adopt(existing, store.uri(key), run, settings.keys)
        evidence = await gather(run, kube, store, _gather_settings(settings))
        statement = p.build_statement(evidence)
        payload = p.statement_bytes(statement)
        signing = settings.keys.signing
        signature = signing.sign(p.pae(p.PAYLOAD_TYPE, payload))
        body = p.make_envelope(payload, signing.key_id, signature).to_bytes()
        try:
            await asyncio.to_thread(store.put_if_absent, key, body, "application/json")
        except StorageIntegrityError:
            # Another writer stored a different envelope first: that one is the attestation.
            return _adopt(
                await asyncio.to_thread(store.get, key), store.uri(key), run, settings.keys
            )
    except (KubeError, StorageError) as error:
        raise AttestationError(f"provenance of {namespace}/{name}: {error}") from error
    log.info(
        "Attested run",
        predicate_type=statement["predicateType"],
        key_id=signing.key_id,
        subjects=len(statement["subject"]),
        uri=store.uri(key),
    )
    return _fields(store.uri(key), body, signing.key_id, str(statement["predicateType"]))


def _gather_settings(settings: ProvenanceSettings) -> GatherSettings:
    return GatherSettings(
        builder_id=settings.builder_id,
        builder_version=__version__,
        ledger_lookback=timedelta(seconds=settings.ledger_lookback_seconds),
        usage_grace=timedelta(seconds=settings.usage_grace_seconds),
    )


def _fields(uri: str, body: bytes, key_id: str, predicate_type: str) -> dict[str, Any]:
    provenance = Provenance(
        uri=uri, sha256="sha256:" + p.sha256_hex(body), key_id=key_id, predicate_type=predicate_type
    )
    return {"provenance": provenance.to_wire()}


def _adopt(body: bytes, uri: str, run: GenerationRun, keys: KeyRing) -> dict[str, Any]:
    """Take over the envelope already stored for this run, if it is one of ours for it."""
    try:
        envelope = p.parse_envelope(body)
        key = verified_by(envelope, keys.keys)
        if key is None:
            raise AttestationRefusedError(
                f"{uri} holds an envelope no provenance key verifies; it is never overwritten"
            )
        statement = p.parse_statement(envelope.payload_bytes())
    except p.ProvenanceError as error:
        raise AttestationRefusedError(f"{uri}: {error}; it is never overwritten") from error
    expected = p.invocation_id(
        run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    )
    invocation = statement["predicate"]["runDetails"]["metadata"]["invocationId"]
    if invocation != expected:
        raise AttestationRefusedError(f"{uri} attests run {invocation}, not {expected}")
    log.info("Adopted the stored attestation", uri=uri, key_id=key.key_id)
    return _fields(uri, body, key.key_id, str(statement["predicateType"]))


def verified_by(envelope: p.Envelope, keys: tuple[VerifyingKey, ...]) -> VerifyingKey | None:
    """The key whose signature on the envelope verifies (a signature's keyid picks the key
    first; one without a keyid is tried against every key)."""
    signed = p.pae(envelope.payload_type, envelope.payload_bytes())
    for signature in envelope.signatures:
        candidates = [k for k in keys if k.key_id == signature.keyid] or (
            list(keys) if not signature.keyid else []
        )
        raw = p.signature_bytes(signature)
        for key in candidates:
            if key.verifies(signed, raw):
                return key
    return None
