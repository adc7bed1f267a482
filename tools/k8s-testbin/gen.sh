#!/usr/bin/env bash
# Regenerates go.mod/go.sum of this helper module for one Kubernetes release.
#
#   K8S_VERSION=1.35.4 tools/k8s-testbin/gen.sh
#
# Why a helper module: k8s.io/kubernetes requires its staging modules (k8s.io/api,
# k8s.io/apiserver, ...) at the non-existent version v0.0.0 and maps them to ./staging/
# with replace directives, which Go ignores in a dependency; `go install ...@v1.x` is
# refused for the same reason. This script reads the tag's own go.mod through the module
# proxy and turns every `k8s.io/<m> => ./staging/...` replace into
# `k8s.io/<m> => k8s.io/<m> v0.<minor>.<patch>` (the published staging tag), so the list
# is never hard-coded. See specs/TEST-001-control-plane.md.
set -euo pipefail
V="${K8S_VERSION:?set K8S_VERSION, e.g. 1.35.4}"
V="${V#v}"
STAGING="v0.${V#1.}"                                   # 1.35.4 -> v0.35.4
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
go=${GO:-go}

echo "gen.sh: k8s.io/kubernetes v${V}, staging modules at ${STAGING}" >&2
rm -f go.mod go.sum
"$go" mod init example.invalid/k8s-testbin >/dev/null 2>&1
KMOD=$("$go" mod download -json "k8s.io/kubernetes@v${V}" |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')

# Keep upstream's go line and godebug settings: the binaries then get the same GODEBUG
# defaults as the official release (a main module at go 1.26 would switch on newer ones).
read -r GOLINE GODEBUGS < <("$go" mod edit -json "$KMOD" | python3 -c '
import json, sys
d = json.load(sys.stdin)
gd = ",".join(g["Key"] + "=" + g["Value"] for g in d.get("Godebug") or [])
if not gd:
    gd = "default=go" + ".".join(d["Go"].split(".")[:2])
print(d["Go"], gd)')
"$go" mod edit -go="$GOLINE"
IFS=, read -ra GDS <<<"$GODEBUGS"
for g in "${GDS[@]}"; do "$go" mod edit -godebug="$g"; done

"$go" mod edit -json "$KMOD" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for r in d.get("Replace") or []:
    old, new = r["Old"]["Path"], r["New"]["Path"]
    if new.startswith("./staging/"):
        print("STAGING", old)
    else:
        print("OTHER", old, "=>", new, r["New"].get("Version", ""))' |
while read -r kind m rest; do
	if [ "$kind" = STAGING ]; then
		"$go" mod edit -replace="$m=$m@${STAGING}"
	else
		# Upstream has none today; if one appears it must be mirrored by hand.
		echo "gen.sh: WARNING: non-staging replace in upstream go.mod: $m $rest" >&2
	fi
done

# Control plane, plus the node (kubelet, kube-scheduler) and kubectl for the real test node.
"$go" get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v${V}" \
	"k8s.io/kubernetes/cmd/kube-controller-manager@v${V}" \
	"k8s.io/kubernetes/cmd/kube-scheduler@v${V}" \
	"k8s.io/kubernetes/cmd/kubelet@v${V}" \
	"k8s.io/kubernetes/cmd/kubectl@v${V}"
"$go" mod tidy
# `go get`/`tidy` may raise the go line if a dependency needs it; say so loudly.
NOW=$("$go" mod edit -json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Go"])')
if [ "$NOW" != "$GOLINE" ]; then
	echo "gen.sh: NOTE: go line raised from $GOLINE to $NOW by dependency resolution" >&2
fi
echo "gen.sh: wrote $(pwd)/go.mod ($(grep -c '=>' go.mod) replaces) and go.sum" >&2
