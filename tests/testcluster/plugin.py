"""pytest plugin: a Kubernetes cluster, CRDs, namespaces, a local node and S3 for tests.

Load with ``-p testcluster.plugin`` (and ``pythonpath = ["tests"]``). Option
``--cluster`` (env ``SMARTSPEC_CLUSTER``) picks the cluster:

* ``local`` (default): etcd + kube-apiserver + kube-controller-manager started by
  :class:`testcluster.controlplane.ControlPlane`, binaries from ``$K8S_TESTBIN``
  (+ ``$ETCD_TESTBIN``) or built/reused by ``tools/build-testbin.sh``. Every identity
  (admin, operator, builder, platform_admin, approver) has its own token and kubeconfig.
* ``kind``: a kind cluster through pytest-kind-ng's ``kind_cluster`` fixture; skipped
  unless ``docker info`` works and pytest-kind-ng is installed.
* ``existing``: the cluster of ``$KUBECONFIG`` (or ``~/.kube/config``).

For ``kind``/``existing`` only the admin kubeconfig exists: :meth:`Cluster.api_client`
gives the other identities by impersonation (``Impersonate-User``/``-Group`` headers,
same user and group names as the local tokens), while :meth:`Cluster.kubeconfig` skips
the test for them (a kubeconfig cannot carry impersonation for the Python client or kopf).

Fixtures: ``cluster`` (session), ``crds`` (session; installs ``crds/*.yaml`` and waits for
Established), ``namespace`` (function; fresh namespace enforcing Pod Security
"restricted"), ``local_node`` (session; only with ``--cluster=local``), ``s3`` (session:
SeaweedFS built by ``tools/build-seaweedfs.sh``, one fresh bucket).
The local control plane's run dir (logs, PKI, kubeconfigs) is kept when a test failed.
See specs/TEST-001-control-plane.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from .controlplane import IDENTITIES, ControlPlane, resolve_binaries
from .localnode import LocalNode
from .realnode import RealNode, interrupt_on_sigterm, plan_real_node
from .rest import ApiException, Rest
from .s3 import S3Endpoint, S3Server, resolve_weed

REPO_ROOT = Path(__file__).resolve().parents[2]
MODES = ("local", "kind", "existing")
_SUMMARY = pytest.StashKey[list[str]]()
_S3_SERVER = pytest.StashKey[S3Server]()
PSA_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smartspec-cluster", "SmartSpec test cluster (testcluster.plugin)")
    group.addoption(
        "--cluster",
        choices=MODES,
        default=os.environ.get("SMARTSPEC_CLUSTER", "local"),
        help="Kubernetes cluster for integration tests: local (default; real "
        "etcd/kube-apiserver/kube-controller-manager processes), kind, or "
        "existing ($KUBECONFIG). Env: SMARTSPEC_CLUSTER.",
    )
    group.addoption(
        "--keep-cluster-dir",
        action="store_true",
        help="keep the local control plane's run dir (logs, kubeconfigs) even "
        "when every test passed",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs a real Kubernetes API server (see --cluster)"
    )
    config.stash[_SUMMARY] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("smartspec test cluster")
        for line in lines:
            terminalreporter.write_line(line)


@dataclass
class Cluster:
    """Handle on the cluster under test; see the module docstring for per-mode behaviour."""

    mode: str
    kubeconfigs: dict[str, Path]
    control_plane: ControlPlane | None = None
    run_dir: Path | None = None
    real_node: RealNode | None = None
    """The kubelet + containerd node (local mode, where this machine can run one)."""
    _clients: dict[str, client.ApiClient] = field(default_factory=dict)
    _owned: list[client.ApiClient] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        """Where host processes that pods must reach listen (S3, gateways, stubs): the real
        node's bridge address, else loopback."""
        return self.real_node.address if self.real_node is not None else "127.0.0.1"

    @property
    def identities(self) -> tuple[str, ...]:
        return tuple(i.key for i in IDENTITIES)

    def kubeconfig(self, identity: str = "admin") -> Path:
        """Kubeconfig file for ``identity``; skips the test if this mode has none."""
        if identity not in self.identities:
            raise KeyError(f"unknown identity {identity!r}; known: {self.identities}")
        if identity not in self.kubeconfigs:
            pytest.skip(
                f"--cluster={self.mode} has no kubeconfig for {identity!r} "
                "(only --cluster=local has per-identity tokens)"
            )
        return self.kubeconfigs[identity]

    def api_client(self, identity: str = "admin") -> client.ApiClient:
        """A shared ApiClient for ``identity`` (closed at session end)."""
        if identity not in self._clients:
            self._clients[identity] = self.new_api_client(identity)
        return self._clients[identity]

    def new_api_client(self, identity: str = "admin") -> client.ApiClient:
        """A fresh ApiClient for ``identity``; never touches the global default config."""
        ident = {i.key: i for i in IDENTITIES}.get(identity)
        if ident is None:
            raise KeyError(f"unknown identity {identity!r}; known: {self.identities}")
        own = identity in self.kubeconfigs
        path = str(self.kubeconfigs[identity if own else "admin"])
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path
        )
        if not own:  # kind/existing: admin credentials impersonating the identity
            api.default_headers["Impersonate-User"] = ident.user
            # One header value per name in this client: every identity has a single group.
            api.default_headers["Impersonate-Group"] = ident.groups[0]
        self._owned.append(api)
        return api

    def rest(self, identity: str = "admin") -> Rest:
        """Raw JSON access (see :mod:`testcluster.rest`) with ``identity``'s shared client."""
        return Rest(self.api_client(identity))

    def close(self) -> None:
        for api in self._owned:
            with contextlib.suppress(Exception):  # closing pools at exit is best effort
                api.close()  # type: ignore[no-untyped-call]
        self._owned.clear()
        self._clients.clear()


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    mode: str = request.config.getoption("--cluster")
    summary = request.config.stash[_SUMMARY]
    if mode == "kind":
        if not _docker_works():
            pytest.skip("--cluster=kind needs a working Docker daemon (`docker info` failed)")
        try:
            kind = request.getfixturevalue("kind_cluster")
        except pytest.FixtureLookupError:
            pytest.skip("--cluster=kind needs pytest-kind-ng installed (fixture kind_cluster)")
        c = Cluster("kind", {"admin": Path(kind.kubeconfig_path)})
        yield c
        c.close()
        return
    if mode == "existing":
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
            Path.home() / ".kube" / "config"
        )
        if not Path(path).exists():
            pytest.skip(f"--cluster=existing: kubeconfig {path} not found (set KUBECONFIG)")
        c = Cluster("existing", {"admin": Path(path)})
        yield c
        c.close()
        return

    yield from _local_cluster(request, summary)


