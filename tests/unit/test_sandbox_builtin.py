"""The builtin generator writes a real service whose generated tests pass (CORE-004).

specs/CORE-004-generation-runs.md, "Sandbox contract" (backend builtin) and "Test report":
the generated suite is run for real, in a subprocess, exactly as the tester runs it, and
every requirement an endpoint cites must be demonstrated by at least one passing test.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.sandbox import REQUIREMENT_REPORT_ENV as REPORT_ENV
from smartspec.api.v1alpha1 import Spec
from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.logic.canonical import canonical_json
from smartspec.logic.credential_scan import scan_text
from smartspec.sandbox import Generation
from smartspec.sandbox.builtin import UnsupportedSpec, generate
from smartspec.sandbox.tester import read_junit

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "todo-service" / "spec.yaml"


def example_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return document


def example_spec() -> SpecSpec:
    return Spec.model_validate(example_document()).spec


def spec_with(**changes: Any) -> SpecSpec:
    """The example's spec with top-level fields of .spec replaced."""
    body = copy.deepcopy(example_document()["spec"])
    body.update(changes)
    return SpecSpec.model_validate(body)


def write(generation: Generation, target: Path) -> None:
    for item in generation.files:
        path = target / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.content)


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the generated suite like the tester does; fail with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env={**os.environ, **(env or {}), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def run_with_evidence(project: Path, evidence: Path) -> dict[str, Any]:
    """Run with the requirement plugin and JUnit XML; the plugin's report."""
    markers = evidence / "markers.json"
    run_pytest(
        project,
        "-p",
        "smartspec.sandbox.requirement_plugin",
        f"--junitxml={evidence / 'junit.xml'}",
        env={REPORT_ENV: str(markers)},
    )
    report: dict[str, Any] = json.loads(markers.read_text(encoding="utf-8"))
    return report


# ------------------------------------------------------------------ the example


def test_example_service_passes_its_generated_tests(tmp_path: Path) -> None:
    spec = example_spec()
    project, evidence = tmp_path / "project", tmp_path / "evidence"
    project.mkdir()
    evidence.mkdir()
    generation = generate(spec)
    write(generation, project)
    assert sorted(item.path for item in generation.files) == [
        "README.md",
        "app.py",
        "conftest.py",
        "requirements.txt",
        "test_app.py",
    ]

    # On its own, with --strict-markers: the generated conftest.py registers the marker.
    output = run_pytest(project, "--strict-markers")
    assert " passed" in output

    report = run_with_evidence(project, evidence)
    counts = read_junit((evidence / "junit.xml").read_bytes())
    assert counts.failed == counts.errors == counts.skipped == 0
    assert counts.passed == len(report["tests"]) >= 15
    assert all(test["outcome"] == "passed" for test in report["tests"])

    assert spec.interfaces is not None
    cited = {rid for endpoint in spec.interfaces.endpoints for rid in endpoint.requirements}
    assert cited == {"REQ-001", "REQ-002", "REQ-003", "REQ-004"}
    for rid in sorted(cited):
        passing = [t for t in report["tests"] if rid in t["requirements"]]
        assert passing, f"no generated test demonstrates {rid}"

    # The acceptance paths of the example each have their test.
    names = {test["nodeid"].split("::")[1] for test in report["tests"]}
    for expected in (
        "test_post_todos_creates_item",
        "test_post_todos_without_title_returns_400",
        "test_post_todos_applies_defaults",
        "test_get_todos_returns_every_item",
        "test_get_todos_id_returns_item",
        "test_get_todos_id_returns_404_for_unknown",
        "test_put_todos_id_replaces_item",
        "test_delete_todos_id_removes_item",
    ):
        assert expected in names


def test_tasks_and_file_requirements_follow_the_endpoints() -> None:
    generation = generate(example_spec())
    by_path = {item.path: item for item in generation.files}
    assert by_path["app.py"].requirements == ("REQ-001", "REQ-002", "REQ-003", "REQ-004")
    assert by_path["test_app.py"].requirements == by_path["app.py"].requirements
    assert by_path["README.md"].requirements == ()
    assert [task.file for task in generation.tasks] == [
        "app.py",
        "test_app.py",
        "conftest.py",
        "requirements.txt",
        "README.md",
    ]
    readme = by_path["README.md"].content.decode()
    assert "| `test_app.py::test_post_todos_creates_item` | REQ-001, REQ-004 |" in readme
    assert "| GET | `/todos` | list | Todo | REQ-002 |" in readme
    assert generation.usage.calls == 0


def test_same_content_gives_byte_identical_files() -> None:
    from_yaml = generate(example_spec())
    # The sandbox reads the canonical snapshot (no lifecycle), not the YAML.
    snapshot = canonical_json(example_spec().content())
    from_snapshot = generate(SpecSpec.model_validate(json.loads(snapshot)))
    again = generate(example_spec())
    assert from_yaml == from_snapshot == again
    assert [f.content for f in from_yaml.files] == [f.content for f in again.files]


# ------------------------------------------------------------------ a richer spec

RICH_SPEC: dict[str, Any] = {
    "title": "Contacts and products",
    "version": "0.3.0",
    "owner": {"team": "crm"},
    "requirements": [
        {"id": "CRM-1", "text": "Manage contacts.", "acceptanceCriteria": ["CRUD works."]},
        {"id": "CRM-2", "text": "Patch contacts.", "acceptanceCriteria": ["PATCH works."]},
        {"id": "CRM-3", "text": "Manage products.", "acceptanceCriteria": ["By sku."]},
    ],
    "interfaces": {
        "entities": [
            {
                "name": "Contact",
                "fields": [
                    {"name": "id", "type": "uuid", "required": True, "unique": True},
                    {"name": "email", "type": "email", "required": True, "unique": True},
                    {"name": "fullName", "type": "string", "required": True},
                    {"name": "age", "type": "integer"},
                    {"name": "score", "type": "decimal"},
                    {"name": "birthday", "type": "date"},
                    {"name": "lastSeen", "type": "datetime"},
                    {"name": "notes", "type": "text"},
                    {"name": "vip", "type": "boolean"},
                    {"name": "externalRef", "type": "uuid"},
                ],
            },
            {
                "name": "Product",
                "fields": [
                    {"name": "sku", "type": "string", "required": True, "unique": True},
                    {"name": "price", "type": "decimal", "required": True},
                    {"name": "stock", "type": "integer", "required": True},
                ],
            },
        ],
        "endpoints": [
            {"method": "GET", "path": "/contacts", "entity": "Contact", "action": "list",
             "requirements": ["CRM-1"]},
            {"method": "POST", "path": "/contacts", "entity": "Contact", "action": "create",
             "requirements": ["CRM-1"]},
            {"method": "GET", "path": "/contacts/{contactId}", "entity": "Contact",
             "action": "get", "requirements": ["CRM-1"]},
            {"method": "PUT", "path": "/contacts/{contactId}", "entity": "Contact",
             "action": "update", "requirements": ["CRM-1"]},
            {"method": "PATCH", "path": "/contacts/{contactId}", "entity": "Contact",
             "action": "update", "requirements": ["CRM-2"]},
            {"method": "DELETE", "path": "/contacts/{contactId}", "entity": "Contact",
             "action": "delete", "requirements": ["CRM-1"]},
            {"method": "POST", "path": "/products", "entity": "Product", "action": "create",
             "requirements": ["CRM-3"]},
            {"method": "GET", "path": "/products/{sku}", "entity": "Product", "action": "get"},
            {"method": "PUT", "path": "/products/{sku}", "entity": "Product",
             "action": "update", "requirements": ["CRM-3"]},
            {"method": "DELETE", "path": "/products/{sku}", "entity": "Product",
             "action": "delete", "requirements": ["CRM-3"]},
        ],
    },
    "constraints": {"language": "python", "languageVersion": "3.11", "framework": "stdlib"},
}  # fmt: skip


def test_every_field_type_and_a_client_chosen_key(tmp_path: Path) -> None:
    project, evidence = tmp_path / "project", tmp_path / "evidence"
    project.mkdir()
    evidence.mkdir()
    write(generate(SpecSpec.model_validate(RICH_SPEC)), project)
    report = run_with_evidence(project, evidence)

    tests = {test["nodeid"].split("::")[1]: test for test in report["tests"]}
    assert all(test["outcome"] == "passed" for test in tests.values())
    for field in ("age", "score", "birthday", "last_seen", "email", "vip", "external_ref"):
        assert f"test_post_contacts_with_invalid_{field}_returns_400" in tests
    assert "test_post_contacts_refuses_duplicate_email" in tests
    assert "test_post_products_refuses_duplicate_sku" in tests
    assert "test_put_products_sku_refuses_changing_sku" in tests
    assert tests["test_patch_contacts_contact_id_updates_given_fields"]["requirements"] == ["CRM-2"]
    # An endpoint that cites no requirement gets untagged tests.
    assert tests["test_get_products_sku_returns_item"]["requirements"] == []
    assert tests["test_delete_products_sku_removes_item"]["requirements"] == ["CRM-3"]


def test_credential_named_fields_do_not_trip_the_credential_scan(tmp_path: Path) -> None:
    # The generator scans its output and refuses to upload on any hit (exit 4), so sample
    # values for fields named like credentials must read as placeholders.
    user = {
        "name": "User",
        "fields": [
            {"name": "id", "type": "uuid", "required": True, "unique": True},
            {"name": "password", "type": "string", "required": True},
            {"name": "apiKey", "type": "string", "unique": True},
            {"name": "clientSecret", "type": "text"},
        ],
    }
    endpoints = [
        {"method": "POST", "path": "/users", "entity": "User", "action": "create"},
        {"method": "PUT", "path": "/users/{id}", "entity": "User", "action": "update"},
    ]
    generation = generate(spec_with(interfaces={"entities": [user], "endpoints": endpoints}))
    for item in generation.files:
        assert scan_text(item.content.decode(), path=item.path) == []
    write(generation, tmp_path)
    assert "passed" in run_pytest(tmp_path)


@pytest.fixture
def todo_app(tmp_path: Path) -> Iterator[Any]:
    """The generated example service, imported and serving on a free port."""
    write(generate(example_spec()), tmp_path)
    module_spec = importlib.util.spec_from_file_location("generated_todo_app", tmp_path / "app.py")
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up while defining
    try:
        module_spec.loader.exec_module(module)
        server = module.make_server(0)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        yield server
        server.shutdown()
        server.server_close()
        thread.join(10)
    finally:
        del sys.modules[module_spec.name]


def request(server: Any, method: str, path: str, data: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, data=data, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - loopback
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        with error:
            body = error.read()
            answer: dict[str, Any] = json.loads(body)
            return error.code, {**answer, "allow": error.headers.get("Allow")}


def test_generated_service_answers_outside_its_routes(todo_app: Any) -> None:
    assert request(todo_app, "GET", "/nowhere")[0] == 404
    status, answer = request(todo_app, "PATCH", "/todos")
    assert status == 405
    assert answer["allow"] == "GET, POST"
    status, answer = request(todo_app, "POST", "/todos", b'{"title": NaN}')
    assert status == 400
    assert "not valid JSON" in answer["error"]
    status, answer = request(todo_app, "POST", "/todos", b'["a list"]')
    assert status == 400
    status, answer = request(todo_app, "POST", "/todos", b'{"title": "   "}')
    assert (status, answer["field"]) == (400, "title")
    status, created = request(todo_app, "POST", "/todos", b'{"title": "write tests"}')
    assert status == 201
    assert created["done"] is False
    assert request(todo_app, "GET", f"/todos/{created['id'].upper()}")[0] == 200
    assert request(todo_app, "GET", "/todos/not-a-uuid")[0] == 404


# ------------------------------------------------------------------ unsupported specs


def _endpoints(*endpoints: dict[str, Any]) -> dict[str, Any]:
    interfaces: dict[str, Any] = copy.deepcopy(example_document()["spec"]["interfaces"])
    interfaces["endpoints"] = list(endpoints)
    return interfaces


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"interfaces": None}, "declares no interfaces.entities and interfaces.endpoints"),
        (
            {"interfaces": {"entities": example_document()["spec"]["interfaces"]["entities"]}},
            "declares no interfaces.entities and interfaces.endpoints",
        ),
        ({"constraints": {"language": "go"}}, "constraints.language is 'go'"),
        ({"constraints": {"framework": "fastapi"}}, "constraints.framework is 'fastapi'"),
        ({"constraints": {"languageVersion": "2.7"}}, "needs Python 3.9 or later"),
        (
            {"interfaces": _endpoints({"method": "GET", "path": "/health"})},
            r"\(GET /health\) has no action",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/todos", "entity": "Todo", "action": "create"}
                )
            },
            "action create needs method POST",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/todos", "entity": "Todo", "action": "get"}
                )
            },
            "needs exactly one path parameter",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/t/{id}", "entity": "Todo", "action": "list"}
                )
            },
            "takes no path parameter",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/t/{title}", "entity": "Todo", "action": "get"}
                )
            },
            "Todo.title, which is not unique",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/t/{id}", "entity": "Todo", "action": "get"},
                    {"method": "GET", "path": "/t/{key}", "entity": "Todo", "action": "get"},
                )
            },
            "matches the same requests as",
        ),
        (
            {
                "interfaces": _endpoints(
                    {"method": "GET", "path": "/t/x{id}", "entity": "Todo", "action": "get"}
                )
            },
            "must be a whole segment",
        ),
    ],
    ids=[
        "no-interfaces",
        "no-endpoints",
        "language",
        "framework",
        "language-version",
        "no-action",
        "method-mismatch",
        "item-without-parameter",
        "collection-with-parameter",
        "non-unique-lookup",
        "ambiguous-routes",
        "partial-segment",
    ],
)
def test_unsupported_specs_are_refused_with_the_reason(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnsupportedSpec, match=reason):
        generate(spec_with(**changes))
