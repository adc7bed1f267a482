"""The storage self-check: probe the bucket for what SmartSpec's guarantees need of it.

Contract: specs/CORE-004-generation-runs.md, section "Storage self-check".

Writes a handful of tiny objects under `_smartspec-check/runs/<id>/` with the operator's own
credentials: a conditional PUT twice, a PUT whose key has a `..` segment, and a presigned
POST (made exactly as sandboxes get theirs) to a key inside its prefix, outside it, through
`..`, and over its size limit. Then reads back what each probe left and hands the
observations to `smartspec.logic.storage_check.judge`. Probe objects are deleted afterwards
where the credentials allow it.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from smartspec.logic.storage_check import (
    PROBE_MAX_BYTES,
    CheckResult,
    Observations,
    ProbeKeys,
    judge,
    probe_keys,
)
from smartspec.storage.objects import S3ObjectStore, StorageError

_TIMEOUT = urllib3.Timeout(connect=10, read=30)


class StorageCheckError(StorageError):
    """The backend breaks a guarantee SmartSpec relies on; the message lists which."""


def run_self_check(store: S3ObjectStore, check_id: str | None = None) -> list[CheckResult]:
    """Probe the store's bucket; StorageError when the bucket cannot be reached at all."""
    keys = probe_keys(check_id or secrets.token_hex(8))
    probe = _Probe(store, keys)
    try:
        return judge(probe.observe())
    finally:
        probe.clean_up()


class _Probe:
    def __init__(self, store: S3ObjectStore, keys: ProbeKeys) -> None:
        self.store = store
        self.keys = keys
        self.client: Any = store.client
        # Each probe body is unique, so "the key holds this body" proves which write landed.
        self.token = secrets.token_hex(8)
        self.http = urllib3.PoolManager(timeout=_TIMEOUT, retries=False)

    def observe(self) -> Observations:
        keys = self.keys
        first_body, second_body = self._body("first"), self._body("second")
        conditional_first = self._put(keys.conditional, first_body, conditional=True)
        conditional_second = self._put(keys.conditional, second_body, conditional=True)
        dotted_body = self._body("dotted")
        dotted_put = self._put(keys.dotted, dotted_body, conditional=True)
        policy = self.store.presign_upload(keys.upload_prefix, 300, max_bytes=PROBE_MAX_BYTES)
        outside_body, dotted_post_body = self._body("outside"), self._body("escaped")
        oversize_body = self._body("oversize").ljust(PROBE_MAX_BYTES + 1, b".")
        return Observations(
            conditional_first=conditional_first,
            conditional_second=conditional_second,
            conditional_kept=self._read(keys.conditional) == first_body,
            dotted_put=dotted_put,
            dotted_resolved=self._read(keys.dotted_target) == dotted_body,
            upload_inside=self._post(policy, keys.upload_inside, self._body("inside")),
            upload_outside=self._post(policy, keys.upload_outside, outside_body),
            upload_outside_stored=self._read(keys.upload_outside) == outside_body,
            upload_dotted=self._post(policy, keys.upload_dotted, dotted_post_body),
            upload_dotted_resolved=self._read(keys.upload_dotted_target) == dotted_post_body,
            upload_oversize=self._post(policy, keys.upload_oversize, oversize_body),
            upload_oversize_stored=self._read(keys.upload_oversize) == oversize_body,
        )

    def _body(self, what: str) -> bytes:
        return f"smartspec storage check {self.token} {what}\n".encode()

    def _put(self, key: str, body: bytes, *, conditional: bool) -> int:
        """The HTTP status of a PUT (with If-None-Match: * when conditional)."""
        extra = {"IfNoneMatch": "*"} if conditional else {}
        try:
            reply = self.client.put_object(Bucket=self.store.bucket, Key=key, Body=body, **extra)
        except ClientError as error:
            return _status(error)
        except BotoCoreError as error:
            where = f"s3://{self.store.bucket}"
            raise StorageError(f"storage check: cannot reach {where}: {error}") from None
        return int(reply["ResponseMetadata"]["HTTPStatusCode"])

    def _post(self, policy: dict[str, Any], key: str, body: bytes) -> int:
        """The HTTP status of a presigned POST, sent as a sandbox sends it (file last)."""
        fields: dict[str, Any] = {**policy["fields"], "key": key}
        fields["file"] = ("probe", body, "text/plain")
        try:
            reply = self.http.request("POST", policy["url"], fields=fields)
        except urllib3.exceptions.HTTPError as error:
            raise StorageError(f"storage check: presigned POST failed: {error}") from None
        return int(reply.status)

    def _read(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            body: bytes = self.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if _status(error) in (400, 404):  # absent, or a key the backend refuses to name
                return None
            raise StorageError(f"storage check: cannot read back {key}: {error}") from None
        except BotoCoreError as error:
            raise StorageError(f"storage check: cannot read back {key}: {error}") from None
        return body

    def clean_up(self) -> None:
        for key in self.keys.all_keys():
            # Best effort: credentials without delete rights leave a few bytes behind.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.store.bucket, Key=key)
        self.http.clear()


def _status(error: ClientError) -> int:
    metadata = error.response.get("ResponseMetadata", {})
    return int(metadata.get("HTTPStatusCode", 0))
