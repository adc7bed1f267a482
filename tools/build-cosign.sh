#!/usr/bin/env bash
# Builds sigstore's cosign (github.com/sigstore/cosign/v2, Apache-2.0) from its Go module
# through the module proxy: the independent verifier of SmartSpec's run attestations. The
# provenance tests run `cosign verify-blob-attestation --key` on a real run's DSSE envelope
# (specs/CORE-005-provenance.md, "Independent verification"). No prebuilt binaries.
#
# Output, outside the repo and keyed by version (binaries are never committed):
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/cosign-vX.Y.Z/cosign
# A build is skipped when the cached binary's `cosign version` reports vX.Y.Z.
#
# COSIGN_VERSION pins the release; it must be one whose go.mod `go` line the local
# toolchain satisfies under GOTOOLCHAIN=local (v2.6.5: go 1.25.0).
#
# Usage: tools/build-cosign.sh [--force] [-q]     (eval "$(tools/build-cosign.sh)")
#   --force  rebuild even when the cached binary is current
#   -q       print nothing on stderr unless something has to be built (used by pytest)
# The last stdout line is `export COSIGN_BIN=.../cosign`. Exit status 3: cosign is not
# cached and there is no Go toolchain to build it.
# Measured on 2 cores: 5 min (297 s, 1,620 packages) after tools/build-testbin.sh had filled
# the module and build caches with the shared k8s.io packages; it adds 1.7 GB of modules and
# a 94 MB binary. 0.05 s when cached.
set -euo pipefail

COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
MODULE=github.com/sigstore/cosign/v2
ROOT="${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}"
FORCE=0 QUIET=0
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-cosign: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done

log() { [ "$QUIET" = 1 ] || printf '[%s] build-cosign: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }

DIR="$ROOT/cosign-$COSIGN_VERSION"
BIN="$DIR/cosign"
mkdir -p "$ROOT"

cosign_ok() { # `cosign version --json` prints {"gitVersion": "v2.6.5", ...}
	[ -x "$BIN" ] && "$BIN" version --json 2>/dev/null | grep -q "\"gitVersion\": *\"$COSIGN_VERSION\""
}

# Serialise concurrent callers (two pytest sessions starting at once).
exec 9>"$ROOT/.cosign.lock"
flock 9 2>/dev/null || true

if [ "$FORCE" = 0 ] && cosign_ok; then
	log "cosign $COSIGN_VERSION cached in $DIR (skip)"
	echo "export COSIGN_BIN=$BIN"
	exit 0
fi

QUIET=0
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$GO" ]; then
	log "ERROR: no Go toolchain found (set GO=/path/to/go); cosign $COSIGN_VERSION needs Go >= 1.25"
	exit 3
fi
# Never let the module's go line download another toolchain: fail loudly instead. Without
# cgo the hardware-token signers (PIV, PKCS#11) are left out; verifying with a key file
# needs neither.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log "$("$GO" version); cache root $ROOT"

start=$(date +%s)
log "checking $MODULE@$COSIGN_VERSION (GOPROXY=$("$GO" env GOPROXY))"
gomod=$(cd "$ROOT" && "$GO" mod download -json "$MODULE@$COSIGN_VERSION" |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("GoMod") or "ERROR " + d.get("Error", "?"))') ||
	die "go mod download $MODULE@$COSIGN_VERSION failed (module proxy reachable?)"
case "$gomod" in ERROR*) die "go mod download: ${gomod#ERROR }" ;; esac
need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
have=$("$GO" env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
	die "cosign $COSIGN_VERSION needs go $need, this toolchain is $have (GOTOOLCHAIN=local); set COSIGN_VERSION"
fi
log "  module go line: go $need (toolchain $have)"

tmp="$DIR.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp"
blog="$tmp/build.log"
# The same version stamp as cosign's release builds, so `cosign version` names the release.
ldf="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
log "building cosign $COSIGN_VERSION (cold caches: several minutes on 2 cores)"
(cd "$ROOT" && GOBIN="$tmp" exec "$GO" install -v -trimpath -ldflags "$ldf" \
	"$MODULE/cmd/cosign@$COSIGN_VERSION") >"$blog" 2>&1 &
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
	cp "$blog" "$ROOT/cosign-build.log"
	die "go install $MODULE/cmd/cosign@$COSIGN_VERSION failed (full log: $ROOT/cosign-build.log)"
fi
log "  compiled in $(($(date +%s) - start)) s ($(wc -l <"$blog") packages built)"
rm -rf "$DIR" && mkdir -p "$DIR" && mv "$tmp/cosign" "$BIN"
cosign_ok || die "built cosign does not report $COSIGN_VERSION: $("$BIN" version 2>&1 | head -5)"
log "cosign: $BIN ($(du -m "$BIN" | cut -f1) MB)"
echo "export COSIGN_BIN=$BIN"
