"""The signed provenance of a finished GenerationRun: an in-toto Statement v1 in a DSSE envelope.

Contract: specs/CORE-005-provenance.md.

Pure: the operator gathers what a run used and produced (`RunEvidence`), this module turns it
into the statement's one byte form (canonical JSON), the DSSE pre-authentication encoding
that is signed, and the envelope. The predicate type says the outcome: SLSA Provenance v1
for a Succeeded run, SmartSpec's failed-run type (the same two SLSA objects plus a required
`failure`) for a Failed one, so a policy that asks for SLSA provenance can never be
satisfied by a failed run's code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartspec.logic.canonical import canonical_json
from smartspec.logic.object_keys import run_prefix

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
SLSA_PROVENANCE_V1: Final = "https://slsa.dev/provenance/v1"
FAILED_RUN_V1: Final = "https://smartspec.dev/provenance/failed-run/v1"
PREDICATE_TYPES: Final = (SLSA_PROVENANCE_V1, FAILED_RUN_V1)
BUILD_TYPE: Final = "https://smartspec.dev/buildtypes/generation-run/v1"
DEFAULT_BUILDER_ID: Final = "https://smartspec.dev/operator"
ATTESTATION_NAME: Final = "provenance.dsse.json"

# Names of the descriptors in resolvedDependencies and byproducts (CORE-005, "Statement").
SPEC_SNAPSHOT: Final = "spec-snapshot"
GENERATOR_IMAGE: Final = "generator-image"
TESTER_IMAGE: Final = "tester-image"
TRANSCRIPT: Final = "transcript"
REPLAYED_RUN: Final = "replayed-run-attestation"
MANIFEST: Final = "manifest"
TEST_REPORT: Final = "test-report"
TEST_REPORT_JUNIT: Final = "test-report-junit"
COVERAGE: Final = "requirement-coverage"
USAGE: Final = "usage"
LEDGER: Final = "ledger"

Outcome = Literal["Succeeded", "Failed"]


class ProvenanceError(ValueError):
    """An envelope or statement that does not have the contract's shape."""


def attestation_key(namespace: str, run: str, run_uid: str) -> str:
    """Where a run's envelope is stored: beside its attempts, once per run uid."""
    return f"{run_prefix(namespace, run, run_uid)}{ATTESTATION_NAME}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    """The hex of a `sha256:<hex>` digest (the status form) or of a bare hex digest."""
    return digest.removeprefix("sha256:")


def inline_digest(annotations: Mapping[str, Any]) -> str:
    """The digest of a descriptor whose data is its annotations: sha256 of their canonical
    JSON, so a reader can recompute it from the statement alone."""
    return sha256_hex(canonical_json(annotations))


# ------------------------------------------------------------------ DSSE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed, never the JSON envelope."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyid: str = ""
    sig: str


class Envelope(BaseModel):
    """The DSSE JSON envelope (payload and signatures in standard base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    payload_type: str = Field(alias="payloadType")
    payload: str
    signatures: list[Signature] = Field(min_length=1)

    def payload_bytes(self) -> bytes:
        return _b64decode(self.payload, "payload")

    def to_bytes(self) -> bytes:
        """The stored form: canonical JSON, so the same signature gives the same bytes."""
        return canonical_json(self.model_dump(by_alias=True))


def make_envelope(payload: bytes, keyid: str, signature: bytes) -> Envelope:
    return Envelope(
        payload_type=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode("ascii"),
        signatures=[Signature(keyid=keyid, sig=base64.b64encode(signature).decode("ascii"))],
    )


def parse_envelope(raw: bytes) -> Envelope:
    try:
        envelope = Envelope.model_validate_json(raw)
    except ValidationError as error:
        raise ProvenanceError(f"not a DSSE envelope: {_first_problem(error)}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(
            f"the envelope's payloadType is {envelope.payload_type!r}, not {PAYLOAD_TYPE}"
        )
    return envelope


def signature_bytes(signature: Signature) -> bytes:
    return _b64decode(signature.sig, "signature")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProvenanceError(f"the envelope's {what} is not base64") from None


def _first_problem(error: ValidationError) -> str:
    item = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in item["loc"]) or "(document)"
    return f"{where}: {item['msg']}"


# ------------------------------------------------------------------ statement


