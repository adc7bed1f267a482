"""The `Spec` resource: one governed, versioned software specification.

Contract: specs/CORE-001-resources.md, section "Spec".

The content of a Spec is everything under `.spec` except `lifecycle`: that is what the content
hash covers and what becomes immutable once the Spec is Approved. Lifecycle is governance, not
content, so approving a Spec does not change its revision.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .common import (
    AGE_COLUMN,
    CONDITIONS_LIST_SCHEMA,
    DNS_SUBDOMAIN_PATTERN,
    NAME_MAX_LENGTH,
    AwareDatetime,
    CelRule,
    Condition,
    ContentHash,
    PrinterColumn,
    Resource,
    WireModel,
)

KIND = "Spec"
PLURAL = "specs"

REQUIREMENT_ID_PATTERN = r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*-[0-9]+$"
IDENTIFIER_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)
MAX_REQUIREMENTS = 200
MAX_CRITERIA = 20
MAX_ENTITIES = 50
MAX_FIELDS = 50
MAX_ENDPOINTS = 100
MAX_DEPENDENCIES = 100
MAX_TEXT = 4000
MAX_FINDINGS = 50
MAX_HISTORY = 20


class Lifecycle(StrEnum):
    """Governance state. Draft -> Approved -> Deprecated; Approved content is immutable."""

    DRAFT = "Draft"
    APPROVED = "Approved"
    DEPRECATED = "Deprecated"


class ConditionType(StrEnum):
    """Condition types a Spec reports."""

    VALID = "Valid"
    """Schema, lint and secret scan passed for the observed generation."""
    READY = "Ready"
    """Valid, and the current revision's snapshot is stored: runs may build from it."""


class Reason(StrEnum):
    """Reasons of Spec conditions (PascalCase, stable: tools match on them)."""

    LINT_PASSED = "LintPassed"
    LINT_FAILED = "LintFailed"
    SECRET_DETECTED = "SecretDetected"  # noqa: S105 (a reason name, not a secret)
    DEPENDENCY_MISSING = "DependencyMissing"
    SNAPSHOT_STORED = "SnapshotStored"
    SNAPSHOT_FAILED = "SnapshotFailed"
    INVALID = "Invalid"
    DEPRECATED = "Deprecated"


class Owner(WireModel):
    """Who answers for the specification."""

    team: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Owning team, a DNS label such as payments."""
    contact: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    """Contact address of the owner, e.g. payments@example.com."""


class Priority(StrEnum):
    """MoSCoW priority of a requirement."""

    MUST = "Must"
    SHOULD = "Should"
    COULD = "Could"


class Requirement(WireModel):
    """One requirement with the acceptance criteria that tests must demonstrate."""

    id: str = Field(max_length=64, pattern=REQUIREMENT_ID_PATTERN)
    """Stable identifier, unique in the Spec, e.g. REQ-001. Generated tests cite it."""
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    """What the software must do, in one or a few sentences."""
    acceptance_criteria: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        min_length=1, max_length=MAX_CRITERIA
    )
    """Observable conditions that show the requirement is met; at least one."""
    priority: Priority = Priority.MUST
    """MoSCoW priority: Must, Should or Could."""


class FieldType(StrEnum):
    """Types an entity field may have in the generated code."""

    STRING = "string"
    TEXT = "text"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    UUID = "uuid"
    EMAIL = "email"


class EntityField(WireModel):
    """One field of an entity."""

    name: str = Field(max_length=63, pattern=IDENTIFIER_PATTERN)
    """Field name, an identifier such as dueDate."""
    type: FieldType
    """Field type: string, text, integer, decimal, boolean, date, datetime, uuid or email."""
    required: bool = False
    """Whether a value must be given on create."""
    unique: bool = False
    """Whether two entities may not share a value."""
    description: str | None = Field(default=None, max_length=1000)
    """What the field means."""


class Entity(WireModel):
    """A data type the software manages."""

    name: str = Field(max_length=63, pattern=r"^[A-Z][A-Za-z0-9]*$")
    """Entity name in PascalCase, e.g. TodoItem."""
    description: str | None = Field(default=None, max_length=1000)
    """What the entity represents."""
    fields: list[EntityField] = Field(
        min_length=1,
        max_length=MAX_FIELDS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """The entity's fields; names are unique."""


