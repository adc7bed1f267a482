"""Helpers for tests that run the real operator: polling, applying deploy/ files, and
`smartspec operator` as a child process. See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from smartspec.provenance.keys import generate_signing_key

from .controlplane import free_port
from .plugin import Cluster
from .rest import ApiException, Rest
from .s3 import S3Endpoint

T = TypeVar("T")
TEST_TOKEN_KEY = b"smartspec-integration-test-key-0123456789abcdef"
"""The run-token HMAC key the test gateways load (tests only)."""
PROVENANCE_KEYS = "provenance-keys.pem"


def provenance_keys(directory: Path) -> Path:
    """The attestation key file of the operators a test starts (CORE-005): one fresh ECDSA
    key per test directory, so an operator restarted in the test signs with the same key."""
    path = directory / PROVENANCE_KEYS
    if not path.exists():
        path.write_text(generate_signing_key())
        path.chmod(0o600)
    return path


def wait_for(
    probe: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll until probe returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def apply_documents(rest: Rest, path: Path) -> list[dict[str, Any]]:
    """Create (or replace) every cluster-scoped document of a deploy/ file."""
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for document in documents:
        group_version = document["apiVersion"]
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        plural = {
            "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings",
            "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
            "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
        }[document["kind"]]
        url = f"{prefix}/{plural}"
        try:
            rest.post(url, document)
        except ApiException as error:
            if error.status != 409:
                raise
            current = rest.get(f"{url}/{document['metadata']['name']}")
            document["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            rest.put(f"{url}/{document['metadata']['name']}", document)
    return documents


def write_gateway_config(
    path: Path,
    stub_url: str,
    *,
    fallback: bool = True,
    transport: str = "litellm",
    backup_transport: str | None = None,
    timeout_seconds: float = 20,
) -> Path:
    """Two priced stub deployments; stub-model falls back to stub-backup. `transport` is
    the stub deployments' (litellm, or openai-compatible: the gateway's own HTTP request);
    `backup_transport`, stub-backup's when it differs."""
    config = {
        "creditsPerUsd": 1_000_000,
        "numRetries": 1,
        "models": [
            {
                "name": "stub-model",
                "litellmModel": "openai/stub-model",
                "apiBase": f"{stub_url}/v1",
                "timeoutSeconds": timeout_seconds,
                "transport": transport,
                "price": {"inputCreditsPerMtok": 150_000, "outputCreditsPerMtok": 600_000},
            },
            {
                "name": "stub-backup",
                "litellmModel": "openai/stub-backup",
                "apiBase": f"{stub_url}/v1",
                "timeoutSeconds": timeout_seconds,
                "transport": backup_transport or transport,
                "price": {"inputCreditsPerMtok": 300_000, "outputCreditsPerMtok": 1_200_000},
            },
            {
                "name": "unpriced-model",
                "litellmModel": "openai/unpriced",
                "apiBase": f"{stub_url}/v1",
            },
            {
                "name": "local-llama",
                "litellmModel": "openai/local-llama",
                "local": True,
                "price": {"inputCreditsPerMtok": 10_000, "outputCreditsPerMtok": 10_000},
            },
        ],
        "fallbacks": {"stub-model": ["stub-backup"]} if fallback else {},
    }
    path.write_text(yaml.safe_dump(config))
    return path


PORT_RETRIES = 2
"""Fresh-port restarts of an operator that lost a port race (EADDRINUSE)."""


