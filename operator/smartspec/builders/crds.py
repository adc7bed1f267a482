"""Render CustomResourceDefinitions from the pydantic types.

Contract: specs/CORE-001-resources.md, section "CRD generation".

pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema. The
differences this module bridges, each a reason the API server would refuse the raw output:
- `$ref`/`$defs` are not allowed: every reference is inlined, and the referring field's own
  description and default win over the referenced type's.
- Optional fields arrive as `anyOf: [X, {type: null}]`: a CRD omits the field instead, so the
  null branch is dropped (no `nullable`, because the models never send null: they exclude None).
- `int | str` (resource quantities) becomes `x-kubernetes-int-or-string`.
- `additionalProperties: false` may not stand beside `properties`; unknown fields are pruned
  or refused by the API server anyway (kubectl's strict field validation names them).
- `title`, `examples`, `const` and numeric `exclusiveMinimum` are not OpenAPI v3.0 as the API
  server reads it.
- Status carries no defaults: only its writers set it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import yaml

from smartspec.api.v1alpha1 import CATEGORY, GROUP, RESOURCES, VERSION, Resource

Schema = dict[str, Any]

CRD_API_VERSION = "apiextensions.k8s.io/v1"
_DROPPED_KEYS = frozenset({"title", "examples", "$defs", "discriminator", "$schema"})
_COMMON_LABELS = {"app.kubernetes.io/name": "smartspec", "app.kubernetes.io/part-of": "smartspec"}


class SchemaConversionError(ValueError):
    """The pydantic schema uses a construct that has no structural-CRD equivalent."""


def crd_name(resource: type[Resource]) -> str:
    """The CRD's metadata.name, <plural>.<group>."""
    return f"{resource.PLURAL}.{GROUP}"


def build_crds(resources: Iterable[type[Resource]] = RESOURCES) -> list[Schema]:
    """Every CRD of the served version, ready to serialise."""
    return [build_crd(resource) for resource in resources]


def build_crd(resource: type[Resource]) -> Schema:
    """One CRD for a resource type, with schema, printer columns, names and status subresource."""
    raw = resource.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Schema] = raw.get("$defs", {})
    properties = raw["properties"]
    spec_schema = _to_structural(properties["spec"], definitions, path="spec", in_status=False)
    status_schema = _to_structural(properties["status"], definitions, path="status", in_status=True)
    open_api_schema: Schema = {
        "type": "object",
        "description": _clean_description(resource.__doc__ or resource.KIND),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this representation of an object.",
            },
            "kind": {"type": "string", "description": "REST resource this object represents."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
    }
    singular = resource.KIND.lower()
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name(resource), "labels": dict(_COMMON_LABELS)},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.KIND,
                "listKind": f"{resource.KIND}List",
                "plural": resource.PLURAL,
                "singular": singular,
                "shortNames": list(resource.SHORT_NAMES),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        column.to_schema() for column in resource.PRINTER_COLUMNS
                    ],
                    "schema": {"openAPIV3Schema": open_api_schema},
                }
            ],
        },
    }


def _to_structural(
    node: Schema, definitions: dict[str, Schema], *, path: str, in_status: bool
) -> Schema:
    node = dict(node)
    # A reference (possibly wrapped in a one-element allOf) is replaced by its target; the
    # referring node's own keys (description, default, list-type markers) take precedence.
    reference = node.pop("$ref", None)
    if reference is None and len(node.get("allOf", ())) == 1:
        reference = node.pop("allOf")[0].get("$ref")
    if reference is not None:
        target = _resolve(reference, definitions)
        return _to_structural({**target, **node}, definitions, path=path, in_status=in_status)

    if "anyOf" in node:
        branches = [branch for branch in node.pop("anyOf") if branch.get("type") != "null"]
        if node.get("default", "absent") is None:
            del node["default"]
        types = sorted(branch.get("type", "") for branch in branches)
        if len(branches) == 1:
            merged = {**branches[0], **node}
            return _to_structural(merged, definitions, path=path, in_status=in_status)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            return _finish(node, definitions, path=path, in_status=in_status)
        raise SchemaConversionError(
            f"{path}: unions other than Optional[X] and int | str have no structural CRD form"
        )
    return _finish(node, definitions, path=path, in_status=in_status)


def _finish(node: Schema, definitions: dict[str, Schema], *, path: str, in_status: bool) -> Schema:
    result: Schema = {}
    for key, value in node.items():
        if _is_dropped(key, value, in_status=in_status):
            continue
        if key == "properties":
            result[key] = {
                name: _to_structural(child, definitions, path=f"{path}.{name}", in_status=in_status)
                for name, child in value.items()
            }
        elif key in {"items", "additionalProperties"}:
            result[key] = _to_structural(value, definitions, path=f"{path}[]", in_status=in_status)
        else:
            result.update(_convert_keyword(key, value))
    if "properties" in result:
        result.setdefault("type", "object")
    if "enum" in result and "type" not in result:
        result["type"] = _json_type(result["enum"][0], path)
    if "type" not in result and not result.get("x-kubernetes-int-or-string"):
        raise SchemaConversionError(f"{path}: a structural schema needs a type")
    return dict(sorted(result.items(), key=lambda item: _key_rank(item[0])))


def _is_dropped(key: str, value: object, *, in_status: bool) -> bool:
    if key in _DROPPED_KEYS:
        return True
    if key == "additionalProperties" and value is False:
        return True
    return key == "default" and (value is None or in_status)


def _convert_keyword(key: str, value: Any) -> Schema:
    """One JSON Schema 2020-12 keyword as OpenAPI v3.0 (the API server's dialect)."""
    if key == "description":
        return {key: _clean_description(value)}
    if key == "const":
        return {"enum": [value]}
    if key in {"exclusiveMinimum", "exclusiveMaximum"} and not isinstance(value, bool):
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        return {bound: value, key: True}
    return {key: copy.deepcopy(value)}


# Keys in the order a reader wants them: what it is, then its bounds, then its children, then
# the Kubernetes extensions. Byte-identical output depends on this order being total.
_LEADING_KEYS = ("description", "type", "format", "enum", "default")
_TRAILING_KEYS = ("properties", "required", "items", "additionalProperties")


def _key_rank(key: str) -> tuple[int, int, str]:
    if key in _LEADING_KEYS:
        return (0, _LEADING_KEYS.index(key), key)
    if key in _TRAILING_KEYS:
        return (2, _TRAILING_KEYS.index(key), key)
    if key.startswith("x-kubernetes-"):
        return (3, 0, key)
    return (1, 0, key)


def _resolve(reference: str, definitions: dict[str, Schema]) -> Schema:
    prefix = "#/$defs/"
    if not reference.startswith(prefix) or reference[len(prefix) :] not in definitions:
        raise SchemaConversionError(f"unresolvable schema reference {reference!r}")
    return definitions[reference[len(prefix) :]]


def _json_type(value: object, path: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    raise SchemaConversionError(f"{path}: enum value {value!r} has no JSON type")


def _clean_description(text: str) -> str:
    """Collapse docstring layout into one paragraph per blank-line block."""
    paragraphs = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def render_crd_yaml(crd: Schema) -> str:
    """The CRD as committed under crds/: YAML in a fixed key order, so output is reproducible."""
    header = "# Generated by `smartspec crds` from operator/smartspec/api; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def crd_file_name(crd: Schema) -> str:
    """kubebuilder's naming: <group>_<plural>.yaml."""
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"
