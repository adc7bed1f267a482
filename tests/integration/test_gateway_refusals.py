"""Budget refusals against the real API server: a call that fits is never refused, and a
refusal names the constraint that binds, with figures that agree, in the HTTP body, the
ledger entry and one warning log line.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting" and
"Refusals". The model is the local OpenAI-compatible stub (canned answers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from smartspec.logic.pricing import affordable_completion_tokens, cost_credits
from stubs.openai_stub import StubServer
from testcluster.gateway_calls import (
    API,
    STUB_PRICE,
    budget_status,
    charge,
    chat,
    create_budget,
    create_run,
    ledger_entries,
    settled,
    token_for,
)
from testcluster.harness import GatewayProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]
# _prompt_token_bound: 16 for the request, 8 per message, plus the content's JSON bytes.
FRAMING_TOKENS = 16 + 8


def prompt_of(bound: int) -> str:
    """A user message whose prompt bound is exactly `bound` tokens."""
    return "x" * (bound - FRAMING_TOKENS - 2)  # the JSON string's two quotes


def refusal_log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.log_path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if line.get("event") == "Call refused":
            lines.append(line)
    return lines


def test_a_call_the_budget_has_room_for_is_clamped_to_the_run_cap_not_refused(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    # The defect as a builder met it: limit 2,000, per-run cap 1,500, maxTokens 2,000 and a
    # first call whose worst case is 1,933 credits (more than the lease ceiling of 2000/16
    # and more than the run's cap). It was refused as budget_exhausted with 2,000 left.
    create_budget(cluster, tenant, 2_000, perRunLimitCredits=1_500)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    prompt_bound = 4_886
    assert cost_credits(STUB_PRICE, prompt_bound, 2_000) == 1_933
    status, body, _ = chat(
        gateway, token_for(run), content=prompt_of(prompt_bound), max_tokens=2_000
    )

    assert status == 200, body
    granted = stub.requests[-1]["max_tokens"]
    assert granted == affordable_completion_tokens(STUB_PRICE, prompt_bound, 1_500) == 1_278
    budget = settled(cluster.rest("admin"), tenant)
    assert budget["spentCredits"] == charge(body) <= 1_500
    assert refusal_log_lines(gateway) == []


def test_a_call_larger_than_the_lease_ceiling_gets_room_on_an_idle_budget(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    # The lease ceiling (limit / 16) bounds idle leases, never what one call needs.
    create_budget(cluster, tenant, 2_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run), content=prompt_of(4_886), max_tokens=2_000)
    assert status == 200, body
    assert stub.requests[-1]["max_tokens"] == 2_000


REFUSALS: dict[str, tuple[dict[str, Any], dict[str, Any], int, str, str]] = {
    # label: (budget spec, run spec, HTTP status, code, constraint)
    "the run's cap": (
        {"limitCredits": 1_000_000},
        {"maxCredits": 10},
        402,
        "run_cap_reached",
        "run_cap",
    ),
    "the budget's remaining credits": (
        {"limitCredits": 10},
        {},
        402,
        "budget_exhausted",
        "budget_remaining",
    ),
    "the model policy": (
        {"limitCredits": 1_000_000, "models": {"allow": ["*"], "deny": ["stub-*"]}},
        {},
        403,
        "model_not_allowed",
        "model_policy",
    ),
}


@pytest.mark.parametrize("label", sorted(REFUSALS))
def test_a_refusal_names_what_binds_everywhere_it_is_recorded(
    label: str,
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
) -> None:
    budget_spec, run_spec, http_status, code, constraint = REFUSALS[label]
    limit = budget_spec.pop("limitCredits")
    create_budget(cluster, tenant, limit, **budget_spec)
    run = create_run(cluster, tenant, **run_spec)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run), content="Write a to-do API.")

    assert stub.requests == [], "a refused call never reaches the provider"
    error = body["error"]
    assert (status, error["code"], error["constraint"]) == (http_status, code, constraint), body
    if http_status == 402:
        # The figures agree with each other and with the decision.
        assert error["remaining_credits"] < error["required_credits"] <= error["requested_credits"]
        assert f"{error['remaining_credits']} " in error["message"]
        assert f"at least {error['required_credits']} credits" in error["message"]
    if constraint == "run_cap":
        assert error["run_cap_credits"] == 10
        assert "spec.maxCredits of the run" in error["message"]
    if constraint == "budget_remaining":
        assert (
            error["limit_credits"] - error["spent_credits"] - error["held_credits"]
            == (error["remaining_credits"])
        )
    if constraint == "model_policy":
        assert "deny pattern 'stub-*'" in error["message"]

    admin = cluster.rest("admin")
    entries = wait_for(
        lambda: [e for e in ledger_entries(s3, admin, tenant) if e.kind == "refuse"],
        "the refuse entry in the ledger",
    )
    assert len(entries) == 1
    assert entries[0].detail.startswith(f"{code} ({constraint}): ")
    assert error["message"] in entries[0].detail
    assert (entries[0].run, entries[0].credits) == ("run-1", 0)

    logged = refusal_log_lines(gateway)
    assert len(logged) == 1, logged
    assert (logged[0]["level"], logged[0]["code"], logged[0]["constraint"]) == (
        "warning",
        code,
        constraint,
    )
    assert logged[0]["correlation_id"] == run["metadata"]["uid"]
    assert budget_status(cluster.rest("admin"), tenant).get("spentCredits", 0) == 0


def test_a_spent_period_is_named_as_such(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 100, period={"type": "Lifetime"})
    cluster.rest("admin").patch(
        f"{API}/{tenant}/creditbudgets/default/status",
        {"status": {"spentCredits": 100, "periodStart": "1970-01-01T00:00:00Z"}},
    )
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run))
    error = body["error"]
    assert (status, error["code"], error["constraint"]) == (
        402,
        "budget_exhausted",
        "period_exhausted",
    )
    assert "has spent all 100 credits of its Lifetime period" in error["message"]
    assert (error["spent_credits"], error["remaining_credits"]) == (100, 0)
    assert stub.requests == []
