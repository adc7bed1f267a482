"""Lint a Spec's content: the checks a schema cannot express.

Contract: specs/CORE-002-spec-registry.md, section "Lint".

The CRD schema already refuses missing fields, bad enums, duplicate requirement ids and empty
acceptance criteria at the API server. Lint finds what needs the whole document or other
objects: references between items, path templates that contradict their CRUD action,
dependencies that are missing or too old, content too large to snapshot and prompt with,
and credentials. Every finding carries the path of the offending item.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smartspec.api.v1alpha1.spec import (
    EndpointAction,
    Finding,
    HttpMethod,
    Lifecycle,
    Severity,
    SpecSpec,
)
from smartspec.logic.canonical import canonical_json
from smartspec.logic.credential_scan import scan_document

# Snapshots are read whole by the generator and fed to models: keep them prompt-sized.
MAX_CONTENT_BYTES = 256 * 1024

SECRET_DETECTED = "SecretDetected"  # noqa: S105 (a finding code, not a secret)
MISSING_DEPENDENCY = "MissingDependency"

_PATH_PARAMETER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_ITEM_ACTIONS = {EndpointAction.GET, EndpointAction.UPDATE, EndpointAction.DELETE}
_EXPECTED_METHODS: dict[EndpointAction, set[HttpMethod]] = {
    EndpointAction.LIST: {HttpMethod.GET},
    EndpointAction.GET: {HttpMethod.GET},
    EndpointAction.CREATE: {HttpMethod.POST},
    EndpointAction.UPDATE: {HttpMethod.PUT, HttpMethod.PATCH},
    EndpointAction.DELETE: {HttpMethod.DELETE},
}
_SEMVER_CORE = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class KnownSpec:
    """What lint needs to know of another Spec in the namespace."""

    version: str
    lifecycle: Lifecycle


def known_spec(spec: Mapping[str, Any]) -> KnownSpec:
    """What other Specs need of this one, from its raw .spec (tolerant: it feeds an index)."""
    lifecycle = spec.get("lifecycle", Lifecycle.DRAFT.value)
    try:
        parsed = Lifecycle(lifecycle)
    except ValueError:
        parsed = Lifecycle.DRAFT
    return KnownSpec(version=str(spec.get("version", "")), lifecycle=parsed)


def lint_spec(name: str, content: SpecSpec, known_specs: Mapping[str, KnownSpec]) -> list[Finding]:
    """Every finding for one Spec, errors and warnings, in a stable order."""
    findings: list[Finding] = []
    findings += _scan_credentials(content)
    findings += _check_size(content)
    findings += _check_endpoints(content)
    findings += _check_criteria(content)
    findings += _check_dependencies(name, content, known_specs)
    return findings


def has_errors(findings: list[Finding]) -> bool:
    """Whether any finding makes the Spec invalid."""
    return any(finding.severity is Severity.ERROR for finding in findings)


def _error(code: str, path: str, message: str) -> Finding:
    return Finding(severity=Severity.ERROR, code=code, path=path, message=message)


def _warning(code: str, path: str, message: str) -> Finding:
    return Finding(severity=Severity.WARNING, code=code, path=path, message=message)


def _scan_credentials(content: SpecSpec) -> list[Finding]:
    return [
        _error(
            SECRET_DETECTED,
            hit.path,
            f"text here looks like {hit.description} (rule {hit.rule_id}); remove it: specs "
            "must never hold credentials",
        )
        for hit in scan_document(content.to_wire(), root="spec")
    ]


def _check_size(content: SpecSpec) -> list[Finding]:
    size = len(canonical_json(content.content()))
    if size <= MAX_CONTENT_BYTES:
        return []
    return [
        _error(
            "ContentTooLarge",
            "spec",
            f"canonical content is {size} bytes, more than the {MAX_CONTENT_BYTES} allowed; "
            "split the Spec and use dependsOn",
        )
    ]


def _check_endpoints(content: SpecSpec) -> list[Finding]:
    if content.interfaces is None:
        return []
    findings: list[Finding] = []
    requirement_ids = {requirement.id for requirement in content.requirements}
    for index, endpoint in enumerate(content.interfaces.endpoints):
        path = f"spec.interfaces.endpoints[{index}]"
        for ref_index, reference in enumerate(endpoint.requirements):
            if reference not in requirement_ids:
                findings.append(
                    _error(
                        "UnknownRequirement",
                        f"{path}.requirements[{ref_index}]",
                        f"requirement {reference} is not declared in spec.requirements",
                    )
                )
        if endpoint.action is None:
            continue
        has_parameter = bool(_PATH_PARAMETER.search(endpoint.path))
        if endpoint.action in _ITEM_ACTIONS and not has_parameter:
            findings.append(
                _error(
                    "PathParameterMissing",
                    f"{path}.path",
                    f"a {endpoint.action.value} endpoint addresses one item, so its path "
                    f"needs a parameter such as {{id}}: {endpoint.path}",
                )
            )
        if endpoint.action not in _ITEM_ACTIONS and endpoint.path.rstrip("/").endswith("}"):
            findings.append(
                _error(
                    "PathParameterUnexpected",
                    f"{path}.path",
                    f"a {endpoint.action.value} endpoint addresses the collection, so its "
                    f"path must not end in a parameter: {endpoint.path}",
                )
            )
        if endpoint.method not in _EXPECTED_METHODS[endpoint.action]:
            expected = " or ".join(sorted(m.value for m in _EXPECTED_METHODS[endpoint.action]))
            findings.append(
                _warning(
                    "MethodActionMismatch",
                    f"{path}.method",
                    f"a {endpoint.action.value} endpoint usually uses {expected}, "
                    f"not {endpoint.method.value}",
                )
            )
    return findings


def _check_criteria(content: SpecSpec) -> list[Finding]:
    findings: list[Finding] = []
    for index, requirement in enumerate(content.requirements):
        seen: set[str] = set()
        for criterion_index, criterion in enumerate(requirement.acceptance_criteria):
            normalised = " ".join(criterion.lower().split())
            if normalised in seen:
                findings.append(
                    _warning(
                        "DuplicateCriterion",
                        f"spec.requirements[{index}].acceptanceCriteria[{criterion_index}]",
                        f"repeats an earlier acceptance criterion of {requirement.id}",
                    )
                )
            seen.add(normalised)
    return findings


def _check_dependencies(
    name: str, content: SpecSpec, known_specs: Mapping[str, KnownSpec]
) -> list[Finding]:
    findings: list[Finding] = []
    for index, dependency in enumerate(content.depends_on):
        path = f"spec.dependsOn[{index}]"
        if dependency.name == name:
            findings.append(_error("SelfDependency", path, "a Spec cannot depend on itself"))
            continue
        known = known_specs.get(dependency.name)
        if known is None:
            findings.append(
                _error(
                    MISSING_DEPENDENCY,
                    f"{path}.name",
                    f"Spec {dependency.name} does not exist in this namespace",
                )
            )
            continue
        if dependency.min_version is not None and _older(known.version, dependency.min_version):
            findings.append(
                _error(
                    "DependencyTooOld",
                    f"{path}.minVersion",
                    f"Spec {dependency.name} is at version {known.version}, below the "
                    f"required {dependency.min_version}",
                )
            )
        if known.lifecycle is Lifecycle.DEPRECATED:
            findings.append(
                _warning(
                    "DependencyDeprecated",
                    f"{path}.name",
                    f"Spec {dependency.name} is Deprecated",
                )
            )
    return findings


def _older(version: str, minimum: str) -> bool:
    """Semantic-version comparison of the numeric core (pre-release tags sort first)."""
    return _version_key(version) < _version_key(minimum)


def _version_key(version: str) -> tuple[int, int, int, int]:
    match = _SEMVER_CORE.match(version)
    if match is None:
        return (0, 0, 0, 0)
    major, minor, patch = (int(part) for part in match.groups())
    release = 0 if "-" in version.split("+", maxsplit=1)[0] else 1
    return (major, minor, patch, release)
