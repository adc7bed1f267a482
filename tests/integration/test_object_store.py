"""The gateway's write-once S3 path (aiohttp + SigV4) against a real HTTP S3 endpoint.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Ledger" and "Transcripts".
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from smartspec.storage import S3ObjectStore, StorageIntegrityError
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration


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
