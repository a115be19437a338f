#!/usr/bin/env bash
# Builds {{name}}.wasm from handler.ts: type-checked, bundled with the SDK
# and turned into a component by componentize-js (all pinned in
# package.json; npm installs them on the first build).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
  echo "installing the build tools (npm install)"
  npm install --no-audit --no-fund --loglevel=error
fi
node eventhost-sdk/build.mjs . -o {{name}}.wasm --wit wit
