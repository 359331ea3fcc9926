//! Integration-test harness for ats-wasm: runs a private Apache Traffic Server 9.2 (Debian's
//! `traffic_server`) in a temporary runroot, in front of a recording loopback origin. With
//! `ATS10_PREFIX` set (an ATS 10 install, see `tests/ats10/build-ats.sh`), it runs that
//! install's `traffic_server` instead, with a `records.yaml`, and builds the plugin for it.
//!
//! Include it from an integration test file with `mod harness;`. It deliberately does not
//! reference the `ats_wasm` crate (the cdylib leaves `TS*` symbols undefined, so a test binary
//! linking it fails); it only uses std, `tempfile` and `libc`.
//!
//! Typical use:
//!
//! ```ignore
//! mod harness;
//! use harness::Ats;
//!
//! #[test]
//! fn adds_header() {
//!     let ats = Ats::builder()
//!         .plugin(&["filters.yaml"])
//!         .config_file("filters.yaml", "...")
//!         .start();
//!     let resp = ats.get("/x?max_age=60");
//!     assert_eq!(resp.status, 200);
//! }
//! ```
//!
//! Everything ATS writes lives in the temp runroot (config, logs, cache, runtime files); each
//! `Ats` uses its own free loopback ports, so tests can run in parallel threads and several test
//! binaries can run at once. Set `ATS_WASM_KEEP_TMP=1` to keep the runroots after the test
//! (their paths are printed to stderr).

#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long `try_start` waits for ATS to answer through to the origin.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `try_start` relaunches ATS when its port turned out to be taken.
const START_ATTEMPTS: usize = 3;
/// Default read/write timeout of a [`Client`] socket.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each log printed when an `Ats` is dropped during a panic.
const DUMP_LINES: usize = 200;
/// Debian's pristine ATS configuration, copied into each runroot (ATS 9.2).
const SYSTEM_CONFIG_DIR: &str = "/etc/trafficserver";

