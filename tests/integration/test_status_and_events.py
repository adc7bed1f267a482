"""What `kubectl describe` and `kubectl get` show a user: each transition's Event once, from
the operator, and printer columns with numbers from the start.

Contract: specs/CORE-001-resources.md, sections "Events" and "CreditBudget";
specs/CORE-003-gateway-and-budgets.md (the gateway's writes of the same status).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stubs.openai_stub import StubServer
from testcluster.gateway_calls import (
    API,
    budget_status,
    charge,
    chat,
    create_budget,
    create_run,
    settled,
    token_for,
    verify_ledger,
)
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.plugin import Cluster
from testcluster.rest import Rest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLE / name).read_text())
    return document


def table_row(rest: Rest, path: str) -> dict[str, Any]:
    """The printer columns of one object, as `kubectl get` receives them from the server."""
    table: dict[str, Any] = rest.table(path)
    names = [column["name"] for column in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"], strict=True))


def events_about(rest: Rest, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = rest.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def operator_keys(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "operator-token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    return {"SMARTSPEC_TOKEN_KEYS_FILE": str(keys)}


def test_each_transition_of_a_run_is_one_event_from_the_operator(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_operator: Callable[..., Any],
    tmp_path: Path,
) -> None:
    start_operator(tenant, **operator_keys(tmp_path))
    builder, admin = cluster.rest("builder"), cluster.rest("admin")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    builder.post(f"{API}/{tenant}/generationruns", example("generationrun-builtin.yaml"))
    run_path = f"{API}/{tenant}/generationruns/todo-api-builtin"

    def finished() -> dict[str, Any] | None:
        status = admin.get(run_path).get("status") or {}
        return status if status.get("phase") in {"Succeeded", "Failed"} else None

    status = wait_for(finished, "the run to finish", timeout=240)
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    # Reconciles go on (the timer, status writes); let them, then count.
    wait_for(lambda: events_about(admin, tenant, "todo-api-builtin"), "the run's Events")
    events = events_about(admin, tenant, "todo-api-builtin")
    reasons = Counter(event["reason"] for event in events)
    assert {"Admitted", "Generating", "Generated", "TestsPassed"} <= set(reasons)
    # SpecNotReady too, when the run came before the Spec's snapshot: once as well.
    assert set(reasons.values()) == {1}, reasons
    assert {e["source"].get("component") for e in events} == {"smartspec-operator"}
    assert {e["reportingComponent"] for e in events} == {"smartspec-operator"}
    assert all(e["involvedObject"]["kind"] == "GenerationRun" for e in events)

    # A builtin run made no model call: its Credits column says 0, not nothing.
    assert status["usage"] == {"calls": 0, "promptTokens": 0, "completionTokens": 0, "credits": 0}
    assert table_row(admin, run_path)["Credits"] == 0
    spec_events = events_about(admin, tenant, "todo-api")
    assert spec_events, "the Spec reports its revision"
    assert Counter(e["reason"] for e in spec_events).most_common(1)[0][1] == 1


def test_a_new_budget_shows_its_accounting_before_any_call(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., Any],
    tmp_path: Path,
) -> None:
    start_operator(tenant, **operator_keys(tmp_path))
    create_budget(cluster, tenant, 5_000, period={"type": "Daily", "timeZone": "Europe/Berlin"})
    admin = cluster.rest("admin")

    def opened() -> dict[str, Any] | None:
        status = budget_status(admin, tenant)
        return status if "periodStart" in status else None

    status = wait_for(opened, "the budget's opened accounting")
    assert (status["spentCredits"], status["reservedCredits"], status["remainingCredits"]) == (
        0,
        0,
        5_000,
    )
    assert status["periodStart"] < status["periodEnd"]
    row = table_row(admin, f"{API}/{tenant}/creditbudgets/default")
    assert (row["Spent"], row["Reserved"], row["Remaining"]) == (0, 0, 5_000)

    # A platform admin raises the limit: Remaining follows without a model call.
    cluster.rest("platform_admin").patch(
        f"{API}/{tenant}/creditbudgets/default", {"spec": {"limitCredits": 7_000}}
    )
    wait_for(
        lambda: budget_status(admin, tenant).get("remainingCredits") == 7_000,
        "remainingCredits to follow the new limit",
    )


def test_opening_the_accounting_never_overwrites_a_gateways_write(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: StubServer,
    tmp_path: Path,
) -> None:
    # The gateway and the operator race for the first write of a new budget; whichever
    # lands second either sees the other's or loses its compare-and-swap.
    gateway = start_gateway()
    start_operator(tenant, **operator_keys(tmp_path))
    run = create_run(cluster, tenant)
    create_budget(cluster, tenant, 1_000_000)
    answers = [chat(gateway, token_for(run), content=f"call {n}") for n in range(5)]
    assert [status for status, _, _ in answers] == [200] * 5
    admin = cluster.rest("admin")
    final = settled(admin, tenant)
    assert final["spentCredits"] == sum(charge(body) for _, body, _ in answers)
    assert final["remainingCredits"] == 1_000_000 - final["spentCredits"]
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)
