//! `echo-properties`: a Proxy-Wasm HTTP filter that returns selected properties as response
//! headers, so their values can be seen from a client.
//!
//! The configuration maps property paths (dot-separated) to how to decode them: `"string"`
//! (bytes as text), `"int"` (8-byte little-endian integer, shown in decimal), `"bool"` (one
//! byte) or `"bytes"` (hex). Each becomes the response header `x-prop-<path with . → ->`; a
//! property the host does not know is shown as `<not found>`.
//!
//! ```json
//! {"request.path": "string", "source.port": "int", "connection.mtls": "bool", "@vm_id": "int"}
//! ```
//!
//! Entries whose key starts with `=` set a property instead, in the request phase, to the
//! entry's value as text: `{"=request.path": "/rewritten", "=request.headers.x-set": "v"}`.
//!
//! The special entry `@vm_id` calls the host's `vm_id` foreign function instead and returns
//! the process-unique id of the VM that ran the callback as `x-vm-id` (so tests can see which
//! VM served a transaction).

use std::collections::BTreeMap;
use std::rc::Rc;

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(EchoRoot::default()));
}}

type Config = BTreeMap<String, String>;

#[derive(Default)]
struct EchoRoot {
    config: Rc<Config>,
}

impl Context for EchoRoot {}

impl RootContext for EchoRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) => {
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                error!("echo-properties: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Echo { config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Echo {
    config: Rc<Config>,
}

impl Context for Echo {}

fn decode(kind: &str, v: &[u8]) -> String {
    match kind {
        "int" if v.len() == 8 => i64::from_le_bytes(v.try_into().unwrap_or_default()).to_string(),
        "bool" if v.len() == 1 => (v[0] != 0).to_string(),
        "bytes" => v.iter().map(|b| format!("{b:02x}")).collect(),
        "string" => String::from_utf8_lossy(v).into_owned(),
        _ => format!("<bad {kind}: {} bytes>", v.len()),
    }
}

impl HttpContext for Echo {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (key, value) in self.config.iter() {
            if let Some(path) = key.strip_prefix('=') {
                if let Err(e) = proxy_wasm::hostcalls::set_property(path.split('.').collect(), Some(value.as_bytes())) {
                    error!("echo-properties: set {path}: {e:?}");
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (path, kind) in self.config.iter() {
            if path.starts_with('=') {
                continue;
            }
            if path == "@vm_id" {
                let value = match proxy_wasm::hostcalls::call_foreign_function("vm_id", None) {
                    Ok(Some(v)) => decode(kind, &v),
                    other => format!("<{other:?}>"),
                };
                self.add_http_response_header("x-vm-id", &value);
                continue;
            }
            let value = match self.get_property(path.split('.').collect()) {
                Some(v) => decode(kind, &v),
                None => "<not found>".to_string(),
            };
            self.add_http_response_header(&format!("x-prop-{}", path.replace('.', "-")), &value);
        }
        Action::Continue
    }
}