/// The ATS 10 install the tests run against (`ATS10_PREFIX`), or `None` for Debian's 9.2.
pub fn ats10_prefix() -> Option<PathBuf> {
    std::env::var_os("ATS10_PREFIX").filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// An ATS program: `<ATS10_PREFIX>/bin/<name>`, or `<name>` from `PATH` (Debian's 9.2).
pub fn ats_program(name: &str) -> PathBuf {
    match ats10_prefix() {
        Some(p) => p.join("bin").join(name),
        None => PathBuf::from(name),
    }
}

/// The directory of the ATS install's bundled plugins (`stats_over_http.so`, ...).
pub fn ats_plugin_dir() -> PathBuf {
    match ats10_prefix() {
        Some(p) => p.join("libexec/trafficserver"),
        None => PathBuf::from("/usr/lib/trafficserver/modules"),
    }
}

/// For a test that only makes sense on Debian's ATS 9.2 (its package, `traffic_manager`):
/// prints one line and returns true when the suite runs against ATS 10.
pub fn skip_on_ats10(what: &str) -> bool {
    let skip = ats10_prefix().is_some();
    if skip {
        eprintln!("[harness] skipped on ATS 10 (ATS10_PREFIX is set): {what}");
    }
    skip
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Build artifacts
// ---------------------------------------------------------------------------------------------

/// The repository root (the directory of the root `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `make -C <repo_root> build` once per test process (it builds the plugin `.so` and the
/// example wasm filters; with `ATS10_PREFIX` set, the plugin for that ATS 10). Concurrent callers wait for the first; every caller panics with
/// make's stdout/stderr if it failed.
pub fn build_artifacts() {
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILD.get_or_init(|| {
        let started = Instant::now();
        // With ATS10_PREFIX set, make's cargo inherits it and build.rs builds for that ATS (as
        // it did for this test binary's own `cargo test`, so nothing is rebuilt twice).
        let out = Command::new("make").arg("-C").arg(repo_root()).arg("build").stdin(Stdio::null()).output();
        match out {
            Err(e) => Err(format!("cannot run `make -C {} build`: {e}", repo_root().display())),
            Ok(o) if o.status.success() => {
                eprintln!("[harness] make build took {:.1?}", started.elapsed());
                Ok(())
            }
            Ok(o) => Err(format!(
                "`make -C {} build` failed ({}):\n--- make stdout ---\n{}\n--- make stderr ---\n{}",
                repo_root().display(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Path of the built plugin, `<root>/target/release/libats_wasm.so` (builds it first).
pub fn plugin_so() -> PathBuf {
    build_artifacts();
    repo_root().join("target/release/libats_wasm.so")
}

/// Path of a built example filter: `<root>/examples/target/wasm32-unknown-unknown/release/
/// <name with '-' replaced by '_'>.wasm` (builds it first).
pub fn example_wasm(name: &str) -> PathBuf {
    build_artifacts();
    repo_root().join("examples/target/wasm32-unknown-unknown/release").join(format!("{}.wasm", name.replace('-', "_")))
}

/// A filter YAML in the upstream plugin's format: `name` (also its `root_id`), the plugin
/// `configuration` string (single-quoted in YAML), and the module at `wasm`.
pub fn filter_yaml(name: &str, wasm: &Path, configuration: &str) -> String {
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

/// [`filter_yaml`] with an `upstreams:` map (ats-wasm's key naming where HTTP calls go).
pub fn filter_yaml_upstreams(name: &str, wasm: &Path, configuration: &str, upstreams: &[(&str, String)]) -> String {
    let mut ups = String::from("  upstreams:\n");
    for (k, v) in upstreams {
        ups.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n{ups}  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

/// A loopback port that was free a moment ago (bind 127.0.0.1:0, read the port, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding 127.0.0.1:0")
}

// ---------------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------------

/// One request as the [`Origin`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Request target as received, including the query, e.g. `/hello?x=1`.
    pub path: String,
    /// Header fields in received order, names as received.
    pub headers: Vec<(String, String)>,
    /// The request body (de-chunked if it came chunked).
    pub body: Vec<u8>,
}

impl SeenRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All values of headers with this name (case-insensitive), in received order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        all_headers(&self.headers, name)
    }
}

struct OriginShared {
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// Clones of open connections, so `Drop` can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

/// A loopback HTTP/1.1 origin on a free 127.0.0.1 port: one thread per connection, keep-alive,
/// records every request.
///
/// Response: status 200 unless the query has `status=NNN`; `Cache-Control: max-age=N` if the
/// query has `max_age=N`, else `Cache-Control: no-store`; `Content-Type: text/plain`;
/// `X-Origin-Count: <n>` (the request's sequence number, 1-based); body = the request head
/// exactly as received (request line, header lines and the blank line), or `body_size=N` bytes
/// of `x` (or of the text `fill=T` repeated), or with `echo_body=1` the request's body.
/// `Content-Length` is sent, except for 1xx/204/304 which have no body, and with `chunked=N`,
/// which sends the body chunked, N bytes per chunk, each chunk written and flushed on its own;
/// a HEAD gets the headers only. Also understood: `delay_ms=N` (sleep before answering),
/// `header=Name:Value` (repeatable, percent-decoded; adds a response header) and `allow=T`
/// (an auth service: status 200 when the request has `Authorization: Bearer T`, else 401).
///
/// Requests whose path starts with `/__ready` (the harness' readiness probes) get an answer but
/// are neither recorded nor counted.
pub struct Origin {
    port: u16,
    shared: Arc<OriginShared>,
    accept: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin on a free 127.0.0.1 port.
    pub fn new() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("origin: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("origin: local_addr").port();
        let shared = Arc::new(OriginShared {
            seen: Arc::new(Mutex::new(Vec::new())),
            stop: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("origin-{port}"))
            .spawn(move || origin_accept_loop(listener, s))
            .expect("origin: spawn accept thread");
        Origin { port, shared, accept: Some(accept) }
    }

    /// The origin's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of every request received so far (except readiness probes), in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// The shared list the origin records into.
    pub fn seen_handle(&self) -> Arc<Mutex<Vec<SeenRequest>>> {
        self.shared.seen.clone()
    }

    /// How many requests were received so far (except readiness probes).
    pub fn count(&self) -> usize {
        lock(&self.shared.seen).len()
    }

    /// Forgets the recorded requests (the sequence numbers start again at 1).
    pub fn clear(&self) {
        lock(&self.shared.seen).clear();
    }
}

impl Default for Origin {
    fn default() -> Self {
        Origin::new()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn origin_accept_loop(listener: TcpListener, shared: Arc<OriginShared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            lock(&shared.conns).insert(id, c);
        }
        let s = shared.clone();
        let spawned = thread::Builder::new().name(format!("origin-conn-{id}")).spawn(move || {
            let _ = origin_serve_conn(stream, &s);
            lock(&s.conns).remove(&id);
        });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
        }
    }
}

fn origin_serve_conn(stream: TcpStream, shared: &OriginShared) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(head) = read_head(&mut reader, true)? else {
            return Ok(());
        };
        let (start, headers) = parse_head(&head)?;
        let authorization = find_header(&headers, "authorization").map(str::to_string);
        let mut parts = start.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").trim().to_string();

        if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut reader, &headers, BodyKind::Request)?;

        let close = wants_close(&version, &headers);
        let query = parse_query(&path);
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let is_probe = path.starts_with("/__ready");
        let echoed = q("echo_body").map(|_| body.clone());

        let seq = if is_probe {
            0
        } else {
            let mut seen = lock(&shared.seen);
            seen.push(SeenRequest { method: method.clone(), path: path.clone(), headers, body });
            seen.len()
        };

        let mut status: u16 = q("status").and_then(|s| s.parse().ok()).unwrap_or(200);
        if let Some(token) = q("allow") {
            // A tiny auth service: 200 for `Authorization: Bearer <token>`, else 401.
            let want = format!("Bearer {token}");
            status = if authorization.as_deref() == Some(want.as_str()) { 200 } else { 401 };
        }
        if let Some(ms) = q("delay_ms").and_then(|s| s.parse::<u64>().ok()) {
            thread::sleep(Duration::from_millis(ms));
        }
        let fill = q("fill").unwrap_or("x").as_bytes().to_vec();
        let resp_body: Vec<u8> = match q("body_size").and_then(|s| s.parse::<usize>().ok()) {
            Some(n) => fill.iter().copied().cycle().take(if fill.is_empty() { 0 } else { n }).collect(),
            None if echoed.is_some() => echoed.unwrap_or_default(),
            None => head.clone(),
        };
        let chunk_size = q("chunked").and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0);
        let no_body = (100..200).contains(&status) || status == 204 || status == 304;

        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
        match q("max_age") {
            Some(n) => out.push_str(&format!("Cache-Control: max-age={n}\r\n")),
            None => out.push_str("Cache-Control: no-store\r\n"),
        }
        out.push_str("Content-Type: text/plain\r\n");
        out.push_str(&format!("X-Origin-Count: {seq}\r\n"));
        if is_probe && let Ok(me) = writer.local_addr() {
            // Which origin answered: a probe answered through another test's ATS (that won a
            // race for the same free port) names another origin.
            out.push_str(&format!("X-Harness-Origin: {}\r\n", me.port()));
        }
        for (k, v) in &query {
            if k == "header"
                && let Some((name, value)) = v.split_once(':')
            {
                out.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
            }
        }
        if !no_body && chunk_size.is_some() {
            out.push_str("Transfer-Encoding: chunked\r\n");
        } else if !no_body {
            out.push_str(&format!("Content-Length: {}\r\n", resp_body.len()));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        let with_body = !no_body && !method.eq_ignore_ascii_case("HEAD");
        match chunk_size {
            Some(n) if with_body => {
                // One write (and flush) per chunk, so the proxy sees them arrive separately.
                writer.write_all(&bytes)?;
                writer.flush()?;
                for c in resp_body.chunks(n) {
                    let mut framed = format!("{:x}\r\n", c.len()).into_bytes();
                    framed.extend_from_slice(c);
                    framed.extend_from_slice(b"\r\n");
                    writer.write_all(&framed)?;
                    writer.flush()?;
                }
                writer.write_all(b"0\r\n\r\n")?;
            }
            _ => {
                if with_body {
                    bytes.extend_from_slice(&resp_body);
                }
                writer.write_all(&bytes)?;
            }
        }
        writer.flush()?;
        if close {
            let _ = writer.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn wants_close(version: &str, headers: &[(String, String)]) -> bool {
    let conn: Vec<String> = all_headers(headers, "connection")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    if conn.iter().any(|t| t == "close") {
        return true;
    }
    version.eq_ignore_ascii_case("HTTP/1.0") && !conn.iter().any(|t| t == "keep-alive")
}

fn parse_query(path: &str) -> Vec<(String, String)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reason phrase of common status codes (`Unknown` otherwise).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 message reading (shared by the origin and the client)
// ---------------------------------------------------------------------------------------------

const MAX_LINE: u64 = 1 << 20;
const MAX_HEAD: usize = 4 << 20;

/// Reads one CRLF/LF-terminated line, raw. Returns an empty vec at EOF.
fn read_line_raw<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.take(MAX_LINE).read_until(b'\n', &mut line)?;
    Ok(line)
}

/// Reads a message head (start line through the blank line) exactly as received. `None` on a
/// clean EOF before any byte. Leading empty lines are skipped when `skip_leading_crlf`.
fn read_head<R: BufRead>(r: &mut R, skip_leading_crlf: bool) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let line = read_line_raw(r)?;
        if line.is_empty() {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside message head"));
        }
        let blank = line == b"\r\n" || line == b"\n";
        if blank && head.is_empty() && skip_leading_crlf {
            continue;
        }
        head.extend_from_slice(&line);
        if blank {
            return Ok(Some(head));
        }
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "header line too long"));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "message head too large"));
        }
    }
}

/// Splits a head into its start line and header fields (names as received, values trimmed).
fn parse_head(head: &[u8]) -> io::Result<(String, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        match line.split_once(':') {
            Some((k, v)) => headers.push((k.to_string(), v.trim().to_string())),
            None => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("malformed header line {line:?}")));
            }
        }
    }
    Ok((start, headers))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Request,
    /// A response body that may be delimited by the connection closing.
    Response,
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    all_headers(headers, "transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    match find_header(headers, "content-length") {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad Content-Length {v:?}"))),
    }
}

