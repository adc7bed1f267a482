"""Every environment variable the operator and gateway read, typed.

Contract: specs/CORE-002-spec-registry.md, section "Configuration".

Provider and S3 credentials are deliberately absent: S3 credentials come from boto3's
standard chain (AWS_ACCESS_KEY_ID, web identity, instance role), never from our settings,
so they cannot end up in a log line that prints the settings.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Settings of `smartspec operator`, from SMARTSPEC_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_", extra="ignore")

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch (JSON list); empty: every namespace (cluster-wide)."""
    s3_bucket: str = Field(min_length=3, max_length=63)
    """Bucket for snapshots and artifacts."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, moto, Ceph); unset: AWS."""
    s3_region: str = "us-east-1"
    """S3 region."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of the JSON log lines."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 disables it."""
    liveness_port: int = Field(default=8080, ge=0, le=65535)
    """Port of kopf's /healthz liveness endpoint; 0 disables it."""
    leader_election_namespace: str | None = None
    """Namespace of the leader-election Lease: replicas stand by until they hold it, so
    several may run (active/standby); unset: no election, exactly one replica may run."""
    leader_election_lease: str = Field(
        default="smartspec-operator", min_length=1, max_length=253, pattern=r"^[a-z0-9.-]+$"
    )
    """Name of the leader-election Lease (one per installation)."""
    dependency_recheck_seconds: int = Field(default=60, ge=5, le=3600)
    """How often a Spec with a missing dependency is re-checked."""
    run_resync_seconds: float = Field(default=600.0, ge=5, le=86400)
    """A live GenerationRun is looked at again after this long even when no event said it
    changed (a safety net: its Jobs and Pods are watched)."""
    run_workers: int = Field(default=16, ge=1, le=256)
    """GenerationRuns reconciled at once."""
    token_keys_file: Path | None = None
    """Run-token HMAC keys, one per line, current first (the Secret shared with the gateway);
    required for llm runs."""
    provenance_keys_file: Path | None = None
    """Attestation signing keys: PEM blocks, current (private) first, ed25519 or ECDSA P-256
    (CORE-005); unset: finished runs are not attested."""
    provenance_builder_id: str = Field(
        default="https://smartspec.dev/operator", min_length=1, max_length=256
    )
    """runDetails.builder.id of the attestations: the URI that names this installation."""
    gateway_url: str = "http://smartspec-gateway.smartspec.svc:8000/v1"
    """The gateway's OpenAI-compatible base URL as sandboxes reach it."""
    generator_image: str = "ghcr.io/smartspec/sandbox-generator:0.1.0"
    """Image of the generator sandbox."""
    tester_image: str = "ghcr.io/smartspec/sandbox-tester:0.1.0"
    """Image of the tester sandbox."""
    runtime_class_name: str | None = None
    """Default RuntimeClass of sandbox pods (gvisor, kata); a run may override it."""
    agent_images: list[str] = Field(default_factory=list)
    """Image references (shell patterns, JSON list) that agent-backend runs may name;
    empty: the agent backend is refused (CORE-004, "Agent backend")."""
    gateway_namespace: str = "smartspec"
    """Namespace of the gateway pods (for the sandbox NetworkPolicy)."""
    s3_egress: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                "ports": [{"port": 443, "protocol": "TCP"}],
            }
        ]
    )
    """NetworkPolicy egress rules that reach object storage (JSON list; default: HTTPS)."""
    local_models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Models served by a GPU sidecar in the generator pod (JSON: model name -> image, args,
    port, gpu_count, node_selector, tolerations, resources, env; see builders.jobs)."""
    url_ttl_seconds: int = Field(default=7200, ge=60, le=7 * 86400)
    """Lifetime of the presigned storage URLs handed to sandboxes."""
    s3_self_check: Literal["enforce", "warn"] = "enforce"
    """What a failed storage self-check at start-up does: refuse to start, or log a warning."""
    retention_succeeded_run_seconds: int | None = Field(default=None, ge=0)
    """Default lifetime of a Succeeded run after it finished (budgets without a retention
    policy); unset: kept forever."""
    retention_failed_run_seconds: int | None = Field(default=None, ge=0)
    """Default lifetime of a Failed run after it finished; unset: kept forever."""
    retention_artifact_seconds: int | None = Field(default=None, ge=0)
    """Default lifetime of a finished run's files and reports; unset: as long as the run."""
    retention_transcript_seconds: int | None = Field(default=None, ge=0)
    """Default lifetime of model-call transcripts; unset: kept forever."""
    retention_s3_credentials_file: Path | None = None
    """AWS shared credentials file ([default] profile) of the identity that lists the bucket
    and deletes runs' files and transcripts; unset: the operator's own credentials, which
    then need those rights. Kept apart so that the operator's own key, which signs the
    sandboxes' upload policies, never needs a right on the gateway's transcripts."""
    retention_sweep_seconds: float = Field(default=3600.0, ge=1, le=86400)
    """How often the retention sweep looks for runs, files and transcripts past their
    lifetime, and for files no run owns."""
    retention_orphan_grace_seconds: int = Field(default=3600, ge=0, le=30 * 86400)
    """Files no run owns are deleted only once this much older than the sweep's run listing
    (clock skew between the store and the operator)."""
    retention_finalizer_timeout_seconds: int = Field(default=600, ge=0, le=7 * 86400)
    """How long a deleted run waits for its files to be deleted before it is let go with
    files left (the sweep deletes them later): no deletion waits on the store forever."""


class GatewaySettings(BaseSettings):
    """Settings of `smartspec gateway`, from SMARTSPEC_GATEWAY_* and SMARTSPEC_S3_* variables."""

    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_", extra="ignore")

    gateway_config: Path
    """YAML routing and pricing file (smartspec.gateway.config)."""
    gateway_token_keys_file: Path
    """File with the run-token HMAC keys, one per line, current first (a mounted Secret)."""
    gateway_host: str = "0.0.0.0"  # noqa: S104 (a Pod serves on all its interfaces)
    """Listen address."""
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    """Listen port of the OpenAI-compatible API, /healthz, /readyz and /metrics."""
    gateway_replica: str = Field(default_factory=socket.gethostname, max_length=64)
    """This replica's id (the Pod name): it names the replica's budget lease."""
    gateway_lease_seconds: int = Field(default=30, ge=2, le=600)
    """Lifetime of a budget lease unless renewed."""
    gateway_flush_milliseconds: int = Field(default=250, ge=10, le=10000)
    """How often settled costs and ledger entries are written back."""
    gateway_lease_factor: int = Field(default=8, ge=1, le=1000)
    """A lease grows by this many times the worst case of the call that needs it."""
    gateway_lease_max_fraction: int = Field(default=16, ge=1, le=10000)
    """A lease's spare part never grows beyond limit / this (so other replicas find credits
    too); what a waiting call needs is never capped."""
    gateway_idle_release_seconds: float = Field(default=3.0, ge=0.1, le=3600)
    """Unused lease is given back after this long without calls."""
    gateway_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    """Largest request body accepted."""
    gateway_run_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    """How long a GenerationRun read is reused when checking that a run is active."""
    s3_bucket: str = Field(min_length=3, max_length=63)
    """Bucket for ledger segments and transcripts."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint; unset: AWS."""
    s3_region: str = "us-east-1"
    """S3 region."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of the JSON log lines."""
