#!/usr/bin/env bash
# `make soak`: MINUTES of keep-alive load through a chain of example filters in both isolations
# at once — two ATS instances side by side under traffic_manager, one `--isolation=shared`, one
# `--isolation=transaction` — with misbehaving requests, HTTP calls, body rewrites and a reload
# every RELOAD_EVERY seconds. See benches/README.md ("Soak").
#
# The chain, in order (plugin.config of each instance):
#   add-headers   adds `x-added-by: ats-wasm` to requests, `x-wasm-filter: add-headers` to responses
#   auth-call     an HTTP call per request to the origin's /check (401 for `Bearer deny` → 403);
#                 failure_policy: fail_closed as shipped (a request it cannot check gets its 503)
#   oob-trap      failure_policy: fail_closed; traps on `x-trap: unreachable` (request phase) or
#                 `x-trap-response: oob` (response phase), loops to the callback deadline on
#                 `x-trap: loop`: each answered 503 by the failure policy
#   body-rewrite  rewrites `origin` into `filter` in response bodies (buffered)
# The client (benches/soak.py) checks every answer: status, marker headers and the exact body.
# Every minute it prints one row per instance: requests, expected failure answers, wrong
# answers, hangs (no answer within TIMEOUT seconds), traffic_server's RSS, reloads. At the end:
# verdict lines; exit 0 only if there was no wrong answer, no hang, no traffic_server restart,
# no failed reload, and each instance's RSS stayed within RSS_TOLERANCE % after the first minute.
#
# Environment (defaults in brackets):
#   MINUTES [10]        length of the run
#   CONNECTIONS [4]     keep-alive connections per instance
#   NET_THREADS [2]     proxy.config.exec_thread.limit of each instance
#   RELOAD_EVERY [30]   seconds between reloads (`traffic_ctl plugin msg ats_wasm reload`); 0: none
#   TIMEOUT [10]        seconds without an answer that count as a hang
#   RSS_TOLERANCE [5]   allowed RSS spread after warm-up, % of the RSS at the end of minute 1
#   SEED [1]            the request mix's random seed
#   TRAP_EVERY [50]     1 in N requests makes oob-trap trap (0: none)
#   LOOP_EVERY [200]    1 in N requests makes oob-trap loop to its deadline (0: none)
#   OUT                 also write the output to this file (`make soak` writes
#                       benches/results/soak.md)
#   KEEP_TMP=1          keep the runroots (diags.log) and the nginx prefix
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=examples/runroot.sh
. "$root/examples/runroot.sh"
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
bench_name=soak.sh
plugin="$root/target/release/libats_wasm.so"
modules="$root/examples/target/wasm32-unknown-unknown/release"

MINUTES=${MINUTES:-10}
CONNECTIONS=${CONNECTIONS:-4}
NET_THREADS=${NET_THREADS:-2}
RELOAD_EVERY=${RELOAD_EVERY:-30}
TIMEOUT=${TIMEOUT:-10}
RSS_TOLERANCE=${RSS_TOLERANCE:-5}
SEED=${SEED:-1}
TRAP_EVERY=${TRAP_EVERY:-50}
LOOP_EVERY=${LOOP_EVERY:-200}
OBJECT_BYTES=1024

