"""Every environment variable the operator and gateway read, typed.

Contract: specs/CORE-002-spec-registry.md, section "Configuration".

Provider and S3 credentials are deliberately absent: S3 credentials come from boto3's
standard chain (AWS_ACCESS_KEY_ID, web identity, instance role), never from our settings,
so they cannot end up in a log line that prints the settings.
"""

from __future__ import annotations

from typing import Literal

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
    peering: str | None = None
    """kopf peering object for active/standby replicas; unset: standalone (one replica)."""
    dependency_recheck_seconds: int = Field(default=60, ge=5, le=3600)
    """How often a Spec with a missing dependency is re-checked."""
