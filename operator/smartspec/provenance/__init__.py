"""Signed provenance of finished runs: gather, sign, store once, and verify.

Contract: specs/CORE-005-provenance.md. The pure statement and DSSE encoding live in
`smartspec.logic.provenance`; this package does the I/O (API, bucket) and the signing.
It never imports kopf: the run reconciler turns `AttestationError` into a retry.
"""

from __future__ import annotations

from smartspec.provenance.attest import ProvenanceSettings, attest_run, lacks_provenance
from smartspec.provenance.gather import AttestationError
from smartspec.provenance.keys import InvalidProvenanceKeysError, read_provenance_keys

__all__ = [
    "AttestationError",
    "InvalidProvenanceKeysError",
    "ProvenanceSettings",
    "attest_run",
    "lacks_provenance",
    "read_provenance_keys",
]