class SmartspecProcess:
    """A `smartspec <command>` child process with its log kept, ready when `probe_path` (on
    `probe_port`) answers 200, and its Prometheus metrics readable."""

    command = ""
    probe_path = "/healthz"
    host = "127.0.0.1"
    """Where its probe and metrics ports answer."""

    def __init__(self, log_path: Path, env: dict[str, str], probe_port: int, metrics_port: int):
        self.log_path = log_path
        self.env = env
        self.probe_port = probe_port
        self.metrics_port = metrics_port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "smartspec", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._is_ready, f"smartspec {self.command} to answer {self.probe_path}", 90)

    @property
    def pid(self) -> int:
        """The running process's id (benchmarks read its CPU time)."""
        if self._process is None:
            raise RuntimeError(f"smartspec {self.command} is not running")
        return self._process.pid

    def _is_ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            pytest.fail(
                f"smartspec {self.command} exited with {self._process.returncode}:\n{self.log()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.probe_port}{self.probe_path}", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop (SIGTERM: graceful; SIGKILL: a crash); returns the exit code."""
        assert self._process is not None
        self._process.send_signal(sig)
        try:
            return self._process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the process's /metrics (0 when absent)."""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        target = f"{name}{{{wanted}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(target + " "):
                return float(line.split()[-1])
        return 0.0


class OperatorProcess(SmartspecProcess):
    """`smartspec operator` watching the given namespaces, with exactly the operator's RBAC."""

    command = "operator"

    def __init__(
        self,
        cluster: Cluster,
        s3: S3Endpoint,
        namespaces: list[str],
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        metrics_port, liveness_port = free_port(), free_port()
        env = {
            **os.environ,
            **s3.env("operator"),
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig("operator")),
            "SMARTSPEC_NAMESPACES": json.dumps(namespaces),
            "SMARTSPEC_S3_BUCKET": s3.bucket,
            "SMARTSPEC_S3_ENDPOINT_URL": s3.endpoint_url,
            "SMARTSPEC_S3_REGION": s3.region,
            "SMARTSPEC_METRICS_PORT": str(metrics_port),
            "SMARTSPEC_LIVENESS_PORT": str(liveness_port),
            "SMARTSPEC_DEPENDENCY_RECHECK_SECONDS": "5",
            "SMARTSPEC_LOG_LEVEL": "DEBUG",
            "SMARTSPEC_PROVENANCE_KEYS_FILE": str(provenance_keys(log_path.parent)),
            "SMARTSPEC_RETENTION_S3_CREDENTIALS_FILE": str(
                s3.credentials_file("retention", log_path.with_suffix(".retention-s3"))
            ),
            **(extra_env or {}),
        }
        super().__init__(log_path, env, probe_port=liveness_port, metrics_port=metrics_port)

    def start(self) -> None:
        """Start; when another process took a port between its choice and the bind, start
        again on fresh ports (nothing outside the operator knows them)."""
        for _ in range(PORT_RETRIES):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                super().start()
                return
            except pytest.fail.Exception:
                if "address already in use" not in self.log()[logged:]:
                    raise
            self.probe_port, self.metrics_port = free_port(), free_port()
            self.env["SMARTSPEC_LIVENESS_PORT"] = str(self.probe_port)
            self.env["SMARTSPEC_METRICS_PORT"] = str(self.metrics_port)
        super().start()


class GatewayProcess(SmartspecProcess):
    """`smartspec gateway` on a free loopback port, with exactly the gateway's RBAC."""

    command = "gateway"
    probe_path = "/readyz"

    def __init__(
        self,
        cluster: Cluster,
        s3: S3Endpoint,
        *,
        config_path: Path,
        keys_path: Path,
        log_path: Path,
        replica: str,
        extra_env: dict[str, str] | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        # The real node's bridge address where there is one: sandbox pods call the gateway.
        self.host = cluster.host_address
        self.port = free_port(self.host)
        env = {
            **os.environ,
            **s3.env("gateway"),
            "KUBECONFIG": str(kubeconfig or cluster.kubeconfig("gateway")),
            "SMARTSPEC_GATEWAY_CONFIG": str(config_path),
            "SMARTSPEC_GATEWAY_TOKEN_KEYS_FILE": str(keys_path),
            "SMARTSPEC_GATEWAY_HOST": self.host,
            "SMARTSPEC_GATEWAY_PORT": str(self.port),
            "SMARTSPEC_GATEWAY_REPLICA": replica,
            "SMARTSPEC_S3_BUCKET": s3.bucket,
            "SMARTSPEC_S3_ENDPOINT_URL": s3.endpoint_url,
            "SMARTSPEC_S3_REGION": s3.region,
            "SMARTSPEC_GATEWAY_FLUSH_MILLISECONDS": "100",
            "SMARTSPEC_GATEWAY_IDLE_RELEASE_SECONDS": "1",
            "SMARTSPEC_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        super().__init__(log_path, env, probe_port=self.port, metrics_port=self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
