"""Verify a run's attestation against the bucket (and, for a live run, the API).

Contract: specs/CORE-005-provenance.md, section "Verification".

Checks run in a fixed order and stop at the first mismatch, which is named: the signature,
the statement's shape and the digests it computes from itself, every generated file, the
spec snapshot, every transcript, the manifest and test report (and the coverage matrix
recomputed from the report), the replayed run's attestation, then the ledger range and its
sum against the run's credits. Reading needs only the public key and read access to the
bucket; `verify run` adds what only the API knows (the run's uid and credits, the
budget's current chain head).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from smartspec.logic import provenance as p
from smartspec.logic.ledger import Segment
from smartspec.logic.provenance_ledger import check_head_reaches, check_range, walk
from smartspec.provenance.attest import verified_by
from smartspec.provenance.keys import VerifyingKey
from smartspec.storage import ObjectMissingError, StorageError

Reader = Callable[[str], bytes | None]
"""Reads an s3://bucket/key URI; None when the object does not exist."""


@dataclass(frozen=True)
class Check:
    """One verified fact, or the first mismatch."""

    what: str
    problem: str | None = None


@dataclass(frozen=True)
class Attested:
    """What verification learnt from a valid envelope (for the API checks that follow)."""

    statement: dict[str, Any]
    key: VerifyingKey


def descriptors(statement: dict[str, Any], section: str) -> list[dict[str, Any]]:
    predicate = statement["predicate"]
    if section == "subject":
        found: list[dict[str, Any]] = statement["subject"]
    elif section == "resolvedDependencies":
        found = predicate["buildDefinition"].get("resolvedDependencies") or []
    else:
        found = predicate["runDetails"].get("byproducts") or []
    return found


def named(statement: dict[str, Any], section: str, name: str) -> list[dict[str, Any]]:
    return [d for d in descriptors(statement, section) if d.get("name") == name]


def check_envelope(raw: bytes, keys: tuple[VerifyingKey, ...]) -> Iterator[Check | Attested]:
    try:
        envelope = p.parse_envelope(raw)
        key = verified_by(envelope, keys)
    except p.ProvenanceError as error:
        yield Check("envelope", f"envelope: {error}")
        return
    if key is None:
        ids = ", ".join(s.keyid or "(none)" for s in envelope.signatures)
        yield Check(
            "signature", f"signature: no given public key verifies the envelope (keyid {ids})"
        )
        return
    yield Check(f"signature (key {key.key_id})")
    try:
        statement = p.parse_statement(envelope.payload_bytes())
    except p.ProvenanceError as error:
        yield Check("statement", f"statement: {error}")
        return
    outcome = "Succeeded" if statement["predicateType"] == p.SLSA_PROVENANCE_V1 else "Failed"
    invocation = statement["predicate"]["runDetails"]["metadata"]["invocationId"]
    yield Check(f"statement of run {invocation}: {outcome} ({statement['predicateType']})")
    yield Attested(statement, key)


def check_statement(statement: dict[str, Any], reader: Reader) -> Iterator[Check]:
    """Everything the bucket can confirm, in order; stops at the first mismatch."""
    for check in _inline(statement):
        yield check
        if check.problem:
            return
    for descriptor in descriptors(statement, "subject"):
        if "uri" in descriptor:
            yield _object(f"file {descriptor['name']}", descriptor, reader)
    for name, label in ((p.SPEC_SNAPSHOT, "spec snapshot"),):
        for descriptor in named(statement, "resolvedDependencies", name):
            yield _object(label, descriptor, reader)
    run_uid = statement["predicate"]["runDetails"]["metadata"]["invocationId"].rsplit("/", 1)[-1]
    for descriptor in named(statement, "resolvedDependencies", p.TRANSCRIPT):
        yield _transcript(descriptor, run_uid, reader)
    for descriptor in named(statement, "resolvedDependencies", p.REPLAYED_RUN):
        yield _object("replayed run's attestation", descriptor, reader)
    for name in (p.MANIFEST, p.TEST_REPORT, p.TEST_REPORT_JUNIT):
        for descriptor in named(statement, "byproducts", name):
            yield _object(name.replace("-", " "), descriptor, reader)
    for descriptor in named(statement, "byproducts", p.TEST_REPORT):
        yield _coverage(statement, descriptor, reader)
    yield _ledger(statement, run_uid, reader)


def _inline(statement: dict[str, Any]) -> Iterator[Check]:
    """Digests the statement computes from its own content."""
    for name in (p.COVERAGE, p.USAGE):
        for descriptor in named(statement, "byproducts", name):
            recomputed = p.inline_digest(descriptor.get("annotations") or {})
            if recomputed != descriptor.get("digest", {}).get("sha256"):
                yield Check(name, f"{name}: its digest does not match its annotations")
                return
    if not named(statement, "byproducts", p.USAGE):
        yield Check("usage", "usage: the statement has no usage byproduct")
        return
    yield Check("coverage and usage digests")