/// Reads a message body framed by chunked encoding, Content-Length, or (responses only) EOF.
fn read_body<R: BufRead>(r: &mut R, headers: &[(String, String)], kind: BodyKind) -> io::Result<Vec<u8>> {
    if is_chunked(headers) {
        return read_chunked(r);
    }
    if let Some(n) = content_length(headers)? {
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if kind == BodyKind::Response {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line_raw(r)?;
        if line.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunked body"));
        }
        let text = String::from_utf8_lossy(&line);
        let size_str = text.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailer section up to the blank line.
            loop {
                let t = read_line_raw(r)?;
                if t.is_empty() || t == b"\r\n" || t == b"\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line_raw(r)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "missing CRLF after chunk"));
        }
    }
}

/// Encodes `body` with chunked transfer coding in chunks of at most `chunk_size` bytes
/// (for sending with a `Transfer-Encoding: chunked` header through [`Client::request`]).
pub fn chunk_encode(body: &[u8], chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(chunk_size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn all_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// An HTTP response as a [`Client`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header fields in received order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All values of headers with this name (case-insensitive), in received order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        all_headers(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// A keep-alive HTTP/1.1 connection to a server (normally ATS; see [`Ats::client`]).
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    port: u16,
    closed: bool,
}

impl Client {
    /// Connects to 127.0.0.1:`port` (30 s read/write timeouts).
    pub fn connect(port: u16) -> io::Result<Client> {
        Client::connect_timeout(port, CLIENT_TIMEOUT)
    }

    /// Connects to 127.0.0.1:`port` with the given connect and read/write timeout.
    pub fn connect_timeout(port: u16, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::new(stream), writer, port, closed: false })
    }

    /// Changes the socket read/write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))
    }

    /// True once the server signalled `Connection: close` or closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `GET path` with extra headers.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.request("GET", path, headers, b"")
    }

    /// Sends one request and reads its response. Adds `Host: 127.0.0.1:<port>` unless given,
    /// and `Content-Length` when there is a body (or the method is POST/PUT/PATCH) unless a
    /// `Content-Length` or `Transfer-Encoding` header is given (then `body` is sent as is;
    /// see [`chunk_encode`]).
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the server closed this connection"));
        }
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !has("host") {
            req.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.port));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let m = method.to_ascii_uppercase();
        if !has("content-length")
            && !has("transfer-encoding")
            && (!body.is_empty() || m == "POST" || m == "PUT" || m == "PATCH")
        {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)?;
        self.read_response(m == "HEAD")
    }

    /// Writes raw bytes to the connection (for malformed or hand-made requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Reads one response (skipping interim 1xx responses other than 101). `head_request`:
    /// the request was HEAD, so there is no body. 204 and 304 have no body either.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let Some(head) = read_head(&mut self.reader, true)? else {
                self.closed = true;
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
            };
            let (start, headers) = parse_head(&head)?;
            let mut parts = start.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            if !version.starts_with("HTTP/") {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {start:?}")));
            }
            let status: u16 = parts
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {start:?}")))?;
            let reason = parts.next().unwrap_or("").trim().to_string();
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let no_body = head_request || status == 204 || status == 304 || status < 200;
            let body = if no_body {
                Vec::new()
            } else {
                let delimited_by_close = !is_chunked(&headers) && content_length(&headers)?.is_none();
                let body = read_body(&mut self.reader, &headers, BodyKind::Response)?;
                if delimited_by_close {
                    self.closed = true;
                }
                body
            };
            if wants_close(version, &headers) {
                self.closed = true;
            }
            return Ok(Response { status, reason, headers, body });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runroot
