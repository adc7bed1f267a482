"""Canonical JSON and content hashes (specs/CORE-002-spec-registry.md, "Content hash")."""

from __future__ import annotations

import hashlib

import pytest

from smartspec.logic.canonical import canonical_json, content_hash, hex_digest


def test_key_order_and_formatting_do_not_change_the_hash() -> None:
    first = {"b": [1, {"y": "é", "x": True}], "a": None}
    second = {"a": None, "b": [1, {"x": True, "y": "é"}]}
    assert canonical_json(first) == canonical_json(second)
    assert canonical_json(first) == '{"a":null,"b":[1,{"x":true,"y":"é"}]}'.encode()


def test_hash_is_sha256_of_the_canonical_bytes() -> None:
    document = {"title": "x"}
    expected = hashlib.sha256(canonical_json(document)).hexdigest()
    assert content_hash(document) == f"sha256:{expected}"
    assert hex_digest(content_hash(document)) == expected


def test_list_order_is_content() -> None:
    assert content_hash({"a": [1, 2]}) != content_hash({"a": [2, 1]})


def test_floats_are_refused_with_their_path() -> None:
    with pytest.raises(ValueError, match=r"\$\.limits\[1\]: floats have no canonical form"):
        canonical_json({"limits": [1, 2.5]})


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "0" * 64, "0" * 64])
def test_hex_digest_refuses_malformed_hashes(bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 content hash"):
        hex_digest(bad)
