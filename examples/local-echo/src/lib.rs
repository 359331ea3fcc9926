//! `local-echo` (pattern (e) of the SDKs' examples): answers a `200` with a body from the
//! request phase for the one `:path` equal to its plugin configuration; logs every request
//! and response header (pseudo-headers included) and one line from `on_log`.

use std::rc::Rc;

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(EchoRoot { path: Rc::from("") }));
}}

struct EchoRoot {
    /// The one path answered locally.
    path: Rc<str>,
}

impl Context for EchoRoot {}

impl RootContext for EchoRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        self.path = Rc::from(String::from_utf8_lossy(&raw).trim());
        true
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Echo { id, path: self.path.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Echo {
    id: u32,
    path: Rc<str>,
}

impl Context for Echo {}

impl HttpContext for Echo {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in self.get_http_request_headers() {
            info!("local-echo #{}: request header {k}: {v}", self.id);
        }
        if self.get_http_request_header(":path").as_deref() == Some(&*self.path) {
            self.send_http_response(200, vec![("x-local-echo", "yes")], Some(b"local-echo: hello\n"));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in self.get_http_response_headers() {
            info!("local-echo #{}: response header {k}: {v}", self.id);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        info!("local-echo #{}: on_log", self.id);
    }
}