// ---------------------------------------------------------------------------------------------

/// A private ATS runroot in a temp dir: every ATS directory but the binaries and plugins.
struct Runroot {
    dir: tempfile::TempDir,
    root: PathBuf,
    etc: PathBuf,
    log: PathBuf,
    run: PathBuf,
    cache: PathBuf,
    yaml: PathBuf,
}

impl Runroot {
    fn create() -> io::Result<Runroot> {
        let dir = tempfile::Builder::new().prefix("ats-wasm-test.").tempdir()?;
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        let log = root.join("log");
        let run = root.join("run");
        let cache = root.join("cache");
        let var = root.join("var");
        for d in [&etc, &log, &run, &cache, &var] {
            fs::create_dir_all(d)?;
        }
        let r = root.display();
        let yaml = root.join("runroot.yaml");
        let layout = match ats10_prefix() {
            Some(p) => {
                copy_dir(&p.join("etc/trafficserver"), &etc)?;
                // ATS 10 reads records.yaml; its default one would be merged with ours.
                let _ = fs::remove_file(etc.join("records.yaml"));
                let p = p.display();
                format!(
                    "prefix: {r}\n\
                     exec_prefix: {p}\n\
                     bindir: {p}/bin\n\
                     sbindir: {p}/bin\n\
                     includedir: {p}/include\n\
                     libdir: {p}/lib\n\
                     sysconfdir: {r}/etc\n\
                     libexecdir: {p}/libexec/trafficserver\n\
                     datadir: {r}/var\n\
                     localstatedir: {r}/var\n\
                     runtimedir: {r}/run\n\
                     logdir: {r}/log\n\
                     cachedir: {r}/cache\n"
                )
            }
            None => {
                copy_dir(Path::new(SYSTEM_CONFIG_DIR), &etc)?;
                format!(
                    "prefix: {r}\n\
                 exec_prefix: /usr\n\
                 bindir: /usr/bin\n\
                 sbindir: /usr/sbin\n\
                 includedir: /usr/include\n\
                 libdir: /usr/lib/trafficserver\n\
                 sysconfdir: {r}/etc\n\
                 libexecdir: /usr/lib/trafficserver/modules\n\
                 datadir: {r}/var\n\
                 localstatedir: {r}/var\n\
                 runtimedir: {r}/run\n\
                 logdir: {r}/log\n\
                 cachedir: {r}/cache\n"
                )
            }
        };
        fs::write(&yaml, layout)?;
        fs::write(etc.join("storage.config"), format!("{} 64M\n", cache.display()))?;
        fs::write(etc.join("plugin.config"), "")?;
        Ok(Runroot { dir, root, etc, log, run, cache, yaml })
    }

    fn write_records(&self, port: u16, net_threads: usize, extra: &[String]) -> io::Result<()> {
        let mut s = records_config(port, net_threads);
        // Keep ATS's own resolver off the network (tests use IP literals) and its error page
        // templates inside the runroot.
        let resolv = self.etc.join("resolv.conf");
        fs::write(&resolv, "nameserver 127.0.0.1\n")?;
        s.push_str(&format!("CONFIG proxy.config.dns.resolv_conf STRING {}\n", resolv.display()));
        s.push_str(&format!(
            "CONFIG proxy.config.body_factory.template_sets_dir STRING {}\n",
            self.etc.join("body_factory").display()
        ));
        for line in extra {
            s.push_str(line);
            s.push('\n');
        }
        if ats10_prefix().is_some() {
            return fs::write(self.etc.join("records.yaml"), records_yaml(&s));
        }
        fs::write(self.etc.join("records.config"), s)
    }

    /// With `ATS_WASM_KEEP_TMP` set, keeps the directory on disk (and says where).
    fn keep_if_asked(self) {
        if std::env::var_os("ATS_WASM_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0") {
            let p = self.dir.keep();
            eprintln!("[harness] kept runroot {}", p.display());
        }
    }
}

/// The records.config every harness ATS starts from (9.2's `CONFIG name TYPE value` format).
/// Lines given with [`AtsBuilder::record`] are appended after it; for a name given twice the
/// later line wins.
pub fn records_config(port: u16, net_threads: usize) -> String {
    format!(
        "\
CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.http.server_ports STRING {port}:ip-in=127.0.0.1
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT {net_threads}
CONFIG proxy.config.accept_threads INT 0
CONFIG proxy.config.task_threads INT 2
CONFIG proxy.config.reverse_proxy.enabled INT 1
CONFIG proxy.config.url_remap.remap_required INT 1
CONFIG proxy.config.url_remap.pristine_host_hdr INT 0
CONFIG proxy.config.crash_log_helper STRING NULL
CONFIG proxy.config.diags.debug.enabled INT 1
CONFIG proxy.config.diags.debug.tags STRING ats_wasm
CONFIG proxy.config.http.cache.http INT 1
CONFIG proxy.config.http.wait_for_cache INT 1
CONFIG proxy.config.http.insert_request_via_str INT 1
CONFIG proxy.config.http.insert_response_via_str INT 0
CONFIG proxy.config.http.negative_caching_enabled INT 0
CONFIG proxy.config.http.connect_attempts_timeout INT 5
CONFIG proxy.config.net.connections_throttle INT 4000
CONFIG proxy.config.log.max_space_mb_for_logs INT 100
CONFIG proxy.config.log.max_space_mb_headroom INT 10
CONFIG proxy.config.diags.output.error STRING L
CONFIG proxy.config.diags.output.fatal STRING EL
CONFIG proxy.config.diags.output.alert STRING EL
CONFIG proxy.config.diags.output.emergency STRING EL
"
    )
}

