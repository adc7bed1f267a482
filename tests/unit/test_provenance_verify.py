"""The verifier names the first thing that differs from a run's attestation.

Contract: specs/CORE-005-provenance.md, sections "Ledger" and "Verification". The bucket is a
dict of URI → bytes here; the integration tests run the same checks against real S3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from smartspec.logic import provenance as p
from smartspec.logic.canonical import canonical_json
from smartspec.logic.ledger import (
    GENESIS_HASH,
    LedgerEntry,
    Segment,
    SegmentLink,
    entry_hash,
)
from smartspec.logic.provenance_ledger import check_head_reaches, summarise, walk
from smartspec.provenance.keys import generate_signing_key, parse_provenance_keys
from smartspec.provenance.verify import Attested, check_envelope, check_statement, read_segments

BUCKET = "s3://bucket/team-a"
UID = "run-uid-1"
AT = datetime(2026, 1, 1, tzinfo=UTC)


Draft = tuple[str, str | None, int, str | None]
"""(kind, run uid, credits, call id) of an entry to chain."""


def draft(kind: str, run_uid: str | None, credits: int = 0, call: str | None = None) -> Draft:
    return kind, run_uid, credits, call


def ledger(bucket: dict[str, bytes], batches: list[list[Draft]]) -> str:
    """Chain the batches into segments stored in `bucket` (the wire form of CORE-003's
    ledger); the head segment's URI."""
    sequence, last_hash, uri = 0, GENESIS_HASH, None
    for number, drafts in enumerate(batches):
        link = SegmentLink(sequence=sequence, hash=last_hash, segment_uri=uri) if uri else None
        entries = []
        for kind, run_uid, credits, call in drafts:
            sequence += 1
            fields: dict[str, Any] = {
                "sequence": sequence,
                "previous_hash": last_hash,
                "kind": kind,
                "at": AT.isoformat(),
                "namespace": "team-a",
                "budget": "default",
                "holder": "gw-0",
                "credits": credits,
                "run": "todo" if run_uid else None,
                "run_uid": run_uid,
                "attempt": 1 if run_uid else None,
                "spec_revision": 1 if run_uid else None,
                "call_id": call,
                "model": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "detail": "",
            }
            last_hash = entry_hash(fields)
            entries.append(LedgerEntry(**fields, hash=last_hash))
        segment = Segment(namespace="team-a", budget="default", previous=link, entries=entries)
        uri = f"{BUCKET}/ledger/default/{number}.json"
        bucket[uri] = canonical_json(segment.model_dump(mode="json"))
    assert uri is not None
    return uri


@dataclass
class Attestation:
    bucket: dict[str, bytes]
    statement: dict[str, Any]
    head_uri: str

    def read(self, uri: str) -> bytes | None:
        return self.bucket.get(uri)

    def first_problem(self) -> str | None:
        return next(
            (c.problem for c in check_statement(self.statement, self.read) if c.problem), None
        )


