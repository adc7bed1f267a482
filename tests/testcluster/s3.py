"""A real S3-compatible HTTP endpoint for tests: moto's server mode on a loopback port.

moto runs as a *subprocess* (``python -m moto.server``), not as an in-process thread:
its backends are process-global, so an in-process server would share (and have reset)
state with any ``moto.mock_aws`` unit test in the same pytest session. A subprocess is
also reachable from the processes the local node runs. Credentials are dummies; moto
accepts any. See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import boto3

from .controlplane import free_port

__all__ = ["S3Endpoint", "S3Server"]

ACCESS_KEY = "smartspec-test-access-key"
SECRET_KEY = "smartspec-test-secret-key"  # noqa: S105 - dummy value for moto
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how to reach the test S3 service, and the session's bucket."""

    endpoint_url: str
    bucket: str
    access_key_id: str = ACCESS_KEY
    secret_access_key: str = SECRET_KEY
    region: str = REGION

    def env(self) -> dict[str, str]:
        """Standard AWS SDK environment variables (for subprocesses / Pod env)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


class S3Server:
    """``python -m moto.server`` on 127.0.0.1:<free port>; ``start()`` waits until it answers."""

    def __init__(self, log_path: Path, startup_timeout: float = 30.0) -> None:
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self._proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            try:
                # moto's own dashboard endpoint: answers once the WSGI app is up.
                url = f"{self.endpoint_url}/moto-api/data.json"
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - http literal
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"moto server not ready after {self.startup_timeout:.0f}s (log: {self.log_path})"
        )

    def create_bucket(self, name: str) -> S3Endpoint:
        """Create ``name`` and return the endpoint description (needs boto3)."""
        endpoint = S3Endpoint(self.endpoint_url, name)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        s3.create_bucket(Bucket=name)
        return endpoint

    @property
    def pid(self) -> int:
        """The moto server's process id (benchmarks read its CPU time)."""
        if self._proc is None:
            raise RuntimeError("the S3 server is not running")
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
