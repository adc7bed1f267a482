"""Deterministic names and label values of the objects one GenerationRun owns.

Contract: specs/CORE-004-generation-runs.md ("Behaviour": deterministic names make every step
idempotent) and specs/CORE-001-resources.md (Job names `<run>-gen-<k>`, `<run>-test-<k>`).

Pure and shared: the run state machine asks for Jobs by these names and the builders create
them under the same names, so a restarted operator finds what it created before.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Literal

from smartspec.api.v1alpha1.common import DNS_LABEL_PATTERN
from smartspec.api.v1alpha1.generationrun import MAX_ATTEMPTS

DNS_LABEL_MAX_LENGTH = 63
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_DIGEST_LENGTH = 8


class SandboxRole(StrEnum):
    """Which sandbox program a pod runs; the value is the `smartspec.dev/role` label."""

    GENERATOR = "generator"
    TESTER = "tester"

    @property
    def short(self) -> str:
        """The name fragment: `gen` or `test`."""
        return "gen" if self is SandboxRole.GENERATOR else "test"


RoleLike = SandboxRole | Literal["generator", "tester", "gen", "test"]
_ROLES: dict[str, SandboxRole] = {
    **{role.value: role for role in SandboxRole},
    **{role.short: role for role in SandboxRole},
}


def generator_job_name(run_name: str, attempt: int) -> str:
    """`<run>-gen-<k>`, bounded to a DNS label."""
    return _bounded_name(run_name, f"gen-{checked_attempt(attempt)}")


def test_job_name(run_name: str, attempt: int) -> str:
    """`<run>-test-<k>`, bounded to a DNS label."""
    return _bounded_name(run_name, f"test-{checked_attempt(attempt)}")


# pytest would otherwise collect the function above as a test when a test module imports it.
test_job_name.__test__ = False  # type: ignore[attr-defined]


def job_name(run_name: str, attempt: int, role: RoleLike) -> str:
    """The Job name of either role."""
    if sandbox_role(role) is SandboxRole.GENERATOR:
        return generator_job_name(run_name, attempt)
    return test_job_name(run_name, attempt)


def instructions_secret_name(run_name: str, attempt: int, role: RoleLike) -> str:
    """`<run>-gen-<k>` or `<run>-test-<k>`: the same name as its Job (another kind)."""
    return _bounded_name(run_name, f"{sandbox_role(role).short}-{checked_attempt(attempt)}")


def network_policy_name(run_name: str, role: RoleLike) -> str:
    """`<run>-sandbox-gen` or `<run>-sandbox-test`, bounded to a DNS label."""
    return _bounded_name(run_name, f"sandbox-{sandbox_role(role).short}")


def _bounded_name(run_name: str, suffix: str) -> str:
    """`<run>-<suffix>` when that is a DNS label; else a truncated, hashed, unique one.

    The hash covers the full intended name, so two long runs sharing a prefix still differ;
    dots (legal in run names, not in labels) become dashes and likewise force the hash.
    """
    full = f"{run_name}-{suffix}"
    if len(full) <= DNS_LABEL_MAX_LENGTH and _DNS_LABEL.fullmatch(full):
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_DIGEST_LENGTH]
    room = DNS_LABEL_MAX_LENGTH - len(suffix) - len(digest) - 2
    head = run_name.replace(".", "-")[:room].rstrip("-")
    return f"{head}-{digest}-{suffix}"


def label_value(value: str) -> str:
    """Label values stop at 63 characters; run names may have 253."""
    if len(value) <= DNS_LABEL_MAX_LENGTH:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_LENGTH]
    head = value[: DNS_LABEL_MAX_LENGTH - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"


def checked_attempt(attempt: int) -> int:
    if (
        isinstance(attempt, bool)
        or not isinstance(attempt, int)
        or not 1 <= attempt <= MAX_ATTEMPTS
    ):
        raise ValueError(f"attempt must be an integer 1..{MAX_ATTEMPTS}, got {attempt!r}")
    return attempt


def sandbox_role(role: RoleLike) -> SandboxRole:
    try:
        return _ROLES[role]
    except KeyError:
        raise ValueError(f"role must be generator (gen) or tester (test), got {role!r}") from None
