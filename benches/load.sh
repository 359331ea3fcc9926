#!/usr/bin/env bash
# `make bench`: load benchmark of ats-wasm against ATS without a plugin and with a native plugin
# doing the same header work (benches/native-plugin), with wrk on loopback in front of a loopback
# nginx origin. See benches/README.md. Writes benches/results/latest.{md,png} and keeps raw wrk
# outputs in benches/results/raw/.
#
# Environment (defaults in brackets):
#   DURATION [5]        seconds per measured wrk run
#   ROUNDS [3]          interleaved rounds; each round runs every configuration once
#   WARMUP [1]          seconds of discarded wrk load on /cached before measuring an instance
#   CONNECTIONS [50]    wrk connections;  WRK_THREADS [1] wrk threads
#   OBJECT_BYTES [1024] size of the origin's object (cached and uncached)
#   ATS_ACCEPT_THREADS [1] proxy.config.accept_threads (ATS's default). With 0 the net threads
#                       accept themselves, and one of two threads often took all of wrk's
#                       connections: 2-net-thread rounds fell into two groups.
#   NET_THREADS ["1 2"] values of proxy.config.exec_thread.limit
#   CONFIGS             subset of "none native wasm-shared wasm-transaction wasm-bodies
#                       wasm-metrics-off wasm-deny" (default: none native wasm-shared wasm-transaction;
#                       wasm-bodies = shared + `bodies: auto` (the default), the cost of a response
#                       transform on a header-only filter; wasm-metrics-off = shared with
#                       --metrics-listen=off, the cost of the metrics; wasm-deny = shared with
#                       examples/deny instead of add-headers: a header-only filter that reads
#                       `:path` and `User-Agent`, lets every measured request through and changes
#                       nothing)
#   REPORT [latest]     the report's name: benches/results/$REPORT.{md,png}
#   WASM_ARGS           more ats-wasm arguments for wasm-shared and wasm-transaction (e.g. --pool-size=64)
#   ATS_CPUS, WRK_CPUS, NGINX_CPUS   taskset CPU lists (defaults depend on nproc; "" = unpinned)
#   KEEP_TMP=1          keep the temporary runroots and nginx prefix
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=examples/runroot.sh
. "$root/examples/runroot.sh"
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
bench_name=load.sh
results="$root/benches/results"
raw="$results/raw"
plugin="$root/target/release/libats_wasm.so"
wasm="$root/examples/target/wasm32-unknown-unknown/release/add_headers.wasm"
deny_wasm="$root/examples/target/wasm32-unknown-unknown/release/deny.wasm"
deny_yaml="$root/examples/deny/deny.yaml"
native="$root/target/native-plugin/release/libats_native_add_headers.so"
yaml="$root/examples/add-headers/add-headers.yaml"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
OBJECT_BYTES=${OBJECT_BYTES:-1024}
ATS_ACCEPT_THREADS=${ATS_ACCEPT_THREADS:-1}
NET_THREADS=${NET_THREADS:-"1 2"}
CONFIGS=${CONFIGS:-"none native wasm-shared wasm-transaction"}
REPORT=${REPORT:-latest}
ncpu=$(nproc)
if [ "$ncpu" -ge 4 ]; then
  : "${ATS_CPUS=0,1}" "${WRK_CPUS=2}" "${NGINX_CPUS=3}"
elif [ "$ncpu" -ge 2 ]; then
  : "${ATS_CPUS=0}" "${WRK_CPUS=1}" "${NGINX_CPUS=1}"
else
  : "${ATS_CPUS=}" "${WRK_CPUS=}" "${NGINX_CPUS=}"
fi

die() { echo "load.sh: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
# taskset prefixes (empty when unpinned)
ats_pin=() wrk_pin=() nginx_pin=()
[ -z "$ATS_CPUS" ] || ats_pin=(taskset -c "$ATS_CPUS")
[ -z "$WRK_CPUS" ] || wrk_pin=(taskset -c "$WRK_CPUS")
[ -z "$NGINX_CPUS" ] || nginx_pin=(taskset -c "$NGINX_CPUS")

for f in "$plugin" "$wasm" "$yaml" "$deny_wasm" "$deny_yaml"; do
  [ -f "$f" ] || die "missing $f: run 'make bench' (it builds everything first)"
done
[[ " $CONFIGS " != *" native "* || -f "$native" ]] || die "missing $native: run 'make bench' (it builds everything first)"
for c in $CONFIGS; do
  case $c in none | native | wasm-shared | wasm-transaction | wasm-bodies | wasm-metrics-off | wasm-deny) ;; *) die "unknown configuration '$c' in CONFIGS" ;; esac
done
[[ " $CONFIGS " == *" none "* ]] || die "CONFIGS must include 'none' (the baseline of the ratios)"

# Debian packages the benchmark needs, installed like the Makefile does (sudo when not root).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
# Debian's matplotlib belongs to Debian's python3, which may not be the first python3 on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || die "python3 is needed"
"$py" -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
bench_apt_install "${missing[@]}"
command -v wrk >/dev/null || die "wrk is not installed"
[ -x /usr/sbin/nginx ] || die "nginx is not installed (Debian package nginx-light)"

