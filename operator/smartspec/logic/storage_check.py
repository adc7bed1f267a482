"""The storage self-check's probe keys and verdicts (CORE-004, "Storage self-check").

Contract: specs/CORE-004-generation-runs.md, section "Storage self-check".

SmartSpec's storage guarantees rest on the backend: snapshots and ledger segments are
write-once only if it honours `If-None-Match: *`, and a sandbox's presigned POST stays
inside its attempt's prefix only if the backend checks the policy and stores a key with a
`..` segment literally (or refuses it) instead of resolving it. The storage layer probes
these behaviours (`smartspec.storage.self_check`); this module names the probe keys and
judges what was observed. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECK_ROOT = "_smartspec-check"
"""First key segment of every probe: never a namespace (DNS labels have no "_"), and its
second segment `runs` keeps the probes inside what the operator may write anyway."""

PROBE_MAX_BYTES = 64
"""The probe upload policy's size limit; the oversize probe sends one byte more."""


@dataclass(frozen=True)
class ProbeKeys:
    """Every key one self-check touches, under `<CHECK_ROOT>/runs/<check id>/`."""

    base: str

    @property
    def conditional(self) -> str:
        return self.base + "conditional"

    @property
    def dotted(self) -> str:
        """A key with a `..` segment that would resolve to `dotted_target`."""
        return self.base + "sub/../dotted"

    @property
    def dotted_target(self) -> str:
        return self.base + "dotted"

    @property
    def upload_prefix(self) -> str:
        return self.base + "upload/"

    @property
    def upload_inside(self) -> str:
        return self.upload_prefix + "inside"

    @property
    def upload_outside(self) -> str:
        return self.base + "outside"

    @property
    def upload_dotted(self) -> str:
        """Starts with the upload prefix, and resolves outside it."""
        return self.upload_prefix + "../escaped"

    @property
    def upload_dotted_target(self) -> str:
        return self.base + "escaped"

    @property
    def upload_oversize(self) -> str:
        return self.upload_prefix + "oversize"

    def all_keys(self) -> tuple[str, ...]:
        """Every key a probe may have created (for clean-up)."""
        return (
            self.conditional,
            self.dotted,
            self.dotted_target,
            self.upload_inside,
            self.upload_outside,
            self.upload_dotted,
            self.upload_dotted_target,
            self.upload_oversize,
        )


def probe_keys(check_id: str) -> ProbeKeys:
    """The probe keys of one check; `check_id` is unique per run of the check."""
    if not check_id or "/" in check_id or check_id in (".", ".."):
        raise ValueError(f"a check id must be one plain key segment, got {check_id!r}")
    return ProbeKeys(f"{CHECK_ROOT}/runs/{check_id}/")


@dataclass(frozen=True)
class Observations:
    """What the probes saw: HTTP statuses, and what the probe keys held afterwards."""

    conditional_first: int
    """Status of the first `PUT` with `If-None-Match: *` on a new key."""
    conditional_second: int
    """Status of the same request again, with another body."""
    conditional_kept: bool
    """The key still holds the first body."""
    dotted_put: int
    """Status of a `PUT` whose key has a `..` segment."""
    dotted_resolved: bool
    """The key that `..` resolves to holds that PUT's body."""
    upload_inside: int
    """Status of a presigned POST to a key under its prefix."""
    upload_outside: int
    """Status of the same POST to a key outside the prefix."""
    upload_outside_stored: bool
    upload_dotted: int
    """Status of the POST to `<prefix>../escaped`."""
    upload_dotted_resolved: bool
    upload_oversize: int
    """Status of the POST with one byte over the policy's size limit."""
    upload_oversize_stored: bool


@dataclass(frozen=True)
class CheckResult:
    """One verdict: its name, whether the backend passed, and why in a sentence."""

    name: str
    passed: bool
    detail: str


def _ok(status: int) -> bool:
    return 200 <= status < 300


def _refused(status: int) -> bool:
    return 400 <= status < 500


def judge(seen: Observations) -> list[CheckResult]:
    """A verdict per guarantee; a 5xx or an unexpected status fails it as unverified."""
    return [
        _judge_conditional(seen),
        _judge_dotted(seen),
        CheckResult(
            "upload",
            _ok(seen.upload_inside),
            f"a presigned POST under its prefix answered HTTP {seen.upload_inside}"
            + ("" if _ok(seen.upload_inside) else ": sandboxes could not upload"),
        ),
        _judge_refusal(
            "upload-prefix",
            seen.upload_outside,
            seen.upload_outside_stored,
            "a presigned POST to a key outside its prefix",
        ),
        _judge_refusal(
            "upload-dot-segments",
            seen.upload_dotted,
            seen.upload_dotted_resolved,
            "a presigned POST to <prefix>/../<key>",
            literal_ok=True,
        ),
        _judge_refusal(
            "upload-size",
            seen.upload_oversize,
            seen.upload_oversize_stored,
            "a presigned POST over the policy's size limit",
        ),
    ]


def _judge_conditional(seen: Observations) -> CheckResult:
    name = "conditional-writes"
    if not _ok(seen.conditional_first):
        return CheckResult(name, False, f"a conditional PUT answered HTTP {seen.conditional_first}")
    if seen.conditional_second == 412 and seen.conditional_kept:
        return CheckResult(name, True, "If-None-Match: * on an existing key answered HTTP 412")
    if not seen.conditional_kept:
        return CheckResult(
            name, False, "If-None-Match: * did not stop an overwrite: write-once is broken"
        )
    return CheckResult(
        name,
        False,
        f"If-None-Match: * on an existing key answered HTTP {seen.conditional_second}, not 412",
    )


def _judge_dotted(seen: Observations) -> CheckResult:
    name = "dot-segments"
    if seen.dotted_resolved:
        return CheckResult(
            name, False, "a key with a .. segment was stored under the key it resolves to"
        )
    if _refused(seen.dotted_put):
        return CheckResult(
            name, True, f"a key with a .. segment was refused (HTTP {seen.dotted_put})"
        )
    if _ok(seen.dotted_put):
        return CheckResult(name, True, "a key with a .. segment was stored literally")
    return CheckResult(name, False, f"a key with a .. segment answered HTTP {seen.dotted_put}")


def _judge_refusal(
    name: str, status: int, stored: bool, what: str, *, literal_ok: bool = False
) -> CheckResult:
    if stored:
        return CheckResult(name, False, f"{what} was stored (HTTP {status}): uploads can escape")
    if _refused(status):
        return CheckResult(name, True, f"{what} was refused (HTTP {status})")
    if _ok(status) and literal_ok:
        return CheckResult(name, True, f"{what} was stored literally, inside the prefix")
    return CheckResult(name, False, f"{what} answered HTTP {status}: not verified")


def failures(results: list[CheckResult]) -> list[CheckResult]:
    """The verdicts that failed."""
    return [result for result in results if not result.passed]


def describe(results: list[CheckResult]) -> list[str]:
    """One line per verdict, failures marked, for the CLI and the start-up log."""
    return [
        f"{'ok  ' if result.passed else 'FAIL'} {result.name}: {result.detail}"
        for result in results
    ]
