"""The storage boundaries, against a real S3 server (SeaweedFS, tests/testcluster/s3.py).

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract" and "Storage
self-check"; specs/CORE-002-spec-registry.md, "Snapshots"; CORE-003, "Ledger".

A sandbox's only authority over storage is what the operator presigns for it: GET URLs for
single objects and one POST policy for its attempt's prefix, bounded in size and time. Each
test sends a request that must be refused, checks from outside that nothing changed, and
then proves the refusal came from the condition under test: the same request, with only
that condition removed from the policy (signed with the same operator credentials), is
accepted. Were the server to stop enforcing the condition, the first half would fail.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import urllib3

from smartspec.api.sandbox import UploadPolicy
from smartspec.logic.object_keys import attempt_prefix, spec_snapshot_key
from smartspec.logic.upload_policy import upload_conditions
from smartspec.sandbox.transfer import upload
from smartspec.storage import S3ObjectStore, StorageIntegrityError
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))


def fresh_prefix(namespace: str = "tenant-a", attempt: int = 1) -> str:
    return attempt_prefix(namespace, f"run-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), attempt)


@pytest.fixture
def operator_store(s3: S3Endpoint) -> S3ObjectStore:
    """The operator's store: its own scoped credentials, as `smartspec operator` has them."""
    return S3ObjectStore(
        s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region, client=s3.client("operator")
    )


@pytest.fixture
def admin(s3: S3Endpoint) -> Any:
    return s3.client("admin")


def read(admin: Any, s3: S3Endpoint, key: str) -> bytes | None:
    """What the key holds, seen with admin rights (None: no such object)."""
    try:
        body: bytes = admin.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    except admin.exceptions.NoSuchKey:
        return None
    return body


def post(policy: dict[str, Any], key: str, body: bytes) -> int:
    """A presigned POST as a sandbox would send it (fields, then key, then the file)."""
    fields: dict[str, Any] = {**policy["fields"], "key": key, "file": ("f", body, "text/plain")}
    return int(HTTP.request("POST", policy["url"], fields=fields).status)


def policy_without(
    s3: S3Endpoint, prefix: str, *, drop: str, max_bytes: int = 1024, expires: int = 300
) -> dict[str, Any]:
    """The operator's upload policy for `prefix` minus one condition (the counterfactual)."""
    conditions = [c for c in upload_conditions(prefix, max_bytes) if c[0] != drop]
    key = prefix + "${filename}" if drop != "starts-with" else "${filename}"
    post_form = s3.client("operator").generate_presigned_post(
        Bucket=s3.bucket, Key=key, Conditions=conditions, ExpiresIn=expires
    )
    fields = {k: v for k, v in post_form["fields"].items() if k != "key"}
    return {"url": post_form["url"], "fields": fields, "keyPrefix": prefix}


# ------------------------------------------------------------------ presigned POST: prefix


def sibling_attempt(prefix: str) -> str:
    return prefix.replace("attempt-1/", "attempt-2/") + "files/app.py"


def prefix_extension(prefix: str) -> str:
    """attempt-1/ -> attempt-10/: what a prefix without its final slash would admit."""
    return prefix[:-1] + "0/files/app.py"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(sibling_attempt, id="sibling-attempt"),
        pytest.param(prefix_extension, id="prefix-extension"),
        pytest.param(lambda p: fresh_prefix() + "manifest.json", id="another-run"),
        pytest.param(lambda p: fresh_prefix("tenant-b") + "manifest.json", id="another-tenant"),
        pytest.param(
            lambda p: spec_snapshot_key("tenant-a", "sha256:" + "ab" * 32), id="tenant-snapshot"
        ),
    ],
)
def test_a_sandbox_upload_cannot_write_outside_its_prefix(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore, target: Callable[[str], str]
) -> None:
    prefix = fresh_prefix()
    key = target(prefix) + uuid.uuid4().hex[:6]
    assert not key.startswith(prefix)
    admin.put_object(Bucket=s3.bucket, Key=key, Body=b"victim")
    sandbox_policy = operator_store.presign_upload(prefix, 300)

    assert post(sandbox_policy, key, b"overwritten") == 403
    assert read(admin, s3, key) == b"victim"
    assert post(sandbox_policy, prefix + "files/app.py", b"mine") == 204, "inside is fine"

    # Counterfactual: without the starts-with condition the operator's signature covers the
    # same request, and the server accepts it: the prefix condition is what refused it.
    assert post(policy_without(s3, prefix, drop="starts-with"), key, b"overwritten") == 204
    assert read(admin, s3, key) == b"overwritten"


