"""A real, local Kubernetes control plane for integration tests (no Docker).

Starts etcd, kube-apiserver and kube-controller-manager as loopback-only subprocesses on
free ports, with a throw-away PKI, static-token users (one kubeconfig per identity), RBAC
authorization, Pod Security and ServiceAccount admission, and the KCM's real controllers
(Job, garbage collector, namespace, serviceaccount, ...). Pods only run if a node runs them:
:mod:`testcluster.realnode` (kubelet + containerd; the API server then listens on the node's
bridge address, and talks to the kubelet with a client certificate), or the fake
:mod:`testcluster.localnode`.

The binaries are built from Go modules by ``tools/build-testbin.sh`` into a cache outside
the repo. See specs/TEST-001-control-plane.md for versions, flags and measured costs.

This module deliberately depends only on the standard library and ``cryptography`` (not
on the ``kubernetes`` client), so benchmarks and scripts can start a cluster cheaply.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "IDENTITIES",
    "Binaries",
    "ControlPlane",
    "ControlPlaneError",
    "Identity",
    "free_port",
    "issue_certificate",
    "resolve_binaries",
]

DEFAULT_TESTBIN_ROOT = Path.home() / ".cache" / "smartspec" / "testbin"
BUILD_SCRIPT = Path("tools") / "build-testbin.sh"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


@dataclass(frozen=True)
class Identity:
    """A static-token user of the test cluster.

    ``key`` names the identity in Python (fixture attributes, kubeconfig file names);
    ``user`` and ``groups`` are what the API server's authenticator reports, and what
    RBAC bindings in tests must refer to.
    """

    key: str
    user: str
    groups: tuple[str, ...]


# system:masters bypasses RBAC, so "admin" works before any binding exists; every other
# identity starts with no permissions beyond system:authenticated (discovery, self reviews).
IDENTITIES: tuple[Identity, ...] = (
    Identity("admin", "admin", ("system:masters",)),
    Identity("operator", "operator", ("smartspec:operators",)),
    Identity("builder", "builder", ("smartspec:builders",)),
    Identity("platform_admin", "platform-admin", ("smartspec:platform-admins",)),
    Identity("approver", "approver", ("smartspec:approvers",)),
    Identity("gateway", "gateway", ("smartspec:gateways",)),
)


@dataclass(frozen=True)
class Binaries:
    """Paths of the three control-plane executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path

    @classmethod
    def from_dirs(cls, k8s_dir: Path, etcd_dir: Path | None = None) -> Binaries:
        """Binaries from K8S_TESTBIN-style directories (etcd may sit in the k8s dir)."""
        etcd = k8s_dir / "etcd"
        if not etcd.exists() and etcd_dir is not None:
            etcd = etcd_dir / "etcd"
        bins = cls(etcd, k8s_dir / "kube-apiserver", k8s_dir / "kube-controller-manager")
        missing = [
            str(p)
            for p in (bins.etcd, bins.kube_apiserver, bins.kube_controller_manager)
            if not os.access(p, os.X_OK)
        ]
        if missing:
            raise ControlPlaneError(
                "control-plane binaries missing or not executable: "
                + ", ".join(missing)
                + " (build them with tools/build-testbin.sh, or point K8S_TESTBIN"
                " [and ETCD_TESTBIN] at directories that hold them)"
            )
        return bins


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def resolve_binaries(
    repo_root: Path | None = None, *, build: bool = True, environ: Mapping[str, str] | None = None
) -> Binaries:
    """Find the control-plane binaries, building them if allowed.

    Order: ``$K8S_TESTBIN`` (with etcd there or in ``$ETCD_TESTBIN``); else, with ``build``,
    run ``tools/build-testbin.sh -q`` (a silent no-op taking ~0.3 s when the version-keyed
    cache is current, ~7 minutes on 2 cores when cold); else the cache's ``testbin.env``.
    """
    env = os.environ if environ is None else environ
    if env.get("K8S_TESTBIN"):
        etcd_dir = env.get("ETCD_TESTBIN")
        return Binaries.from_dirs(Path(env["K8S_TESTBIN"]), Path(etcd_dir) if etcd_dir else None)
    root = Path(env.get("SMARTSPEC_TESTBIN") or DEFAULT_TESTBIN_ROOT)
    if build:
        if repo_root is None:
            raise ControlPlaneError("resolve_binaries(build=True) needs the repo root")
        script = repo_root / BUILD_SCRIPT
        if not script.exists():
            raise ControlPlaneError(f"{script} not found; set K8S_TESTBIN instead")
        # stderr (progress) streams straight through; the plugin un-captures it.
        result = subprocess.run(
            ["bash", str(script), "-q"],
            cwd=repo_root,
            env=dict(env),
            stdout=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(
                f"{script} failed with exit code {result.returncode}; see its output above"
            )
    env_file = root / "testbin.env"
    if not env_file.exists():
        raise ControlPlaneError(
            f"{env_file} not found: run {BUILD_SCRIPT} first or set K8S_TESTBIN"
        )
    values = _read_env_file(env_file)
    return Binaries.from_dirs(Path(values["K8S_TESTBIN"]), Path(values["ETCD_TESTBIN"]))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host`, chosen below the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the same range as the local ports of
    outgoing connections, so between the check and the server's bind a client's connection
    could take it (an operator failed to start with EADDRINUSE so). Below that range only
    listeners bind, and below 30000 no NodePort does. Ask on the address that will be
    bound: a port free on loopback can be taken on the real node's bridge address."""
    low = min(_ephemeral_range()[0], NODE_PORTS_START)
    for _ in range(200):
        port = PORT_FLOOR + secrets.randbelow(low - PORT_FLOOR)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} between {PORT_FLOOR} and {low}")


PORT_FLOOR = 20000
NODE_PORTS_START = 30000
"""Kubernetes' NodePort range starts here: a node's proxy rules may claim those ports."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return int(low), int(high)


# ---------------------------------------------------------------------------------------
# PKI: a CA, one serving certificate for the API server and a service-account key pair.
# EC P-256 keys: generating them is instant, and every component involved accepts them.


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_pki(d: Path, bind_address: str) -> None:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smartspec-test-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        *(x509.IPAddress(ipaddress.ip_address(a)) for a in sorted({"127.0.0.1", bind_address})),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the "kubernetes" Service IP
        *(
            x509.DNSName(n)
            for n in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ),
    ]
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": srv.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(srv_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
        if name.endswith(".key"):
            (d / name).chmod(0o600)


def issue_certificate(
    pki: Path,
    name: str,
    common_name: str,
    organizations: tuple[str, ...] = (),
    *,
    server_ips: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Sign ``<name>.crt``/``<name>.key`` in ``pki`` with its test CA: a client certificate
    (user ``common_name`` in groups ``organizations``), or a serving one for ``server_ips``."""
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_ips else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_ips:
        ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(ips), critical=False)
    crt, key_path = pki / f"{name}.crt", pki / f"{name}.key"
    crt.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return crt, key_path


# Loaded in the parent so the forked child only makes one foreign call (no dlopen locks).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the starting thread dies (no orphans after a
    hard-killed pytest). Linux only; a no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``run_dir``.

    Usage::

        cp = ControlPlane(resolve_binaries(repo_root), run_dir)
        cp.start()          # returns when /readyz is ok and KCM has created default SAs
        cp.kubeconfig("builder")   # Path of that identity's kubeconfig
        cp.rss()            # {"etcd": bytes, "kube-apiserver": ..., "kube-controller-manager": ...}
        cp.stop()

    ``die_with_parent`` makes the children get SIGTERM when the thread that called
    :meth:`start` exits; start from the main (or a long-lived) thread, or pass False.
    Logs stay in ``run_dir`` (``etcd.log``, ``kube-apiserver.log``,
    ``kube-controller-manager.log``); :meth:`stop` never deletes the directory.
    """

    binaries: Binaries
    run_dir: Path
    die_with_parent: bool = True
    startup_timeout: float = 120.0
    extra_apiserver_args: tuple[str, ...] = ()
    extra_kcm_args: tuple[str, ...] = ()
    bind_address: str = "127.0.0.1"
    """Where kube-apiserver listens: a real node's bridge address, so that pods reach it."""
    kubelet_client: bool = False
    """Give kube-apiserver a client certificate for kubelets (logs, exec) and have it verify
    their serving certificates with the test CA; nodes are reached at their InternalIP."""

    tokens: dict[str, str] = field(default_factory=dict, init=False)
    api_port: int = field(default=0, init=False)
    startup_seconds: dict[str, float] = field(default_factory=dict, init=False)
    _procs: list[_Proc] = field(default_factory=list, init=False)

    # -- public API ------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.api_port}"

    @property
    def ca_path(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    def kubeconfig(self, identity: str) -> Path:
        """Kubeconfig file of ``identity`` (an :data:`IDENTITIES` key, e.g. "platform_admin")."""
        if identity not in self.tokens:
            raise KeyError(f"unknown identity {identity!r}; known: {sorted(self.tokens)}")
        return self.run_dir / f"kubeconfig-{identity}.yaml"

    @property
    def kubeconfigs(self) -> dict[str, Path]:
        return {key: self.kubeconfig(key) for key in self.tokens}

    def start(self) -> None:
        """Start all three processes and wait until the cluster is usable.

        Retries with fresh ports if a picked port was taken meanwhile.
        """
        for attempt in range(3):
            try:
                self._start_once()
                return
            except ControlPlaneError as exc:
                in_use = any(
                    "address already in use" in self._tail(p.log, 200) for p in self._procs
                )
                self.stop()
                if not in_use or attempt == 2:
                    raise exc

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM in reverse start order, then SIGKILL after ``timeout`` seconds."""
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
                try:
                    proc.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait(5)
        self._procs.clear()

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._procs}

    def rss(self) -> dict[str, int]:
        """Current resident set size in bytes per running component (/proc VmRSS)."""
        return self._proc_status_kib("VmRSS")

    def peak_rss(self) -> dict[str, int]:
        """Peak resident set size in bytes per running component (/proc VmHWM)."""
        return self._proc_status_kib("VmHWM")

    def _proc_status_kib(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self._procs:
            try:
                for line in Path(f"/proc/{p.popen.pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        out[p.name] = int(line.split()[1]) * 1024
            except OSError:
                continue  # exited, or no procfs
        return out

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"----- {p.name} ({p.log}) -----\n{self._tail(p.log, lines)}" for p in self._procs
        )

    def restart_apiserver(self, down_seconds: float) -> float:
        """Stop kube-apiserver (SIGTERM, SIGKILL after 5 s), leave it down `down_seconds`,
        start it again with the same flags; returns when /readyz answers, with the seconds
        that took after the start. Its watch cache starts anew: watches resumed from an
        older resourceVersion get 410."""
        index, old = next((i, p) for i, p in enumerate(self._procs) if p.name == "kube-apiserver")
        old.popen.terminate()
        try:
            old.popen.wait(5)
        except subprocess.TimeoutExpired:  # it drains watches for up to a minute: crash it
            old.popen.kill()
            old.popen.wait(10)
        time.sleep(down_seconds)
        self._procs.remove(old)
        started = time.monotonic()
        new = self._spawn(old.name, old.argv)
        self._procs.insert(index, self._procs.pop())  # keep the stop order
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        self._wait_http(new, f"{self.server}/readyz", ctx)
        return time.monotonic() - started

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (through its JSON gateway), so no
        watch can resume from before now; returns that revision."""
        etcd = next(p for p in self._procs if p.name == "etcd")
        url = next(a.split("=", 1)[1] for a in etcd.argv if a.startswith("--listen-client-urls="))

        def call(path: str, body: dict[str, object]) -> dict[str, object]:
            request = urllib.request.Request(  # noqa: S310 - etcd's loopback URL above
                f"{url}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer: dict[str, object] = json.loads(response.read())
                return answer

        header = call("/v3/kv/range", {"key": "AA=="})["header"]
        assert isinstance(header, dict)
        revision = int(header["revision"])
        call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def check_alive(self) -> None:
        """Raise if a component died (e.g. etcd crashed mid-session)."""
        dead = [
            f"{p.name} (exit {p.popen.returncode})"
            for p in self._procs
            if p.popen.poll() is not None
        ]
        if dead:
            raise ControlPlaneError(
                f"control-plane process(es) exited: {', '.join(dead)}\n" + self.log_tails()
            )

    # -- internals -------------------------------------------------------------------

    def _start_once(self) -> None:
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pki_dir.mkdir(exist_ok=True)
        _write_pki(self.pki_dir, self.bind_address)
        self.tokens = {i.key: secrets.token_urlsafe(24) for i in IDENTITIES}
        # Format: token,user,uid,"group1,group2"
        (self.pki_dir / "tokens.csv").write_text(
            "".join(
                f'{self.tokens[i.key]},{i.user},uid-{i.user},"{",".join(i.groups)}"\n'
                for i in IDENTITIES
            )
        )
        (self.pki_dir / "tokens.csv").chmod(0o600)
        etcd_port, peer_port = free_port(), free_port()
        self.api_port, kcm_port = free_port(self.bind_address), free_port()
        for ident in IDENTITIES:
            self._write_kubeconfig(ident)
        self.startup_seconds = {"pki": time.monotonic() - t0}

        etcd_data = self.run_dir / "etcd-data"
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=test",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                # Test data is disposable: skipping fsync makes etcd writes ~free on slow disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http(etcd, f"{etcd_url}/readyz", None)
        self.startup_seconds["etcd"] = time.monotonic() - t0

        pki = self.pki_dir
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--etcd-prefix=/registry",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.bind_address}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.run_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # The privileged check is Pod Security admission's job; the apiserver-wide
                # switch stays on as in real clusters.
                "--allow-privileged=true",
                # Don't publish the loopback advertise address as the "kubernetes" Service
                # endpoints (the reconciler rejects/complains about 127.0.0.1).
                "--endpoint-reconciler-type=none",
                *self._kubelet_client_args(),
                *self.extra_apiserver_args,
            ],
        )
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        self._wait_http(apiserver, f"{self.server}/readyz", ctx)
        self.startup_seconds["kube-apiserver"] = time.monotonic() - t0

        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig('admin')}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.run_dir / 'kcm-certs'}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                # Otherwise KCM creates /usr/libexec/kubernetes/kubelet-plugins/... on the host.
                f"--flex-volume-plugin-dir={self.run_dir / 'flexvolume'}",
                *self.extra_kcm_args,
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # KCM serves a self-signed cert from --cert-dir
        self._wait_http(kcm, f"https://127.0.0.1:{kcm_port}/healthz", insecure)
        # The serviceaccount controller creating "default" proves KCM's controllers run;
        # without it the ServiceAccount admission plugin rejects the first Pods.
        self._wait_http(
            kcm,
            f"{self.server}/api/v1/namespaces/default/serviceaccounts/default",
            ctx,
            token=self.tokens["admin"],
        )
        self.startup_seconds["ready"] = time.monotonic() - t0

    def _kubelet_client_args(self) -> list[str]:
        if not self.kubelet_client:
            return []
        crt, key = issue_certificate(
            self.pki_dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            ("system:masters",),
        )
        return [
            f"--kubelet-client-certificate={crt}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.ca_path}",
            # Otherwise the node's hostname is resolved through the host's resolver.
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _write_kubeconfig(self, ident: Identity) -> None:
        # JSON is valid YAML; the kubernetes client, kubectl and kopf all read it.
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "smartspec-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": ident.user, "user": {"token": self.tokens[ident.key]}}],
            "contexts": [
                {
                    "name": ident.user,
                    "context": {
                        "cluster": "smartspec-test",
                        "user": ident.user,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": ident.user,
        }
        path = self.run_dir / f"kubeconfig-{ident.key}.yaml"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                # Own session: a Ctrl-C in the terminal reaches pytest, which then stops
                # the cluster in order, instead of killing etcd under a live apiserver.
                start_new_session=True,
                # Only an async-signal-safe-enough prctl() runs between fork and exec.
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        proc = _Proc(name, popen, log, argv)
        self._procs.append(proc)
        return proc

    def _wait_http(
        self, proc: _Proc, url: str, ctx: ssl.SSLContext | None, token: str | None = None
    ) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no response yet"
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode} during startup\n"
                    + self.log_tails(40)
                )
            req = urllib.request.Request(url)  # noqa: S310 - http(s) URL built above
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                # URLs are built here from http(s):// literals, never from input.
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
            except (OSError, ssl.SSLError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{proc.name} not ready after {self.startup_timeout:.0f}s "
            f"({url}: {last})\n" + self.log_tails(40)
        )

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                data = fh.read().decode(errors="replace")
        except OSError as exc:
            return f"<cannot read log: {exc}>"
        return "\n".join(data.splitlines()[-lines:])
