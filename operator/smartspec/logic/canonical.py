"""Canonical JSON and content hashes.

Contract: specs/CORE-002-spec-registry.md, section "Content hash".

The canonical form is JSON with keys sorted, no insignificant whitespace, UTF-8 without
escaping non-ASCII, and integers only (the resource types never carry floats in content).
Two documents with the same content have the same bytes, whatever order or formatting
their YAML had, so the hash identifies content and a snapshot key is content-addressed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

HASH_PREFIX = "sha256:"


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a JSON-compatible document."""
    _refuse_floats(document, "$")
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON, as sha256:<64 hex digits>."""
    return HASH_PREFIX + hashlib.sha256(canonical_json(document)).hexdigest()


def hex_digest(hash_value: str) -> str:
    """The hex part of a sha256:<hex> content hash."""
    if not hash_value.startswith(HASH_PREFIX) or len(hash_value) != len(HASH_PREFIX) + 64:
        raise ValueError(f"not a sha256 content hash: {hash_value!r}")
    return hash_value[len(HASH_PREFIX) :]


def _refuse_floats(value: object, path: str) -> None:
    # Floats have several JSON spellings (1.0, 1e0); canonical content must have one.
    if isinstance(value, float):
        raise ValueError(f"{path}: floats have no canonical form; use an integer")
    if isinstance(value, Mapping):
        for key, child in value.items():
            _refuse_floats(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _refuse_floats(child, f"{path}[{index}]")