/// ATS 10's `records.yaml` for 9.2-format `CONFIG name TYPE value` lines (the form tests give
/// records in): one flat, typed key per record under `records:` (ATS 10 joins nested keys with
/// dots, so `a.b: 1` is `a: {b: 1}`); for a name given twice the later line wins. Records ATS 10
/// renamed are written under their new names.
pub fn records_yaml(records_config: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    for line in records_config.lines() {
        let mut parts = line.trim().splitn(4, ' ');
        let (Some("CONFIG"), Some(name), Some(ty), value) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(name) = name.strip_prefix("proxy.config.") else { continue };
        // ATS 10.0 made exec_thread.autoconfig a map (`enabled`, `scale`).
        let name = if name == "exec_thread.autoconfig" { "exec_thread.autoconfig.enabled" } else { name };
        let value = value.unwrap_or("").trim();
        let yaml = match ty {
            "INT" => format!("!!int {value}"),
            "FLOAT" => format!("!!float {value}"),
            _ => format!("!!str \"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
        };
        if values.insert(name.to_string(), yaml).is_none() {
            order.push(name.to_string());
        }
    }
    let mut out = String::from("records:\n");
    for name in order {
        out.push_str(&format!("  {name}: {}\n", values[&name]));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if fs::metadata(&src)?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

/// Spawns `cmd` from one long-lived thread, in its own session/process group, with
/// `PR_SET_PDEATHSIG = SIGKILL`: if the test process dies (even by SIGKILL), ATS dies too.
/// (The death signal follows the *thread* that forked, hence the dedicated thread.)
fn spawn_in_own_session(mut cmd: Command) -> io::Result<Child> {
    type Req = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    let tx = lock(SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the harness spawner thread");
        Mutex::new(tx)
    }))
    .clone();
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx)).map_err(|_| io::Error::other("harness spawner thread is gone"))?;
    rrx.recv().map_err(|_| io::Error::other("harness spawner thread is gone"))?
}

