"""Configuration files of the real test node, as pure functions of its paths and addresses.

containerd (config version 3, containerd 2.x), the CNI network and the kubelet's
KubeletConfiguration. Every path lives in the node's run directory, so nothing is written
to the host's /etc, /var/lib or /opt; the host-level facts behind each setting are in
specs/TEST-001-control-plane.md, "Real node" (and ../shared/REAL-NODE.md).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NO_REGISTRY_HOSTS_TOML",
    "NodeLayout",
    "cni_config",
    "containerd_config",
    "kubelet_config",
]


@dataclass(frozen=True)
class NodeLayout:
    """Where everything of one node lives, and its network."""

    run_dir: Path
    name: str
    bridge: str
    subnet: str
    """The pods' IPv4 subnet; the bridge holds its first address."""

    @property
    def address(self) -> str:
        """The bridge's address: the node's InternalIP, where pods reach host services."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def containerd_dir(self) -> Path:
        return self.run_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.run_dir / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        """host-local's address leases (by default in /var/lib/cni)."""
        return self.run_dir / "cni" / "networks"

    @property
    def registry_dir(self) -> Path:
        """containerd's hosts.toml tree (`_default` applies to every registry)."""
        return self.run_dir / "registries"

    @property
    def kubelet_dir(self) -> Path:
        return self.run_dir / "kubelet"

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "node-pki"


def containerd_config(layout: NodeLayout, *, runc: str, cni_bin_dir: str, pause_image: str) -> str:
    """containerd 2.x's config.toml (version 3)."""
    d = layout.containerd_dir
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    values: list[tuple[str, dict[str, Any]]] = [
        (
            "",
            {
                "version": 3,
                "root": str(d / "root"),
                "state": str(d / "state"),
                # opt would create /opt/containerd; NRI would open /var/run/nri and read
                # /etc/nri. The node needs neither.
                "disabled_plugins": ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"],
            },
        ),
        ("grpc", {"address": str(layout.containerd_socket)}),
        ("ttrpc", {"address": f"{layout.containerd_socket}.ttrpc"}),
        (
            "plugins.'io.containerd.cri.v1.images'",
            {"snapshotter": "overlayfs"},
        ),
        # Every registry resolves to a closed loopback port: an image that was not imported
        # fails to pull (ErrImagePull) without a packet leaving the machine.
        (
            "plugins.'io.containerd.cri.v1.images'.registry",
            {"config_path": str(layout.registry_dir)},
        ),
        # The pod sandbox image is imported from an archive: there is no registry to pull from.
        ("plugins.'io.containerd.cri.v1.images'.pinned_images", {"sandbox": pause_image}),
        (
            cri_runtime,
            {
                # The host's root lacks CAP_SYS_RESOURCE: without this runc fails every pod
                # sandbox writing a negative oom_score_adj.
                "restrict_oom_score_adj": True,
                # Pod network namespaces under the run dir instead of /run/netns.
                "netns_mounts_under_state_dir": True,
            },
        ),
        (f"{cri_runtime}.containerd", {"default_runtime_name": "runc"}),
        (
            f"{cri_runtime}.containerd.runtimes.runc",
            {"runtime_type": "io.containerd.runc.v2"},
        ),
        (
            f"{cri_runtime}.containerd.runtimes.runc.options",
            # runc's state under the run dir instead of /run/containerd/runc.
            {"BinaryName": runc, "SystemdCgroup": False, "Root": str(d / "runc")},
        ),
        (
            f"{cri_runtime}.cni",
            {"bin_dirs": [cni_bin_dir], "conf_dir": str(layout.cni_conf_dir), "max_conf_num": 1},
        ),
        # exec/attach/port-forward streams are served on loopback only.
        (
            "plugins.'io.containerd.grpc.v1.cri'",
            {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
        ),
    ]
    lines: list[str] = []
    for table, entries in values:
        if table:
            lines.append(f"\n[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in entries.items())
    return "\n".join(lines).lstrip() + "\n"


NO_REGISTRY_HOSTS_TOML = 'server = "http://127.0.0.1:1"\ncapabilities = ["pull", "resolve"]\n'
"""`_default/hosts.toml`: no registry is reachable from the test node, by construction."""


def cni_config(layout: NodeLayout) -> dict[str, Any]:
    """A bridge network with no gateway, no forwarding and no NAT.

    `isGateway` would make the bridge plugin switch on `ip_forward`, and `ipMasq` would add
    masquerade rules: pods get only their on-link route, so they reach each other and the
    host's services on the bridge address, and nothing beyond.
    """
    return {
        "cniVersion": "1.0.0",
        "name": "smartspec",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": False,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.subnet, "gateway": layout.address}]],
                    "dataDir": str(layout.cni_data_dir),
                },
            }
        ],
    }


def kubelet_config(layout: NodeLayout, *, ca_file: Path, max_pods: int = 40) -> dict[str, Any]:
    """KubeletConfiguration v1beta1 for a node that changes as little of the host as it can."""
    pki = layout.pki_dir
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The host has cgroup v1 only; kubelet 1.35 refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.address,
        "port": 10250,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        # No cluster DNS runs: pods get no resolv.conf from the host.
        "resolvConf": "",
        "podLogsDir": str(layout.run_dir / "pod-logs"),
        "volumePluginDir": str(layout.run_dir / "volume-plugins"),
        # Nothing in the host's iptables, no certificate rotation.
        "makeIPTablesUtilChains": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "maxPods": max_pods,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "4s",
        "imageGCHighThresholdPercent": 100,
        "imageMinimumGCAge": "24h",
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%"},
        "evictionPressureTransitionPeriod": "30s",
        "shutdownGracePeriod": "0s",
        "localStorageCapacityIsolation": True,
    }
