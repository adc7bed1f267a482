"""What the real test node changes on the host, recorded before and undone after.

A real node needs a bridge, mounts (the kubelet's root dir, pod volumes, container root
filesystems, network namespaces), cgroups and three kernel settings the kubelet rewrites.
:class:`HostRecord` is written to disk before anything changes, so a later session can undo
what a killed one left (:func:`clean_stale`); :func:`undo` puts the host back: processes
stopped by the PIDs found in our own run dir's cgroups and command lines, mounts under our
paths unmounted, the bridge deleted, our cgroups removed, sysctls restored. See
specs/TEST-001-control-plane.md, "Real node".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "HOST_PATHS",
    "KUBELET_SYSCTLS",
    "HostRecord",
    "claim_node",
    "clean_stale",
    "create_bridge",
    "nft_tables",
    "node_in_use",
    "read_sysctls",
    "record_path",
    "remove_enforcer_rules",
    "undo",
]

STATE_DIR = Path.home() / ".cache" / "smartspec" / "node"
# What the kubelet sets at start (setupKernelTunables) when protectKernelDefaults is off.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Created outside the run dir whatever the configuration says: containerd's shims put their
# sockets in /run/containerd/s, libcni caches results in /var/lib/cni, the kubelet's device
# manager uses /var/lib/kubelet/device-plugins and it links container logs in
# /var/log/containers.
HOST_PATHS = ("/run/containerd", "/var/lib/cni", "/var/lib/kubelet", "/var/log/containers")
# Cgroups the kubelet (pods) and containerd (its k8s.io namespace) create at each hierarchy's top.
CGROUP_NAMES = ("kubepods", "k8s.io")


@dataclass
class HostRecord:
    """Everything needed to put the host back, saved as JSON next to the node's state."""

    run_dir: str
    bridge: str
    sysctls: dict[str, str]
    owner_pid: int
    created: list[str] = field(default_factory=list)
    """Host paths that did not exist before and that the node's programs create regardless
    of their configuration (the shims' socket dir, the kubelet's device-plugin dir)."""
    pids: dict[str, int] = field(default_factory=dict)
    """Processes this node started (containerd, kubelet, kube-scheduler, ...), by name."""
    enforcer: str | None = None
    """kube-router's path while its firewall runs: its rules and sets are removed on undo."""
    nft_tables: list[str] = field(default_factory=list)
    """The nftables tables before the enforcer started (iptables-nft adds `ip filter`)."""

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: another session may be reading it.
        partial = record_path().with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self), indent=1) + "\n")
        partial.replace(record_path())

    @classmethod
    def load(cls) -> HostRecord | None:
        try:
            return cls(**json.loads(record_path().read_text()))
        except (OSError, ValueError, TypeError):
            return None


def record_path() -> Path:
    """The one node record of this machine (a single real node runs at a time)."""
    return STATE_DIR / "host-record.json"


def read_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def create_bridge(name: str, address: str, prefix: int) -> None:
    """A bridge holding the node's address, up, before containerd and the kubelet start."""
    for argv in (
        ("ip", "link", "add", name, "type", "bridge"),
        ("ip", "addr", "add", f"{address}/{prefix}", "dev", name),
        ("ip", "link", "set", name, "up"),
    ):
        result = _run(*argv)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# Processes the node starts, directly or through containerd (comm is cut at 15 characters).
NODE_COMMANDS = (
    "containerd",
    "containerd-shim",
    "kubelet",
    "kube-scheduler",
    "runc",
    "kube-router",
)


def _ours(pid: int, run_dir: str) -> bool:
    """A node process (by command name) whose command line names our run dir."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        return (
            comm in NODE_COMMANDS
            and (run_dir + "/").encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    except OSError:
        return False


def _pids_using(run_dir: str) -> list[int]:
    """Node processes of our run dir still alive: containerd's shims above all."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _ours(int(entry.name), run_dir)
    ]


def _cgroup_dirs() -> list[Path]:
    """Our cgroup directories in every hierarchy, deepest first."""
    dirs: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for name in CGROUP_NAMES:
            top = hierarchy / name
            if top.is_dir():
                dirs.extend(Path(p) for p, _, _ in os.walk(top))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _pids_in_cgroups() -> list[int]:
    """Container processes: everything inside the kubepods and k8s.io cgroups."""
    pids: set[int] = set()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            pids.update(int(line) for line in (d / "cgroup.procs").read_text().split())
    return sorted(pids)


