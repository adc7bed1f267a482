"""Write-once object storage (CORE-002, "Snapshots"), against moto's in-process S3.

moto checks none of the conditions of a presigned POST: these tests only read the policy we
sign. tests/integration/test_storage_boundaries.py sends requests to a real S3 server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from smartspec.logic.upload_policy import UPLOAD_MAX_OBJECT_BYTES
from smartspec.storage import (
    InMemoryObjectStore,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    StorageIntegrityError,
)

BUCKET = "smartspec-unit"
SIGV4 = Config(signature_version="s3v4")  # as S3ObjectStore builds its own client


@pytest.fixture
def s3_client() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", config=SIGV4)
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture(params=["s3", "memory"])
def store(request: pytest.FixtureRequest, s3_client: Any) -> ObjectStore:
    if request.param == "s3":
        return S3ObjectStore(BUCKET, client=s3_client)
    return InMemoryObjectStore(BUCKET)


def test_first_write_creates_and_second_is_a_no_op(store: ObjectStore) -> None:
    assert store.put_if_absent("ns/specs/a.json", b"{}", "application/json") is True
    assert store.put_if_absent("ns/specs/a.json", b"{}", "application/json") is False
    assert store.get("ns/specs/a.json") == b"{}"
    assert store.uri("ns/specs/a.json") == f"s3://{BUCKET}/ns/specs/a.json"


def test_a_different_body_never_overwrites(store: ObjectStore) -> None:
    store.put_if_absent("k", b"original", "text/plain")
    with pytest.raises(StorageIntegrityError, match="exists with different content"):
        store.put_if_absent("k", b"tampered", "text/plain")
    assert store.get("k") == b"original"


def test_missing_object_is_a_storage_error(store: ObjectStore) -> None:
    with pytest.raises(StorageError):
        store.get("absent")


def test_missing_bucket_is_a_clear_storage_error(s3_client: Any) -> None:
    store = S3ObjectStore("no-such-bucket", client=s3_client)
    with pytest.raises(StorageError, match="cannot write s3://no-such-bucket/k"):
        store.put_if_absent("k", b"x", "text/plain")


async def test_async_path_of_the_memory_store_keeps_the_contract() -> None:
    store = InMemoryObjectStore(BUCKET)
    assert await store.aput_if_absent("k", b"x", "text/plain") is True
    assert await store.aput_if_absent("k", b"x", "text/plain") is False
    with pytest.raises(StorageIntegrityError):
        await store.aput_if_absent("k", b"y", "text/plain")
    assert await store.aput_if_absent("k", b"y", "text/plain", first_wins=True) is False
    assert store.get("k") == b"x", "first wins: the existing object is kept"
    await store.aclose()


def test_presigned_urls_carry_no_long_lived_secret(s3_client: Any) -> None:
    store = S3ObjectStore(BUCKET, client=s3_client)
    url = store.presign_get("ns/runs/r/uid/attempt-1/manifest.json", 600)
    assert "X-Amz-Expires=600" in url
    assert "smartspec-unit" in url
    upload = store.presign_upload("ns/runs/r/uid/attempt-1/", 600)
    assert upload["keyPrefix"] == "ns/runs/r/uid/attempt-1/"
    assert "policy" in {name.lower() for name in upload["fields"]}
    assert "key" not in upload["fields"], "the sandbox names each key under the prefix"
    with pytest.raises(ValueError, match="must end with /"):
        store.presign_upload("ns/runs/r", 600)


def test_urls_and_policies_are_signed_with_sigv4() -> None:
    """botocore's default presigns with SigV2, which newer AWS regions refuse."""
    with mock_aws():
        store = S3ObjectStore(BUCKET, region="eu-central-1")
        url = store.presign_get("ns/runs/r/uid/attempt-1/manifest.json", 600)
        upload = store.presign_upload("ns/runs/r/uid/attempt-1/", 600)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "Signature=" not in url.replace("X-Amz-Signature=", "")
    assert upload["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"


def test_the_upload_policy_pins_prefix_size_and_expiry(s3_client: Any) -> None:
    store = S3ObjectStore(BUCKET, client=s3_client)
    upload = store.presign_upload("ns/runs/r/uid/attempt-1/", 600, max_bytes=1000)
    fields = {name.lower(): value for name, value in upload["fields"].items()}
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["starts-with", "$key", "ns/runs/r/uid/attempt-1/"] in policy["conditions"]
    assert ["content-length-range", 0, 1000] in policy["conditions"]
    assert "expiration" in policy
    default = store.presign_upload("ns/runs/r/uid/attempt-1/", 600)
    fields = {name.lower(): value for name, value in default["fields"].items()}
    conditions = json.loads(base64.b64decode(fields["policy"]))["conditions"]
    assert ["content-length-range", 0, UPLOAD_MAX_OBJECT_BYTES] in conditions


def test_a_credentials_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention's identity (CORE-004 "Storage") lives beside the operator's own, which the
    environment names: the file's keys are the ones that sign."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = retention-key\naws_secret_access_key = s\n")
    store = S3ObjectStore("bucket", endpoint_url="http://127.0.0.1:9", credentials_file=path)
    assert store.client._request_signer._credentials.access_key == "retention-key"


@pytest.mark.parametrize(
    "text", ["", "[default]\naws_access_key_id = k\n", "[other]\naws_access_key_id = k\n", "= x"]
)
def test_a_bad_credentials_file_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "credentials"
    path.write_text(text)
    with pytest.raises(StorageError, match="credentials"):
        S3ObjectStore("bucket", endpoint_url="http://127.0.0.1:9", credentials_file=path)
