"""The conditions of a sandbox's presigned upload (CORE-004, "Sandbox contract").

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox contract" and "Storage
self-check".

Pure data: the storage layer signs these conditions into an S3 POST policy. A sandbox may
write any key under its attempt's prefix, each object at most `max_bytes` long, until the
policy expires; nothing else.
"""

from __future__ import annotations

UPLOAD_MAX_OBJECT_BYTES = 16 * 1024 * 1024
"""Largest object a sandbox may upload: the tester reads manifests up to this size, and
junit.xml and summary.json stay far below it."""


def upload_conditions(key_prefix: str, max_bytes: int) -> list[list[str | int]]:
    """The POST policy's conditions: keys under `key_prefix`, bodies of 0..max_bytes bytes."""
    if not key_prefix.endswith("/"):
        raise ValueError("an upload prefix must end with /")
    if ".." in key_prefix.split("/"):
        raise ValueError("an upload prefix must not contain a .. segment")
    if max_bytes < 1:
        raise ValueError("an upload must allow at least one byte")
    # Empty bodies are allowed: an empty __init__.py is a legitimate generated file.
    return [["starts-with", "$key", key_prefix], ["content-length-range", 0, max_bytes]]
