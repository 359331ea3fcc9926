#!/usr/bin/env bash
# `make bench-instructions`: instructions per cached request inside Apache Traffic Server, counted
# by callgrind, without a plugin, with a native plugin doing the same header work
# (benches/native-plugin) and with ats-wasm + examples/add-headers. Counts do not depend on the
# machine's load, so two runs of one build agree to well within 1 % (see benches/README.md).
# Writes benches/results/$REPORT.md.
#
# Per configuration: a private ATS runroot (examples/runroot.sh: 1 net thread, which also
# accepts; one AIO thread, see start_ats) started under
#   valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes
# in front of a loopback nginx origin serving a cacheable object; WARMUP keep-alive requests and
# a check that the object is served from the ATS cache; `callgrind_control -i on`; REQUESTS
# keep-alive requests on one client connection (every response checked: 200, the object's size,
# the filter's response header present or absent); `callgrind_control -d` and `-i off`. Then
#   (Ir of every thread's dump - inclusive Ir of PERIODIC_SYMBOLS) / REQUESTS
# PERIODIC_SYMBOLS are ATS's records maintenance, which runs on a clock (every few seconds), not
# per request: the records sync (~89 M instructions), the raw stat sync (~0.6 M) and the config
# update check (~0.15 M). Whether one lands in a window depends on the window's wall-clock time
# (a few seconds under valgrind, longer on a loaded machine), so they are subtracted and
# reported. The report also gives the busiest thread alone (ATS's net thread, where every hook
# runs): it leaves out the other threads' idle polling, which grows with wall-clock time.
#
# Environment (defaults in brackets):
#   CONFIGS ["none native wasm-shared wasm-transaction"]  a subset, in this order; the names of
#                       benches/load.sh: wasm-shared = ats-wasm --isolation=shared, wasm-transaction
#                       = --isolation=transaction, both with --metrics-listen=off; wasm-bodies (not
#                       run by default) = wasm-shared with `bodies: auto` (the default) instead of
#                       the shipped `bodies: none`: the cost of a pass-through response transform;
#                       native-bodies (not run by default) = native with `--null-transform`: the
#                       same header work plus a response transform that passes bodies on, the
#                       floor for any plugin that sees response bodies (compare wasm-bodies)
#   REQUESTS [2000]     measured requests per configuration
#   WARMUP [200]        keep-alive requests before measuring (on the measured connection)
#   RUNS [1]            measure every configuration this many times (rows per run)
#   PLUGIN [target/release/libats_wasm.so]          ats-wasm build to measure (any path)
#   NATIVE_PLUGIN [target/native-plugin/release/libats_native_add_headers.so]
#   WASM [examples/target/wasm32-unknown-unknown/release/add_headers.wasm]
#   OBJECT_BYTES [1024] size of the cached object
#   FIELDS [0]          header fields added to every measured request (`x-extra-N: value-N`) and
#                       to the cached response (nginx `add_header`), to see how a plugin's cost
#                       grows with fields its guest never reads; a list ("0 25") measures every
#                       configuration with each (rows named CONFIG+fN)
#   PERIODIC_SYMBOLS    ";"-separated symbols subtracted, see above (default: the three
#                       continuations of ATS 9.2's RecProcess, as callgrind_annotate names them)
#   MAX_VMS [8]         ats-wasm's --max-vms: its pool reserves ~4.3 GB of address space per
#                       VM slot, and valgrind cannot map the default 1000 (nor 16)
#   VALGRIND_ARGS       more valgrind options
#   START_TIMEOUT [600] seconds ATS may take to serve under valgrind
#   REPORT [instructions]  the report's name: benches/results/$REPORT.md
#   KEEP_TMP=1          keep the temporary directory (runroots, callgrind dumps)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=examples/runroot.sh
. "$root/examples/runroot.sh"
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
bench_name=instructions.sh
results="$root/benches/results"
yaml="$root/examples/add-headers/add-headers.yaml"

