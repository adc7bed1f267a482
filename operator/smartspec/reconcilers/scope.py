"""What every reconcile does around its work: correlation id, outcome and duration metrics.

Contract: specs/CORE-002-spec-registry.md, section "Observability".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import kopf

from smartspec.observability import metrics
from smartspec.observability.logs import bind_correlation


@dataclass
class Outcome:
    """The `outcome` label of smartspec_reconciles_total; a handler may set "invalid"."""

    value: str = "ok"


@contextmanager
def reconcile_scope(kind: str, body: kopf.Body, name_field: str) -> Iterator[Outcome]:
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
        except kopf.TemporaryError:
            outcome.value = "retry"
            raise
        except Exception:
            outcome.value = "error"
            raise
        finally:
            metrics.RECONCILES.labels(kind=kind, outcome=outcome.value).inc()
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
