#!/usr/bin/env bash
# Builds SmartSpec's three images from the project's own Dockerfiles, tagged with the chart's
# appVersion (the tags the chart and the operator's settings name by default):
#   ghcr.io/smartspec/smartspec:V           operator/Dockerfile (operator and gateway)
#   ghcr.io/smartspec/sandbox-generator:V   sandbox-images/generator/Dockerfile
#   ghcr.io/smartspec/sandbox-tester:V      sandbox-images/tester/Dockerfile
# and, only when named, the example agent images (a third party's agent CLI, pinned):
#   ghcr.io/smartspec/example-agent-aider:V examples/agents/aider/Dockerfile
# See specs/TEST-001-control-plane.md, "Images", and sandbox-images/README.md.
#
# Engine: docker where `docker info` works, else podman, else buildah (no daemon needed).
# Base image (the Dockerfiles' BASE_IMAGE build argument), from SMARTSPEC_IMAGE_BASE:
#   upstream  the Dockerfiles' default, python:3.11.11-slim-bookworm from a registry
#             (the default with docker or podman)
#   debian    a Python image made here from Debian packages with mmdebstrap, for machines
#             that reach Debian's mirrors but no container registry (the default with buildah)
#   any other value is used as the base image reference itself.
# RUN steps see the host's /etc/ssl/certs read-only (buildah), so pip trusts a
# TLS-intercepting egress's CA; nothing of it is baked into an image.
#
# With buildah, storage lives under $CACHE/buildah and each image is also written as an OCI
# archive that the real test node imports into containerd:
#   ${SMARTSPEC_IMAGES:-$HOME/.cache/smartspec/images}/{operator,generator,tester}.oci.tar
#   ${SMARTSPEC_IMAGES:-$HOME/.cache/smartspec/images}/images.txt   ("REFERENCE ARCHIVE" lines)
# An image is rebuilt only when its inputs (Dockerfile, base, pyproject.toml,
# constraints.txt, README.md, operator/) changed.
#
# Usage: tools/build-images.sh [--force] [-q] [NAME...]
#   NAME: operator generator tester (the default set), agent-aider
#   --force  rebuild even when the inputs are unchanged (and remake the Debian base)
#   -q       print nothing on stderr unless something has to be built
# The last stdout line is `export SMARTSPEC_IMAGES_LIST=.../images.txt` (buildah), or the
# built references (docker, podman).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${SMARTSPEC_IMAGES:-$HOME/.cache/smartspec/images}"
FORCE=0 QUIET=0 NAMES=""
for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-q | --quiet) QUIET=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	operator | generator | tester | agent-aider) NAMES="$NAMES $arg" ;;
	*) echo "build-images: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done
NAMES="${NAMES:- operator generator tester}"

log() { [ "$QUIET" = 1 ] || printf '[%s] build-images: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { QUIET=0; log "ERROR: $*"; exit 1; }

VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/charts/smartspec/Chart.yaml")
[ -n "$VERSION" ] || die "no appVersion in charts/smartspec/Chart.yaml"
dockerfile() {
	case "$1" in
	operator) echo operator/Dockerfile ;;
	agent-*) echo "examples/agents/${1#agent-}/Dockerfile" ;;
	*) echo "sandbox-images/$1/Dockerfile" ;;
	esac
}
reference() {
	case "$1" in
	operator) echo "ghcr.io/smartspec/smartspec:$VERSION" ;;
	agent-*) echo "ghcr.io/smartspec/example-$1:$VERSION" ;;
	*) echo "ghcr.io/smartspec/sandbox-$1:$VERSION" ;;
	esac
}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
	ENGINE=docker
elif command -v podman >/dev/null; then
	ENGINE=podman
elif command -v buildah >/dev/null; then
	ENGINE=buildah
else
	die "no docker, podman or buildah (tools/build-node.sh installs buildah on Debian)"
fi
BASE="${SMARTSPEC_IMAGE_BASE:-$([ "$ENGINE" = buildah ] && echo debian || echo upstream)}"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 2>/dev/null || true

if [ "$ENGINE" = buildah ]; then
	# Our own store: nothing lands in the user's containers storage, and layers are reused.
	cat >"$CACHE/storage.conf" <<-EOF
		[storage]
		driver = "overlay"
		runroot = "$CACHE/buildah/run"
		graphroot = "$CACHE/buildah/graph"
	EOF
	# Its network settings too: buildah would otherwise create /etc/cni/net.d/cni.lock.
	printf '[network]\nnetwork_config_dir = "%s"\n' "$CACHE/buildah/cni" >"$CACHE/containers.conf"
	export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf" CONTAINERS_CONF="$CACHE/containers.conf"
	# If the script dies mid-build, leave no working container and no mount behind.
	cleanup() {
		buildah rm --all >/dev/null 2>&1 || true
		awk -v p="$CACHE/buildah/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null || true; done
	}
	trap cleanup EXIT
fi

