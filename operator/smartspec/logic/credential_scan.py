"""Find text that looks like a credential, without ever returning the credential.

Contract: specs/CORE-002-spec-registry.md, section "Secret scan" (the rule set is listed
there). Specs and generated code are both scanned (SPEC-001 principle 6).

The rules are specific formats (cloud, VCS and model-provider keys, private key blocks,
JWTs, credentials in URLs) plus one generic rule for `password: value`-style assignments
whose value is not an obvious placeholder. A hit reports where and which rule, never what:
callers put findings into status, Events and logs, which must not leak the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CredentialRule:
    """One detector: a stable id, what it finds, and its pattern."""

    rule_id: str
    description: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class CredentialHit:
    """A location that matched a rule. Deliberately holds no matched text."""

    path: str
    rule_id: str
    description: str


def _rule(rule_id: str, description: str, pattern: str, flags: int = 0) -> CredentialRule:
    return CredentialRule(rule_id, description, re.compile(pattern, flags))


RULES: tuple[CredentialRule, ...] = (
    _rule(
        "PrivateKey",
        "a private key block",
        r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----",
    ),
    _rule("AwsAccessKeyId", "an AWS access key id", r"\b(AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    _rule(
        "AwsSecretAccessKey",
        "an AWS secret access key",
        r"aws.{0,20}(secret|private).{0,20}[=:]\s*['\"]?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        re.IGNORECASE,
    ),
    _rule(
        "GitHubToken",
        "a GitHub token",
        r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    _rule("GitLabToken", "a GitLab token", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    _rule("SlackToken", "a Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    _rule(
        "ModelProviderKey",
        "a model provider API key (OpenAI, Anthropic style)",
        r"\bsk-(ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
    ),
    _rule("GoogleApiKey", "a Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
    _rule("StripeKey", "a Stripe key", r"\b(sk|rk)_(live|test)_[0-9A-Za-z]{16,}"),
    _rule(
        "JsonWebToken",
        "a JSON Web Token",
        r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
    ),
    _rule(
        "UrlCredentials",
        "a password inside a URL",
        r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]{3,}@",
        re.IGNORECASE,
    ),
)

# `name = value` or `name: value` where the name says credential. The value is checked
# separately against placeholders, so "password: <your password>" is not a hit.
_ASSIGNMENT = re.compile(
    r"\b(password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|access[_-]?key|"
    r"access[_-]?token|auth[_-]?token|bearer[_-]?token|private[_-]?key)\b"
    r"['\"]?\s*[:=]\s*['\"]?(?P<value>[^\s'\",;]{8,})",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(
    r"^(<.*>|\$\{.*\}|\{\{.*\}\}|\$[A-Z_][A-Z0-9_]*|[*xX.]+|(your|my|example|dummy|"
    r"placeholder|redacted|changeme|none|null|os\.environ|env\.|getenv).*)$",
    re.IGNORECASE,
)
# For redaction, a key block goes whole: header, body (possibly with escaped newlines, as in
# a repr) and footer.
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----"
    r"(.*?-----END ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----|[A-Za-z0-9+/=\s\\]*)",
    re.DOTALL,
)
ASSIGNMENT_RULE_ID = "CredentialAssignment"
ASSIGNMENT_DESCRIPTION = "a credential assigned in plain text"


def scan_text(text: str, path: str = "") -> list[CredentialHit]:
    """Every rule hit in one text, once per rule, located by `path` (and line, if several)."""
    hits: list[CredentialHit] = []
    lines = text.splitlines() or [text]
    for number, line in enumerate(lines, start=1):
        location = f"{path}:{number}" if len(lines) > 1 else path
        for rule in RULES:
            if rule.pattern.search(line):
                hits.append(CredentialHit(location, rule.rule_id, rule.description))
        for match in _ASSIGNMENT.finditer(line):
            if not _PLACEHOLDER.match(match.group("value")):
                hits.append(CredentialHit(location, ASSIGNMENT_RULE_ID, ASSIGNMENT_DESCRIPTION))
                break
    return hits


def scan_document(document: Mapping[str, Any], root: str = "spec") -> list[CredentialHit]:
    """Every hit in the string values of a JSON-like document, located by field path."""
    return [hit for path, text in _strings(document, root) for hit in scan_text(text, path)]


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, child in value.items():
            yield from _strings(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _strings(child, f"{path}[{index}]")


def redact_credentials(text: str) -> str:
    """The text with every rule match replaced by [REDACTED:<rule>], for log lines.

    Logs are the one place where arbitrary text (a library's debug dump of a whole object)
    is written, so they get redaction on top of the scan that keeps secrets out of status.
    """
    text = _PRIVATE_KEY_BLOCK.sub("[REDACTED:PrivateKey]", text)
    for rule in RULES:
        text = rule.pattern.sub(f"[REDACTED:{rule.rule_id}]", text)

    def _value(match: re.Match[str]) -> str:
        value = match.group("value")
        if _PLACEHOLDER.match(value):
            return match.group(0)
        start, end = match.span("value")
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + f"[REDACTED:{ASSIGNMENT_RULE_ID}]" + whole[end - offset :]

    return _ASSIGNMENT.sub(_value, text)
