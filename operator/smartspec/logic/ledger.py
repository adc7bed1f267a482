"""The credit ledger: append-only, hash-chained entries in segments.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Ledger".

Every reserve, settle, release, refusal and replay of a model call, and every accounting
event (rollover, lapsed lease), is an entry. Entries are chained: each carries the hash of
the one before, and its own hash covers its canonical JSON. A gateway replica buffers the
entries of its calls and appends them as one segment in the same compare-and-swap that moves
their cost into the budget's spentCredits, so the chain head in the CreditBudget status and
the spent total always describe the same history. Segments are stored write-once in S3 and
point to their predecessor; a segment written by a replica that then lost the race is simply
not on the chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from smartspec.logic.canonical import content_hash, hex_digest
from smartspec.logic.spending import SettledBy

SEGMENT_FORMAT: Final = "smartspec.dev/ledger-segment/v1"
GENESIS_HASH = "sha256:" + "0" * 64
# Entry kinds whose credits make up spentCredits (since the period's last rollover).
SPENDING_KINDS = frozenset({"settle", "lease-expired"})
# An overrun entry is informational: its credits are already inside the settle entry.

EntryKind = Literal[
    "reserve",
    "settle",
    "settle-covered",
    "release",
    "refuse",
    "replay",
    "rollover",
    "lease-expired",
    "lease-lost",
    "overrun",
]


@dataclass(frozen=True)
class Attribution:
    """Who made one model call: taken from the run token's claims once, and carried as one
    value by the call's hold, its ledger entries and its transcript."""

    namespace: str
    run: str
    run_uid: str
    attempt: int
    spec_revision: int
    call_id: str

    def to_wire(self) -> dict[str, str | int]:
        """The camelCase form a transcript records."""
        return {
            "namespace": self.namespace,
            "run": self.run,
            "runUid": self.run_uid,
            "attempt": self.attempt,
            "specRevision": self.spec_revision,
            "callId": self.call_id,
        }


@dataclass(frozen=True)
class LedgerDraft:
    """An entry before it is placed on the chain (the gateway records these per call)."""

    kind: EntryKind
    at: datetime
    namespace: str
    budget: str
    holder: str
    credits: int = 0
    call: Attribution | None = None
    """The model call the entry is about; None for accounting events (rollover, expiry)."""
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    detail: str = ""
    settled_by: SettledBy | None = None
    """What a settle entry's charge was computed from; None on every other kind."""


class LedgerEntry(BaseModel):
    """An entry on the chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence: int = Field(ge=1)
    previous_hash: str
    kind: EntryKind
    at: str
    namespace: str
    budget: str
    holder: str
    credits: int = Field(ge=0)
    run: str | None = None
    run_uid: str | None = None
    attempt: int | None = None
    spec_revision: int | None = None
    call_id: str | None = None
    model: str | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    detail: str = ""
    settled_by: SettledBy | None = None
    """Added in 0.1.6: entries written before it have none, and their hash does not cover it."""
    hash: str


class SegmentLink(BaseModel):
    """Where the previous segment ends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence: int
    hash: str
    segment_uri: str | None


