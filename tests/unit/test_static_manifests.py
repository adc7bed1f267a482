"""deploy/ is current and its policies say what CORE-002 says (the API server enforces them
in tests/integration/test_spec_registry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartspec.builders.admission import build_spec_approval_policy
from smartspec.builders.rbac import build_operator_cluster_role
from smartspec.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_committed_deploy_manifests_are_current() -> None:
    assert main(["manifests", "--check", "--output-dir", str(REPO / "deploy")]) == 0


def test_approval_policy_names_every_approver_group() -> None:
    policy, binding = build_spec_approval_policy(
        ("smartspec:approvers", "system:serviceaccounts:argocd")
    )
    expression = policy["spec"]["validations"][0]["expression"]
    assert "['smartspec:approvers', 'system:serviceaccounts:argocd']" in expression
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_approval_policy_escapes_group_names() -> None:
    policy, _ = build_spec_approval_policy(("o'brien",))
    assert "'o\\'brien'" in policy["spec"]["validations"][0]["expression"]


def test_approval_policy_needs_a_group() -> None:
    with pytest.raises(ValueError, match="at least one approver group"):
        build_spec_approval_policy(())


def test_operator_role_creates_secrets_but_reads_none_and_never_writes_specs() -> None:
    rules = build_operator_cluster_role()["rules"]
    for rule in rules:
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["create"]
        if "specs" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch", "patch"}
