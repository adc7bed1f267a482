"""Benchmark the operator at scale: POST → generator Job, RSS, idle CPU, restart with history.

Contract: specs/CORE-004-generation-runs.md, section "Scale". Prints figures and asserts
nothing; its last line is one JSON object:

    {"runs_per_s": float, "p50_ratio": float, "rss_mib_at": {"0": MiB, "1000": MiB,
     "10000": MiB}, "cpu_idle_pct": float, ...}

One run, on the project's own control plane (and S3), with no node: pods stay Pending,
so a run's generator Job is the end of what is measured, and live runs' Jobs never change.

1. baseline: bare Job creates by C clients (the API server's own cost for the same POST);
2. burst: B builtin GenerationRuns posted by C clients; for each, POST → its generator Job
   seen on a watch; p50/p99, the ratio to the baseline's p50, runs/s to Job;
3. live: more runs up to L live ones, then the operator's CPU over an idle period;
4. restart with L live runs (RSS at L), then with H finished runs added while it is stopped
   (posted and marked Succeeded as an admin), timed until every live run was reconciled,
   and RSS at L + H; the slope is their difference per finished run.

    .venv/bin/python tools/bench_operator.py                   # 10,000 runs (minutes)
    .venv/bin/python tools/bench_operator.py --runs 2000 --live 500 --burst 300   # quicker
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml

from testcluster.harness import TEST_TOKEN_KEY, OperatorProcess
from testcluster.rest import ApiException, Rest
from testcluster.stack import LocalStack

NAMESPACE = "bench"
BASELINE_NAMESPACE = "bench-baseline"
API = f"/apis/smartspec.dev/v1alpha1/namespaces/{NAMESPACE}"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PAGE_SIZE = 4096
HISTORY_PROVENANCE = {
    "uri": "s3://bench/attestations/history.dsse.json",
    "sha256": "sha256:" + "0" * 64,
    "keyId": "sha256:" + "0" * 64,
    "predicateType": "https://slsa.dev/provenance/v1",
}


def say(text: str) -> None:
    print(text, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def in_parallel(clients: int, work: Iterable[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(item) for item in work]:
            future.result()


def run_document(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "GenerationRun",
        "metadata": {"name": name},
        "spec": {
            "specRef": {"name": "todo-api"},
            "generator": {"backend": "builtin"},
            "allowDraft": True,
        },
    }


class JobWatch:
    """Records when each Job of the namespace is first seen (a watch, like a controller)."""

    def __init__(self, rest: Rest, path: str) -> None:
        self.rest, self.path = rest, path
        self.seen: dict[str, float] = {}
        self.stopped = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped:
            try:
                for event in self.rest.watch(self.path, timeoutSeconds=5):
                    name = event["object"]["metadata"]["name"]
                    self.seen.setdefault(name, time.monotonic())
            except (ApiException, OSError):
                time.sleep(0.1)

    def wait_for(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= set(self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        missing = names - set(self.seen)
        if missing:
            raise RuntimeError(f"{len(missing)} Jobs never appeared, e.g. {sorted(missing)[:3]}")


def baseline(rest: Rest, count: int, clients: int) -> float:
    """p50 of a bare (suspended) Job create, in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()

    def create(index: int) -> Callable[[], None]:
        def post() -> None:
            body = {
                "metadata": {"name": f"baseline-{index}"},
                "spec": {
                    "suspend": True,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                        }
                    },
                },
            }
            started = time.monotonic()
            rest.post(f"/apis/batch/v1/namespaces/{BASELINE_NAMESPACE}/jobs", body)
            with lock:
                latencies.append(time.monotonic() - started)

        return post

    in_parallel(clients, (create(i) for i in range(count)))
    return statistics.median(latencies)


def post_runs(rest: Rest, names: list[str], clients: int) -> dict[str, float]:
    posted: dict[str, float] = {}
    lock = threading.Lock()

    def create(name: str) -> Callable[[], None]:
        def post() -> None:
            started = time.monotonic()
            rest.post(f"{API}/generationruns", run_document(name))
            with lock:
                posted[name] = started

        return post

    in_parallel(clients, (create(name) for name in names))
    return posted


