//! Well-known properties (`proxy_get_property`) read from an ATS transaction.
//!
//! Paths follow the spec's list and Envoy's attribute names; values follow Envoy's encoding:
//! strings as their bytes, integers as 8-byte little-endian, booleans as one byte, timestamps
//! and durations as 8-byte little-endian nanoseconds. Per the spec, `source.address` and
//! `destination.address` are the address alone; the ports are `source.port` /
//! `destination.port` (integers, host byte order). Unknown paths, and values ATS does not have
//! at this point of the transaction, are `None` (the guest gets `NOT_FOUND`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::stream::TxnStream;
use crate::ts::headers::{HeaderMap, UrlParts};

/// A typed property value, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    /// Bytes (a string).
    Bytes(Vec<u8>),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A boolean.
    Bool(bool),
    /// Nanoseconds since the Unix epoch.
    Timestamp(i64),
    /// Nanoseconds.
    Duration(i64),
}

impl PropertyValue {
    /// Appends the value's wire encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PropertyValue::Bytes(b) => out.extend_from_slice(b),
            PropertyValue::Int(i) | PropertyValue::Timestamp(i) | PropertyValue::Duration(i) => {
                out.extend_from_slice(&i.to_le_bytes())
            }
            PropertyValue::Uint(u) => out.extend_from_slice(&u.to_le_bytes()),
            PropertyValue::Bool(b) => out.push(*b as u8),
        }
    }
}

fn bytes(b: impl Into<Vec<u8>>) -> Option<PropertyValue> {
    Some(PropertyValue::Bytes(b.into()))
}

fn header(h: Option<HeaderMap>, name: &[u8]) -> Option<PropertyValue> {
    let mut v = Vec::new();
    h?.get(name, &mut v).then_some(PropertyValue::Bytes(v))
}

fn address(a: Option<SocketAddr>) -> Option<PropertyValue> {
    bytes(a?.ip().to_string())
}

fn port(a: Option<SocketAddr>) -> Option<PropertyValue> {
    Some(PropertyValue::Int(a?.port() as i64))
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The client request's URL as the client sent it: the pristine (pre-remap) URL, or the
/// client request's when ATS has none.
fn client_url(s: TxnStream) -> Option<UrlParts> {
    s.txn.pristine_url().or_else(|| s.txn.client_request()?.url_parts())
}

/// The request path with its query, as the client sent it (`/a/b?x=1`).
fn request_path(url: UrlParts, with_query: bool) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(url.path.len() + url.query.len() + 2);
    p.push(b'/');
    p.extend_from_slice(&url.path);
    if with_query && !url.query.is_empty() {
        p.push(b'?');
        p.extend_from_slice(&url.query);
    }
    Some(p)
}

fn tls_version(s: TxnStream) -> Option<PropertyValue> {
    s.txn.client_protocol_stack().iter().find_map(|t| {
        let v = t.strip_prefix("tls/")?;
        bytes(format!("TLSv{v}"))
    })
}

fn is_tls(s: TxnStream) -> bool {
    s.txn.client_protocol_stack().iter().any(|t| t.starts_with("tls"))
}