@pytest.fixture
def attestation() -> Attestation:
    """A run with one file, a snapshot, a transcript, a report and two charged calls."""
    bucket: dict[str, bytes] = {}
    files = {f"{BUCKET}/runs/todo/{UID}/attempt-1/files/app.py": b"print('hi')\n"}
    snapshot = (f"{BUCKET}/specs/sha256/s.json", b'{"title":"todo"}')
    report = json.dumps(
        {"result": "passed", "requirements": {"REQ-001": {"tests": ["t"], "passed": True}}}
    ).encode()
    transcript = json.dumps({"attribution": {"runUid": UID, "attempt": 1, "callId": "c1"}}).encode()
    bucket.update(files)
    bucket[snapshot[0]] = snapshot[1]
    bucket[f"{BUCKET}/runs/todo/{UID}/attempt-1/report/summary.json"] = report
    bucket[f"{BUCKET}/transcripts/sha256/t1.json"] = transcript
    head = ledger(
        bucket,
        [
            [draft("settle", "someone-else", 7)],
            [draft("reserve", UID, 50, "c1"), draft("settle", UID, 30, "c1")],
            [draft("settle", "someone-else", 4), draft("settle", UID, 12, "c2")],
        ],
    )
    placed = walk(read_segments(head, bucket.get), down_to=0)
    summary = summarise("default", placed.entries, UID)
    assert summary is not None
    evidence = p.RunEvidence(
        namespace="team-a",
        name="todo",
        uid=UID,
        run_spec={},
        outcome="Succeeded",
        started_on="2026-01-01T00:00:00Z",
        finished_on="2026-01-01T00:01:00Z",
        builder_id=p.DEFAULT_BUILDER_ID,
        builder_version="0.1.0",
        files=[p.Descriptor("app.py", uri, p.sha256_hex(body)) for uri, body in files.items()],
        snapshot=p.Descriptor(p.SPEC_SNAPSHOT, snapshot[0], p.sha256_hex(snapshot[1])),
        images=[],
        transcripts=[
            p.Descriptor(
                p.TRANSCRIPT,
                f"{BUCKET}/transcripts/sha256/t1.json",
                p.sha256_hex(transcript),
                {"attempt": 1, "callId": "c1"},
            )
        ],
        usage={"calls": 2, "promptTokens": 1, "completionTokens": 1, "credits": 42},
        report=p.Descriptor(
            p.TEST_REPORT,
            f"{BUCKET}/runs/todo/{UID}/attempt-1/report/summary.json",
            p.sha256_hex(report),
        ),
        coverage={"REQ-001": {"tests": ["t"], "passed": True}},
        ledger=summary,
    )
    return Attestation(bucket, p.build_statement(evidence), head)


def test_the_run_range_of_the_ledger_is_summarised() -> None:
    bucket: dict[str, bytes] = {}
    head = ledger(bucket, [[draft("settle", UID, 5, "a")], [draft("settle", "x", 1)]])
    placed = walk(read_segments(head, bucket.get), down_to=0)
    summary = summarise("default", placed.entries, UID)
    assert summary is not None
    assert (summary.first_sequence, summary.last_sequence, summary.entries) == (1, 1, 1)
    assert summary.credits == 5
    assert summary.call_ids == ("a",)
    assert summary.segment_uri.endswith("/0.json")
    assert summarise("default", placed.entries, "nobody") is None


def test_an_untouched_run_verifies(attestation: Attestation) -> None:
    checks = list(check_statement(attestation.statement, attestation.read))
    assert [c.problem for c in checks if c.problem] == []
    assert any("ledger: 3 entries (2..5) charge 42 credits" in c.what for c in checks)


def tamper(attestation: Attestation, suffix: str, body: bytes) -> None:
    (uri,) = [u for u in attestation.bucket if u.endswith(suffix)]
    attestation.bucket[uri] = body


@pytest.mark.parametrize(
    ("suffix", "body", "named"),
    [
        ("files/app.py", b"print('pwned')\n", "file app.py: s3://bucket/team-a/runs/"),
        ("specs/sha256/s.json", b'{"title":"other"}', "spec snapshot: "),
        (
            "transcripts/sha256/t1.json",
            json.dumps({"attribution": {"runUid": UID}, "x": 1}).encode(),
            "transcript (attempt 1, call c1): ",
        ),
        ("report/summary.json", b'{"result":"passed"}', "test report: "),
    ],
    ids=["file", "snapshot", "transcript", "report"],
)
def test_each_stored_object_is_checked_by_digest(
    attestation: Attestation, suffix: str, body: bytes, named: str
) -> None:
    tamper(attestation, suffix, body)
    problem = attestation.first_problem()
    assert problem is not None
    assert problem.startswith(named), problem
    assert "has sha256" in problem


def test_a_missing_file_is_named(attestation: Attestation) -> None:
    del attestation.bucket[next(u for u in attestation.bucket if u.endswith("app.py"))]
    assert attestation.first_problem() == (
        f"file app.py: {BUCKET}/runs/todo/{UID}/attempt-1/files/app.py is missing"
    )


