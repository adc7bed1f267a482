"""What a finished run used and produced, read from the API and the bucket, each checked.

Contract: specs/CORE-005-provenance.md, section "What is gathered".

Nothing is taken on trust before it is signed: every generated file, the manifest, the spec
snapshot and every transcript is read and hashed here; a stored object that differs from
the digest the run recorded for it stops the attestation (`AttestationRefusedError`). Blocking
S3 calls run in worker threads, never on kopf's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from smartspec.api.sandbox import FILES_PREFIX, MANIFEST_KEY, REPORT_JUNIT_KEY, Manifest
from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.generationrun import GenerationRun, Usage
from smartspec.kube.client import KubeClient, NotFoundError
from smartspec.logic import provenance as p
from smartspec.logic.ledger import Segment
from smartspec.logic.object_keys import transcripts_prefix
from smartspec.logic.provenance_ledger import summarise, walk
from smartspec.storage import ObjectMissingError, S3ObjectStore

API = f"/apis/{GROUP}/{VERSION}"
_ROLE_IMAGES = {"generator": p.GENERATOR_IMAGE, "tester": p.TESTER_IMAGE}


class AttestationError(RuntimeError):
    """The attestation cannot be made now; try again after `delay` seconds."""

    delay = 10.0


class AttestationNotReadyError(AttestationError):
    """An input is not final yet (the gateway has not recorded every charge)."""

    delay = 3.0


class AttestationRefusedError(AttestationError):
    """A stored input differs from what the run recorded: nothing is signed."""

    delay = 300.0


@dataclass(frozen=True)
class GatherSettings:
    builder_id: str
    builder_version: str
    ledger_lookback: timedelta
    usage_grace: timedelta


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_of(uri: str) -> str:
    """The object key of an s3://bucket/key URI."""
    return uri.split("/", 3)[3]


async def read(store: S3ObjectStore, key: str) -> bytes | None:
    try:
        return await asyncio.to_thread(store.get, key)
    except ObjectMissingError:
        return None


async def read_checked(store: S3ObjectStore, key: str, sha256_hex: str, what: str) -> bytes:
    body = await read(store, key)
    if body is None:
        raise AttestationRefusedError(f"{what} {store.uri(key)} is missing")
    actual = p.sha256_hex(body)
    if actual != sha256_hex:
        raise AttestationRefusedError(
            f"{what} {store.uri(key)} has sha256 {actual}, the run recorded {sha256_hex}"
        )
    return body


async def gather(
    run: GenerationRun, kube: KubeClient, store: S3ObjectStore, settings: GatherSettings
) -> p.RunEvidence:
    status = run.status
    if status is None or status.completion_time is None:
        raise AttestationNotReadyError("the run has no completionTime yet")
    namespace, name, uid = run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    created = (run.metadata.model_extra or {}).get("creationTimestamp")
    started = status.start_time or (datetime.fromisoformat(created) if created else None)
    usage = (status.usage or Usage()).to_wire()
    succeeded = next((c for c in status.conditions if c.type == "Succeeded"), None)
    failure = None
    if status.phase != "Succeeded":
        failure = p.Failure(
            reason=succeeded.reason if succeeded else "Unknown",
            message=(succeeded.message or "") if succeeded else "",
            attempts=[
                a.model_dump(
                    mode="json",
                    by_alias=True,
                    exclude_none=True,
                    include={"number", "result", "failure_kind", "reason", "message"},
                )
                for a in status.attempts
            ],
        )
    files, manifest = await _files(run, store)
    report, junit, coverage = await _report(run, store)
    ledger = await _ledger(run, kube, store, settings, started or status.completion_time)
    transcripts, missing = await _transcripts(run, store, ledger, settings, started)
    _check_usage(usage, ledger, status.completion_time, settings)
    return p.RunEvidence(
        namespace=namespace,
        name=name,
        uid=uid,
        run_spec=run.spec.to_wire(),
        outcome="Succeeded" if failure is None else "Failed",
        started_on=rfc3339(started or status.completion_time),
        finished_on=rfc3339(status.completion_time),
        builder_id=settings.builder_id,
        builder_version=settings.builder_version,
        files=files,
        snapshot=await _snapshot(run, store),
        images=await _images(run, kube),
        transcripts=transcripts,
        usage=usage,
        failure=failure,
        replayed=await _replayed(run, kube),
        manifest=manifest,
        report=report,
        junit=junit,
        coverage=coverage,
        ledger=ledger,
        calls_without_transcript=missing,
    )


