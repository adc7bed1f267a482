"""The storage self-check's verdicts and the upload policy's conditions, as pure functions.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract" and "Storage
self-check". The probes themselves run against a real S3 server in
tests/integration/test_storage_boundaries.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from smartspec.logic.storage_check import (
    CHECK_ROOT,
    Observations,
    describe,
    failures,
    judge,
    probe_keys,
)
from smartspec.logic.upload_policy import UPLOAD_MAX_OBJECT_BYTES, upload_conditions

# What SeaweedFS answered when probed (tests/integration/test_storage_boundaries.py).
SEAWEEDFS = Observations(
    conditional_first=200,
    conditional_second=412,
    conditional_kept=True,
    dotted_put=400,
    dotted_resolved=False,
    upload_inside=204,
    upload_outside=403,
    upload_outside_stored=False,
    upload_dotted=400,
    upload_dotted_resolved=False,
    upload_oversize=400,
    upload_oversize_stored=False,
)


def test_a_backend_that_enforces_everything_passes_every_check() -> None:
    results = judge(SEAWEEDFS)
    assert failures(results) == []
    assert [result.name for result in results] == [
        "conditional-writes",
        "dot-segments",
        "upload",
        "upload-prefix",
        "upload-dot-segments",
        "upload-size",
    ]
    assert all(line.startswith("ok") for line in describe(results))


@pytest.mark.parametrize(
    ("backend", "changes"),
    [
        # A backend ignoring If-None-Match overwrites: write-once is gone.
        ("no conditional writes", {"conditional_second": 200, "conditional_kept": False}),
        ("conditional write 501", {"conditional_second": 501}),
        ("first conditional write refused", {"conditional_first": 501}),
        # versitygw (posix): the policy checks the raw key, the filesystem resolves "..".
        ("dot segments resolved", {"dotted_put": 200, "dotted_resolved": True}),
        ("upload through dot segments", {"upload_dotted": 204, "upload_dotted_resolved": True}),
        # moto's server: presigned POST policies are not checked at all.
        ("prefix not enforced", {"upload_outside": 204, "upload_outside_stored": True}),
        ("size not enforced", {"upload_oversize": 204, "upload_oversize_stored": True}),
        ("stored despite an error status", {"upload_outside_stored": True}),
        ("uploads refused", {"upload_inside": 403}),
        ("server error on the prefix probe", {"upload_outside": 503}),
    ],
)
def test_each_broken_guarantee_fails_its_check(backend: str, changes: dict[str, object]) -> None:
    results = judge(replace(SEAWEEDFS, **changes))  # type: ignore[arg-type]
    broken = failures(results)
    assert len(broken) == 1, f"{backend}: {describe(results)}"
    assert describe(broken)[0].startswith("FAIL")


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"dotted_put": 200}, "stored literally"),
        ({"upload_dotted": 204}, "stored literally, inside the prefix"),
    ],
)
def test_dot_segments_stored_literally_are_safe(changes: dict[str, object], detail: str) -> None:
    results = judge(replace(SEAWEEDFS, **changes))  # type: ignore[arg-type]
    assert failures(results) == []
    assert any(detail in line for line in describe(results))


def test_probe_keys_live_under_a_root_no_namespace_can_have() -> None:
    keys = probe_keys("abc123")
    assert keys.base == f"{CHECK_ROOT}/runs/abc123/"
    assert "_" in CHECK_ROOT, "namespaces are DNS labels: no underscore"
    assert keys.upload_dotted.startswith(keys.upload_prefix), "passes a prefix-only policy"
    assert not keys.upload_outside.startswith(keys.upload_prefix)
    assert keys.dotted_target not in keys.dotted
    assert len(set(keys.all_keys())) == len(keys.all_keys())
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match="one plain key segment"):
            probe_keys(bad)


def test_upload_conditions_pin_the_prefix_and_the_size() -> None:
    prefix = "team-a/runs/r/uid/attempt-1/"
    assert upload_conditions(prefix, UPLOAD_MAX_OBJECT_BYTES) == [
        ["starts-with", "$key", prefix],
        ["content-length-range", 0, UPLOAD_MAX_OBJECT_BYTES],
    ]
    for bad_prefix in ("team-a/runs/r", "team-a/../r/"):
        with pytest.raises(ValueError, match="an upload prefix"):
            upload_conditions(bad_prefix, 10)
    with pytest.raises(ValueError, match="at least one byte"):
        upload_conditions(prefix, 0)
