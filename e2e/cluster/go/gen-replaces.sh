#!/usr/bin/env bash
# Regenerates the k8s.io staging-module `replace` lines of ./go.mod from the go.mod that
# k8s.io/kubernetes publishes. Upstream requires every staging module at v0.0.0 and replaces it with
# ./staging/src/k8s.io/<name>; a module that depends on k8s.io/kubernetes must instead replace each one
# with the published k8s.io/<name> v0.<minor>.<patch> of the same release. Its `godebug` lines are
# copied too. Usage: gen-replaces.sh [vX.Y.Z]   (default: the k8s.io/kubernetes version go.mod requires)
set -euo pipefail
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "gen-replaces.sh: 'go' not found in PATH (Go >= 1.26 needed)" >&2; exit 1; }

ver="${1:-$(go mod edit -json | sed -n '/"Path": "k8s.io\/kubernetes"/{n;s/.*"Version": "\(.*\)".*/\1/p}')}"
[[ "$ver" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "gen-replaces.sh: need a k8s.io/kubernetes release vX.Y.Z, got '$ver'" >&2; exit 1; }
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

mod="$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -s "$mod" ]] || { echo "gen-replaces.sh: could not download the go.mod of k8s.io/kubernetes@$ver" >&2; exit 1; }

# Staging modules: every `k8s.io/X => ./staging/src/k8s.io/X` line of the published go.mod.
mapfile -t names < <(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$mod" | sort -u)
(( ${#names[@]} > 0 )) || { echo "gen-replaces.sh: no staging replace lines found in $mod" >&2; exit 1; }

args=(-require="k8s.io/kubernetes@$ver")
# Drop every existing k8s.io replace first, so a staging module removed upstream does not linger.
while read -r old; do args+=(-dropreplace="$old"); done < <(go mod edit -json | sed -n '/"Replace"/,$p' | sed -n 's/.*"Path": "\(k8s.io\/[^"]*\)".*/\1/p' | sort -u)
for n in "${names[@]}"; do args+=(-replace="$n=$n@$staging"); done
# godebug lines (e.g. `godebug default=go1.26`), single-line or block form.
while read -r kv; do args+=(-godebug="$kv"); done < <(awk '/^godebug \(/{b=1;next} b&&/^\)/{b=0} b{print $1} /^godebug [^(]/{print $2}' "$mod")

go mod edit "${args[@]}"
echo "gen-replaces.sh: k8s.io/kubernetes $ver -> ${#names[@]} staging modules at $staging" >&2
