"""Benchmark: what the gateway adds to a model call, and how fast budgets take reservations.

    .venv/bin/python tools/bench_gateway.py [--calls 400] [--stub-latency-ms 0]

Starts the real test control plane, S3 (moto), a local OpenAI-compatible stub model server
and one `smartspec gateway` process, then measures in the same run:

1. latency of client -> litellm -> stub (baseline: litellm called in-process, as an app
   without a gateway would) and client -> gateway -> stub (a plain HTTP client, as the OpenAI
   SDK in a sandbox does; the gateway calls litellm), at 1, 16 and 64 concurrent calls:
   p50, p99, the overhead (gateway minus baseline) and the ratio;
2. reservations per second: calls through the gateway at 64 concurrent (each reserves and
   settles against the budget), next to a per-call compare-and-swap design's ceiling
   (4 writers doing reserve + settle CAS writes directly on one CreditBudget).

Figures print; nothing is asserted (see specs/CORE-003-gateway-and-budgets.md). Everything
shares this machine's cores, so the client, the gateway, the stub and the API server compete.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import yaml

from smartspec.kube.client import ConflictError, KubeClient, load_configuration
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from stubs.openai_stub import StubServer
from testcluster.harness import TEST_TOKEN_KEY, GatewayProcess
from testcluster.stack import LocalStack

NAMESPACE = "bench"
API = f"/apis/smartspec.dev/v1alpha1/namespaces/{NAMESPACE}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(base: str, key: str, concurrency: int, calls: int) -> list[float]:
    """Baseline path: litellm in-process straight to the stub."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(index: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            await litellm.acompletion(
                model="openai/stub-model",
                api_base=base,
                api_key=key,
                messages=[{"role": "user", "content": f"benchmark call {index}"}],
                max_tokens=32,
                max_retries=0,
            )
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(index) for index in range(calls)))
    return latencies


