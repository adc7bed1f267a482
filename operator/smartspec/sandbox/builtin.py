"""The builtin generator: a deterministic CRUD service and its tests, written without a model.

Contract: specs/CORE-004-generation-runs.md ("Sandbox contract", backend `builtin`) and
specs/CORE-001-resources.md (the Spec's `interfaces` and `constraints`).

From a Spec that declares entities and CRUD endpoints it writes a small, runnable Python
service on the standard library only (http.server, json, threading, uuid) plus a pytest
suite that starts it on an ephemeral port and exercises every endpoint. Each test carries
`@pytest.mark.requirement(...)` with the requirement ids its endpoint declares, so the
tester can show which requirement each passing test demonstrates.

The service code is one fixed, reviewed template; only its data tables (entities, fields,
routes) and the test cases come from the Spec. Output is a pure function of the Spec: the
same content gives byte-identical files (spec order, no timestamps, no randomness).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from smartspec.api.v1alpha1.spec import (
    EndpointAction,
    Entity,
    EntityField,
    FieldType,
    HttpMethod,
    SpecSpec,
)

from . import GeneratedFile, Generation, Task

__all__ = ["SUPPORTED_FRAMEWORKS", "UnsupportedSpec", "generate"]

SUPPORTED_FRAMEWORKS = frozenset({"stdlib", "stdlib-http", "http.server"})
"""constraints.framework values the builtin service satisfies (it uses http.server)."""
MIN_PYTHON_MINOR = 9

_METHODS_FOR_ACTION: dict[EndpointAction, frozenset[HttpMethod]] = {
    EndpointAction.LIST: frozenset({HttpMethod.GET}),
    EndpointAction.GET: frozenset({HttpMethod.GET}),
    EndpointAction.CREATE: frozenset({HttpMethod.POST}),
    EndpointAction.UPDATE: frozenset({HttpMethod.PUT, HttpMethod.PATCH}),
    EndpointAction.DELETE: frozenset({HttpMethod.DELETE}),
}
_ITEM_ACTIONS = frozenset({EndpointAction.GET, EndpointAction.UPDATE, EndpointAction.DELETE})
_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

# A value of each type that the service must refuse, for the "invalid <field>" tests.
_INVALID_VALUES: dict[FieldType, object] = {
    FieldType.STRING: 123,
    FieldType.TEXT: 123,
    FieldType.INTEGER: "eleven",
    FieldType.DECIMAL: "not a number",
    FieldType.BOOLEAN: "yes",
    FieldType.DATE: "31/01/2024",
    FieldType.DATETIME: "yesterday",
    FieldType.UUID: "not-a-uuid",
    FieldType.EMAIL: "not-an-email",
}
# A path value that no seeded item has, for the 404 tests.
_ABSENT_PATH_VALUES: dict[FieldType, str] = {
    FieldType.INTEGER: "987654321",
    FieldType.DECIMAL: "987654321",
    FieldType.UUID: "00000000-0000-4000-8000-000000000000",
    FieldType.DATE: "1900-01-01",
    FieldType.DATETIME: "1900-01-01T00:00:00+00:00",
    FieldType.EMAIL: "nobody@example.invalid",
}


class UnsupportedSpec(Exception):  # noqa: N818 - the name the sandbox contract uses
    """The Spec asks for something the builtin generator cannot write; the message says what."""


# ------------------------------------------------------------------ plan


@dataclass(frozen=True)
class _Field:
    name: str
    type: FieldType
    required: bool
    unique: bool
    assigned: bool
    """Set by the service (a required, unique uuid named id), never by clients."""


@dataclass(frozen=True)
class _Entity:
    name: str
    fields: tuple[_Field, ...]
    key: str | None

    def field(self, name: str) -> _Field:
        return next(item for item in self.fields if item.name == name)

    @property
    def client_fields(self) -> tuple[_Field, ...]:
        return tuple(item for item in self.fields if not item.assigned)


@dataclass(frozen=True)
class _Route:
    method: HttpMethod
    path: str
    entity: _Entity
    action: EndpointAction
    lookup: str | None
    requirements: tuple[str, ...]
    summary: str | None

    @property
    def slug(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "_", _snake(self.path)).strip("_") or "root"
        return f"{self.method.value.lower()}_{words}"

    @property
    def label(self) -> str:
        return f"{self.method.value} {self.path}"


@dataclass
class _Test:
    name: str
    route: _Route
    description: str
    body: list[str]


@dataclass
class _Names:
    used: set[str] = field(default_factory=set)

    def take(self, name: str) -> str:
        candidate, number = name, 2
        while candidate in self.used:
            candidate = f"{name}_{number}"
            number += 1
        self.used.add(candidate)
        return candidate


def generate(spec: SpecSpec) -> Generation:
    """The service, its tests and docs for `spec`; UnsupportedSpec when it cannot."""
    _check_constraints(spec)
    entities, routes = _plan(spec)
    order = {requirement.id: index for index, requirement in enumerate(spec.requirements)}
    cited = _ordered({rid for route in routes for rid in route.requirements}, order)
    tests = _tests(routes)

    files = (
        GeneratedFile("README.md", _render_readme(spec, routes, tests).encode()),
        GeneratedFile("app.py", _render_app(spec, entities, routes).encode(), cited),
        GeneratedFile("conftest.py", CONFTEST.encode()),
        GeneratedFile("requirements.txt", b"pytest>=7\n"),
        GeneratedFile("test_app.py", _render_tests(spec, tests).encode(), cited),
    )
    entity_names = ", ".join(entity.name for entity in entities)
    tasks = (
        Task(
            "app.py",
            cited,
            f"HTTP JSON service on the standard library: {len(routes)} endpoint(s) over "
            f"{entity_names}, in-memory stores, field validation",
        ),
        Task(
            "test_app.py",
            cited,
            f"{len(tests)} pytest test(s) exercising every endpoint over HTTP, tagged with "
            "the requirements their endpoint declares",
        ),
        Task("conftest.py", (), "registers the pytest marker `requirement`"),
        Task("requirements.txt", (), "test dependency: pytest"),
        Task("README.md", (), "describes the service and which requirement each test covers"),
    )
    return Generation(files=files, tasks=tasks)


def _check_constraints(spec: SpecSpec) -> None:
    constraints = spec.constraints
    if constraints is None:
        return
    if constraints.language != "python":
        raise UnsupportedSpec(
            f"constraints.language is {constraints.language!r}: the builtin generator writes "
            "Python only; use the llm backend"
        )
    if constraints.framework is not None and constraints.framework not in SUPPORTED_FRAMEWORKS:
        raise UnsupportedSpec(
            f"constraints.framework is {constraints.framework!r}: the builtin generator writes "
            f"standard-library services ({', '.join(sorted(SUPPORTED_FRAMEWORKS))}); use the "
            "llm backend"
        )
    version = constraints.language_version
    if version is not None:
        match = re.match(r"^(\d+)(?:\.(\d+))?", version)
        if match is None or int(match.group(1)) != 3 or int(match.group(2) or 99) < 9:
            raise UnsupportedSpec(
                f"constraints.languageVersion is {version!r}: the builtin service needs "
                f"Python 3.{MIN_PYTHON_MINOR} or later"
            )


def _plan(spec: SpecSpec) -> tuple[tuple[_Entity, ...], tuple[_Route, ...]]:
    interfaces = spec.interfaces
    if interfaces is None or not interfaces.entities or not interfaces.endpoints:
        raise UnsupportedSpec(
            "the spec declares no interfaces.entities and interfaces.endpoints: the builtin "
            "generator writes CRUD services from them; use the llm backend"
        )
    entities = {entity.name: _plan_entity(entity) for entity in interfaces.entities}
    routes: list[_Route] = []
    shapes: dict[tuple[str, str], str] = {}
    for index, endpoint in enumerate(interfaces.endpoints):
        where = f"interfaces.endpoints[{index}] ({endpoint.method.value} {endpoint.path})"
        if endpoint.action is None or endpoint.entity is None:
            raise UnsupportedSpec(
                f"{where} has no action: the builtin generator writes CRUD endpoints only "
                "(list, get, create, update, delete); use the llm backend"
            )
        if endpoint.method not in _METHODS_FOR_ACTION[endpoint.action]:
            allowed = " or ".join(sorted(m.value for m in _METHODS_FOR_ACTION[endpoint.action]))
            raise UnsupportedSpec(f"{where}: action {endpoint.action.value} needs method {allowed}")
        entity = entities[endpoint.entity]
        lookup = _lookup(where, endpoint.path, endpoint.action, entity)
        shape = (endpoint.method.value, _shape(endpoint.path))
        if shape in shapes:
            raise UnsupportedSpec(
                f"{where} matches the same requests as {shapes[shape]}; paths must differ "
                "by more than their parameter names"
            )
        shapes[shape] = where
        routes.append(
            _Route(
                method=endpoint.method,
                path=endpoint.path,
                entity=entity,
                action=endpoint.action,
                lookup=lookup,
                requirements=tuple(dict.fromkeys(endpoint.requirements)),
                summary=endpoint.summary,
            )
        )
    used = tuple(entity for entity in entities.values() if any(r.entity is entity for r in routes))
    return used, tuple(routes)


def _shape(path: str) -> str:
    # The service matches paths segment by segment and ignores surrounding slashes.
    return "/".join("{}" if _PLACEHOLDER.match(s) else s for s in path.strip("/").split("/"))


def _plan_entity(entity: Entity) -> _Entity:
    fields = tuple(
        _Field(
            name=item.name,
            type=item.type,
            required=item.required,
            unique=item.unique,
            assigned=_is_assigned(item),
        )
        for item in entity.fields
    )
    names = [item.name for item in fields]
    if len(set(names)) != len(names):
        raise UnsupportedSpec(f"entity {entity.name} declares a field name twice")
    key: str | None = None
    if "id" in names:
        key = "id"
    else:
        key = next((item.name for item in fields if item.required and item.unique), None)
    return _Entity(name=entity.name, fields=fields, key=key)


def _is_assigned(item: EntityField) -> bool:
    return item.name == "id" and item.type is FieldType.UUID and item.required and item.unique


def _lookup(where: str, path: str, action: EndpointAction, entity: _Entity) -> str | None:
    """The field a path parameter matches, for item endpoints; None for collection ones."""
    parameters = []
    for segment in path.strip("/").split("/"):
        match = _PLACEHOLDER.match(segment)
        if match:
            parameters.append(match.group(1))
        elif "{" in segment or "}" in segment:
            raise UnsupportedSpec(
                f"{where}: a path parameter must be a whole segment, like /items/{{id}}"
            )
    if action not in _ITEM_ACTIONS:
        if parameters:
            raise UnsupportedSpec(
                f"{where}: a {action.value} endpoint works on the collection and takes no "
                "path parameter"
            )
        return None
    if len(parameters) != 1:
        raise UnsupportedSpec(
            f"{where}: a {action.value} endpoint needs exactly one path parameter naming the "
            f"item, like /items/{{id}}; found {len(parameters)}"
        )
    name = parameters[0]
    if name in {item.name for item in entity.fields}:
        if name != entity.key and not entity.field(name).unique:
            raise UnsupportedSpec(
                f"{where}: path parameter {{{name}}} names field {entity.name}.{name}, which is "
                "not unique, so it cannot identify one item"
            )
        return name
    if entity.key is None:
        raise UnsupportedSpec(
            f"{where}: entity {entity.name} has no key field to look items up by; declare a "
            "field named id, or a required unique field"
        )
    return entity.key


def _ordered(ids: Iterable[str], order: dict[str, int]) -> tuple[str, ...]:
    return tuple(sorted(ids, key=lambda rid: (order.get(rid, len(order)), rid)))


# ------------------------------------------------------------------ values


# A valid value of each type, distinct for each number, so unique fields stay unique.
# Strings start with "example": a field named password or apiKey then holds an obvious
# placeholder, which the credential scan (rightly) does not take for a secret.
_SAMPLES: dict[FieldType, Callable[[str, int], object]] = {
    FieldType.STRING: lambda name, number: f"example {name} {number}",
    FieldType.TEXT: lambda name, number: f"Example text of {name}, number {number}.",
    FieldType.INTEGER: lambda name, number: 10 + number,
    # n + 0.25 is exact in binary, so it round-trips through JSON unchanged.
    FieldType.DECIMAL: lambda name, number: number + 0.25,
    FieldType.BOOLEAN: lambda name, number: number % 2 == 1,
    FieldType.DATE: lambda name, number: f"2024-01-{10 + number:02d}",
    FieldType.DATETIME: lambda name, number: f"2024-01-{10 + number:02d}T09:30:00+00:00",
    FieldType.UUID: lambda name, number: f"00000000-0000-4000-8000-{number:012d}",
    FieldType.EMAIL: lambda name, number: f"user{number}@example.com",
}


def _sample(item: _Field, number: int) -> object:
    return _SAMPLES[item.type](item.name, number)


def _payload(entity: _Entity, number: int, *, required_only: bool = False) -> dict[str, object]:
    return {
        item.name: _sample(item, number)
        for item in entity.client_fields
        if item.required or not required_only
    }


def _py(value: object) -> str:
    """A Python literal for a JSON-like value (double quotes, like the JSON it mirrors)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string with ASCII escapes is also a valid Python string literal.
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    raise TypeError(f"no literal for {type(value).__name__}")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _text(value: str | None) -> str:
    """Spec text made safe for a docstring or a Markdown table cell, on one line."""
    if not value:
        return ""
    flat = " ".join(value.split())
    return flat.replace("\\", "/").replace('"', "'").replace("|", "/")


