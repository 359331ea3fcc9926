//! `config-header` (pattern (b) of the SDKs' examples): adds its whole plugin configuration
//! string as the response header `x-plugin-configuration`, on origin responses and cache hits
//! alike.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(ConfigRoot { config: Rc::from("") }));
}}

struct ConfigRoot {
    config: Rc<str>,
}

impl Context for ConfigRoot {}

impl RootContext for ConfigRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        self.config = Rc::from(String::from_utf8_lossy(&raw).as_ref());
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ConfigHeader { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ConfigHeader {
    config: Rc<str>,
}

impl Context for ConfigHeader {}

impl HttpContext for ConfigHeader {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-plugin-configuration", &self.config);
        Action::Continue
    }
}
