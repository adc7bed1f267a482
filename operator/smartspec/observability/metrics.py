"""Every Prometheus metric SmartSpec exports, in one place.

Contract: specs/CORE-002-spec-registry.md, section "Observability".
Names follow smartspec_<noun>_<unit>; no label carries an object name (bounded cardinality).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter(
    "smartspec_reconciles_total",
    "Reconciles by resource kind and outcome.",
    ["kind", "outcome"],
)
RECONCILE_DURATION = Histogram(
    "smartspec_reconcile_duration_seconds",
    "Time spent in one reconcile, by resource kind.",
    ["kind"],
)
SPEC_REVISIONS = Counter(
    "smartspec_spec_revisions_total",
    "Spec content revisions observed.",
)
SPEC_FINDINGS = Counter(
    "smartspec_spec_findings_total",
    "Lint and secret-scan findings reported, by severity and code.",
    ["severity", "code"],
)
SNAPSHOT_WRITES = Counter(
    "smartspec_snapshot_writes_total",
    "Spec snapshot writes by result: created, existed (write-once hit) or failed.",
    ["result"],
)
