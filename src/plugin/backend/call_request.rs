//! The pure half of `proxy_http_call`: where a call goes (the filter's `upstreams:` or a
//! literal address) and the request it makes. It runs while the guest's call is in progress,
//! so a bad upstream or request answers `BAD_ARGUMENT` at once; sending is the plugin's job
//! after the callback ([`super::outbox::OutgoingCall`]).
#![forbid(unsafe_code)]

use crate::abi::types::HostResult;
use crate::abi::{HttpCallRequest, Status};
use crate::config::{Scheme, Upstream};

/// The header that marks a request as one of our HTTP calls (removed before it leaves ATS).
pub(crate) const CALL_MARKER: &[u8] = b"x-ats-wasm-call";

fn is_hop_by_hop(k: &[u8]) -> bool {
    [&b"host"[..], b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade", b"te"]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h))
        || k.eq_ignore_ascii_case(CALL_MARKER)
        || k.eq_ignore_ascii_case(b"x-ats-wasm-loop")
}

/// Where `upstream` goes: a cluster of the filter's `upstreams:`, else a literal `host:port` or
/// `http(s)://host[:port]`.
pub(crate) fn resolve(upstreams: &[(String, Upstream)], upstream: &[u8]) -> HostResult<Upstream> {
    let name = std::str::from_utf8(upstream).map_err(|_| Status::BadArgument)?;
    if let Some((_, u)) = upstreams.iter().find(|(n, _)| n == name) {
        return Ok(u.clone());
    }
    Upstream::parse(name).map_err(|_| Status::BadArgument)
}

/// A call's method, absolute URL and header fields.
pub(crate) type BuiltRequest<'a> = (&'a [u8], Vec<u8>, Vec<(&'a [u8], &'a [u8])>);

/// Builds the absolute URL and header list of a call: `:method` and `:path` make the request
/// line, `:authority` the `Host` header; the scheme is `https` when the upstream or `:scheme`
/// says so.
pub(crate) fn build_request<'a>(target: &Upstream, req: &'a HttpCallRequest<'a>) -> HostResult<BuiltRequest<'a>> {
    let pseudo = |name: &[u8]| req.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let method = pseudo(b":method").filter(|m| !m.is_empty()).ok_or(Status::BadArgument)?;
    let path = pseudo(b":path").filter(|p| p.first() == Some(&b'/')).ok_or(Status::BadArgument)?;
    let authority = pseudo(b":authority").ok_or(Status::BadArgument)?;
    if method.iter().chain(path).chain(authority).any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Status::BadArgument);
    }
    let https = target.scheme == Scheme::Https || pseudo(b":scheme") == Some(b"https");
    let mut url = Vec::with_capacity(16 + path.len());
    url.extend_from_slice(if https { b"https://" } else { b"http://" });
    url.extend_from_slice(target.authority().as_bytes());
    url.extend_from_slice(path);
    let mut headers = Vec::with_capacity(req.headers.len() + 2);
    headers.push((&b"Host"[..], authority));
    for (k, v) in req.headers {
        if k.first() != Some(&b':') && !is_hop_by_hop(k) {
            headers.push((*k, *v));
        }
    }
    // The marker carries `:authority`, restored as `Host` before the request leaves ATS.
    headers.push((CALL_MARKER, authority));
    Ok((method, url, headers))
}

/// The header marking a call response ATS generated itself (value: its status).
pub(crate) const CALL_FAILED: &[u8] = b"x-ats-wasm-call-failed";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn req<'a>(headers: &'a [(&'a [u8], &'a [u8])]) -> HttpCallRequest<'a> {
        HttpCallRequest { token: 1, upstream: b"auth", headers, body: b"", trailers: &[], timeout: Duration::ZERO }
    }

    #[test]
    fn upstreams_resolve_by_cluster_name_then_as_literals() {
        let ups = vec![("auth".to_string(), Upstream::parse("https://127.0.0.1:9443").unwrap())];
        assert_eq!(resolve(&ups, b"auth").unwrap().port, 9443);
        let lit = resolve(&ups, b"localhost:8080").unwrap();
        assert_eq!((lit.host.as_str(), lit.port, lit.scheme), ("localhost", 8080, Scheme::Http));
        assert_eq!(resolve(&ups, b"other"), Err(Status::BadArgument));
        assert_eq!(resolve(&ups, b"\xff:80"), Err(Status::BadArgument));
    }

    #[test]
    fn requests_are_built_from_pseudo_headers() {
        let h: &[(&[u8], &[u8])] = &[
            (b":method", b"POST"),
            (b":path", b"/check?x=1"),
            (b":authority", b"auth.example"),
            (b"authorization", b"Bearer t"),
            (b"content-length", b"99"),
            (b"x-ats-wasm-call", b"spoof"),
        ];
        let r = req(h);
        let up = Upstream::parse("127.0.0.1:9000").unwrap();
        let (method, url, headers) = build_request(&up, &r).unwrap();
        assert_eq!(method, b"POST");
        assert_eq!(url, b"http://127.0.0.1:9000/check?x=1");
        let want: Vec<(&[u8], &[u8])> =
            vec![(b"Host", b"auth.example"), (b"authorization", b"Bearer t"), (CALL_MARKER, b"auth.example")];
        assert_eq!(headers, want);

        let tls: &[(&[u8], &[u8])] =
            &[(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b":scheme", b"https")];
        let r = req(tls);
        assert_eq!(build_request(&up, &r).unwrap().1, b"https://127.0.0.1:9000/");
        let v6 = Upstream::parse("[::1]:81").unwrap();
        assert_eq!(build_request(&v6, &r).unwrap().1, b"https://[::1]:81/");

        for bad in [
            &[(&b":method"[..], &b"GET"[..]), (b":path", b"nope"), (b":authority", b"a")][..],
            &[(b":method", b"G T"), (b":path", b"/"), (b":authority", b"a")],
            &[(b":path", b"/"), (b":authority", b"a")],
        ] {
            let r = req(bad);
            assert_eq!(build_request(&up, &r).err(), Some(Status::BadArgument));
        }
    }
}
