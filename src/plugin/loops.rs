//! HTTP calls that come back: a `proxy_http_call` whose upstream is this ATS itself (its own
//! listening port, directly or by a name that resolves to this host) arrives as a client
//! request, and would run the filter chain that made it again — a filter that calls on every
//! request would loop without end. So every request has a *call depth*: 0 for a client's, and
//! one more than its maker's for a call's. Filters run on a request only while its depth is
//! below `--call-depth` (default 1: a call that comes back is never filtered; it goes on as ATS
//! remaps it).
//!
//! Marking, unforgeably. Each call gets a fresh 128-bit random nonce ([`Ticket`]), registered
//! here with its depth while the call is in flight. When the call's internal transaction is
//! about to send its request (`SEND_REQUEST_HDR`) to an address of this host (loopback, or the
//! very address ATS connects from), the local address:port of that upstream connection is
//! recorded with the nonce and the request carries `x-ats-wasm-loop: <nonce>`. A request that
//! arrives with that header counts as the call only when the nonce is registered, has not been
//! used, and the request came from exactly that address:port — the other end of ATS's own
//! connection. Anything else (no such nonce, a used one, another connection) is a client's
//! request like any other: its filters all run. The header is removed from every arriving
//! request, so neither filters nor origins see it. Calls to other hosts never carry it; a loop
//! through another proxy is not recognised (its requests come from that proxy's address) and is
//! left to ATS's own loop detection.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use crate::ts::log;
use crate::ts::txn::Txn;

/// The header that carries a call's nonce to an upstream at an address of this host.
pub(super) const LOOP_MARKER: &[u8] = b"x-ats-wasm-loop";

static MAX_DEPTH: AtomicU32 = AtomicU32::new(1);

/// Sets `--call-depth` (at start-up).
pub(super) fn set_max_depth(depth: u32) {
    MAX_DEPTH.store(depth.max(1), Ordering::Relaxed);
}

/// A call in flight, as the registry knows it.
struct Entry {
    depth: u32,
    timeout: Option<Duration>,
    /// The local address of the connection that carries it to this host; taken by the
    /// request that arrives through it.
    from: Option<SocketAddr>,
}

static CALLS: LazyLock<Mutex<HashMap<u128, Entry>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn calls() -> MutexGuard<'static, HashMap<u128, Entry>> {
    CALLS.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The depth of this thread's open transactions that have one (only with `--call-depth`
    /// above 1: with 1, a request with a depth runs no filter and so makes no call). Set and
    /// cleared at each `READ_REQUEST_HDR`, removed at `TXN_CLOSE`.
    static DEPTHS: RefCell<HashMap<Txn, u32>> = RefCell::new(HashMap::new());
}

/// A call's registration, from before it is sent until its fetch ended (dropping it ends it).
pub(super) struct Ticket(u128);

impl Ticket {
    /// The nonce as the 32 lowercase hex digits the headers carry.
    pub(super) fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        calls().remove(&self.0);
    }
}

fn parse_nonce(hex: &[u8]) -> Option<u128> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Registers a call of depth `depth` (its maker's depth + 1) with its timeout; `None` when no
/// random nonce can be had (the call is then not sent).
pub(super) fn register(depth: u32, timeout: Option<Duration>) -> Option<Ticket> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let nonce = u128::from_le_bytes(bytes);
    let mut calls = calls();
    if calls.contains_key(&nonce) {
        return None;
    }
    calls.insert(nonce, Entry { depth, timeout, from: None });
    Some(Ticket(nonce))
}

/// The timeout of the call named by nonce `hex`, if it is one of ours in flight (its internal
/// transaction reached `READ_REQUEST_HDR`).
pub(super) fn call_timeout(hex: &[u8]) -> Option<Option<Duration>> {
    let nonce = parse_nonce(hex)?;
    calls().get(&nonce).map(|e| e.timeout)
}

/// The call named by nonce `hex` is about to leave through a connection from `local` to
/// `server`. Returns whether it must carry [`LOOP_MARKER`]: when `server` is an address of this
/// host and the call is still registered (its connection's address is then recorded).
pub(super) fn leaving(hex: &[u8], local: Option<SocketAddr>, server: Option<SocketAddr>) -> bool {
    let (Some(local), Some(server)) = (local, server) else { return false };
    if !(server.ip().is_loopback() || server.ip() == local.ip()) {
        return false;
    }
    let Some(nonce) = parse_nonce(hex) else { return false };
    match calls().get_mut(&nonce) {
        Some(e) => {
            e.from = Some(local);
            true
        }
        None => false,
    }
}

