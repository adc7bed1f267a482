"""A real Kubernetes node for the tests: kubelet + containerd + runc + a CNI bridge.

Pods run as real containers: images built from the project's Dockerfiles
(tools/build-images.sh) and imported into containerd, Pod Security contexts, resource limits,
deadlines and network namespaces enforced by the kubelet and runc. The binaries come from
tools/build-testbin.sh (kubelet, kube-scheduler) and tools/build-node.sh (containerd, runc,
CNI plugins, the pause image); the configuration is :mod:`testcluster.nodeconfig`; what the
node changes on the host is recorded and undone by :mod:`testcluster.nodehost`.

Order: :meth:`RealNode.prepare_host` (the bridge, whose address the API server must bind
before it starts), then the control plane, then :meth:`RealNode.start` (containerd, images,
kube-scheduler, kubelet; returns when the Node is Ready). :meth:`RealNode.stop` undoes
everything, also after a failed start. See specs/TEST-001-control-plane.md, "Real node".
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from .controlplane import ControlPlane, _die_with_parent, free_port, issue_certificate
from .nodeconfig import (
    NO_REGISTRY_HOSTS_TOML,
    NodeLayout,
    cni_config,
    containerd_config,
    kubelet_config,
)
from .nodehost import (
    HOST_PATHS,
    HostRecord,
    claim_node,
    clean_stale,
    create_bridge,
    nft_tables,
    node_in_use,
    read_sysctls,
    record_path,
    remove_enforcer_rules,
    undo,
)
from .rest import ApiException, Rest

__all__ = [
    "NodeTools",
    "RealNode",
    "interrupt_on_sigterm",
    "plan_real_node",
    "real_node_unavailable",
]

NODE_NAME = "smartspec-node"
BRIDGE = "smartspec0"
# A /24 unlikely to meet a user's networks (podman takes 10.88/16, docker 172.17/16).
SUBNET = os.environ.get("SMARTSPEC_NODE_SUBNET", "10.213.47.0/24")


@dataclass(frozen=True)
class NodeTools:
    """Executables and images the node runs, from the build scripts' env files."""

    containerd_dir: Path
    runc: str
    cni_bin_dir: str
    pause_image: str
    pause_archive: Path
    k8s_dir: Path
    repo: Path
    """The checkout: tools/build-images.sh builds the project's images from it."""
    kube_router: Path
    """The NetworkPolicy enforcer (its firewall alone), started only by the tests that need it."""

    def kube(self, name: str) -> Path:
        return self.k8s_dir / name