# ------------------------------------------------------------------ app.py


def _render_app(spec: SpecSpec, entities: Sequence[_Entity], routes: Sequence[_Route]) -> str:
    entity_lines = ["ENTITIES: dict[str, Entity] = {"]
    for entity in entities:
        entity_lines += [
            f"    {_py(entity.name)}: Entity(",
            f"        name={_py(entity.name)},",
            f"        key={_py(entity.key)},",
            "        fields=(",
        ]
        entity_lines += [
            f"            Field({_py(item.name)}, {_py(item.type.value)}, "
            f"required={item.required}, unique={item.unique}, assigned={item.assigned}),"
            for item in entity.fields
        ]
        entity_lines += ["        ),", "    ),"]
    entity_lines.append("}")
    route_lines = ["ROUTES: tuple[Route, ...] = ("]
    route_lines += [
        f"    Route({_py(route.method.value)}, {_py(route.path)}, {_py(route.entity.name)}, "
        f"{_py(route.action.value)}, lookup={_py(route.lookup)}),"
        for route in routes
    ]
    route_lines.append(")")
    endpoint_doc = "\n".join(
        f"    {route.label:<28} {route.action.value} {route.entity.name}" for route in routes
    )
    return (
        APP_TEMPLATE.replace("@@TITLE@@", _text(spec.title))
        .replace("@@VERSION@@", _text(spec.version))
        .replace("@@ENDPOINTS@@", endpoint_doc)
        .replace("@@ENTITIES@@", "\n".join(entity_lines))
        .replace("@@ROUTES@@", "\n".join(route_lines))
    )