CONFIGS=${CONFIGS:-"none native wasm-shared wasm-transaction"}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
RUNS=${RUNS:-1}
PLUGIN=${PLUGIN:-$root/target/release/libats_wasm.so}
NATIVE_PLUGIN=${NATIVE_PLUGIN:-$root/target/native-plugin/release/libats_native_add_headers.so}
WASM=${WASM:-$root/examples/target/wasm32-unknown-unknown/release/add_headers.wasm}
OBJECT_BYTES=${OBJECT_BYTES:-1024}
FIELDS=${FIELDS:-0}
read -r -a field_counts <<<"$FIELDS"
PERIODIC_SYMBOLS=${PERIODIC_SYMBOLS:-"sync_cont::sync(int, Event*);raw_stat_sync_cont::exec_callbacks(int, Event*);config_update_cont::exec_callbacks(int, Event*)"}
VALGRIND_ARGS=${VALGRIND_ARGS:-}
START_TIMEOUT=${START_TIMEOUT:-600}
REPORT=${REPORT:-instructions}
MAX_VMS=${MAX_VMS:-8}
nginx_pin=()
# Generous deadlines: under valgrind on a loaded machine the snapshot's recorded initializer
# can take over a second (the default --init-deadline-ms); deadlines cost the same
# instructions whatever their length.
wasm_args="--metrics-listen=off --max-vms=$MAX_VMS --init-deadline-ms=60000 --callback-deadline-ms=10000"

die() { echo "instructions.sh: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
PLUGIN=$(abspath "$PLUGIN") NATIVE_PLUGIN=$(abspath "$NATIVE_PLUGIN") WASM=$(abspath "$WASM")

read -r -a configs <<<"$CONFIGS"
[ ${#configs[@]} -gt 0 ] || die "CONFIGS is empty"
for c in "${configs[@]}"; do
  case $c in
    none) ;;
    native | native-bodies) [ -f "$NATIVE_PLUGIN" ] || die "missing $NATIVE_PLUGIN: run 'make bench-instructions' (it builds everything first)" ;;
    wasm-shared | wasm-transaction | wasm-bodies)
      for f in "$PLUGIN" "$WASM" "$yaml"; do
        [ -f "$f" ] || die "missing $f: run 'make bench-instructions' (it builds everything first)"
      done
      ;;
    *) die "unknown configuration '$c' in CONFIGS (none native native-bodies wasm-shared wasm-transaction wasm-bodies)" ;;
  esac
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[1-9][0-9]*$ && $RUNS =~ ^[1-9][0-9]*$ ]] ||
  die "REQUESTS, WARMUP and RUNS must be positive integers"

py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || die "python3 is needed"
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
bench_apt_install "${missing[@]}"
for t in valgrind callgrind_control callgrind_annotate; do
  command -v "$t" >/dev/null || die "$t is not installed (Debian package valgrind)"
done
[ -x /usr/sbin/nginx ] || die "nginx is not installed (Debian package nginx-light)"
command -v traffic_server >/dev/null || die "traffic_server is not installed (Debian package trafficserver; make deps)"

for f in "${field_counts[@]}"; do [[ $f =~ ^[0-9]+$ ]] || die "FIELDS must be numbers: $FIELDS"; done
# /fields-N: the cached object with N more response header fields.
origin_extra=
for f in "${field_counts[@]}"; do
  [ "$f" = 0 ] && continue
  origin_extra+="    location = /fields-$f { alias \$ng/www/object; add_header Cache-Control \"max-age=3600\";"
  for i in $(seq "$f"); do origin_extra+=" add_header X-Extra-$i value-$i;"; done
  origin_extra+=" }"$'\n'
