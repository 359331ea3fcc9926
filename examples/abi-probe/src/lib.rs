//! `abi-probe`: a Proxy-Wasm filter built with the Rust SDK that calls every host function of
//! ABI 0.2.1 (and the 0.1.0-only ones) with good and bad arguments and logs, at info level,
//! one line per call: `P|<case>|<status>|<value>`. The ats-wasm unit tests drive it through the
//! in-memory backend and assert each line.
//!
//! The plugin configuration is a comma-separated list of flags:
//! - `defer_done`: `on_done` answers `false`; the next tick finishes the context with
//!   `proxy_set_effective_context` + `proxy_done`;
//! - `local_response`: request headers answer with `proxy_send_local_response(403)`;
//! - `pause`: request headers dispatch an HTTP call and pause; its response resumes.

#![allow(clashing_extern_declarations)]

mod raw;

use std::cell::{Cell, RefCell};
use std::ptr::null_mut;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| Box::new(Root { id, flags: String::new(), queue: 0 }));
}}

thread_local! {
    static DEFERRED: Cell<u32> = const { Cell::new(0) };
    static FLAGS: RefCell<String> = const { RefCell::new(String::new()) };
}

fn flag(name: &str) -> bool {
    FLAGS.with(|f| f.borrow().split(',').any(|x| x == name))
}

/// Logs one result line.
fn report(case: &str, status: u32, value: impl AsRef<str>) {
    let line = format!("P|{case}|{status}|{}", value.as_ref());
    unsafe { raw::proxy_log(2, line.as_ptr(), line.len()) };
}

fn take(p: *mut u8, n: usize) -> Vec<u8> {
    if p.is_null() { Vec::new() } else { unsafe { Vec::from_raw_parts(p, n, n) } }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Calls a host function that returns a guest buffer and reports it as text.
fn out_call(case: &str, f: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> (u32, Vec<u8>) {
    let (mut p, mut n) = (null_mut(), 0);
    let s = f(&mut p, &mut n);
    let v = take(p, n);
    report(case, s, text(&v));
    (s, v)
}

fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes a serialized map into `k=v;k=v` (the probe trusts the host here: a malformed map
/// shows as `MALFORMED`).
fn decode(b: &[u8]) -> String {
    let rd = |at: usize| b.get(at..at + 4).map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize);
    let Some(n) = rd(0) else { return if b.is_empty() { String::new() } else { "MALFORMED".into() } };
    let mut at = 4 + n * 8;
    let mut out = Vec::new();
    for i in 0..n {
        let (Some(kl), Some(vl)) = (rd(4 + i * 8), rd(8 + i * 8)) else { return "MALFORMED".into() };
        let (Some(k), Some(v)) = (b.get(at..at + kl), b.get(at + kl + 1..at + kl + 1 + vl)) else {
            return "MALFORMED".into();
        };
        out.push(format!("{}={}", text(k), text(v)));
        at += kl + vl + 2;
    }
    if at != b.len() {
        return "MALFORMED".into();
    }
    out.join(";")
}

fn get_value(case: &str, map: u32, key: &str) -> u32 {
    out_call(case, |p, n| unsafe { raw::proxy_get_header_map_value(map, key.as_ptr(), key.len(), p, n) }).0
}

fn get_pairs(case: &str, map: u32) -> String {
    let (mut p, mut n) = (null_mut(), 0);
    let s = unsafe { raw::proxy_get_header_map_pairs(map, &mut p, &mut n) };
    let v = decode(&take(p, n));
    report(case, s, &v);
    v
}

fn get_size(case: &str, map: u32) {
    let mut n = 0;
    let s = unsafe { raw::proxy_get_header_map_size(map, &mut n) };
    report(case, s, n.to_string());
}

fn get_buffer(case: &str, t: u32, start: usize, max: usize) {
    out_call(case, |p, n| unsafe { raw::proxy_get_buffer_bytes(t, start, max, p, n) });
}

fn buffer_status(case: &str, t: u32) {
    let (mut size, mut flags) = (0, 7);
    let s = unsafe { raw::proxy_get_buffer_status(t, &mut size, &mut flags) };
    report(case, s, format!("{size}/{flags}"));
}

fn set_buffer(case: &str, t: u32, start: usize, size: usize, v: &str) {
    report(case, unsafe { raw::proxy_set_buffer_bytes(t, start, size, v.as_ptr(), v.len()) }, "");
}

fn get_property(case: &str, path: &[u8]) -> (u32, Vec<u8>) {
    out_call(case, |p, n| unsafe { raw::proxy_get_property(path.as_ptr(), path.len(), p, n) })
}

fn get_property_u64(case: &str, path: &[u8]) {
    let (mut p, mut n) = (null_mut(), 0);
    let s = unsafe { raw::proxy_get_property(path.as_ptr(), path.len(), &mut p, &mut n) };
    let v = take(p, n);
    let num = <[u8; 8]>::try_from(&v[..]).map(|b| i64::from_le_bytes(b).to_string()).unwrap_or(format!("len{}", v.len()));
    report(case, s, num);
}

fn foreign(case: &str, name: &str, args: &[u8]) -> (u32, Vec<u8>) {
    let (mut p, mut n) = (null_mut(), 0);
    let s = unsafe { raw::proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), &mut p, &mut n) };
    let v = take(p, n);
    let shown = if name == "vm_id" && v.len() == 8 {
        u64::from_le_bytes(v[..].try_into().unwrap_or([0; 8])).to_string()
    } else {
        text(&v)
    };
    report(case, s, shown);
    (s, v)
}

