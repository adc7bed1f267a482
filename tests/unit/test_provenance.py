"""The attestation's statement, DSSE encoding and keys (specs/CORE-005-provenance.md)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from smartspec.logic import provenance as p
from smartspec.provenance.attest import verified_by
from smartspec.provenance.keys import (
    InvalidProvenanceKeysError,
    generate_signing_key,
    parse_provenance_keys,
    parse_public_keys,
)


def evidence(outcome: p.Outcome = "Succeeded", **changes: Any) -> p.RunEvidence:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "todo",
        "uid": "u-1",
        "run_spec": {"specRef": {"name": "todo-api"}, "maxAttempts": 3},
        "outcome": outcome,
        "started_on": "2026-01-01T00:00:00Z",
        "finished_on": "2026-01-01T00:01:00Z",
        "builder_id": p.DEFAULT_BUILDER_ID,
        "builder_version": "0.1.0",
        "files": [
            p.Descriptor("app.py", "s3://b/team-a/runs/todo/u-1/attempt-1/files/app.py", "a" * 64)
        ],
        "snapshot": p.Descriptor(p.SPEC_SNAPSHOT, "s3://b/team-a/specs/sha256/x.json", "b" * 64),
        "images": [],
        "transcripts": [],
        "usage": {"calls": 0, "promptTokens": 0, "completionTokens": 0, "credits": 0},
        "failure": None
        if outcome == "Succeeded"
        else p.Failure("TestsFailed", "2 of 20 tests failed", [{"number": 1, "result": "Failed"}]),
    }
    fields.update(changes)
    return p.RunEvidence(**fields)


def test_pae_is_the_dsse_v1_encoding() -> None:
    # The DSSE protocol's own example.
    assert (
        p.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_a_succeeded_run_is_slsa_provenance_of_its_files() -> None:
    statement = p.build_statement(evidence())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {
            "name": "app.py",
            "uri": "s3://b/team-a/runs/todo/u-1/attempt-1/files/app.py",
            "digest": {"sha256": "a" * 64},
        }
    ]
    predicate = statement["predicate"]
    assert predicate["buildDefinition"]["buildType"] == p.BUILD_TYPE
    assert predicate["buildDefinition"]["externalParameters"]["maxAttempts"] == 3
    assert predicate["runDetails"]["metadata"]["invocationId"] == "team-a/todo/u-1"
    assert "failure" not in predicate
    p.parse_statement(p.statement_bytes(statement))


def test_a_failed_run_cannot_be_read_as_slsa_provenance() -> None:
    statement = p.build_statement(evidence("Failed"))
    assert statement["predicateType"] == p.FAILED_RUN_V1
    assert statement["predicate"]["failure"]["result"] == "Failed"
    assert statement["predicate"]["failure"]["reason"] == "TestsFailed"
    # The same failure under the SLSA type is refused by the parser, and so is the opposite.
    forged = {**statement, "predicateType": p.SLSA_PROVENANCE_V1}
    with pytest.raises(p.ProvenanceError, match="disagree about the outcome"):
        p.parse_statement(p.statement_bytes(forged))
    with pytest.raises(ValueError, match="carries its failure"):
        p.build_statement(evidence("Succeeded", failure=p.Failure("X", "y", [])))


def test_a_run_without_files_is_its_own_subject() -> None:
    statement = p.build_statement(evidence("Failed", files=[]))
    (subject,) = statement["subject"]
    assert subject["name"] == "generationrun/team-a/todo/u-1"
    identity = {"namespace": "team-a", "name": "todo", "uid": "u-1"}
    assert subject["digest"]["sha256"] == p.inline_digest(identity)


def test_the_statement_has_one_byte_form() -> None:
    first = p.statement_bytes(p.build_statement(evidence()))
    assert first == p.statement_bytes(p.build_statement(evidence()))
    assert b" " not in first.split(b'"predicate"')[0], "canonical: no insignificant whitespace"


PUBLIC_ECDSA = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
-----END PUBLIC KEY-----
"""


