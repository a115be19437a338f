# The build cache of CI, sourced by .ci/run.
#
# CI starts from a fresh clone, so each run would compile wasmtime and the
# rest of the dependency tree from scratch: about 15 of a 2-core machine's
# minutes, half of a run. Like a hosted CI's cache step, the build
# directories of the last green run on this machine are restored first and
# saved after a green run, keyed by the toolchain and the lock files. Cargo
# still rebuilds whatever changed (every source file of a fresh clone is
# newer than the cache), and guest components are rebuilt when their
# content stamp differs, so a stale cache costs time, never correctness.
# EVENTHOST_CI_CACHE=off builds everything cold.

build_cache_root="${EVENTHOST_CI_CACHE:-$HOME/.cache/eventhost-ci}"
# target/ also holds the compiled-component cache and the fuzz corpora,
# which grow from run to run.
build_cache_dirs=(target examples/target sdk/target)

build_cache_key() {
  (rustc -vV; cat Cargo.lock examples/Cargo.lock) | sha256sum | cut -c1-16
}

restore_build_cache() {
  [ "$build_cache_root" != off ] || return 0
  local cache dir
  cache="$build_cache_root/$(build_cache_key)"
  if [ ! -d "$cache" ]; then
    step "no build cache for these lock files: building cold"
    return 0
  fi
  step "restoring the build cache ($cache)"
  for dir in "${build_cache_dirs[@]}"; do
    if [ -d "$cache/$dir" ] && [ ! -e "$dir" ]; then
      mkdir -p "$(dirname "$dir")"
      cp -a "$cache/$dir" "$dir"
    fi
  done
}

# Replaces the cache with this run's build directories; older keys go.
save_build_cache() {
  [ "$build_cache_root" != off ] || return 0
  local key staging dir
  key="$(build_cache_key)"
  staging="$build_cache_root/.saving"
  step "saving the build cache ($build_cache_root/$key)"
  rm -rf "$staging"
  for dir in "${build_cache_dirs[@]}"; do
    if [ -d "$dir" ]; then
      mkdir -p "$staging/$(dirname "$dir")"
      cp -a "$dir" "$staging/$dir"
    fi
  done
  rm -rf "${build_cache_root:?}"/*
  mv "$staging" "$build_cache_root/$key"
}
