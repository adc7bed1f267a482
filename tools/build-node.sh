#!/usr/bin/env bash
# Installs and builds what the real test node needs besides kubelet and kube-scheduler (those
# come from tools/build-testbin.sh): a container runtime, the OCI runtime, CNI plugins, the
# image builder and the pod sandbox ("pause") image. No Docker, no registry, no prebuilt
# binaries. See specs/TEST-001-control-plane.md, "Real node".
#
#   Debian packages, installed with apt-get when missing (root only):
#     runc, containernetworking-plugins (bridge, host-local, loopback), buildah, mmdebstrap,
#     iptables, ipset and nftables (the NetworkPolicy enforcer below, and removing its tables)
#   containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2), built with
#     `go install` from the module proxy: Kubernetes 1.35 is the last release that supports
#     containerd 1.x, and Debian 12's 1.6.20 is past containerd's end of life (2025-08-23)
#   the pause image, compiled from upstream's build/pause/linux/pause.c inside the
#     k8s.io/kubernetes module that tools/build-testbin.sh downloaded, and packed by buildah
#   kube-router $KUBE_ROUTER_VERSION, whose firewall alone (no router, no service proxy) is the
#     NetworkPolicy enforcer of the egress tests: iptables + ipset, which kernels without
#     NFT_QUEUE still have (the newest version the module proxy serves here)
#
# Output, outside the repo and keyed by version:
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/containerd-vX.Y.Z/{containerd,ctr,containerd-shim-runc-v2}
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/pause-k8s-vX.Y.Z/pause.oci.tar
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/kube-router-vX.Y.Z/kube-router
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/node.env   (CONTAINERD_DIR=..., PAUSE_IMAGE=...)
# Each step is skipped when its output is current.
#
# A machine that cannot run a node (not Linux, not root, or no apt-get for missing
# packages) is not an error: the script says why, removes node.env and exits 0; the tests
# then use the fake local node (tests/testcluster/localnode.py) and say so.
#
# Usage: tools/build-node.sh [--force] [-q]
#   --force  rebuild containerd and the pause image even when they are current
#   -q       print nothing on stderr unless something has to be installed or built
# The last stdout line is `export SMARTSPEC_NODE_ENV=.../node.env`, or `# no real node: WHY`.
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
PACKAGES="runc containernetworking-plugins buildah mmdebstrap iptables ipset nftables"
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT="${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}"
FORCE=0 QUIET=0
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-node: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done

