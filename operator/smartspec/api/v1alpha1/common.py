"""Shared building blocks of the smartspec.dev/v1alpha1 resources.

Contract: specs/CORE-001-resources.md (sections "Conventions" and "Conditions").

Every model here is pure data: pydantic v2, camelCase on the wire, snake_case in Python,
unknown fields refused, credits as strict integers (a float or a string is an error that
names the field, never a silent conversion).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "smartspec.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "smartspec"

# Bounds used across the schemas. Every string and list that a CEL rule can reach needs a
# bound, or the API server rejects the CRD for an unbounded rule cost.
NAME_MAX_LENGTH = 253
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONTENT_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
# A Kubernetes resource quantity, e.g. "500m", "2", "1Gi".
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Upper bound for any credit amount: fits a signed 64-bit integer with room for sums.
MAX_CREDITS = 10**15

# Credits are integers, always: strict mode refuses 1.5, 1.0 and "1".
Credits = Annotated[int, Field(strict=True, ge=0, le=MAX_CREDITS)]
ResourceName = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)
]
ContentHash = Annotated[str, Field(max_length=71, pattern=CONTENT_HASH_PATTERN)]


def _require_timezone(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (RFC 3339, e.g. 2026-01-31T12:00:00Z)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_require_timezone)]


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` rule: the API server enforces it on every write.

    The pydantic models check the same property in Python (a model validator), so a bad
    manifest is refused with the same meaning before and after it reaches the cluster.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_schema(self) -> dict[str, str]:
        schema = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            schema["fieldPath"] = self.field_path
        if self.reason is not None:
            schema["reason"] = self.reason
        return schema


def _add_cel_rules(schema: dict[str, Any], model_class: type[BaseModel]) -> None:
    """Attach a model's CEL_RULES to its JSON schema (read at schema time, so late-bound)."""
    rules: tuple[CelRule, ...] = getattr(model_class, "CEL_RULES", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_schema() for rule in rules]


class WireModel(BaseModel):
    """Base of every wire type: camelCase aliases, unknown fields refused, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        json_schema_extra=_add_cel_rules,
    )

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The JSON-compatible camelCase form that the API server stores."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata the operator reads; everything else is kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL_PATTERN)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LocalObjectReference(WireModel):
    """A reference to another object in the same namespace, by name."""

    name: ResourceName
    """Name of the referenced object (same namespace)."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(WireModel):
    """One observation of the resource's state, with the fields of metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """Type of condition in CamelCase, e.g. Ready."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation that the condition was set from."""
    last_transition_time: AwareDatetime
    """Last time the condition changed from one status to another (RFC 3339)."""
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    """Programmatic identifier of the reason for the last transition, in PascalCase."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail about the transition."""


CONDITIONS_LIST_SCHEMA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column (additionalPrinterColumns)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0

    def to_schema(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")


class Resource(WireModel):
    """Common envelope of a smartspec.dev object: apiVersion, kind, metadata."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]]

    api_version: Literal["smartspec.dev/v1alpha1"]
    """Always smartspec.dev/v1alpha1."""
    kind: str
    """The resource kind."""
    metadata: ObjectMeta
    """Standard Kubernetes object metadata."""