class HttpMethod(StrEnum):
    """HTTP methods an endpoint may use."""

    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class EndpointAction(StrEnum):
    """The CRUD action an endpoint performs on its entity, when it is a CRUD endpoint."""

    LIST = "list"
    GET = "get"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Endpoint(WireModel):
    """One HTTP endpoint of the software's interface."""

    method: HttpMethod
    """HTTP method."""
    path: str = Field(max_length=256, pattern=r"^/[A-Za-z0-9_{}/.-]*$")
    """URL path template, e.g. /todos/{id}."""
    summary: str | None = Field(default=None, max_length=1000)
    """What the endpoint does."""
    entity: str | None = Field(default=None, max_length=63, pattern=r"^[A-Z][A-Za-z0-9]*$")
    """Name of the entity the endpoint works on; must be declared under interfaces.entities."""
    action: EndpointAction | None = None
    """CRUD action on the entity: list, get, create, update or delete."""
    requirements: list[Annotated[str, Field(max_length=64, pattern=REQUIREMENT_ID_PATTERN)]] = (
        Field(default_factory=list, max_length=MAX_REQUIREMENTS)
    )
    """Ids of the requirements this endpoint serves."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.action) || has(self.entity)",
            message="an endpoint with an action must name its entity",
        ),
    )

    @model_validator(mode="after")
    def _action_needs_entity(self) -> Endpoint:
        if self.action is not None and self.entity is None:
            raise ValueError("an endpoint with an action must name its entity")
        return self


class Interfaces(WireModel):
    """The software's public shape: data types and HTTP endpoints."""

    entities: list[Entity] = Field(
        default_factory=list,
        max_length=MAX_ENTITIES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Data types, unique by name."""
    endpoints: list[Endpoint] = Field(
        default_factory=list,
        max_length=MAX_ENDPOINTS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["method", "path"],
        },
    )
    """HTTP endpoints, unique by method and path."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            # Both lists may be left out (the schema defaults neither): guard with has().
            rule="!has(self.endpoints) || self.endpoints.all(e, !has(e.entity) || "
            "(has(self.entities) && self.entities.exists(x, x.name == e.entity)))",
            message="every endpoint.entity must name an entity declared in interfaces.entities",
            field_path=".endpoints",
        ),
    )

    @model_validator(mode="after")
    def _endpoints_name_declared_entities(self) -> Interfaces:
        declared = {entity.name for entity in self.entities}
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.entity is not None and endpoint.entity not in declared:
                raise ValueError(
                    f"endpoints[{index}].entity {endpoint.entity!r} is not declared in entities"
                )
        return self


class Constraints(WireModel):
    """Technical constraints the generated code must respect."""

    language: str = Field(default="python", max_length=32, pattern=r"^[a-z][a-z0-9+#-]*$")
    """Programming language, e.g. python."""
    language_version: str | None = Field(default=None, max_length=32)
    """Language version, e.g. 3.11."""
    framework: str | None = Field(default=None, max_length=64)
    """Framework or stack, e.g. stdlib-http or fastapi."""
    allowed_dependencies: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Third-party packages the code may use (requirement specifiers); empty: stdlib only."""
    rules: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=50
    )
    """Further constraints in plain words, e.g. 'no global mutable state'."""


class SpecDependency(WireModel):
    """Another Spec in the same namespace that this one builds on."""

    name: str = Field(max_length=NAME_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Spec depended on."""
    min_version: str | None = Field(default=None, max_length=64, pattern=SEMVER_PATTERN)
    """Lowest acceptable spec.version of the dependency."""