/// Whether `pid` (our unreaped child) has exited, without reaping it.
fn child_exited(pid: u32) -> bool {
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        if r != 0 {
            // ECHILD: already reaped (or not ours) — not running.
            return true;
        }
        info.si_pid() != 0
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for l in &lines[start..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Ats
// ---------------------------------------------------------------------------------------------

/// Builds and starts an [`Ats`]; get one from [`Ats::builder`].
///
/// In plugin lines, record lines, remap lines and config file contents, these placeholders are
/// replaced at start: `{origin}` → `127.0.0.1:<origin port>`, `{origin_port}`, `{ats_port}`,
/// `{config_dir}`, `{plugin_so}` (the plugin's absolute path, for `@plugin=` in remap lines).
pub struct AtsBuilder {
    net_threads: usize,
    plugin_lines: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    records: Vec<String>,
    remap: Vec<String>,
    env: Vec<(OsString, OsString)>,
    origin: Origin,
    manager: bool,
}

impl AtsBuilder {
    /// Starts `traffic_manager` (which starts `traffic_server`), as production does, so that
    /// [`Ats::ctl`] (`traffic_ctl`) works: ATS 9.2's `traffic_ctl` talks to the manager. On
    /// ATS 10 (no manager) this starts `traffic_server` alone, which `traffic_ctl` talks to.
    pub fn under_manager(mut self) -> Self {
        self.manager = true;
        self
    }

    /// Number of ET_NET threads (`exec_thread.limit`, autoconfig off). Default 2.
    pub fn net_threads(mut self, n: usize) -> Self {
        self.net_threads = n;
        self
    }

    /// Adds the plugin.config line `<plugin_so()> <args...>` (builds the plugin first).
    /// Relative paths in `args` resolve against the config dir (see [`Self::config_file`]).
    ///
    /// Unless `args` has a `--metrics-listen`, `--metrics-listen=127.0.0.1:0` comes first: each
    /// ATS gets its own free Prometheus port (the plugin's default, 9464, would clash between
    /// tests running at once); [`Ats::metrics_port`] reads which one.
    pub fn plugin(self, args: &[&str]) -> Self {
        let mut line = plugin_so().display().to_string();
        if !args.iter().any(|a| a.starts_with("--metrics-listen")) {
            line.push_str(" --metrics-listen=127.0.0.1:0");
        }
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        self.plugin_line(&line)
    }

    /// Adds an arbitrary plugin.config line (e.g. `stats_over_http.so`, or a bad path).
    pub fn plugin_line(mut self, raw: &str) -> Self {
        self.plugin_lines.push(raw.to_string());
        self
    }

    /// Writes an extra file into the config dir (sysconfdir; `name` may contain `/`). Files
    /// are written last, so this can also replace any generated config file.
    pub fn config_file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.push((name.to_string(), contents.as_ref().to_vec()));
        self
    }

    /// Appends a records.config line, e.g. `CONFIG proxy.config.http.cache.http INT 0`
    /// (it overrides the harness default of the same name).
    pub fn record(mut self, line: &str) -> Self {
        self.records.push(line.to_string());
        self
    }

    /// Sets `proxy.config.diags.debug.tags` (default `ats_wasm`).
    pub fn debug_tags(self, tags: &str) -> Self {
        self.record(&format!("CONFIG proxy.config.diags.debug.tags STRING {tags}"))
    }

    /// Adds a remap.config line; the first call replaces the default
    /// `map / http://127.0.0.1:<origin>/` (use `{origin}` for `127.0.0.1:<origin port>`).
    pub fn remap(mut self, line: &str) -> Self {
        self.remap.push(line.to_string());
        self
    }

    /// Sets an environment variable for the traffic_server process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The port of the origin this ATS will proxy to.
    pub fn origin_port(&self) -> u16 {
        self.origin.port()
    }

    /// Starts ATS; panics with its console output and diags.log if it does not get ready.
    pub fn start(self) -> Ats {
        match self.try_start() {
            Ok(ats) => ats,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts ATS and waits until a request through it to `/__ready` gets any HTTP response.
    /// Fails (with console output and diags.log) if ATS exits or is not ready within 20 s.
    /// Relaunches on a fresh port (up to 3 attempts) if the port turned out to be taken.
    pub fn try_start(self) -> Result<Ats, String> {
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.launch() {
                Ok(l) => {
                    return Ok(Ats {
                        port: l.port,
                        pid: l.pid,
                        child: Mutex::new(Some(l.child)),
                        status: Mutex::new(None),
                        console: l.console,
                        config_dir: l.runroot.etc.clone(),
                        log_dir: l.runroot.log.clone(),
                        origin: self.origin,
                        started_in: l.started_in,
                        runroot: Some(l.runroot),
                    });
                }
                Err(e) => {
                    last_err = e.message;
                    if !e.port_clash || attempt == START_ATTEMPTS {
                        break;
                    }
                    eprintln!("[harness] ATS start attempt {attempt}: port taken, retrying");
                }
            }
        }
        Err(last_err)
    }

    fn substitute(&self, s: &str, port: u16, rr: &Runroot) -> String {
        s.replace("{origin}", &format!("127.0.0.1:{}", self.origin.port()))
            .replace("{origin_port}", &self.origin.port().to_string())
            .replace("{ats_port}", &port.to_string())
            .replace("{config_dir}", &rr.etc.display().to_string())
            .replace("{plugin_so}", &plugin_so().display().to_string())
    }

    fn launch(&self) -> Result<Launched, LaunchError> {
        let fail =
            |what: &str, e: io::Error| LaunchError { message: format!("harness: {what}: {e}"), port_clash: false };
        let rr = Runroot::create().map_err(|e| fail("creating the runroot", e))?;
        let port = free_port();
        let sub = |s: &str| self.substitute(s, port, &rr);

        let records: Vec<String> = self.records.iter().map(|l| sub(l)).collect();
        rr.write_records(port, self.net_threads, &records).map_err(|e| fail("writing records.config", e))?;
        let remap = if self.remap.is_empty() {
            format!("map / http://127.0.0.1:{}/\n", self.origin.port())
        } else {
            self.remap.iter().map(|l| sub(l) + "\n").collect()
        };
        fs::write(rr.etc.join("remap.config"), remap).map_err(|e| fail("writing remap.config", e))?;
        let plugins: String = self.plugin_lines.iter().map(|l| sub(l) + "\n").collect();
        fs::write(rr.etc.join("plugin.config"), plugins).map_err(|e| fail("writing plugin.config", e))?;
        for (name, contents) in &self.files {
            let path = rr.etc.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| fail("creating a config subdir", e))?;
            }
            let contents = match std::str::from_utf8(contents) {
                Ok(text) => sub(text).into_bytes(),
                Err(_) => contents.clone(),
            };
            fs::write(&path, contents).map_err(|e| fail(&format!("writing {name}"), e))?;
        }

        let console = rr.root.join("console.log");
        let out = fs::File::create(&console).map_err(|e| fail("creating console.log", e))?;
        let err = out.try_clone().map_err(|e| fail("cloning console.log", e))?;
        // ATS 10.0 removed traffic_manager: its traffic_ctl talks to traffic_server (JSON-RPC).
        let program = if self.manager && ats10_prefix().is_none() { "traffic_manager" } else { "traffic_server" };
        let mut cmd = Command::new(ats_program(program));
        cmd.arg(format!("--run-root={}", rr.yaml.display()))
            .current_dir(&rr.root)
            .env_remove("TS_ROOT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = spawn_in_own_session(cmd).map_err(|e| fail("spawning traffic_server", e))?;
        let pid = child.id();
        let mut launched = Launched { runroot: rr, child, pid, port, console, started_in: None };

        // Readiness: any HTTP response to /__ready through ATS, while the process lives.
        let deadline = started + READY_TIMEOUT;
        let mut probe = 0u32;
        loop {
            if child_exited(pid) {
                let status = match launched.child.wait() {
                    Ok(st) => st.to_string(),
                    Err(e) => format!("status unknown: {e}"),
                };
                return Err(launched.failure(&format!("traffic_server exited ({status})")));
            }
            if Instant::now() > deadline {
                kill_group_and_reap(&mut launched.child, Duration::from_secs(2));
                return Err(launched.failure(&format!("traffic_server did not get ready within {READY_TIMEOUT:?}")));
            }
            probe += 1;
            let answer = Client::connect_timeout(port, Duration::from_secs(2))
                .and_then(|mut c| c.get(&format!("/__ready?probe={probe}"), &[("Connection", "close")]));
            let ok = answer.is_ok();
            let foreign = answer.as_ref().ok().and_then(|r| r.header("x-harness-origin").map(str::to_string));
            // ATS names itself in `Server` (`proxy.config.http.response_server_enabled`); an
            // answer without it comes from something else on this port, e.g. another test's
            // Prometheus endpoint, which bound port 0 and got the same port from the kernel.
            let not_ats =
                answer.as_ref().ok().is_some_and(|r| !r.header("server").is_some_and(|s| s.starts_with("ATS/")));
            let clash = match foreign.filter(|o| *o != self.origin.port().to_string()) {
                Some(other) => Some(format!("port {port} is served by another ATS (origin {other})")),
                None if not_ats => Some(format!("port {port} is served by something other than ATS")),
                None => None,
            };
            if let Some(why) = clash {
                // Another process holds this port (ours cannot bind it): start over elsewhere.
                kill_group_and_reap(&mut launched.child, Duration::from_secs(2));
                let mut e = launched.failure(&why);
                e.port_clash = true;
                return Err(e);
            }
            if ok && !child_exited(pid) {
                launched.started_in = Some(started.elapsed());
                return Ok(launched);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Launched {
    runroot: Runroot,
    child: Child,
    pid: u32,
    port: u16,
    console: PathBuf,
    started_in: Option<Duration>,
}

struct LaunchError {
    message: String,
    port_clash: bool,
}

impl Launched {
    fn failure(self, what: &str) -> LaunchError {
        let console = read_lossy(&self.console);
        let diags = read_lossy(&self.runroot.log.join("diags.log"));
        let port_clash = [&console, &diags]
            .iter()
            .any(|t| t.contains("Address already in use") || t.contains("Could not bind or listen"));
        let message = format!(
            "ATS failed to start: {what}\n  runroot: {}\n  port: {}\n\
             --- traffic_server console ---\n{}\n--- diags.log ---\n{}\n--- plugin.config ---\n{}",
            self.runroot.root.display(),
            self.port,
            tail_lines(&console, DUMP_LINES),
            tail_lines(&diags, DUMP_LINES),
            read_lossy(&self.runroot.etc.join("plugin.config")),
        );
        self.runroot.keep_if_asked();
        LaunchError { message, port_clash }
    }
}

/// SIGTERM the child's process group, wait up to `grace`, SIGKILL the group, reap.
fn kill_group_and_reap(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let pgid = pid as libc::pid_t;
    if !child_exited(pid) {
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while !child_exited(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    // The leader is at most a zombie here, so the group id cannot have been reused: kill any
    // stragglers of the group (and the leader if it ignored SIGTERM).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    child.wait().ok()
}

/// A running private traffic_server with its own origin; stopped on drop.
pub struct Ats {
    port: u16,
    pid: u32,
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
    console: PathBuf,
    config_dir: PathBuf,
    log_dir: PathBuf,
    started_in: Option<Duration>,
    origin: Origin,
    // Last: the directory goes after the process and the origin.
    runroot: Option<Runroot>,
}

impl Ats {
    /// A builder with the defaults (2 net threads, no plugin, `map / <origin>`).
    pub fn builder() -> AtsBuilder {
        AtsBuilder {
            net_threads: 2,
            plugin_lines: Vec::new(),
            files: Vec::new(),
            records: Vec::new(),
            remap: Vec::new(),
            env: Vec::new(),
            origin: Origin::new(),
            manager: false,
        }
    }

    /// Runs `traffic_ctl <args>` against this ATS (started [`AtsBuilder::under_manager`]);
    /// returns its exit success and output (stdout then stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let rr = self.runroot.as_ref().expect("a runroot");
        let out = Command::new(ats_program("traffic_ctl"))
            .arg(format!("--run-root={}", rr.yaml.display()))
            .args(args)
            .env_remove("TS_ROOT")
            .output()
            .expect("running traffic_ctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The `traffic_server` process's id: [`Self::pid`] itself, or under a manager its child
    /// named `traffic_server` (`None` while there is none).
    pub fn server_pid(&self) -> Option<u32> {
        // argv[0] (ATS renames its threads, so `comm` does not say `traffic_server`).
        let is_server = |pid: u32| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            argv0.ends_with(b"traffic_server")
        };
        if is_server(self.pid) {
            return Some(self.pid);
        }
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == self.pid && is_server(pid)).then_some(pid)
        })
    }

    /// `traffic_server`'s resident set size in KiB (`VmRSS`).
    pub fn server_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.server_pid()?)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    }

    /// ATS's HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The origin ATS proxies to by default.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The config dir (sysconfdir) of this instance.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The log dir of this instance (diags.log and access logs).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// traffic_server's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How long it took from spawn until ATS answered the readiness probe.
    pub fn started_in(&self) -> Option<Duration> {
        self.started_in
    }

    /// `GET path` on a new connection; panics on I/O errors.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// One request on a new connection with `Connection: close` (unless a `Connection`
    /// header is given); panics on I/O errors (see [`Self::try_request`]).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        match self.try_request(method, path, headers, body) {
            Ok(r) => r,
            Err(e) => panic!(
                "{method} {path} through ATS (port {}) failed: {e} (ATS running: {})",
                self.port,
                self.is_running()
            ),
        }
    }

    /// Like [`Self::request`] but returns I/O errors.
    pub fn try_request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
        let mut c = Client::connect(self.port)?;
        let mut hs: Vec<(&str, &str)> = headers.to_vec();
        if !hs.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
            hs.push(("Connection", "close"));
        }
        c.request(method, path, &hs, body)
    }

    /// A new keep-alive connection to ATS; panics if it cannot connect.
    pub fn client(&self) -> Client {
        Client::connect(self.port).unwrap_or_else(|e| panic!("connecting to ATS: {e}"))
    }

    /// The current contents of `<log_dir>/diags.log` (TSNote/TSError/TSWarning, ATS notes).
    pub fn diags_log(&self) -> String {
        read_lossy(&self.log_dir.join("diags.log"))
    }

    /// The port of the plugin's Prometheus endpoint, from its diags.log note (`Prometheus
    /// endpoint on http://127.0.0.1:<port>/metrics`); `None` if none appears within 5 s.
    pub fn metrics_port(&self) -> Option<u16> {
        const NOTE: &str = "Prometheus endpoint on http://";
        let mut port = None;
        wait_until(Duration::from_secs(5), || {
            let diags = self.diags_log();
            port = diags.lines().find_map(|l| {
                let addr = l.split(NOTE).nth(1)?.split('/').next()?;
                addr.rsplit(':').next()?.parse().ok()
            });
            port.is_some()
        });
        port
    }

    /// One scrape of the plugin's Prometheus endpoint (panics without one).
    pub fn scrape_metrics(&self) -> String {
        let port =
            self.metrics_port().unwrap_or_else(|| panic!("no endpoint note in diags.log:\n{}", self.diags_log()));
        let mut c = Client::connect(port).unwrap_or_else(|e| panic!("connecting to the metrics endpoint: {e}"));
        let r = c
            .get("/metrics", &[("Connection", "close")])
            .unwrap_or_else(|e| panic!("scraping the metrics endpoint: {e}"));
        assert_eq!(r.status, 200, "{r:?}");
        r.body_str().into_owned()
    }

    /// traffic_server's stdout+stderr (TSDebug output with the enabled tags goes here).
    pub fn console(&self) -> String {
        read_lossy(&self.console)
    }

    /// Path of the console file.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// Polls diags.log until it contains `needle`; false after `timeout`.
    pub fn wait_for_diags(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.diags_log().contains(needle))
    }

    /// Polls the console output until it contains `needle`; false after `timeout`.
    pub fn wait_for_console(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.console().contains(needle))
    }

    /// Whether traffic_server is still running.
    pub fn is_running(&self) -> bool {
        match lock(&self.child).as_ref() {
            Some(c) => !child_exited(c.id()),
            None => false,
        }
    }

    /// The exit status if traffic_server has exited (reaps it), else `None`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        if let Some(c) = child.as_mut()
            && child_exited(c.id())
        {
            let st = kill_group_and_reap(c, Duration::ZERO);
            *lock(&self.status) = st;
            *child = None;
        }
        *lock(&self.status)
    }

    /// Waits up to `timeout` for traffic_server to exit by itself; its status, or `None`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || !self.is_running());
        self.exit_status()
    }

    /// Stops traffic_server: SIGTERM to its process group, up to 10 s, then SIGKILL; reaps
    /// it. Idempotent.
    pub fn stop(&self) {
        let mut child = lock(&self.child);
        if let Some(mut c) = child.take() {
            let st = kill_group_and_reap(&mut c, STOP_TIMEOUT);
            *lock(&self.status) = st;
        }
    }

    /// Everything useful for debugging a failure: the last lines of the console, diags.log and
    /// every other log in the log dir, plus plugin.config and remap.config.
    pub fn failure_report(&self) -> String {
        let mut out = format!(
            "===== ATS on port {} (pid {}, origin port {}, runroot {}) =====\n",
            self.port,
            self.pid,
            self.origin.port(),
            self.runroot.as_ref().map(|r| r.root.display().to_string()).unwrap_or_default()
        );
        for name in ["plugin.config", "remap.config"] {
            out.push_str(&format!("----- {name} -----\n{}", read_lossy(&self.config_dir.join(name))));
        }
        out.push_str(&format!(
            "----- console (last {DUMP_LINES} lines) -----\n{}",
            tail_lines(&self.console(), DUMP_LINES)
        ));
        out.push_str(&format!(
            "----- diags.log (last {DUMP_LINES} lines) -----\n{}",
            tail_lines(&self.diags_log(), DUMP_LINES)
        ));
        let mut others: Vec<PathBuf> = fs::read_dir(&self.log_dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        others.sort();
        for p in others {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name == "diags.log" || name.starts_with('.') || !p.is_file() {
                continue;
            }
            let bytes = fs::read(&p).unwrap_or_default();
            if bytes.contains(&0) {
                out.push_str(&format!("----- {name}: binary, {} bytes -----\n", bytes.len()));
                continue;
            }
            out.push_str(&format!(
                "----- {name} (last {DUMP_LINES} lines) -----\n{}",
                tail_lines(&String::from_utf8_lossy(&bytes), DUMP_LINES)
            ));
        }
        out.push_str("===== end of ATS report =====\n");
        out
    }
}

