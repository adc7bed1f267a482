"""Run tokens: minting, verification, tampering, expiry and key rotation.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Run tokens". The signing helper
here re-implements the wire format from its description, so the tests pin the format
rather than echo the module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any

import pytest

from smartspec.logic.run_tokens import (
    MAX_TOKEN_CHARS,
    InvalidRunToken,
    RunTokenClaims,
    mint_run_token,
    scope_allows,
    verify_run_token,
)

KEY = b"k" * 32
OLD_KEY = bytes(range(32, 96))
OTHER_KEY = b"o" * 32
NOW = 1_750_000_000

CLAIMS = RunTokenClaims(
    namespace="team-a",
    run="todo-api-1",
    run_uid="6f1c0a7e-4a55-4b1e-9b8a-1d2c3e4f5a6b",
    attempt=2,
    budget="default",
    spec_revision=3,
    expires_at=NOW + 600,
)
WIRE = {
    "att": 2,
    "bud": "default",
    "exp": NOW + 600,
    "ns": "team-a",
    "rev": 3,
    "run": "todo-api-1",
    "uid": "6f1c0a7e-4a55-4b1e-9b8a-1d2c3e4f5a6b",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def sign_payload(payload: bytes, key: bytes = KEY, version: str = "sst1") -> str:
    """A correctly signed token around any payload bytes."""
    head = f"{version}.{b64(payload)}"
    return f"{head}.{b64(hmac.new(key, head.encode(), hashlib.sha256).digest())}"


def sign_claims(wire: dict[str, Any], key: bytes = KEY) -> str:
    return sign_payload(json.dumps(wire, sort_keys=True, separators=(",", ":")).encode(), key)


def reason_of(token: Any, keys: list[bytes] | None = None, now: int = NOW) -> str:
    with pytest.raises(InvalidRunToken) as raised:
        verify_run_token(token, keys or [KEY], now)
    return raised.value.reason


# ------------------------------------------------------------------ round trip and format


@pytest.mark.parametrize(
    "claims",
    [
        CLAIMS,
        replace(CLAIMS, replay_of="todo-api-0"),
        replace(CLAIMS, attempt=1, spec_revision=1, expires_at=NOW + 1),
        replace(CLAIMS, namespace="équipe", run="r" * 253),
    ],
)
def test_claims_round_trip(claims: RunTokenClaims) -> None:
    token = mint_run_token(claims, KEY)
    assert verify_run_token(token, [KEY], NOW) == claims


def test_wire_format_is_versioned_canonical_json_with_short_keys() -> None:
    token = mint_run_token(CLAIMS, KEY)
    version, payload, signature = token.split(".")
    assert version == "sst1"
    assert "=" not in token
    assert unb64(payload) == json.dumps(WIRE, sort_keys=True, separators=(",", ":")).encode()
    assert token == sign_claims(WIRE)  # an independent signer agrees byte for byte
    assert len(unb64(signature)) == 32


def test_replay_of_is_absent_unless_set() -> None:
    plain = json.loads(unb64(mint_run_token(CLAIMS, KEY).split(".")[1]))
    replay = json.loads(
        unb64(mint_run_token(replace(CLAIMS, replay_of="old-run"), KEY).split(".")[1])
    )
    assert "rpl" not in plain
    assert replay["rpl"] == "old-run"


def test_minting_is_deterministic() -> None:
    assert mint_run_token(CLAIMS, KEY) == mint_run_token(CLAIMS, KEY)


# ------------------------------------------------------------------ signatures and keys


def test_tampered_claims_fail_the_signature() -> None:
    _, _, signature = mint_run_token(CLAIMS, KEY).split(".")
    for changed in ({"att": 3}, {"ns": "team-b"}, {"exp": NOW + 10**6}, {"rpl": "x"}):
        forged_payload = b64(json.dumps({**WIRE, **changed}, sort_keys=True).encode())
        assert reason_of(f"sst1.{forged_payload}.{signature}") == "bad_signature"


def test_tampered_signature_fails() -> None:
    version, payload, signature = mint_run_token(CLAIMS, KEY).split(".")
    raw = bytearray(unb64(signature))
    for index in (0, 15, 31):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        assert reason_of(f"{version}.{payload}.{b64(bytes(flipped))}") == "bad_signature"


def test_signature_is_bound_to_the_version_prefix() -> None:
    # The same payload signed under another version tag does not verify as sst1.
    payload = json.dumps(WIRE, sort_keys=True, separators=(",", ":")).encode()
    foreign = sign_payload(payload, version="sst0").split(".")
    assert reason_of(f"sst1.{foreign[1]}.{foreign[2]}") == "bad_signature"


def test_signature_is_checked_before_the_claims_are_parsed() -> None:
    # Unsigned garbage claims are a signature failure, not a parse failure.
    real_signature = mint_run_token(CLAIMS, KEY).split(".")[2]
    assert reason_of(f"sst1.{b64(b'not json')}.{real_signature}") == "bad_signature"


@pytest.mark.parametrize(
    ("signed_with", "accepted", "valid"),
    [
        (KEY, [KEY], True),
        (OTHER_KEY, [KEY], False),
        # Rotation: the new key first, the old one still accepted.
        (OLD_KEY, [KEY, OLD_KEY], True),
        (KEY, [KEY, OLD_KEY], True),
        (OLD_KEY, [KEY], False),  # the old key retired
        (OTHER_KEY, [KEY, OLD_KEY], False),
    ],
)
def test_keys_and_rotation(signed_with: bytes, accepted: list[bytes], valid: bool) -> None:
    token = mint_run_token(CLAIMS, signed_with)
    if valid:
        assert verify_run_token(token, accepted, NOW) == CLAIMS
    else:
        assert reason_of(token, accepted) == "bad_signature"


@pytest.mark.parametrize(
    ("key", "error"),
    [(b"short", ValueError), (b"x" * 31, ValueError), ("k" * 32, TypeError)],
)
def test_keys_must_be_32_bytes_or_more(key: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="key"):
        mint_run_token(CLAIMS, key)
    with pytest.raises(error, match="key"):
        verify_run_token("sst1.e30.e30", [KEY, key], NOW)


@pytest.mark.parametrize(
    ("keys", "error"),
    [([], ValueError), (KEY, TypeError), (bytearray(KEY), TypeError), ("k" * 40, TypeError)],
)
def test_keys_must_be_a_non_empty_sequence_of_keys(keys: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_run_token(mint_run_token(CLAIMS, KEY), keys, NOW)


# ------------------------------------------------------------------ expiry


@pytest.mark.parametrize(
    ("now", "valid"),
    [(0, True), (NOW, True), (NOW + 599, True), (NOW + 600, False), (NOW + 10**6, False)],
)
def test_expiry(now: int, valid: bool) -> None:
    token = mint_run_token(CLAIMS, KEY)
    if valid:
        assert verify_run_token(token, [KEY], now) == CLAIMS
    else:
        assert reason_of(token, now=now) == "expired"


def test_a_forged_token_reports_bad_signature_even_when_expired() -> None:
    token = mint_run_token(CLAIMS, OTHER_KEY)
    assert reason_of(token, now=NOW + 10**6) == "bad_signature"


@pytest.mark.parametrize("now", [-1, 1.5, True, None])
def test_now_must_be_a_non_negative_integer(now: Any) -> None:
    with pytest.raises(ValueError, match="now"):
        verify_run_token(mint_run_token(CLAIMS, KEY), [KEY], now)


# ------------------------------------------------------------------ malformed tokens

VALID = mint_run_token(CLAIMS, KEY)
_, VALID_PAYLOAD, VALID_SIGNATURE = VALID.split(".")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "sst1",
        "sst1..",
        "sst1.e30",
        f"{VALID}.extra",
        f"sst2.{VALID_PAYLOAD}.{VALID_SIGNATURE}",
        f"SST1.{VALID_PAYLOAD}.{VALID_SIGNATURE}",
        f"Bearer {VALID}",
        f"sst1.{VALID_PAYLOAD}=.{VALID_SIGNATURE}",  # padding
        f"sst1.{VALID_PAYLOAD}.{VALID_SIGNATURE}=",
        f"sst1.{VALID_PAYLOAD.replace('-', '+')}+.{VALID_SIGNATURE}",  # standard alphabet
        f"sst1.{VALID_PAYLOAD}.{VALID_SIGNATURE[:-1]}",  # truncated signature
        f"sst1.{VALID_PAYLOAD}.{VALID_SIGNATURE}AA",  # over-long signature
        f"sst1.{VALID_PAYLOAD}.{VALID_SIGNATURE[:-1]}B",  # non-canonical trailing bits
        f"sst1.AAAAA.{VALID_SIGNATURE}",  # a length (1 mod 4) no base64 can have
        f"sst1.{VALID_PAYLOAD} .{VALID_SIGNATURE}",
        f" {VALID}",
        "sst1." + "A" * MAX_TOKEN_CHARS + "." + VALID_SIGNATURE,
        None,
        b"sst1.e30.e30",
        42,
    ],
)
def test_malformed_tokens(token: Any) -> None:
    assert reason_of(token) == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"claims"',
        b"null",
        json.dumps({k: v for k, v in WIRE.items() if k != "exp"}).encode(),  # missing claim
        json.dumps({**WIRE, "admin": True}).encode(),  # unknown claim
        json.dumps({**WIRE, "att": 0}).encode(),
        json.dumps({**WIRE, "att": -1}).encode(),
        json.dumps({**WIRE, "att": "2"}).encode(),
        json.dumps({**WIRE, "att": True}).encode(),
        json.dumps({**WIRE, "att": 2.0}).encode(),
        json.dumps({**WIRE, "rev": 0}).encode(),
        json.dumps({**WIRE, "exp": 1.5}).encode(),
        json.dumps({**WIRE, "exp": -1}).encode(),
        json.dumps({**WIRE, "ns": ""}).encode(),
        json.dumps({**WIRE, "ns": 7}).encode(),
        json.dumps({**WIRE, "uid": None}).encode(),
        json.dumps({**WIRE, "rpl": None}).encode(),
        json.dumps({**WIRE, "rpl": ""}).encode(),
        json.dumps({**WIRE, "bud": ["default"]}).encode(),
    ],
)
def test_correctly_signed_but_malformed_claims(payload: bytes) -> None:
    assert reason_of(sign_payload(payload)) == "malformed"


def test_refusals_never_echo_the_token() -> None:
    token = sign_payload(json.dumps({**WIRE, "att": 0}).encode())
    for bad, now in ((token, NOW), (VALID, NOW + 10**6), (VALID + "x", NOW)):
        with pytest.raises(InvalidRunToken) as raised:
            verify_run_token(bad, [KEY], now)
        assert bad not in str(raised.value)
        assert bad.split(".")[2] not in str(raised.value)
        assert str(raised.value).startswith(f"run token refused ({raised.value.reason}): ")


# ------------------------------------------------------------------ claims and scope


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attempt": 0}, "attempt must be at least 1"),
        ({"attempt": True}, "attempt must be an integer"),
        ({"spec_revision": 0}, "spec_revision must be at least 1"),
        ({"expires_at": -1}, "expires_at must be at least 0"),
        ({"namespace": ""}, "namespace must be a non-empty string"),
        ({"run_uid": None}, "run_uid must be a non-empty string"),
        ({"replay_of": ""}, "replay_of must be a non-empty string"),
    ],
)
def test_claims_are_validated_on_construction(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(CLAIMS, **changes)


@pytest.mark.parametrize(
    ("namespace", "run", "allowed"),
    [
        ("team-a", "todo-api-1", True),
        ("team-b", "todo-api-1", False),
        ("team-a", "todo-api-2", False),
        ("team-a", "TODO-API-1", False),
        ("", "", False),
    ],
)
def test_scope_allows(namespace: str, run: str, allowed: bool) -> None:
    assert scope_allows(CLAIMS, namespace, run) is allowed
