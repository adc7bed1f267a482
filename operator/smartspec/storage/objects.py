"""Write-once object storage.

Contract: specs/CORE-002-spec-registry.md, section "Snapshots".

`put_if_absent` is the only write: a conditional PUT (`If-None-Match: *`), so a second
writer — another operator replica, or this one after a restart — can never overwrite an
object. When the object already exists, its bytes are compared with what we meant to write:
content-addressed keys make a mismatch impossible unless the store was tampered with, and
that is reported, never ignored.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import hashlib
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from smartspec.logic.retention import StoredObject
from smartspec.logic.upload_policy import UPLOAD_MAX_OBJECT_BYTES, upload_conditions

DELETE_BATCH = 1000
"""Keys per DeleteObjects request: the S3 API's maximum."""


class StorageError(RuntimeError):
    """The store could not be read or written (retryable)."""


class ObjectMissingError(StorageError):
    """The object does not exist (404): a reader may treat it as not written yet."""


class StorageIntegrityError(StorageError):
    """An existing object differs from the bytes its content-addressed key promises."""


class ObjectStore(Protocol):
    """What the reconcilers need of an artifact store."""

    def put_if_absent(self, key: str, body: bytes, content_type: str) -> bool:
        """Write once. True when this call created the object, False when it existed."""
        ...

    async def aput_if_absent(
        self, key: str, body: bytes, content_type: str, *, first_wins: bool = False
    ) -> bool:
        """put_if_absent for event-loop callers, without a worker thread.

        With `first_wins` an existing object is kept whatever it holds (no read-back): for
        records where the first writer defines the content, such as transcripts.
        """
        ...

    async def aclose(self) -> None:
        """Release what the async path holds (its HTTP session)."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; StorageError when it is missing or unreadable."""
        ...

    def uri(self, key: str) -> str:
        """The URI recorded in status for this key."""
        ...


