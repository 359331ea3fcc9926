//! `call-gate` (pattern (c) of the SDKs' examples): calls the upstream named `gate` for every
//! request, `GET /gate<the request's :path>` with `:authority: gate.example.com`, pauses, and
//! lets the request go on when the call's response body is `allow`; anything else (another
//! body, a failed call) is answered 403 locally.

use std::time::Duration;

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(GateRoot));
}}

struct GateRoot;

impl Context for GateRoot {}

impl RootContext for GateRoot {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Gate;

impl Gate {
    fn deny(&self, why: &str) {
        self.send_http_response(403, vec![("x-gate", why)], Some(b"gate: denied\n"));
    }
}

impl Context for Gate {
    fn on_http_call_response(&mut self, _token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if body == b"allow" {
            self.set_http_request_header("x-gate", Some("allowed"));
            self.resume_http_request();
        } else {
            info!("call-gate: denied, the gate said {:?}", String::from_utf8_lossy(&body));
            self.deny("denied");
        }
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = format!("/gate{}", self.get_http_request_header(":path").unwrap_or_default());
        let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", "gate.example.com")];
        match self.dispatch_http_call("gate", headers, None, vec![], Duration::from_secs(2)) {
            Ok(_) => Action::Pause,
            Err(e) => {
                info!("call-gate: the call failed: {e:?}");
                self.deny("call failed");
                Action::Pause
            }
        }
    }
}
