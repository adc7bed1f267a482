#!/usr/bin/env bash
# Builds the helm v3 CLI from its Go module (helm.sh/helm/v3) through the module proxy: no
# prebuilt binaries, no Docker. The chart tests (tests/unit/test_chart.py) use it for
# `helm lint` and `helm template`.
#
# Output, outside the repo and keyed by version (binaries are never committed):
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/helm-vX.Y.Z/helm
# A build is skipped when the cached binary's `helm version --short` reports vX.Y.Z.
#
# HELM_VERSION pins the release; it must be one whose go.mod `go` line the local toolchain
# satisfies under GOTOOLCHAIN=local (v3.22.0: go 1.26.0).
#
# Usage: tools/build-helm.sh [--force] [-q]     (eval "$(tools/build-helm.sh)")
#   --force  rebuild even when the cached binary is current
#   -q       print nothing on stderr unless something has to be built (used by pytest)
# The last stdout line is `export HELM_BIN=.../helm`. Exit status 3: helm is not cached and
# there is no Go toolchain to build it (the chart tests skip on it).
# Measured on 2 cores: ~2 min with empty module and build caches, ~70 s after
# tools/build-testbin.sh (shared k8s.io packages cached), 0.1 s when cached.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
ROOT="${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}"
FORCE=0 QUIET=0
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-helm: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done

log() { [ "$QUIET" = 1 ] || printf '[%s] build-helm: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }

DIR="$ROOT/helm-$HELM_VERSION"
BIN="$DIR/helm"
mkdir -p "$ROOT"

helm_ok() {
	[ -x "$BIN" ] && [ "$("$BIN" version --short 2>/dev/null | cut -d+ -f1)" = "$HELM_VERSION" ]
}

# Serialise concurrent callers (two pytest sessions starting at once).
exec 9>"$ROOT/.helm.lock"
flock 9 2>/dev/null || true

if [ "$FORCE" = 0 ] && helm_ok; then
	log "helm $HELM_VERSION cached in $DIR (skip)"
	echo "export HELM_BIN=$BIN"
	exit 0
fi

QUIET=0
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$GO" ]; then
	log "ERROR: no Go toolchain found (set GO=/path/to/go); helm $HELM_VERSION needs Go >= 1.26"
	exit 3
fi
# Never let the module's go line download another toolchain: fail loudly instead.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log "$("$GO" version); cache root $ROOT"

start=$(date +%s)
log "checking helm.sh/helm/v3@$HELM_VERSION (GOPROXY=$("$GO" env GOPROXY))"
gomod=$(cd "$ROOT" && "$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or "ERROR " + d.get("Error", "?"))') ||
	die "go mod download helm.sh/helm/v3@$HELM_VERSION failed (module proxy reachable?)"
case "$gomod" in ERROR*) die "go mod download: ${gomod#ERROR }" ;; esac
need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
have=$("$GO" env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
	die "helm $HELM_VERSION needs go $need, this toolchain is $have (GOTOOLCHAIN=local); set HELM_VERSION"
fi
log "  module go line: go $need (toolchain $have)"

tmp="$DIR.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp"
blog="$tmp/build.log"
# Same stamps as helm's Makefile: `helm version --short` reports the release, and the
# default Kubernetes version (.Capabilities.KubeVersion, lint's deprecation checks) follows
# the client-go it is built with (v0.37.x -> 1.37) instead of a stale built-in default.
kminor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -1)
[ -n "$kminor" ] || die "cannot find k8s.io/client-go in $gomod"
ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldf="$ldf -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
done
log "building helm $HELM_VERSION (cold caches: ~2 min on 2 cores)"
(cd "$ROOT" && GOBIN="$tmp" exec "$GO" install -v -trimpath -ldflags "$ldf" \
	"helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >"$blog" 2>&1 &
pid=$!
next=$((start + 30))
while kill -0 "$pid" 2>/dev/null; do
	sleep 1
	if [ "$(date +%s)" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
		next=$((next + 30))
		log "  ... still compiling ($(($(date +%s) - start)) s, $(wc -l <"$blog") packages so far)"
	fi
done
if ! wait "$pid"; then
	tail -40 "$blog" >&2
	die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (full log: $blog)"
fi
log "  compiled in $(($(date +%s) - start)) s ($(wc -l <"$blog") packages built)"
rm -rf "$DIR" && mv "$tmp" "$DIR"
helm_ok || die "built helm does not report $HELM_VERSION: $("$BIN" version --short 2>&1)"
log "helm: $BIN ($(du -m "$BIN" | cut -f1) MB)"
echo "export HELM_BIN=$BIN"
