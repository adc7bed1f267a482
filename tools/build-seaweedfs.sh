#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (github.com/seaweedfs/seaweedfs, Apache-2.0): the S3 server the
# integration tests and the local demo run (`weed mini`), from its Go module through the
# module proxy: no Docker, no prebuilt binaries. See specs/TEST-001-control-plane.md, "S3".
#
# `go install module@version` refuses modules whose go.mod has replace directives, and this
# one has, so the script builds ./weed inside a writable copy of the downloaded module, where
# the module is the main module and its replaces apply.
#
# Output, outside the repo and keyed by version (binaries are never committed):
#   ${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}/seaweedfs-<version>/weed
# A build is skipped when the cached binary's `weed version` names the pinned commit.
#
# SEAWEEDFS_VERSION pins the module version. SeaweedFS's release tags are not semver, so the
# proxy offers pseudo-versions only; the commit stamped into the binary is the one the
# pseudo-version names.
#
# Usage: tools/build-seaweedfs.sh [--force] [-q]     (eval "$(tools/build-seaweedfs.sh)")
#   --force  rebuild even when the cached binary is current
#   -q       print nothing on stderr unless something has to be built (used by pytest)
# The last stdout line is `export SEAWEEDFS_BIN=.../weed`.
set -euo pipefail

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
MODULE=github.com/seaweedfs/seaweedfs
ROOT="${SMARTSPEC_TESTBIN:-$HOME/.cache/smartspec/testbin}"
FORCE=0 QUIET=0
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-seaweedfs: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done

log() { [ "$QUIET" = 1 ] || printf '[%s] build-seaweedfs: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }

COMMIT="${SEAWEEDFS_VERSION##*-}"
case "$COMMIT" in
[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
*) die "SEAWEEDFS_VERSION=$SEAWEEDFS_VERSION is not a pseudo-version ending in a 12-digit commit" ;;
esac
DIR="$ROOT/seaweedfs-$SEAWEEDFS_VERSION"
BIN="$DIR/weed"
mkdir -p "$ROOT"

weed_ok() { # `weed version` prints "version 30GB 4.53 <commit> linux amd64"
	[ -x "$BIN" ] && "$BIN" version 2>/dev/null | grep -q " $COMMIT "
}

# Serialise concurrent callers (two pytest sessions starting at once).
exec 9>"$ROOT/.seaweedfs.lock"
flock 9 2>/dev/null || true

if [ "$FORCE" = 0 ] && weed_ok; then
	log "seaweedfs $SEAWEEDFS_VERSION cached in $DIR (skip)"
	echo "export SEAWEEDFS_BIN=$BIN"
	exit 0
fi

QUIET=0
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || die "no Go toolchain found (set GO=/path/to/go); SeaweedFS needs Go >= 1.26"
# Never let the module's go line download another toolchain: fail loudly instead.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log "$("$GO" version); cache root $ROOT"

start=$(date +%s)
log "downloading $MODULE@$SEAWEEDFS_VERSION (GOPROXY=$("$GO" env GOPROXY))"
moddir=$(cd "$ROOT" && "$GO" mod download -json "$MODULE@$SEAWEEDFS_VERSION" |
	python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or "ERROR " + d.get("Error", "?"))') ||
	die "go mod download $MODULE@$SEAWEEDFS_VERSION failed (module proxy reachable?)"
case "$moddir" in ERROR*) die "go mod download: ${moddir#ERROR }" ;; esac
need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$moddir/go.mod")
have=$("$GO" env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
	die "seaweedfs $SEAWEEDFS_VERSION needs go $need, this toolchain is $have (GOTOOLCHAIN=local)"
fi
log "  module go line: go $need (toolchain $have)"

tmp="$DIR.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp"
# The module cache is read-only; the build works in a copy, removed afterwards.
cp -r "$moddir" "$tmp/src" && chmod -R u+w "$tmp/src"
blog="$tmp/build.log"
log "building weed (cold caches: several minutes on 2 cores)"
(cd "$tmp/src" && exec "$GO" build -v -trimpath -o "$tmp/weed" \
	-ldflags "-s -w -X $MODULE/weed/util/version.COMMIT=$COMMIT" ./weed) >"$blog" 2>&1 &
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
	cp "$blog" "$ROOT/seaweedfs-build.log"
	die "go build ./weed failed (full log: $ROOT/seaweedfs-build.log)"
fi
log "  compiled in $(($(date +%s) - start)) s ($(wc -l <"$blog") packages built)"
rm -rf "$DIR" && mkdir -p "$DIR" && mv "$tmp/weed" "$BIN"
weed_ok || die "built weed does not report commit $COMMIT: $("$BIN" version 2>&1)"
log "weed: $BIN ($(du -m "$BIN" | cut -f1) MB)"
echo "export SEAWEEDFS_BIN=$BIN"