# ---------------------------------------------------------------- the Debian base
DEBIAN_PACKAGES="python3,python3-pip,python-is-python3,ca-certificates,tzdata,netbase"
debian_base() {
	local key ref tar start
	key=$(printf 'bookworm %s v1' "$DEBIAN_PACKAGES" | sha256sum | cut -c1-12)
	ref="localhost/smartspec/python-debian:3.11-bookworm-$key"
	if [ "$FORCE" = 0 ] && buildah inspect --type image "$ref" >/dev/null 2>&1; then
		log "base $ref present (skip)"
		echo "$ref"
		return
	fi
	QUIET=0
	start=$(date +%s)
	tar="$CACHE/rootfs-$key.tar"
	log "making a Debian bookworm root filesystem with mmdebstrap ($DEBIAN_PACKAGES)"
	# The host's own apt sources (same mirror); Debian's PEP 668 marker removed so that pip
	# installs system-wide as it does in the upstream python image.
	mmdebstrap --quiet --variant=apt --format=tar --include="$DEBIAN_PACKAGES" \
		--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
		bookworm "$tar.tmp" /etc/apt/sources.list.d/debian.sources >&2 ||
		die "mmdebstrap failed"
	mv "$tar.tmp" "$tar"
	printf 'FROM scratch\nADD %s /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' "$(basename "$tar")" \
		>"$CACHE/base.Containerfile"
	buildah bud --quiet --isolation chroot --pull=never -f "$CACHE/base.Containerfile" \
		-t "$ref" "$CACHE" >/dev/null || die "building the base image failed"
	rm -f "$tar" "$CACHE/base.Containerfile"
	log "  base $ref in $(($(date +%s) - start)) s"
	echo "$ref"
}

case "$BASE" in
upstream) BASE_REF="" ;;
debian)
	[ "$ENGINE" = buildah ] || die "SMARTSPEC_IMAGE_BASE=debian is supported with buildah only"
	BASE_REF=$(debian_base)
	;;
*) BASE_REF="$BASE" ;;
esac

inputs_hash() { # $1 = image name: everything its build reads, and the base
	(
		cd "$REPO"
		printf '%s\n' "${BASE_REF:-upstream}"
		[ -z "$BASE_REF" ] || [ "$ENGINE" != buildah ] || buildah inspect --type image -f '{{.FromImageID}}' "$BASE_REF"
		case "$1" in
		# An example agent's image holds none of our code: only its own folder counts.
		agent-*) git ls-files -co --exclude-standard -- "$(dirname "$(dockerfile "$1")")" ;;
		*) git ls-files -co --exclude-standard -- "$(dockerfile "$1")" pyproject.toml \
			constraints.txt README.md operator ;;
		esac | sort | xargs -d '\n' sha256sum
	) | sha256sum | cut -c1-16
}

LIST="$CACHE/images.txt"
built=""
for name in $NAMES; do
	ref=$(reference "$name")
	args=(--build-arg "BASE_IMAGE=$BASE_REF")
	[ -n "$BASE_REF" ] || args=()
	case "$ENGINE" in
	docker | podman)
		QUIET=0
		log "$ENGINE build $ref"
		"$ENGINE" build "${args[@]}" -f "$REPO/$(dockerfile "$name")" -t "$ref" "$REPO" >&2
		built="$built $ref"
		;;
	buildah)
		hash=$(inputs_hash "$name")
		archive="$CACHE/$name.oci.tar"
		if [ "$FORCE" = 0 ] && [ -s "$archive" ] && [ "$(cat "$CACHE/$name.inputs" 2>/dev/null)" = "$hash" ]; then
			log "$ref current (inputs $hash; skip)"
			continue
		fi
		QUIET=0
		start=$(date +%s)
		log "buildah bud $ref (inputs $hash)"
		buildah bud --quiet --isolation chroot --pull=never "${args[@]}" \
			-v /etc/ssl/certs:/etc/ssl/certs:ro \
			-f "$REPO/$(dockerfile "$name")" -t "$ref" "$REPO" >/dev/null ||
			die "building $ref failed"
		rm -f "$archive"
		buildah push --quiet "$ref" "oci-archive:$archive.tmp:$ref" && mv "$archive.tmp" "$archive"
		echo "$hash" >"$CACHE/$name.inputs"
		log "  $ref in $(($(date +%s) - start)) s ($(du -m "$archive" | cut -f1) MB archive)"
		;;
	esac
done

if [ "$ENGINE" = buildah ]; then
	# Dangling layers of earlier builds: keep the store from growing without bound.
	buildah rmi --prune >/dev/null 2>&1 || true
	: >"$LIST.tmp"
	for name in operator generator tester agent-aider; do
		[ -s "$CACHE/$name.oci.tar" ] && echo "$(reference "$name") $CACHE/$name.oci.tar" >>"$LIST.tmp"
	done
	mv "$LIST.tmp" "$LIST"
	echo "export SMARTSPEC_IMAGES_LIST=$LIST"
else
	log "built:$built (on kind: kind load docker-image IMAGE; elsewhere push them to your registry)"
	echo "$built"
fi
