"""Moving bytes through presigned S3 URLs, with the standard library only.

Contract: specs/CORE-004-generation-runs.md, sections "Object layout in S3" and "Sandbox
contract".

The sandbox holds no storage credentials: it reads with presigned GETs and writes with one
presigned POST whose policy admits any key under the attempt's prefix. Both are plain HTTP,
so urllib is enough and the sandbox image needs no AWS SDK. Connection failures and S3's
transient 5xx answers are retried a bounded number of times; everything else fails at once.

Error messages show a URL without its query string: the query of a presigned URL is its
signature, a short-lived credential that must not reach logs.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import TypeVar

from smartspec.api.sandbox import UploadPolicy, check_relative_path

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "TooLargeError",
    "TransferError",
    "download",
    "redact_url",
    "upload",
]

DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 0.5
_RETRIED_STATUSES = frozenset({500, 502, 503, 504})
_CHUNK = 64 * 1024
_S3_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")

T = TypeVar("T")


class TransferError(Exception):
    """A download or upload failed; the message says which object and why."""


class TooLargeError(TransferError):
    """The object is larger than the caller allowed."""


class _RetryableError(Exception):
    """A failure worth another try (connection trouble, a transient S3 5xx)."""


def redact_url(url: str) -> str:
    """scheme://host/path of a URL: the query (a presigned signature) is left out."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def download(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    attempts: int = DEFAULT_ATTEMPTS,
) -> bytes:
    """The body of a presigned GET, refusing bodies over `max_bytes`."""
    _require_http(url)
    where = redact_url(url)

    def once() -> bytes:
        request = urllib.request.Request(url, method="GET")  # noqa: S310 - scheme checked
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise TooLargeError(
                        f"GET {where}: the object has {declared} bytes, over the limit of "
                        f"{max_bytes}"
                    )
                return _read_bounded(response, max_bytes, where)
        except urllib.error.HTTPError as error:
            raise _http_failure("GET", where, error) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise _RetryableError(f"GET {where}: {_reason(error)}") from None

    return _with_retries(once, attempts)


def upload(
    policy: UploadPolicy,
    key_suffix: str,
    body: bytes,
    content_type: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    attempts: int = DEFAULT_ATTEMPTS,
) -> str:
    """Store `body` at keyPrefix + key_suffix with the presigned POST; the key is returned.

    The form carries the policy's fields, then `key`, then `file` last (S3 ignores fields
    after the file). `content_type` goes on the file part only: a Content-Type form field
    would be refused by a policy that has no condition for it.
    """
    try:
        check_relative_path(key_suffix)
    except ValueError as error:
        raise TransferError(f"refusing to upload {key_suffix!r}: {error}") from None
    _require_http(policy.url)
    key = policy.key_prefix + key_suffix
    fields = [(name, value) for name, value in policy.fields.items() if name.lower() != "key"]
    fields.append(("key", key))
    payload, boundary = _multipart(fields, key_suffix.rsplit("/", 1)[-1], body, content_type)
    where = f"{redact_url(policy.url)} (key {key})"

    def once() -> str:
        request = urllib.request.Request(  # noqa: S310 - scheme checked
            policy.url,
            data=payload,
            method="POST",
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(payload)),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                response.read()
                if response.status not in (200, 201, 204):
                    raise TransferError(f"POST {where}: unexpected HTTP {response.status}")
                return key
        except urllib.error.HTTPError as error:
            raise _http_failure("POST", where, error) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            raise _RetryableError(f"POST {where}: {_reason(error)}") from None

    return _with_retries(once, attempts)


def _multipart(
    fields: list[tuple[str, str]], filename: str, body: bytes, content_type: str
) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) with the file part last."""
    boundary = f"smartspec-{uuid.uuid4().hex}"
    while boundary.encode() in body:  # practically never; the boundary must not occur inside
        boundary = f"smartspec-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields:
        header = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        chunks.append(header.encode())
        chunks.append(value.encode("utf-8") + b"\r\n")
    chunks.append(
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
    )
    chunks.append(body + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), boundary


def _quote(value: str) -> str:
    # Form-data names are quoted strings; escape what would end them (RFC 7578, 4.2).
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _read_bounded(response: http.client.HTTPResponse, max_bytes: int, where: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = response.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise TooLargeError(f"GET {where}: the object is over the limit of {max_bytes} bytes")
        chunks.append(chunk)


def _http_failure(method: str, where: str, error: urllib.error.HTTPError) -> Exception:
    try:
        answer = error.read(4096)
    except (OSError, http.client.HTTPException):
        answer = b""
    match = _S3_ERROR_CODE.search(answer)
    code = f" {match.group(1).decode()}" if match else ""
    message = f"{method} {where}: HTTP {error.code}{code}"
    if error.code in _RETRIED_STATUSES:
        return _RetryableError(message)
    if error.code == 403:
        message += " (the presigned URL expired, or its policy does not allow this request)"
    elif error.code == 404:
        message += " (no such object)"
    return TransferError(message)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, str):
        error = error.reason
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text


def _require_http(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise TransferError(f"refusing a {scheme or 'scheme-less'} URL: only http(s) is allowed")


def _with_retries(operation: Callable[[], T], attempts: int) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except _RetryableError as error:
            if attempt == attempts:
                raise TransferError(f"{error} (gave up after {attempts} attempts)") from None
            time.sleep(RETRY_DELAY_SECONDS * attempt)
    raise TransferError("no attempt was made (attempts must be at least 1)")
