#!/bin/sh
# Build and install Apache Traffic Server 10 from an upstream source tree, with
# the options the ats-wasm real-ATS tests need (and nothing more: no
# experimental plugins, no tests, no benchmarks, no docs).
#
#   tests/ats10/build-ats.sh SRC PREFIX
#
# SRC is a checkout of https://github.com/apache/trafficserver at a 10.x tag
# (tested: 10.1.4); PREFIX is where it is installed (e.g. /opt/ats10). The
# build directory is SRC/build-ats-wasm. JOBS (default 2) sets the parallelism;
# NICE (default 15) the niceness. Debian 12 packages needed:
#   cmake ninja-build pkg-config libssl-dev libpcre3-dev libpcre2-dev
#   zlib1g-dev libhwloc-dev libcap-dev libncurses-dev libcurl4-openssl-dev
# Then: make ATS_PREFIX=PREFIX build, and ATS10_PREFIX=PREFIX cargo test ...
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 SRC PREFIX" >&2
    exit 2
fi
src=$(cd "$1" && pwd)
prefix=$2
jobs=${JOBS:-2}
niceness=${NICE:-15}
build="$src/build-ats-wasm"

cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DBUILD_EXPERIMENTAL_PLUGINS=OFF \
    -DBUILD_TESTING=OFF \
    -DBUILD_REGRESSION_TESTING=OFF \
    -DENABLE_VERIFY_PLUGINS=OFF \
    -DENABLE_AUTEST=OFF \
    -DENABLE_BENCHMARKS=OFF \
    -DENABLE_DOCS=OFF \
    -DENABLE_EXAMPLE=OFF \
    -DENABLE_JEMALLOC=OFF \
    -DENABLE_LUAJIT=OFF
# The binaries the tests use first, so they are ready early; then the rest
# (stable plugins, tools), which `cmake --install` needs.
nice -n "$niceness" cmake --build "$build" -j "$jobs" --target traffic_server traffic_ctl traffic_layout
nice -n "$niceness" cmake --build "$build" -j "$jobs"
cmake --install "$build"
echo "ATS installed in $prefix: $("$prefix/bin/traffic_server" -V 2>&1 | head -1)"