APP_TEMPLATE = r'''"""@@TITLE@@ (spec version @@VERSION@@): a JSON over HTTP service.

Generated by the SmartSpec builtin generator. Standard library only (http.server, json,
threading, uuid); data lives in memory, one store per entity, and every server made by
make_server() has stores of its own.

Endpoints:
@@ENDPOINTS@@

Answers: 200 (read, update), 201 (create), 204 (delete), 400 (invalid request, with the
field at fault under "field"), 404 (unknown route or item), 405 (method not allowed),
409 (a unique field already taken), 413 (body too large).

Run: python app.py [port]   (default 8000; HOST sets the address, default 0.0.0.0)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

MAX_BODY_BYTES = 1024 * 1024
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    unique: bool = False
    assigned: bool = False  # set by the service, never by clients


@dataclass(frozen=True)
class Entity:
    name: str
    key: str | None
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    entity: str
    action: str
    lookup: str | None = None  # the field the path parameter matches

    def match(self, path: str) -> tuple[bool, str | None]:
        """(matched, path parameter value) for a request path."""
        wanted = self.path.strip("/").split("/")
        given = path.strip("/").split("/")
        if len(wanted) != len(given):
            return False, None
        value = None
        for pattern, part in zip(wanted, given):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not part:
                    return False, None
                value = unquote(part)
            elif pattern != part:
                return False, None
        return True, value


@@ENTITIES@@

@@ROUTES@@


class Invalid(Exception):
    """A request the service refuses with 400; names the field at fault when there is one."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            answer["field"] = self.field
        return answer


class NotFound(Invalid):
    status = 404


class Conflict(Invalid):
    status = 409


class TooLarge(Invalid):
    status = 413


def check_value(field: Field, value: Any) -> Any:
    """The stored form of a client-supplied value, or Invalid naming the field."""
    name, kind = field.name, field.type
    if kind in ("string", "text"):
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string", name)
        if field.required and not value.strip():
            raise Invalid(f"{name} must not be empty", name)
        return value
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{name} must be an integer", name)
        return value
    if kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Invalid(f"{name} must be a decimal number", name)
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise Invalid(f"{name} must be a decimal number", name) from None
        if not number.is_finite():
            raise Invalid(f"{name} must be a finite decimal number", name)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Invalid(f"{name} must be true or false", name)
        return value
    if kind == "date":
        if not isinstance(value, str) or not DATE_PATTERN.match(value):
            raise Invalid(f"{name} must be a date (YYYY-MM-DD)", name)
        try:
            date.fromisoformat(value)
        except ValueError:
            raise Invalid(f"{name} must be a valid date (YYYY-MM-DD)", name) from None
        return value
    if kind == "datetime":
        if not isinstance(value, str) or not DATETIME_PATTERN.match(value):
            raise Invalid(f"{name} must be an ISO 8601 date and time", name)
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid(f"{name} must be a valid ISO 8601 date and time", name) from None
        return value
    if kind == "uuid":
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a UUID string", name)
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise Invalid(f"{name} must be a UUID", name) from None
    if kind == "email":
        if not isinstance(value, str) or not EMAIL_PATTERN.match(value):
            raise Invalid(f"{name} must be an email address", name)
        return value
    raise Invalid(f"{name} has an unknown type {kind}", name)


def matches(field: Field, stored: Any, raw: str) -> bool:
    """Whether a stored value equals a path parameter (always text)."""
    if stored is None:
        return False
    try:
        if field.type == "uuid":
            return str(uuid.UUID(raw)) == stored
        if field.type == "integer":
            return int(raw) == stored
        if field.type == "decimal":
            return Decimal(raw) == Decimal(str(stored))
    except (ValueError, InvalidOperation):
        return False
    if field.type == "boolean":
        return raw == ("true" if stored else "false")
    return str(stored) == raw


class Store:
    """The items of one entity, in creation order; every operation holds the lock."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self.items: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(item) for item in self.items.values()]

    def create(self, body: Any) -> dict[str, Any]:
        with self.lock:
            item = self._build(body, None, partial=False)
            self._check_unique(item, None)
            self.items[next(self.numbers)] = item
            return dict(item)

    def get(self, lookup: str, raw: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.items[self._find(lookup, raw)])

    def update(self, lookup: str, raw: str, body: Any, partial: bool) -> dict[str, Any]:
        with self.lock:
            number = self._find(lookup, raw)
            item = self._build(body, self.items[number], partial=partial)
            self._check_unique(item, number)
            self.items[number] = item
            return dict(item)

    def delete(self, lookup: str, raw: str) -> None:
        with self.lock:
            del self.items[self._find(lookup, raw)]

    def _find(self, lookup: str, raw: str) -> int:
        field = next(f for f in self.entity.fields if f.name == lookup)
        for number, item in self.items.items():
            if matches(field, item.get(lookup), raw):
                return number
        raise NotFound(f"no {self.entity.name} with {lookup} {raw}", lookup)

    def _build(self, body: Any, current: dict[str, Any] | None, partial: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Invalid("the request body must be a JSON object")
        known = [f.name for f in self.entity.fields]
        unknown = sorted(name for name in body if name not in known)
        if unknown:
            raise Invalid(f"unknown field: {unknown[0]}", unknown[0])
        item: dict[str, Any] = {}
        for field in self.entity.fields:
            name = field.name
            if current is not None and (field.assigned or name == self.entity.key):
                # An item keeps its identity: the key may be repeated, never changed.
                if name in body and body[name] != current[name]:
                    raise Invalid(f"{name} cannot be changed", name)
                item[name] = current[name]
            elif field.assigned:
                if name in body:
                    raise Invalid(f"{name} is assigned by the service; do not send it", name)
                item[name] = str(uuid.uuid4())
            elif partial and current is not None and name not in body:
                item[name] = current[name]
            elif body.get(name) is None:
                if field.required:
                    raise Invalid(f"missing required field: {name}", name)
                item[name] = False if field.type == "boolean" else None
            else:
                item[name] = check_value(field, body[name])
        return item

    def _check_unique(self, item: dict[str, Any], own_number: int | None) -> None:
        for field in self.entity.fields:
            if not field.unique or item[field.name] is None:
                continue
            for number, other in self.items.items():
                if number != own_number and other[field.name] == item[field.name]:
                    raise Conflict(
                        f"another {self.entity.name} already has this {field.name}", field.name
                    )


class App:
    """The service's state and request logic, independent of the HTTP plumbing."""

    def __init__(self) -> None:
        self.stores = {name: Store(entity) for name, entity in ENTITIES.items()}
        # Literal segments win over parameters: /items/search before /items/{id}.
        self.routes = sorted(ROUTES, key=lambda route: route.path.count("{"))

    def store(self, entity: str) -> Store:
        return self.stores[entity]

    def handle(
        self, method: str, path: str, read_body: Callable[[], Any]
    ) -> tuple[int, Any, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            matched, value = route.match(path)
            if not matched:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            try:
                status, body = self.run(route, value, read_body)
            except Invalid as refusal:
                return refusal.status, refusal.body(), {}
            return status, body, {}
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            return 405, {"error": f"{method} is not allowed on {path}"}, {"Allow": methods}
        return 404, {"error": f"no route for {path}"}, {}

    def run(self, route: Route, value: str | None, read_body: Callable[[], Any]) -> tuple[int, Any]:
        store = self.stores[route.entity]
        if route.action == "list":
            return 200, store.list()
        if route.action == "create":
            return 201, store.create(read_body())
        if route.lookup is None or value is None:
            raise NotFound(f"{route.path} names no item")
        if route.action == "get":
            return 200, store.get(route.lookup, value)
        if route.action == "update":
            partial = route.method == "PATCH"
            return 200, store.update(route.lookup, value, read_body(), partial)
        store.delete(route.lookup, value)
        return 204, None


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_PATCH(self) -> None:
        self.dispatch("PATCH")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        status, body, headers = self.server.app.handle(method, path, self.read_json)
        payload = b"" if status == 204 else json.dumps(body).encode("utf-8")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise TooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError):
            raise Invalid("the request body is not valid JSON") from None

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, whatever Python's json module accepts by default.
    raise ValueError(f"{name} is not JSON")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], quiet: bool) -> None:
        super().__init__(address, Handler)
        self.app = App()
        self.quiet = quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(port: int = 0, host: str = "127.0.0.1", quiet: bool = True) -> Server:
    """A server with fresh, empty stores; port 0 picks a free port (see .url)."""
    return Server((host, port), quiet)


def main(argv: list[str]) -> None:
    port = int(argv[1]) if len(argv) > 1 else int(os.environ.get("PORT", "8000"))
    server = make_server(port, host=os.environ.get("HOST", "0.0.0.0"), quiet=False)
    print(f"serving on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv)
'''