async def measure_gateway(url: str, token: str, concurrency: int, calls: int) -> list[float]:
    """Gateway path: a plain HTTP client, as a sandboxed generator's OpenAI SDK would be."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(index: int) -> None:
            body = {
                "model": "stub-model",
                "messages": [{"role": "user", "content": f"benchmark call {index}"}],
                "max_tokens": 32,
            }
            async with semaphore:
                started = time.perf_counter()
                response = await client.post(
                    f"{url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
                latencies.append(time.perf_counter() - started)
            response.raise_for_status()

        await asyncio.gather(*(one(index) for index in range(calls)))
    return latencies


async def raw_cas_rate(kubeconfig: Path, seconds: float, writers: int) -> tuple[int, int]:
    """Reserve + settle as two CAS writes per call, from several writers, on one budget."""
    kube = KubeClient(load_configuration(str(kubeconfig)))
    done = conflicts = 0
    deadline = time.monotonic() + seconds

    async def writer() -> None:
        nonlocal done, conflicts
        while time.monotonic() < deadline:
            for delta in (5, -5):  # reserve, then settle (release) the same amount
                while True:
                    budget = await kube.get(f"{API}/creditbudgets/raw")
                    reserved = (budget.get("status") or {}).get("reservedCredits", 0) + delta
                    patch = {
                        "metadata": {"resourceVersion": budget["metadata"]["resourceVersion"]},
                        "status": {"reservedCredits": max(0, reserved)},
                    }
                    try:
                        await kube.merge_patch(f"{API}/creditbudgets/raw/status", patch)
                        break
                    except ConflictError:
                        conflicts += 1
            done += 1

    await asyncio.gather(*(writer() for _ in range(writers)))
    await kube.close()
    return done, conflicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per measurement")
    parser.add_argument("--stub-latency-ms", type=int, default=0, help="stub answer delay")
    arguments = parser.parse_args()
    litellm.suppress_debug_info = True

    work = Path(tempfile.mkdtemp(prefix="smartspec-bench-"))
    stub = StubServer(models=["stub-model"], delay_seconds=arguments.stub_latency_ms / 1000)
    stub.start_in_thread()
    try:
        with LocalStack(work, bucket="smartspec-bench") as stack:
            run_benchmarks(stack, stub, arguments.calls, work)
    finally:
        stub.stop_thread()


def start_gateway(stack: LocalStack, stub: StubServer, work: Path) -> tuple[GatewayProcess, str]:
    """The bench namespace, budgets and run, and one gateway process; returns it and a token."""
    cluster, s3 = stack.cluster, stack.s3
    if cluster is None or s3 is None:
        raise RuntimeError("the local stack did not start")
    admin = stack.admin
    admin.post("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    for name in ("default", "raw"):
        admin.post(
            f"{API}/creditbudgets",
            {
                "apiVersion": "smartspec.dev/v1alpha1",
                "kind": "CreditBudget",
                "metadata": {"name": name},
                "spec": {"limitCredits": 10**12},
            },
        )
    admin.post(
        f"{API}/generationruns",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "GenerationRun",
            "metadata": {"name": "bench"},
            "spec": {"specRef": {"name": "x"}, "generator": {"model": "stub-model"}},
        },
    )
    run = admin.patch(
        f"{API}/generationruns/bench/status", {"status": {"phase": "Generating", "attempt": 1}}
    )
    token = mint_run_token(
        RunTokenClaims(
            namespace=NAMESPACE,
            run="bench",
            run_uid=run["metadata"]["uid"],
            attempt=1,
            budget="default",
            spec_revision=1,
            expires_at=int(time.time()) + 3600,
        ),
        TEST_TOKEN_KEY,
    )
    config = work / "gateway.yaml"
    route = {
        "name": "stub-model",
        "litellmModel": "openai/stub-model",
        "apiBase": f"{stub.url}/v1",
        "price": {"inputCreditsPerMtok": 150_000, "outputCreditsPerMtok": 600_000},
    }
    config.write_text(yaml.safe_dump({"numRetries": 0, "models": [route]}))
    keys = work / "keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    gateway = stack.own(
        GatewayProcess(
            cluster,
            s3,
            config_path=config,
            keys_path=keys,
            log_path=work / "gateway.log",
            replica="bench-gw",
            extra_env={"SMARTSPEC_GATEWAY_FLUSH_MILLISECONDS": "250"},
        )
    )
    gateway.start()
    return gateway, token


def run_benchmarks(stack: LocalStack, stub: StubServer, calls: int, work: Path) -> None:
    if stack.plane is None:
        raise RuntimeError("the local stack did not start")
    gateway, token = start_gateway(stack, stub, work)
    print(
        f"machine: {os.cpu_count()} cores; stub latency {stub.delay_seconds * 1000:.0f} ms; "
        f"{calls} calls per point; plain HTTP client to the gateway, litellm "
        "in-process for the baseline"
    )
    print(
        f"{'conc':>4} {'base p50':>9} {'gw p50':>8} {'base p99':>9} {'gw p99':>8} "
        f"{'+p50 ms':>8} {'+p99 ms':>8} {'ratio p50':>9}"
    )
    for concurrency in (1, 16, 64):
        asyncio.run(measure(f"{stub.url}/v1", "x", concurrency, 30))  # warm-up
        asyncio.run(measure_gateway(gateway.url, token, concurrency, 30))
        base = asyncio.run(measure(f"{stub.url}/v1", "x", concurrency, calls))
        through = asyncio.run(measure_gateway(gateway.url, token, concurrency, calls))
        b50, g50 = statistics.median(base), statistics.median(through)
        b99, g99 = percentile(base, 0.99), percentile(through, 0.99)
        print(
            f"{concurrency:>4} {b50 * 1000:>8.2f}ms {g50 * 1000:>6.2f}ms {b99 * 1000:>8.2f}ms "
            f"{g99 * 1000:>6.2f}ms {(g50 - b50) * 1000:>8.2f} {(g99 - b99) * 1000:>8.2f} "
            f"{g50 / b50:>9.2f}"
        )

    syncs_before = gateway.metric("smartspec_budget_syncs_total")
    started = time.perf_counter()
    asyncio.run(measure_gateway(gateway.url, token, 64, calls * 2))
    elapsed = time.perf_counter() - started
    syncs = gateway.metric("smartspec_budget_syncs_total") - syncs_before
    overhead = gateway.metric("smartspec_gateway_overhead_seconds_sum") / max(
        1.0, gateway.metric("smartspec_gateway_overhead_seconds_count")
    )
    print(
        f"leased reservations: {calls * 2 / elapsed:.0f} calls/s through the "
        f"gateway at 64 concurrent, {syncs:.0f} budget writes for "
        f"{calls * 2} calls; mean in-gateway overhead {overhead * 1000:.2f} ms"
    )
    done, conflicts = asyncio.run(raw_cas_rate(stack.plane.kubeconfig("admin"), 5.0, 4))
    print(
        f"per-call CAS ceiling: {done / 5.0:.0f} reservations/s (reserve + settle writes, "
        f"4 writers, {conflicts} conflicts in 5 s)"
    )


if __name__ == "__main__":
    main()