def _stop(pids: list[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return points


def _unmount_all(prefixes: tuple[str, ...]) -> list[str]:
    """Unmount deepest first, repeating for stacked mounts; lazily when still busy."""
    for _ in range(20):
        points = _mounts_under(prefixes)
        if not points:
            return []
        for point in sorted(set(points), key=len, reverse=True):
            if _run("umount", point).returncode != 0:
                _run("umount", "-l", point)
    return _mounts_under(prefixes)


# kube-router's firewall: its chains and ipsets (its --cleanup-config leaves the per-pod and
# per-policy ones behind).
ENFORCER_CHAINS = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
ENFORCER_SETS = ("KUBE-SRC-", "KUBE-DST-", "kube-router-")


def _enforcer_restore_script(saved: str) -> str:
    """An iptables-restore --noflush script removing the enforcer's jumps and chains."""
    script: list[str] = []
    table, deletes, chains = "", list[str](), list[str]()
    for line in [*saved.splitlines(), "*end"]:
        if line.startswith("*"):
            if table and (deletes or chains):
                script += [f"*{table}", *deletes, *(f"-F {c}" for c in chains)]
                script += [*(f"-X {c}" for c in chains), "COMMIT"]
            table, deletes, chains = line[1:], [], []
        elif line.startswith(":") and line[1:].startswith(ENFORCER_CHAINS):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            chain, target = line.split()[1], line.rpartition(" -j ")[2].split(" ")[0]
            if target.startswith(ENFORCER_CHAINS) and not chain.startswith(ENFORCER_CHAINS):
                deletes.append("-D " + line[3:])
    return "\n".join(script) + "\n" if script else ""


def nft_tables() -> list[str]:
    """The host's nftables tables ("family name"), where iptables-nft keeps its rules."""
    return sorted(
        line.removeprefix("table ") for line in _run("nft", "list", "tables").stdout.splitlines()
    )


def _drop_new_empty_tables(before: list[str]) -> None:
    """Delete the tables iptables-nft created for the enforcer, once no rule is left in them."""
    for table in set(nft_tables()) - set(before):
        listing = _run("nft", "list", "table", *table.split()).stdout.splitlines()
        rules = [
            line
            for line in listing
            if line.strip() and not line.strip().startswith(("table ", "chain ", "type ", "}"))
        ]
        if not rules:
            _run("nft", "delete", "table", *table.split())


def remove_enforcer_rules(kube_router: str, tables_before: list[str]) -> list[str]:
    """Remove every iptables chain and ipset of kube-router's, and the nftables tables made for
    them; returns what is left, if any."""
    _run(kube_router, "--cleanup-config")
    script = _enforcer_restore_script(_run("iptables-save").stdout)
    if script:
        subprocess.run(["iptables-restore", "--noflush"], input=script, text=True, check=False)
    for name in _run("ipset", "list", "-n").stdout.split():
        if name.startswith(ENFORCER_SETS):
            _run("ipset", "destroy", name)
    _drop_new_empty_tables(tables_before)
    saved = _run("iptables-save").stdout
    left = [c for c in ENFORCER_CHAINS if c in saved]
    left += [f"nftables table {t}" for t in set(nft_tables()) - set(tables_before)]
    left += [s for s in _run("ipset", "list", "-n").stdout.split() if s.startswith(ENFORCER_SETS)]
    return [f"enforcer left: {item}" for item in left]


def undo(record: HostRecord) -> list[str]:
    """Put the host back as the record found it; returns what could not be undone."""
    problems: list[str] = []
    # Daemons first (by the PIDs we started), then whatever still runs from our run dir or
    # in our cgroups: container processes and containerd's shims.
    _stop([p for p in record.pids.values() if _ours(p, record.run_dir)], grace=10)
    _stop(_pids_in_cgroups(), grace=0)  # test containers: no graceful shutdown to wait for
    _stop(_pids_using(record.run_dir), grace=5)
    if record.enforcer is not None:
        problems += remove_enforcer_rules(record.enforcer, record.nft_tables)
    left = _unmount_all((record.run_dir, *record.created))
    left += _unmount_all(tuple(str(p) for p in Path("/run/netns").glob("cni-*")))
    problems += [f"still mounted: {m}" for m in left]
    if _run("ip", "link", "show", record.bridge).returncode == 0:
        result = _run("ip", "link", "delete", record.bridge)
        if result.returncode != 0:
            problems.append(f"bridge {record.bridge}: {result.stderr.strip()}")
    for d in _cgroup_dirs():
        try:
            d.rmdir()
        except OSError as error:
            problems.append(f"cgroup {d}: {error}")
    for name, value in record.sysctls.items():
        try:
            path = Path("/proc/sys", name)
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as error:
            problems.append(f"sysctl {name}: {error}")
    for created in record.created:
        shutil.rmtree(created, ignore_errors=True)
    return problems


def claim_node() -> int | None:
    """An exclusive lock on this machine's one real node, held while the returned file
    descriptor stays open (the kernel drops it when its process dies); None when taken."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def node_in_use() -> str | None:
    """Why another real node blocks this one (one per machine), or None."""
    record = HostRecord.load()
    if record is not None and any(_ours(pid, record.run_dir) for pid in record.pids.values()):
        return f"a real node already runs here (started by pid {record.owner_pid})"
    return None


def clean_stale() -> str | None:
    """Undo a node whose owner died without cleaning up; returns what was done, or None.

    Raises RuntimeError when a node of another live process is running."""
    if (busy := node_in_use()) is not None:
        raise RuntimeError(f"{busy}; make cluster-down stops one made by make cluster-up")
    record = HostRecord.load()
    if record is None:
        return None
    problems = undo(record)
    record_path().unlink(missing_ok=True)
    done = f"cleaned up a node left by pid {record.owner_pid} ({record.run_dir})"
    return done + (f"; not undone: {problems}" if problems else "")