bench_tmp ats-wasm-bench
# The origin: nginx (non-daemon child) serving one object of OBJECT_BYTES, cacheable and not.
start_origin

# ---------------------------------------------------------------------------------------------
# ATS instances: one private runroot each.
ats_pid=
ats_port=
ats_dir=
# start_ats CONFIG NET_THREADS ROUND
start_ats() {
  local config=$1 threads=$2 round=$3 d
  d="$tmp/ats-r$round-$config-t$threads"
  ats_dir=$d
  ats_port=$(free_port)
  write_runroot "$d" "$ats_port" "$threads" "$origin_port" 0
  case $config in
    none) : >"$d/etc/plugin.config" ;;
    native) echo "$native" >"$d/etc/plugin.config" ;;
    wasm-shared | wasm-transaction)
      cp "$wasm" "$d/etc/add_headers.wasm"
      cp "$yaml" "$d/etc/add-headers.yaml"
      # The Prometheus endpoint is on (as by default), on a free port.
      echo "$plugin --isolation=${config#wasm-} ${WASM_ARGS:+$WASM_ARGS }--metrics-listen=127.0.0.1:$(free_port) add-headers.yaml" >"$d/etc/plugin.config"
      ;;
    wasm-metrics-off)
      cp "$wasm" "$d/etc/add_headers.wasm"
      cp "$yaml" "$d/etc/add-headers.yaml"
      echo "$plugin --isolation=shared --metrics-listen=off add-headers.yaml" >"$d/etc/plugin.config"
      ;;
    wasm-bodies)
      cp "$wasm" "$d/etc/add_headers.wasm"
      sed 's/^  bodies: none$/  bodies: auto/' "$yaml" >"$d/etc/add-headers.yaml"
      echo "$plugin --isolation=shared --metrics-listen=127.0.0.1:$(free_port) add-headers.yaml" >"$d/etc/plugin.config"
      ;;
    wasm-deny)
      cp "$deny_wasm" "$d/etc/deny.wasm"
      cp "$deny_yaml" "$d/etc/deny.yaml"
      echo "$plugin --isolation=shared --metrics-listen=127.0.0.1:$(free_port) deny.yaml" >"$d/etc/plugin.config"
      ;;
  esac
  setsid "${ats_pin[@]}" traffic_server --run-root="$d/runroot.yaml" </dev/null >"$d/log/console.log" 2>&1 &
  ats_pid=$!
  pids+=("$ats_pid")
  local i
  for i in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$ats_port/verify" 2>/dev/null && return 0
    kill -0 "$ats_pid" 2>/dev/null || break
    sleep 0.05
  done
  tail -n 20 "$d/log/console.log" "$d/log/diags.log" >&2 2>/dev/null || true
  die "ATS ($config, $threads net threads) did not start"
}

# verify CONFIG THREADS: the configuration does what it claims, and /cached is a cache hit.
verify() {
  local config=$1 threads=$2 base="http://127.0.0.1:$ats_port" hdrs body want_hdr want_body
  hdrs=$(curl -fsS -D - -o "$ats_dir/verify.body" "$base/verify" | tr -d '\r') || die "$config: curl $base/verify failed"
  body=$(cat "$ats_dir/verify.body")
  case $config in
    none | wasm-deny) want_hdr=0 want_body="x-added-by=" ;;
    *) want_hdr=1 want_body="x-added-by=ats-wasm" ;;
  esac
  if grep -qi '^x-wasm-filter: add-headers$' <<<"$hdrs"; then
    [ "$want_hdr" = 1 ] || die "$config ($threads net threads): response has 'x-wasm-filter: add-headers' but no plugin is loaded"
  else
    [ "$want_hdr" = 0 ] || die "$config ($threads net threads): response lacks 'x-wasm-filter: add-headers' — the plugin is not working (see $ats_dir/log/diags.log; KEEP_TMP=1 keeps it)"
  fi
  [ "$body" = "$want_body" ] || die "$config ($threads net threads): the origin saw '$body', expected '$want_body'"
  if [ "$config" = wasm-bodies ]; then
    grep -q '^  bodies: auto$' "$ats_dir/etc/add-headers.yaml" || die "$config: add-headers.yaml lacks bodies: auto"
  fi
  if [ "$config" = wasm-deny ]; then
    # The filter is there: a denied path is answered by it, not by the origin.
    local status
    status=$(curl -sS -o /dev/null -w '%{http_code}' "$base/admin/x") || die "$config: curl $base/admin/x failed"
    [ "$status" = 403 ] || die "$config ($threads net threads): /admin/x answered $status, expected the deny filter's 403"
  fi
  if [[ $config == wasm-* ]]; then
    grep -q "^$plugin --isolation=" "$ats_dir/etc/plugin.config" || die "$config: plugin.config is wrong"
    if grep -i 'ats_wasm' "$ats_dir/log/diags.log" | grep -qiE 'error|disabled|skip'; then
      grep -i ats_wasm "$ats_dir/log/diags.log" >&2
      die "$config: ats-wasm reported a problem in diags.log"
    fi
  fi
  # Warm the cache: the first /cached request is a miss; then the origin must not see /cached
  # (a request to /status counts itself), and must see every /uncached.
  curl -fsS -o /dev/null "$base/cached" || die "$config: curl $base/cached failed"
  local before after i hit=0
  for i in $(seq 20); do
    before=$(origin_requests)
    curl -fsS -o /dev/null "$base/cached"
    after=$(origin_requests)
    if [ $((after - before)) = 1 ]; then hit=1; break; fi
    sleep 0.1
  done
  [ "$hit" = 1 ] || die "$config ($threads net threads): /cached is not served from the ATS cache"
  before=$(origin_requests)
  curl -fsS -o /dev/null "$base/uncached"
  curl -fsS -o /dev/null "$base/uncached"
  after=$(origin_requests)
  [ $((after - before)) = 3 ] || die "$config ($threads net threads): /uncached did not reach the origin every time"
}

