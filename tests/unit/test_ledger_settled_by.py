"""A settle entry says what its charge was computed from, and entries written before that
field existed still verify (specs/CORE-003-gateway-and-budgets.md, "Ledger")."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from smartspec.logic.canonical import canonical_json, content_hash
from smartspec.logic.ledger import (
    Attribution,
    LedgerDraft,
    Segment,
    chain_segment,
    entry_hash,
    verify_segments,
)
from smartspec.logic.spending import SettledBy

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CALL = Attribution("team-a", "r1", "uid-1", 1, 1, "c1")


def chained(*drafts: LedgerDraft) -> Segment:
    return chain_segment(
        list(drafts),
        namespace="team-a",
        budget="default",
        head_sequence=0,
        head_hash=None,
        head_segment_uri=None,
    )


def settle(credits: int, settled_by: SettledBy | None) -> LedgerDraft:
    return LedgerDraft(
        kind="settle",
        at=AT,
        namespace="team-a",
        budget="default",
        holder="gw-1",
        credits=credits,
        call=CALL,
        model="stub-model",
        settled_by=settled_by,
    )


@pytest.mark.parametrize("settled_by", list(SettledBy))
def test_a_settle_entry_records_how_it_was_settled_and_verifies(settled_by: SettledBy) -> None:
    segment = chained(settle(5, settled_by))
    entry = segment.entries[0]
    assert entry.settled_by is settled_by
    stored = json.loads(canonical_json(segment.model_dump(mode="json")))
    assert stored["entries"][0]["settled_by"] == settled_by.value
    read_back = Segment.model_validate(stored)
    result = verify_segments([read_back], entry.hash)
    assert result.ok, result.problems
    assert result.spent_since_rollover == 5


def test_changing_how_an_entry_was_settled_breaks_its_hash() -> None:
    segment = chained(settle(5, SettledBy.ESTIMATE_CLIENT_GONE))
    forged = segment.entries[0].model_copy(update={"settled_by": SettledBy.USAGE})
    result = verify_segments(
        [segment.model_copy(update={"entries": [forged]})], segment.entries[0].hash
    )
    assert any("does not match its hash" in problem for problem in result.problems)


def test_an_entry_written_before_the_field_existed_still_verifies() -> None:
    # An entry as 0.1.5 wrote it: no settled_by key in its hashed fields or its JSON.
    fields = {
        "sequence": 1,
        "previous_hash": "sha256:" + "0" * 64,
        "kind": "settle",
        "at": AT.isoformat(),
        "namespace": "team-a",
        "budget": "default",
        "holder": "gw-1",
        "credits": 5,
        "run": "r1",
        "run_uid": "uid-1",
        "attempt": 1,
        "spec_revision": 1,
        "call_id": "c1",
        "model": "stub-model",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "detail": "",
    }
    old_hash = content_hash(fields)
    document = {
        "format": "smartspec.dev/ledger-segment/v1",
        "namespace": "team-a",
        "budget": "default",
        "previous": None,
        "entries": [{**fields, "hash": old_hash}],
    }
    segment = Segment.model_validate(document)
    assert segment.entries[0].settled_by is None
    assert entry_hash(segment.entries[0].model_dump()) == old_hash
    assert verify_segments([segment], old_hash).ok
    # The same draft chained today without a settled_by hashes exactly the same.
    assert chained(settle(5, None)).entries[0].hash == old_hash
