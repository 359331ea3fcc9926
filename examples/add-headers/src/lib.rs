//! `add-headers`: a Proxy-Wasm HTTP filter that adds configured headers to every
//! request and response.
//!
//! The plugin configuration is a JSON object with two optional maps of header
//! name to value:
//!
//! ```json
//! {"request_headers": {"x-added-by": "ats-wasm"},
//!  "response_headers": {"x-wasm-filter": "add-headers"}}
//! ```
//!
//! A missing map means "add nothing" there. A missing or empty configuration
//! means the defaults `x-wasm-request: add-headers` on requests and
//! `x-wasm-response: add-headers` on responses. Invalid JSON is logged and
//! rejected (`on_configure` returns false). Headers are added (never replaced)
//! in name order.

use std::collections::BTreeMap;
use std::rc::Rc;

use log::{debug, error};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(AddHeadersRoot::default()));
}}

/// The parsed plugin configuration.
#[derive(Debug, Default, Deserialize)]
struct Config {
    /// Headers added to every request.
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    /// Headers added to every response.
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
}

impl Config {
    /// The configuration used when the plugin configuration is missing or empty.
    fn defaults() -> Self {
        let one = |name: &str| BTreeMap::from([(name.to_owned(), "add-headers".to_owned())]);
        Config {
            request_headers: one("x-wasm-request"),
            response_headers: one("x-wasm-response"),
        }
    }
}

/// Root context: parses the plugin configuration and hands it to HTTP contexts.
#[derive(Default)]
struct AddHeadersRoot {
    config: Rc<Config>,
}

impl Context for AddHeadersRoot {}

impl RootContext for AddHeadersRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Format log lines only when the host would keep them: the per-request debug line
        // below would otherwise be formatted on every request and dropped by the host. (The
        // host's level is read once per VM; a later change applies to VMs started after it.)
        if let Ok(level) = proxy_wasm::hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config = if raw.iter().all(u8::is_ascii_whitespace) {
            Config::defaults()
        } else {
            match serde_json::from_slice(&raw) {
                Ok(config) => config,
                Err(err) => {
                    error!("add-headers: invalid plugin configuration: {err}");
                    return false;
                }
            }
        };
        debug!("add-headers: configured {config:?}");
        self.config = Rc::new(config);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeaders {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// HTTP context: adds the configured headers to one transaction.
struct AddHeaders {
    config: Rc<Config>,
}

impl Context for AddHeaders {}

impl HttpContext for AddHeaders {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.request_headers {
            self.add_http_request_header(name, value);
            debug!("add-headers: added request header {name}: {value}");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.response_headers {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