async def _files(
    run: GenerationRun, store: S3ObjectStore
) -> tuple[list[p.Descriptor], p.Descriptor | None]:
    """The subjects: every file of the run's latest manifest, each hashed here."""
    artifacts = run.status.artifacts if run.status else None
    if artifacts is None:
        return [], None
    prefix = key_of(artifacts.uri).removesuffix(FILES_PREFIX)
    raw = await read_checked(
        store, prefix + MANIFEST_KEY, p.hex_of(artifacts.manifest_sha256), "the manifest"
    )
    manifest = Manifest.model_validate_json(raw)
    files = []
    for entry in manifest.files:
        key = prefix + FILES_PREFIX + entry.path
        await read_checked(store, key, p.hex_of(entry.sha256), f"file {entry.path}")
        files.append(
            p.Descriptor(name=entry.path, uri=store.uri(key), sha256=p.hex_of(entry.sha256))
        )
    descriptor = p.Descriptor(
        name=p.MANIFEST, uri=store.uri(prefix + MANIFEST_KEY), sha256=p.sha256_hex(raw)
    )
    return files, descriptor


async def _report(
    run: GenerationRun, store: S3ObjectStore
) -> tuple[p.Descriptor | None, p.Descriptor | None, Mapping[str, Any] | None]:
    evidence = run.status.evidence if run.status else None
    if evidence is None:
        return None, None, None
    key = key_of(evidence.report_uri)
    raw = await read(store, key)
    if raw is None:
        raise AttestationRefusedError(f"the test report {evidence.report_uri} is missing")
    document = json.loads(raw)
    tests = document.get("tests") or {}
    report = p.Descriptor(
        name=p.TEST_REPORT,
        uri=evidence.report_uri,
        sha256=p.sha256_hex(raw),
        annotations={"result": document.get("result"), "tests": tests},
    )
    junit_key = key.rsplit("/", 2)[0] + "/" + REPORT_JUNIT_KEY
    junit_raw = await read(store, junit_key)
    junit = (
        p.Descriptor(p.TEST_REPORT_JUNIT, store.uri(junit_key), p.sha256_hex(junit_raw))
        if junit_raw is not None
        else None
    )
    return report, junit, document.get("requirements") or {}


async def _snapshot(run: GenerationRun, store: S3ObjectStore) -> p.Descriptor | None:
    pinned = run.status.pinned_spec if run.status else None
    if pinned is None:
        return None
    digest = p.hex_of(pinned.content_hash)
    await read_checked(store, key_of(pinned.snapshot_uri), digest, "the spec snapshot")
    return p.Descriptor(
        name=p.SPEC_SNAPSHOT,
        uri=pinned.snapshot_uri,
        sha256=digest,
        annotations={"spec": pinned.name, "revision": pinned.revision},
    )


def image_digest(image_id: str) -> str | None:
    """The sha256 of a container status's imageID (`sha256:…`, `repo@sha256:…`), if any."""
    _, marker, tail = image_id.rpartition("sha256:")
    return tail if marker and len(tail) == 64 else None


async def _images(run: GenerationRun, kube: KubeClient) -> list[p.Descriptor]:
    """The sandbox images as the nodes ran them, by digest, from the run's pods."""
    namespace = run.metadata.namespace or ""
    pods = await kube.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": f"smartspec.dev/run-uid={run.metadata.uid}"},
    )
    seen: dict[tuple[str, str, str | None], list[int]] = {}
    for pod in pods.get("items", []):
        labels = pod.get("metadata", {}).get("labels") or {}
        role, attempt = labels.get("smartspec.dev/role"), labels.get("smartspec.dev/attempt")
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("name") != role or role not in _ROLE_IMAGES or not attempt:
                continue
            found = (
                role,
                str(container.get("image", "")),
                image_digest(container.get("imageID", "")),
            )
            seen.setdefault(found, []).append(int(attempt))
    images = []
    for (role, image, digest), attempts in sorted(seen.items(), key=lambda i: (i[0][0], min(i[1]))):
        annotations: dict[str, Any] = {"attempts": sorted(attempts)}
        if digest is None:
            annotations["digest"] = "not reported by the node"
        images.append(p.Descriptor(_ROLE_IMAGES[role], f"oci://{image}", digest, annotations))
    return images


