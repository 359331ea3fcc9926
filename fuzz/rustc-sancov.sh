#!/bin/sh
# RUSTC_WRAPPER for fuzz/run.sh: instruments only the fuzz targets' own crates for libFuzzer
# (coverage counters, PC table, comparison tracing), so that their dependencies (wasmtime) are
# the very artifacts `make build` left in the main target directory, reused as they are.
# The host code under test is compiled into the targets (`#[path]`), so it is instrumented.
rustc=$1
shift
case " $* " in
*" --crate-name decoders "* | *" --crate-name hostcalls "*)
  exec "$rustc" "$@" -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks
  ;;
esac
exec "$rustc" "$@"
