#!/usr/bin/env bash
# Builds the fuzz targets by hand (no cargo-fuzz, no nightly: rustup's stable toolchain) and
# runs each for a bounded time; `.ci/run` calls it after `make test`. See fuzz/README.md.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 50; FUZZ_TARGETS="decoders hostcalls")
#
# The targets are members of the main workspace (feature `fuzz`), built with `--workspace` like
# `make build`: one feature resolution, so the dependencies `make build` left in target/ (wasmtime,
# cranelift) are reused and only the targets' own crates compile, instrumented (rustc-sancov.sh).
# Corpora live in fuzz/corpus/<target> (not committed). Prints the executions of each run;
# exits non-zero when a target finds a crash (the input is saved in fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-50}
targets=${FUZZ_TARGETS:-"decoders hostcalls"}
cargo=${CARGO:-$(command -v cargo || echo /usr/bin/cargo)}
# libfuzzer-sys compiles libFuzzer (C++).
if ! command -v c++ >/dev/null; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends g++ >/dev/null
fi
bins=()
for t in $targets; do bins+=(--bin "$t"); done
(cd .. && RUSTC_WRAPPER="$PWD/fuzz/rustc-sancov.sh" \
  "$cargo" build --release --locked --workspace --features ats-wasm-fuzz/fuzz "${bins[@]}")
status=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  case $t in decoders) max_len=256 ;; *) max_len=2048 ;; esac
  log="../target/fuzz-$t.log"
  set +e
  "../target/release/$t" -max_len="$max_len" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz: $t: ${runs:-?} executions in ${secs} s ($cov, corpus $(find "corpus/$t" -type f | wc -l) inputs), exit $rc"
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log"
    status=1
  fi
done
exit "$status"