@pytest.mark.parametrize(
    "escape",
    [
        "../attempt-2/files/app.py",
        "files/../../attempt-2/files/app.py",
        "../../../../tenant-b/runs/r/u/attempt-1/manifest.json",
        "files/./../../attempt-2/files/app.py",
        "files/%2e%2e/%2e%2e/attempt-2/files/app.py",
        "files/..%2f..%2fattempt-2/files/app.py",
    ],
)
def test_a_dot_segment_key_cannot_leave_the_prefix(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore, escape: str
) -> None:
    prefix = fresh_prefix()
    key = prefix + escape
    resolved = urllib.parse.urljoin("/" + prefix, urllib.parse.unquote(escape))[1:]
    assert key.startswith(prefix), "the policy's starts-with condition cannot tell"
    assert not resolved.startswith(prefix)
    admin.put_object(Bucket=s3.bucket, Key=resolved, Body=b"victim")
    sandbox_policy = operator_store.presign_upload(prefix, 300)

    status = post(sandbox_policy, key, b"escaped")
    assert read(admin, s3, resolved) == b"victim", f"HTTP {status} reached {resolved}"
    if status == 204:  # stored, then literally under the prefix (encoded forms only)
        assert read(admin, s3, key) == b"escaped"
        assert "%" in escape
    else:
        assert status == 400, "refused as a bad key, not for its signature"
    # What stops it is the server's handling of "..", not the policy: the same policy
    # accepts a key without the dot segments.
    assert post(sandbox_policy, prefix + "files/plain.py", b"ok") == 204


# ------------------------------------------------------------------ presigned POST: size


def test_a_sandbox_upload_cannot_exceed_the_size_limit(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore
) -> None:
    prefix = fresh_prefix()
    limited = operator_store.presign_upload(prefix, 300, max_bytes=1024)

    assert post(limited, prefix + "big", b"x" * 1025) == 400
    assert read(admin, s3, prefix + "big") is None
    assert post(limited, prefix + "exact", b"x" * 1024) == 204
    assert post(limited, prefix + "empty", b"") == 204, "an empty file is a file"

    unlimited = policy_without(s3, prefix, drop="content-length-range")
    assert post(unlimited, prefix + "big", b"x" * 1025) == 204
    assert read(admin, s3, prefix + "big") == b"x" * 1025


# ------------------------------------------------------------------ expiry


def wait_until_past(epoch_seconds: float) -> None:
    """Sleep until the wall clock has passed `epoch_seconds` (plus a second of slack)."""
    time.sleep(max(0.0, epoch_seconds + 1.0 - time.time()))


def test_expired_urls_and_upload_policies_are_refused(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore
) -> None:
    prefix = fresh_prefix()
    admin.put_object(Bucket=s3.bucket, Key=prefix + "manifest.json", Body=b"{}")
    signed_at = time.time()
    short_get = operator_store.presign_get(prefix + "manifest.json", 1)
    short_post = operator_store.presign_upload(prefix, 1)
    wait_until_past(signed_at + 1)

    assert HTTP.request("GET", short_get).status == 403
    assert post(short_post, prefix + "late", b"late") == 403
    assert read(admin, s3, prefix + "late") is None

    # The same requests signed with a longer lifetime go through.
    assert HTTP.request("GET", operator_store.presign_get(prefix + "manifest.json", 300)).data == (
        b"{}"
    )
    assert post(operator_store.presign_upload(prefix, 300), prefix + "late", b"late") == 204


# ------------------------------------------------------------------ presigned GET reuse


def test_a_presigned_get_reads_one_object_with_one_method(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore
) -> None:
    prefix = fresh_prefix()
    mine, other = prefix + "files/app.py", fresh_prefix("tenant-b") + "files/secret.py"
    admin.put_object(Bucket=s3.bucket, Key=mine, Body=b"mine")
    admin.put_object(Bucket=s3.bucket, Key=other, Body=b"secret")
    url = operator_store.presign_get(mine, 300)
    parts = urllib.parse.urlsplit(url)
    assert HTTP.request("GET", url).data == b"mine"

    # Another key with the same signature: refused.
    moved = parts._replace(path=f"/{s3.bucket}/{other}").geturl()
    assert HTTP.request("GET", moved).status == 403
    # Another lifetime: the query is signed too.
    longer = url.replace("X-Amz-Expires=300", "X-Amz-Expires=604800")
    assert longer != url
    assert HTTP.request("GET", longer).status == 403
    # Other methods: writing or deleting through a read URL is refused.
    assert HTTP.request("PUT", url, body=b"overwritten").status == 403
    assert HTTP.request("DELETE", url).status == 403
    assert read(admin, s3, mine) == b"mine"

    # Counterfactual: URLs signed for those requests work, so the operator's credentials
    # allow them; only the signature's key and method binding refused them.
    assert HTTP.request("GET", operator_store.presign_get(other, 300)).data == b"secret"
    put_url = operator_store.client.generate_presigned_url(
        "put_object", Params={"Bucket": s3.bucket, "Key": mine}, ExpiresIn=300
    )
    assert HTTP.request("PUT", put_url, body=b"overwritten").status == 200
    assert read(admin, s3, mine) == b"overwritten"


# ------------------------------------------------------------------ write-once