# run_wrk OUT PATH SECONDS
run_wrk() {
  local out=$1 path=$2 secs=$3 p
  setsid "${wrk_pin[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "http://127.0.0.1:$ats_port$path" </dev/null >"$out" 2>&1 &
  p=$!
  pids+=("$p")
  wait "$p" || die "wrk failed: $(cat "$out")"
  forget "$p"
}

# ---------------------------------------------------------------------------------------------
# Raw outputs go to the temporary directory first and replace results/raw/ only when the run
# completes, so an interrupted run leaves the previous results consistent.
run_raw="$tmp/raw"
mkdir -p "$run_raw"
manifest="$run_raw/manifest.tsv"
printf 'round\tconfig\tobject\tthreads\tfile\torigin_requests\n' >"$manifest"
read -r -a configs <<<"$CONFIGS"
read -r -a threads_list <<<"$NET_THREADS"
n=${#configs[@]}
runs_per_round=$((n * ${#threads_list[@]}))
log "ATS $(ats_version), $ncpu CPUs; ATS on cpu '${ATS_CPUS:-any}', wrk on '${WRK_CPUS:-any}', nginx on '${NGINX_CPUS:-any}'"
log "$ROUNDS rounds x $runs_per_round instances x (${WARMUP}s warm-up + 2 x ${DURATION}s); origin nginx on 127.0.0.1:$origin_port"
start=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate the configuration order by one each round; alternate the order of thread counts.
  order=()
  for ((i = 0; i < n; i++)); do order+=("${configs[$(((i + r - 1) % n))]}"); done
  tl=("${threads_list[@]}")
  if ((r % 2 == 0)); then
    tl=()
    for ((i = ${#threads_list[@]} - 1; i >= 0; i--)); do tl+=("${threads_list[$i]}"); done
  fi
  for t in "${tl[@]}"; do
    for c in "${order[@]}"; do
      start_ats "$c" "$t" "$r"
      verify "$c" "$t"
      [ "$WARMUP" = 0 ] || run_wrk "$ats_dir/warmup.txt" /cached "$WARMUP"
      for obj in cached uncached; do
        f="r$r-$c-$obj-t$t.txt"
        before=$(origin_requests)
        run_wrk "$run_raw/$f" "/$obj" "$DURATION"
        after=$(origin_requests)
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$obj" "$t" "$f" $((after - before - 1)) >>"$manifest"
        log "round $r/$ROUNDS  $(printf '%-17s %-8s %s net thread(s)' "$c" "$obj" "$t")  $(awk '/^Requests\/sec/ {rps = $2} /^ +99%/ {p99 = $2} END {printf "%9.0f req/s  p99 %s", rps, p99}' "$run_raw/$f")"
      done
      stop "$ats_pid"
    done
  done
done
elapsed=$(($(date +%s) - start))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$results"
rm -rf "$raw"
cp -r "$run_raw" "$raw"

# ---------------------------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD -- src pool Cargo.toml Cargo.lock examples 2>/dev/null || commit="$commit (with local changes)"
"$py" "$root/benches/report.py" \
  --raw "$raw" --out "$results/$REPORT" \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "nproc=$ncpu" \
  --meta "cpu=${cpu_model:-unknown}" \
  --meta "kernel=$(uname -srm)" \
  --meta "ats=$(ats_version)" \
  --meta "commit=$commit" \
  --meta "wrk=wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency, ${WARMUP}s warm-up per instance" \
  --meta "rounds=$ROUNDS" \
  --meta "object_bytes=$OBJECT_BYTES" \
  --meta "accept_threads=$ATS_ACCEPT_THREADS" \
  --meta "pinning=ATS cpu ${ATS_CPUS:-any}, wrk cpu ${WRK_CPUS:-any}, nginx cpu ${NGINX_CPUS:-any} (1 worker)" \
  --meta "elapsed=${elapsed}s" \
  --meta "loadavg=$load_before / $load_after"
echo
cat "$results/$REPORT.md"
