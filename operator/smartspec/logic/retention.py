"""Retention: what is due for deletion, what is exempt, and what is never deleted.

Contract: specs/CORE-001-resources.md, section "Retention".

Pure: the sweeper and the run finalizer (`smartspec.reconcilers.retention`,
`smartspec.reconcilers.run_cleanup`) list and delete; every decision is made here.
The ledger (`<ns>/ledger/`), Spec snapshots (`<ns>/specs/`) and attestations are never
deleted: the audit trail outlives the data it describes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from smartspec.api.v1alpha1.creditbudget import RetentionPolicy
from smartspec.logic.provenance import ATTESTATION_NAME

__all__ = [
    "FINALIZER",
    "FORCE_ANNOTATION",
    "KEEP_ANNOTATION",
    "KEEP_VALUE",
    "Action",
    "FinishedRun",
    "Lifetimes",
    "StoredObject",
    "deletable",
    "exemption",
    "finalizer_backoff",
    "finalizer_gives_up",
    "lifetimes",
    "namespace_transcript_lifetime",
    "orphans",
    "run_action",
    "transcript_due",
]

FINALIZER: Final = "smartspec.dev/artifacts"
"""Held by every pinned GenerationRun until its stored files are deleted."""
FORCE_ANNOTATION: Final = "smartspec.dev/force-finalizer-removal"
"""Set to "true" by an admin: let the run go now, files or not (the sweep deletes them)."""
KEEP_ANNOTATION: Final = "smartspec.dev/retention"
KEEP_VALUE: Final = "keep"
"""`smartspec.dev/retention: keep` exempts a run object from deletion by retention."""
GITOPS_ANNOTATIONS: Final = ("argocd.argoproj.io/tracking-id",)
"""Argo CD's annotation tracking: a run it manages would be re-created if deleted."""
GITOPS_LABELS: Final = ("app.kubernetes.io/instance",)
"""Argo CD's label tracking (and Helm's release label): the same."""
FINALIZER_FIRST_RETRY_SECONDS: Final = 5.0
FINALIZER_MAX_RETRY_SECONDS: Final = 300.0


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Lifetimes:
    """Resolved lifetimes in seconds; None keeps forever."""

    succeeded_run: int | None = None
    failed_run: int | None = None
    artifact: int | None = None
    transcript: int | None = None


def lifetimes(policy: RetentionPolicy | None, defaults: Lifetimes) -> Lifetimes:
    """A budget's policy when it states one (whole: left out is forever), else the defaults."""
    if policy is None:
        return defaults
    return Lifetimes(
        succeeded_run=policy.succeeded_run_seconds,
        failed_run=policy.failed_run_seconds,
        artifact=policy.artifact_seconds,
        transcript=policy.transcript_seconds,
    )


def exemption(metadata: Mapping[str, Any]) -> str | None:
    """Why retention must not delete this run object, or None.

    Files still follow `artifactSeconds`: removing them changes no manifest a GitOps tool
    compares, while deleting the object would make it apply the run again, at a cost.
    """
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    if annotations.get(KEEP_ANNOTATION) == KEEP_VALUE:
        return f"annotation {KEEP_ANNOTATION}={KEEP_VALUE}"
    for name in GITOPS_ANNOTATIONS:
        if name in annotations:
            return f"managed by GitOps (annotation {name})"
    for name in GITOPS_LABELS:
        if name in labels:
            return f"managed by GitOps (label {name})"
    return None


class Action(StrEnum):
    """What retention does to one finished run now."""

    KEEP = "Keep"
    DELETE_ARTIFACTS = "DeleteArtifacts"
    DELETE_RUN = "DeleteRun"


@dataclass(frozen=True)
class FinishedRun:
    """What retention needs to know of a finished run."""

    succeeded: bool
    completed_at: datetime
    signed: bool
    """Attested, or attestation is off: only then may its files go (CORE-005 reads them)."""
    artifacts_deleted: bool
    exempt: bool


def run_action(run: FinishedRun, lives: Lifetimes, now: datetime) -> Action:
    """Delete the run (and its files) once past its lifetime unless exempt; else delete its
    files once past theirs; never before the run is signed."""
    if not run.signed:
        return Action.KEEP
    run_life = lives.succeeded_run if run.succeeded else lives.failed_run
    if not run.exempt and _past(run.completed_at, run_life, now):
        return Action.DELETE_RUN
    if not run.artifacts_deleted and _past(run.completed_at, lives.artifact, now):
        return Action.DELETE_ARTIFACTS
    return Action.KEEP


def transcript_due(stored: StoredObject, lifetime: int | None, now: datetime) -> bool:
    """A transcript is due once older than its lifetime (written once, so its age is true)."""
    return _past(stored.last_modified, lifetime, now)


def namespace_transcript_lifetime(
    budget_lifetimes: Iterable[Lifetimes], defaults: Lifetimes
) -> int | None:
    """Transcripts belong to the namespace, not to one budget: the longest lifetime of its
    budgets wins (forever beats any), and a namespace without budgets has the defaults'."""
    found = [lives.transcript for lives in budget_lifetimes]
    if not found:
        return defaults.transcript
    if any(life is None for life in found):
        return None
    return max(life for life in found if life is not None)


def deletable(objects: Iterable[StoredObject]) -> list[StoredObject]:
    """Everything but the attestation, which stays with the ledger as the audit trail."""
    return [o for o in objects if not o.key.endswith("/" + ATTESTATION_NAME)]


def orphans(
    run_objects: Iterable[StoredObject],
    runs_prefix: str,
    live_uids: frozenset[str],
    cutoff: datetime,
) -> Iterator[list[StoredObject]]:
    """Groups of `<runs_prefix><run>/<uid>/…` whose uid no run has, each deletable once its
    newest object is older than `cutoff` (the run listing's time less a grace: a run
    created after the listing cannot be mistaken for a deleted one). Objects come sorted by
    key, as S3 lists them, so groups are contiguous and memory stays one group."""
    group: list[StoredObject] = []
    group_uid = ""
    for stored in run_objects:
        parts = stored.key[len(runs_prefix) :].split("/", 2)
        uid = parts[1] if len(parts) == 3 else ""
        if group and (uid != group_uid):
            yield from _orphan(group, group_uid, live_uids, cutoff)
            group = []
        group_uid = uid
        group.append(stored)
    if group:
        yield from _orphan(group, group_uid, live_uids, cutoff)


def _orphan(
    group: list[StoredObject], uid: str, live_uids: frozenset[str], cutoff: datetime
) -> Iterator[list[StoredObject]]:
    if not uid or uid in live_uids:
        return
    if max(o.last_modified for o in group) >= cutoff:
        return
    objects = deletable(group)
    if objects:
        yield objects


def finalizer_backoff(failures: int) -> float:
    """Seconds before the next try after `failures` failed ones: 5, 10, 20, ... 300."""
    exponent = max(failures - 1, 0)
    return min(
        FINALIZER_FIRST_RETRY_SECONDS * 2.0 ** min(exponent, 16), FINALIZER_MAX_RETRY_SECONDS
    )


def finalizer_gives_up(
    deletion_requested: datetime, now: datetime, timeout_seconds: int, *, forced: bool
) -> bool:
    """The finalizer lets the run go, files left, when forced or past its deadline: a
    deletion (a namespace's too) never waits on the store forever."""
    return forced or now - deletion_requested >= timedelta(seconds=timeout_seconds)


def _past(start: datetime, lifetime: int | None, now: datetime) -> bool:
    return lifetime is not None and now - start >= timedelta(seconds=lifetime)
