"""Attestation signing keys: a file of PEM keys, current first; ed25519 or ECDSA P-256.

Contract: specs/CORE-005-provenance.md, section "Keys".

The first block is the signing key and must be private. Later blocks are earlier keys,
private or reduced to their public part: they are kept so that attestations signed before a
rotation still verify (and an operator restarted mid-attestation adopts what it wrote). A
key's id is the sha256 of its DER SubjectPublicKeyInfo, so the id follows from the key and
no one has to assign it. Messages name blocks and ids, never key material.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from smartspec.logic.provenance import sha256_hex

Algorithm = Literal["ed25519", "ecdsa-p256"]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PRIVATE_LABELS = {"PRIVATE KEY", "EC PRIVATE KEY"}
_PUBLIC_LABELS = {"PUBLIC KEY"}


class InvalidProvenanceKeysError(ValueError):
    """The key file is empty, unreadable or holds a key SmartSpec does not sign with."""


@dataclass(frozen=True)
class VerifyingKey:
    """A public key and its id."""

    key_id: str
    algorithm: Algorithm
    public: PublicKey = field(repr=False)

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def verifies(self, data: bytes, signature: bytes) -> bool:
        try:
            if isinstance(self.public, ed25519.Ed25519PublicKey):
                self.public.verify(signature, data)
            else:
                self.public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey(VerifyingKey):
    """A private key: it signs, and its public part verifies."""

    private: PrivateKey = field(repr=False, kw_only=True)

    def sign(self, data: bytes) -> bytes:
        """ed25519 is deterministic; ECDSA is made so (RFC 6979), so one statement signed
        twice with one key gives one envelope."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(data)
        return self.private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


@dataclass(frozen=True)
class KeyRing:
    """The signing key and every key an attestation may have been signed with."""

    signing: SigningKey
    keys: tuple[VerifyingKey, ...]

    def find(self, key_id: str) -> VerifyingKey | None:
        return next((key for key in self.keys if key.key_id == key_id), None)


def key_id(public: PublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + sha256_hex(der)


def _algorithm(key: PublicKey, where: str) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise InvalidProvenanceKeysError(
        f"{where} holds a {type(key).__name__.removeprefix('_')} key; provenance keys are "
        "ed25519 or ECDSA P-256"
    )


def _load_block(block: str, label: str, where: str) -> VerifyingKey:
    data = block.encode("ascii")
    try:
        if label in _PRIVATE_LABELS:
            private = serialization.load_pem_private_key(data, password=None)
        else:
            public = serialization.load_pem_public_key(data)
    except TypeError:
        raise InvalidProvenanceKeysError(
            f"{where} is encrypted; the operator needs it in the clear"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidProvenanceKeysError(f"{where} is not a readable {label}") from None
    if label in _PRIVATE_LABELS:
        if not isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise InvalidProvenanceKeysError(
                f"{where} holds an unsupported key type; provenance keys are ed25519 or ECDSA P-256"
            )
        public_part = private.public_key()
        algorithm = _algorithm(public_part, where)
        return SigningKey(key_id(public_part), algorithm, public_part, private=private)
    if not isinstance(public, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InvalidProvenanceKeysError(
            f"{where} holds an unsupported key type; provenance keys are ed25519 or ECDSA P-256"
        )
    return VerifyingKey(key_id(public), _algorithm(public, where), public)


def parse_public_keys(text: str, source: str) -> tuple[VerifyingKey, ...]:
    """Every key of a PEM text (private blocks count by their public part)."""
    keys: list[VerifyingKey] = []
    for number, match in enumerate(_PEM_BLOCK.finditer(text), start=1):
        label = match.group(1)
        where = f"{source}: key {number} ({label})"
        if label == "ENCRYPTED PRIVATE KEY":
            raise InvalidProvenanceKeysError(
                f"{where} is encrypted; the operator needs it in the clear"
            )
        if label not in _PRIVATE_LABELS | _PUBLIC_LABELS:
            raise InvalidProvenanceKeysError(
                f"{where} is not a key this file may hold (PRIVATE KEY, EC PRIVATE KEY, PUBLIC KEY)"
            )
        keys.append(_load_block(match.group(0), label, where))
    if not keys:
        raise InvalidProvenanceKeysError(f"{source} holds no PEM key")
    return tuple(keys)


def parse_provenance_keys(text: str, source: str) -> KeyRing:
    """The operator's key file: the first key signs and must be private."""
    keys = parse_public_keys(text, source)
    first = keys[0]
    if not isinstance(first, SigningKey):
        raise InvalidProvenanceKeysError(
            f"{source}: key 1 is a public key; the first key signs and must be private"
        )
    ids = [key.key_id for key in keys]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise InvalidProvenanceKeysError(f"{source} holds key {duplicated[0]} twice")
    return KeyRing(first, keys)


def read_provenance_keys(path: Path) -> KeyRing:
    return parse_provenance_keys(path.read_text(encoding="ascii", errors="replace"), str(path))


def generate_signing_key(algorithm: Algorithm = "ecdsa-p256") -> str:
    """A new private key as PKCS#8 PEM (what `smartspec provenance generate-key` prints)."""
    private: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def verifying_key_for(keys: Sequence[VerifyingKey], key_id_: str) -> VerifyingKey | None:
    return next((key for key in keys if key.key_id == key_id_), None)
