"""The credential scan finds credentials and never returns them (CORE-002, "Secret scan").

Every sample below is a fake built for this test: none is a real credential.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from smartspec.logic.credential_scan import redact_credentials, scan_document, scan_text
from smartspec.observability.logs import configure_logging, get_logger

FAKE_AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
FAKE_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
FAKE_PRIVATE_KEY = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
)

HITS = [
    (f"use key {FAKE_AWS_KEY_ID} for uploads", "AwsAccessKeyId"),
    (f"aws_secret_access_key = {FAKE_AWS_SECRET}", "AwsSecretAccessKey"),
    (FAKE_PRIVATE_KEY, "PrivateKey"),
    ("-----BEGIN " + "OPENSSH PRIVATE KEY-----", "PrivateKey"),
    ("token ghp_" + "a" * 36, "GitHubToken"),
    ("glpat-" + "x" * 20, "GitLabToken"),
    ("xoxb-" + "1234567890-abcdef", "SlackToken"),
    ("OPENAI key sk-proj-" + "Ab1" * 10, "ModelProviderKey"),
    ("sk-ant-" + "api03-" + "z" * 30, "ModelProviderKey"),
    ("AIza" + "B" * 35, "GoogleApiKey"),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "StripeKey"),
    (
        "eyJhbGciOiJIUzI1NiJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0." + "dozjgNryP4J3jVmNHl0w5N",
        "JsonWebToken",
    ),
    ("connect to postgres://app:s3cr3tpass@db.internal/app", "UrlCredentials"),
    ("password: Tr0ub4dor&3xyz", "CredentialAssignment"),
    ('api_key = "q8Xv2LmN7pR4sT9w"', "CredentialAssignment"),
]


@pytest.mark.parametrize(("text", "rule_id"), HITS)
def test_known_credential_formats_are_found(text: str, rule_id: str) -> None:
    hits = scan_text(text, "spec.summary")
    assert rule_id in {hit.rule_id for hit in hits}


@pytest.mark.parametrize(
    "text",
    [
        "Clients can create a to-do item with a title.",
        "POST /todos without a title returns 400 and names the missing field.",
        "password: <your password here>",
        "api_key: ${OPENAI_API_KEY}",
        "password = os.environ['DB_PASSWORD']",
        "The secret: keep handlers small.",
        "Store the password hash with a per-user salt.",
        "sha256:" + "a" * 64,
    ],
)
def test_ordinary_specification_text_is_not_a_hit(text: str) -> None:
    assert scan_text(text, "spec.summary") == []


def test_hits_name_the_field_path_and_never_carry_the_value() -> None:
    document = {"requirements": [{"text": "ok", "acceptanceCriteria": ["x", FAKE_AWS_KEY_ID]}]}
    hits = scan_document(document)
    assert [(hit.path, hit.rule_id) for hit in hits] == [
        ("spec.requirements[0].acceptanceCriteria[1]", "AwsAccessKeyId")
    ]
    assert FAKE_AWS_KEY_ID not in repr(hits)


def test_multiline_text_reports_the_line() -> None:
    hits = scan_text(f"line one\nkey {FAKE_AWS_KEY_ID}\n", "generated/app.py")
    assert [hit.path for hit in hits] == ["generated/app.py:2"]


def test_redaction_replaces_every_credential_and_keeps_the_rest() -> None:
    text = (
        f"body {{'text': 'key {FAKE_AWS_KEY_ID}', 'password': 'Tr0ub4dor&3xyz'}} {FAKE_PRIVATE_KEY}"
    )
    redacted = redact_credentials(text)
    assert FAKE_AWS_KEY_ID not in redacted
    assert "Tr0ub4dor" not in redacted
    assert "PRIVATE KEY-----" not in redacted
    assert "[REDACTED:AwsAccessKeyId]" in redacted
    assert redacted.startswith("body {'text': 'key ")


def test_redaction_leaves_placeholders_and_plain_text_alone() -> None:
    text = "password: <your password here> and Clients can create items."
    assert redact_credentials(text) == text


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_json_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG")
    logging.getLogger("kopf.objects").debug(
        "Creation is in progress: %s", {"text": FAKE_AWS_KEY_ID}
    )
    get_logger("smartspec.test").info("Observed", detail=[f"see {FAKE_AWS_KEY_ID}"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert FAKE_AWS_KEY_ID not in json.dumps(lines)
    assert lines[0]["logger"] == "kopf.objects"