# ------------------------------------------------------------------ test_app.py

_Case = tuple[str, str, list[str]]


def _tests(routes: Sequence[_Route]) -> list[_Test]:
    names = _Names()
    builders: dict[EndpointAction, Callable[[_Route, Sequence[_Route]], list[_Case]]] = {
        EndpointAction.LIST: _list_tests,
        EndpointAction.GET: _get_tests,
        EndpointAction.CREATE: _create_tests,
        EndpointAction.UPDATE: _update_tests,
        EndpointAction.DELETE: _delete_tests,
    }
    tests: list[_Test] = []
    for route in routes:
        for suffix, description, body in builders[route.action](route, routes):
            tests.append(_Test(names.take(f"test_{route.slug}_{suffix}"), route, description, body))
    return tests


def _create_tests(route: _Route, routes: Sequence[_Route]) -> list[_Case]:
    entity, path, name = route.entity, _py(route.path), _py(route.entity.name)
    payload = _payload(entity, 1)
    body = [
        f"payload = {_py(payload)}",
        f'status, item = call(server, "POST", {path}, payload)',
        "assert status == 201, item",
        f"assert sorted(item) == {_py(sorted(f.name for f in entity.fields))}",
        "for name, value in payload.items():",
        "    assert item[name] == value, name",
    ]
    body += [
        f"uuid.UUID(item[{_py(item.name)}])  # assigned by the service"
        for item in entity.fields
        if item.assigned
    ]
    body.append(f"assert server.app.store({name}).list() == [item]")
    cases: list[_Case] = [("creates_item", f"creates a {entity.name} and answers 201", body)]

    optional = [item for item in entity.client_fields if not item.required]
    if optional:
        minimal = _payload(entity, 1, required_only=True)
        body = [
            f'status, item = call(server, "POST", {path}, {_py(minimal)})',
            "assert status == 201, item",
        ]
        for item in optional:
            default = False if item.type is FieldType.BOOLEAN else None
            body.append(f"assert item[{_py(item.name)}] is {default!r}")
        cases.append(
            (
                "applies_defaults",
                "fields left out default to false (booleans) or null (others)",
                body,
            )
        )
    for item in entity.client_fields:
        if item.required:
            incomplete = {k: v for k, v in payload.items() if k != item.name}
            cases.append(
                (
                    f"without_{_snake(item.name)}_returns_400",
                    f"refuses a {entity.name} without {item.name} (400 naming the field)",
                    [
                        f'status, answer = call(server, "POST", {path}, {_py(incomplete)})',
                        "assert status == 400, answer",
                        f'assert answer["field"] == {_py(item.name)}',
                        f'assert {_py(item.name)} in answer["error"]',
                        f"assert server.app.store({name}).list() == []",
                    ],
                )
            )
    for item in entity.client_fields:
        invalid = {**payload, item.name: _INVALID_VALUES[item.type]}
        cases.append(
            (
                f"with_invalid_{_snake(item.name)}_returns_400",
                f"refuses a {item.name} that is not a valid {item.type.value} (400)",
                [
                    f'status, answer = call(server, "POST", {path}, {_py(invalid)})',
                    "assert status == 400, answer",
                    f'assert answer["field"] == {_py(item.name)}',
                ],
            )
        )
    for item in entity.fields:
        if item.assigned:
            sent = {**payload, item.name: _sample(item, 9)}
            cases.append(
                (
                    f"refuses_client_{_snake(item.name)}",
                    f"refuses a client-chosen {item.name}: the service assigns it (400)",
                    [
                        f'status, answer = call(server, "POST", {path}, {_py(sent)})',
                        "assert status == 400, answer",
                        f'assert answer["field"] == {_py(item.name)}',
                    ],
                )
            )
    for item in entity.client_fields:
        if item.unique:
            duplicate = {**_payload(entity, 2), item.name: _sample(item, 1)}
            cases.append(
                (
                    f"refuses_duplicate_{_snake(item.name)}",
                    f"refuses a second {entity.name} with the same {item.name} (409)",
                    [
                        f"seed(server, {name}, {_py(payload)})",
                        f'status, answer = call(server, "POST", {path}, {_py(duplicate)})',
                        "assert status == 409, answer",
                        f'assert answer["field"] == {_py(item.name)}',
                    ],
                )
            )
    cases.append(
        (
            "rejects_malformed_json",
            "refuses a body that is not JSON (400)",
            [
                f'status, answer = call(server, "POST", {path}, raw=b"{{not json")',
                "assert status == 400, answer",
            ],
        )
    )
    cases.append(
        (
            "rejects_unknown_field",
            "refuses a field the entity does not declare (400 naming it)",
            [
                f"payload = {_py({**payload, 'notAField': 1})}",
                f'status, answer = call(server, "POST", {path}, payload)',
                "assert status == 400, answer",
                'assert answer["field"] == "notAField"',
            ],
        )
    )
    return cases


