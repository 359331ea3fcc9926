//! Where an HTTP call goes: `config.upstreams` targets and the literal `host:port` a guest may
//! pass to `proxy_http_call`.

#![forbid(unsafe_code)]

/// The scheme of an HTTP-call upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS (ATS does the TLS to the upstream).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where an HTTP call goes: an `upstreams:` entry, or a literal `host:port` a guest passed to
/// `proxy_http_call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `http` unless the target was written `https://…`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Upstream {
    /// Parses `host:port`, `[v6]:port`, `http://host[:port]` or `https://host[:port]` (the
    /// port defaults to 80 / 443 only when a scheme is written). No path, user or query.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest, default_port) = if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r, Some(443))
        } else if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r, Some(80))
        } else {
            (Scheme::Http, s, None)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("\"{s}\": no host"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(format!("\"{s}\": unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("\"{s}\": \"{h}\" is not an IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or(format!("\"{s}\": expected ':port' after ']'"))?)),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty()
            || host.bytes().any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')))
        {
            return Err(format!("\"{s}\": bad host \"{host}\""));
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("\"{s}\": bad port \"{p}\"")),
            },
            None => default_port.ok_or(format!("\"{s}\": expected host:port or http(s)://host[:port]"))?,
        };
        Ok(Upstream { scheme, host: host.to_string(), port })
    }

    /// `host:port` as a URL authority (`[v6]:port` for IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
