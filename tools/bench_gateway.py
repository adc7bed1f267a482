"""Benchmark: what the gateway adds to a model call, and how fast budgets take reservations.

    .venv/bin/python tools/bench_gateway.py [--calls 400] [--stub-latencies-ms 0,1000]

Starts the real test control plane, S3 (SeaweedFS), a local OpenAI-compatible stub model
server (in this process) and one `smartspec gateway` process, then measures in the same run,
for each stub answer delay and at 1, 16 and 64 concurrent calls:

1. base: client -> litellm -> stub (litellm called in-process, as an app without a gateway
   would); gw: client -> gateway -> stub (a plain HTTP client, as the OpenAI SDK in a sandbox
   is; the gateway authenticates, budgets, calls litellm's Router, records the ledger and the
   transcript); direct: the same through a route with transport openai-compatible (the
   Router still picks, retries and falls back; each attempt is the gateway's own HTTP
   request instead of litellm.acompletion);
   hop: client -> a pass-through proxy -> stub (one HTTP hop that does nothing else: the
   floor any gateway process starts from). p50, p99 and the overheads against base;
2. CPU time per call of every process involved, at 64 concurrent on the first delay, read
   from /proc: with a stub that answers at once, 64 concurrent calls keep every core busy, so
   latency there is set by CPU per call (Little's law), not by the gateway's own wait;
3. reservations per second: calls through the gateway at 64 concurrent (each reserves and
   settles against the budget), next to a per-call compare-and-swap design's ceiling
   (4 writers doing reserve + settle CAS writes directly on one CreditBudget);
4. streams: time to the first event (TTFB) and to the end of the same streamed answer,
   straight from the stub (which waits --chunk-delay-ms before each chunk) and through the
   gateway on both routes, as chat completions and as Anthropic Messages, at 1 and 16
   concurrent; p50, p99 and the gateway's overhead. `--streams-only` measures only this.

Figures print; nothing is asserted (see specs/CORE-003-gateway-and-budgets.md). Everything
shares this machine's cores: the client, the stub, the gateway, the S3 server and the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp
import litellm
import yaml
from aiohttp import web

from smartspec.kube.client import ConflictError, KubeClient, load_configuration
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from testcluster.controlplane import free_port
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


async def measure_gateway(
    url: str, token: str, concurrency: int, calls: int, model: str = "stub-model"
) -> list[float]:
    """Gateway path: a plain HTTP client, as a sandboxed generator's OpenAI SDK would be.

    aiohttp, not httpx: httpx's connection pool costs several ms of CPU per request at 64
    connections (encode/httpx#3215); measured here against the pass-through proxy it was
    7.3 ms of client CPU per call against aiohttp's 0.2, and it set the p99 itself.
    """
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(index: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"benchmark call {index}"}],
                "max_tokens": 32,
            }
            async with semaphore:
                started = time.perf_counter()
                async with client.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
            response.raise_for_status()

        await asyncio.gather(*(one(index) for index in range(calls)))
    return latencies


async def measure_streams(
    url: str,
    token: str,
    concurrency: int,
    calls: int,
    model: str = "stub-model",
    *,
    api: str = "chat",
) -> tuple[list[float], list[float]]:
    """Streamed calls (usage asked for): seconds to the first event and to the end of each.
    `api` "messages" asks the same through Anthropic's Messages endpoint."""
    semaphore = asyncio.Semaphore(concurrency)
    first: list[float] = []
    total: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {token}"}
    path = "/v1/messages" if api == "messages" else "/v1/chat/completions"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(index: int) -> None:
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": f"benchmark stream {index}"}],
                "max_tokens": 32,
                "stream": True,
            }
            if api == "chat":
                body["stream_options"] = {"include_usage": True}
            async with semaphore:
                started = time.perf_counter()
                async with client.post(f"{url}{path}", json=body, headers=headers) as response:
                    response.raise_for_status()
                    ttfb = None
                    async for line in response.content:
                        if ttfb is None and line.startswith((b"data:", b"event:")):
                            ttfb = time.perf_counter() - started
                total.append(time.perf_counter() - started)
                first.append(ttfb if ttfb is not None else total[-1])

        await asyncio.gather(*(one(index) for index in range(calls)))
    return first, total


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
    parser.add_argument(
        "--stub-latencies-ms",
        default="0,1000",
        help="stub answer delays to measure at, comma-separated (default 0,1000)",
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=int,
        default=10,
        help="the stub's wait before each streamed chunk (default 10)",
    )
    parser.add_argument("--stream-calls", type=int, default=200, help="streams per point")
    parser.add_argument(
        "--streams-only", action="store_true", help="measure only time to first byte"
    )
    parser.add_argument("--passthrough-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.passthrough_port:
        serve_passthrough(arguments.passthrough_port, arguments.upstream)
        return
    litellm.suppress_debug_info = True
    latencies_ms = [int(value) for value in arguments.stub_latencies_ms.split(",")]

    work = Path(tempfile.mkdtemp(prefix="smartspec-bench-"))
    with LocalStack(work, bucket="smartspec-bench") as stack:
        stub_port = free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        gateway, token = start_gateway(stack, stub_url, work)
        bench = Bench(gateway, token, stub_port, stub_url, work)
        if not arguments.streams_only:
            run_benchmarks(stack, bench, arguments.calls, latencies_ms)
        run_stream_benchmarks(stack, bench, arguments.stream_calls, arguments.chunk_delay_ms)


def serve_passthrough(port: int, upstream: str) -> None:
    """The floor: an HTTP hop that forwards the body and the answer and does nothing else."""

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer unused"}
        async with request.app["session"].post(upstream, data=body, headers=headers) as reply:
            answer = await reply.read()
            return web.Response(body=answer, status=reply.status, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_post("/v1/chat/completions", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Helper:
    """A helper server in its own process (as a model server and a proxy would be)."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(  # noqa: S603 - our own scripts
            [sys.executable, *argv], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not start on port {port}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_stub(port: int, latency_ms: int, chunk_delay_ms: int = 0) -> Helper:
    """The OpenAI-compatible stub model server (canned answers) with this answer delay."""
    script = str(REPO / "tests" / "stubs" / "openai_stub.py")
    delays = ["--latency-ms", str(latency_ms), "--chunk-delay-ms", str(chunk_delay_ms)]
    return Helper([script, "--port", str(port), *delays], port)


def start_passthrough(upstream: str) -> Helper:
    port = free_port()
    return Helper([__file__, "--passthrough-port", str(port), "--upstream", upstream], port)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    """One path measured at one concurrency: latencies and CPU per call of each process."""

    latencies: list[float]
    cpu_ms_per_call: dict[str, float]
    calls_per_second: float

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


def measured(
    calls_made: Coroutine[Any, Any, list[float]], processes: dict[str, int], calls: int
) -> Point:
    """Run the calls, and read each process's CPU time before and after."""
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.perf_counter()
    latencies = asyncio.run(calls_made)
    elapsed = time.perf_counter() - started
    return Point(
        latencies,
        {name: (cpu_seconds(pid) - before[name]) * 1000 / calls for name, pid in processes.items()},
        calls / elapsed,
    )


@dataclass(frozen=True)
class Bench:
    """The gateway under measurement, its token, and where its stub model listens."""

    gateway: GatewayProcess
    token: str
    stub_port: int
    stub_url: str
    work: Path


def start_gateway(stack: LocalStack, stub_url: str, work: Path) -> tuple[GatewayProcess, str]:
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
        "apiBase": f"{stub_url}/v1",
        "price": {"inputCreditsPerMtok": 150_000, "outputCreditsPerMtok": 600_000},
    }
    # The same stub model twice: through litellm's OpenAI provider, and through the
    # gateway's own request (transport openai-compatible); both under the Router.
    direct = {**route, "name": "stub-direct", "transport": "openai-compatible"}
    config.write_text(yaml.safe_dump({"numRetries": 0, "models": [route, direct]}))
    keys = work / "keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    return another_gateway(stack, work, "bench-gw"), token


def another_gateway(stack: LocalStack, work: Path, replica: str) -> GatewayProcess:
    """One more gateway replica on the configuration start_gateway wrote."""
    if stack.cluster is None or stack.s3 is None:
        raise RuntimeError("the local stack did not start")
    gateway: GatewayProcess = stack.own(
        GatewayProcess(
            stack.cluster,
            stack.s3,
            config_path=work / "gateway.yaml",
            keys_path=work / "keys",
            log_path=work / f"{replica}.log",
            replica=replica,
            extra_env={"SMARTSPEC_GATEWAY_FLUSH_MILLISECONDS": "250"},
        )
    )
    gateway.start()
    return gateway


def run_benchmarks(stack: LocalStack, bench: Bench, calls: int, latencies_ms: list[int]) -> None:
    if stack.plane is None or stack.s3_server is None:
        raise RuntimeError("the local stack did not start")
    gateway, token, work = bench.gateway, bench.token, bench.work
    stub_port, stub_url = bench.stub_port, bench.stub_url
    passthrough = stack.own(start_passthrough(f"{stub_url}/v1/chat/completions"))
    pids = stack.plane.pids()
    client = {"client": os.getpid()}
    behind = {
        "s3": stack.s3_server.pid,
        "apiserver": pids["kube-apiserver"],
        "etcd": pids["etcd"],
    }
    print(
        f"machine: {os.cpu_count()} cores; {calls} calls per point. Paths: base = litellm "
        "in-process -> stub; gw = plain HTTP client -> gateway -> stub; hop = plain HTTP "
        "client -> pass-through proxy (no auth, budget, litellm or storage) -> stub"
    )
    print(
        "gw = the route through litellm's OpenAI provider; direct = the same model on a route "
        "with transport openai-compatible (the Router's choice, the gateway's own request)"
    )
    print(
        f"{'stub':>5} {'conc':>4} {'base p50':>9} {'base p99':>9} {'gw p50':>8} {'gw p99':>8} "
        f"{'+p50':>8} {'+p99':>8} {'direct p50':>10} {'direct p99':>10} {'+p50':>8} "
        f"{'+p99':>8} {'hop +p50':>9} {'hop +p99':>9}  (ms)"
    )
    cpu_rows: list[tuple[str, Point]] = []
    for latency_ms in latencies_ms:
        stub = stack.own(start_stub(stub_port, latency_ms))
        model = {"stub": stub.process.pid}
        # With a slow stub, one call at a time only adds waiting: what the gateway adds per
        # call shows in the no-delay row.
        for concurrency in (1, 16, 64) if latency_ms == 0 else (16, 64):
            base_url = f"{stub_url}/v1"
            asyncio.run(measure(base_url, "x", concurrency, 30))  # warm-up
            asyncio.run(measure_gateway(gateway.url, token, concurrency, 30))
            asyncio.run(measure_gateway(passthrough.url, token, concurrency, 30))
            asyncio.run(measure_gateway(gateway.url, token, concurrency, 30, "stub-direct"))
            base = measured(measure(base_url, "x", concurrency, calls), {**client, **model}, calls)
            through = measured(
                measure_gateway(gateway.url, token, concurrency, calls),
                {**client, "gateway": gateway.pid, **model, **behind},
                calls,
            )
            direct = measured(
                measure_gateway(gateway.url, token, concurrency, calls, "stub-direct"),
                {**client, "gateway": gateway.pid, **model, **behind},
                calls,
            )
            hop = measured(
                measure_gateway(passthrough.url, token, concurrency, calls),
                {**client, "proxy": passthrough.process.pid, **model},
                calls,
            )
            print(
                f"{latency_ms:>5} {concurrency:>4} {ms(base.p50):>9} {ms(base.p99):>9} "
                f"{ms(through.p50):>8} {ms(through.p99):>8} {ms(through.p50 - base.p50):>8} "
                f"{ms(through.p99 - base.p99):>8} {ms(direct.p50):>10} {ms(direct.p99):>10} "
                f"{ms(direct.p50 - base.p50):>8} {ms(direct.p99 - base.p99):>8} "
                f"{ms(hop.p50 - base.p50):>9} {ms(hop.p99 - base.p99):>9}"
            )
            if latency_ms == latencies_ms[0] and concurrency == 64:
                cpu_rows = [("base", base), ("gw", through), ("direct", direct), ("hop", hop)]
        stub.stop()

    print(f"CPU per call at 64 concurrent, stub latency {latencies_ms[0]} ms (ms of CPU time):")
    for name, point in cpu_rows:
        parts = ", ".join(
            f"{process} {value:.2f}" for process, value in point.cpu_ms_per_call.items()
        )
        total = sum(point.cpu_ms_per_call.values())
        print(f"  {name:>6}: {total:5.2f} in all ({parts}); {point.calls_per_second:.0f} calls/s")

    stub = stack.own(start_stub(stub_port, 0))
    # Capacity grows with replicas (each holds its own lease): two gateway processes, each
    # taking half of the 64 concurrent clients, next to one.
    second = another_gateway(stack, work, "bench-gw-2")

    async def split(calls_each: int) -> list[float]:
        halves = await asyncio.gather(
            measure_gateway(gateway.url, token, 32, calls_each),
            measure_gateway(second.url, token, 32, calls_each),
        )
        return halves[0] + halves[1]

    asyncio.run(split(30))
    base = measured(measure(f"{stub_url}/v1", "x", 64, calls), {}, calls)
    one = measured(measure_gateway(gateway.url, token, 64, calls), {}, calls)
    two = measured(split(calls // 2), {}, calls)
    print(
        f"replicas at 64 concurrent, no stub delay: base {base.calls_per_second:.0f} calls/s "
        f"(p50 {ms(base.p50)}, p99 {ms(base.p99)} ms); one gateway "
        f"{one.calls_per_second:.0f} calls/s (p50 {ms(one.p50)}, p99 {ms(one.p99)} ms); two "
        f"gateways {two.calls_per_second:.0f} calls/s (p50 {ms(two.p50)}, p99 {ms(two.p99)} ms)"
    )
    second.stop()

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
        f"{calls * 2} calls; mean in-gateway time outside the upstream call "
        f"{overhead * 1000:.2f} ms (all points, queueing included)"
    )
    done, conflicts = asyncio.run(raw_cas_rate(stack.plane.kubeconfig("admin"), 5.0, 4))
    print(
        f"per-call CAS ceiling: {done / 5.0:.0f} reservations/s (reserve + settle writes, "
        f"4 writers, {conflicts} conflicts in 5 s)"
    )


def run_stream_benchmarks(stack: LocalStack, bench: Bench, calls: int, chunk_delay_ms: int) -> None:
    """Time to the first event and to the end of a stream: stub alone, and via the gateway."""
    gateway, token, stub_url = bench.gateway, bench.token, bench.stub_url
    stub = stack.own(start_stub(bench.stub_port, 0, chunk_delay_ms))
    print(
        f"streams: {calls} per point; the stub waits {chunk_delay_ms} ms before each of its "
        "chunks (some 15 for this answer); TTFB = time to the first event; gw = litellm's OpenAI "
        "provider, direct = transport openai-compatible; msg-gw and msg-dir: the same routes "
        "through Anthropic's Messages endpoint; overhead against the stub alone"
    )
    print(
        f"{'conc':>4} {'path':>6} {'ttfb p50':>9} {'ttfb p99':>9} {'total p50':>10} "
        f"{'total p99':>10} {'+ttfb p50':>10} {'+ttfb p99':>10} {'+total p50':>11} "
        f"{'+total p99':>11}  (ms)"
    )
    for concurrency in (1, 16):
        paths = {
            "stub": (stub_url, "stub-model", "chat"),
            "direct": (gateway.url, "stub-direct", "chat"),
            "msg-dir": (gateway.url, "stub-direct", "messages"),
            "gw": (gateway.url, "stub-model", "chat"),
            "msg-gw": (gateway.url, "stub-model", "messages"),
        }
        for url, model, api in paths.values():
            asyncio.run(measure_streams(url, token, concurrency, 20, model, api=api))  # warm-up
        results = {
            name: asyncio.run(measure_streams(url, token, concurrency, calls, model, api=api))
            for name, (url, model, api) in paths.items()
        }
        base_first, base_total = results["stub"]
        for name, (first, total) in results.items():
            print(
                f"{concurrency:>4} {name:>6} {ms(statistics.median(first)):>9} "
                f"{ms(percentile(first, 0.99)):>9} {ms(statistics.median(total)):>10} "
                f"{ms(percentile(total, 0.99)):>10} "
                f"{ms(statistics.median(first) - statistics.median(base_first)):>10} "
                f"{ms(percentile(first, 0.99) - percentile(base_first, 0.99)):>10} "
                f"{ms(statistics.median(total) - statistics.median(base_total)):>11} "
                f"{ms(percentile(total, 0.99) - percentile(base_total, 0.99)):>11}"
            )
    stub.stop()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


if __name__ == "__main__":
    main()