class Segment(BaseModel):
    """One append: a run of chained entries and the link to what came before."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["smartspec.dev/ledger-segment/v1"] = SEGMENT_FORMAT
    namespace: str
    budget: str
    previous: SegmentLink | None
    entries: list[LedgerEntry]


def entry_hash(fields: dict[str, Any]) -> str:
    """The hash of an entry: sha256 of its canonical JSON without the hash field.

    A field added later (`settled_by`) counts only when set, so an entry written before it
    existed hashes as it did then.
    """
    return content_hash(
        {
            key: value
            for key, value in fields.items()
            if key != "hash" and not (key in _LATER_FIELDS and value is None)
        }
    )


_LATER_FIELDS = frozenset({"settled_by"})


def chain_segment(
    drafts: Sequence[LedgerDraft],
    *,
    namespace: str,
    budget: str,
    head_sequence: int,
    head_hash: str | None,
    head_segment_uri: str | None,
) -> Segment:
    """Place drafts on the chain after the given head (genesis when there is none)."""
    previous_hash = head_hash or GENESIS_HASH
    entries: list[LedgerEntry] = []
    sequence = head_sequence
    for draft in drafts:
        sequence += 1
        call = draft.call
        fields: dict[str, Any] = {
            "sequence": sequence,
            "previous_hash": previous_hash,
            "kind": draft.kind,
            "at": draft.at.isoformat(),
            "namespace": draft.namespace,
            "budget": draft.budget,
            "holder": draft.holder,
            "credits": draft.credits,
            "run": call.run if call else None,
            "run_uid": call.run_uid if call else None,
            "attempt": call.attempt if call else None,
            "spec_revision": call.spec_revision if call else None,
            "call_id": call.call_id if call else None,
            "model": draft.model,
            "prompt_tokens": draft.prompt_tokens,
            "completion_tokens": draft.completion_tokens,
            "detail": draft.detail,
        }
        if draft.settled_by is not None:
            fields["settled_by"] = draft.settled_by.value
        digest = entry_hash(fields)
        entries.append(LedgerEntry(**fields, hash=digest))
        previous_hash = digest
    link = (
        SegmentLink(sequence=head_sequence, hash=head_hash, segment_uri=head_segment_uri)
        if head_hash is not None
        else None
    )
    return Segment(namespace=namespace, budget=budget, previous=link, entries=entries)


def segment_key(namespace: str, budget: str, segment: Segment) -> str:
    """Write-once key: first sequence plus last hash, so racing writers never collide."""
    if not segment.entries:
        raise ValueError("an empty segment is never written")
    first = segment.entries[0].sequence
    last_hash = hex_digest(segment.entries[-1].hash)
    return f"{namespace}/ledger/{budget}/{first:012d}-{last_hash[:32]}.json"


@dataclass(frozen=True)
class Verification:
    """The result of walking a chain from its head back to genesis."""

    entries: int
    segments: int
    spent_since_rollover: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_segments(segments_newest_first: Iterable[Segment], head_hash: str) -> Verification:
    """Check every hash and link; sum the spending since the latest rollover."""
    problems: list[str] = []
    expected_last = head_hash
    count = 0
    segment_count = 0
    spent = 0
    rollover_seen = False
    for segment in segments_newest_first:
        segment_count += 1
        if not segment.entries:
            problems.append(f"segment {segment_count} from the head is empty")
            break
        if segment.entries[-1].hash != expected_last:
            problems.append(
                f"segment ending at sequence {segment.entries[-1].sequence} does not end at "
                f"the expected hash {expected_last}"
            )
        for entry in reversed(segment.entries):
            count += 1
            recomputed = entry_hash(entry.model_dump())
            if recomputed != entry.hash:
                problems.append(f"entry {entry.sequence}: content does not match its hash")
            if not rollover_seen:
                if entry.kind == "rollover":
                    rollover_seen = True
                elif entry.kind in SPENDING_KINDS:
                    spent += entry.credits
        problems += _link_problems(segment)
        first = segment.entries[0]
        if segment.previous is None:
            if first.previous_hash != GENESIS_HASH or first.sequence != 1:
                problems.append(f"entry {first.sequence} claims to start the chain but does not")
            break
        if first.previous_hash != segment.previous.hash:
            problems.append(f"entry {first.sequence} does not follow its segment's link")
        expected_last = segment.previous.hash
    return Verification(count, segment_count, spent, problems)


def _link_problems(segment: Segment) -> list[str]:
    return [
        f"entry {later.sequence} does not follow entry {earlier.sequence}"
        for earlier, later in zip(segment.entries, segment.entries[1:], strict=False)
        if later.previous_hash != earlier.hash or later.sequence != earlier.sequence + 1
    ]
