"""Parse Kubernetes manifests into the typed resources, with errors that name the field.

Contract: specs/CORE-001-resources.md, section "Validation".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from smartspec.api.v1alpha1 import API_VERSION, RESOURCES, Resource

_BY_KIND: dict[str, type[Resource]] = {resource.KIND: resource for resource in RESOURCES}


class ManifestError(ValueError):
    """A manifest is not a valid smartspec.dev resource; `problems` lists each field at fault."""

    def __init__(self, source: str, problems: list[str], fields: frozenset[str] = frozenset()):
        self.source = source
        self.problems = problems
        self.fields = fields
        """The wire paths at fault (`spec.period.timeZone`), where the schema named them."""
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
        # As the API server reads it: JSON types exactly (no 0 for false, no "3" for 3), and
        # a declared field set to null left out (pruned: no field of ours is nullable).
        text = json.dumps(_without_declared_nulls(resource_type, dict(document)))
        return resource_type.model_validate_json(text, strict=True)
    except ValidationError as error:
        fields = frozenset(_format_location(detail["loc"]) for detail in error.errors())
        raise ManifestError(source, describe_validation_error(error), fields) from None


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


def _without_declared_nulls(model: type[BaseModel], data: Any) -> Any:
    """`data` without the null members that name a field of `model`, at every depth; an
    unknown key stays, to be refused even when null, as the API server refuses it."""
    if not isinstance(data, Mapping):
        return data
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    kept: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            kept[key] = value
        elif value is not None:
            kept[key] = _prune(field.annotation, value)
    return kept


def _prune(annotation: Any, value: Any) -> Any:
    """Prune `value` by the model its annotation names (directly, in a list or an option)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _without_declared_nulls(annotation, value)
    for inner in get_args(annotation):
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            if isinstance(value, list) and get_origin(annotation) is list:
                return [_without_declared_nulls(inner, item) for item in value]
            return _without_declared_nulls(inner, value)
        if get_args(inner):
            value = _prune(inner, value)
    return value