@dataclass(frozen=True)
class Descriptor:
    """An in-toto ResourceDescriptor: what an artifact is called, where it is, its digest."""

    name: str
    uri: str | None = None
    sha256: str | None = None  # hex
    annotations: Mapping[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": self.name}
        if self.uri is not None:
            wire["uri"] = self.uri
        if self.sha256 is not None:
            wire["digest"] = {"sha256": self.sha256}
        if self.annotations:
            wire["annotations"] = dict(self.annotations)
        return wire


@dataclass(frozen=True)
class LedgerSummary:
    """The run's entries on its budget's chain: the range they span and what they add up to."""

    budget: str
    first_sequence: int
    last_sequence: int
    last_hash: str  # sha256:<hex>, as the ledger writes it
    segment_uri: str  # the segment holding the last entry
    entries: int
    credits: int
    call_ids: tuple[str, ...] = ()

    def descriptor(self) -> Descriptor:
        return Descriptor(
            name=LEDGER,
            uri=self.segment_uri,
            sha256=hex_of(self.last_hash),
            annotations={
                "budget": self.budget,
                "firstSequence": self.first_sequence,
                "lastSequence": self.last_sequence,
                "entries": self.entries,
                "credits": self.credits,
            },
        )


@dataclass(frozen=True)
class Failure:
    """Why a Failed run failed: its Succeeded condition and every attempt's end."""

    reason: str
    message: str
    attempts: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class RunEvidence:
    """Everything the statement says, as gathered by the operator."""

    namespace: str
    name: str
    uid: str
    run_spec: Mapping[str, Any]
    outcome: Outcome
    started_on: str
    finished_on: str
    builder_id: str
    builder_version: str
    files: Sequence[Descriptor]
    snapshot: Descriptor | None
    images: Sequence[Descriptor]
    transcripts: Sequence[Descriptor]
    usage: Mapping[str, int]
    failure: Failure | None = None
    replayed: Descriptor | None = None
    manifest: Descriptor | None = None
    report: Descriptor | None = None
    junit: Descriptor | None = None
    coverage: Mapping[str, Any] | None = None
    ledger: LedgerSummary | None = None
    calls_without_transcript: Sequence[str] = field(default_factory=tuple)


def invocation_id(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name}/{uid}"


def run_subject(namespace: str, name: str, uid: str) -> Descriptor:
    """The subject of a run that left no file: the run itself, by the digest of its identity."""
    identity = {"namespace": namespace, "name": name, "uid": uid}
    return Descriptor(
        name=f"generationrun/{invocation_id(namespace, name, uid)}",
        sha256=inline_digest(identity),
    )


def coverage_descriptor(requirements: Mapping[str, Any]) -> Descriptor:
    """The requirement coverage matrix (requirement → its tests and whether one passed)."""
    annotations = {
        "requirements": dict(requirements),
        "covered": sum(1 for item in requirements.values() if item.get("passed")),
        "total": len(requirements),
    }
    return Descriptor(name=COVERAGE, sha256=inline_digest(annotations), annotations=annotations)


def usage_descriptor(
    usage: Mapping[str, int], calls_without_transcript: Sequence[str]
) -> Descriptor:
    annotations: dict[str, Any] = dict(usage)
    if calls_without_transcript:
        annotations["callsWithoutTranscript"] = list(calls_without_transcript)
    return Descriptor(name=USAGE, sha256=inline_digest(annotations), annotations=annotations)


def build_statement(evidence: RunEvidence) -> dict[str, Any]:
    """The in-toto Statement v1 of a finished run (CORE-005, "Statement")."""
    if (evidence.outcome == "Failed") != (evidence.failure is not None):
        raise ValueError("a Failed run carries its failure, and only a Failed run does")
    subjects = list(evidence.files) or [
        run_subject(evidence.namespace, evidence.name, evidence.uid)
    ]
    dependencies = [d for d in (evidence.snapshot,) if d is not None]
    dependencies += [*evidence.images, *evidence.transcripts]
    if evidence.replayed is not None:
        dependencies.append(evidence.replayed)
    byproducts = [d for d in (evidence.manifest, evidence.report, evidence.junit) if d is not None]
    if evidence.coverage is not None:
        byproducts.append(coverage_descriptor(evidence.coverage))
    byproducts.append(usage_descriptor(evidence.usage, evidence.calls_without_transcript))
    if evidence.ledger is not None:
        byproducts.append(evidence.ledger.descriptor())
    predicate: dict[str, Any] = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": dict(evidence.run_spec),
            "resolvedDependencies": [d.to_wire() for d in dependencies],
        },
        "runDetails": {
            "builder": {
                "id": evidence.builder_id,
                "version": {"smartspec": evidence.builder_version},
            },
            "metadata": {
                "invocationId": invocation_id(evidence.namespace, evidence.name, evidence.uid),
                "startedOn": evidence.started_on,
                "finishedOn": evidence.finished_on,
            },
            "byproducts": [d.to_wire() for d in byproducts],
        },
    }
    if evidence.failure is not None:
        predicate["failure"] = {
            "result": "Failed",
            "reason": evidence.failure.reason,
            "message": evidence.failure.message,
            "attempts": [dict(a) for a in evidence.failure.attempts],
        }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [s.to_wire() for s in subjects],
        "predicateType": SLSA_PROVENANCE_V1 if evidence.outcome == "Succeeded" else FAILED_RUN_V1,
        "predicate": predicate,
    }


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """The payload that is signed: the statement's canonical JSON."""
    return canonical_json(statement)


def parse_statement(payload: bytes) -> dict[str, Any]:
    """The statement of an envelope's payload, checked for the shape this contract writes."""
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ProvenanceError("the payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError(f"the payload is not an in-toto Statement ({STATEMENT_TYPE})")
    predicate_type = statement.get("predicateType")
    if predicate_type not in PREDICATE_TYPES:
        raise ProvenanceError(f"unknown predicateType {predicate_type!r}")
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    if not isinstance(predicate, dict) or not isinstance(subjects, list) or not subjects:
        raise ProvenanceError("the statement has no predicate or no subject")
    failed = isinstance(predicate.get("failure"), dict)
    if failed != (predicate_type == FAILED_RUN_V1):
        raise ProvenanceError(
            "the predicate's failure and its predicateType disagree about the outcome"
        )
    return statement
