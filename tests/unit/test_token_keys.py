"""The run-token key file: one parser for the operator and the gateway, and both refuse to
start on a file it refuses (specs/CORE-003-gateway-and-budgets.md, "Run tokens")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smartspec.logic.run_tokens import InvalidTokenKeysError, parse_token_keys
from testcluster.harness import write_gateway_config

KEY = "k" * 32


def test_keys_are_read_current_first_and_blank_lines_ignored() -> None:
    text = f"\n  {KEY}1  \n\n{KEY}2\n"
    assert parse_token_keys(text, "keys") == (f"{KEY}1".encode(), f"{KEY}2".encode())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "keys holds no run-token key"),
        ("\n  \n", "keys holds no run-token key"),
        (f"{KEY}\nshort\n", "keys: line 2 holds a key of 5 bytes; each run-token key needs at"),
        (f"{KEY} {KEY}\n", "keys: line 1 holds whitespace inside its key"),
    ],
)
def test_an_unusable_key_file_is_refused_naming_the_line(text: str, problem: str) -> None:
    with pytest.raises(InvalidTokenKeysError) as caught:
        parse_token_keys(text, "keys")
    assert str(caught.value).startswith(problem)
    assert "short" not in str(caught.value), "key material never reaches a message"


def start(process: str, keys: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`smartspec operator|gateway` with this key file; no cluster is reachable."""
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
        "SMARTSPEC_S3_BUCKET": "smartspec-test",
        "SMARTSPEC_TOKEN_KEYS_FILE": str(keys),
        "SMARTSPEC_GATEWAY_TOKEN_KEYS_FILE": str(keys),
        "SMARTSPEC_GATEWAY_CONFIG": str(
            write_gateway_config(tmp_path / "gateway.yaml", "http://127.0.0.1:9")
        ),
        "SMARTSPEC_METRICS_PORT": "0",
        "SMARTSPEC_LIVENESS_PORT": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "smartspec", process],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("process", ["operator", "gateway"])
@pytest.mark.parametrize("content", ["", "\n\n", "too-short\n"])
def test_both_processes_refuse_to_start_on_an_unusable_key_file(
    process: str, content: str, tmp_path: Path
) -> None:
    keys = tmp_path / "token-keys"
    keys.write_text(content)
    done = start(process, keys, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"the {process} cannot start: {keys}" in done.stderr