def pem(key: Any, *, encoding: str = "pkcs8") -> str:
    if encoding == "sec1":
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        fmt = serialization.PrivateFormat.PKCS8
    text: str = key.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()
    return text


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_both_key_types_sign_deterministically_and_verify(algorithm: Any) -> None:
    ring = parse_provenance_keys(generate_signing_key(algorithm), "keys")
    assert ring.signing.algorithm == algorithm
    payload = p.statement_bytes(p.build_statement(evidence()))
    signed = p.pae(p.PAYLOAD_TYPE, payload)
    signature = ring.signing.sign(signed)
    assert signature == ring.signing.sign(signed), "a retry gives the same envelope"
    envelope = p.make_envelope(payload, ring.signing.key_id, signature)
    again = p.parse_envelope(envelope.to_bytes())
    assert verified_by(again, ring.keys) == ring.signing
    other = parse_provenance_keys(generate_signing_key(algorithm), "other")
    assert verified_by(again, other.keys) is None
    tampered = again.model_copy(
        update={"payload": base64.b64encode(payload.replace(b"app.py", b"evil.py")).decode()}
    )
    assert verified_by(tampered, ring.keys) is None


def test_the_key_id_is_the_sha256_of_the_public_key() -> None:
    ring = parse_provenance_keys(generate_signing_key(), "keys")
    der = base64.b64decode("".join(ring.signing.public_pem().splitlines()[1:-1]))
    assert ring.signing.key_id == "sha256:" + hashlib.sha256(der).hexdigest()


def test_a_key_file_rotates_with_the_current_key_first() -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    new = ed25519.Ed25519PrivateKey.generate()
    retired_public = (
        old.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    ring = parse_provenance_keys(pem(new) + "\n" + retired_public, "keys")
    assert ring.signing.algorithm == "ed25519"
    assert [k.algorithm for k in ring.keys] == ["ed25519", "ecdsa-p256"]
    sec1 = parse_provenance_keys(pem(old, encoding="sec1"), "keys")
    assert sec1.signing.key_id == ring.keys[1].key_id, "an EC PRIVATE KEY block is read too"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no PEM key"),
        ("not a key\n", "holds no PEM key"),
        (PUBLIC_ECDSA, "is not a readable PUBLIC KEY"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a key this file"),
    ],
    ids=["empty", "no-pem", "broken", "certificate"],
)
def test_bad_key_files_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidProvenanceKeysError, match=message):
        parse_provenance_keys(text, "keys")


def test_unsupported_keys_are_refused_without_echoing_them() -> None:
    rsa_pem = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(InvalidProvenanceKeysError, match="key 1") as refused:
        parse_provenance_keys(rsa_pem, "keys")
    assert rsa_pem.splitlines()[1] not in str(refused.value)
    p384 = pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(InvalidProvenanceKeysError, match="ed25519 or ECDSA P-256"):
        parse_provenance_keys(p384, "keys")
    public_only = parse_public_keys(generate_signing_key(), "k")[0].public_pem()
    with pytest.raises(InvalidProvenanceKeysError, match="must be private"):
        parse_provenance_keys(public_only, "keys")
    encrypted = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
        .decode()
    )
    with pytest.raises(InvalidProvenanceKeysError, match="is encrypted"):
        parse_provenance_keys(encrypted, "keys")
    key = generate_signing_key()
    with pytest.raises(InvalidProvenanceKeysError, match="twice"):
        parse_provenance_keys(key + key, "keys")


def test_an_envelope_that_is_not_dsse_is_named() -> None:
    with pytest.raises(p.ProvenanceError, match="not a DSSE envelope"):
        p.parse_envelope(b"{}")
    wrong_type = json.dumps(
        {"payloadType": "text/plain", "payload": "", "signatures": [{"keyid": "", "sig": ""}]}
    ).encode()
    with pytest.raises(p.ProvenanceError, match="payloadType"):
        p.parse_envelope(wrong_type)
