"""Every Prometheus metric SmartSpec exports, in one place.

Contract: specs/CORE-002-spec-registry.md, section "Observability".
Names follow smartspec_<noun>_<unit>; no label carries an object name (bounded cardinality).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# ---------------------------------------------------------------- gateway
GATEWAY_REQUESTS = Counter(
    "smartspec_gateway_requests_total",
    "Gateway API requests by route and HTTP status class.",
    ["route", "status"],
)
GATEWAY_LATENCY = Histogram(
    "smartspec_gateway_request_duration_seconds",
    "Gateway request duration (including the upstream call), by route.",
    ["route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GATEWAY_OVERHEAD = Histogram(
    "smartspec_gateway_overhead_seconds",
    "Time a chat completion spends in the gateway outside the upstream call.",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25),
)
MODEL_CALLS = Counter(
    "smartspec_model_calls_total",
    "Model calls by model and outcome (ok, upstream_error, replayed).",
    ["model", "outcome"],
)
MODEL_TOKENS = Counter(
    "smartspec_model_tokens_total",
    "Tokens by model and direction (prompt, completion).",
    ["model", "direction"],
)
CREDITS = Counter(
    "smartspec_credits_total",
    "Credits by accounting action: reserved, settled, released, refused.",
    ["action"],
)
REFUSALS = Counter(
    "smartspec_gateway_refusals_total",
    "Requests refused before any provider call, by reason.",
    ["reason"],
)
UPSTREAM_ERRORS = Counter(
    "smartspec_upstream_errors_total",
    "Failed upstream calls after retries and fallbacks, by model and error class.",
    ["model", "error"],
)
UNREPORTED_USAGE = Counter(
    "smartspec_unreported_usage_total",
    "Answers that reported no token usage, by model; each was charged its reservation.",
    ["model"],
)
BUDGET_SYNCS = Counter(
    "smartspec_budget_syncs_total",
    "Compare-and-swap writes of budget leases that succeeded.",
)
BUDGET_CAS_CONFLICTS = Counter(
    "smartspec_budget_cas_conflicts_total",
    "Budget writes that lost a compare-and-swap race and were retried.",
)
BUDGET_LEASE = Gauge(
    "smartspec_budget_lease_credits",
    "Credits this gateway replica holds in leases, over all budgets.",
)
BUDGET_ALERTS = Counter(
    "smartspec_budget_alerts_total",
    "Budget conditions that turned True (BudgetExhausted, ThresholdReached).",
    ["condition"],
)

# ---------------------------------------------------------------- runs
RUNS_FINISHED = Counter(
    "smartspec_runs_finished_total",
    "GenerationRuns that reached a terminal phase, by phase and reason.",
    ["phase", "reason"],
)
RUN_ATTEMPTS = Histogram(
    "smartspec_run_attempts",
    "Attempts a finished GenerationRun used.",
    buckets=(1, 2, 3, 4, 5, 7, 10),
)
TIME_TO_GREEN = Histogram(
    "smartspec_run_time_to_green_seconds",
    "From admission to Succeeded (runs whose generated tests passed).",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
ATTEMPTS = Counter(
    "smartspec_attempts_total",
    'Finished attempts by result and failure kind (kind is "none" for a passed attempt).',
    ["result", "kind"],
)
ATTEMPT_DURATION = Histogram(
    "smartspec_attempt_duration_seconds",
    "One attempt (generator Job then test Job), by result.",
    ["result"],
    buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800),
)

# ---------------------------------------------------------------- operator replicas
OPERATOR_LEADER = Gauge(
    "smartspec_operator_leader",
    "1 while this operator replica holds the leader-election Lease and reconciles; 0 standby.",
)
RETENTION_RUNS_DELETED = Counter(
    "smartspec_retention_runs_deleted_total",
    "GenerationRuns deleted by retention, by phase.",
    ["phase"],
)
RETENTION_OBJECTS_DELETED = Counter(
    "smartspec_retention_objects_deleted_total",
    "Stored objects deleted, by what they were: run (files of a deleted run), artifacts (of a "
    "kept run), transcripts, orphans (files no run owns).",
    ["kind"],
)
RETENTION_BYTES_DELETED = Counter(
    "smartspec_retention_bytes_deleted_total",
    "Bytes of the stored objects deleted, by kind (as for objects).",
    ["kind"],
)
RETENTION_FAILURES = Counter(
    "smartspec_retention_failures_total",
    "Retention or finalizer steps that failed and will be retried, by stage.",
    ["stage"],
)
RETENTION_ABANDONED = Counter(
    "smartspec_retention_abandoned_total",
    "Deleted runs let go with files left (forced, or past the finalizer's deadline), by why.",
    ["why"],
)
RETENTION_LAST_SWEEP = Gauge(
    "smartspec_retention_last_sweep_timestamp_seconds",
    "When the last retention sweep completed (Unix time).",
)
