#!/usr/bin/env bash
# Builds the real Kubernetes binaries the integration tests run as local processes:
# etcd (go.etcd.io/etcd/server/v3); kube-apiserver, kube-controller-manager, and for the real
# test node kube-scheduler, kubelet and kubectl (k8s.io/kubernetes), from Go modules through
# the module proxy: no Docker, no downloads of prebuilt binaries. See
# specs/TEST-001-control-plane.md.
#
# Versions come from the helper modules (single source of truth):
#   tools/k8s-testbin/go.mod   require k8s.io/kubernetes vX.Y.Z   (regenerate with gen.sh)
#   tools/etcd-testbin/go.mod  require go.etcd.io/etcd/server/v3 vA.B.C
#
# Output, outside the repo and keyed by version (binaries are never committed):
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/k8s-vX.Y.Z/{kube-apiserver,kube-controller-manager,
#                                                                    kube-scheduler,kubelet,kubectl}
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/etcd-vA.B.C/etcd
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/testbin.env   (K8S_TESTBIN=..., ETCD_TESTBIN=...)
# A build is skipped when the cached binaries answer the expected `--version`.
#
# Usage: tools/build-testbin.sh [--force] [-q]     (eval "$(tools/build-testbin.sh)")
#   --force  rebuild even when the cached binaries are current
#   -q       print nothing on stderr unless something has to be built (used by pytest)
# stdout is a single `export K8S_TESTBIN=... ETCD_TESTBIN=...` line.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT="${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}"
FORCE=0 QUIET=0
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-testbin: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done

# Skip-path messages stay quiet with -q; a build always reports progress (it takes minutes).
log() { [ "$QUIET" = 1 ] || printf '[%s] build-testbin: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || die "no Go toolchain found (set GO=/path/to/go); Go >= 1.26 is needed (tools/etcd-testbin/go.mod: go 1.26.0)"
# Never let a dependency's go line download another toolchain: fail loudly instead.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

modversion() { # <helper dir> <module path> -> version required by that helper module
	"$GO" mod edit -json "$1/go.mod" | python3 -c '
import json, sys
want = sys.argv[1]
for r in json.load(sys.stdin).get("Require") or []:
    if r["Path"] == want:
        print(r["Version"]); break' "$2"
}
K8S_V=$(modversion "$REPO/tools/k8s-testbin" k8s.io/kubernetes)
ETCD_V=$(modversion "$REPO/tools/etcd-testbin" go.etcd.io/etcd/server/v3)
[ -n "$K8S_V" ] || die "tools/k8s-testbin/go.mod does not require k8s.io/kubernetes (run gen.sh)"
[ -n "$ETCD_V" ] || die "tools/etcd-testbin/go.mod does not require go.etcd.io/etcd/server/v3"
K8S_DIR="$ROOT/k8s-$K8S_V"
ETCD_DIR="$ROOT/etcd-$ETCD_V"
mkdir -p "$ROOT"

# Serialise concurrent callers (two pytest sessions starting at once).
exec 9>"$ROOT/.lock"
flock 9 2>/dev/null || true

K8S_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet"
k8s_ok() {
	local b
	for b in $K8S_CMDS; do
		[ -x "$K8S_DIR/$b" ] || return 1
		[ "$("$K8S_DIR/$b" --version 2>/dev/null)" = "Kubernetes $K8S_V" ] || return 1
	done
	[ -x "$K8S_DIR/kubectl" ] &&
		"$K8S_DIR/kubectl" version --client -o json 2>/dev/null | grep -q "\"gitVersion\": \"$K8S_V\""
}
etcd_ok() {
	[ -x "$ETCD_DIR/etcd" ] &&
		"$ETCD_DIR/etcd" --version 2>/dev/null | head -1 | grep -qx "etcd Version: ${ETCD_V#v}"
}

# Runs `go build` with -v into a log, printing a heartbeat so a 10+ minute cold build
# does not look hung. $1 = helper dir, $2 = log file, rest = go build args.
build() {
	local dir=$1 blog=$2 start pid n next
	shift 2
	start=$(date +%s)
	(cd "$dir" && exec "$GO" build -v -trimpath "$@") >"$blog" 2>&1 &
	pid=$!
	next=$((start + 30))
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if [ "$(date +%s)" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
			next=$((next + 30))
			n=$(wc -l <"$blog")
			log "  ... still compiling ($(($(date +%s) - start)) s, $n packages so far)"
		fi
	done
	if ! wait "$pid"; then
		tail -40 "$blog" >&2
		die "go build failed in $dir (full log: $blog)"
	fi
	log "  compiled in $(($(date +%s) - start)) s ($(wc -l <"$blog") packages built)"
}

download() { # $1 = helper dir
	local start
	start=$(date +%s)
	log "go mod download in ${1#"$REPO"/} (GOMODCACHE=$("$GO" env GOMODCACHE))"
	(cd "$1" && "$GO" mod download) || die "go mod download failed in $1 (module proxy reachable? GOPROXY=$("$GO" env GOPROXY))"
	log "  downloaded in $(($(date +%s) - start)) s"
}

log "$("$GO" version); cache root $ROOT"
log "wanted: kubernetes $K8S_V, etcd $ETCD_V"

if [ "$FORCE" = 0 ] && etcd_ok; then
	log "etcd $ETCD_V cached in $ETCD_DIR (skip)"
else
	QUIET=0
	download "$REPO/tools/etcd-testbin"
	tmp="$ETCD_DIR.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	# etcd hard-codes its version number; only the git SHA is stamped by its Makefile.
	log "building etcd $ETCD_V"
	build "$REPO/tools/etcd-testbin" "$tmp/build.log" \
		-ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_V" \
		-o "$tmp/etcd" go.etcd.io/etcd/server/v3
	rm -rf "$ETCD_DIR" && mv "$tmp" "$ETCD_DIR"
	etcd_ok || die "built etcd does not report version ${ETCD_V#v}: $("$ETCD_DIR/etcd" --version 2>&1 | head -1)"
fi

if [ "$FORCE" = 0 ] && k8s_ok; then
	log "kubernetes $K8S_V cached in $K8S_DIR (skip)"
else
	QUIET=0
	download "$REPO/tools/k8s-testbin"
	minor=$(echo "${K8S_V#v}" | cut -d. -f2)
	# Same stamps as upstream's hack/lib/version.sh, so `--version` and /version report the
	# real release (the skip check above and kubectl/kopf version checks rely on it).
	x() { local p; for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		printf -- "-X '%s.%s=%s' " "$p" "$1" "$2"; done; }
	ldf="-s -w $(x gitVersion "$K8S_V") $(x gitMajor 1) $(x gitMinor "$minor") $(x gitTreeState clean) $(x buildDate 1970-01-01T00:00:00Z)"
	tmp="$K8S_DIR.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp"
	log "building $K8S_CMDS kubectl $K8S_V (cold GOCACHE: ~5-6 min on 2 cores)"
	# One `go build`: the five commands share most packages, so this is one compile of them.
	build "$REPO/tools/k8s-testbin" "$tmp/build.log" -ldflags "$ldf" -o "$tmp/" \
		$(for b in $K8S_CMDS kubectl; do printf 'k8s.io/kubernetes/cmd/%s ' "$b"; done)
	rm -rf "$K8S_DIR" && mv "$tmp" "$K8S_DIR"
	k8s_ok || die "built binaries do not report Kubernetes $K8S_V: $("$K8S_DIR/kube-apiserver" --version 2>&1)"
fi

printf 'K8S_TESTBIN=%s\nETCD_TESTBIN=%s\n' "$K8S_DIR" "$ETCD_DIR" >"$ROOT/testbin.env"
log "binaries: $(cd "$ROOT" && ls -l "k8s-$K8S_V"/kube* "etcd-$ETCD_V"/etcd | awk '{printf "%s %dMB; ", $NF, $5/1048576}')"
log "env file: $ROOT/testbin.env"
echo "export K8S_TESTBIN=$K8S_DIR ETCD_TESTBIN=$ETCD_DIR"