def race(writers: int, write: Callable[[int], object]) -> list[object]:
    """Start `writers` threads together; each result, or the exception it raised."""
    barrier = threading.Barrier(writers)
    results: list[object] = [None] * writers

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = write(index)
        except Exception as error:  # the caller inspects each outcome
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_snapshot_writers_exactly_one_wins(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore
) -> None:
    writers = 8
    key = spec_snapshot_key("tenant-a", "sha256:" + uuid.uuid4().hex * 2)
    bodies = [f'{{"writer":{i}}}'.encode() for i in range(writers)]

    results = race(writers, lambda i: operator_store.put_if_absent(key, bodies[i], "text/plain"))
    winners = [i for i, result in enumerate(results) if result is True]
    assert len(winners) == 1, results
    assert all(isinstance(r, StorageIntegrityError) for r in results if r is not True)
    assert read(admin, s3, key) == bodies[winners[0]]

    # Counterfactual: the same race without If-None-Match lets every writer through.
    plain = spec_snapshot_key("tenant-a", "sha256:" + uuid.uuid4().hex * 2)
    client = operator_store.client
    statuses = race(
        writers,
        lambda i: client.put_object(Bucket=s3.bucket, Key=plain, Body=bodies[i])[
            "ResponseMetadata"
        ]["HTTPStatusCode"],
    )
    assert statuses == [200] * writers


def test_concurrent_ledger_segment_writers_exactly_one_wins(s3: S3Endpoint, admin: Any) -> None:
    """The gateway's async path (aiohttp, SigV4) with the gateway's own credentials."""
    writers = 8
    key = f"tenant-a/ledger/default/{uuid.uuid4().hex}.json"  # as logic.ledger.segment_key
    bodies = [f'{{"segment":{i}}}'.encode() for i in range(writers)]

    async def all_writers() -> list[object]:
        stores = [
            S3ObjectStore(
                s3.bucket,
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                client=s3.client("gateway"),
            )
            for _ in range(writers)
        ]
        try:
            return list(
                await asyncio.gather(
                    *(
                        store.aput_if_absent(key, bodies[i], "application/json")
                        for i, store in enumerate(stores)
                    ),
                    return_exceptions=True,
                )
            )
        finally:
            for store in stores:
                await store.aclose()

    results = asyncio.run(all_writers())
    winners = [i for i, result in enumerate(results) if result is True]
    assert len(winners) == 1, results
    assert all(isinstance(r, StorageIntegrityError) for r in results if r is not True)
    assert read(admin, s3, key) == bodies[winners[0]]


# ------------------------------------------------------------------ identities


def test_each_identity_writes_only_its_own_areas(s3: S3Endpoint, admin: Any) -> None:
    """The operator and the gateway hold separate credentials, scoped as the chart says."""
    operator, gateway = s3.client("operator", retries=1), s3.client("gateway", retries=1)
    allowed = [
        (operator, "tenant-a/specs/sha256/x.json"),
        (operator, "tenant-a/runs/r/u/attempt-1/manifest.json"),
        (gateway, "tenant-a/ledger/default/1.json"),
        (gateway, "tenant-a/transcripts/sha256/x.json"),
    ]
    refused = [
        (operator, "tenant-a/ledger/default/1.json"),
        (operator, "tenant-a/transcripts/sha256/x.json"),
        (gateway, "tenant-a/specs/sha256/x.json"),
        (gateway, "tenant-a/runs/r/u/attempt-1/manifest.json"),
    ]
    suffix = uuid.uuid4().hex
    for client, key in allowed:
        client.put_object(Bucket=s3.bucket, Key=key + suffix, Body=b"ok")
    for client, key in refused:
        with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
            client.put_object(Bucket=s3.bucket, Key=key + suffix + "-refused", Body=b"no")
        assert read(admin, s3, key + suffix + "-refused") is None
    for client in (operator, gateway):
        with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
            client.create_bucket(Bucket=f"smartspec-other-{suffix[:8]}")


def test_a_policy_signed_by_the_operator_cannot_reach_the_gateways_areas(
    s3: S3Endpoint, admin: Any
) -> None:
    """Even a policy with no prefix condition acts with the operator's rights only."""
    unscoped = policy_without(s3, fresh_prefix(), drop="starts-with")
    key = f"tenant-a/ledger/default/{uuid.uuid4().hex}.json"
    assert post(unscoped, key, b"forged segment") == 403
    assert read(admin, s3, key) is None


def test_the_sandbox_upload_code_works_inside_its_prefix(
    s3: S3Endpoint, admin: Any, operator_store: S3ObjectStore
) -> None:
    """The sandbox's own client (urllib, file part last) against the real policy checks."""
    prefix = fresh_prefix()
    policy = UploadPolicy.model_validate(operator_store.presign_upload(prefix, 300))
    key = upload(policy, "files/pkg/app.py", b"print('hi')\n", "text/x-python")
    assert key == prefix + "files/pkg/app.py"
    assert read(admin, s3, key) == b"print('hi')\n"