done
bench_tmp ats-wasm-instructions
origin_extra=${origin_extra//\$ng/$tmp/nginx}
start_origin

# ---------------------------------------------------------------------------------------------
# One ATS under callgrind at a time.
ats_pid=
ats_port=
ats_dir=
# start_ats CONFIG RUN [ROW]
start_ats() {
  local config=$1 run=$2 d
  d="$tmp/run$run-${3:-$config}"
  ats_dir=$d
  ats_port=$(free_port)
  write_runroot "$d" "$ats_port" 1 "$origin_port" 0
  # One AIO thread instead of 8: they serve no cache hit from the RAM cache, but each wakes
  # every few ms, so their Ir grows with the window's wall-clock time (a loaded machine).
  echo "CONFIG proxy.config.cache.threads_per_disk INT 1" >>"$d/etc/records.config"
  mkdir -p "$d/callgrind"
  case $config in
    none) : >"$d/etc/plugin.config" ;;
    native) echo "$NATIVE_PLUGIN" >"$d/etc/plugin.config" ;;
    native-bodies) echo "$NATIVE_PLUGIN --null-transform" >"$d/etc/plugin.config" ;;
    wasm-shared | wasm-transaction)
      cp "$WASM" "$d/etc/add_headers.wasm"
      cp "$yaml" "$d/etc/add-headers.yaml"
      echo "$PLUGIN --isolation=${config#wasm-} $wasm_args add-headers.yaml" >"$d/etc/plugin.config"
      ;;
    wasm-bodies)
      cp "$WASM" "$d/etc/add_headers.wasm"
      sed 's/^  bodies: none$/  bodies: auto/' "$yaml" >"$d/etc/add-headers.yaml"
      grep -q '^  bodies: auto$' "$d/etc/add-headers.yaml" || die "$config: add-headers.yaml lacks bodies: none"
      echo "$PLUGIN --isolation=shared $wasm_args add-headers.yaml" >"$d/etc/plugin.config"
      ;;
  esac
  # valgrind execs traffic_server in its own process: $! is ATS's pid for callgrind_control.
  # shellcheck disable=SC2086 # VALGRIND_ARGS is a list of options
  setsid valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$d/callgrind/callgrind.out.%p" $VALGRIND_ARGS \
    traffic_server --run-root="$d/runroot.yaml" </dev/null >"$d/log/console.log" 2>&1 &
  ats_pid=$!
  pids+=("$ats_pid")
  local i
  for i in $(seq $((START_TIMEOUT * 5))); do
    curl -s -o /dev/null "http://127.0.0.1:$ats_port/verify" 2>/dev/null && return 0
    kill -0 "$ats_pid" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 20 "$d/log/console.log" "$d/log/diags.log" >&2 2>/dev/null || true
  die "ATS ($config) did not start under valgrind within ${START_TIMEOUT}s"
}

# verify CONFIG: the configuration does what it claims (the origin sees the request header).
verify() {
  local config=$1 body want
  if [[ $config == wasm-* ]] && grep -i 'ats_wasm' "$ats_dir/log/diags.log" | grep -qiE 'error|disabled|skip'; then
    grep -i ats_wasm "$ats_dir/log/diags.log" >&2
    die "$config: ats-wasm reported a problem in diags.log"
  fi
  if [ "$config" = wasm-bodies ] && ! grep -q 'response bodies (bodies: auto' "$ats_dir/log/diags.log"; then
    die "$config: ats-wasm did not give add-headers response bodies (no NOTE in diags.log)"
  fi
  body=$(curl -fsS "http://127.0.0.1:$ats_port/verify") || die "$config: curl /verify failed"
  case $config in none) want="x-added-by=" ;; *) want="x-added-by=ats-wasm" ;; esac
  [ "$body" = "$want" ] || die "$config: the origin saw '$body', expected '$want'"
}

# client_send N: N keep-alive requests on the client's connection; dies unless all passed.
client_send() {
  local reply=
  echo "$1" >&"${CLIENT[1]}"
  read -r -t "$((600 + $1))" reply <&"${CLIENT[0]}" || true
  [ "$reply" = "ok $1" ] || die "client: ${reply:-no answer} (see $ats_dir/log)"
}

