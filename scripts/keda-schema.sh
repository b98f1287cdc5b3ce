#!/usr/bin/env bash
# The KEDA ScaledObject schema the manifest tests validate against: @kubernetes-models/keda (from
# npm; its validators are generated from KEDA's CRDs), installed once under ~/.cache, keyed by
# version. Prints the folder holding node_modules.
set -euo pipefail
VERSION="${KEDA_MODELS_VERSION:-0.4.2}"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/shipyard/npm/kubernetes-models-keda-$VERSION"
if [ ! -f "$DIR/node_modules/@kubernetes-models/keda/package.json" ]; then
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --no-audit --no-fund --silent "@kubernetes-models/keda@$VERSION" >&2)
fi
echo "$DIR"
