//! `replace-body` (pattern (a) of the SDKs' examples): removes `content-length` in its
//! response-header callback, answers `Pause` from every response-body callback until the end
//! of the stream, then replaces the whole body with `<plugin configuration><original size>\n`.
//! Written for the default `bodies: auto` (its YAML has no ats-wasm key).

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(ReplaceRoot { prefix: String::new() }));
}}

struct ReplaceRoot {
    /// The plugin configuration: what the new body starts with.
    prefix: String,
}

impl Context for ReplaceRoot {}

impl RootContext for ReplaceRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        self.prefix = String::from_utf8_lossy(&raw).into_owned();
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Replace { prefix: self.prefix.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Replace {
    prefix: String,
}

impl Context for Replace {}

impl HttpContext for Replace {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The body's length will change.
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Buffered by the host until the end of the stream.
            return Action::Pause;
        }
        let new = format!("{}{body_size}\n", self.prefix);
        info!("replace-body: {body_size} bytes replaced");
        self.set_http_response_body(0, body_size, new.as_bytes());
        Action::Continue
    }
}