def _script_output(repo: Path, script: str, *args: str) -> str:
    """Run one of our build scripts quietly (progress still streams to stderr)."""
    result = subprocess.run(
        ["bash", str(repo / "tools" / script), "-q", *args],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tools/{script} failed with exit code {result.returncode}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {key: value for key, sep, value in pairs if sep}


def real_node_unavailable(repo: Path, k8s_dir: Path) -> tuple[NodeTools | None, str]:
    """The node's tools, built or found, or None and why this machine cannot run a node.

    SMARTSPEC_NODE=fake asks for the fake local node; =real makes a missing piece an error
    (RuntimeError) instead of a fallback.
    """
    wanted = os.environ.get("SMARTSPEC_NODE", "auto")
    if wanted == "fake":
        return None, "SMARTSPEC_NODE=fake"
    reason = ""
    if platform.system() != "Linux":
        reason = "not Linux"
    elif os.geteuid() != 0:
        reason = "not root (a kubelet, mounts and a bridge need root)"
    elif shutil.which("ip") is None:
        reason = "no `ip` command (iproute2)"
    elif (busy := node_in_use()) is not None:
        reason = busy
    else:
        line = _script_output(repo, "build-node.sh")
        if not line.startswith("export SMARTSPEC_NODE_ENV="):
            reason = line.removeprefix("# no real node: ") or "tools/build-node.sh printed nothing"
    if reason:
        if wanted == "real":
            raise RuntimeError(f"SMARTSPEC_NODE=real, but {reason}")
        return None, reason
    env = _env_file(Path(line.split("=", 1)[1]))
    tools = NodeTools(
        containerd_dir=Path(env["CONTAINERD_DIR"]),
        runc=env["RUNC"],
        cni_bin_dir=env["CNI_BIN_DIR"],
        pause_image=env["PAUSE_IMAGE"],
        pause_archive=Path(env["PAUSE_ARCHIVE"]),
        k8s_dir=k8s_dir,
        repo=repo,
        kube_router=Path(env["KUBE_ROUTER"]),
    )
    return tools, ""


def plan_real_node(repo: Path, k8s_dir: Path, run_dir: Path) -> tuple[RealNode | None, str]:
    """A RealNode ready for :meth:`RealNode.prepare_host`, or None and why not."""
    tools, reason = real_node_unavailable(repo, k8s_dir)
    if tools is None:
        return None, reason
    lock = claim_node()
    if lock is None:
        return None, "another session is starting or running the real node (one per machine)"
    return RealNode(tools, run_dir, lock=lock), ""


def interrupt_on_sigterm() -> None:
    """Make SIGTERM act like Ctrl-C, so pytest's fixture teardown undoes the node."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@dataclass
class RealNode:
    """One node on this machine; see the module docstring for the order of calls."""

    tools: NodeTools
    run_dir: Path
    detached: bool = False
    """Processes outlive this Python process (make cluster-up) instead of dying with it."""
    name: str = NODE_NAME
    startup_seconds: dict[str, float] = field(default_factory=dict)
    _record: HostRecord | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: int | None = None
    """The machine's node lock (nodehost.claim_node), released by stop()."""
    _admin: Rest | None = None
    _imported: set[str] = field(default_factory=set)

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(self.run_dir, self.name, BRIDGE, SUBNET)

    @property
    def address(self) -> str:
        """The bridge address: the node's InternalIP, where pods reach host services."""
        return self.layout.address

    def prepare_host(self) -> str | None:
        """Record the host's settings and create the bridge; returns a note when a node left
        behind by a killed session was cleaned up first."""
        note = clean_stale()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if (hierarchy / "kubepods").exists():
                raise RuntimeError(f"{hierarchy}/kubepods exists: another kubelet runs here")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        created = [p for p in HOST_PATHS if not Path(p).exists()]
        self._record = HostRecord(str(self.run_dir), BRIDGE, read_sysctls(), os.getpid(), created)
        self._record.save()
        create_bridge(BRIDGE, self.address, int(SUBNET.rsplit("/", 1)[1]))
        return note

    def start(self, plane: ControlPlane) -> None:
        """containerd, the images, kube-scheduler and the kubelet; returns once Ready."""
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(plane.kubeconfig("admin"))
        )
        self._admin = Rest(api)
        t0 = time.monotonic()
        self._start_containerd()
        self.startup_seconds["containerd"] = time.monotonic() - t0
        self.import_images([(self.tools.pause_image, self.tools.pause_archive)])
        self.ensure_images("generator", "tester")
        self.startup_seconds["images"] = time.monotonic() - t0
        self._start_scheduler(plane)
        self._start_kubelet(plane)
        self.startup_seconds["ready"] = time.monotonic() - t0

    def stop(self) -> list[str]:
        """Stop everything and put the host back; returns what could not be undone."""
        left = self.stop_enforcer() if "kube-router" in self._procs else []
        # The kubelet first: it would restart what is stopped under it.
        for name in ("kubelet", "kube-scheduler", "containerd"):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        record = self._record or HostRecord.load()
        problems = left + (undo(record) if record is not None else [])
        if record is not None and record.run_dir == str(self.run_dir):
            record_path().unlink(missing_ok=True)
        self._record = None
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
        return problems

    def ensure_images(self, *names: str) -> None:
        """Import the project's images by name, once each. The sandboxes' come with start();
        the operator image (the largest: ~20 s) only when a test installs the chart."""
        wanted = [n for n in names if n not in self._imported]
        if not wanted:
            return
        # Built (or found current) from this checkout first: the tests run today's code.
        listing = _script_output(self.tools.repo, "build-images.sh", *wanted)
        rows = Path(listing.split("=", 1)[1]).read_text().splitlines()
        archives = {
            Path(archive).name.removesuffix(".oci.tar"): (reference, Path(archive))
            for reference, archive in (row.split() for row in rows)
        }
        self.import_images([archives[n] for n in wanted])
        self._imported.update(wanted)

    def import_images(self, images: list[tuple[str, Path]]) -> None:
        """Import OCI archives into containerd's k8s.io namespace (the CRI's)."""
        ctr = self.tools.containerd_dir / "ctr"
        for reference, archive in images:
            argv = [str(ctr), "-a", str(self.layout.containerd_socket), "-n", "k8s.io"]
            result = subprocess.run(
                [*argv, "images", "import", str(archive)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"ctr import {reference} from {archive}: {result.stderr}")

    def start_enforcer(self, kubeconfig: Path) -> None:
        """kube-router's NetworkPolicy firewall (no routing, no service proxy), until
        :meth:`stop_enforcer`; returns once its chains are in iptables."""
        assert self._record is not None
        self._record.enforcer = str(self.tools.kube_router)
        self._record.nft_tables = nft_tables()
        self._record.save()
        # A copy in the run dir: its command line then names the run dir, as every node
        # process's does (nodehost finds them by it).
        own_kubeconfig = self.run_dir / "kube-router.kubeconfig"
        shutil.copy(kubeconfig, own_kubeconfig)
        self._spawn(
            "kube-router",
            [
                str(self.tools.kube_router),
                f"--kubeconfig={own_kubeconfig}",
                f"--hostname-override={self.name}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--health-port=0",
                "--metrics-port=0",
            ],
        )

        def synced() -> bool:
            rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
            return "KUBE-ROUTER-FORWARD" in rules.stdout

        self._wait("kube-router's firewall", synced)

    def stop_enforcer(self) -> list[str]:
        """Stop kube-router and remove every iptables rule and ipset it made; returns what
        could not be removed."""
        proc = self._procs.pop("kube-router", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        before = self._record.nft_tables if self._record is not None else []
        left = remove_enforcer_rules(str(self.tools.kube_router), before)
        if self._record is not None:
            self._record.pids.pop("kube-router", None)
            self._record.enforcer = None
            self._record.save()
        return left

    def logs(self, namespace: str, name: str) -> str:
        """A pod's log, through the API server and the kubelet (as kubectl logs)."""
        assert self._admin is not None
        return self._admin.text(f"/api/v1/namespaces/{namespace}/pods/{name}/log")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def rss(self, key: str = "VmRSS") -> dict[str, int]:
        """Resident set size in bytes of the node's daemons (VmHWM: the peak)."""
        out: dict[str, int] = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        out[name] = int(line.split()[1]) * 1024
        return out

    def check_alive(self) -> None:
        dead = [
            f"{n} (exit {p.returncode})" for n, p in self._procs.items() if p.poll() is not None
        ]
        if dead:
            raise RuntimeError(
                f"node process(es) exited: {', '.join(dead)}; logs in {self.run_dir}"
            )

    # -- internals ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as fh:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                env=env,
                start_new_session=True,
                preexec_fn=None if self.detached else _die_with_parent,  # noqa: PLW1509
            )
        assert self._record is not None
        self._record.pids[name] = self._procs[name].pid
        self._record.save()

    def _wait(self, what: str, ready: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if callable(ready) and ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s; logs in {self.run_dir}")

    def _start_containerd(self) -> None:
        layout = self.layout
        layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-smartspec.conflist").write_text(
            json.dumps(cni_config(layout), indent=1)
        )
        (layout.registry_dir / "_default").mkdir(parents=True, exist_ok=True)
        (layout.registry_dir / "_default" / "hosts.toml").write_text(NO_REGISTRY_HOSTS_TOML)
        layout.containerd_dir.mkdir(parents=True, exist_ok=True)
        config = layout.containerd_dir / "config.toml"
        config.write_text(
            containerd_config(
                layout,
                runc=self.tools.runc,
                cni_bin_dir=self.tools.cni_bin_dir,
                pause_image=self.tools.pause_image,
            )
        )
        # containerd 2 finds its shim on PATH; the proxy variables are a second guard that
        # no pull leaves the machine (Go's HTTP client sends everything to loopback).
        path = f"{self.tools.containerd_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        env = {
            "PATH": path,
            "HTTPS_PROXY": "http://127.0.0.1:1",
            "HTTP_PROXY": "http://127.0.0.1:1",
        }
        self._spawn(
            "containerd",
            [str(self.tools.containerd_dir / "containerd"), "--config", str(config)],
            env,
        )
        self._wait("containerd", layout.containerd_socket.exists)

    def _start_scheduler(self, plane: ControlPlane) -> None:
        port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                str(self.tools.kube("kube-scheduler")),
                f"--kubeconfig={plane.kubeconfig('admin')}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.run_dir / 'scheduler-certs'}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving certificate

        def healthy() -> bool:
            url = f"https://127.0.0.1:{port}/readyz"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=2, context=insecure) as reply,
            ):
                return bool(reply.status == 200)
            return False

        self._wait("kube-scheduler", healthy)

    def _start_kubelet(self, plane: ControlPlane) -> None:
        layout = self.layout
        pki = layout.pki_dir
        pki.mkdir(parents=True, exist_ok=True)
        shutil.copy(plane.ca_path, pki / "ca.crt")
        shutil.copy(plane.pki_dir / "ca.key", pki / "ca.key")
        client_crt, client_key = issue_certificate(
            pki, "kubelet-client", f"system:node:{self.name}", ("system:nodes",)
        )
        issue_certificate(
            pki, "kubelet-serving", f"system:node:{self.name}", server_ips=(self.address,)
        )
        (pki / "ca.key").unlink()
        # RBAC only (no Node authorizer): the node's user gets the system:node ClusterRole.
        admin = self._admin
        assert admin is not None
        with contextlib.suppress(ApiException):
            admin.post(
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {
                    "metadata": {"name": f"smartspec-node-{self.name}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "system:node",
                    },
                    "subjects": [
                        {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "User",
                            "name": f"system:node:{self.name}",
                        }
                    ],
                },
            )
        kubeconfig = self.run_dir / "kubelet.kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {
                                "server": plane.server,
                                "certificate-authority": str(pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": "u",
                            "user": {
                                "client-certificate": str(client_crt),
                                "client-key": str(client_key),
                            },
                        }
                    ],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        config = self.run_dir / "kubelet-config.json"
        config.write_text(json.dumps(kubelet_config(layout, ca_file=pki / "ca.crt"), indent=1))
        self._spawn(
            "kubelet",
            [
                str(self.tools.kube("kubelet")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={layout.kubelet_dir}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                "--v=1",
            ],
        )

        def ready() -> bool:
            try:
                node = admin.get(f"/api/v1/nodes/{self.name}")
            except ApiException:
                return False
            conditions = (node.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        self._wait("kubelet (Node Ready)", ready)