def _list_tests(route: _Route, routes: Sequence[_Route]) -> list[_Case]:
    entity, path, name = route.entity, _py(route.path), _py(route.entity.name)
    return [
        (
            "returns_empty_list",
            f"answers 200 and an empty array when no {entity.name} exists",
            [
                f'status, items = call(server, "GET", {path})',
                "assert status == 200, items",
                "assert items == []",
            ],
        ),
        (
            "returns_every_item",
            f"answers 200 and a JSON array of every stored {entity.name}",
            [
                f"first = seed(server, {name}, {_py(_payload(entity, 1))})",
                f"second = seed(server, {name}, {_py(_payload(entity, 2))})",
                f'status, items = call(server, "GET", {path})',
                "assert status == 200, items",
                "assert items == [first, second]",
            ],
        ),
    ]


def _item_path(route: _Route, variable: str) -> str:
    return f"item_path({_py(route.path)}, {variable}[{_py(route.lookup)}])"


def _absent_path(route: _Route) -> str:
    kind = route.entity.field(route.lookup).type if route.lookup else FieldType.STRING
    value = _ABSENT_PATH_VALUES.get(kind, "no-such-item")
    return f"item_path({_py(route.path)}, {_py(value)})"


def _get_tests(route: _Route, routes: Sequence[_Route]) -> list[_Case]:
    entity, name = route.entity, _py(route.entity.name)
    return [
        (
            "returns_item",
            f"answers 200 and the {entity.name} named in the path",
            [
                f"seed(server, {name}, {_py(_payload(entity, 2))})",
                f"item = seed(server, {name}, {_py(_payload(entity, 1))})",
                f'status, answer = call(server, "GET", {_item_path(route, "item")})',
                "assert status == 200, answer",
                "assert answer == item",
            ],
        ),
        (
            "returns_404_for_unknown",
            f"answers 404 when no {entity.name} matches the path",
            [
                f"seed(server, {name}, {_py(_payload(entity, 1))})",
                f'status, answer = call(server, "GET", {_absent_path(route)})',
                "assert status == 404, answer",
            ],
        ),
    ]


