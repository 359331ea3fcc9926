#!/usr/bin/env bash
# Builds the Proxy-Wasm example and test modules:
#   - the Rust crates of this workspace, with Debian's Rust toolchain (apt packages rustc-web
#     cargo-web rust-web-src rust-web-llvm lld-22) ->
#     examples/target/wasm32-unknown-unknown/release/<crate>.wasm
#   - c-headers (plain C against the ABI), with clang-22 for wasm32-wasi (apt packages
#     clang-22 libclang-rt-22-dev-wasm32 wasi-libc) -> examples/target/modules/c_headers.wasm
#   - as-headers (AssemblyScript), with `npm ci` from the committed package-lock.json into the
#     gitignored as-headers/node_modules (apt packages nodejs npm; reaches the npm registry
#     once) -> examples/target/modules/as_headers.wasm
#
# `make examples` from the repository root installs the apt packages; this script installs
# none. Works from any directory.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
modules=(add_headers oob_trap abi_probe deny echo_properties ticker body_rewrite auth_call call_probe replace_body config_header call_gate background local_echo hostile_bounds)

for tool in /usr/bin/cargo /usr/bin/rustc; do
    if [[ ! -x $tool ]]; then
        echo "build.sh: $tool missing; install rustc-web cargo-web rust-web-src rust-web-llvm lld-22" >&2
        exit 1
    fi
done

cd "$here"
# Our target dir, not whatever the caller's environment points at.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
# build-std is a nightly feature of Debian's stable cargo; it needs RUSTC_BOOTSTRAP.
RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release --locked

modules_out="$here/target/modules"
mkdir -p "$modules_out"

# Plain C against the ABI (wasm32-wasi: Debian's wasi-libc lives under the old name).
if ! command -v clang-22 >/dev/null; then
    echo "build.sh: clang-22 missing; install clang-22 libclang-rt-22-dev-wasm32 wasi-libc" >&2
    exit 1
fi
clang-22 --target=wasm32-wasi -Wno-deprecated -O2 -mexec-model=reactor -Wl,--strip-all \
    -o "$modules_out/c_headers.wasm" "$here/c-headers/c_headers.c"

# AssemblyScript: dependencies pinned by package-lock.json, installed only when it changed.
if ! command -v npm >/dev/null; then
    echo "build.sh: npm missing; install nodejs npm" >&2
    exit 1
fi
as_dir="$here/as-headers"
if [[ ! -f $as_dir/node_modules/.package-lock.json || $as_dir/package-lock.json -nt $as_dir/node_modules/.package-lock.json ]]; then
    (cd "$as_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd "$as_dir" && ./node_modules/.bin/asc assembly/index.ts -b "$modules_out/as_headers.wasm" \
    --use abort=abort_proc_exit -O3 >/dev/null 2>"$modules_out/as_headers.log") || {
    cat "$modules_out/as_headers.log" >&2
    exit 1
}

out="$here/target/wasm32-unknown-unknown/release"
status=0
for wasm in "${modules[@]/#/$out/}" "$modules_out/c_headers.wasm" "$modules_out/as_headers.wasm"; do
    [[ $wasm == *.wasm ]] || wasm="$wasm.wasm"
    if [[ -f $wasm ]]; then
        printf '%s\t%s bytes\n' "$wasm" "$(stat -c %s "$wasm")"
    else
        echo "build.sh: missing $wasm" >&2
        status=1
    fi
done
exit "$status"