die() { echo "soak.sh: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

for f in "$plugin" "$modules"/{add_headers,auth_call,oob_trap,body_rewrite}.wasm; do
  [ -f "$f" ] || die "missing $f: run 'make soak' (it builds everything first)"
done
missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
command -v traffic_manager >/dev/null || missing+=(trafficserver)
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || missing+=(python3)
bench_apt_install "${missing[@]}"
[ -x /usr/sbin/nginx ] || die "nginx is not installed (Debian package nginx-light)"
[ -x "$py" ] || py=$(command -v python3) || die "python3 is needed"

bench_tmp ats-wasm-soak
# The origin: besides the benchmark's locations, /text (a body with the word body-rewrite
# rewrites) and /check (the auth service: 401 for `Bearer deny`, else 200).
# shellcheck disable=SC2034 # read by start_origin
origin_extra='
    location = /text  { add_header Cache-Control "no-store"; return 200 "hello from origin\n"; }
    location = /check { if ($http_authorization = "Bearer deny") { return 401; } return 200 "ok\n"; }'
start_origin
[ "$(curl -fsS "http://127.0.0.1:$origin_port/text")" = "hello from origin" ] || die "origin /text is wrong"

# write_filters DIR: the chain's YAML files and modules in DIR/etc.
write_filters() {
  local etc=$1/etc m
  for m in add_headers auth_call oob_trap body_rewrite; do cp "$modules/$m.wasm" "$etc/"; done
  cp "$root/examples/add-headers/add-headers.yaml" "$etc/"
  cp "$root/examples/body-rewrite/body-rewrite.yaml" "$etc/"
  sed "s/127.0.0.1:9000/127.0.0.1:$origin_port/" "$root/examples/auth-call/auth-call.yaml" >"$etc/auth-call.yaml"
  sed 's/^  bodies: none$/  bodies: none\n  failure_policy: fail_closed/' "$root/examples/oob-trap/oob-trap.yaml" >"$etc/oob-trap.yaml"
  grep -q "127.0.0.1:$origin_port" "$etc/auth-call.yaml" || die "auth-call.yaml: upstream not set"
  grep -q '^  failure_policy: fail_closed$' "$etc/oob-trap.yaml" || die "oob-trap.yaml: policy not set"
}

# start_instance ISOLATION: a runroot in $tmp/ISOLATION, ATS under traffic_manager (which
# traffic_ctl needs); sets port_ISOLATION.
instances=()
start_instance() {
  local iso=$1 d="$tmp/$1" port pid i
  port=$(free_port)
  write_runroot "$d" "$port" "$NET_THREADS" "$origin_port" 0
  echo "CONFIG proxy.config.task_threads INT 2" >>"$d/etc/records.config"
  write_filters "$d"
  echo "$plugin --isolation=$iso --metrics-listen=127.0.0.1:$(free_port) add-headers.yaml auth-call.yaml oob-trap.yaml body-rewrite.yaml" >"$d/etc/plugin.config"
  (cd "$d" && exec setsid traffic_manager --run-root="$d/runroot.yaml" </dev/null >"$d/log/console.log" 2>&1) &
  pid=$!
  pids+=("$pid")
  for i in $(seq 300); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/verify" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! curl -fs -o /dev/null "http://127.0.0.1:$port/verify"; then
    tail -n 20 "$d/log/console.log" "$d/log/diags.log" >&2 2>/dev/null || true
    die "ATS ($iso) did not start"
  fi
  # (oob-trap imports a function no host provides, on purpose: one WARNING says so)
  if grep ats_wasm "$d/log/diags.log" | grep -v 'env.oob_trap_missing' | grep -qE 'ERROR|WARNING'; then
    grep ats_wasm "$d/log/diags.log" >&2
    die "ATS ($iso): ats-wasm reported a problem in diags.log"
  fi
  instances+=("$iso:$port:$d")
  log "ATS ($iso isolation) on port $port, manager pid $pid, runroot $d"
}

start_instance shared
start_instance transaction

log "soak: $MINUTES min, $CONNECTIONS connections per instance, reload every ${RELOAD_EVERY}s"
set +e
if [ -n "${OUT:-}" ]; then
  "$py" "$root/benches/soak.py" --minutes "$MINUTES" --connections "$CONNECTIONS" \
    --reload-every "$RELOAD_EVERY" --timeout "$TIMEOUT" --rss-tolerance "$RSS_TOLERANCE" \
    --seed "$SEED" --trap-every "$TRAP_EVERY" --loop-every "$LOOP_EVERY" "${instances[@]}" | tee "$OUT"
  rc=${PIPESTATUS[0]}
else
  "$py" "$root/benches/soak.py" --minutes "$MINUTES" --connections "$CONNECTIONS" \
    --reload-every "$RELOAD_EVERY" --timeout "$TIMEOUT" --rss-tolerance "$RSS_TOLERANCE" \
    --seed "$SEED" --trap-every "$TRAP_EVERY" --loop-every "$LOOP_EVERY" "${instances[@]}"
  rc=$?
fi
set -e
for inst in "${instances[@]}"; do
  d=${inst#*:*:}
  n=$(grep -c 'ats_wasm.*ERROR\|ERROR.*ats_wasm' "$d/log/diags.log" || true)
  log "${inst%%:*}: $n ats_wasm ERROR lines in diags.log (rate-limited failure lines)"
done
exit "$rc"