def _update_tests(route: _Route, routes: Sequence[_Route]) -> list[_Case]:
    entity, name, method = route.entity, _py(route.entity.name), route.method.value
    first = _payload(entity, 1)
    kept = {item.name for item in entity.fields if item.assigned or item.name == entity.key}
    changeable = [item for item in entity.client_fields if item.name not in kept]
    target = _item_path(route, "item")
    cases: list[_Case] = []
    valid_body: dict[str, object]
    if method == "PUT":
        valid_body = {
            key: (first[key] if key in kept else value)
            for key, value in _payload(entity, 2).items()
        }
        cases.append(
            (
                "replaces_item",
                f"replaces the {entity.name}'s fields and answers 200 with the new item",
                [
                    f"item = seed(server, {name}, {_py(first)})",
                    f"replacement = {_py(valid_body)}",
                    f'status, answer = call(server, "PUT", {target}, replacement)',
                    "assert status == 200, answer",
                    "for key, value in replacement.items():",
                    "    assert answer[key] == value, key",
                    *[f"assert answer[{_py(k)}] == item[{_py(k)}]" for k in sorted(kept)],
                    f"assert server.app.store({name}).list() == [answer]",
                ],
            )
        )
        for item in changeable:
            if item.required:
                incomplete = {k: v for k, v in valid_body.items() if k != item.name}
                cases.append(
                    (
                        f"without_{_snake(item.name)}_returns_400",
                        f"refuses a replacement without {item.name} (400 naming the field)",
                        [
                            f"item = seed(server, {name}, {_py(first)})",
                            f'status, answer = call(server, "PUT", {target}, {_py(incomplete)})',
                            "assert status == 400, answer",
                            f'assert answer["field"] == {_py(item.name)}',
                            f"assert server.app.store({name}).list() == [item]",
                        ],
                    )
                )
    else:
        valid_body = {}
        if changeable:
            valid_body[changeable[0].name] = _sample(changeable[0], 2)
        cases.append(
            (
                "updates_given_fields",
                f"changes only the fields sent and answers 200 with the {entity.name}",
                [
                    f"item = seed(server, {name}, {_py(first)})",
                    f"patch = {_py(valid_body)}",
                    f'status, answer = call(server, "PATCH", {target}, patch)',
                    "assert status == 200, answer",
                    "assert answer == {**item, **patch}",
                    f"assert server.app.store({name}).list() == [answer]",
                ],
            )
        )
    for item in changeable:
        invalid = {**valid_body, item.name: _INVALID_VALUES[item.type]}
        cases.append(
            (
                f"with_invalid_{_snake(item.name)}_returns_400",
                f"refuses a {item.name} that is not a valid {item.type.value} (400)",
                [
                    f"item = seed(server, {name}, {_py(first)})",
                    f'status, answer = call(server, "{method}", {target}, {_py(invalid)})',
                    "assert status == 400, answer",
                    f'assert answer["field"] == {_py(item.name)}',
                    f"assert server.app.store({name}).list() == [item]",
                ],
            )
        )
    if entity.key is not None:
        changed = {**valid_body, entity.key: _sample(entity.field(entity.key), 9)}
        cases.append(
            (
                f"refuses_changing_{_snake(entity.key)}",
                f"refuses to change the {entity.name}'s {entity.key} (400)",
                [
                    f"item = seed(server, {name}, {_py(first)})",
                    f'status, answer = call(server, "{method}", {target}, {_py(changed)})',
                    "assert status == 400, answer",
                    f'assert answer["field"] == {_py(entity.key)}',
                    f"assert server.app.store({name}).list() == [item]",
                ],
            )
        )
    cases.append(
        (
            "returns_404_for_unknown",
            f"answers 404 when no {entity.name} matches the path",
            [
                f"seed(server, {name}, {_py(first)})",
                f'status, answer = call(server, "{method}", {_absent_path(route)}, '
                f"{_py(valid_body)})",
                "assert status == 404, answer",
            ],
        )
    )
    return cases


