//! The Prometheus endpoint's HTTP server: `GET /metrics` (or `/`) on `--metrics-listen`, one
//! request per connection, everything else 404.
//!
//! One accepting thread hands each connection to a short-lived thread of its own (at most
//! [`MAX_CONCURRENT_SCRAPES`] at once, more are closed unanswered) with 5 s read and write
//! timeouts, so a client that connects and sends nothing holds only its own connection, for at
//! most 5 s, and never delays another scrape. None of these threads is an ATS thread, calls
//! into a guest or takes a lock a hook takes; all are detached, so they never keep
//! `traffic_server` from exiting.
//!
//! # Why not an HTTP server crate
//!
//! `tiny_http` 0.12.0 (the newest release, read in its source) was the candidate and does not
//! keep the endpoint's guarantees:
//! - it sets no read or write timeout on accepted connections and does not expose the socket
//!   to set one, and its connection pool spawns a thread whenever none is idle, without bound:
//!   a silent client holds a thread until it disconnects, and many of them hold as many
//!   threads (here: at most 8, each for at most 5 s);
//! - it adds `Server: tiny-http (Rust)` and `Date` headers to every response and keeps
//!   HTTP/1.1 connections alive unless the client asks otherwise, so the responses would not
//!   be byte-identical to today's (`Connection: close`, fixed headers);
//! - it answers malformed or unsupported requests itself (400, 417, 505) where this server
//!   answers 404.
//!
//! Working around these would mean keeping our own accept loop, thread limit and timeouts and
//! leaving the crate only the request-line parsing (some 20 lines here), so the server stays
//! hand-written and small. The hot path never touches it: callbacks only write [`HookTimer`]
//! slots and counters, which a scrape reads.
//!
//! [`HookTimer`]: super::timing::HookTimer

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use super::counters::{Exporter, FilterSnapshot};
use super::render::render;
use crate::abi::Metrics;
use crate::ts::log;

/// Prepares the endpoint in `TSPluginInit`: binds `listen` (so a port in use is reported
/// there, as one diags.log line) and creates the recorder. `None` when off or on failure; the
/// filters then run untimed.
pub fn prepare(listen: Option<SocketAddr>) -> Option<(TcpListener, Exporter)> {
    let addr = listen?;
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log::error(
                format!("ats_wasm: --metrics-listen={addr}: cannot listen: {e}; the Prometheus endpoint is off, filters still run")
                    .as_bytes(),
            );
            return None;
        }
    };
    Some((listener, Exporter::new()))
}

/// Starts the endpoint's accepting thread, serving `listener` with `exporter`'s counters and
/// `filters`' state; notes the address in diags.log, or logs an error if the thread cannot be
/// started (the plugin runs on without the endpoint).
pub(super) fn serve_in_background(listener: TcpListener, exporter: Exporter, filters: fn() -> Vec<FilterSnapshot>) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let spawned = std::thread::Builder::new().name("ats_wasm-metrics".into()).spawn(move || {
        let busy = Arc::new(AtomicUsize::new(0));
        for conn in listener.incoming().flatten() {
            serve_on_own_thread(conn, &exporter.handle, filters, &busy);
        }
    });
    match spawned {
        Ok(_) => log::note(format!("ats_wasm: Prometheus endpoint on http://{addr}/metrics").as_bytes()),
        Err(e) => log::error(format!("ats_wasm: cannot start the Prometheus endpoint's thread: {e}").as_bytes()),
    }
}

/// At most this many connections are served at once; more are closed unanswered.
const MAX_CONCURRENT_SCRAPES: usize = 8;

/// Serves `conn` on a thread of its own, so that a client that connects and sends nothing
/// (or reads slowly) holds only its own connection, for at most the 5 s timeouts, and never
/// delays other scrapers.
fn serve_on_own_thread(
    conn: TcpStream,
    handle: &PrometheusHandle,
    filters: fn() -> Vec<FilterSnapshot>,
    busy: &Arc<AtomicUsize>,
) {
    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_SCRAPES {
        busy.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (handle, busy2) = (handle.clone(), Arc::clone(busy));
    let spawned = std::thread::Builder::new().name("ats_wasm-scrape".into()).spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = serve(conn, &handle, filters);
        }));
        busy2.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` (or `/`) gets the text format, anything else
/// 404. One request per connection.
fn serve(conn: TcpStream, handle: &PrometheusHandle, filters: fn() -> Vec<FilterSnapshot>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Skip the header fields.
    let mut field = String::new();
    while reader.read_line(&mut field)? > 2 {
        field.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let mut conn = conn;
    if (method == "GET" || method == "HEAD") && (path == "/metrics" || path == "/") {
        let body = render(handle, &filters(), &Metrics::global().snapshot());
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        if method == "GET" {
            conn.write_all(body.as_bytes())?;
        }
    } else {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 27\r\nConnection: close\r\n\r\nonly /metrics is served here")?;
    }
    conn.flush()
}
