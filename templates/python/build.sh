#!/usr/bin/env bash
# Builds {{name}}.wasm from app.py with componentize-py, pinned in
# sdk/build-requirements.txt and installed into .tools/ on the first build
# (or set EVENTHOST_PYTHON to a Python that has it).
set -euo pipefail
cd "$(dirname "$0")"
python="${EVENTHOST_PYTHON:-}"
if [ -z "$python" ]; then
  python=.tools/bin/python
  if ! cmp -s sdk/build-requirements.txt .tools/installed.txt 2>/dev/null; then
    echo "installing $(cat sdk/build-requirements.txt) into .tools/"
    python3 -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check -r sdk/build-requirements.txt
    cp sdk/build-requirements.txt .tools/installed.txt
  fi
fi
"$python" sdk/eventhost_build.py . -o {{name}}.wasm --wit wit