def rewrite_segment(attestation: Attestation, number: int, change: Any, rehash: bool) -> None:
    uri = f"{BUCKET}/ledger/default/{number}.json"
    segment = Segment.model_validate_json(attestation.bucket[uri])
    entries = []
    for entry in segment.entries:
        fields = entry.model_dump()
        change(fields)
        if rehash:
            fields["hash"] = entry_hash(fields)
        entries.append(fields)
    document = {**segment.model_dump(mode="json"), "entries": entries}
    attestation.bucket[uri] = canonical_json(document)


def lower_uid_credits(fields: dict[str, Any]) -> None:
    if fields["run_uid"] == UID and fields["kind"] == "settle":
        fields["credits"] = 1


def test_an_edited_ledger_entry_is_named(attestation: Attestation) -> None:
    rewrite_segment(attestation, 1, lower_uid_credits, rehash=False)
    assert attestation.first_problem() == (
        f"ledger: entry 3 in {BUCKET}/ledger/default/1.json does not match its hash"
    )


def test_a_rehashed_ledger_entry_breaks_the_chain(attestation: Attestation) -> None:
    # Whoever edits an entry and recomputes its hash still cannot make the next one follow.
    rewrite_segment(attestation, 1, lower_uid_credits, rehash=True)
    problem = attestation.first_problem()
    assert problem is not None
    assert problem.startswith("ledger: "), problem


def test_usage_that_disagrees_with_the_ledger_is_named(attestation: Attestation) -> None:
    statement = attestation.statement
    usage = next(
        d for d in statement["predicate"]["runDetails"]["byproducts"] if d["name"] == "usage"
    )
    usage["annotations"]["credits"] = 41
    usage["digest"]["sha256"] = p.inline_digest(usage["annotations"])
    assert attestation.first_problem() == (
        "ledger: the run's entries charge 42 credits, its usage says 41"
    )
    usage["annotations"]["credits"] = 40  # now its own digest no longer matches either
    assert attestation.first_problem() == "usage: its digest does not match its annotations"


def test_the_budget_head_must_reach_the_recorded_entry(attestation: Attestation) -> None:
    recorded = next(
        d
        for d in attestation.statement["predicate"]["runDetails"]["byproducts"]
        if d["name"] == "ledger"
    )
    last = recorded["annotations"]["lastSequence"]
    last_hash = "sha256:" + recorded["digest"]["sha256"]
    walked = walk(read_segments(attestation.head_uri, attestation.read), last)
    assert check_head_reaches(walked, last, last_hash, UID) is None
    # A later charge to the run (after its attestation) is named.
    head = ledger(
        attestation.bucket,
        [
            [draft("settle", "someone-else", 7)],
            [draft("reserve", UID, 50, "c1"), draft("settle", UID, 30, "c1")],
            [draft("settle", "someone-else", 4), draft("settle", UID, 12, "c2")],
            [draft("settle", UID, 3, "c3")],
        ],
    )
    walked = walk(read_segments(head, attestation.read), last)
    assert check_head_reaches(walked, last, last_hash, UID) == (
        "ledger: the run has 1 entries after its attestation (from 6)"
    )


def test_the_signature_is_checked_before_anything_else() -> None:
    ring = parse_provenance_keys(generate_signing_key("ed25519"), "keys")
    other = parse_provenance_keys(generate_signing_key(), "other")
    payload = b'{"_type": "x"}'
    envelope = p.make_envelope(
        payload, ring.signing.key_id, ring.signing.sign(p.pae(p.PAYLOAD_TYPE, payload))
    )
    checks = list(check_envelope(envelope.to_bytes(), other.keys))
    assert checks[-1].problem is not None  # type: ignore[union-attr]
    assert "no given public key verifies the envelope" in str(checks[-1].problem)  # type: ignore[union-attr]
    checks = list(check_envelope(envelope.to_bytes(), ring.keys))
    assert "statement: the payload is not an in-toto Statement" in str(checks[-1].problem)  # type: ignore[union-attr]
    assert not any(isinstance(c, Attested) for c in checks)
