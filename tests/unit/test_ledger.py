"""The hash-chained ledger (specs/CORE-003-gateway-and-budgets.md, "Ledger")."""

from __future__ import annotations

from datetime import UTC, datetime

from smartspec.logic.ledger import (
    GENESIS_HASH,
    Attribution,
    EntryKind,
    LedgerDraft,
    Segment,
    chain_segment,
    segment_key,
    verify_segments,
)

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def draft(kind: EntryKind, credits: int = 0, call: str = "c1") -> LedgerDraft:
    return LedgerDraft(
        kind=kind,
        at=AT,
        namespace="team-a",
        budget="default",
        holder="gw-1",
        credits=credits,
        call=Attribution("team-a", "r1", "uid-1", 1, 1, call),
        model="gpt-4o-mini",
    )


def two_segments() -> list[Segment]:
    first = chain_segment(
        [draft("reserve", 50), draft("settle", 20)],
        namespace="team-a",
        budget="default",
        head_sequence=0,
        head_hash=None,
        head_segment_uri=None,
    )
    uri = "s3://b/" + segment_key("team-a", "default", first)
    second = chain_segment(
        [draft("rollover", 20), draft("settle", 7, "c2"), draft("refuse")],
        namespace="team-a",
        budget="default",
        head_sequence=2,
        head_hash=first.entries[-1].hash,
        head_segment_uri=uri,
    )
    return [second, first]


def test_chain_links_every_entry() -> None:
    second, first = two_segments()
    assert first.entries[0].previous_hash == GENESIS_HASH
    assert [e.sequence for e in first.entries + second.entries] == [1, 2, 3, 4, 5]
    assert second.entries[0].previous_hash == first.entries[-1].hash


def test_verification_accepts_an_intact_chain_and_sums_the_current_period() -> None:
    segments = two_segments()
    result = verify_segments(segments, segments[0].entries[-1].hash)
    assert result.ok, result.problems
    assert (result.entries, result.segments, result.spent_since_rollover) == (5, 2, 7)


def test_tampering_is_detected() -> None:
    second, first = two_segments()
    forged = first.model_copy(
        update={"entries": [first.entries[0], first.entries[1].model_copy(update={"credits": 1})]}
    )
    result = verify_segments([second, forged], second.entries[-1].hash)
    assert not result.ok
    assert any("does not match its hash" in problem for problem in result.problems)


def test_wrong_head_is_detected() -> None:
    segments = two_segments()
    result = verify_segments(segments, "sha256:" + "1" * 64)
    assert not result.ok


def test_segment_keys_differ_for_racing_writers() -> None:
    a = chain_segment(
        [draft("settle", 1)],
        namespace="n",
        budget="b",
        head_sequence=0,
        head_hash=None,
        head_segment_uri=None,
    )
    b = chain_segment(
        [draft("settle", 2)],
        namespace="n",
        budget="b",
        head_sequence=0,
        head_hash=None,
        head_segment_uri=None,
    )
    assert segment_key("n", "b", a) != segment_key("n", "b", b)
    assert segment_key("n", "b", a).startswith("n/ledger/b/000000000001-")
