//! `auth-call`: a Proxy-Wasm filter that asks an external auth service before letting a
//! request through. On request headers it sends an HTTP call (`proxy_http_call`) to
//! `upstream` (a cluster of the filter's `upstreams:` map, or a literal `host:port`) with the
//! request's `authorization` header, and pauses the request. When the service answers `200` the
//! request continues; any other status, a failed call or a timeout answers `403` (fail closed).
//!
//! ```json
//! {"upstream": "auth", "path": "/check", "authority": "auth", "timeout_ms": 1000}
//! ```

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(AuthRoot { config: Config::default() }));
}}

#[derive(Clone, Deserialize)]
#[serde(default)]
struct Config {
    /// Where the auth service is: an `upstreams:` cluster name or `host:port`.
    upstream: String,
    /// The path (and query) the call asks for.
    path: String,
    /// The call's `Host` header.
    authority: String,
    /// How long to wait for the service.
    timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { upstream: "auth".into(), path: "/check".into(), authority: "auth".into(), timeout_ms: 1000 }
    }
}

struct AuthRoot {
    config: Config,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else { return true };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => {
                self.config = c;
                true
            }
            Err(e) => {
                warn!("auth-call: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthRequest { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthRequest {
    config: Config,
}

impl AuthRequest {
    fn deny(&self, why: &str) {
        info!("auth-call: denied: {why}");
        self.send_http_response(403, vec![("x-auth", why)], Some(b"403 Forbidden\n"));
    }
}

impl Context for AuthRequest {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        if num_headers == 0 {
            // The call failed or timed out: fail closed.
            return self.deny("unavailable");
        }
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => self.resume_http_request(),
            Some(status) => self.deny(&format!("status {status}")),
            None => self.deny("no status"),
        }
    }
}

impl HttpContext for AuthRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let authorization = self.get_http_request_header("authorization").unwrap_or_default();
        let c = &self.config;
        let headers = vec![
            (":method", "GET"),
            (":path", c.path.as_str()),
            (":authority", c.authority.as_str()),
            ("authorization", authorization.as_str()),
        ];
        match self.dispatch_http_call(&c.upstream, headers, None, vec![], Duration::from_millis(c.timeout_ms)) {
            Ok(_) => Action::Pause,
            Err(e) => {
                self.deny(&format!("call not sent: {e:?}"));
                Action::Pause
            }
        }
    }
}
