#!/usr/bin/env bash
# `make demo`: starts a private Apache Traffic Server on loopback with ats-wasm, the
# add-headers example filter (global) and examples/remap/'s per-route filters in front of a
# loopback echo origin, sends requests through both,
# prints the response headers, what the origin saw and the plugin's Prometheus metrics, then
# serves until Ctrl-C and cleans up.
# Set DEMO_SERVE=0 to stop right after the request (used by CI). Everything lives in .demo/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo="$root/.demo"
plugin="$root/target/release/libats_wasm.so"
wasm="$root/examples/target/wasm32-unknown-unknown/release/add_headers.wasm"
for f in "$plugin" "$wasm"; do [ -f "$f" ] || { echo "missing $f: run 'make build'" >&2; exit 1; }; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ats_port=$(free_port); origin_port=$(free_port); metrics_port=$(free_port)

rm -rf "$demo"
# shellcheck source=examples/runroot.sh
. "$root/examples/runroot.sh"
write_runroot "$demo" "$ats_port" 2 "$origin_port" 1
cp "$wasm" "$demo/etc/add_headers.wasm"
cp "$root/examples/add-headers/add-headers.yaml" "$demo/etc/add-headers.yaml"
# The Prometheus endpoint on a free port (the default is 127.0.0.1:9464).
echo "$plugin --metrics-listen=127.0.0.1:$metrics_port add-headers.yaml" > "$demo/etc/plugin.config"
# Per-route filters: examples/remap/ (rules for api.example and admin.example, a catch-all).
cp "$root/examples/target/wasm32-unknown-unknown/release/deny.wasm" "$demo/etc/deny.wasm"
cp "$root/examples/remap/route-api.yaml" "$root/examples/remap/route-admin.yaml" "$demo/etc/"
sed -e "s|ORIGIN|127.0.0.1:$origin_port|g" -e "s|@plugin=libats_wasm.so|@plugin=$plugin|g" \
  "$root/examples/remap/remap.config" > "$demo/etc/remap.config"

# The origin: answers every request with the request head it received.
cat > "$demo/origin.py" <<'PY'
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (self.requestline + "\r\n" + str(self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "stopping"; exit 0' INT TERM
setsid python3 "$demo/origin.py" "$origin_port" </dev/null >"$demo/log/origin.log" 2>&1 & pids+=($!)
setsid traffic_server --run-root="$demo/runroot.yaml" </dev/null >"$demo/log/console.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$ats_port/" 2>/dev/null && break
  sleep 0.1
done
echo "== ATS $(traffic_server --version 2>&1 | head -1 | awk '{print $3}') on 127.0.0.1:$ats_port, origin on 127.0.0.1:$origin_port"
echo "== plugin.config: $(cat "$demo/etc/plugin.config")"
echo
echo "== curl -i http://127.0.0.1:$ats_port/hello"
curl -sS -i "http://127.0.0.1:$ats_port/hello" | tr -d '\r' | sed 's/^/   /'
echo
echo "== a remap rule's filters (examples/remap/remap.config): curl -i -H 'Host: admin.example' .../private/x, then .../ok"
curl -sS -i -H 'Host: admin.example' "http://127.0.0.1:$ats_port/private/x" | tr -d '\r' | sed 's/^/   /'
echo
curl -sS -i -H 'Host: admin.example' "http://127.0.0.1:$ats_port/ok" | tr -d '\r' | grep -iE '^(HTTP|x-route|x-added-by)' | sed 's/^/   /'
echo
echo "== ats-wasm in diags.log:"
grep ats_wasm "$demo/log/diags.log" | sed 's/^/   /' || true
echo
# A few more requests, so the histograms have something to show.
for i in 1 2 3 4; do curl -sS -o /dev/null "http://127.0.0.1:$ats_port/hello/$i"; done
echo "== curl http://127.0.0.1:$metrics_port/metrics (request/response callback counts, pool, failures)"
curl -sS "http://127.0.0.1:$metrics_port/metrics" |
  grep -E '^ats_wasm_(remap_instances_live|hook_duration_seconds_(count|sum)\{[^}]*hook="(request|response)_headers"|pool_(ready|leased)_vms|pool_instantiations_total|callback_failures_total|failure_outcomes_total)' |
  sed 's/^/   /' || true
if [ "${DEMO_SERVE:-1}" = 1 ] && [ -t 0 ]; then
  echo
  echo "Serving on http://127.0.0.1:$ats_port/ (metrics on http://127.0.0.1:$metrics_port/metrics) — press Ctrl-C to stop."
  wait
fi
