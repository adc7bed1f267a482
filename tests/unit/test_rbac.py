"""User-facing roles grant each persona what it needs and no more (CORE-001, "Access")."""

from __future__ import annotations

from typing import Any

from smartspec.builders.rbac import (
    BUILDER_ROLE,
    PLATFORM_ADMIN_ROLE,
    VIEWER_ROLE,
    build_user_cluster_roles,
)

ROLES = {role["metadata"]["name"]: role for role in build_user_cluster_roles()}


def allowed(role: dict[str, Any], resource: str, verb: str) -> bool:
    return any(resource in rule["resources"] and verb in rule["verbs"] for rule in role["rules"])


def test_builder_writes_specs_and_runs_but_only_reads_budgets() -> None:
    builder = ROLES[BUILDER_ROLE]
    assert allowed(builder, "specs", "create")
    assert allowed(builder, "generationruns", "delete")
    assert allowed(builder, "creditbudgets", "get")
    assert not allowed(builder, "creditbudgets", "patch")


def test_platform_admin_role_never_aggregates_into_namespace_admin() -> None:
    labels = ROLES[PLATFORM_ADMIN_ROLE]["metadata"]["labels"]
    assert not any(key.startswith("rbac.authorization.k8s.io/aggregate-to") for key in labels)
    assert allowed(ROLES[PLATFORM_ADMIN_ROLE], "creditbudgets", "update")


def test_no_user_role_writes_status() -> None:
    for role in ROLES.values():
        for rule in role["rules"]:
            assert not any(resource.endswith("/status") for resource in rule["resources"])


def test_viewer_reads_everything_and_writes_nothing() -> None:
    viewer = ROLES[VIEWER_ROLE]
    for resource in ("specs", "generationruns", "creditbudgets"):
        assert allowed(viewer, resource, "list")
        assert not allowed(viewer, resource, "create")
