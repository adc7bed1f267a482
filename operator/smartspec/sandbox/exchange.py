"""What both sandbox programs exchange with storage: the pinned Spec in, their outputs out.

Contract: specs/CORE-004-generation-runs.md, section "Sandbox contract" (`spec.snapshotUrl`,
`spec.contentHash` and `upload`).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import ValidationError

from smartspec.api.sandbox import SpecRef, UploadPolicy, describe_validation_error
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import HASH_PREFIX

from . import ExitCode, ProgramExit
from .transfer import TransferError, download, upload

MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024


def read_pinned_spec(pinned: SpecRef) -> SpecSpec:
    """Download the snapshot, check it is the pinned content, and parse it."""
    try:
        snapshot = download(pinned.snapshot_url, max_bytes=MAX_SNAPSHOT_BYTES)
    except TransferError as error:
        raise ProgramExit(
            ExitCode.BAD_INPUT, "Error", f"cannot read the spec snapshot: {error}"
        ) from None
    actual = HASH_PREFIX + hashlib.sha256(snapshot).hexdigest()
    if actual != pinned.content_hash:
        raise ProgramExit(
            ExitCode.BAD_INPUT,
            "Error",
            f"the spec snapshot has sha256 {actual}, but spec.contentHash is "
            f"{pinned.content_hash}: refusing content that was not pinned",
        )
    try:
        return SpecSpec.model_validate(json.loads(snapshot))
    except (ValueError, ValidationError) as error:
        problems = (
            "; ".join(describe_validation_error(error))
            if isinstance(error, ValidationError)
            else str(error)
        )
        raise ProgramExit(
            ExitCode.BAD_INPUT, "Error", f"the spec snapshot is not valid Spec content: {problems}"
        ) from None


def store(policy: UploadPolicy, suffix: str, body: bytes, content_type: str) -> str:
    """Upload one output under the attempt's prefix; a failure ends the program (exit 2)."""
    try:
        return upload(policy, suffix, body, content_type)
    except TransferError as error:
        raise ProgramExit(ExitCode.BAD_INPUT, "Error", f"cannot upload {suffix}: {error}") from None