fn http_call_raw(case: &str, upstream: &str, headers: &[u8]) {
    let mut token = 0;
    let s = unsafe {
        raw::proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            null_mut(),
            0,
            null_mut(),
            0,
            1000,
            &mut token,
        )
    };
    report(case, s, token.to_string());
}

fn status_of_call() {
    let mut code = 0;
    out_call("get_status", |p, n| unsafe { raw::proxy_get_status(&mut code, p, n) });
    report("get_status_code", 0, code.to_string());
}

struct Root {
    id: u32,
    flags: String,
    queue: u32,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, nh: usize, nb: usize, nt: usize) {
        report("root_call_response", 0, format!("{token}/{nh}/{nb}/{nt}"));
        get_pairs("root_call_headers", 6);
        status_of_call();
    }

    fn on_foreign_function(&mut self, function_id: u32, size: usize) {
        report("on_foreign_function", 0, format!("{function_id}/{size}"));
        get_buffer("foreign_args", 8, 0, usize::MAX);
        buffer_status("foreign_args_status", 8);
        set_buffer("foreign_args_set", 8, 0, 0, "x");
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        report("on_vm_start", 0, format!("{}/{size}", self.id));
        get_buffer("vm_config", 6, 0, usize::MAX);
        out_call("get_configuration_v010_vm", |p, n| unsafe { raw::proxy_get_configuration(p, n) });
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let (_, cfg) = out_call("plugin_config", |p, n| unsafe { raw::proxy_get_buffer_bytes(7, 0, usize::MAX, p, n) });
        self.flags = text(&cfg);
        FLAGS.with(|f| *f.borrow_mut() = self.flags.clone());
        report("on_configure", 0, format!("{}/{size}", self.id));
        self.root_suite();
        true
    }

    fn on_tick(&mut self) {
        report("on_tick", 0, self.id.to_string());
        let deferred = DEFERRED.with(|d| d.replace(0));
        if deferred != 0 {
            report("tick_set_effective", unsafe { raw::proxy_set_effective_context(deferred) }, deferred.to_string());
            report("tick_done", unsafe { raw::proxy_done() }, "");
            report("tick_done_again", unsafe { raw::proxy_done() }, "");
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        report("on_queue_ready", 0, format!("{}/{}", queue_id == self.queue, self.id));
        out_call("queue_ready_dequeue", |p, n| unsafe { raw::proxy_dequeue_shared_queue(queue_id, p, n) });
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { id, call: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Everything callable from the root context.
    fn root_suite(&mut self) {
        let msg = "hello";
        report("log_ok", unsafe { raw::proxy_log(2, msg.as_ptr(), msg.len()) }, "");
        report("log_bad_level", unsafe { raw::proxy_log(9, msg.as_ptr(), msg.len()) }, "");
        let mut level = 99;
        report("log_level", unsafe { raw::proxy_get_log_level(&mut level) }, level.to_string());
        let mut now = 0;
        report("time", unsafe { raw::proxy_get_current_time_nanoseconds(&mut now) }, now.to_string());
        report("tick_set", unsafe { raw::proxy_set_tick_period_milliseconds(50) }, "");

        // Buffers from the root context.
        get_buffer("plugin_config_slice", 7, 2, 3);
        get_buffer("plugin_config_start_past_end", 7, 10_000, 1);
        get_buffer("buffer_unknown", 99, 0, 1);
        get_buffer("buffer_unavailable", 0, 0, 1);
        get_buffer("call_body_outside_callback", 4, 0, 1);
        get_buffer("grpc_message", 5, 0, 1);
        buffer_status("status_plugin_config", 7);
        buffer_status("status_unknown", 99);
        buffer_status("status_unavailable", 4);
        set_buffer("set_config_readonly", 7, 0, 0, "x");
        set_buffer("set_unknown", 99, 0, 0, "x");
        set_buffer("set_body_from_root", 0, 0, 0, "x");
        out_call("get_configuration_v010", |p, n| unsafe { raw::proxy_get_configuration(p, n) });

        // Maps from the root context (no stream).
        get_value("root_map_value", 0, "host");
        get_pairs("root_map_pairs", 0);
        get_pairs("map_unknown", 99);
        let (k, v) = ("x", "y");
        report("root_map_add", unsafe { raw::proxy_add_header_map_value(0, k.as_ptr(), 1, v.as_ptr(), 1) }, "");
        report("call_map_add", unsafe { raw::proxy_add_header_map_value(6, k.as_ptr(), 1, v.as_ptr(), 1) }, "");
        get_value("call_map_outside_callback", 6, "x");
        get_value("grpc_map", 4, "x");

        // Shared data.
        let key = "probe-key";
        let get = |case: &str| -> u32 {
            let (mut p, mut n, mut cas) = (null_mut(), 0, 0);
            let s = unsafe { raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut p, &mut n, &mut cas) };
            report(case, s, format!("{}@{cas}", text(&take(p, n))));
            cas
        };
        let set = |case: &str, v: &str, cas: u32| {
            report(case, unsafe { raw::proxy_set_shared_data(key.as_ptr(), key.len(), v.as_ptr(), v.len(), cas) }, "")
        };
        get("shared_get_missing");
        set("shared_set_cas_on_missing", "v0", 77);
        set("shared_set", "v1", 0);
        let c1 = get("shared_get");
        set("shared_set_cas_ok", "v2", c1);
        set("shared_set_cas_stale", "v3", c1);
        get("shared_get_after");

        // Shared queues.
        let name = "probe-queue";
        let mut id = 0;
        report("queue_register", unsafe { raw::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) }, id.to_string());
        self.queue = id;
        let mut again = 0;
        unsafe { raw::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut again) };
        report("queue_register_again", 0, (again == id).to_string());
        let vm_id = "probe_vm";
        let mut resolved = 0;
        let s = unsafe { raw::proxy_resolve_shared_queue(vm_id.as_ptr(), vm_id.len(), name.as_ptr(), name.len(), &mut resolved) };
        report("queue_resolve", s, (resolved == id).to_string());
        let missing = "nope";
        let s = unsafe { raw::proxy_resolve_shared_queue(vm_id.as_ptr(), vm_id.len(), missing.as_ptr(), 4, &mut resolved) };
        report("queue_resolve_missing", s, "");
        out_call("queue_dequeue_empty", |p, n| unsafe { raw::proxy_dequeue_shared_queue(id, p, n) });
        let item = "item-1";
        report("queue_enqueue", unsafe { raw::proxy_enqueue_shared_queue(id, item.as_ptr(), item.len()) }, "");
        out_call("queue_dequeue", |p, n| unsafe { raw::proxy_dequeue_shared_queue(id, p, n) });
        let item2 = "item-2";
        unsafe { raw::proxy_enqueue_shared_queue(id, item2.as_ptr(), item2.len()) };
        report("queue_enqueue_unknown", unsafe { raw::proxy_enqueue_shared_queue(id + 1000, item.as_ptr(), 1) }, "");
        out_call("queue_dequeue_unknown", |p, n| unsafe { raw::proxy_dequeue_shared_queue(id + 1000, p, n) });

        // Metrics.
        let define = |case: &str, t: u32, name: &str| -> u32 {
            let mut id = 0;
            report(case, unsafe { raw::proxy_define_metric(t, name.as_ptr(), name.len(), &mut id) }, "");
            id
        };
        let get_metric = |case: &str, id: u32| {
            let mut v = 0u64;
            let s = unsafe { raw::proxy_get_metric(id, &mut v) };
            report(case, s, (v as i64).to_string());
        };
        let counter = define("metric_define_counter", 0, "probe_requests");
        let gauge = define("metric_define_gauge", 1, "probe_gauge");
        let hist = define("metric_define_histogram", 2, "probe_latency");
        define("metric_define_bad_type", 7, "probe_bad");
        report("metric_increment_counter", unsafe { raw::proxy_increment_metric(counter, 5) }, "");
        report("metric_decrement_counter", unsafe { raw::proxy_increment_metric(counter, -1) }, "");
        get_metric("metric_get_counter", counter);
        report("metric_record_gauge", unsafe { raw::proxy_record_metric(gauge, 10) }, "");
        report("metric_increment_gauge", unsafe { raw::proxy_increment_metric(gauge, -13) }, "");
        get_metric("metric_get_gauge", gauge);
        report("metric_record_histogram", unsafe { raw::proxy_record_metric(hist, 42) }, "");
        report("metric_increment_histogram", unsafe { raw::proxy_increment_metric(hist, 1) }, "");
        get_metric("metric_get_histogram", hist);
        report("metric_increment_unknown", unsafe { raw::proxy_increment_metric(9_999_999, 1) }, "");
        report("metric_record_unknown", unsafe { raw::proxy_record_metric(9_999_999, 1) }, "");
        get_metric("metric_get_unknown", 9_999_999);

        // Properties.
        get_property("prop_plugin_name", b"plugin_name");
        get_property("prop_plugin_root_id", b"plugin_root_id");
        get_property("prop_plugin_vm_id_cpp", b"plugin_vm_id\0");
        get_property("prop_unknown", b"no\0such\0property");
        get_property("prop_empty_path", b"");
        get_property("prop_empty_part", b"a\0\0b");
        get_property("prop_backend_root", b"node\0id");
        let (p, v) = (b"plugin_name", "x");
        report("prop_set_readonly", unsafe { raw::proxy_set_property(p.as_ptr(), p.len(), v.as_ptr(), 1) }, "");

        // Foreign functions.
        foreign("foreign_vm_id", "vm_id", b"");
        foreign("foreign_thread_info", "thread_info", b"");
        foreign("foreign_echo", "echo", b"abc");
        foreign("foreign_unknown", "no_such_function", b"");

        // HTTP calls from the root context.
        match self.dispatch_http_call(
            "origin",
            vec![(":method", "GET"), (":path", "/root"), (":authority", "example.com")],
            Some(b"root-body"),
            vec![("t", "1")],
            Duration::from_millis(1500),
        ) {
            Ok(token) => report("root_http_call", 0, token.to_string()),
            Err(s) => report("root_http_call", s as u32, ""),
        }
        http_call_raw("http_call_missing_path", "origin", &encode(&[(":method", "GET"), (":authority", "a")]));
        http_call_raw("http_call_malformed_headers", "origin", &[9, 9, 9]);
        status_of_call();

        // gRPC: not implemented.
        let mut id = 0;
        let n = null_mut();
        report("grpc_call", unsafe { raw::proxy_grpc_call(n, 0, n, 0, n, 0, n, 0, n, 0, 1000, &mut id) }, "");
        report("grpc_stream", unsafe { raw::proxy_grpc_stream(n, 0, n, 0, n, 0, n, 0, &mut id) }, "");
        report("grpc_send", unsafe { raw::proxy_grpc_send(1, n, 0, 0) }, "");
        report("grpc_cancel", unsafe { raw::proxy_grpc_cancel(1) }, "");
        report("grpc_close", unsafe { raw::proxy_grpc_close(1) }, "");

        // Contexts and streams from the root.
        report("set_effective_unknown", unsafe { raw::proxy_set_effective_context(987_654) }, "");
        report("set_effective_root", unsafe { raw::proxy_set_effective_context(self.id) }, "");
        report("done_not_pending", unsafe { raw::proxy_done() }, "");
        report("continue_from_root", unsafe { raw::proxy_continue_stream(0) }, "");
        report("continue_unknown_type", unsafe { raw::proxy_continue_stream(9) }, "");
        report("close_unknown_type", unsafe { raw::proxy_close_stream(9) }, "");
        let e = b"";
        let s = unsafe { raw::proxy_send_local_response(403, e.as_ptr(), 0, e.as_ptr(), 0, e.as_ptr(), 0, -1) };
        report("local_response_from_root", s, "");
        report("clear_route_cache", unsafe { raw::proxy_clear_route_cache() }, "");
    }
}

