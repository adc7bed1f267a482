"""User-facing ClusterRoles for the smartspec.dev resources.

Contract: specs/CORE-001-resources.md, section "Access".

Three personas, three roles. Viewer and builder aggregate into Kubernetes' built-in `view`
and `edit` roles, so whoever may edit a namespace may write Specs and GenerationRuns there.
The platform-admin role deliberately does NOT aggregate into `admin`: a tenant who administers
their own namespace must not raise their own budget. Nobody but the operator and the gateway
writes a status subresource.
"""

from __future__ import annotations

from typing import Any

from smartspec.api.v1alpha1 import GROUP
from smartspec.api.v1alpha1.creditbudget import PLURAL as BUDGETS
from smartspec.api.v1alpha1.generationrun import PLURAL as RUNS
from smartspec.api.v1alpha1.spec import PLURAL as SPECS

READ_VERBS = ["get", "list", "watch"]
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]

VIEWER_ROLE = "smartspec-viewer"
BUILDER_ROLE = "smartspec-builder"
PLATFORM_ADMIN_ROLE = "smartspec-platform-admin"


def _cluster_role(
    name: str, purpose: str, rules: list[dict[str, Any]], aggregate_to: str | None
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "smartspec", "app.kubernetes.io/part-of": "smartspec"}
    if aggregate_to is not None:
        labels[f"rbac.authorization.k8s.io/aggregate-to-{aggregate_to}"] = "true"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"smartspec.dev/purpose": purpose},
        },
        "rules": rules,
    }


def build_user_cluster_roles() -> list[dict[str, Any]]:
    """The viewer, builder and platform-admin ClusterRoles."""
    viewer = _cluster_role(
        VIEWER_ROLE,
        "Read Specs, GenerationRuns and CreditBudgets (aggregated into view).",
        [{"apiGroups": [GROUP], "resources": [SPECS, RUNS, BUDGETS], "verbs": READ_VERBS}],
        aggregate_to="view",
    )
    builder = _cluster_role(
        BUILDER_ROLE,
        "Write Specs and GenerationRuns, read CreditBudgets (aggregated into edit).",
        [
            {"apiGroups": [GROUP], "resources": [SPECS, RUNS], "verbs": READ_VERBS + WRITE_VERBS},
            {"apiGroups": [GROUP], "resources": [BUDGETS], "verbs": READ_VERBS},
        ],
        aggregate_to="edit",
    )
    platform_admin = _cluster_role(
        PLATFORM_ADMIN_ROLE,
        "Set tenant CreditBudgets; bind cluster-wide to platform admins only, never to tenants.",
        [
            {"apiGroups": [GROUP], "resources": [BUDGETS], "verbs": READ_VERBS + WRITE_VERBS},
            {"apiGroups": [GROUP], "resources": [SPECS, RUNS], "verbs": READ_VERBS},
        ],
        aggregate_to=None,
    )
    return [viewer, builder, platform_admin]


OPERATOR_ROLE = "smartspec-operator"


def build_operator_cluster_role() -> dict[str, Any]:
    """The operator's own permissions, each rule commented by the need it serves."""
    return _cluster_role(
        OPERATOR_ROLE,
        "The SmartSpec operator: reconcile smartspec.dev resources and post Events.",
        [
            # kopf discovers served resources by watching CRDs, and namespaces for scoping.
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["list", "watch"],
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            # Watch our resources; patch them for kopf's annotations (Specs' progress and diff
            # base) and for a run's spec labels and finalizer.
            {
                "apiGroups": [GROUP],
                "resources": [SPECS, RUNS, BUDGETS],
                "verbs": ["get", "list", "watch", "patch"],
            },
            # Retention deletes finished runs past their lifetime (CORE-001 "Retention").
            {"apiGroups": [GROUP], "resources": [RUNS], "verbs": ["delete"]},
            # Status is written by exactly one writer per field (CORE-001); the operator's.
            {
                "apiGroups": [GROUP],
                "resources": [f"{SPECS}/status", f"{RUNS}/status", f"{BUDGETS}/status"],
                "verbs": ["get", "patch"],
            },
            # Events explain every transition to users (kubectl describe).
            {
                "apiGroups": ["", "events.k8s.io"],
                "resources": ["events"],
                "verbs": ["create", "patch"],
            },
            # Sandbox Jobs of each attempt: created by name, watched, suspended, deleted.
            {
                "apiGroups": ["batch"],
                "resources": ["jobs"],
                "verbs": ["create", "get", "list", "watch", "patch", "delete"],
            },
            # Exit codes and termination messages of sandbox pods, watched so a pod's change
            # wakes its run (label-selected: only sandbox pods are sent).
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            # Instructions Secrets are only ever created (write-only: the operator reads none).
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            # Per-run egress policies of the sandboxes.
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["create"],
            },
            # blockOwnerDeletion on owned objects needs update on the owner's finalizers.
            {"apiGroups": [GROUP], "resources": [f"{RUNS}/finalizers"], "verbs": ["update"]},
        ],
        aggregate_to=None,
    )


OPERATOR_LEADER_ELECTION_ROLE = "smartspec-operator-leader-election"


def build_operator_leader_election_role() -> dict[str, Any]:
    """The Lease that operator replicas elect their leader through (CORE-004). Bind it with a
    RoleBinding in the operator's own namespace only: cluster-wide it would let the operator
    rewrite any controller's Lease (kube-system's included)."""
    return _cluster_role(
        OPERATOR_LEADER_ELECTION_ROLE,
        "SmartSpec operator replicas: elect one leader through a Lease in their own namespace"
        " (bind with a RoleBinding there, never cluster-wide).",
        [
            # Created by the first replica; each claim and renewal is a compare-and-swap update.
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "create", "update"],
            },
        ],
        aggregate_to=None,
    )


GATEWAY_ROLE = "smartspec-gateway"


def build_gateway_cluster_role() -> dict[str, Any]:
    """The gateway's permissions: read runs and budgets, write their accounting status."""
    return _cluster_role(
        GATEWAY_ROLE,
        "The SmartSpec LLM gateway: check runs are active, lease budget credits, record usage.",
        [
            # Every call checks that its run still exists, is not suspended or finished.
            {"apiGroups": [GROUP], "resources": [RUNS, BUDGETS], "verbs": ["get"]},
            # Leases, spentCredits and the ledger head: compare-and-swap on budget status;
            # usage totals on run status. The gateway is the sole writer of those fields.
            {
                "apiGroups": [GROUP],
                "resources": [f"{RUNS}/status", f"{BUDGETS}/status"],
                "verbs": ["get", "patch"],
            },
        ],
        aggregate_to=None,
    )
