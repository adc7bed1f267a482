"""Artifact storage behind a small protocol: S3 in production, memory in unit tests.

Contract: specs/CORE-002-spec-registry.md, section "Snapshots".
"""

from __future__ import annotations

from smartspec.storage.objects import (
    InMemoryObjectStore,
    ObjectMissingError,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    StorageIntegrityError,
)

__all__ = [
    "InMemoryObjectStore",
    "ObjectMissingError",
    "ObjectStore",
    "S3ObjectStore",
    "StorageError",
    "StorageIntegrityError",
]
