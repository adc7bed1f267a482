"""Run tokens: the operator mints one per attempt; the gateway verifies it on every call.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Run tokens".

Wire form (three dot-separated parts, all ASCII):

    sst1.<base64url(claims JSON)>.<base64url(HMAC-SHA256(key, "sst1." + claims part))>

base64url is unpadded. The claims JSON is canonical (sorted keys, compact, UTF-8) with
short keys, because the token travels in an HTTP header on every model call:

    ns   namespace       run  GenerationRun name   uid  GenerationRun metadata.uid
    att  attempt (>= 1)  bud  CreditBudget name    rev  pinned Spec revision (>= 1)
    exp  expiry, unix seconds (the token is valid while now < exp)
    rpl  name of the run being replayed; absent unless this is a replay

The signature is checked before the claims are parsed, so a forged token never reaches the
JSON parser. Verification takes several keys, current first, so the signing key can be
rotated without failing runs in flight. Failures carry a stable reason for metrics and
HTTP answers, and never echo the token: it is a credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from smartspec.logic.canonical import canonical_json

TOKEN_VERSION = "sst1"  # noqa: S105 - the format's version tag, not a secret
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 4096
"""Longer strings are refused before any decoding: real tokens are a few hundred chars."""

RunTokenFailure = Literal["malformed", "bad_signature", "expired"]

_SIGNATURE_BYTES = hashlib.sha256().digest_size
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_REQUIRED_CLAIMS = frozenset({"ns", "run", "uid", "att", "bud", "rev", "exp"})
_OPTIONAL_CLAIMS = frozenset({"rpl"})


class InvalidRunToken(Exception):  # noqa: N818 - the name is the contract's
    """A token the gateway must refuse; `reason` is one of RunTokenFailure."""

    def __init__(self, reason: RunTokenFailure, message: str) -> None:
        super().__init__(f"run token refused ({reason}): {message}")
        self.reason: RunTokenFailure = reason


@dataclass(frozen=True)
class RunTokenClaims:
    """Who may spend: one attempt of one run, against one budget, until expires_at."""

    namespace: str
    run: str
    run_uid: str
    attempt: int
    budget: str
    spec_revision: int
    expires_at: int
    replay_of: str | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("namespace", self.namespace),
            ("run", self.run),
            ("run_uid", self.run_uid),
            ("budget", self.budget),
        ):
            _require_text(value, name)
        if self.replay_of is not None:
            _require_text(self.replay_of, "replay_of")
        _require_int(self.attempt, "attempt", minimum=1)
        _require_int(self.spec_revision, "spec_revision", minimum=1)
        _require_int(self.expires_at, "expires_at", minimum=0)


class InvalidTokenKeysError(ValueError):
    """The run-token key file is empty or holds a key that is not usable."""


def parse_token_keys(text: str, source: str) -> tuple[bytes, ...]:
    """The keys of a run-token key file: one per line, current first, blank lines ignored.

    The operator (which signs) and the gateway (which verifies) both read the file with this
    function and refuse to start on what it refuses, so a bad file stops both at start-up
    instead of failing the first llm run. Messages name lines, never key material.
    """
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip().encode("utf-8")
        if not key:
            continue
        if len(key) < MIN_KEY_BYTES:
            raise InvalidTokenKeysError(
                f"{source}: line {number} holds a key of {len(key)} bytes; each run-token key "
                f"needs at least {MIN_KEY_BYTES}"
            )
        if any(character.isspace() for character in line.strip()):
            raise InvalidTokenKeysError(f"{source}: line {number} holds whitespace inside its key")
        keys.append(key)
    if not keys:
        raise InvalidTokenKeysError(
            f"{source} holds no run-token key (one key of at least {MIN_KEY_BYTES} bytes per "
            "line, current first)"
        )
    return tuple(keys)


def mint_run_token(claims: RunTokenClaims, key: bytes) -> str:
    """Sign the claims with the current key."""
    _require_key(key)
    payload_part = _b64encode(canonical_json(_to_wire(claims)))
    signing_input = f"{TOKEN_VERSION}.{payload_part}".encode("ascii")
    return f"{TOKEN_VERSION}.{payload_part}.{_b64encode(_sign(key, signing_input))}"


def verify_run_token(token: str, keys: Sequence[bytes], now: int) -> RunTokenClaims:
    """The token's claims if some key signed it and it has not expired at `now`.

    `keys` holds the accepted signing keys, current first. Raises InvalidRunToken.
    """
    accepted = _require_keys(keys)
    _require_int(now, "now", minimum=0)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidRunToken("malformed", "not a run token")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidRunToken("malformed", f"expected {TOKEN_VERSION}.<claims>.<signature>")
    version, payload_part, signature_part = parts
    if version != TOKEN_VERSION:
        raise InvalidRunToken("malformed", f"unknown token version; expected {TOKEN_VERSION}")
    payload = _b64decode(payload_part, "claims")
    signature = _b64decode(signature_part, "signature")
    if len(signature) != _SIGNATURE_BYTES:
        raise InvalidRunToken("malformed", "signature has the wrong length")

    signing_input = f"{version}.{payload_part}".encode("ascii")
    matched = False
    for key in accepted:
        # Every key is tried, so the time taken does not say which one matched.
        matched |= hmac.compare_digest(_sign(key, signing_input), signature)
    if not matched:
        raise InvalidRunToken("bad_signature", "signature does not match any accepted key")

    claims = _from_wire(payload)
    if now >= claims.expires_at:
        raise InvalidRunToken("expired", f"expired at {claims.expires_at}, now {now}")
    return claims


def scope_allows(claims: RunTokenClaims, namespace: str, run: str) -> bool:
    """Whether the token may act for this run in this namespace."""
    return claims.namespace == namespace and claims.run == run


def _to_wire(claims: RunTokenClaims) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "ns": claims.namespace,
        "run": claims.run,
        "uid": claims.run_uid,
        "att": claims.attempt,
        "bud": claims.budget,
        "rev": claims.spec_revision,
        "exp": claims.expires_at,
    }
    # Absent rather than null: one canonical form per claim set.
    if claims.replay_of is not None:
        wire["rpl"] = claims.replay_of
    return wire


def _from_wire(payload: bytes) -> RunTokenClaims:
    try:
        wire = json.loads(payload.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise InvalidRunToken("malformed", "claims are not UTF-8 JSON") from None
    if not isinstance(wire, Mapping):
        raise InvalidRunToken("malformed", "claims are not a JSON object")
    keys = set(wire)
    if missing := _REQUIRED_CLAIMS - keys:
        raise InvalidRunToken("malformed", f"missing claims: {sorted(missing)}")
    if unknown := keys - _REQUIRED_CLAIMS - _OPTIONAL_CLAIMS:
        raise InvalidRunToken("malformed", f"unknown claims: {sorted(unknown)}")
    try:
        return RunTokenClaims(
            namespace=wire["ns"],
            run=wire["run"],
            run_uid=wire["uid"],
            attempt=wire["att"],
            budget=wire["bud"],
            spec_revision=wire["rev"],
            expires_at=wire["exp"],
            replay_of=_require_text(wire["rpl"], "replay_of") if "rpl" in wire else None,
        )
    except ValueError as error:
        raise InvalidRunToken("malformed", f"bad claims: {error}") from None


def _sign(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    # A length of 1 mod 4 is never valid base64, padded or not.
    if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
        raise InvalidRunToken("malformed", f"{what} is not unpadded base64url")
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    # Unused trailing bits must be zero: one token string per byte string.
    if _b64encode(data) != part:
        raise InvalidRunToken("malformed", f"{what} is not canonical base64url")
    return data


def _require_key(key: object) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"a run token key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a run token key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")


def _require_keys(keys: Sequence[bytes]) -> tuple[bytes, ...]:
    # A lone bytes is a Sequence too (of ints); it is a caller bug, not a key list.
    candidate: object = keys  # typed as a Sequence, but callers are not always typed
    if isinstance(candidate, bytes | bytearray | str):
        raise TypeError("keys must be a sequence of keys, current first, not a single key")
    accepted = tuple(keys)
    if not accepted:
        raise ValueError("at least one run token key is needed")
    for key in accepted:
        _require_key(key)
    return accepted


def _require_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _require_int(value: object, name: str, minimum: int) -> None:
    # bool is an int subclass: attempt=True is a bug, not attempt 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
