"""Retention's pure decisions (specs/CORE-001-resources.md, section "Retention")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from smartspec.api.v1alpha1.creditbudget import CreditBudgetSpec, RetentionPolicy
from smartspec.logic.object_keys import run_prefix, runs_prefix
from smartspec.logic.provenance import attestation_key
from smartspec.logic.retention import (
    Action,
    FinishedRun,
    Lifetimes,
    StoredObject,
    deletable,
    exemption,
    finalizer_backoff,
    finalizer_gives_up,
    lifetimes,
    namespace_transcript_lifetime,
    orphans,
    run_action,
    transcript_due,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
DAY = 86400
DEFAULTS = Lifetimes(
    succeeded_run=30 * DAY, failed_run=90 * DAY, artifact=None, transcript=90 * DAY
)


def finished(
    *, succeeded: bool = True, age: int = 0, signed: bool = True, exempt: bool = False
) -> FinishedRun:
    return FinishedRun(
        succeeded=succeeded,
        completed_at=NOW - timedelta(seconds=age),
        signed=signed,
        artifacts_deleted=False,
        exempt=exempt,
    )


def test_a_budget_without_a_policy_follows_the_defaults() -> None:
    assert lifetimes(None, DEFAULTS) == DEFAULTS


def test_a_stated_policy_is_whole_and_what_it_leaves_out_is_forever() -> None:
    lives = lifetimes(RetentionPolicy(succeeded_run_seconds=60), DEFAULTS)
    assert lives == Lifetimes(succeeded_run=60)


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (finished(age=30 * DAY - 1), Action.KEEP),
        (finished(age=30 * DAY), Action.DELETE_RUN),
        (finished(succeeded=False, age=30 * DAY), Action.KEEP),
        (finished(succeeded=False, age=90 * DAY), Action.DELETE_RUN),
        (finished(age=400 * DAY, signed=False), Action.KEEP),
        (finished(age=400 * DAY, exempt=True), Action.KEEP),
    ],
)
def test_runs_go_after_their_lifetime_once_signed_unless_exempt(
    run: FinishedRun, expected: Action
) -> None:
    assert run_action(run, DEFAULTS, NOW) is expected


def test_files_go_before_the_run_when_their_lifetime_is_shorter() -> None:
    lives = Lifetimes(succeeded_run=30 * DAY, artifact=DAY)
    assert run_action(finished(age=DAY - 1), lives, NOW) is Action.KEEP
    assert run_action(finished(age=DAY), lives, NOW) is Action.DELETE_ARTIFACTS
    exempt = finished(age=40 * DAY, exempt=True)
    assert run_action(exempt, lives, NOW) is Action.DELETE_ARTIFACTS  # files still age out
    done = FinishedRun(True, NOW - timedelta(days=2), True, artifacts_deleted=True, exempt=False)
    assert run_action(done, lives, NOW) is Action.KEEP


def test_forever_means_never() -> None:
    run = finished(age=99 * 366 * DAY)
    assert run_action(run, Lifetimes(), NOW) is Action.KEEP


@pytest.mark.parametrize(
    ("metadata", "exempt"),
    [
        ({}, False),
        ({"annotations": {"smartspec.dev/retention": "keep"}}, True),
        ({"annotations": {"smartspec.dev/retention": "no"}}, False),
        ({"annotations": {"argocd.argoproj.io/tracking-id": "app:smartspec.dev/x"}}, True),
        ({"labels": {"app.kubernetes.io/instance": "tenant-a"}}, True),
        ({"labels": {"smartspec.dev/spec": "todo"}}, False),
    ],
)
def test_gitops_and_keep_markers_exempt_the_object(
    metadata: dict[str, object], exempt: bool
) -> None:
    assert (exemption(metadata) is not None) is exempt


def test_transcripts_follow_the_longest_lifetime_of_the_namespace() -> None:
    a, b = Lifetimes(transcript=DAY), Lifetimes(transcript=7 * DAY)
    assert namespace_transcript_lifetime([a, b], DEFAULTS) == 7 * DAY
    assert namespace_transcript_lifetime([a, Lifetimes()], DEFAULTS) is None
    assert namespace_transcript_lifetime([], DEFAULTS) == 90 * DAY
    old = StoredObject("ns/transcripts/sha256/a.json", 10, NOW - timedelta(days=2))
    assert transcript_due(old, DAY, NOW)
    assert not transcript_due(old, 3 * DAY, NOW)
    assert not transcript_due(old, None, NOW)


def stored(key: str, age: int = 7200) -> StoredObject:
    return StoredObject(key, 100, NOW - timedelta(seconds=age))


def test_the_attestation_is_never_deletable() -> None:
    keys = [
        run_prefix("ns", "r", "u1") + "attempt-1/files/app.py",
        attestation_key("ns", "r", "u1"),
    ]
    assert [o.key for o in deletable(stored(k) for k in keys)] == keys[:1]


def test_orphans_are_groups_whose_uid_no_run_has_and_older_than_the_cutoff() -> None:
    prefix = runs_prefix("ns")
    listing = [
        stored(run_prefix("ns", "a", "u-live") + "attempt-1/manifest.json"),
        stored(run_prefix("ns", "a", "u-gone") + "attempt-1/files/x.py"),
        stored(run_prefix("ns", "a", "u-gone") + "attempt-1/manifest.json"),
        stored(attestation_key("ns", "a", "u-gone")),
        stored(run_prefix("ns", "b", "u-fresh") + "attempt-1/manifest.json", age=10),
        stored(run_prefix("ns", "b", "u-fresh") + "attempt-1/old.json", age=9000),
        stored(run_prefix("ns", "c", "u-signed-only") + "provenance.dsse.json"),
    ]
    cutoff = NOW - timedelta(hours=1)
    groups = list(orphans(listing, prefix, frozenset({"u-live"}), cutoff))
    assert [[o.key for o in g] for g in groups] == [
        [
            run_prefix("ns", "a", "u-gone") + "attempt-1/files/x.py",
            run_prefix("ns", "a", "u-gone") + "attempt-1/manifest.json",
        ]
    ]


def test_the_finalizer_backs_off_and_gives_up_only_when_forced_or_late() -> None:
    assert [finalizer_backoff(n) for n in (1, 2, 3, 7, 100)] == [5, 10, 20, 300, 300]
    asked = NOW - timedelta(seconds=599)
    assert not finalizer_gives_up(asked, NOW, 600, forced=False)
    assert finalizer_gives_up(asked, NOW, 600, forced=True)
    assert finalizer_gives_up(asked - timedelta(seconds=1), NOW, 600, forced=False)


@pytest.mark.parametrize("bad", [-1, 1.5, "30d", 101 * 366 * DAY])
def test_a_lifetime_that_is_not_whole_seconds_in_range_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match=r"retention\.succeededRunSeconds"):
        CreditBudgetSpec.model_validate(
            {"limitCredits": 10, "retention": {"succeededRunSeconds": bad}}
        )
