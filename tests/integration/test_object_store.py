"""The gateway's write-once S3 path (aiohttp + SigV4) against a real HTTP S3 endpoint.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Ledger" and "Transcripts";
specs/CORE-004-generation-runs.md, "Storage".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from typing import Any

import pytest
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from smartspec.storage import S3ObjectStore, StorageIntegrityError
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration
HTTP = urllib3.PoolManager(retries=False)


def test_conditional_puts_never_overwrite_and_first_wins_skips_the_read_back(
    s3: S3Endpoint, s3_client: Any
) -> None:
    store = S3ObjectStore(
        s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region, client=s3_client
    )
    key = f"it/{uuid.uuid4().hex}.json"

    async def body() -> None:
        try:
            assert await store.aput_if_absent(key, b'{"n":1}', "application/json") is True
            assert await store.aput_if_absent(key, b'{"n":1}', "application/json") is False
            with pytest.raises(StorageIntegrityError, match="different content"):
                await store.aput_if_absent(key, b'{"n":2}', "application/json")
            second = b'{"n":3}'
            assert (
                await store.aput_if_absent(key, second, "application/json", first_wins=True)
                is False
            )
        finally:
            await store.aclose()

    asyncio.run(body())
    assert store.get(key) == b'{"n":1}', "the first body stays"


def test_both_write_paths_send_a_checksum_the_server_verifies(s3: S3Endpoint) -> None:
    """SeaweedFS stores a body whose signed payload hash does not match it; a mismatched
    x-amz-checksum-sha256 it refuses. So both paths send the checksum, and it is stored."""
    gateway = S3ObjectStore(
        s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region, client=s3.client("gateway")
    )
    operator = S3ObjectStore(
        s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region, client=s3.client("operator")
    )
    body = b'{"n":1}'
    expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
    ledger_key = f"it/ledger/default/{uuid.uuid4().hex}.json"
    snapshot_key = f"it/specs/sha256/{uuid.uuid4().hex}.json"

    async def write() -> None:
        try:
            assert await gateway.aput_if_absent(ledger_key, body, "application/json") is True
        finally:
            await gateway.aclose()

    asyncio.run(write())
    assert operator.put_if_absent(snapshot_key, body, "application/json") is True
    admin = s3.client("admin")
    for key in (ledger_key, snapshot_key):
        head = admin.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == expected, key

    # Why the header: the same signed PUT of another body, with and without it.
    wrong = hashlib.sha256(b"other").digest()

    def signed_put(key: str, headers: dict[str, str]) -> int:
        url = f"{s3.endpoint_url}/{s3.bucket}/{key}"
        request = AWSRequest(method="PUT", url=url, data=body, headers=headers)
        credentials = s3.client("gateway")._request_signer._credentials
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", s3.region).add_auth(request)
        return int(HTTP.request("PUT", url, body=body, headers=dict(request.headers)).status)

    checked = f"it/ledger/default/{uuid.uuid4().hex}.json"
    assert (
        signed_put(
            checked,
            {
                "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
                "x-amz-checksum-sha256": base64.b64encode(wrong).decode(),
            },
        )
        == 400
    )
    assert "Contents" not in admin.list_objects_v2(Bucket=s3.bucket, Prefix=checked)
    unchecked = f"it/ledger/default/{uuid.uuid4().hex}.json"
    assert signed_put(unchecked, {"x-amz-content-sha256": wrong.hex()}) == 200
    stored = admin.get_object(Bucket=s3.bucket, Key=unchecked)["Body"].read()
    assert stored == body, "the payload hash alone did not protect this body"
