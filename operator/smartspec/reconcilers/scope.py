"""What every reconcile does around its work: correlation id, outcome and duration metrics.

Contract: specs/CORE-002-spec-registry.md, section "Observability".
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kopf

from smartspec.observability import metrics
from smartspec.observability.logs import bind_correlation
from smartspec.reconcilers.run_context import RetryLater


@dataclass
class Outcome:
    """The `outcome` label of smartspec_reconciles_total; a handler may set "invalid"."""

    value: str = "ok"


@contextmanager
def reconcile_scope(kind: str, body: Mapping[str, Any], name_field: str) -> Iterator[Outcome]:
    """Bind the object's uid as correlation id; count and time the reconcile by outcome."""
    metadata = body.get("metadata", {})
    outcome = Outcome()
    with bind_correlation(
        str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        **{name_field: str(metadata.get("name", ""))},
    ):
        started = time.monotonic()
        try:
            yield outcome
        except (kopf.TemporaryError, RetryLater):
            outcome.value = "retry"
            raise
        except Exception:
            outcome.value = "error"
            raise
        finally:
            metrics.RECONCILES.labels(kind=kind, outcome=outcome.value).inc()
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