def add_finished_runs(rest: Rest, names: list[str], clients: int) -> None:
    """Runs posted and marked Succeeded while the operator is stopped (history)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def create(name: str) -> Callable[[], None]:
        def post() -> None:
            rest.post(f"{API}/generationruns", run_document(name))
            # Signed, as every finished run is (CORE-005): the operator has nothing left to do.
            status = {
                "phase": "Succeeded",
                "startTime": now,
                "completionTime": now,
                "provenance": HISTORY_PROVENANCE,
            }
            rest.patch(f"{API}/generationruns/{name}/status", {"status": status})

        return post

    in_parallel(clients, (create(name) for name in names))


def reconciles(operator: OperatorProcess) -> float:
    return sum(
        operator.metric("smartspec_reconciles_total", kind="GenerationRun", outcome=outcome)
        for outcome in ("ok", "retry", "error", "invalid")
    )


def idle_cpu_pct(operator: OperatorProcess, seconds: float) -> float:
    before = cpu_seconds(operator.pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(operator.pid) - before) / seconds


def settle(operator: OperatorProcess, quiet_seconds: float = 3.0, timeout: float = 600) -> None:
    """Until the operator's reconcile count stops moving for `quiet_seconds` and it used
    under 2 % of a core meanwhile: events it filters out cost CPU but count no reconcile."""
    deadline = time.monotonic() + timeout
    last, since, cpu = reconciles(operator), time.monotonic(), cpu_seconds(operator.pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = reconciles(operator)
        if now != last:
            last, since, cpu = now, time.monotonic(), cpu_seconds(operator.pid)
        elif time.monotonic() - since >= quiet_seconds:
            used = cpu_seconds(operator.pid) - cpu
            if used < 0.02 * (time.monotonic() - since):
                return
            since, cpu = time.monotonic(), cpu_seconds(operator.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="GenerationRuns in all")
    parser.add_argument("--live", type=int, default=1_000, help="of which live (not finished)")
    parser.add_argument("--burst", type=int, default=500, help="runs posted at once")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline-jobs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30)
    args = parser.parse_args()
    if not args.burst <= args.live <= args.runs:
        parser.error("--burst <= --live <= --runs")

    work = Path(tempfile.mkdtemp(prefix="smartspec-bench-operator-"))
    result: dict[str, Any] = {}
    with LocalStack(work) as stack:
        if stack.cluster is None or stack.s3 is None:
            raise RuntimeError("the local stack did not start")
        cluster, admin = stack.cluster, stack.admin
        stack.tenant(NAMESPACE)
        stack.tenant(BASELINE_NAMESPACE)
        keys = work / "token-keys"
        keys.write_bytes(TEST_TOKEN_KEY + b"\n")

        def start_operator(label: str) -> OperatorProcess:
            operator = OperatorProcess(
                cluster,
                stack.s3,  # type: ignore[arg-type]
                [NAMESPACE],
                work / f"operator-{label}.log",
                {"SMARTSPEC_TOKEN_KEYS_FILE": str(keys), "SMARTSPEC_LOG_LEVEL": "WARNING"},
            )
            operator.start()
            return operator

        operator = start_operator("first")
        spec = yaml.safe_load((REPO / "examples" / "todo-service" / "spec.yaml").read_text())
        cluster.rest("builder").post(f"{API}/specs", spec)
        while (admin.get(f"{API}/specs/todo-api").get("status") or {}).get("snapshotUri") is None:
            time.sleep(0.2)
        settle(operator)
        rss_at: dict[str, float] = {"0": round(rss_mib(operator.pid), 1)}
        idle0 = idle_cpu_pct(operator, 5)
        say(f"operator idle, no runs: RSS {rss_at['0']} MiB, CPU {idle0:.1f}% of a core")

        base_p50 = baseline(admin, args.baseline_jobs, args.clients)
        say(f"baseline: bare Job create p50 {base_p50 * 1000:.1f} ms ({args.baseline_jobs} Jobs)")

        watch = JobWatch(admin, JOBS)
        names = [f"burst-{i:05d}" for i in range(args.burst)]
        cpu_before, reconciles_before = cpu_seconds(operator.pid), reconciles(operator)
        posted = post_runs(cluster.rest("builder"), names, args.clients)
        jobs = {f"{name}-gen-1": name for name in names}
        watch.wait_for(set(jobs), timeout=900)
        latencies = [watch.seen[job] - posted[name] for job, name in jobs.items()]
        span = max(watch.seen[job] for job in jobs) - min(posted.values())
        settle(operator)
        burst_cpu = cpu_seconds(operator.pid) - cpu_before
        burst_reconciles = reconciles(operator) - reconciles_before
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        result["runs_per_s"] = round(args.burst / span, 1)
        result["p50_ratio"] = round(p50 / base_p50, 1)
        say(
            f"burst of {args.burst}: POST -> generator Job p50 {p50 * 1000:.0f} ms, p99 "
            f"{p99 * 1000:.0f} ms ({result['p50_ratio']}x the bare create); "
            f"{result['runs_per_s']} runs/s; {burst_reconciles:.0f} reconciles, "
            f"{1000 * burst_cpu / max(1.0, burst_reconciles):.1f} ms CPU each"
        )

        more = [f"live-{i:05d}" for i in range(args.live - args.burst)]
        post_runs(cluster.rest("builder"), more, args.clients)
        watch.wait_for({f"{name}-gen-1" for name in more}, timeout=900)
        watch.stopped = True
        settle(operator)
        result["cpu_idle_pct"] = round(idle_cpu_pct(operator, args.idle_seconds), 2)
        rss_live = round(rss_mib(operator.pid), 1)
        say(
            f"{args.live} live runs whose Jobs do not change: operator CPU "
            f"{result['cpu_idle_pct']}% of a core over {args.idle_seconds:.0f} s; RSS "
            f"{rss_live} MiB (after serving them)"
        )

        operator.stop()
        operator = start_operator("live")
        started = time.monotonic()
        settle(operator)
        rss_at[str(args.live)] = round(rss_mib(operator.pid), 1)
        say(
            f"restart with {args.live} live runs: settled in {time.monotonic() - started:.1f} s, "
            f"RSS {rss_at[str(args.live)]} MiB"
        )

        operator.stop()
        finished = [f"done-{i:05d}" for i in range(args.runs - args.live)]
        loaded = time.monotonic()
        add_finished_runs(admin, finished, args.clients)
        say(f"{len(finished)} finished runs added in {time.monotonic() - loaded:.0f} s")
        operator = start_operator("all")
        started = time.monotonic()
        settle(operator, quiet_seconds=5)
        resumed = time.monotonic() - started
        rss_at[str(args.runs)] = round(rss_mib(operator.pid), 1)
        slope_kib = 1024 * (rss_at[str(args.runs)] - rss_at[str(args.live)]) / max(1, len(finished))
        idle_all = idle_cpu_pct(operator, min(10.0, args.idle_seconds))
        say(
            f"restart with {args.runs} runs ({len(finished)} finished): resumed in {resumed:.1f} s,"
            f" RSS {rss_at[str(args.runs)]} MiB, {slope_kib:.2f} KiB per finished run; idle CPU "
            f"{idle_all:.1f}%"
        )
        result.update(
            rss_mib_at=rss_at,
            resume_seconds=round(resumed, 1),
            rss_kib_per_finished_run=round(slope_kib, 2),
            p50_ms=round(p50 * 1000, 1),
            p99_ms=round(p99 * 1000, 1),
            baseline_p50_ms=round(base_p50 * 1000, 2),
        )
        operator.stop()
    print(json.dumps(result), flush=True)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # As Ctrl-C does: unwind, so the stack's processes are stopped on the way out.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    raise SystemExit(main())