/// The depth of a request that arrived with `marker` from `client`: the call's, when the
/// marker names a call in flight whose connection comes from `client` (used once); else 0.
fn depth_of_arrival(marker: &[u8], client: Option<SocketAddr>) -> u32 {
    let (Some(nonce), Some(client)) = (parse_nonce(marker), client) else { return 0 };
    let mut calls = calls();
    match calls.get_mut(&nonce) {
        Some(e) if e.from == Some(client) => {
            e.from = None;
            e.depth
        }
        _ => 0,
    }
}

/// A client transaction reached `READ_REQUEST_HDR`: removes any [`LOOP_MARKER`] from its
/// request, works out its depth, and says whether its filters may run (depth below
/// `--call-depth`). For most requests this is one header lookup.
pub(super) fn arrival(txn: Txn) -> bool {
    let mut depth = 0;
    if let Some(h) = txn.client_request() {
        let mut marker = Vec::new();
        if h.get(LOOP_MARKER, &mut marker) {
            h.remove(LOOP_MARKER);
            depth = depth_of_arrival(&marker, txn.client_addr());
            if depth == 0 {
                log::debug(
                    b"a request carried an x-ats-wasm-loop header that names no call of ours: filtered as usual",
                );
            }
        }
    }
    let max = MAX_DEPTH.load(Ordering::Relaxed);
    if max > 1 {
        DEPTHS.with(|d| {
            let mut d = d.borrow_mut();
            if depth > 0 {
                d.insert(txn, depth);
            } else if !d.is_empty() {
                // A new transaction at the address of one that closed unseen.
                d.remove(&txn);
            }
        });
    }
    depth < max
}

/// The depth of `txn` (open, on this thread): 0 unless it is a call that came back.
pub(super) fn depth(txn: Txn) -> u32 {
    DEPTHS.with(|d| {
        let d = d.borrow();
        if d.is_empty() { 0 } else { d.get(&txn).copied().unwrap_or(0) }
    })
}

/// `txn` is closing.
pub(super) fn forget(txn: Txn) {
    DEPTHS.with(|d| {
        let mut d = d.borrow_mut();
        if !d.is_empty() {
            d.remove(&txn);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_nonce_counts_once_only_from_the_connection_it_left_through_and_while_registered() {
        let t = register(2, Some(Duration::from_millis(300))).unwrap();
        let hex = t.hex();
        assert_eq!(hex.len(), 32);
        assert_eq!(call_timeout(hex.as_bytes()), Some(Some(Duration::from_millis(300))));
        // Not yet sent: nothing to match.
        assert_eq!(depth_of_arrival(hex.as_bytes(), addr("127.0.0.1:40000")), 0);
        // To another host: no marker, nothing recorded.
        assert!(!leaving(hex.as_bytes(), addr("10.0.0.5:40000"), addr("10.0.0.9:80")));
        // To this host (loopback, or the address it connects from).
        assert!(leaving(hex.as_bytes(), addr("10.0.0.5:40001"), addr("10.0.0.5:8080")));
        assert!(leaving(hex.as_bytes(), addr("127.0.0.1:40000"), addr("127.0.0.1:8080")));
        // Another connection, a forged or damaged nonce: depth 0.
        assert_eq!(depth_of_arrival(hex.as_bytes(), addr("127.0.0.1:40002")), 0);
        assert_eq!(depth_of_arrival(b"0123", addr("127.0.0.1:40000")), 0);
        assert_eq!(depth_of_arrival(&[b'0'; 32], addr("127.0.0.1:40000")), 0);
        assert_eq!(depth_of_arrival(hex.as_bytes(), None), 0);
        // The call's own connection: its depth, once.
        assert_eq!(depth_of_arrival(hex.as_bytes(), addr("127.0.0.1:40000")), 2);
        assert_eq!(depth_of_arrival(hex.as_bytes(), addr("127.0.0.1:40000")), 0);
        // Ended: forgotten.
        assert!(leaving(hex.as_bytes(), addr("127.0.0.1:40000"), addr("127.0.0.1:8080")));
        drop(t);
        assert_eq!(call_timeout(hex.as_bytes()), None);
        assert_eq!(depth_of_arrival(hex.as_bytes(), addr("127.0.0.1:40000")), 0);
        assert!(!leaving(hex.as_bytes(), addr("127.0.0.1:40000"), addr("127.0.0.1:8080")));
    }

    #[test]
    fn nonces_differ() {
        let a = register(1, None).unwrap();
        let b = register(1, None).unwrap();
        assert_ne!(a.hex(), b.hex());
        assert!(parse_nonce(a.hex().as_bytes()).is_some());
        assert!(parse_nonce(b"zz").is_none());
        assert!(parse_nonce("g".repeat(32).as_bytes()).is_none());
    }
}
