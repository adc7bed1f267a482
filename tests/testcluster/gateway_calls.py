"""Calls to a gateway under test, as a sandbox makes them, and reads of what they left.

Shared by the gateway's integration tests (specs/CORE-003-gateway-and-budgets.md). The runs
these helpers create are marked Generating on attempt 1 by the test itself, playing the run
reconciler's part, so the gateway can be tested without an operator.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from smartspec.gateway.ledger_store import read_segments
from smartspec.logic.ledger import LedgerEntry
from smartspec.logic.pricing import ModelPrice, cost_credits
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from smartspec.storage import S3ObjectStore

from .harness import TEST_TOKEN_KEY, GatewayProcess, wait_for, write_gateway_config
from .plugin import Cluster
from .rest import Rest
from .s3 import S3Endpoint

STUB_PRICE = ModelPrice("stub-model", 150_000, 600_000)
BACKUP_PRICE = ModelPrice("stub-backup", 300_000, 1_200_000)
API = "/apis/smartspec.dev/v1alpha1/namespaces"


def create_budget(cluster: Cluster, namespace: str, limit: int, **spec: Any) -> None:
    body = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "CreditBudget",
        "metadata": {"name": "default"},
        "spec": {"limitCredits": limit, **spec},
    }
    cluster.rest("platform_admin").post(f"{API}/{namespace}/creditbudgets", body)


def create_run(
    cluster: Cluster, namespace: str, name: str = "run-1", **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "GenerationRun",
        "metadata": {"name": name},
        "spec": {
            "specRef": {"name": "todo-api"},
            "generator": {"backend": "llm", "model": "stub-model"},
            **spec,
        },
    }
    cluster.rest("builder").post(f"{API}/{namespace}/generationruns", body)
    # The run reconciler would set this; here the test plays its part.
    return cluster.rest("admin").patch(
        f"{API}/{namespace}/generationruns/{name}/status",
        {"status": {"phase": "Generating", "attempt": 1}},
    )


def token_for(
    run: dict[str, Any],
    *,
    ttl: int = 3600,
    replay_of: str | None = None,
    key: bytes = TEST_TOKEN_KEY,
    namespace: str | None = None,
) -> str:
    claims = RunTokenClaims(
        namespace=namespace or run["metadata"]["namespace"],
        run=run["metadata"]["name"],
        run_uid=run["metadata"]["uid"],
        attempt=1,
        budget="default",
        spec_revision=1,
        expires_at=int(time.time()) + ttl,
        replay_of=replay_of,
    )
    return mint_run_token(claims, key)


def chat(
    gateway: GatewayProcess, token: str, content: str = "Write a to-do API.", **extra: Any
) -> tuple[int, dict[str, Any], bytes]:
    body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 64,
        **extra,
    }
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    return response.status_code, response.json(), response.content


def budget_status(rest: Rest, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = (
        rest.get(f"{API}/{namespace}/creditbudgets/default").get("status") or {}
    )
    return status


def settled(rest: Rest, namespace: str) -> dict[str, Any]:
    """The budget once every lease is back (the gateway gives idle leases back)."""
    return wait_for(
        lambda: (s := budget_status(rest, namespace)) and s.get("reservedCredits", 0) == 0 and s,
        "every lease to be returned",
    )


def charge(body: dict[str, Any], price: ModelPrice = STUB_PRICE) -> int:
    usage = body["usage"]
    return cost_credits(price, usage["prompt_tokens"], usage["completion_tokens"])


def verify_ledger(cluster: Cluster, namespace: str, gateway: GatewayProcess) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "smartspec", "ledger", "verify", "--namespace", namespace],
        env={**gateway.env, "KUBECONFIG": str(cluster.kubeconfig("admin"))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def ledger_entries(s3: S3Endpoint, rest: Rest, namespace: str) -> list[LedgerEntry]:
    """Every entry of the namespace's default budget's ledger, newest segment first."""
    head = (budget_status(rest, namespace).get("ledgerHead") or {}).get("segmentUri")
    if head is None:
        return []
    store = S3ObjectStore(s3.bucket, endpoint_url=s3.endpoint_url, client=s3.client("admin"))
    return [entry for segment in read_segments(store, head) for entry in segment.entries]


def gateway_on(
    transport: str, start_gateway: Callable[..., GatewayProcess], stub_url: str, config_dir: Path
) -> GatewayProcess:
    """A gateway whose stub routes use `transport`."""
    config = write_gateway_config(config_dir / f"{transport}.yaml", stub_url, transport=transport)
    return start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(config))


def settle_entries(s3: S3Endpoint, cluster: Cluster, namespace: str) -> list[LedgerEntry]:
    """The namespace's default budget's settle entries, newest first."""
    entries = ledger_entries(s3, cluster.rest("admin"), namespace)
    return [entry for entry in entries if entry.kind == "settle"]
