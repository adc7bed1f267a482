"""`smartspec verify run|attestation` and `smartspec provenance public-key|generate-key`.

Contract: specs/CORE-005-provenance.md, sections "Verification" and "Keys".

The verifier prints one line per fact it checked and stops at the first mismatch, which it
names; it exits 0 only when every check passed. It reads objects with the standard AWS
credential chain and `SMARTSPEC_S3_ENDPOINT_URL`/`SMARTSPEC_S3_REGION`, from whichever bucket
the attestation names: an auditor needs the public key and read access to that bucket.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from smartspec.logic import provenance as p
from smartspec.provenance.keys import (
    Algorithm,
    InvalidProvenanceKeysError,
    VerifyingKey,
    generate_signing_key,
    parse_public_keys,
    read_provenance_keys,
)
from smartspec.provenance.verify import Attested, Check, check_envelope, check_live, check_statement
from smartspec.storage import ObjectMissingError, S3ObjectStore, StorageError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class BucketReader:
    """Reads s3://bucket/key URIs with the caller's credentials, one client per bucket."""

    def __init__(self) -> None:
        self._stores: dict[str, S3ObjectStore] = {}

    def __call__(self, uri: str) -> bytes | None:
        if not uri.startswith("s3://") or uri.count("/") < 3:
            raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        if bucket not in self._stores:
            self._stores[bucket] = S3ObjectStore(
                bucket,
                endpoint_url=os.environ.get("SMARTSPEC_S3_ENDPOINT_URL"),
                region=os.environ.get("SMARTSPEC_S3_REGION", "us-east-1"),
            )
        try:
            return self._stores[bucket].get(key)
        except ObjectMissingError:
            return None


def _load_keys(path: Path, err: TextIO) -> tuple[VerifyingKey, ...] | None:
    try:
        return parse_public_keys(path.read_text(encoding="ascii", errors="replace"), str(path))
    except (OSError, InvalidProvenanceKeysError) as error:
        err.write(f"cannot read the public key: {error}\n")
        return None


def _report(checks: Iterable[Check | Attested], out: TextIO) -> tuple[bool, Attested | None]:
    """Print each check; False at the first mismatch (and stop reading checks)."""
    attested = None
    for item in checks:
        if isinstance(item, Attested):
            attested = item
            continue
        if item.problem is not None:
            out.write(f"FAILED {item.problem}\n")
            return False, attested
        out.write(f"ok     {item.what}\n")
    return True, attested


def verify_attestation(envelope: Path, key: Path, out: TextIO, err: TextIO) -> int:
    keys = _load_keys(key, err)
    if keys is None:
        return EXIT_USAGE
    try:
        raw = envelope.read_bytes()
    except OSError as error:
        err.write(f"cannot read {envelope}: {error}\n")
        return EXIT_USAGE
    reader = BucketReader()
    try:
        ok, attested = _report(check_envelope(raw, keys), out)
        if ok and attested is not None:
            ok, _ = _report(check_statement(attested.statement, reader), out)
    except StorageError as error:
        out.write(f"FAILED cannot read the bucket: {error}\n")
        return EXIT_FAILURE
    out.write("attestation OK\n" if ok else "attestation does NOT verify\n")
    return EXIT_OK if ok else EXIT_FAILURE


def verify_run(reference: str, key: Path, out: TextIO, err: TextIO) -> int:
    namespace, _, name = reference.partition("/")
    if not namespace or not name:
        err.write(f"expected NAMESPACE/NAME, got {reference!r}\n")
        return EXIT_USAGE
    keys = _load_keys(key, err)
    if keys is None:
        return EXIT_USAGE
    from smartspec.kube.client import KubeError  # noqa: PLC0415 - only this command needs it

    try:
        run = asyncio.run(_read(namespace, "generationruns", name))
    except KubeError as error:
        err.write(f"cannot read GenerationRun {reference}: {error}\n")
        return EXIT_FAILURE
    try:
        ok = _verify_live(run, keys, out)
    except KubeError as error:
        out.write(f"FAILED cannot read the API: {error}\n")
        ok = False
    except StorageError as error:
        out.write(f"FAILED cannot read the bucket: {error}\n")
        ok = False
    out.write("run attestation OK\n" if ok else "run attestation does NOT verify\n")
    return EXIT_OK if ok else EXIT_FAILURE


def _verify_live(run: dict[str, Any], keys: tuple[VerifyingKey, ...], out: TextIO) -> bool:
    recorded = (run.get("status") or {}).get("provenance")
    if not recorded:
        out.write("FAILED the run has no attestation yet (status.provenance is empty)\n")
        return False
    reader = BucketReader()
    raw = reader(recorded["uri"])
    if raw is None:
        out.write(f"FAILED envelope: {recorded['uri']} is missing\n")
        return False
    digest = "sha256:" + p.sha256_hex(raw)
    if digest != recorded["sha256"]:
        out.write(
            f"FAILED envelope: {recorded['uri']} has {digest}, the run's status says "
            f"{recorded['sha256']}\n"
        )
        return False
    out.write(f"ok     envelope {recorded['uri']} ({digest})\n")
    ok, attested = _report(check_envelope(raw, keys), out)
    if not ok or attested is None:
        return False
    ok, _ = _report(check_statement(attested.statement, reader), out)
    if not ok:
        return False
    ledgers = [
        d
        for d in attested.statement["predicate"]["runDetails"].get("byproducts") or []
        if d.get("name") == p.LEDGER
    ]
    budget = None
    if ledgers:
        namespace = run["metadata"]["namespace"]
        budget_name = ledgers[0]["annotations"]["budget"]
        budget = asyncio.run(_read(namespace, "creditbudgets", budget_name))
    ok, _ = _report(check_live(attested.statement, run, budget, reader), out)
    return ok


async def _read(namespace: str, plural: str, name: str) -> dict[str, Any]:
    from smartspec.kube.client import (  # noqa: PLC0415
        KubeClient,
        custom_object_path,
        load_configuration,
    )

    async with KubeClient(load_configuration()) as kube:
        return await kube.get(custom_object_path(plural, namespace, name))


def print_public_keys(keys_file: Path | None, every: bool, out: TextIO, err: TextIO) -> int:
    """The current key's public PEM (what an auditor passes to --key); --all: every key."""
    path = keys_file or _env_path("SMARTSPEC_PROVENANCE_KEYS_FILE")
    if path is None:
        err.write("give --keys-file or set SMARTSPEC_PROVENANCE_KEYS_FILE\n")
        return EXIT_USAGE
    try:
        ring = read_provenance_keys(path)
    except (OSError, InvalidProvenanceKeysError) as error:
        err.write(f"cannot read the provenance keys: {error}\n")
        return EXIT_FAILURE
    for index, key in enumerate(ring.keys if every else ring.keys[:1]):
        if every:
            role = "current: signs new attestations" if index == 0 else "earlier key"
            out.write(f"# keyid {key.key_id} ({key.algorithm}, {role})\n")
        out.write(key.public_pem())
    return EXIT_OK


def print_new_key(algorithm: Algorithm, out: TextIO) -> int:
    out.write(generate_signing_key(algorithm))
    return EXIT_OK


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