def _delete_tests(route: _Route, routes: Sequence[_Route]) -> list[_Case]:
    entity, name = route.entity, _py(route.entity.name)
    reader = next(
        (r for r in routes if r.entity is entity and r.action is EndpointAction.GET), None
    )
    body = [
        f"item = seed(server, {name}, {_py(_payload(entity, 1))})",
        f"other = seed(server, {name}, {_py(_payload(entity, 2))})",
        f'status, answer = call(server, "DELETE", {_item_path(route, "item")})',
        "assert status == 204, answer",
    ]
    if reader is not None:
        body += [
            f'status, answer = call(server, "GET", {_item_path(reader, "item")})',
            "assert status == 404, answer",
        ]
        description = f"deletes the {entity.name} (204); a later {reader.label} of it answers 404"
    else:
        description = f"deletes the {entity.name} (204) and only that one"
    body.append(f"assert server.app.store({name}).list() == [other]")
    return [
        ("removes_item", description, body),
        (
            "returns_404_for_unknown",
            f"answers 404 when no {entity.name} matches the path",
            [
                f"seed(server, {name}, {_py(_payload(entity, 1))})",
                f'status, answer = call(server, "DELETE", {_absent_path(route)})',
                "assert status == 404, answer",
                f"assert len(server.app.store({name}).list()) == 1",
            ],
        ),
    ]


