//! `body-rewrite`: a Proxy-Wasm HTTP filter that rewrites a word in response bodies (and,
//! when asked, request bodies).
//!
//! ```json
//! {"from": "origin", "to": "filter"}
//! ```
//!
//! Other keys, all optional:
//! - `"mode"`: `"buffer"` (default) answers `Pause` until the end of the body, so the host
//!   buffers it and calls again with the whole body, which is then rewritten at once (a word
//!   split across network chunks is still found); `"stream"` rewrites every chunk as it passes
//!   (`Continue` each time, constant memory, but a word split across chunks is missed).
//! - `"request"`: `true` rewrites request bodies too (same mode).
//! - `"prepend"`, `"append"`: text put before the first and after the last byte of each
//!   rewritten body (`set_buffer(0, 0, ..)` and `set_buffer(len, 0, ..)`).
//! - `"skip_header"` (default `"x-skip-rewrite"`): a request carrying this header is not
//!   rewritten (neither direction).
//! - `"report"`: `true` appends `[body-rewrite calls=N eos=E max_size=S]` to each rewritten
//!   body: how many body callbacks ran, how many had `end_of_stream`, and the largest
//!   `body_size` seen — observable proof of streaming or buffering.

use std::rc::Rc;

use log::{debug, error};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(RewriteRoot::default()));
}}

fn default_skip_header() -> String {
    "x-skip-rewrite".into()
}

/// The parsed plugin configuration.
#[derive(Debug, Deserialize)]
struct Config {
    /// The word to replace (must not be empty).
    from: String,
    /// Its replacement.
    #[serde(default)]
    to: String,
    /// `buffer` or `stream`.
    #[serde(default)]
    mode: Option<String>,
    /// Rewrite request bodies too.
    #[serde(default)]
    request: bool,
    /// Text before each rewritten body.
    #[serde(default)]
    prepend: String,
    /// Text after each rewritten body.
    #[serde(default)]
    append: String,
    /// A request with this header is left alone.
    #[serde(default = "default_skip_header")]
    skip_header: String,
    /// Append the callback counts to each body.
    #[serde(default)]
    report: bool,
}

#[derive(Default)]
struct RewriteRoot {
    config: Option<Rc<Config>>,
}

impl Context for RewriteRoot {}

impl RootContext for RewriteRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) if !c.from.is_empty() && matches!(c.mode.as_deref(), None | Some("buffer" | "stream")) => {
                self.config = Some(Rc::new(c));
                true
            }
            Ok(_) => {
                error!("body-rewrite: \"from\" must not be empty and \"mode\" is \"buffer\" or \"stream\"");
                false
            }
            Err(e) => {
                error!("body-rewrite: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewrite {
            config: self.config.clone()?,
            skip: false,
            request: Counts::default(),
            response: Counts::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Body callbacks seen in one direction.
#[derive(Default)]
struct Counts {
    calls: usize,
    eos: usize,
    max_size: usize,
    /// The prepend text went out already (stream mode).
    started: bool,
}

struct Rewrite {
    config: Rc<Config>,
    skip: bool,
    request: Counts,
    response: Counts,
}

impl Context for Rewrite {}

/// `body` with every `from` replaced by `to`.
fn replace(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

impl Rewrite {
    /// One body callback in direction `which`.
    fn on_body(&mut self, which: BufferType, body_size: usize, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let counts = if which == BufferType::HttpRequestBody { &mut self.request } else { &mut self.response };
        counts.calls += 1;
        counts.eos += end_of_stream as usize;
        counts.max_size = counts.max_size.max(body_size);
        let stream = config.mode.as_deref() == Some("stream");
        if !stream && !end_of_stream {
            // Buffer: the host calls again with this and the next chunk.
            return Action::Pause;
        }
        let get = |n| proxy_wasm::hostcalls::get_buffer(which, 0, n).ok().flatten().unwrap_or_default();
        let set = |start, size, v: &[u8]| {
            if let Err(e) = proxy_wasm::hostcalls::set_buffer(which, start, size, v) {
                error!("body-rewrite: set_buffer failed: {e:?}");
            }
        };
        let body = get(body_size);
        let new = replace(&body, config.from.as_bytes(), config.to.as_bytes());
        let mut len = new.len();
        if new != body {
            // start 0, size = the whole buffer: replace.
            set(0, body_size, &new);
        }
        if !counts.started && !config.prepend.is_empty() {
            // start 0, size 0: prepend.
            set(0, 0, config.prepend.as_bytes());
            len += config.prepend.len();
        }
        counts.started = true;
        if end_of_stream {
            let mut tail = config.append.clone();
            if config.report {
                tail.push_str(&format!(
                    "[body-rewrite calls={} eos={} max_size={}]",
                    counts.calls, counts.eos, counts.max_size
                ));
            }
            if !tail.is_empty() {
                // start = length, size 0: append.
                set(len, 0, tail.as_bytes());
            }
            debug!("body-rewrite: {which:?} done after {} callbacks", counts.calls);
        }
        Action::Continue
    }
}

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.skip = self.get_http_request_header(&self.config.skip_header).is_some();
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.skip || !self.config.request {
            return Action::Continue;
        }
        self.on_body(BufferType::HttpRequestBody, body_size, end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.skip {
            return Action::Continue;
        }
        self.on_body(BufferType::HttpResponseBody, body_size, end_of_stream)
    }
}