def _object(label: str, descriptor: dict[str, Any], reader: Reader) -> Check:
    uri = str(descriptor.get("uri", ""))
    expected = descriptor.get("digest", {}).get("sha256")
    body = reader(uri)
    if body is None:
        return Check(label, f"{label}: {uri} is missing")
    actual = p.sha256_hex(body)
    if actual != expected:
        return Check(label, f"{label}: {uri} has sha256 {actual}, the attestation says {expected}")
    return Check(f"{label} ({uri})")


def _transcript(descriptor: dict[str, Any], run_uid: str, reader: Reader) -> Check:
    notes = descriptor.get("annotations") or {}
    label = f"transcript (attempt {notes.get('attempt')}, call {notes.get('callId')})"
    check = _object(label, descriptor, reader)
    if check.problem is not None:
        return check
    body = reader(str(descriptor["uri"])) or b"{}"
    owner = (json.loads(body).get("attribution") or {}).get("runUid")
    if owner != run_uid:
        return Check(label, f"{label}: {descriptor['uri']} is attributed to run {owner}")
    return check


def _coverage(statement: dict[str, Any], report: dict[str, Any], reader: Reader) -> Check:
    body = reader(str(report["uri"])) or b"{}"
    matrix = json.loads(body).get("requirements") or {}
    for descriptor in named(statement, "byproducts", p.COVERAGE):
        if (descriptor.get("annotations") or {}).get("requirements") != matrix:
            return Check(p.COVERAGE, "requirement coverage: differs from the stored test report")
    return Check("requirement coverage matches the test report")


def _ledger(statement: dict[str, Any], run_uid: str, reader: Reader) -> Check:
    usage = named(statement, "byproducts", p.USAGE)[0].get("annotations") or {}
    ledgers = named(statement, "byproducts", p.LEDGER)
    if not ledgers:
        if usage.get("credits", 0) != 0:
            return Check("ledger", f"ledger: the run has {usage['credits']} credits and no ledger")
        return Check("ledger: the run charged nothing")
    descriptor = ledgers[0]
    recorded = descriptor.get("annotations") or {}
    try:
        walked = walk(read_segments(str(descriptor["uri"]), reader), recorded["firstSequence"])
    except (StorageError, ValueError) as error:
        return Check("ledger", f"ledger: {error}")
    problem = check_range(recorded, descriptor["digest"]["sha256"], walked, run_uid)
    if problem is None and recorded["credits"] != usage.get("credits", 0):
        problem = (
            f"ledger: the run's entries charge {recorded['credits']} credits, its usage says "
            f"{usage.get('credits', 0)}"
        )
    if problem is not None:
        return Check("ledger", problem)
    return Check(
        f"ledger: {recorded['entries']} entries ({recorded['firstSequence']}.."
        f"{recorded['lastSequence']}) charge {recorded['credits']} credits, as the run's usage"
    )


def read_segments(uri: str | None, reader: Reader) -> Iterator[tuple[str, Segment]]:
    """Segments from `uri` back along their links, read as the walk asks for them."""
    while uri is not None:
        body = reader(uri)
        if body is None:
            raise ObjectMissingError(f"ledger segment {uri} is missing")
        segment = Segment.model_validate_json(body)
        yield uri, segment
        uri = segment.previous.segment_uri if segment.previous is not None else None


def check_live(
    statement: dict[str, Any], run: dict[str, Any], budget: dict[str, Any] | None, reader: Reader
) -> Iterator[Check]:
    """What only the API knows: the run is the attested one, its credits, the chain's head."""
    metadata = run.get("metadata") or {}
    expected = p.invocation_id(
        metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid", "")
    )
    invocation = statement["predicate"]["runDetails"]["metadata"]["invocationId"]
    if invocation != expected:
        yield Check("run", f"run: the attestation is of {invocation}, the run is {expected}")
        return
    usage = named(statement, "byproducts", p.USAGE)[0].get("annotations") or {}
    live = ((run.get("status") or {}).get("usage") or {}).get("credits", 0)
    if live != usage.get("credits", 0):
        yield Check(
            "usage",
            f"usage: the run now says {live} credits, the attestation {usage.get('credits', 0)}",
        )
        return
    yield Check(f"run {expected} and its credits ({live})")
    ledgers = named(statement, "byproducts", p.LEDGER)
    if not ledgers:
        return
    recorded = ledgers[0]["annotations"]
    head = ((budget or {}).get("status") or {}).get("ledgerHead") or {}
    if not head.get("segmentUri"):
        yield Check("ledger head", f"ledger: budget {recorded['budget']} has no ledger head")
        return
    try:
        walked = walk(read_segments(head["segmentUri"], reader), recorded["lastSequence"])
    except (StorageError, ValueError) as error:
        yield Check("ledger head", f"ledger: {error}")
        return
    last_hash = "sha256:" + ledgers[0]["digest"]["sha256"]
    problem = check_head_reaches(
        walked, recorded["lastSequence"], last_hash, metadata.get("uid", "")
    )
    yield Check(
        f"ledger: budget {recorded['budget']}'s head (entry {head.get('sequence')}) chains to "
        f"entry {recorded['lastSequence']}",
        problem,
    )
