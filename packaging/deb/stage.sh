#!/usr/bin/env bash
# stage.sh OUT_DIR — writes the files of the Debian package that are not taken from the tree as
# they are (Cargo.toml's [package.metadata.deb] lists every asset):
#   OUT_DIR/examples/<name>.yaml  the example filters' YAML files with `code.local.filename`
#                                 made absolute (/usr/share/ats-wasm/examples/<module>.wasm), so
#                                 plugin.config can name them where the package installs them;
#   OUT_DIR/examples/<module>.wasm the modules they load, from examples/target (make examples);
#   OUT_DIR/changelog             a Debian changelog for the crate's version (cargo-deb gzips it
#                                 into changelog.Debian.gz).
# Builds nothing: `make deb` runs `make build` first.
set -euo pipefail

root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
out=${1:?usage: stage.sh OUT_DIR}
installed=/usr/share/ats-wasm/examples
# The examples an operator can run as they are (examples/README.md); abi-probe and call-probe
# are test fixtures.
examples=(add-headers auth-call body-rewrite deny echo-properties oob-trap ticker)
modules="$root/examples/target/wasm32-unknown-unknown/release"

rm -rf "$out/examples"
mkdir -p "$out/examples"
for name in "${examples[@]}"; do
    src="$root/examples/$name/$name.yaml"
    dst="$out/examples/$name.yaml"
    # `filename: x.wasm` -> `filename: /usr/share/ats-wasm/examples/x.wasm`; the source's hint
    # to copy the module into the configuration directory does not apply to the package, and
    # its plugin.config example names the installed YAML.
    sed -e "s|^\( *filename: *\)\([A-Za-z0-9_.-]*\.wasm\) *\$|\1$installed/\2|" \
        -e '/^# `filename` is relative to the ATS configuration directory: copy$/,/^# examples\/target\/.* there\.$/d' \
        -e "s|^\(# plugin.config: *libats_wasm.so \)$name.yaml|\1$installed/$name.yaml|" \
        "$src" >"$dst"
    wasm=$(sed -n "s|^ *filename: *$installed/\([A-Za-z0-9_.-]*\.wasm\) *\$|\1|p" "$dst")
    if [[ -z $wasm ]] || grep -q '^ *filename: *[^/ ]' "$dst"; then
        echo "stage.sh: $src: no single relative code.local.filename to rewrite" >&2
        exit 1
    fi
    if [[ ! -f $modules/$wasm ]]; then
        echo "stage.sh: $modules/$wasm missing; run make examples" >&2
        exit 1
    fi
    install -m 644 "$modules/$wasm" "$out/examples/$wasm"
done

version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml")
revision=$(sed -n '/^\[package.metadata.deb\]/,/^\[/s/^revision = "\(.*\)"$/\1/p' "$root/Cargo.toml")
maintainer=$(sed -n '/^\[package.metadata.deb\]/,/^\[/s/^maintainer = "\(.*\)"$/\1/p' "$root/Cargo.toml")
# The date of the commit built (reproducible), or now outside a git checkout.
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
cat >"$out/changelog" <<CHANGELOG
ats-wasm ($version${revision:+-$revision}) unstable; urgency=medium

  * Release $version, packaged by \`make deb\` (cargo-deb) from the release build.

 -- $maintainer  $(LC_ALL=C date -u -R -d "@$epoch")
CHANGELOG