log() { [ "$QUIET" = 1 ] || printf '[%s] build-node: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }
no_node() { # the machine cannot run a real node: not an error
	QUIET=0
	log "no real node on this machine: $*; the integration tests will use the fake local node"
	rm -f "$ROOT/node.env"
	echo "# no real node: $*"
	exit 0
}

mkdir -p "$ROOT"
exec 9>"$ROOT/.node.lock"
flock 9 2>/dev/null || true

[ "$(uname -s)" = Linux ] || no_node "not Linux"
[ "$(id -u)" = 0 ] || no_node "not root (a kubelet, mounts and a bridge need root)"

# ---------------------------------------------------------------- Debian packages
missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	command -v apt-get >/dev/null || no_node "packages missing ($missing) and no apt-get"
	QUIET=0
	start=$(date +%s)
	log "apt-get install$missing"
	# No service starts on install where there is no init system; where there is one,
	# policy-rc.d keeps packages from starting daemons we do not want running.
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 ||
		die "apt-get install$missing failed"
	log "  installed in $(($(date +%s) - start)) s"
fi
RUNC=$(command -v runc) || die "runc not on PATH after install"
CNI_DIR=/usr/lib/cni
[ -x "$CNI_DIR/bridge" ] && [ -x "$CNI_DIR/host-local" ] || die "CNI plugins missing in $CNI_DIR"

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || die "no Go toolchain found (set GO=/path/to/go)"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# ---------------------------------------------------------------- containerd
CTR_DIR="$ROOT/containerd-$CONTAINERD_VERSION"
containerd_ok() {
	[ -x "$CTR_DIR/ctr" ] && [ -x "$CTR_DIR/containerd-shim-runc-v2" ] &&
		"$CTR_DIR/containerd" --version 2>/dev/null | grep -q " $CONTAINERD_VERSION "
}
if [ "$FORCE" = 0 ] && containerd_ok; then
	log "containerd $CONTAINERD_VERSION cached in $CTR_DIR (skip)"
else
	QUIET=0
	start=$(date +%s)
	mod=github.com/containerd/containerd/v2
	tmp="$CTR_DIR.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "building containerd $CONTAINERD_VERSION (go install; ~1.5 min on 2 cores)"
	# no_btrfs: the btrfs snapshotter needs cgo. The others are drivers the node never uses.
	(cd "$ROOT" && GOBIN="$tmp" "$GO" install -trimpath \
		-tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs osusergo netgo" \
		-ldflags "-s -w -X $mod/version.Version=$CONTAINERD_VERSION -X $mod/version.Revision=module-proxy" \
		"$mod/cmd/containerd@$CONTAINERD_VERSION" "$mod/cmd/ctr@$CONTAINERD_VERSION" \
		"$mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION") >"$tmp/build.log" 2>&1 || {
		tail -30 "$tmp/build.log" >&2
		die "go install containerd $CONTAINERD_VERSION failed (full log: $tmp/build.log)"
	}
	rm -rf "$CTR_DIR" && mv "$tmp" "$CTR_DIR"
	containerd_ok || die "built containerd does not report $CONTAINERD_VERSION"
	log "  built in $(($(date +%s) - start)) s"
fi

# ---------------------------------------------------------------- pause image
K8S_V=$("$GO" mod edit -json "$REPO/tools/k8s-testbin/go.mod" | python3 -c '
import json, sys
print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"] == "k8s.io/kubernetes"))')
PAUSE_DIR="$ROOT/pause-k8s-$K8S_V"
PAUSE_IMAGE="localhost/smartspec/pause:k8s-$K8S_V"
if [ "$FORCE" = 0 ] && [ -s "$PAUSE_DIR/pause.oci.tar" ]; then
	log "pause image cached in $PAUSE_DIR (skip)"
else
	QUIET=0
	KDIR=$(cd "$REPO/tools/k8s-testbin" && "$GO" list -m -f '{{.Dir}}' k8s.io/kubernetes 2>/dev/null) ||
		die "k8s.io/kubernetes $K8S_V is not in GOMODCACHE: run tools/build-testbin.sh first"
	src="$KDIR/build/pause/linux/pause.c"
	[ -f "$src" ] || die "$src not found"
	command -v gcc >/dev/null || die "gcc is needed to compile $src"
	tmp="$PAUSE_DIR.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp/rootfs" "$tmp/storage"
	# Same flags as upstream's build/pause/Makefile.
	gcc -Os -Wall -Werror -static -DVERSION="$K8S_V-smartspec" -o "$tmp/rootfs/pause" "$src" ||
		die "gcc failed on $src"
	# A throw-away buildah store with the vfs driver: no mounts are left behind.
	cat >"$tmp/storage.conf" <<-EOF
		[storage]
		driver = "vfs"
		runroot = "$tmp/storage/run"
		graphroot = "$tmp/storage/graph"
	EOF
	# Its network settings too: buildah would otherwise create /etc/cni/net.d/cni.lock.
	printf '[network]\nnetwork_config_dir = "%s"\n' "$tmp/cni" >"$tmp/containers.conf"
	export CONTAINERS_STORAGE_CONF="$tmp/storage.conf" CONTAINERS_CONF="$tmp/containers.conf"
	ctr=$(buildah from scratch)
	buildah copy "$ctr" "$tmp/rootfs/pause" /pause >/dev/null
	buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
	buildah commit --quiet "$ctr" "$PAUSE_IMAGE" >/dev/null
	buildah push --quiet "$PAUSE_IMAGE" "oci-archive:$tmp/pause.oci.tar:$PAUSE_IMAGE"
	buildah rm "$ctr" >/dev/null
	unset CONTAINERS_STORAGE_CONF CONTAINERS_CONF
	rm -rf "$tmp/storage" "$tmp/storage.conf" "$tmp/containers.conf" "$tmp/cni" "$tmp/rootfs"
	rm -rf "$PAUSE_DIR" && mv "$tmp" "$PAUSE_DIR"
	log "pause image $PAUSE_IMAGE: $PAUSE_DIR/pause.oci.tar"
fi

# ---------------------------------------------------------------- kube-router
KR_DIR="$ROOT/kube-router-$KUBE_ROUTER_VERSION"
# It prints its version on stderr.
if [ "$FORCE" = 0 ] && [ -x "$KR_DIR/kube-router" ] && "$KR_DIR/kube-router" --version 2>&1 | grep -q " $KUBE_ROUTER_VERSION,"; then
	log "kube-router $KUBE_ROUTER_VERSION cached in $KR_DIR (skip)"
else
	QUIET=0
	start=$(date +%s)
	mod=github.com/cloudnativelabs/kube-router/v2
	tmp="$KR_DIR.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "building kube-router $KUBE_ROUTER_VERSION (go install; ~1.5 min on 2 cores)"
	(cd "$ROOT" && GOBIN="$tmp" "$GO" install -trimpath \
		-ldflags "-s -w -X $mod/pkg/version.Version=$KUBE_ROUTER_VERSION" \
		"$mod/cmd/kube-router@$KUBE_ROUTER_VERSION") >"$tmp/build.log" 2>&1 || {
		tail -30 "$tmp/build.log" >&2
		die "go install kube-router $KUBE_ROUTER_VERSION failed (full log: $tmp/build.log)"
	}
	rm -rf "$KR_DIR" && mv "$tmp" "$KR_DIR"
	log "  built in $(($(date +%s) - start)) s"
fi

cat >"$ROOT/node.env" <<EOF
CONTAINERD_DIR=$CTR_DIR
RUNC=$RUNC
CNI_BIN_DIR=$CNI_DIR
PAUSE_IMAGE=$PAUSE_IMAGE
PAUSE_ARCHIVE=$PAUSE_DIR/pause.oci.tar
KUBE_ROUTER=$KR_DIR/kube-router
EOF
log "env file: $ROOT/node.env"
echo "export SMARTSPEC_NODE_ENV=$ROOT/node.env"