class S3ObjectStore:
    """An S3 bucket (AWS, or any S3-compatible endpoint) through boto3."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
        max_attempts: int = 5,
        read_timeout_seconds: float = 60.0,
        credentials_file: Path | None = None,
    ) -> None:
        self.bucket = bucket
        self._endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self._client = client or _session(credentials_file).client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            # SigV4 explicitly: botocore presigns with the deprecated SigV2 by default, whose
            # URLs newer AWS regions refuse and whose lifetime no server caps.
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=min(read_timeout_seconds, 60.0),
                read_timeout=read_timeout_seconds,
            ),
        )
        self._region = self._client.meta.region_name or "us-east-1"
        self._session: aiohttp.ClientSession | None = None

    @property
    def client(self) -> Any:
        """The boto3 client (the storage self-check probes with the same credentials)."""
        return self._client

    def put_if_absent(self, key: str, body: bytes, content_type: str) -> bool:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                IfNoneMatch="*",
                ChecksumSHA256=checksum,
            )
        except ClientError as error:
            if _status(error) != 412:
                raise StorageError(f"cannot write s3://{self.bucket}/{key}: {error}") from error
            existing = self.get(key)
            if existing != body:
                raise StorageIntegrityError(
                    f"s3://{self.bucket}/{key} exists with different content "
                    f"(sha256 {hashlib.sha256(existing).hexdigest()}); refusing to continue"
                ) from error
            return False
        except BotoCoreError as error:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}: {error}") from error
        return True

    async def aput_if_absent(
        self, key: str, body: bytes, content_type: str, *, first_wins: bool = False
    ) -> bool:
        """The same conditional PUT over aiohttp, signed with botocore's SigV4 signer.

        The gateway writes a transcript per call; boto3 in worker threads would cost a thread
        hop and interpreter-lock contention with the event loop on every one of them.
        """
        credentials = self._client._request_signer._credentials
        if credentials is None:
            raise StorageError("no S3 credentials: set AWS_ACCESS_KEY_ID or a role")
        url = self._object_url(key)
        digest = hashlib.sha256(body).digest()
        request = AWSRequest(
            method="PUT",
            url=url,
            data=body,
            headers={
                "Content-Type": content_type,
                "If-None-Match": "*",
                "x-amz-content-sha256": digest.hex(),
                # The payload hash only signs the request: SeaweedFS, for one, stores a body
                # that does not match it. A checksum header is verified (400 BadDigest).
                "x-amz-checksum-sha256": base64.b64encode(digest).decode("ascii"),
            },
        )
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            async with self._session.put(url, data=body, headers=dict(request.headers)) as reply:
                text = await reply.text()
                status = reply.status
        except aiohttp.ClientError as error:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}: {error}") from error
        if status == 412 and first_wins:
            return False
        if status == 412:
            existing = await asyncio.to_thread(self.get, key)
            if existing != body:
                raise StorageIntegrityError(
                    f"s3://{self.bucket}/{key} exists with different content; refusing to continue"
                )
            return False
        if status >= 300:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}: HTTP {status} {text[:300]}")
        return True

    def presign_get(self, key: str, expires_seconds: int) -> str:
        """A URL that reads one object until it expires: what a sandbox gets instead of keys."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
        )
        return url

    def presign_upload(
        self, key_prefix: str, expires_seconds: int, max_bytes: int = UPLOAD_MAX_OBJECT_BYTES
    ) -> dict[str, Any]:
        """A presigned POST allowing any key under `key_prefix`, objects up to `max_bytes`
        (CORE-004 "upload"); the backend must enforce it (`smartspec storage check`)."""
        post = self._client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key_prefix + "${filename}",
            Conditions=upload_conditions(key_prefix, max_bytes),
            ExpiresIn=expires_seconds,
        )
        fields = {k: v for k, v in post["fields"].items() if k != "key"}
        return {"url": post["url"], "fields": fields, "keyPrefix": key_prefix}

    def _object_url(self, key: str) -> str:
        quoted = urllib.parse.quote(key, safe="/")
        if self._endpoint_url:
            return f"{self._endpoint_url}/{self.bucket}/{quoted}"
        return f"https://{self.bucket}.s3.{self._region}.amazonaws.com/{quoted}"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = response["Body"].read()
        except ClientError as error:
            if _status(error) == 404 or error.response.get("Error", {}).get("Code") in {
                "NoSuchKey",
                "404",
            }:
                raise ObjectMissingError(f"s3://{self.bucket}/{key} does not exist") from error
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {error}") from error
        except BotoCoreError as error:
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {error}") from error
        return body

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_keys(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified) of every object under `prefix` (the provenance of a run
        finds its transcripts this way, CORE-005)."""
        found: list[tuple[str, datetime]] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found += [(item["Key"], item["LastModified"]) for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}: {error}") from error
        return found

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        """Every object under `prefix`, sorted by key, one page at a time."""
        arguments = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            arguments["StartAfter"] = start_after
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(**arguments):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], int(item["Size"]), item["LastModified"])
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}: {error}") from error

    def list_children(self, prefix: str = "") -> list[str]:
        """The first path segment of every key under `prefix` (its "folders")."""
        found: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                found += [
                    p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                ]
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}: {error}") from error
        return found

    def delete_objects(self, keys: Sequence[str]) -> None:
        """Delete these keys (missing ones count as deleted); StorageError naming how many
        were refused, after deleting every key it could."""
        refused: list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as error:
                raise StorageError(
                    f"cannot delete {len(keys)} objects in s3://{self.bucket}: {error}"
                ) from error
            refused += [
                f"{e.get('Key')} ({e.get('Code')})"
                for e in answer.get("Errors", [])
                if e.get("Code") != "NoSuchKey"
            ]
        if refused:
            raise StorageError(
                f"s3://{self.bucket} refused to delete {len(refused)} of {len(keys)} objects, "
                f"e.g. {refused[0]}"
            )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _session(credentials_file: Path | None) -> boto3.Session:
    """boto3's standard credential chain, or the [default] profile of one shared
    credentials file: a second identity in the same process (retention's), which the
    environment's AWS_ACCESS_KEY_ID, first in the chain, must not override."""
    if credentials_file is None:
        return boto3.Session()
    parser = configparser.ConfigParser()
    try:
        parser.read_string(credentials_file.read_text(encoding="utf-8"))
        section = parser["default"]
        return boto3.Session(
            aws_access_key_id=section["aws_access_key_id"],
            aws_secret_access_key=section["aws_secret_access_key"],
            aws_session_token=section.get("aws_session_token"),
        )
    except (OSError, configparser.Error, KeyError) as error:
        raise StorageError(
            f"{credentials_file}: not a credentials file with aws_access_key_id and "
            f"aws_secret_access_key under [default] ({error!r})"
        ) from error


def _status(error: ClientError) -> int:
    metadata = error.response.get("ResponseMetadata", {})
    return int(metadata.get("HTTPStatusCode", 0))


class InMemoryObjectStore:
    """The same contract in memory, for unit tests and the demo's dry runs."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.written_at: dict[str, datetime] = {}
        """When each object was written (tests set it to age objects)."""
        self.writes = 0
        self._lock = threading.Lock()

    def put_if_absent(self, key: str, body: bytes, content_type: str) -> bool:
        with self._lock:
            existing = self.objects.get(key)
            if existing is None:
                self.objects[key] = body
                self.written_at[key] = datetime.now(UTC)
                self.writes += 1
                return True
        if existing != body:
            raise StorageIntegrityError(f"{self.uri(key)} exists with different content")
        return False

    async def aput_if_absent(
        self, key: str, body: bytes, content_type: str, *, first_wins: bool = False
    ) -> bool:
        if first_wins and key in self.objects:
            return False
        return self.put_if_absent(key, body, content_type)

    async def aclose(self) -> None:
        return None

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectMissingError(f"{self.uri(key)} does not exist") from None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list_objects(self, prefix: str, start_after: str = "") -> Iterator[StoredObject]:
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)
        for key in keys:
            yield StoredObject(key, len(self.objects[key]), self.written_at.get(key, _EPOCH))

    def list_children(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(
                {
                    k[len(prefix) :].split("/", 1)[0]
                    for k in self.objects
                    if k.startswith(prefix) and "/" in k[len(prefix) :]
                }
            )

    def delete_objects(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)