def _render_tests(spec: SpecSpec, tests: Sequence[_Test]) -> str:
    lines = [TEST_HEADER.replace("@@TITLE@@", _text(spec.title))]
    for test in tests:
        lines += ["", ""]
        lines += [f"@pytest.mark.requirement({_py(rid)})" for rid in test.route.requirements]
        lines.append(f"def {test.name}(server: app.Server) -> None:")
        lines.append(f'    """{test.route.label}: {_text(test.description)}."""')
        lines += [f"    {line}" for line in test.body]
    return "\n".join(lines) + "\n"


TEST_HEADER = r'''"""Tests of @@TITLE@@, generated by the SmartSpec builtin generator.

Every test starts its own server on a free port (fresh, empty stores), talks to it over
HTTP, and names the requirements its endpoint serves with @pytest.mark.requirement.
Items a test needs beforehand are stored directly (seed), so each endpoint is tested alone.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any, Iterator
from urllib.parse import quote

import pytest

import app


@pytest.fixture
def server() -> Iterator[app.Server]:
    server = app.make_server(0)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def call(
    server: app.Server, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON body or None) of one request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _decode(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _decode(error.read())


def _decode(payload: bytes) -> Any:
    return json.loads(payload) if payload else None


def seed(server: app.Server, entity: str, body: dict[str, Any]) -> dict[str, Any]:
    """Store an item directly, through the same validation as the create endpoint."""
    return server.app.store(entity).create(body)


def item_path(template: str, value: Any) -> str:
    """The template with its path parameter replaced by value."""
    start, end = template.index("{"), template.index("}")
    return template[:start] + quote(str(value), safe="") + template[end + 1 :]'''


# ------------------------------------------------------------------ conftest, README

CONFTEST = r'''"""Registers the marker that links a test to the requirement it demonstrates."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requirement(id): the spec requirement (e.g. REQ-001) this test demonstrates"
    )
'''


def _render_readme(spec: SpecSpec, routes: Sequence[_Route], tests: Sequence[_Test]) -> str:
    lines = [
        f"# {_text(spec.title)}",
        "",
        f"Generated by the SmartSpec builtin generator from spec version {_text(spec.version)}.",
    ]
    if spec.summary:
        lines += ["", _text(spec.summary)]
    lines += [
        "",
        "A JSON over HTTP service on the Python standard library (`http.server`), with data",
        "in memory. Run it with `python app.py [port]` (default 8000); run the tests with",
        "`python -m pytest` (they start the service on a free port themselves).",
        "",
        "## Endpoints",
        "",
        "| Method | Path | Action | Entity | Requirements | Summary |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {route.method.value} | `{route.path}` | {route.action.value} | "
        f"{route.entity.name} | {', '.join(route.requirements) or '-'} | "
        f"{_text(route.summary) or '-'} |"
        for route in routes
    ]
    lines += [
        "",
        "## Tests and the requirements they cover",
        "",
        "| Test | Requirements | What it shows |",
        "|---|---|---|",
    ]
    lines += [
        f"| `test_app.py::{test.name}` | {', '.join(test.route.requirements) or '-'} | "
        f"{test.route.label}: {_text(test.description)} |"
        for test in tests
    ]
    covered = {rid for test in tests for rid in test.route.requirements}
    lines += ["", "## Requirements", ""]
    lines += [
        f"- **{requirement.id}** "
        f"({'covered by tests' if requirement.id in covered else 'no endpoint cites it'}): "
        f"{_text(requirement.text)}"
        for requirement in spec.requirements
    ]
    if any(requirement.id not in covered for requirement in spec.requirements):
        lines += [
            "",
            "A requirement that no endpoint cites has no generated test: the builtin generator "
            "derives tests from endpoints.",
        ]
    return "\n".join(lines) + "\n"
