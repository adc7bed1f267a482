"""`smartspec provenance` and `smartspec verify`: keys for auditors, usage errors named.

Contract: specs/CORE-005-provenance.md, sections "Keys" and "Verification". Verifying real
runs against a real bucket is in tests/integration/test_provenance.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smartspec.cli import main
from smartspec.provenance.keys import parse_provenance_keys, parse_public_keys


def test_a_generated_key_signs_and_its_public_part_is_what_auditors_get(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provenance", "generate-key", "--algorithm", "ed25519"]) == 0
    private = capsys.readouterr().out
    assert private.startswith("-----BEGIN PRIVATE KEY-----")
    assert main(["provenance", "generate-key"]) == 0
    older = capsys.readouterr().out
    keys = tmp_path / "keys.pem"
    keys.write_text(private + older)
    ring = parse_provenance_keys(keys.read_text(), "keys")

    assert main(["provenance", "public-key", "--keys-file", str(keys)]) == 0
    public = capsys.readouterr().out
    assert "PRIVATE" not in public
    assert [k.key_id for k in parse_public_keys(public, "out")] == [ring.signing.key_id]

    assert main(["provenance", "public-key", "--keys-file", str(keys), "--all"]) == 0
    every = capsys.readouterr().out
    assert [k.key_id for k in parse_public_keys(every, "out")] == [k.key_id for k in ring.keys]
    assert f"# keyid {ring.signing.key_id} (ed25519, current" in every


def test_a_bad_key_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.pem"
    keys.write_text("nothing here\n")
    assert main(["provenance", "public-key", "--keys-file", str(keys)]) == 1
    assert f"{keys} holds no PEM key" in capsys.readouterr().err


def test_verify_refuses_what_it_cannot_start_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "pub.pem"
    assert main(["verify", "attestation", str(tmp_path / "x.json"), "--key", str(missing)]) == 2
    assert "cannot read the public key" in capsys.readouterr().err
    assert main(["verify", "run", "no-slash", "--key", str(missing)]) == 2
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err
