# shellcheck shell=bash
# write_runroot DIR ATS_PORT NET_THREADS ORIGIN_PORT DEBUG(0|1)
# Writes a private ATS runroot in DIR (facts in shared/notes/ats-on-debian.md): runroot.yaml
# pointing every writable directory into DIR, and etc/ from Debian's /etc/trafficserver with
# records.config, storage.config and remap.config (`map / http://127.0.0.1:ORIGIN_PORT/`) for a
# loopback reverse proxy. plugin.config is left to the caller. Start it with
#   setsid traffic_server --run-root=DIR/runroot.yaml
write_runroot() {
  local d=$1 port=$2 threads=$3 origin=$4 debug=$5
  mkdir -p "$d"/{etc,log,run,cache}
  cp -r /etc/trafficserver/. "$d/etc/"
  cat >"$d/runroot.yaml" <<YAML
prefix: $d
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/sbin
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: /usr/lib/trafficserver/modules
sysconfdir: $d/etc
datadir: $d
localstatedir: $d
runtimedir: $d/run
logdir: $d/log
cachedir: $d/cache
YAML
  cat >"$d/etc/records.config" <<REC
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.http.server_ports STRING $port
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT $threads
CONFIG proxy.config.accept_threads INT ${ATS_ACCEPT_THREADS:-0}
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.crash_log_helper STRING NULL
CONFIG proxy.config.diags.debug.enabled INT $debug
CONFIG proxy.config.diags.debug.tags STRING ats_wasm
CONFIG proxy.config.log.logging_enabled INT 0
CONFIG proxy.config.http.cache.http INT 1
REC
  echo "$d/cache 64M" >"$d/etc/storage.config"
  echo "map / http://127.0.0.1:$origin/" >"$d/etc/remap.config"
}
