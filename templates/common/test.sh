#!/usr/bin/env bash
# The handler's test: builds it, then runs it on event.json in the real
# sandbox with `eventhost invoke` and checks what it emitted. Set EVENTHOST
# to the eventhost binary if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")"
eventhost="${EVENTHOST:-eventhost}"
./build.sh
out="$("$eventhost" invoke {{name}}.wasm --manifest handler.toml --event event.json --json)"
echo "$out"
expect() {
  grep -q -- "$1" <<<"$out" || { echo "FAILED: expected $1 in the output" >&2; exit 1; }
}
expect '"outcome": "ok"'
expect '"destination": "greetings.sent"'
expect '"message": "Hello, Ada!"'
# A bad event is a permanent failure, and invoke says so with its exit code.
if echo '{"specversion":"1.0","id":"bad-1","source":"/t","type":"com.example.greeting.requested","data":{"name":""}}' \
  | "$eventhost" invoke {{name}}.wasm --manifest handler.toml --event - --json; then
  echo "FAILED: an empty name should fail the handler" >&2; exit 1
fi
echo "test passed"
