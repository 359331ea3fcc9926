# shellcheck shell=bash
# Shared by benches/load.sh and benches/instructions.sh (sourced, not run): a temporary
# directory, the process groups a benchmark starts (killed on exit, error or Ctrl-C), Debian
# packages installed on demand, and the loopback nginx origin.
#
# The sourcing script sets `bench_name` (its name, for messages), defines `die MESSAGE` (prints
# and exits) and `log MESSAGE`, and sets `py` (a python3, for free_port) and OBJECT_BYTES (for
# start_origin).

# bench_tmp PREFIX: creates the temporary directory $tmp (/tmp/PREFIX.XXXXXX) and installs the
# EXIT trap that kills every process group in $pids and removes $tmp (KEEP_TMP=1 keeps it).
bench_tmp() {
  tmp=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$tmp" # nginx's workers run as nobody when started by root
  pids=()          # every process group the benchmark starts: nginx, traffic_server, clients
  trap bench_cleanup EXIT
  trap 'echo; echo "$bench_name: interrupted" >&2; exit 130' INT TERM
}
bench_cleanup() {
  local p
  exec 2>/dev/null # no "Killed" job notices from bash
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
# forget PID: drops PID from $pids (it has ended or been stopped).
forget() { local keep=() p; for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
# stop PID [SECONDS]: SIGTERM to its process group, SIGKILL after SECONDS (10).
stop() {
  local p=$1 i
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for i in $(seq $((${2:-10} * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  forget "$p"
}
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_apt_install PACKAGE...: installs Debian packages like the Makefile does (sudo when not
# root); only warns when that fails — the caller checks for what it cannot do without.
bench_apt_install() {
  [ $# -gt 0 ] || return 0
  local sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  log "installing Debian packages: $*"
  "${sudo_cmd[@]}" apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null ||
    echo "$bench_name: warning: could not install $*" >&2
}

ats_version() { traffic_server --version 2>&1 | awk '/^Traffic Server/ {print $3; exit}'; }

# start_origin: nginx (Debian's nginx-light, 1 worker, a non-daemon child in its own process
# group, prefixed by the ${nginx_pin[@]} command if set) on a free loopback port $origin_port,
# serving one object of OBJECT_BYTES as /cached (max-age=3600) and /uncached (no-store), plus
# /verify (echoes the x-added-by request header) and /status (nginx's request counter), plus
# whatever nginx directives $origin_extra holds (more locations; benches/soak.sh sets it).
# Its files live in $ng ($tmp/nginx).
start_origin() {
  origin_port=$(free_port)
  ng="$tmp/nginx"
  mkdir -p "$ng/www" "$ng/tmp"
  head -c "$OBJECT_BYTES" /dev/zero | tr '\0' 'x' >"$ng/www/object"
  cat >"$ng/nginx.conf" <<NGINX
daemon off;
master_process on;
worker_processes 1;
pid $ng/nginx.pid;
error_log $ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_body_temp_path $ng/tmp/body;
  proxy_temp_path $ng/tmp/proxy;
  fastcgi_temp_path $ng/tmp/fastcgi;
  uwsgi_temp_path $ng/tmp/uwsgi;
  scgi_temp_path $ng/tmp/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$origin_port;
    location = /cached   { alias $ng/www/object; add_header Cache-Control "max-age=3600"; }
    location = /uncached { alias $ng/www/object; add_header Cache-Control "no-store"; }
    # What the origin saw: the x-added-by request header (used only to verify, never measured).
    location = /verify   { add_header Cache-Control "no-store"; return 200 "x-added-by=\$http_x_added_by\n"; }
    # How many requests the origin has served (cache hits must not reach it).
    location = /status   { stub_status; }
${origin_extra:-}
  }
}
NGINX
  setsid "${nginx_pin[@]}" /usr/sbin/nginx -p "$ng" -e "$ng/error.log" -c "$ng/nginx.conf" </dev/null >"$ng/console.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$origin_port/cached" && break; sleep 0.05; done
  curl -fs -o /dev/null "http://127.0.0.1:$origin_port/cached" || { cat "$ng/console.log" "$ng/error.log" >&2 || true; die "nginx did not start"; }
  local size
  size=$(curl -fs "http://127.0.0.1:$origin_port/uncached" | wc -c)
  [ "$size" = "$OBJECT_BYTES" ] || die "origin object is $size bytes, expected $OBJECT_BYTES"
}

# origin_requests: requests nginx has served so far (including this one).
origin_requests() { curl -fsS "http://127.0.0.1:$origin_port/status" | awk 'NR == 3 {print $3}'; }