class SpecSpec(WireModel):
    """The desired state of a Spec: its content plus its lifecycle."""

    title: str = Field(min_length=1, max_length=200)
    """Human-readable name of the specification."""
    summary: str | None = Field(default=None, max_length=MAX_TEXT)
    """What the software is for, in a paragraph."""
    version: str = Field(max_length=64, pattern=SEMVER_PATTERN)
    """The specification's own semantic version, e.g. 1.0.0."""
    owner: Owner
    """Who answers for the specification."""
    lifecycle: Lifecycle = Lifecycle.DRAFT
    """Governance state: Draft, Approved or Deprecated. Not part of the content hash."""
    requirements: list[Requirement] = Field(
        min_length=1,
        max_length=MAX_REQUIREMENTS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    """Requirements, unique by id; at least one."""
    interfaces: Interfaces | None = None
    """Entities and endpoints the software exposes."""
    constraints: Constraints | None = None
    """Language, stack and dependency constraints."""
    depends_on: list[SpecDependency] = Field(
        default_factory=list,
        max_length=20,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Other Specs in the namespace this one builds on."""

    @model_validator(mode="after")
    def _requirement_ids_are_unique(self) -> SpecSpec:
        seen: set[str] = set()
        for index, requirement in enumerate(self.requirements):
            if requirement.id in seen:
                raise ValueError(f"requirements[{index}].id {requirement.id!r} is duplicated")
            seen.add(requirement.id)
        return self

    def content(self) -> dict[str, object]:
        """The hashed, immutable-once-approved part: everything but lifecycle."""
        wire = self.to_wire()
        wire.pop("lifecycle", None)
        return wire


# Fields that make up the content (everything under .spec but lifecycle), in wire form.
CONTENT_FIELDS: tuple[str, ...] = tuple(
    (field.alias or name) for name, field in SpecSpec.model_fields.items() if name != "lifecycle"
)


def _content_unchanged_expression() -> str:
    clauses = []
    for field in CONTENT_FIELDS:
        clauses.append(
            f"(has(self.{field}) == has(oldSelf.{field}) && "
            f"(!has(self.{field}) || self.{field} == oldSelf.{field}))"
        )
    return " && ".join(clauses)


# Lifecycle transition rules. They read oldSelf, so the API server runs them on updates only.
SpecSpec.CEL_RULES = (
    CelRule(
        rule="oldSelf.lifecycle != 'Approved' || self.lifecycle != 'Draft'",
        message="an Approved Spec cannot return to Draft; publish a new version instead",
        field_path=".lifecycle",
        reason="FieldValueForbidden",
    ),
    CelRule(
        rule="oldSelf.lifecycle != 'Deprecated' || self.lifecycle == 'Deprecated'",
        message="a Deprecated Spec stays Deprecated",
        field_path=".lifecycle",
        reason="FieldValueForbidden",
    ),
    CelRule(
        rule=f"oldSelf.lifecycle == 'Draft' || ({_content_unchanged_expression()})",
        message="the content of an Approved or Deprecated Spec is immutable; "
        "publish the change as a new Spec with a new spec.version",
        reason="FieldValueForbidden",
    ),
)


class Severity(StrEnum):
    """How serious a lint finding is: errors make the Spec invalid."""

    ERROR = "Error"
    WARNING = "Warning"


class Finding(WireModel):
    """One lint or scan result, located by the path of the offending item."""

    severity: Severity
    """Error (the Spec is not Valid) or Warning."""
    code: str = Field(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")
    """Stable PascalCase code, e.g. MissingAcceptanceCriteria."""
    path: str = Field(max_length=512)
    """Path of the offending item, e.g. spec.requirements[2].acceptanceCriteria."""
    message: str = Field(max_length=2000)
    """What is wrong; never includes a detected secret's value."""


class SpecRevision(WireModel):
    """One stored revision of the Spec's content."""

    revision: int = Field(ge=1)
    """Revision number, counting content changes from 1."""
    content_hash: ContentHash
    """sha256 of the canonical content of this revision."""
    snapshot_uri: str | None = Field(default=None, max_length=1024)
    """Where the canonical content of this revision is stored (s3://bucket/key)."""
    observed_at: AwareDatetime
    """When the operator first saw this content."""


class SpecStatus(WireModel):
    """Observed state of a Spec, written only by the Spec reconciler."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the status describes."""
    revision: int | None = Field(default=None, ge=1)
    """Current revision number: incremented when the content changes, never for metadata."""
    content_hash: ContentHash | None = None
    """sha256 of the canonical content of the current revision, as sha256:<hex>."""
    snapshot_uri: str | None = Field(default=None, max_length=1024)
    """Where the current revision's canonical content is stored."""
    approved_revision: int | None = Field(default=None, ge=1)
    """The revision that was Approved, once it is."""
    history: list[SpecRevision] = Field(default_factory=list, max_length=MAX_HISTORY)
    """The latest revisions, newest last, so runs can pin an earlier content hash."""
    findings: list[Finding] = Field(default_factory=list, max_length=MAX_FINDINGS)
    """Lint and secret-scan findings for the observed generation."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, json_schema_extra=CONDITIONS_LIST_SCHEMA
    )
    """Valid and Ready, with reasons."""


class Spec(Resource):
    """A governed, versioned software specification (smartspec.dev/v1alpha1 Spec)."""

    KIND: ClassVar[str] = KIND
    PLURAL: ClassVar[str] = PLURAL
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("sspec",)
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Version", "string", ".spec.version", "The specification's own version"),
        PrinterColumn("Lifecycle", "string", ".spec.lifecycle", "Draft, Approved or Deprecated"),
        PrinterColumn("Revision", "integer", ".status.revision", "Content revision number"),
        PrinterColumn(
            "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Runs may use it"
        ),
        PrinterColumn(
            "Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why", priority=1
        ),
        PrinterColumn("Owner", "string", ".spec.owner.team", "Owning team", priority=1),
        AGE_COLUMN,
    )

    kind: Literal["Spec"]
    spec: SpecSpec
    """Content and lifecycle of the specification."""
    status: SpecStatus | None = None
    """Observed state, written by the operator."""
