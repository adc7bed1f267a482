"""A gateway replica's lease books against the real API server and real HTTP S3.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Budget accounting": a resize-only
sync grows a lease without settling or writing the ledger, keeps settled-but-unwritten
costs inside the lease, and turns into a full sync when the write has entries of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smartspec.api.v1alpha1.creditbudget import CreditBudget, CreditBudgetStatus
from smartspec.gateway.accounting import Hold, LeaseAccount, LeaseSettings
from smartspec.gateway.ledger_store import verify_budget_ledger
from smartspec.kube.client import KubeClient, load_configuration
from smartspec.logic.budget import lease_id
from smartspec.logic.ledger import Attribution, LedgerDraft
from smartspec.storage import S3ObjectStore
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

API = "/apis/smartspec.dev/v1alpha1/namespaces"
Books = Callable[..., None]
LIMIT = 100_000


def call(account: LeaseAccount, call_id: str) -> Attribution:
    return Attribution(account.namespace, "run-1", "uid-1", 1, 1, call_id)


def hold(account: LeaseAccount, call_id: str, credits: int) -> None:
    account.hold(Hold(call=call(account, call_id), model="stub-model", credits=credits))


def settle(account: LeaseAccount, call_id: str, credits: int) -> None:
    """Settle as the gateway does: the books, and the ledger entry the next full sync writes."""
    account.settle(call_id, credits, 10, 10)
    account.record(
        LedgerDraft(
            kind="settle",
            at=datetime.now(UTC),
            namespace=account.namespace,
            budget=account.budget,
            holder=account.settings.holder,
            credits=credits,
            call=call(account, call_id),
            model="stub-model",
            prompt_tokens=10,
            completion_tokens=10,
        )
    )


def status_of(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body = cluster.rest("admin").get(f"{API}/{namespace}/creditbudgets/default")
    status: dict[str, Any] = body.get("status") or {}
    return status


def verify(store: S3ObjectStore, status: dict[str, Any]) -> list[str]:
    report = verify_budget_ledger(store, CreditBudgetStatus.model_validate(status))
    return report.problems()


@pytest.fixture
def books(
    cluster: Cluster, tenant: str, s3: S3Endpoint, s3_client: Any, gateway_rbac: None
) -> Books:
    """Run a coroutine with one replica's LeaseAccount on a fresh budget in the tenant."""
    cluster.rest("platform_admin").post(
        f"{API}/{tenant}/creditbudgets",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "CreditBudget",
            "metadata": {"name": "default"},
            "spec": {"limitCredits": LIMIT},
        },
    )
    store = S3ObjectStore(
        s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region, client=s3_client
    )

    @contextlib.asynccontextmanager
    async def account(lease_max_fraction: int) -> AsyncIterator[LeaseAccount]:
        kube = KubeClient(load_configuration(str(cluster.kubeconfig("gateway"))))
        try:
            yield LeaseAccount(
                namespace=tenant,
                budget="default",
                settings=LeaseSettings(
                    holder="replica-a",
                    lease_seconds=30,
                    lease_factor=8,
                    lease_max_fraction=lease_max_fraction,
                    idle_release_seconds=60,
                ),
                kube=kube,
                store=store,
            )
        finally:
            await kube.close()
            await store.aclose()

    def run(
        body: Callable[[LeaseAccount, S3ObjectStore], Awaitable[None]], lease_max_fraction: int = 1
    ) -> None:
        async def main() -> None:
            async with account(lease_max_fraction) as books:
                await body(books, store)

        asyncio.run(main())

    return run


def test_a_resize_grows_the_lease_but_leaves_spent_and_ledger_to_the_full_sync(
    cluster: Cluster,
    tenant: str,
    books: Books,
) -> None:
    async def body(account: LeaseAccount, store: S3ObjectStore) -> None:
        await account.sync(500)
        assert status_of(cluster, tenant).get("ledgerHead") is None
        hold(account, "a", 200)
        hold(account, "b", 100)
        settle(account, "a", 150)  # 150 settled, not written; 100 still in flight
        head_before = status_of(cluster, tenant).get("ledgerHead")

        await account.sync(2_000, resize_only=True)
        after = status_of(cluster, tenant)
        assert after["spentCredits"] == 0, "a resize settles nothing"
        assert after.get("ledgerHead") == head_before, "a resize writes no ledger segment"
        # The lease still covers the settled and in-flight costs, plus the new spare.
        assert after["reservedCredits"] == 150 + 100 + 2_000
        assert account.settled_unflushed == 150
        assert account.available == 2_000
        assert after["spentCredits"] + after["reservedCredits"] <= LIMIT

        settle(account, "b", 60)
        await account.sync(0)
        settled = status_of(cluster, tenant)
        assert settled["spentCredits"] == 210, "the full sync settles both calls"
        assert account.settled_unflushed == 0
        assert verify(store, settled) == []

    books(body)


def test_a_resize_that_must_record_an_expiry_becomes_a_full_sync(
    cluster: Cluster,
    tenant: str,
    books: Books,
) -> None:
    async def body(account: LeaseAccount, store: S3ObjectStore) -> None:
        await account.sync(500)
        hold(account, "a", 300)
        settle(account, "a", 120)
        # Another replica died holding 700 credits; its lease has lapsed.
        budget = CreditBudget.model_validate(
            cluster.rest("admin").get(f"{API}/{tenant}/creditbudgets/default")
        )
        status = budget.status or CreditBudgetStatus()
        dead = status.reservations[0].model_copy(
            update={
                "id": lease_id("replica-dead"),
                "holder": "replica-dead",
                "credits": 700,
                "expires_at": datetime.now(UTC) - timedelta(seconds=1),
            }
        )
        wire = status.model_copy(
            update={
                "reservations": [*status.reservations, dead],
                "reserved_credits": status.reserved_credits + 700,
            }
        ).to_wire()
        cluster.rest("gateway").patch(
            f"{API}/{tenant}/creditbudgets/default/status",
            {"status": {key: wire[key] for key in ("reservations", "reservedCredits")}},
        )

        await account.sync(1_000, resize_only=True)
        after = status_of(cluster, tenant)
        # The expiry had to be recorded, so the write settled and appended the ledger too.
        assert after["spentCredits"] == 700 + 120
        assert account.settled_unflushed == 0
        assert [r["holder"] for r in after["reservations"]] == ["replica-a"]
        assert verify(store, after) == []

    books(body)


def test_a_growth_covers_the_largest_waiting_call_even_past_the_lease_ceiling(
    cluster: Cluster, tenant: str, books: Books
) -> None:
    async def body(account: LeaseAccount, store: S3ObjectStore) -> None:
        # The ceiling is limit / 100 = 1,000; a call needing 5,000 waits beside small ones.
        with account.waiting_for(5_000), account.waiting_for(10):
            await account.grow(10)
            assert account.available >= 5_000, "a write for a small call left the large one"
            assert account.waiting_credits == 5_010
        assert account.waiting_credits == 0
        after = status_of(cluster, tenant)
        assert after["spentCredits"] + after["reservedCredits"] <= LIMIT

    books(body, lease_max_fraction=100)
