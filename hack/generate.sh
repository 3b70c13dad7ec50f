#!/usr/bin/env bash
# Regenerates what controller-gen (sigs.k8s.io/controller-tools, pinned as a
# Go tool in go.mod) generates from the Kubernetes API types in api/tether/:
# the deep copies (zz_generated.deepcopy.go beside the types) and the CRDs
# (charts/tether/crds/<group>_<plural>.yaml, each copied to manifests/crds/
# under the name kustomize uses there, since kustomize cannot read outside
# its folder).
#
#   hack/generate.sh          writes them into the tree (make generate)
#   hack/generate.sh -o DIR   writes them into DIR/object and DIR/crd instead
#                             (the test that the committed files are current)
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

# What to generate, from which packages: the same for both forms.
gen=(object crd "paths=./api/tether/...")

# With -o, the deep copies of every API package go into the one directory
# DIR/object: right while api/tether/ holds one package (v1alpha1).
if [ "${1:-}" = "-o" ]; then
  [ $# -eq 2 ] || { echo "usage: hack/generate.sh [-o DIR]" >&2; exit 2; }
  exec "$GO" tool controller-gen "${gen[@]}" "output:object:dir=$2/object" "output:crd:dir=$2/crd"
fi
[ $# -eq 0 ] || { echo "usage: hack/generate.sh [-o DIR]" >&2; exit 2; }

"$GO" tool controller-gen "${gen[@]}" output:crd:artifacts:config=charts/tether/crds
# charts/tether/crds/GROUP_PLURAL.yaml -> manifests/crds/PLURAL.GROUP.yaml
for f in charts/tether/crds/*.yaml; do
  base=$(basename "$f" .yaml)
  cp "$f" "manifests/crds/${base#*_}.${base%%_*}.yaml"
done
