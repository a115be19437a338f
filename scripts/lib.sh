# Shared helpers for the scripts in this folder. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs what the project needs and the machine may lack: the wasm32-wasip2
# Rust target and a nats-server binary. Idempotent and quiet when all is there.
ensure_prerequisites() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    step "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
  fi
  if ! command -v nats-server >/dev/null 2>&1; then
    step "installing nats-server"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server
  fi
}

# Builds every guest in examples/ as a wasm32-wasip2 component.
build_examples() {
  step "building the example handlers (wasm32-wasip2 components)"
  # From inside examples/, so its .cargo/config.toml applies.
  (cd examples && cargo build --release --target wasm32-wasip2)
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

nats_answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}