impl Drop for Ats {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("{}", self.failure_report());
        }
        if let Some(rr) = self.runroot.take() {
            rr.keep_if_asked();
        }
    }
}

/// Polls `cond` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin verification
// ---------------------------------------------------------------------------------------------

fn verify_plugin(kind: &str, so: &Path) -> Output {
    let rr = Runroot::create().expect("creating a runroot for plugin verification");
    rr.write_records(free_port(), 1, &[]).expect("writing records.config");
    let out = Command::new(ats_program("traffic_server"))
        .arg(format!("--run-root={}", rr.yaml.display()))
        .arg("-C")
        .arg(format!("{kind} {}", so.display()))
        .current_dir(&rr.root)
        .env_remove("TS_ROOT")
        .stdin(Stdio::null())
        .output()
        .expect("running traffic_server -C");
    rr.keep_if_asked();
    out
}

/// Runs `traffic_server --run-root=<fresh private runroot> -C 'verify_global_plugin <so>'`
/// (loads the plugin and runs `TSPluginInit` without starting a server; exit 1 on failure).
pub fn verify_global_plugin(so: &Path) -> Output {
    verify_plugin("verify_global_plugin", so)
}

/// Like [`verify_global_plugin`] with `verify_remap_plugin`.
pub fn verify_remap_plugin(so: &Path) -> Output {
    verify_plugin("verify_remap_plugin", so)
}
