//! `call-probe`: a test module for HTTP calls (`proxy_http_call`), driven by request headers.
//!
//! - `x-call-paths: /a,/b` sends one call per path, all in flight at once, to the upstream
//!   `x-call-upstream` (default `origin`) with timeout `x-call-timeout-ms` (default 5000), and
//!   pauses the request (or, with `x-call-on: response`, the response).
//! - When every call has answered, the results go into response headers, in dispatch order:
//!   `x-call-status` (`:status`, or `fail` when the call failed), `x-call-num-headers`,
//!   `x-call-body-size`, `x-call-trailers` (trailer counts), `x-call-header` (the value of the
//!   call response header named by `x-call-read-header`, or `-`), and `x-call-body` (the first
//!   call's body, CR/LF as `|`, at most 300 bytes). With `x-call-reply: local` they come in a
//!   local `200` response (`proxy_send_local_response` from the call callback) whose body is the
//!   first call's body; otherwise the request continues (`proxy_continue_stream`) and they are
//!   added to the origin's response. With `x-call-detach` the request does not wait: it goes on
//!   at once and may end before the calls answer. With `x-call-forward` every call carries the
//!   request's own `x-call-*` headers, so a call that comes back into the proxy makes the same
//!   calls again (a call loop, for the host's loop protection to stop).
//! - The root context, when configured with `{"tick_call": "/path", "period_ms": 100}`, sends a
//!   call to `origin` on every tick (one at a time) and counts answers in shared data
//!   (`call_probe.tick_ok`); every response gets `x-tick-calls: <count>`.

use std::collections::HashMap;
use std::time::Duration;

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

const TICK_OK: &str = "call_probe.tick_ok";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot { tick_call: None, in_flight: false }));
}}

#[derive(Deserialize, Default)]
struct Config {
    tick_call: Option<String>,
    period_ms: Option<u64>,
}

struct ProbeRoot {
    tick_call: Option<String>,
    in_flight: bool,
}

fn read_counter(ctx: &dyn Context) -> (u64, Option<u32>) {
    match ctx.get_shared_data(TICK_OK) {
        (Some(v), cas) if v.len() == 8 => (u64::from_le_bytes(v.try_into().unwrap_or_default()), cas),
        (_, cas) => (0, cas),
    }
}

