"""ValidatingAdmissionPolicies that the CRD schema cannot express.

Contract: specs/CORE-002-spec-registry.md, section "Governance".

Who may approve a Spec depends on the request's user, which CEL in a CRD cannot see; a
ValidatingAdmissionPolicy can (`request.userInfo.groups`). The approver groups are a
parameter, so an installation can name its own; under GitOps, where approval is the review
of the pull request, add the sync controller's group (for Argo CD in namespace argocd:
`system:serviceaccounts:argocd`).
"""

from __future__ import annotations

from typing import Any

from smartspec.api.v1alpha1 import GROUP
from smartspec.api.v1alpha1.spec import PLURAL as SPECS

DEFAULT_APPROVER_GROUPS = ("smartspec:approvers",)
APPROVAL_POLICY = "smartspec-spec-approval"
_LABELS = {"app.kubernetes.io/name": "smartspec", "app.kubernetes.io/part-of": "smartspec"}


def build_spec_approval_policy(
    approver_groups: tuple[str, ...] = DEFAULT_APPROVER_GROUPS,
) -> list[dict[str, Any]]:
    """The policy and its binding: only the approver groups may set lifecycle Approved."""
    if not approver_groups:
        raise ValueError("at least one approver group is required")
    groups_literal = "[" + ", ".join(_cel_string(group) for group in approver_groups) + "]"
    names = ", ".join(approver_groups)
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": APPROVAL_POLICY, "labels": dict(_LABELS)},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [SPECS],
                    }
                ]
            },
            "variables": [
                {
                    "name": "approving",
                    "expression": (
                        "has(object.spec.lifecycle) && object.spec.lifecycle == 'Approved' && "
                        "(oldObject == null || !has(oldObject.spec.lifecycle) || "
                        "oldObject.spec.lifecycle != 'Approved')"
                    ),
                }
            ],
            "validations": [
                {
                    "expression": (
                        f"!variables.approving || "
                        f"{groups_literal}.exists(g, g in request.userInfo.groups)"
                    ),
                    "messageExpression": (
                        f"{_cel_string(f'only members of {names} may approve a Spec; ')} + "
                        "request.userInfo.username + ' is not one'"
                    ),
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": APPROVAL_POLICY, "labels": dict(_LABELS)},
        "spec": {"policyName": APPROVAL_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def _cel_string(text: str) -> str:
    """A CEL string literal (single-quoted, escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
