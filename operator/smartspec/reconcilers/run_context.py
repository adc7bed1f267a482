"""What the GenerationRun reconciler needs from the process.

Contract: specs/CORE-004-generation-runs.md, section "Reconciler".
"""

from __future__ import annotations

from dataclasses import dataclass

from smartspec.builders.jobs import SandboxSettings
from smartspec.kube.client import KubeClient
from smartspec.kube.events import EventRecorder
from smartspec.provenance import ProvenanceSettings
from smartspec.storage import S3ObjectStore


class RetryLater(Exception):  # noqa: N818 - control flow, like kopf's TemporaryError
    """The reconcile cannot go on now; the queue tries again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class RunContext:
    """Clients and settings of the run reconciler."""

    kube: KubeClient
    events: EventRecorder
    store: S3ObjectStore
    sandbox: SandboxSettings
    token_keys: tuple[bytes, ...]
    gateway_base_url: str
    url_ttl_seconds: int
    resync_seconds: float = 600.0
    """A live run is looked at again after this long even when nothing reported a change."""
    workers: int = 16
    """Runs reconciled at once."""
    provenance: ProvenanceSettings | None = None
    """Keys and builder id of the finished runs' attestations (CORE-005); None: none made."""
    cleanup_store: S3ObjectStore | None = None
    """The store the finalizer deletes through, with short timeouts (default: `store`)."""
    finalizer_timeout_seconds: int = 600
    """How long a deleted run waits for its files to go before it is let go without."""