impl Context for ProbeRoot {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        self.in_flight = false;
        if num_headers == 0 || self.get_http_call_response_header(":status").as_deref() != Some("200") {
            return;
        }
        for _ in 0..10 {
            let (n, cas) = read_counter(self);
            if self.set_shared_data(TICK_OK, Some(&(n + 1).to_le_bytes()), cas).is_ok() {
                return;
            }
        }
    }
}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config: Config = match self.get_plugin_configuration() {
            Some(b) if !b.is_empty() => match serde_json::from_slice(&b) {
                Ok(c) => c,
                Err(e) => {
                    warn!("call-probe: bad configuration: {e}");
                    return false;
                }
            },
            _ => Config::default(),
        };
        if config.tick_call.is_some() {
            self.set_tick_period(Duration::from_millis(config.period_ms.unwrap_or(100)));
        }
        self.tick_call = config.tick_call;
        true
    }

    fn on_tick(&mut self) {
        let Some(path) = self.tick_call.clone() else { return };
        if self.in_flight {
            return;
        }
        let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", "origin")];
        match self.dispatch_http_call("origin", headers, None, vec![], Duration::from_secs(5)) {
            Ok(_) => self.in_flight = true,
            Err(e) => warn!("call-probe: tick call not sent: {e:?}"),
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One call's result.
#[derive(Clone)]
struct CallResult {
    status: String,
    num_headers: usize,
    body: Vec<u8>,
    num_trailers: usize,
    header: String,
}

#[derive(Default)]
struct Probe {
    /// Token → dispatch index.
    tokens: HashMap<u32, usize>,
    results: Vec<Option<CallResult>>,
    read_header: String,
    local: bool,
    on_response: bool,
    done: bool,
}

impl Probe {
    fn result_headers(&self) -> Vec<(String, String)> {
        let all: Vec<&CallResult> = self.results.iter().flatten().collect();
        let join = |f: &dyn Fn(&CallResult) -> String| all.iter().map(|r| f(r)).collect::<Vec<_>>().join(",");
        let body = all
            .first()
            .map(|r| String::from_utf8_lossy(&r.body).replace("\r\n", "|").replace('\n', "|").chars().take(300).collect())
            .unwrap_or_default();
        vec![
            ("x-call-status".into(), join(&|r| r.status.clone())),
            ("x-call-num-headers".into(), join(&|r| r.num_headers.to_string())),
            ("x-call-body-size".into(), join(&|r| r.body.len().to_string())),
            ("x-call-trailers".into(), join(&|r| r.num_trailers.to_string())),
            ("x-call-header".into(), join(&|r| r.header.clone())),
            ("x-call-body".into(), body),
        ]
    }

    fn dispatch_all(&mut self) -> Action {
        let Some(paths) = self.get_http_request_header("x-call-paths") else { return Action::Continue };
        let upstream = self.get_http_request_header("x-call-upstream").unwrap_or_else(|| "origin".into());
        let timeout = self.get_http_request_header("x-call-timeout-ms").and_then(|t| t.parse().ok()).unwrap_or(5000);
        self.read_header = self.get_http_request_header("x-call-read-header").unwrap_or_default();
        self.local = self.get_http_request_header("x-call-reply").as_deref() == Some("local");
        let forwarded: Vec<(String, String)> = if self.get_http_request_header("x-call-forward").is_some() {
            self.get_http_request_headers().into_iter().filter(|(k, _)| k.starts_with("x-call-")).collect()
        } else {
            Vec::new()
        };
        for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut headers = vec![(":method", "GET"), (":path", path), (":authority", "origin"), ("x-probe", "1")];
            headers.extend(forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            match self.dispatch_http_call(&upstream, headers, None, vec![], Duration::from_millis(timeout)) {
                Ok(token) => {
                    self.tokens.insert(token, self.results.len());
                    self.results.push(None);
                }
                Err(e) => {
                    self.results.push(Some(CallResult {
                        status: format!("{e:?}"),
                        num_headers: 0,
                        body: Vec::new(),
                        num_trailers: 0,
                        header: "-".into(),
                    }));
                }
            }
        }
        if self.tokens.is_empty() {
            self.done = true;
            Action::Continue
        } else if self.get_http_request_header("x-call-detach").is_some() {
            // Not waiting: the transaction may end before the calls answer.
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        let Some(i) = self.tokens.remove(&token) else { return };
        let status = if num_headers == 0 {
            "fail".to_string()
        } else {
            self.get_http_call_response_header(":status").unwrap_or_else(|| "none".into())
        };
        let header = if self.read_header.is_empty() {
            "-".to_string()
        } else {
            self.get_http_call_response_header(&self.read_header).unwrap_or_else(|| "-".into())
        };
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let trailers = self.get_http_call_response_trailers().len();
        assert_eq!(trailers, num_trailers);
        assert_eq!(self.get_http_call_response_headers().len(), num_headers);
        self.results[i] = Some(CallResult { status, num_headers, body, num_trailers, header });
        if !self.tokens.is_empty() {
            return;
        }
        self.done = true;
        let headers = self.result_headers();
        if self.on_response {
            for (k, v) in &headers {
                self.set_http_response_header(k, Some(v));
            }
            self.resume_http_response();
        } else if self.local {
            let body = self.results.iter().flatten().next().map(|r| r.body.clone()).unwrap_or_default();
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.send_http_response(200, refs, Some(&body));
        } else {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-call-on").as_deref() == Some("response") {
            self.on_response = true;
            return Action::Continue;
        }
        self.dispatch_all()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (n, _) = read_counter(self);
        self.set_http_response_header("x-tick-calls", Some(&n.to_string()));
        if self.on_response {
            return self.dispatch_all();
        }
        if self.done && !self.local {
            for (k, v) in self.result_headers() {
                self.set_http_response_header(&k, Some(&v));
            }
        }
        Action::Continue
    }
}
