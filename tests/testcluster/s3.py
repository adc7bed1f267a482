"""A real S3 server for tests and the demo: SeaweedFS's ``weed mini`` on loopback ports.

The binary is built from its Go module by ``tools/build-seaweedfs.sh`` (cached by version).
SeaweedFS checks SigV4 signatures, presigned GETs and POST policies, honours conditional
writes and refuses keys containing ``..``: the boundaries the sandboxes rely on are enforced
by a real server, not assumed.

Besides S3, ``weed mini`` opens master, volume, filer and admin ports that take no S3
credentials. Unlocked, any local process could read and write every bucket through them
(the filer's HTTP port), delete a bucket's data (the master's ``/col/delete``) or rewrite
metadata (gRPC). So every listener binds 127.0.0.1 on a free port, master and filer HTTP are
off (``-disableHttp``), the volume servers require fresh JWT signing keys, every gRPC port
(and its Unix socket) requires a client certificate from a per-server CA
(:mod:`testcluster.s3_pki`), and the admin server a random password.

Identities (static S3 config, fresh keys per server): ``admin`` (everything: the tests'
own reads and writes), ``operator`` and ``gateway``, scoped to the session's bucket and
to the key prefixes each one writes (``specs``/``runs`` and ``ledger``/``transcripts``; the
operator also reads ``ledger`` and lists and reads ``transcripts`` for provenance), as
the chart's ``s3`` values document, and ``auditor``, who may only read the bucket. See
specs/TEST-001-control-plane.md, "S3".
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

from .controlplane import free_port
from .s3_pki import write_grpc_pki

__all__ = ["IDENTITIES", "S3Credentials", "S3Endpoint", "S3Server", "resolve_weed"]

REGION = "us-east-1"
BUILD_SCRIPT = "tools/build-seaweedfs.sh"
IDENTITIES = ("admin", "operator", "retention", "gateway", "auditor")
# The ports `weed mini` opens: each service's HTTP and gRPC port, and the admin server's.
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
# Sockets weed mini always creates under /tmp, named by gRPC port: removed on stop.
_GRPC_SOCKETS = {
    "master.port.grpc": "master",
    "volume.port.grpc": "volume",
    "filer.port.grpc": "filer",
    "s3.port.grpc": "s3",
    "admin.port.grpc": "admin",
}


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str

    @classmethod
    def fresh(cls, name: str) -> S3Credentials:
        return cls(f"{name}-{secrets.token_hex(6)}", secrets.token_urlsafe(30))


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server is, the session's bucket, and one key pair per identity."""

    endpoint_url: str
    bucket: str
    credentials: dict[str, S3Credentials]
    region: str = REGION

    @property
    def access_key_id(self) -> str:
        """The admin's key id (tests that read and write anything use the admin)."""
        return self.credentials["admin"].access_key_id

    @property
    def secret_access_key(self) -> str:
        return self.credentials["admin"].secret_access_key

    def env(self, identity: str = "admin") -> dict[str, str]:
        """Standard AWS SDK environment variables of one identity (subprocesses, Pod env)."""
        credentials = self.credentials[identity]
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def credentials_file(self, identity: str, path: Path) -> Path:
        """An AWS shared credentials file whose [default] profile is `identity`."""
        path.write_text(self.credentials_text(identity))
        path.chmod(0o600)
        return path

    def credentials_text(self, identity: str) -> str:
        """The text of that file."""
        credentials = self.credentials[identity]
        return (
            "[default]\n"
            f"aws_access_key_id = {credentials.access_key_id}\n"
            f"aws_secret_access_key = {credentials.secret_access_key}\n"
        )

    def client(self, identity: str = "admin", *, retries: int = 3) -> Any:
        """A boto3 S3 client signing as `identity`, with SigV4 as S3ObjectStore signs."""
        credentials = self.credentials[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=Config(signature_version="s3v4", retries={"max_attempts": retries}),
        )


def identity_actions(bucket: str) -> dict[str, list[str]]:
    """What each identity may do: the operator and the gateway only under their prefixes.

    Keys start with the tenant's namespace (`<ns>/specs/…`, `<ns>/runs/…`, `<ns>/ledger/…`,
    `<ns>/transcripts/…`). A presigned POST acts with its signer's rights, so the
    operator's Write on `runs` is what the sandboxes' uploads narrow further.
    """
    return {
        "admin": ["Admin", "Read", "List", "Tagging", "Write"],
        "operator": [
            f"{verb}:{bucket}/*/{area}/*"
            for verb in ("Read", "Write")
            for area in ("specs", "runs")
        ]
        # Provenance (CORE-005): the operator reads the ledger and finds a run's transcripts.
        + [f"Read:{bucket}/*/{area}/*" for area in ("ledger", "transcripts")]
        + [f"List:{bucket}/*/transcripts/*"],
        "gateway": [
            f"{verb}:{bucket}/*/{area}/*"
            for verb in ("Read", "Write")
            for area in ("ledger", "transcripts")
        ],
        # The operator's second identity, for retention (CORE-001): it lists the bucket and
        # deletes runs' files and transcripts. SeaweedFS grants DeleteObject with Write;
        # on AWS it would hold s3:DeleteObject alone. Its key signs no upload policy.
        "retention": [f"List:{bucket}", f"List:{bucket}/*"]
        + [
            f"{verb}:{bucket}/*/{area}/*"
            for verb in ("Read", "Write")
            for area in ("runs", "transcripts")
        ],
        # An auditor verifying attestations (CORE-005): reads the bucket, writes nothing.
        "auditor": [f"Read:{bucket}/*"],
    }


