//! Properties (`proxy_get_property`, `proxy_set_property`): path parsing and the value
//! encodings of Envoy's attributes, for the ABI layer and for backends.
//!
//! Paths: the Rust SDK joins the parts with NUL (`request\0path`), the C++ SDK adds a trailing
//! NUL (`request\0path\0`). [`parse_path`] accepts both and rejects empty paths and empty parts
//! with `BAD_ARGUMENT`; a single part with dots (`request.path`, as some SDKs and the upstream
//! ATS plugin write it) is split at the dots.
//!
//! Values follow Envoy's conventions: strings as their bytes; integers (`int`, `uint`) as 8-byte
//! little-endian; booleans as one byte (0 or 1); durations as 8-byte little-endian signed
//! nanoseconds; timestamps as 8-byte little-endian signed nanoseconds since the Unix epoch;
//! maps (e.g. `request.headers`) in the header-map serialization.
//!
//! Well-known paths a backend should answer (spec "Well-known properties"): `connection.id`
//! (uint), `source.address`, `source.port` (int), `destination.address`, `destination.port`
//! (int), `connection.tls_version`, `connection.requested_server_name`, `connection.mtls` (bool),
//! `upstream.address`, `upstream.port` (int), `upstream.local_address`, `upstream.local_port`,
//! `request.protocol`, `request.time` (timestamp), `request.duration` (duration),
//! `request.size`, `request.total_size`, `response.size`, `response.total_size` (int), and the
//! Envoy extras `request.path`, `request.url_path`, `request.host`, `request.scheme`,
//! `request.method`, `request.headers` (map), `request.id`, `response.code` (int),
//! `response.headers` (map). Addresses are `ip:port` only where Envoy does so
//! (`source.address` is `ip:port` in Envoy; `source.port` is the port alone, in host order).

#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::serialization::encode_pairs;
use super::types::{HostResult, Status};

/// The most parts a path may have (bounds the work a guest can cause).
pub const MAX_PATH_PARTS: usize = 32;

/// Splits a property path into its parts (see the module documentation). The parts borrow
/// from `path`; `out` is cleared first and reused to avoid allocation on the hot path.
pub fn parse_path<'a>(path: &'a [u8], out: &mut Vec<&'a [u8]>) -> HostResult {
    out.clear();
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    if path.is_empty() {
        return Err(Status::BadArgument);
    }
    if !path.contains(&0) && path.contains(&b'.') {
        // One dotted part: `request.path`.
        for part in path.split(|&b| b == b'.') {
            push_part(out, part)?;
        }
        return Ok(());
    }
    for part in path.split(|&b| b == 0) {
        push_part(out, part)?;
    }
    Ok(())
}

fn push_part<'a>(out: &mut Vec<&'a [u8]>, part: &'a [u8]) -> HostResult {
    if part.is_empty() || out.len() == MAX_PATH_PARTS {
        return Err(Status::BadArgument);
    }
    out.push(part);
    Ok(())
}

/// Encodes a string property.
pub fn encode_string(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(v);
}

/// Encodes an `int` property: 8 bytes, little-endian.
pub fn encode_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a `uint` property: 8 bytes, little-endian.
pub fn encode_uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a `bool` property: one byte, 0 or 1.
pub fn encode_bool(out: &mut Vec<u8>, v: bool) {
    out.push(v as u8);
}

/// Encodes a `duration` property: signed nanoseconds, 8 bytes little-endian (saturating).
pub fn encode_duration(out: &mut Vec<u8>, v: Duration) {
    encode_int(out, i64::try_from(v.as_nanos()).unwrap_or(i64::MAX));
}

/// Encodes a `timestamp` property: signed nanoseconds since the Unix epoch, 8 bytes
/// little-endian (negative before 1970, saturating).
pub fn encode_timestamp(out: &mut Vec<u8>, v: SystemTime) {
    let nanos = match v.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
    };
    encode_int(out, nanos);
}

/// Encodes a map property (`request.headers`…) in the header-map serialization, appended to `out`.
pub fn encode_map<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) {
    let mut tmp = Vec::new();
    encode_pairs(pairs, &mut tmp);
    out.extend_from_slice(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &[u8]) -> HostResult<Vec<Vec<u8>>> {
        let mut v = Vec::new();
        parse_path(p, &mut v)?;
        Ok(v.into_iter().map(|p| p.to_vec()).collect())
    }

    #[test]
    fn both_sdk_conventions_parse_the_same() {
        let want = vec![b"request".to_vec(), b"path".to_vec()];
        assert_eq!(parts(b"request\0path").unwrap(), want, "Rust SDK");
        assert_eq!(parts(b"request\0path\0").unwrap(), want, "C++ SDK");
        assert_eq!(parts(b"request.path").unwrap(), want, "dotted");
        assert_eq!(parts(b"plugin_name").unwrap(), vec![b"plugin_name".to_vec()]);
        // Dots inside a NUL-separated part stay (e.g. a header name).
        assert_eq!(parts(b"x\0a.b").unwrap(), vec![b"x".to_vec(), b"a.b".to_vec()]);
    }

    #[test]
    fn malformed_paths_are_bad_argument() {
        for p in [&b""[..], b"\0", b"\0\0", b"a\0\0b", b"\0a", b"a..b", b".a", b"a\0\0"] {
            assert_eq!(parts(p), Err(Status::BadArgument), "{p:?}");
        }
        let long = [b'a', 0].repeat(MAX_PATH_PARTS + 1);
        assert_eq!(parts(&long), Err(Status::BadArgument));
    }

    #[test]
    fn encodings_follow_envoy() {
        let mut out = Vec::new();
        encode_int(&mut out, -2);
        assert_eq!(out, (-2i64).to_le_bytes());
        out.clear();
        encode_duration(&mut out, Duration::from_millis(3));
        assert_eq!(out, 3_000_000i64.to_le_bytes());
        out.clear();
        encode_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(2));
        assert_eq!(out, 2_000_000_000i64.to_le_bytes());
        out.clear();
        encode_bool(&mut out, true);
        assert_eq!(out, [1]);
    }
}