# measure CONFIG: sets $window to "total=… periodic=… calls=… threads=… busiest=…" of the measured
# requests (instructions.py window) and $window_s to their wall-clock seconds.
window= window_s=
measure() {
  local config=$1 fields=$2 want_filter=1 before after i hit=0 client_pid files t0 t1 path=/cached
  [ "$config" = none ] && want_filter=0
  [ "$fields" = 0 ] || path=/fields-$fields
  coproc CLIENT { exec "$py" "$root/benches/instructions.py" client "$ats_port" "$path" "$OBJECT_BYTES" "$want_filter" "$fields"; }
  client_pid=$CLIENT_PID
  pids+=("$client_pid")
  client_send "$WARMUP"
  # The first request was a miss; ATS writes the cache asynchronously. From now on the origin
  # must see none of the client's requests (a request to /status counts itself).
  for i in $(seq 30); do
    before=$(origin_requests)
    client_send 5
    after=$(origin_requests)
    if [ $((after - before)) = 1 ]; then hit=1; break; fi
    sleep 0.2
  done
  [ "$hit" = 1 ] || die "$config: $path is not served from the ATS cache"
  sleep 0.5
  callgrind_control -i on "$ats_pid" >"$ats_dir/callgrind/control.log" 2>&1 || die "callgrind_control -i on failed"
  before=$(origin_requests)
  t0=$(date +%s.%N)
  client_send "$REQUESTS"
  t1=$(date +%s.%N)
  after=$(origin_requests)
  # Let the last transaction close (TXN_CLOSE, back to the keep-alive state) before the dump.
  sleep 0.2
  callgrind_control -d "$ats_pid" >>"$ats_dir/callgrind/control.log" 2>&1 || die "callgrind_control -d failed"
  callgrind_control -i off "$ats_pid" >>"$ats_dir/callgrind/control.log" 2>&1 || die "callgrind_control -i off failed"
  [ $((after - before)) = 1 ] || die "$config: $((after - before - 1)) measured requests reached the origin"
  eval "exec ${CLIENT[1]}>&-" # end of input: the client closes its connection and exits
  wait "$client_pid" 2>/dev/null || true
  forget "$client_pid"
  # The first dump is part 1, one file per thread.
  files=("$ats_dir/callgrind/callgrind.out.$ats_pid".1-*)
  [ -f "${files[0]}" ] || die "$config: no callgrind dump in $ats_dir/callgrind"
  window=$("$py" "$root/benches/instructions.py" window "$PERIODIC_SYMBOLS" "${files[@]}") || die "$config: could not read the dump"
  window_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
}

# ---------------------------------------------------------------------------------------------
ats_ver=$(ats_version)
log "ATS $ats_ver under $(valgrind --version); origin nginx on 127.0.0.1:$origin_port"
log "$RUNS run(s) x (${configs[*]}): $WARMUP warm-up + $REQUESTS measured requests each"
rows="$tmp/rows.tsv" # run config total periodic calls threads seconds busiest
: >"$rows"
start=$(date +%s)
for ((r = 1; r <= RUNS; r++)); do
  for f in "${field_counts[@]}"; do for c in "${configs[@]}"; do
    row=$c
    [ "$f" = 0 ] || row="$c+f$f"
    start_ats "$c" "$r" "$row"
    verify "$c"
    measure "$c" "$f"
    stop "$ats_pid" 5
    total= periodic= calls= threads= busiest=
    for kv in $window; do
      case $kv in
        total=*) total=${kv#*=} ;; periodic=*) periodic=${kv#*=} ;; calls=*) calls=${kv#*=} ;;
        threads=*) threads=${kv#*=} ;; busiest=*) busiest=${kv#*=} ;;
      esac
    done
    [ -n "$total" ] && [ -n "$periodic" ] && [ -n "$calls" ] && [ -n "$threads" ] && [ -n "$busiest" ] ||
      die "$c: could not read the dump: $window"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$row" "$total" "$periodic" "$calls" "$threads" "$window_s" "$busiest" >>"$rows"
    log "run $r/$RUNS  $(printf '%-17s' "$row") $(((total - periodic) / REQUESTS)) instructions/request, net thread $((busiest / REQUESTS))  (window ${window_s}s: $total Ir over $threads threads, clock-driven $periodic Ir subtracted, calls $calls)"
  done; done
done
elapsed=$(($(date +%s) - start))

# ---------------------------------------------------------------------------------------------
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- src pool Cargo.toml Cargo.lock examples 2>/dev/null || commit="$commit (with local changes)"
so_info() { echo "\`$1\` (sha256 $(sha256sum "$1" | cut -c1-12))"; }
plugin_info= native_info=
[[ " ${configs[*]} " == *" wasm-"* ]] && plugin_info=$(so_info "$PLUGIN")
[[ " ${configs[*]} " == *" native"[\ -]* ]] && native_info=$(so_info "$NATIVE_PLUGIN")
mkdir -p "$results"
"$py" "$root/benches/instructions.py" report "$rows" "$REQUESTS" \
  "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  "ats=$ats_ver" \
  "valgrind=$(valgrind --version)" \
  "kernel=$(uname -srm)" \
  "commit=$commit" \
  "warmup=$WARMUP" \
  "object_bytes=$OBJECT_BYTES" \
  "symbols=$PERIODIC_SYMBOLS" \
  "max_vms=$MAX_VMS" \
  "elapsed=$elapsed" \
  "plugin=$plugin_info" \
  "native=$native_info" >"$results/$REPORT.md"
echo
cat "$results/$REPORT.md"