/// Resolves a property path (already split into parts) for transaction stream `s`.
pub fn resolve(s: TxnStream, path: &[&[u8]]) -> Option<PropertyValue> {
    let txn = s.txn;
    let req = || txn.client_request();
    let resp = || if s.phase.has_response() { txn.client_response() } else { None };
    match path {
        [b"request", b"path"] => bytes(request_path(client_url(s)?, true)?),
        [b"request", b"url_path"] => bytes(request_path(client_url(s)?, false)?),
        [b"request", b"query"] => bytes(client_url(s)?.query),
        [b"request", b"host"] => {
            // The pristine URL's host is the client's Host header (in a reverse proxy); the
            // client request's Host may have been rewritten by remap.
            let url = client_url(s)?;
            if url.host.is_empty() {
                return header(req(), b"host");
            }
            let mut host = url.host;
            if url.explicit_port != 0 {
                host.extend_from_slice(format!(":{}", url.explicit_port).as_bytes());
            }
            bytes(host)
        }
        [b"request", b"scheme"] => {
            let scheme = client_url(s)?.scheme;
            if !scheme.is_empty() { bytes(scheme) } else { bytes(if is_tls(s) { "https" } else { "http" }) }
        }
        [b"request", b"method"] => bytes(req()?.method()),
        [b"request", b"headers", name] => header(req(), name),
        [b"request", b"referer"] => header(req(), b"referer"),
        [b"request", b"useragent"] => header(req(), b"user-agent"),
        [b"request", b"id"] => header(req(), b"x-request-id").or_else(|| bytes(txn.id().to_string())),
        [b"request", b"protocol"] => {
            if txn.client_protocol_stack().iter().any(|t| t == "h2") {
                return bytes("HTTP/2");
            }
            let (major, minor) = req()?.version();
            bytes(format!("HTTP/{major}.{minor}"))
        }
        [b"request", b"time"] => Some(PropertyValue::Timestamp(txn.started_ns()?)),
        [b"request", b"duration"] => Some(PropertyValue::Duration((now_ns() - txn.started_ns()?).max(0))),
        [b"request", b"size"] => Some(PropertyValue::Int(txn.byte_counts().1.max(0))),
        [b"request", b"total_size"] => {
            let (hdr, body, _, _) = txn.byte_counts();
            Some(PropertyValue::Int(hdr.max(0) + body.max(0)))
        }
        [b"response", b"code"] => Some(PropertyValue::Int(resp()?.status() as i64)),
        [b"response", b"code_details"] => {
            resp()?;
            bytes(if txn.is_cache_hit() {
                "cache_hit"
            } else if txn.has_server_response() {
                "via_upstream"
            } else {
                "local_response"
            })
        }
        [b"response", b"headers", name] => header(resp(), name),
        [b"response", b"size"] => {
            resp()?;
            Some(PropertyValue::Int(txn.byte_counts().3.max(0)))
        }
        [b"response", b"total_size"] => {
            resp()?;
            let (_, _, hdr, body) = txn.byte_counts();
            Some(PropertyValue::Int(hdr.max(0) + body.max(0)))
        }
        [b"source", b"address"] => address(txn.client_addr()),
        [b"source", b"port"] => port(txn.client_addr()),
        [b"destination", b"address"] => address(txn.incoming_addr()),
        [b"destination", b"port"] => port(txn.incoming_addr()),
        [b"connection", b"id"] => Some(PropertyValue::Uint(txn.session_id().max(0) as u64)),
        // True when the client presented a certificate (ATS verified it, or the handshake
        // would have failed under `certification_level 2` / `verify_client: STRICT`).
        [b"connection", b"mtls"] => match txn.tls_client_cert_presented() {
            Some(presented) => Some(PropertyValue::Bool(presented)),
            None if is_tls(s) => None,
            None => Some(PropertyValue::Bool(false)),
        },
        [b"connection", b"requested_server_name"] => bytes(txn.tls_sni()?),
        [b"connection", b"tls_version"] => tls_version(s),
        [b"upstream", b"address"] => address(txn.server_addr()),
        [b"upstream", b"port"] => port(txn.server_addr()),
        _ => None,
    }
}

/// Splits a guest property path: parts separated by NUL, with an optional trailing NUL (the C++
/// SDK adds one). Returns `None` for an empty path or an empty part.
pub fn split_path(path: &[u8]) -> Option<Vec<&[u8]>> {
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    if path.is_empty() {
        return None;
    }
    let parts: Vec<&[u8]> = path.split(|&b| b == 0).collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_as_envoy_does() {
        let enc = |v: PropertyValue| {
            let mut out = Vec::new();
            v.encode(&mut out);
            out
        };
        assert_eq!(enc(PropertyValue::Bytes(b"abc".to_vec())), b"abc");
        assert_eq!(enc(PropertyValue::Int(8080)), 8080i64.to_le_bytes());
        assert_eq!(enc(PropertyValue::Uint(7)), 7u64.to_le_bytes());
        assert_eq!(enc(PropertyValue::Bool(true)), [1]);
        assert_eq!(enc(PropertyValue::Duration(-1)), (-1i64).to_le_bytes());
    }

    #[test]
    fn paths_split_on_nul_with_an_optional_trailing_nul() {
        assert_eq!(split_path(b"request\0path").unwrap(), vec![&b"request"[..], b"path"]);
        assert_eq!(split_path(b"request\0path\0").unwrap(), vec![&b"request"[..], b"path"]);
        assert_eq!(split_path(b"plugin_name").unwrap(), vec![&b"plugin_name"[..]]);
        assert!(split_path(b"").is_none());
        assert!(split_path(b"\0").is_none());
        assert!(split_path(b"a\0\0b").is_none());
    }
}
