"""A run's part of its budget's ledger: found for the attestation, checked by the verifier.

Contract: specs/CORE-005-provenance.md, section "Ledger"; the chain itself is CORE-003's.

A budget's chain interleaves every run of the tenant. The attestation records the range the
run's entries span (first and last sequence), the last entry's hash and segment, how many
entries the run has and the credits they charge. The verifier walks the same range back from
that segment, recomputing every hash and link, and (with API access) walks from the budget's
current head down to the recorded entry, which proves the run's entries are on the chain the
budget's spentCredits describes and that nothing was charged to the run afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from smartspec.logic.ledger import LedgerEntry, Segment, entry_hash
from smartspec.logic.provenance import LedgerSummary

# Entry kinds that charge a run: what the gateway adds to the run's status.usage.credits.
RUN_CHARGE_KINDS = frozenset({"settle", "settle-covered"})


@dataclass(frozen=True)
class PlacedEntry:
    """An entry and the URI of the segment that holds it."""

    entry: LedgerEntry
    segment_uri: str


@dataclass(frozen=True)
class Walk:
    """Entries newest first, down to a sequence, and the first broken hash or link."""

    entries: list[PlacedEntry]
    problem: str | None


def walk(segments: Iterable[tuple[str, Segment]], down_to: int) -> Walk:
    """Check entries newest first until `down_to` (inclusive) or the chain's start.

    `segments` are (URI, segment) from one segment back along the links; the caller reads
    them lazily and stops when this function does.
    """
    placed: list[PlacedEntry] = []
    newer: LedgerEntry | None = None
    for uri, segment in segments:
        if not segment.entries:
            return Walk(placed, f"ledger: segment {uri} holds no entry")
        if (
            segment.previous is not None
            and segment.entries[0].previous_hash != segment.previous.hash
        ):
            return Walk(placed, f"ledger: segment {uri} does not follow the segment it links to")
        for entry in reversed(segment.entries):
            if entry_hash(entry.model_dump()) != entry.hash:
                return Walk(
                    placed, f"ledger: entry {entry.sequence} in {uri} does not match its hash"
                )
            if newer is not None and (
                newer.previous_hash != entry.hash or newer.sequence != entry.sequence + 1
            ):
                return Walk(
                    placed,
                    f"ledger: entry {newer.sequence} does not follow entry {entry.sequence} "
                    f"({uri})",
                )
            placed.append(PlacedEntry(entry, uri))
            newer = entry
            if entry.sequence <= down_to:
                return Walk(placed, None)
    return Walk(placed, None)


def is_run_charge(entry: LedgerEntry, run_uid: str) -> bool:
    return entry.run_uid == run_uid and entry.kind in RUN_CHARGE_KINDS


def summarise(budget: str, placed: Sequence[PlacedEntry], run_uid: str) -> LedgerSummary | None:
    """The run's range in entries read newest first; None when the run has no entry."""
    mine = [p for p in placed if p.entry.run_uid == run_uid]
    if not mine:
        return None
    last, first = mine[0], mine[-1]
    charges = [p.entry for p in mine if is_run_charge(p.entry, run_uid)]
    return LedgerSummary(
        budget=budget,
        first_sequence=first.entry.sequence,
        last_sequence=last.entry.sequence,
        last_hash=last.entry.hash,
        segment_uri=last.segment_uri,
        entries=len(mine),
        credits=sum(entry.credits for entry in charges),
        call_ids=tuple(sorted({entry.call_id for entry in charges if entry.call_id})),
    )


def check_range(
    recorded: dict[str, Any], last_hash_hex: str, walked: Walk, run_uid: str
) -> str | None:
    """The first way the walked range differs from the attestation's ledger descriptor."""
    if walked.problem is not None:
        return walked.problem
    last_sequence, first_sequence = recorded["lastSequence"], recorded["firstSequence"]
    by_sequence = {p.entry.sequence: p.entry for p in walked.entries}
    last = by_sequence.get(last_sequence)
    if last is None:
        return f"ledger: entry {last_sequence} is not in the recorded segment"
    if last.hash != f"sha256:{last_hash_hex}":
        return (
            f"ledger: entry {last_sequence} has hash {last.hash}, the attestation says "
            f"sha256:{last_hash_hex}"
        )
    if first_sequence not in by_sequence:
        return f"ledger: the chain ends before entry {first_sequence}"
    span = [e for s, e in by_sequence.items() if first_sequence <= s <= last_sequence]
    return _count_problem(recorded, [e for e in span if e.run_uid == run_uid], run_uid)


def _count_problem(recorded: dict[str, Any], mine: list[LedgerEntry], run_uid: str) -> str | None:
    if len(mine) != recorded["entries"]:
        return (
            f"ledger: the run has {len(mine)} entries between {recorded['firstSequence']} and "
            f"{recorded['lastSequence']}, the attestation says {recorded['entries']}"
        )
    credits = sum(e.credits for e in mine if is_run_charge(e, run_uid))
    if credits != recorded["credits"]:
        return (
            f"ledger: the run's entries charge {credits} credits, the attestation says "
            f"{recorded['credits']}"
        )
    return None


def check_head_reaches(
    walked: Walk, last_sequence: int, last_hash: str, run_uid: str
) -> str | None:
    """The budget's current chain reaches the recorded entry, with no later run entry."""
    if walked.problem is not None:
        return walked.problem
    by_sequence = {p.entry.sequence: p.entry for p in walked.entries}
    entry = by_sequence.get(last_sequence)
    if entry is None or entry.hash != last_hash:
        return (
            f"ledger: the budget's current chain does not pass through entry {last_sequence} "
            f"with hash {last_hash}"
        )
    later = sorted(s for s, e in by_sequence.items() if s > last_sequence and e.run_uid == run_uid)
    if later:
        return f"ledger: the run has {len(later)} entries after its attestation (from {later[0]})"
    return None
