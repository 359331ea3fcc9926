# ats-wasm — the two commands a fresh Debian 12 needs: `make demo` and `make test` (operators: `make deb`).
SHELL := /bin/bash
CARGO ?= $(shell command -v cargo 2>/dev/null || echo /usr/bin/cargo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PLUGIN := target/release/libats_wasm.so

# Debian packages: ATS and its headers, libclang for bindgen, the Rust toolchain with the
# WebAssembly backend and std source for guest modules, clang-22 with the wasm32 runtime for
# the C example (see examples/README.md), and what the demo and tests use (curl, python3,
# prometheus for the dashboard test).
APT_PACKAGES := trafficserver trafficserver-dev libclang-dev rustc-web cargo-web \
	rust-web-src rust-web-llvm lld-22 wasi-libc clang-22 libclang-rt-22-dev-wasm32 \
	libc++-22-dev-wasm32 curl openssl python3 make prometheus

.PHONY: all deps build plugin examples test lint demo clean bench bench-instructions native-plugin deb deb-pack soak fuzz

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# AssemblyScript examples need node and npm; a machine may have them from elsewhere (a
	@# NodeSource nodejs bundles npm and conflicts with Debian's npm package).
	@if ! command -v npm >/dev/null; then \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends nodejs npm; \
	fi

build: plugin examples

# ATS_PREFIX=/opt/ats10 (on the command line, so cargo's build.rs sees it): build the plugin for
# that ATS install's headers, e.g. an ATS 10 built by tests/ats10/build-ats.sh (docs/ats10.md).
plugin:
	# --workspace --all-targets: the same feature set as `cargo test` (dev-dependencies such as
	# criterion change shared dependencies' features), so build and test share one wasmtime build.
	$(CARGO) build --release --locked --workspace --all-targets

examples:
	examples/build.sh

test: deps build
	$(CARGO) test --release --locked --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

demo: deps build
	examples/demo.sh

# Load benchmark (benches/README.md): ATS without a plugin, with a native plugin and with
# ats-wasm + add-headers; writes benches/results/latest.{md,png}. DURATION=5 ROUNDS=3 by default.
bench: deps build native-plugin
	benches/load.sh

# Instructions per cached request inside ATS by callgrind (benches/README.md), the same
# configurations; writes benches/results/instructions.md. Another build's plugin without
# rebuilding: PLUGIN=/path/to/libats_wasm.so benches/instructions.sh
bench-instructions: deps build native-plugin
	benches/instructions.sh

# Soak (benches/README.md#soak): MINUTES (10) of keep-alive load through a chain of example
# filters in both isolations, with traps, loops, HTTP calls, body rewrites and a reload every
# 30 s; per-minute rows and a verdict (exit status). Writes benches/results/soak.md.
soak: deps build
	OUT=benches/results/soak.md benches/soak.sh

# The fuzz targets (fuzz/README.md), FUZZ_SECONDS (50) each; what .ci/run runs after the tests.
FUZZ_SECONDS ?= 50
fuzz: build
	CARGO=$(CARGO) fuzz/run.sh $(FUZZ_SECONDS)

# The native plugin the benchmarks compare against (benches/native-plugin).
native-plugin:
	$(CARGO) build --release --locked --manifest-path benches/native-plugin/Cargo.toml --target-dir target/native-plugin

# The Debian package (docs/packaging.md): ats-wasm_<version>_amd64.deb in the repository root,
# packed by cargo-deb from the release build and the example modules (no second build), then
# checked by lintian (errors and warnings fail). cargo-deb is pinned and installed from
# crates.io into target/tools on first use; dpkg-dev (dpkg-shlibdeps for the libc dependency),
# binutils (strip) and lintian come from Debian. CARGO_DEB_FLAGS=--fast trades a larger file
# for a third of the packing time (tests/deb_package.rs uses it).
CARGO_DEB_FLAGS ?=
CARGO_DEB_VERSION := 3.8.0
CARGO_DEB_ROOT := target/tools/cargo-deb-$(CARGO_DEB_VERSION)
CARGO_DEB := $(CARGO_DEB_ROOT)/bin/cargo-deb
DEB_APT_PACKAGES := dpkg-dev binutils lintian

deb: deps build
	$(MAKE) deb-pack

# The package from what `make build` left in target/ and examples/target (builds nothing).
deb-pack: $(CARGO_DEB)
	@missing=$$(for p in $(DEB_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	rm -f ats-wasm_*.deb
	packaging/deb/stage.sh target/deb-stage
	CARGO=$(CARGO) $(CARGO_DEB) --no-build --locked --strip $(CARGO_DEB_FLAGS) --output .
	lintian --fail-on error,warning --display-info ats-wasm_*.deb

$(CARGO_DEB):
	$(CARGO) install --locked --version =$(CARGO_DEB_VERSION) --root $(CARGO_DEB_ROOT) cargo-deb

clean:
	$(CARGO) clean
	rm -rf examples/target .demo ats-wasm_*.deb