def _local_cluster(request: pytest.FixtureRequest, summary: list[str]) -> Iterator[Cluster]:
    """The local control plane, with the real node where this machine can run one."""
    # Show build-testbin.sh's progress live: a cold build takes minutes (silent if cached).
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        binaries = resolve_binaries(REPO_ROOT)
    run_dir = Path(tempfile.mkdtemp(prefix="smartspec-cluster-"))
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        node, why_not = plan_real_node(REPO_ROOT, binaries.kube_apiserver.parent, run_dir / "node")
    cp = ControlPlane(binaries, run_dir)
    if node is not None:  # the API server listens where pods and the kubelet reach it
        cp = ControlPlane(binaries, run_dir, bind_address=node.address, kubelet_client=True)
    try:
        if node is not None:
            interrupt_on_sigterm()
            if note := node.prepare_host():
                summary.append(note)
        cp.start()
        if node is not None:
            node.start(cp)
    except BaseException:
        summary.append(f"cluster failed to start; logs kept in {run_dir}")
        _stop_node(node, summary)
        cp.stop()
        raise
    rss = cp.rss()
    summary.append(
        f"local control plane ({binaries.kube_apiserver.parent.name}, "
        f"{binaries.etcd.parent.name}) ready in {cp.startup_seconds['ready']:.1f} s "
        f"(etcd {cp.startup_seconds['etcd']:.1f} s, apiserver "
        f"{cp.startup_seconds['kube-apiserver']:.1f} s); RSS after start: "
        + ", ".join(f"{k} {_mib(v)}" for k, v in rss.items())
    )
    summary.append(_node_line(node, why_not))
    c = Cluster("local", cp.kubeconfigs, cp, run_dir, real_node=node)
    try:
        yield c
    finally:
        c.close()
        peak = cp.peak_rss()
        if node is not None:
            peak |= node.rss("VmHWM")
        _stop_node(node, summary)
        cp.stop()
        summary.append("peak RSS: " + ", ".join(f"{k} {_mib(v)}" for k, v in peak.items()))
        if request.session.testsfailed or request.config.getoption("--keep-cluster-dir"):
            summary.append(f"control-plane run dir kept (logs, kubeconfigs): {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _node_line(node: RealNode | None, why_not: str) -> str:
    if node is None:
        return (
            "node: FAKE local node (pods run as host processes, NO container isolation): "
            f"no real node because {why_not}"
        )
    rss = ", ".join(f"{k} {_mib(v)}" for k, v in node.rss().items())
    return (
        f"node: REAL kubelet + containerd + runc ({node.name}, bridge {node.address}), "
        f"Ready {node.startup_seconds['ready']:.1f} s after containerd started "
        f"(images imported in {node.startup_seconds['images']:.1f} s); RSS: {rss}"
    )


def _stop_node(node: RealNode | None, summary: list[str]) -> None:
    if node is not None:
        problems = node.stop()
        summary.append(
            f"real node stopped; host NOT fully restored: {problems}"
            if problems
            else "real node stopped; host restored (processes, mounts, bridge, cgroups, sysctls)"
        )


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Install every CustomResourceDefinition in ``crds/*.yaml``; wait for Established."""
    rest = cluster.rest()
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names: list[str] = []
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") != "CustomResourceDefinition":
                raise pytest.UsageError(
                    f"{path}: only CustomResourceDefinitions belong in "
                    f"crds/, found kind {doc.get('kind')!r}"
                )
            name = doc["metadata"]["name"]
            try:
                rest.post(base, doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = rest.get(f"{base}/{name}")
                doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                rest.put(f"{base}/{name}", doc)
            names.append(name)
    deadline = time.monotonic() + 60
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            crd = rest.get(f"{base}/{name}")
            status = crd.get("status") or {}  # conditions are null until first reconciled
            conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if conds.get("Established") == "True":
                pending.discard(name)
        time.sleep(0.2)
    if pending:
        pytest.fail(f"CRDs not Established after 60 s: {sorted(pending)}")
    return names


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security "restricted" (latest); deleted afterwards."""
    rest = cluster.rest()
    name = _namespace_name(request.node.name)
    rest.post(
        "/api/v1/namespaces",
        {"metadata": {"name": name, "labels": {**PSA_LABELS, "smartspec.test/namespace": "true"}}},
    )
    # Pods are rejected by ServiceAccount admission until KCM has created "default".
    deadline = time.monotonic() + 30
    while True:
        try:
            rest.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    try:
        rest.delete(f"/api/v1/namespaces/{name}", propagationPolicy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def local_node(cluster: Cluster) -> Iterator[LocalNode | RealNode]:
    """The node of this machine: the real one (kubelet + containerd) where it runs, else the
    test-only fake node (runs Pod commands as local processes, NO isolation)."""
    if cluster.mode != "local":
        pytest.skip("the local node only runs with --cluster=local (other clusters have nodes)")
    if cluster.real_node is not None:
        yield cluster.real_node
        return
    # Sandbox commands say `python`: make that this interpreter, whose environment has the
    # smartspec package (the images would have it installed).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    node = LocalNode(cluster.new_api_client("admin"), base_env={"PATH": path})
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def s3(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[S3Endpoint]:
    """SeaweedFS on loopback (see :mod:`testcluster.s3`) with one fresh bucket for the session."""
    summary = request.config.stash[_SUMMARY]
    # Show build-seaweedfs.sh's progress live: a cold build takes minutes (silent if cached).
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        weed = resolve_weed(REPO_ROOT)
    run_dir = Path(tempfile.mkdtemp(prefix="smartspec-s3-"))
    # On the real node's bridge address, where sandbox pods reach it.
    server = S3Server(
        weed, run_dir, f"smartspec-test-{secrets.token_hex(4)}", host=cluster.host_address
    )
    try:
        endpoint = server.start()
    except Exception:
        summary.append(f"S3 server failed to start; its log is kept in {run_dir}")
        raise
    summary.append(
        f"S3: SeaweedFS ({weed.parent.name}) ready in {server.startup_seconds:.1f} s; "
        f"RSS after start: {_mib(server.rss())}"
    )
    request.config.stash[_S3_SERVER] = server
    try:
        yield endpoint
    finally:
        peak = server.rss("VmHWM")
        server.stop()
        summary.append(f"S3 peak RSS: {_mib(peak)}")
        if request.session.testsfailed or request.config.getoption("--keep-cluster-dir"):
            summary.append(f"S3 run dir kept (log, data): {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, s3: S3Endpoint) -> S3Server:
    """The session's S3 server process itself, for tests that make it fail (`frozen`)."""
    return request.config.stash[_S3_SERVER]


@pytest.fixture(scope="session")
def fake_node(local_node: LocalNode | RealNode) -> LocalNode:
    """The fake local node, for tests of the fake node itself."""
    if not isinstance(local_node, LocalNode):
        pytest.skip("a test of the fake local node: this session runs pods on the real node")
    return local_node


__all__ = [
    "Cluster",
    "cluster",
    "crds",
    "fake_node",
    "local_node",
    "namespace",
    "s3",
    "s3_server",
]
