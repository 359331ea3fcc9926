#!/usr/bin/env bash
# Builds the Proxy-Wasm example modules with Debian's Rust toolchain.
#
# Needs the apt packages rustc-web cargo-web rust-web-src rust-web-llvm lld-22
# (`make examples` from the repository root installs them); installs nothing.
# Works from any directory. Outputs:
#   examples/target/wasm32-unknown-unknown/release/<crate>.wasm
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
modules=(add_headers oob_trap)

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

out="$here/target/wasm32-unknown-unknown/release"
status=0
for module in "${modules[@]}"; do
    wasm="$out/$module.wasm"
    if [[ -f $wasm ]]; then
        printf '%s\t%s bytes\n' "$wasm" "$(stat -c %s "$wasm")"
    else
        echo "build.sh: missing $wasm" >&2
        status=1
    fi
done
exit "$status"