struct Stream {
    id: u32,
    call: u32,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, nh: usize, nb: usize, nt: usize) {
        report("call_response", 0, format!("{}/{nh}/{nb}/{nt}", token == self.call));
        get_pairs("call_headers", 6);
        get_value("call_header_value", 6, "x-from");
        get_pairs("call_trailers", 7);
        get_buffer("call_body", 4, 0, usize::MAX);
        buffer_status("call_body_status", 4);
        set_buffer("call_body_set", 4, 0, 0, "x");
        let (k, v) = ("x", "y");
        report("call_map_write", unsafe { raw::proxy_add_header_map_value(6, k.as_ptr(), 1, v.as_ptr(), 1) }, "");
        status_of_call();
        report("resume_request", unsafe { raw::proxy_continue_stream(0) }, "");
    }

    fn on_done(&mut self) -> bool {
        let defer = flag("defer_done");
        report("on_done", 0, format!("{}/{defer}", self.id));
        if defer {
            DEFERRED.with(|d| d.set(self.id));
        }
        !defer
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        report("on_request_headers", 0, format!("{}/{n}/{eos}", self.id));
        for k in [":method", ":path", ":authority", ":scheme", "host", "x-multi", "missing"] {
            get_value(&format!("req_get_{k}"), 0, k);
        }
        get_pairs("req_pairs", 0);
        get_size("req_size", 0);
        let add = |case: &str, k: &str, v: &str| {
            report(case, unsafe { raw::proxy_add_header_map_value(0, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }, "")
        };
        let replace = |case: &str, k: &str, v: &str| {
            report(case, unsafe { raw::proxy_replace_header_map_value(0, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }, "")
        };
        let remove = |case: &str, k: &str| report(case, unsafe { raw::proxy_remove_header_map_value(0, k.as_ptr(), k.len()) }, "");
        add("req_add", "x-added", "1");
        add("req_add_again", "x-added", "2");
        get_value("req_get_added", 0, "x-added");
        replace("req_replace_existing", "x-multi", "one");
        replace("req_replace_missing", "x-new", "n");
        replace("req_replace_path", ":path", "/rewritten");
        remove("req_remove_existing", "x-added");
        remove("req_remove_missing", "x-never-there");
        add("req_add_unknown_map", "x", "y");
        report("req_add_bad_map", unsafe { raw::proxy_add_header_map_value(42, "x".as_ptr(), 1, "y".as_ptr(), 1) }, "");
        get_pairs("req_pairs_after_edits", 0);
        let pairs = encode(&[(":method", "POST"), (":path", "/set"), ("x-set", "s")]);
        report("req_set_pairs", unsafe { raw::proxy_set_header_map_pairs(0, pairs.as_ptr(), pairs.len()) }, "");
        get_pairs("req_pairs_after_set", 0);
        let bad = [1u8, 0, 0, 0, 200, 0, 0, 0, 1, 0, 0, 0, b'k', 0];
        report("req_set_pairs_malformed", unsafe { raw::proxy_set_header_map_pairs(0, bad.as_ptr(), bad.len()) }, "");
        get_pairs("req_trailers_unavailable", 1);
        report("req_trailers_write_unavailable", unsafe { raw::proxy_add_header_map_value(1, "x".as_ptr(), 1, "y".as_ptr(), 1) }, "");
        get_pairs("resp_headers_in_request", 2);

        get_buffer("req_body_in_headers", 0, 0, usize::MAX);
        get_property("prop_request_path", b"request\0path");
        get_property("prop_request_path_dotted", b"request.path");
        get_property_u64("prop_source_port", b"source\0port");
        let (p, v) = (b"probe\0state", "stored");
        report("prop_set", unsafe { raw::proxy_set_property(p.as_ptr(), p.len(), v.as_ptr(), v.len()) }, "");
        get_property("prop_get_after_set", b"probe\0state");
        foreign("stream_foreign_vm_id", "vm_id", b"");
        report("done_from_stream", unsafe { raw::proxy_done() }, "");
        report("continue_request_v010", unsafe { raw::proxy_continue_request() }, "");

        if flag("local_response") {
            let (d, b) = ("denied-by-probe", "go away");
            let h = encode(&[("x-probe", "denied")]);
            let s = unsafe {
                raw::proxy_send_local_response(403, d.as_ptr(), d.len(), b.as_ptr(), b.len(), h.as_ptr(), h.len(), -1)
            };
            report("local_response", s, "");
            let bad = [5u8, 0, 0, 0];
            let s = unsafe { raw::proxy_send_local_response(403, d.as_ptr(), 0, b.as_ptr(), 0, bad.as_ptr(), 4, -1) };
            report("local_response_malformed_headers", s, "");
            return Action::Pause;
        }
        if flag("pause") {
            match self.dispatch_http_call(
                "authz",
                vec![(":method", "POST"), (":path", "/check"), (":authority", "authz.local")],
                Some(b"check-body"),
                vec![],
                Duration::from_millis(250),
            ) {
                Ok(token) => {
                    self.call = token;
                    report("stream_http_call", 0, token.to_string());
                }
                Err(s) => report("stream_http_call", s as u32, ""),
            }
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        report("on_request_body", 0, format!("{size}/{eos}"));
        get_buffer("body_all", 0, 0, usize::MAX);
        get_buffer("body_slice", 0, 1, 3);
        get_buffer("body_start_at_end", 0, size, 5);
        get_buffer("body_start_past_end", 0, size + 1, 5);
        buffer_status("body_status", 0);
        set_buffer("body_prepend", 0, 0, 0, "<");
        set_buffer("body_append", 0, usize::MAX, 0, ">");
        set_buffer("body_replace", 0, 1, 4, "BODY");
        get_buffer("body_after_edits", 0, 0, usize::MAX);
        if eos { Action::Continue } else { Action::Pause }
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        report("on_request_trailers", 0, n.to_string());
        get_pairs("req_trailers", 1);
        let (k, v) = ("x-trailer-added", "t");
        report("req_trailers_add", unsafe { raw::proxy_add_header_map_value(1, k.as_ptr(), k.len(), v.as_ptr(), 1) }, "");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, n: usize, eos: bool) -> Action {
        report("on_response_headers", 0, format!("{n}/{eos}"));
        get_value("resp_get_:status", 2, ":status");
        replace_status();
        report("continue_response_v010", unsafe { raw::proxy_continue_response() }, "");
        report("close_response", unsafe { raw::proxy_close_stream(1) }, "");
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        report("on_response_body", 0, format!("{size}/{eos}"));
        get_buffer("resp_body", 1, 0, usize::MAX);
        set_buffer("resp_body_replace_all", 1, 0, usize::MAX, "replaced");
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, n: usize) -> Action {
        report("on_response_trailers", 0, n.to_string());
        get_pairs("resp_trailers", 3);
        Action::Continue
    }

    fn on_log(&mut self) {
        report("on_log", 0, self.id.to_string());
        get_value("log_req_get_:path", 0, ":path");
        get_value("log_resp_get_:status", 2, ":status");
    }
}

fn replace_status() {
    let (k, v) = (":status", "201");
    report("resp_replace_status", unsafe { raw::proxy_replace_header_map_value(2, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }, "");
}
