"""Parse Kubernetes manifests into the typed resources, with errors that name the field.

Contract: specs/CORE-001-resources.md, section "Validation".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from smartspec.api.v1alpha1 import API_VERSION, RESOURCES, Resource

_BY_KIND: dict[str, type[Resource]] = {resource.KIND: resource for resource in RESOURCES}


class ManifestError(ValueError):
    """A manifest is not a valid smartspec.dev resource; `problems` lists each field at fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def is_smartspec_manifest(document: Mapping[str, Any]) -> bool:
    """Whether the document claims to be one of our resources (by apiVersion group)."""
    api_version = document.get("apiVersion")
    return isinstance(api_version, str) and api_version.split("/")[0] == API_VERSION.split("/")[0]


def parse_manifest(document: Mapping[str, Any], source: str = "<manifest>") -> Resource:
    """Validate one manifest against the type its kind names."""
    api_version = document.get("apiVersion")
    if api_version != API_VERSION:
        raise ManifestError(source, [f"apiVersion: expected {API_VERSION!r}, got {api_version!r}"])
    kind = document.get("kind")
    resource_type = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if resource_type is None:
        known = ", ".join(sorted(_BY_KIND))
        raise ManifestError(source, [f"kind: expected one of {known}, got {kind!r}"])
    try:
        return resource_type.model_validate(dict(document))
    except ValidationError as error:
        raise ManifestError(source, describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: the wire path of the field, then what is wrong with it."""
    problems = []
    for detail in error.errors(include_url=False):
        path = _format_location(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {message}" if path else message)
    return problems


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = part
    return text
