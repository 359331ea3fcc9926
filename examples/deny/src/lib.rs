//! `deny`: a Proxy-Wasm HTTP filter that answers requests locally (403 by default) when their
//! path starts with a configured prefix or their `User-Agent` contains a configured substring;
//! the origin is never contacted for them.
//!
//! ```json
//! {"path_prefixes": ["/admin"], "user_agents": ["perl"], "status": 403, "body": "denied\n"}
//! ```
//!
//! With `"phase": "response"` it decides the same way but answers from
//! `on_http_response_headers`, replacing the origin's (or the cache's) response; in ATS that
//! needs `bodies: response` in the filter's YAML (the body is replaced by a transform).

use std::rc::Rc;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(DenyRoot::default()));
}}

fn default_status() -> u32 {
    403
}

fn default_body() -> String {
    "denied\n".into()
}

/// What to deny and how to answer.
#[derive(Debug, Deserialize)]
struct Config {
    /// Request paths starting with one of these are denied.
    #[serde(default)]
    path_prefixes: Vec<String>,
    /// Requests whose User-Agent contains one of these are denied.
    #[serde(default)]
    user_agents: Vec<String>,
    /// The local response's status.
    #[serde(default = "default_status")]
    status: u32,
    /// The local response's body.
    #[serde(default = "default_body")]
    body: String,
    /// `"request"` (default): answer from the request headers; `"response"`: from the
    /// response headers.
    #[serde(default)]
    phase: Option<String>,
}

#[derive(Default)]
struct DenyRoot {
    config: Option<Rc<Config>>,
}

impl Context for DenyRoot {}

impl RootContext for DenyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) => {
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                error!("deny: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Deny { config: self.config.clone()?, why: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Deny {
    config: Rc<Config>,
    /// Response phase: why the request is to be denied.
    why: Option<String>,
}

impl Deny {
    fn deny(&self, why: &str) {
        self.send_http_response(self.config.status, vec![("x-denied-by", why)], Some(self.config.body.as_bytes()));
    }
}

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let ua = self.get_http_request_header("user-agent").unwrap_or_default();
        let why = if let Some(p) = self.config.path_prefixes.iter().find(|p| path.starts_with(p.as_str())) {
            format!("path prefix {p}")
        } else if let Some(u) = self.config.user_agents.iter().find(|u| ua.contains(u.as_str())) {
            format!("user agent {u}")
        } else {
            return Action::Continue;
        };
        info!("deny: {path} denied by {why}");
        if self.config.phase.as_deref() == Some("response") {
            self.why = Some(why);
            return Action::Continue;
        }
        self.deny(&why);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.why.take() {
            Some(why) => {
                self.deny(&why);
                Action::Pause
            }
            None => Action::Continue,
        }
    }
}
