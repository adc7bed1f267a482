"""Reading a budget's ledger back from S3 and verifying it against the budget's status.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Ledger".
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from smartspec.api.v1alpha1.creditbudget import CreditBudgetStatus
from smartspec.logic.ledger import Segment, Verification, verify_segments
from smartspec.storage import ObjectStore, StorageError

MAX_SEGMENTS = 1_000_000


@dataclass(frozen=True)
class LedgerReport:
    """Verification of one budget's chain, and whether its sum matches spentCredits."""

    verification: Verification
    spent_credits: int

    @property
    def ok(self) -> bool:
        return self.verification.ok and self.verification.spent_since_rollover == self.spent_credits

    def problems(self) -> list[str]:
        problems = list(self.verification.problems)
        if self.verification.spent_since_rollover != self.spent_credits:
            problems.append(
                f"the ledger sums to {self.verification.spent_since_rollover} credits this "
                f"period but the budget says spentCredits={self.spent_credits}"
            )
        return problems


def read_segments(store: ObjectStore, head_uri: str) -> list[Segment]:
    """Every segment from the head back to the first, newest first."""
    segments: list[Segment] = []
    uri: str | None = head_uri
    while uri is not None and len(segments) < MAX_SEGMENTS:
        key = uri.split("/", 3)[3] if uri.startswith("s3://") else uri
        try:
            segment = Segment.model_validate(json.loads(store.get(key)))
        except StorageError as error:
            raise StorageError(f"ledger segment {uri} is missing: {error}") from error
        segments.append(segment)
        uri = segment.previous.segment_uri if segment.previous is not None else None
    return segments


def verify_budget_ledger(store: ObjectStore, status: CreditBudgetStatus) -> LedgerReport:
    """Walk the chain from status.ledgerHead and compare its sum with status.spentCredits."""
    head = status.ledger_head
    if head is None or head.segment_uri is None:
        empty = Verification(entries=0, segments=0, spent_since_rollover=0, problems=[])
        return LedgerReport(empty, status.spent_credits)
    segments = read_segments(store, head.segment_uri)
    return LedgerReport(verify_segments(segments, head.hash), status.spent_credits)
