"""The object-key scheme of the artifact store.

Contract: specs/CORE-002-spec-registry.md, section "Snapshots".

Keys start with the tenant's namespace, so a bucket policy or lifecycle rule can be written
per tenant. Spec snapshots are content-addressed: the key is the content hash, and the
object's bytes are the canonical content, so sha256(object) == the key's hash and anyone can
verify a snapshot without trusting the operator.
"""

from __future__ import annotations

from smartspec.logic.canonical import hex_digest

__all__ = [
    "attempt_prefix",
    "run_prefix",
    "runs_prefix",
    "s3_uri",
    "spec_snapshot_key",
    "transcripts_prefix",
]


def spec_snapshot_key(namespace: str, content_hash: str) -> str:
    """Where a Spec revision's canonical content lives: <ns>/specs/sha256/<hex>.json."""
    return f"{namespace}/specs/sha256/{hex_digest(content_hash)}.json"


def s3_uri(bucket: str, key: str) -> str:
    """The s3://bucket/key form recorded in status."""
    return f"s3://{bucket}/{key}"


def runs_prefix(namespace: str) -> str:
    """<ns>/runs/: every run's objects in the namespace."""
    return f"{namespace}/runs/"


def run_prefix(namespace: str, run: str, run_uid: str) -> str:
    """<ns>/runs/<run>/<uid>/: one run's attempts and its attestation."""
    return f"{runs_prefix(namespace)}{run}/{run_uid}/"


def attempt_prefix(namespace: str, run: str, run_uid: str, attempt: int) -> str:
    """<ns>/runs/<run>/<uid>/attempt-<k>/: everything one attempt's sandboxes write."""
    return f"{run_prefix(namespace, run, run_uid)}attempt-{attempt}/"


def transcripts_prefix(namespace: str) -> str:
    """<ns>/transcripts/: the gateway's content-addressed model-call transcripts."""
    return f"{namespace}/transcripts/"