async def _ledger(
    run: GenerationRun,
    kube: KubeClient,
    store: S3ObjectStore,
    settings: GatherSettings,
    since: datetime,
) -> p.LedgerSummary | None:
    """The run's range on its budget's chain, walked back from the head to before the run."""
    if not run.spec.generator.backend.calls_models:
        return None
    namespace, budget = run.metadata.namespace or "", run.spec.budget_ref.name
    try:
        body = await kube.get(f"{API}/namespaces/{namespace}/creditbudgets/{budget}")
    except NotFoundError:
        return None
    head = (body.get("status") or {}).get("ledgerHead") or {}
    if not head.get("segmentUri"):
        return None
    cutoff = since - settings.ledger_lookback
    segments = await asyncio.to_thread(_segments_since, store, head["segmentUri"], cutoff)
    walked = walk(segments, down_to=0)
    if walked.problem is not None:
        raise AttestationRefusedError(f"budget {budget}'s ledger is broken: {walked.problem}")
    return summarise(budget, walked.entries, run.metadata.uid or "")


def _segments_since(
    store: S3ObjectStore, uri: str | None, cutoff: datetime
) -> list[tuple[str, Segment]]:
    """Segments from `uri` back until one that ends before `cutoff` (it holds no entry of a
    run created after it)."""
    return list(_iter_segments(store, uri, cutoff))


def _iter_segments(
    store: S3ObjectStore, uri: str | None, cutoff: datetime
) -> Iterator[tuple[str, Segment]]:
    while uri is not None:
        segment = Segment.model_validate_json(store.get(key_of(uri)))
        yield uri, segment
        if segment.entries and datetime.fromisoformat(segment.entries[-1].at) < cutoff:
            return
        uri = segment.previous.segment_uri if segment.previous is not None else None


async def _transcripts(
    run: GenerationRun,
    store: S3ObjectStore,
    ledger: p.LedgerSummary | None,
    settings: GatherSettings,
    since: datetime | None,
) -> tuple[list[p.Descriptor], list[str]]:
    """Transcripts attributed to the run, found among those written since it started."""
    if ledger is None or not ledger.call_ids or since is None:
        return [], []
    namespace, uid = run.metadata.namespace or "", run.metadata.uid or ""
    cutoff = since - settings.ledger_lookback
    listed = await asyncio.to_thread(store.list_keys, f"{transcripts_prefix(namespace)}sha256/")
    found: list[tuple[int, str, p.Descriptor]] = []
    for key, modified in sorted(listed):
        if modified < cutoff:
            continue
        raw = await read(store, key)
        if raw is None:
            continue
        attribution = json.loads(raw).get("attribution") or {}
        if attribution.get("runUid") != uid:
            continue
        call = str(attribution.get("callId", ""))
        attempt = int(attribution.get("attempt", 0))
        annotations = {"attempt": attempt, "callId": call}
        found.append(
            (
                attempt,
                call,
                p.Descriptor(p.TRANSCRIPT, store.uri(key), p.sha256_hex(raw), annotations),
            )
        )
    found.sort(key=lambda item: (item[0], item[1]))
    recorded = {call for _, call, _ in found}
    return [d for _, _, d in found], [c for c in ledger.call_ids if c not in recorded]


def _check_usage(
    usage: Mapping[str, Any],
    ledger: p.LedgerSummary | None,
    finished: datetime,
    settings: GatherSettings,
) -> None:
    """Wait (a little) until the ledger and the run's usage tell the same credits: the
    gateway writes both within a flush of each other. After the grace period the statement
    records both as they are, and the verifier reports the difference."""
    ledger_credits = ledger.credits if ledger is not None else 0
    if ledger_credits == usage.get("credits", 0):
        return
    if datetime.now(UTC) - finished < settings.usage_grace:
        raise AttestationNotReadyError(
            f"the ledger charges the run {ledger_credits} credits, its usage says "
            f"{usage.get('credits', 0)}; waiting for the gateway to record both"
        )


async def _replayed(run: GenerationRun, kube: KubeClient) -> p.Descriptor | None:
    """A replay's answers are the replayed run's transcripts: bind its attestation."""
    if run.spec.replay_of is None:
        return None
    namespace, name = run.metadata.namespace or "", run.spec.replay_of.name
    try:
        body = await kube.get(f"{API}/namespaces/{namespace}/generationruns/{name}")
    except NotFoundError:
        return None
    provenance = (body.get("status") or {}).get("provenance")
    if not provenance:
        return None
    return p.Descriptor(
        name=p.REPLAYED_RUN,
        uri=provenance["uri"],
        sha256=p.hex_of(provenance["sha256"]),
        annotations={"run": name, "uid": body["metadata"]["uid"]},
    )
