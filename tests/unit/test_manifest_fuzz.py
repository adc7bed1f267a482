"""`smartspec validate` against 600 malformed manifests (tests/fuzz/manifests.py): it never
crashes, and every rejection names the broken field (or a field above or below it), or, for
what is not YAML a manifest may hold, the line.

Contract: specs/CORE-001-resources.md, section "Validation". `SMARTSPEC_FUZZ_SEED` picks
other cases; the seed is printed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from fuzz.manifests import Case, cases, related
from smartspec.cli import main

CASES = 600
SEED = int(os.environ.get("SMARTSPEC_FUZZ_SEED", "20261202"))


@pytest.fixture(scope="module")
def fuzzed() -> list[Case]:
    print(f"fuzz seed: {SEED} (SMARTSPEC_FUZZ_SEED={SEED} replays these cases)")
    return cases(CASES, SEED)


def validate(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / f"case-{case.number}.yaml"
    path.write_text(case.text, encoding="utf-8")
    code = main(["validate", str(path)])  # a crash raises here and fails the test
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_malformed_manifest_is_refused_naming_the_field_or_the_line(
    fuzzed: list[Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: Counter[str] = Counter()
    for case in fuzzed:
        code, output = validate(case, tmp_path, capsys)
        assert code in {0, 1}, f"{case}: exit {code}\n{output}"
        if code == 0:
            outcomes[f"{case.kind}: accepted"] += 1
            continue
        outcomes[f"{case.kind}: refused"] += 1
        problems = [line.strip() for line in output.splitlines() if line.startswith("  ")]
        assert problems, f"{case}: refused without a reason\n{output}"
        if case.kind == "duplicate":
            assert re.search(r"line \d+, column \d+: duplicate key", problems[0]), output
            continue
        if problems[0].startswith("cannot read YAML: line "):
            assert case.kind == "deep", f"{case}: {output}"
            continue
        named = [p.split(":", 1)[0] for p in problems if ":" in p]
        assert any(related(field, case.path) for field in named), f"{case}:\n{output}"
    print(dict(sorted(outcomes.items())))
    # Cases that cannot pass: a key unknown to the schema, nesting past the limit, a repeat.
    assert outcomes["duplicate: accepted"] == 0
    assert outcomes["unknown_field: accepted"] == 0
    assert outcomes["wrong_type: refused"] > 0


def test_a_duplicate_key_is_refused_not_silently_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "apiVersion: smartspec.dev/v1alpha1\nkind: Spec\nmetadata: {name: a}\n"
        "spec:\n  title: One\n  title: Two\n",
        encoding="utf-8",
    )
    assert main(["validate", str(path)]) == 1
    output = capsys.readouterr().err
    assert "line 6, column 3: duplicate key 'title' (first on line 5)" in output


def test_nesting_too_deep_for_the_parser_is_refused_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("apiVersion: smartspec.dev/v1alpha1\nkind: Spec\nspec: " + "[" * 5000)
    assert main(["validate", str(path)]) == 1
    assert "nested more than 100 levels deep" in capsys.readouterr().err
