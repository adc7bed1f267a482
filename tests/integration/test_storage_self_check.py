"""The storage self-check (`smartspec storage check`, and at operator start) on real servers.

Contract: specs/CORE-004-generation-runs.md, section "Storage self-check".

SeaweedFS (the test S3 server) passes every check. moto's server is an S3 implementation
that checks no presigned POST policy: here it is the backend the check must catch, and the
operator must refuse to start on (or only warn, with SMARTSPEC_S3_SELF_CHECK=warn).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testcluster.controlplane import free_port
from testcluster.harness import OperatorProcess
from testcluster.plugin import Cluster
from testcluster.s3 import IDENTITIES, S3Credentials, S3Endpoint

pytestmark = pytest.mark.integration

DUMMY = S3Credentials("moto-accepts-any-key", "moto-accepts-any-secret")


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto's S3 server on a loopback port with one bucket; stopped by its PID."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2):  # noqa: S310
                    break
            except (OSError, urllib.error.URLError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        endpoint = S3Endpoint(url, f"moto-{secrets.token_hex(4)}", dict.fromkeys(IDENTITIES, DUMMY))
        endpoint.client("admin").create_bucket(Bucket=endpoint.bucket)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def storage_check(endpoint: S3Endpoint) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **endpoint.env("operator"),
        "SMARTSPEC_S3_BUCKET": endpoint.bucket,
        "SMARTSPEC_S3_ENDPOINT_URL": endpoint.endpoint_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "smartspec", "storage", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_seaweedfs_passes_every_check_with_the_operators_credentials(
    s3: S3Endpoint, s3_client: Any
) -> None:
    result = storage_check(s3)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines[:-1]] == [
        "conditional-writes",
        "dot-segments",
        "upload",
        "upload-prefix",
        "upload-dot-segments",
        "upload-size",
    ]
    assert all(line.startswith("ok") for line in lines[:-1])
    assert lines[-1] == f"s3://{s3.bucket}: storage OK"
    left = s3_client.list_objects_v2(Bucket=s3.bucket, Prefix="_smartspec-check/")
    assert left.get("KeyCount", 0) == 0, "the probes clean up after themselves"


def test_a_backend_that_ignores_post_policies_fails_the_check(moto_server: S3Endpoint) -> None:
    result = storage_check(moto_server)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {line.split()[1].rstrip(":") for line in result.stdout.splitlines() if "FAIL" in line}
    assert {"upload-prefix", "upload-size"} <= failed, result.stdout
    # Counterfactual: the same probes against the real server pass (previous test), and
    # moto does honour conditional writes, which the check reports as such.
    assert "ok   conditional-writes" in result.stdout


def test_the_operator_refuses_to_start_on_such_a_backend_unless_told_to_warn(
    cluster: Cluster,
    moto_server: S3Endpoint,
    operator_rbac: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        **moto_server.env("operator"),
        "KUBECONFIG": str(cluster.kubeconfig("operator")),
        "SMARTSPEC_S3_BUCKET": moto_server.bucket,
        "SMARTSPEC_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "SMARTSPEC_NAMESPACES": f'["{namespace}"]',
        "SMARTSPEC_METRICS_PORT": "0",
        "SMARTSPEC_LIVENESS_PORT": "0",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "smartspec", "operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "storage self-check" in refused.stderr
    assert "upload-prefix" in refused.stderr

    warned = OperatorProcess(
        cluster,
        moto_server,
        [namespace],
        tmp_path / "operator.log",
        {"SMARTSPEC_S3_SELF_CHECK": "warn"},
    )
    warned.start()  # answers /healthz: it runs
    try:
        records = warned.log_records()
        assert any(
            record.get("event", "").startswith("Storage self-check failed")
            and record.get("level") == "warning"
            for record in records
        ), warned.log()[-2000:]
    finally:
        warned.stop()


def test_the_operator_starts_on_the_real_server_after_the_check(
    s3: S3Endpoint, start_operator: Callable[..., OperatorProcess], namespace: str
) -> None:
    operator = start_operator(namespace)
    assert any(
        record.get("event") == "Storage self-check passed" for record in operator.log_records()
    ), operator.log()[-2000:]