def resolve_weed(repo_root: Path, environ: dict[str, str] | None = None) -> Path:
    """The `weed` binary: `$SEAWEEDFS_BIN`, else built (or found cached) by the build script."""
    env = dict(os.environ if environ is None else environ)
    if env.get("SEAWEEDFS_BIN"):
        return Path(env["SEAWEEDFS_BIN"])
    # stderr (progress of a cold build) streams through; stdout's last line names the binary.
    result = subprocess.run(
        ["bash", str(repo_root / BUILD_SCRIPT), "-q"],
        cwd=repo_root,
        env=env,
        stdout=subprocess.PIPE,
        check=False,
    )
    lines = result.stdout.decode().strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("export SEAWEEDFS_BIN="):
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(lines[-1].split("=", 1)[1])


@dataclass
class S3Server:
    """`weed mini` for one bucket; ``start()`` returns once an object can be written."""

    weed: Path
    run_dir: Path
    bucket: str
    host: str = "127.0.0.1"
    """Where every listener binds: loopback, or the real node's bridge address (pods reach
    S3 there: the presigned URLs the operator hands sandboxes name this host)."""
    startup_timeout: float = 60.0
    ports: dict[str, int] = field(default_factory=dict)
    credentials: dict[str, S3Credentials] = field(default_factory=dict)
    startup_seconds: float = 0.0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(self.endpoint_url, self.bucket, dict(self.credentials))

    @property
    def log_path(self) -> Path:
        return self.run_dir / "weed.log"

    def start(self) -> S3Endpoint:
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port(self.host) for name in _PORTS}
        self.credentials = {name: S3Credentials.fresh(name) for name in IDENTITIES}
        config = self.run_dir / "s3.json"
        config.write_text(json.dumps(self._s3_config()))
        config.chmod(0o600)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(config),
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
            )
        try:
            self._wait_until_writable()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self.endpoint

    def _command(self, config: Path) -> list[str]:
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            str(self.weed),
            "mini",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={self.run_dir / 'data'}",
            *flags,
            f"-s3.config={config}",
            f"-filer.localSocket={self.run_dir / 'filer.sock'}",
            f"-s3.localSocket={self.run_dir / 's3.sock'}",
            # Nothing beyond S3 and what it needs; no calls home (there is no internet here).
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-admin.port.legacy=0",
            f"-admin.password={secrets.token_urlsafe(24)}",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            "-disableHttp",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",  # nothing to drain: stop in 0.5 s, not 1.5 s
        ]

    def _env(self) -> dict[str, str]:
        """Fresh JWT keys and gRPC mTLS material, as security.toml's WEED_* variables.

        HOME points into the run dir, so no ~/.seaweedfs/security.toml is read either.
        """
        keys = {
            f"WEED_JWT_{name}_KEY": secrets.token_urlsafe(32)
            for name in ("SIGNING", "SIGNING_READ", "FILER_SIGNING", "FILER_SIGNING_READ")
        }
        path = os.environ.get("PATH", "/usr/bin:/bin")
        tls = write_grpc_pki(self.run_dir / "pki")
        return {"PATH": path, "HOME": str(self.run_dir), **keys, **tls}

    def _s3_config(self) -> dict[str, Any]:
        actions = identity_actions(self.bucket)
        return {
            "identities": [
                {
                    "name": name,
                    "credentials": [
                        {"accessKey": cred.access_key_id, "secretKey": cred.secret_access_key}
                    ],
                    "actions": actions[name],
                }
                for name, cred in self.credentials.items()
            ]
        }

    def _wait_until_writable(self) -> None:
        """Health first, then the bucket, then one object: volumes come up after the API."""
        deadline = time.monotonic() + self.startup_timeout
        while not self._healthy():
            self._check_deadline(deadline, "answer /healthz")
        admin = self.endpoint.client("admin", retries=1)
        while True:
            try:
                admin.create_bucket(Bucket=self.bucket)
                break
            except admin.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception as error:
                self._check_deadline(deadline, f"create bucket {self.bucket} ({error})")
        while True:
            try:
                admin.put_object(Bucket=self.bucket, Key="_ready", Body=b"ready")
                admin.delete_object(Bucket=self.bucket, Key="_ready")
                return
            except Exception as error:
                self._check_deadline(deadline, f"store an object ({error})")

    def _healthy(self) -> bool:
        try:
            url = f"{self.endpoint_url}/healthz"
            with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - http literal
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _check_deadline(self, deadline: float, what: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {self._proc.returncode}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"weed mini did not {what} within {self.startup_timeout:.0f} s "
                f"(log: {self.log_path}):\n{self.log_tail()}"
            )
        time.sleep(0.1)

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    @property
    def pid(self) -> int:
        """The server's process id (benchmarks read its CPU time)."""
        if self._proc is None:
            raise RuntimeError("the S3 server is not running")
        return self._proc.pid

    def rss(self, key: str = "VmRSS") -> int:
        """Resident set size in bytes (`VmHWM`: the peak); 0 when not running."""
        if self._proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server hangs (SIGSTOP) inside the block: connections are accepted by the kernel
        and never answered, as with a storage endpoint that stopped responding."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        for name, service in _GRPC_SOCKETS.items():
            if name in self.ports:
                Path(f"/tmp/seaweedfs-{service}-grpc-{self.ports[name]}.sock").unlink(
                    missing_ok=True
                )

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
