#!/usr/bin/env bash
# Bounded fuzz run: installs cargo-fuzz if missing, builds every target in fuzz/ on the
# stable toolchain (libFuzzer, `--sanitizer none`), runs each for SECONDS (default 20)
# from the committed corpus, and fails on any crash, printing the reproducer.
#
#   bash fuzz/run.sh [SECONDS-PER-TARGET] [TARGET...]
#
# New inputs go to fuzz/target/corpus/<target> (git-ignored); crashes to
# fuzz/artifacts/<target>/. Reproduce one with
#   cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>
# FUZZ_JOBS targets run side by side (default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  # Built from crates.io in a temporary target dir, whatever CARGO_TARGET_DIR says.
  env -u CARGO_TARGET_DIR cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The fuzz crate has its own build dir, fuzz/target, apart from the main crate's.
export CARGO_TARGET_DIR="$PWD/target"
# Fewer codegen units than cargo-fuzz's release default of 1: a build of the whole
# dependency graph in a fraction of the time, for a somewhat slower fuzzer.
build_flags=(--sanitizer none --codegen-units 16)

# The committed Cargo.lock must be current (cargo-fuzz has no --locked).
cargo metadata --locked --format-version 1 >/dev/null
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
echo "== building fuzz targets: ${targets[*]}"
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do cargo fuzz build "${build_flags[@]}" "$t"; done
else
  cargo fuzz build "${build_flags[@]}"
fi

run_one() {
  local t=$1 log="$CARGO_TARGET_DIR/fuzz-$1.log"
  mkdir -p "corpus/$t" "$CARGO_TARGET_DIR/corpus/$t" "artifacts/$t"
  # The first corpus dir receives new inputs; the committed one is only read.
  if cargo fuzz run "${build_flags[@]}" "$t" "$CARGO_TARGET_DIR/corpus/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    echo "ok      $t: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') execs," \
      "$(grep -oE 'cov: [0-9]+' "$log" | tail -1)"
  else
    echo "FAILED  $t (log: $log)"
    grep -m1 -A3 -E 'panicked at|ERROR: libFuzzer' "$log" || tail -n 40 "$log"
    grep -hE 'Test unit written to|^artifact_prefix' "$log" | sed 's/^/reproducer: /' || true
    return 1
  fi
}
export -f run_one
export secs CARGO_TARGET_DIR
export build_flags_str="${build_flags[*]}"

jobs=${FUZZ_JOBS:-$(nproc)}
echo "== running ${#targets[@]} targets for ${secs}s each, $jobs at a time"
if printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'build_flags=($build_flags_str); run_one "$@"' _ {}; then
  echo "== fuzz: no crash"
else
  echo "== fuzz: crash (reproducers above, under fuzz/artifacts/)"
  exit 1
fi
