//! The Rust SDK `abi-probe` filter (examples/abi-probe) calls every host function and logs
//! `P|case|status|value`; these tests drive it through the in-memory backend and assert one
//! line per function and status the spec defines.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::super::guest::{self, ProxyVm};
use super::super::testing::MemoryBackend;
use super::super::{Action, BufferType, HttpCallResponse, LogLevel, MapType, MetricType, StreamType};
use super::{Metrics, PluginInfo, Shared, engine, example, vm_with};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;
const UNIMPLEMENTED: u32 = 12;

struct Probe {
    vm: ProxyVm<MemoryBackend>,
    metrics: Arc<Metrics>,
}

fn probe(flags: &str) -> Probe {
    probe_with(flags, Arc::default())
}

fn probe_with(flags: &str, shared: Arc<Shared>) -> Probe {
    let metrics = Arc::new(Metrics::default());
    let info = PluginInfo {
        name: "probe".into(),
        root_id: "probe_root".into(),
        vm_id: "probe_vm".into(),
        vm_configuration: b"vm-config".to_vec(),
        plugin_configuration: format!("probe,{flags}").into_bytes(),
        ..PluginInfo::default()
    };
    let mut vm = vm_with(&engine(), &example("abi-probe"), info, shared, metrics.clone()).expect("the probe starts");
    // The probe starts at Trace; everything it logged so far is available.
    vm.store.data_mut().backend.level = Some(LogLevel::Info);
    Probe { vm, metrics }
}

type Results = HashMap<String, (u32, String)>;

/// Every `P|case|status|value` line logged since the last call (later lines of a case win).
fn take(vm: &mut ProxyVm<MemoryBackend>) -> Results {
    let logs = std::mem::take(&mut vm.store.data_mut().backend.logs);
    let mut r = HashMap::new();
    for (_, _, line) in logs {
        let mut it = line.splitn(4, '|');
        if it.next() != Some("P") {
            continue;
        }
        let (Some(case), Some(status), Some(value)) = (it.next(), it.next(), it.next()) else { continue };
        r.insert(case.to_string(), (status.parse().expect("status"), value.to_string()));
    }
    r
}

#[track_caller]
fn check(r: &Results, case: &str, status: u32, value: &str) {
    let got = r.get(case).unwrap_or_else(|| panic!("the probe did not report {case}"));
    assert_eq!((got.0, got.1.as_str()), (status, value), "{case}");
}

#[track_caller]
fn status(r: &Results, case: &str, status: u32) {
    let got = r.get(case).unwrap_or_else(|| panic!("the probe did not report {case}"));
    assert_eq!(got.0, status, "{case}: {got:?}");
}

fn request_stream(b: &mut MemoryBackend, s: u32) {
    b.set_map(
        s,
        MapType::RequestHeaders,
        &[
            (":method", "GET"),
            (":path", "/a?b=1"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("host", "example.com"),
            ("x-multi", "1"),
            ("x-multi", "2"),
        ],
    );
    b.set_property_value(Some(s), "request.path", b"/a?b=1");
    b.set_property_value(Some(s), "source.port", &40123i64.to_le_bytes());
}

#[test]
fn root_context_host_functions_answer_spec_statuses() {
    let mut p = probe("");
    let r = take(&mut p.vm);
    let root = p.vm.store.data().root_context_id().to_string();

    // Configuration, lifecycle, logging, time.
    check(&r, "on_vm_start", OK, &format!("{root}/9"));
    check(&r, "vm_config", OK, "vm-config");
    check(&r, "get_configuration_v010_vm", OK, "vm-config");
    check(&r, "plugin_config", OK, "probe,");
    check(&r, "on_configure", OK, &format!("{root}/6"));
    check(&r, "log_ok", OK, "");
    check(&r, "log_bad_level", BAD_ARGUMENT, "");
    check(&r, "log_level", OK, "0");
    let now: u128 = r["time"].1.parse().unwrap();
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    assert!(r["time"].0 == OK && now <= real && real - now < 60_000_000_000, "{:?}", r["time"]);
    check(&r, "tick_set", OK, "");
    assert_eq!(p.vm.store.data().backend.tick_periods, vec![Some(Duration::from_millis(50))]);
    assert_eq!(p.vm.store.data().tick_period(), Some(Duration::from_millis(50)));

    // Buffers.
    check(&r, "plugin_config_slice", OK, "obe");
    check(&r, "plugin_config_start_past_end", BAD_ARGUMENT, "");
    check(&r, "buffer_unknown", BAD_ARGUMENT, "");
    check(&r, "buffer_unavailable", NOT_FOUND, "");
    check(&r, "call_body_outside_callback", NOT_FOUND, "");
    check(&r, "grpc_message", NOT_FOUND, "");
    check(&r, "status_plugin_config", OK, "6/0");
    check(&r, "status_unknown", BAD_ARGUMENT, "0/7");
    check(&r, "status_unavailable", NOT_FOUND, "0/7");
    check(&r, "set_config_readonly", BAD_ARGUMENT, "");
    check(&r, "set_unknown", BAD_ARGUMENT, "");
    check(&r, "set_body_from_root", NOT_FOUND, "");
    check(&r, "get_configuration_v010", OK, "probe,");

    // Maps without a stream.
    check(&r, "root_map_value", NOT_FOUND, "");
    check(&r, "root_map_pairs", NOT_FOUND, "");
    check(&r, "map_unknown", BAD_ARGUMENT, "");
    check(&r, "root_map_add", BAD_ARGUMENT, "");
    check(&r, "call_map_add", BAD_ARGUMENT, "");
    check(&r, "call_map_outside_callback", NOT_FOUND, "");
    check(&r, "grpc_map", NOT_FOUND, "");

    // Shared data with CAS.
    check(&r, "shared_get_missing", NOT_FOUND, "@0");
    check(&r, "shared_set_cas_on_missing", CAS_MISMATCH, "");
    check(&r, "shared_set", OK, "");
    check(&r, "shared_get", OK, "v1@1");
    check(&r, "shared_set_cas_ok", OK, "");
    check(&r, "shared_set_cas_stale", CAS_MISMATCH, "");
    check(&r, "shared_get_after", OK, "v2@2");

    // Shared queues.
    status(&r, "queue_register", OK);
    check(&r, "queue_register_again", OK, "true");
    check(&r, "queue_resolve", OK, "true");
    check(&r, "queue_resolve_missing", NOT_FOUND, "");
    check(&r, "queue_dequeue_empty", EMPTY, "");
    check(&r, "queue_enqueue", OK, "");
    check(&r, "queue_dequeue", OK, "item-1");
    check(&r, "queue_enqueue_unknown", NOT_FOUND, "");
    check(&r, "queue_dequeue_unknown", NOT_FOUND, "");

    // Metrics, also visible to an exporter.
    for m in ["counter", "gauge", "histogram"] {
        check(&r, &format!("metric_define_{m}"), OK, "");
    }
    check(&r, "metric_define_bad_type", BAD_ARGUMENT, "");
    check(&r, "metric_increment_counter", OK, "");
    check(&r, "metric_decrement_counter", BAD_ARGUMENT, "");
    check(&r, "metric_get_counter", OK, "5");
    check(&r, "metric_record_gauge", OK, "");
    check(&r, "metric_increment_gauge", OK, "");
    check(&r, "metric_get_gauge", OK, "-3");
    check(&r, "metric_record_histogram", OK, "");
    check(&r, "metric_increment_histogram", BAD_ARGUMENT, "");
    check(&r, "metric_get_histogram", BAD_ARGUMENT, "0");
    check(&r, "metric_increment_unknown", NOT_FOUND, "");
    check(&r, "metric_record_unknown", NOT_FOUND, "");
    check(&r, "metric_get_unknown", NOT_FOUND, "0");
    let snap = p.metrics.snapshot();
    let hist = snap.iter().find(|m| m.name == "probe_latency").expect("histogram exported");
    assert_eq!((hist.kind, hist.count, hist.sum), (MetricType::Histogram, 1, 42));
    assert_eq!(snap.iter().find(|m| m.name == "probe_requests").map(|m| m.value), Some(5));

    // Properties.
    check(&r, "prop_plugin_name", OK, "probe");
    check(&r, "prop_plugin_root_id", OK, "probe_root");
    check(&r, "prop_plugin_vm_id_cpp", OK, "probe_vm");
    check(&r, "prop_unknown", NOT_FOUND, "");
    check(&r, "prop_empty_path", BAD_ARGUMENT, "");
    check(&r, "prop_empty_part", BAD_ARGUMENT, "");
    check(&r, "prop_backend_root", NOT_FOUND, "");
    check(&r, "prop_set_readonly", BAD_ARGUMENT, "");

    // Foreign functions.
    check(&r, "foreign_vm_id", OK, &p.vm.store.data().vm_uid().to_string());
    check(&r, "foreign_thread_info", OK, "thread=memory-backend pool_size=1");
    check(&r, "foreign_echo", OK, "abc");
    check(&r, "foreign_unknown", NOT_FOUND, "");

    // HTTP calls from the root context reach the backend; bad requests do not.
    let calls = &p.vm.store.data().backend.http_calls;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    check(&r, "root_http_call", OK, &call.token.to_string());
    assert_eq!(call.stream, None);
    assert_eq!(call.upstream, b"origin");
    assert_eq!(call.body, b"root-body");
    assert_eq!(call.timeout, Duration::from_millis(1500));
    assert!(call.headers.contains(&(b":path".to_vec(), b"/root".to_vec())));
    assert_eq!(call.trailers, vec![(b"t".to_vec(), b"1".to_vec())]);
    check(&r, "http_call_missing_path", BAD_ARGUMENT, "0");
    check(&r, "http_call_malformed_headers", BAD_ARGUMENT, "0");
    check(&r, "get_status", OK, "");
    check(&r, "get_status_code", OK, "0");

    // gRPC is not implemented.
    for f in ["grpc_call", "grpc_stream", "grpc_send", "grpc_cancel", "grpc_close"] {
        status(&r, f, UNIMPLEMENTED);
    }

    // Contexts and stream control without a stream.
    check(&r, "set_effective_unknown", BAD_ARGUMENT, "");
    check(&r, "set_effective_root", OK, "");
    check(&r, "done_not_pending", NOT_FOUND, "");
    check(&r, "continue_from_root", BAD_ARGUMENT, "");
    check(&r, "continue_unknown_type", BAD_ARGUMENT, "");
    check(&r, "close_unknown_type", BAD_ARGUMENT, "");
    check(&r, "local_response_from_root", BAD_ARGUMENT, "");
    check(&r, "clear_route_cache", OK, "");

    // The root's HTTP call answered: delivered to the root context with the response readable.
    let token = call.token;
    let resp = HttpCallResponse {
        headers: vec![(b":status".to_vec(), b"200".to_vec())],
        body: b"ok".to_vec(),
        ..Default::default()
    };
    assert!(guest::on_http_call_response(&mut p.vm, token, resp).unwrap());
    let r = take(&mut p.vm);
    check(&r, "root_call_response", OK, &format!("{token}/1/2/0"));
    check(&r, "root_call_headers", OK, ":status=200");
    check(&r, "get_status_code", OK, "200");
    assert!(!guest::on_http_call_response(&mut p.vm, token, HttpCallResponse::default()).unwrap(), "token used up");
    assert_eq!(p.vm.store.data().pending_http_calls(), 0);
}

#[test]
fn stream_context_reads_and_edits_maps_bodies_trailers_and_properties() {
    let mut p = probe("");
    take(&mut p.vm);
    let s = 11;
    let b = &mut p.vm.store.data_mut().backend;
    request_stream(b, s);
    b.set_map(s, MapType::ResponseHeaders, &[(":status", "200"), ("content-type", "text/plain")]);
    let ctx = guest::create_stream_context(&mut p.vm, s).unwrap();
    assert_eq!(guest::on_request_headers(&mut p.vm, ctx, 7, false).unwrap(), Action::Continue);
    let r = take(&mut p.vm);
    check(&r, "on_request_headers", OK, &format!("{ctx}/7/false"));
    check(&r, "req_get_:method", OK, "GET");
    check(&r, "req_get_:path", OK, "/a?b=1");
    check(&r, "req_get_:authority", OK, "example.com");
    check(&r, "req_get_:scheme", OK, "http");
    check(&r, "req_get_host", OK, "example.com");
    check(&r, "req_get_x-multi", OK, "1, 2");
    check(&r, "req_get_missing", NOT_FOUND, "");
    check(
        &r,
        "req_pairs",
        OK,
        ":method=GET;:path=/a?b=1;:authority=example.com;:scheme=http;host=example.com;x-multi=1;x-multi=2",
    );
    // 4 + 7 * 8 bytes of sizes, then every key and value with a NUL.
    let bytes: usize = [":method", "GET", ":path", "/a?b=1", ":authority", "example.com", ":scheme", "http"]
        .iter()
        .chain(["host", "example.com", "x-multi", "1", "x-multi", "2"].iter())
        .map(|s| s.len() + 1)
        .sum();
    check(&r, "req_size", OK, &(4 + 7 * 8 + bytes).to_string());
    check(&r, "req_add", OK, "");
    check(&r, "req_add_again", OK, "");
    check(&r, "req_get_added", OK, "1, 2");
    check(&r, "req_replace_existing", OK, "");
    check(&r, "req_replace_missing", OK, "");
    check(&r, "req_replace_path", OK, "");
    check(&r, "req_remove_existing", OK, "");
    check(&r, "req_remove_missing", OK, "");
    check(&r, "req_add_unknown_map", OK, "");
    check(&r, "req_add_bad_map", BAD_ARGUMENT, "");
    check(
        &r,
        "req_pairs_after_edits",
        OK,
        ":method=GET;:path=/rewritten;:authority=example.com;:scheme=http;host=example.com;x-multi=one;x-new=n;x=y",
    );
    check(&r, "req_set_pairs", OK, "");
    check(&r, "req_pairs_after_set", OK, ":method=POST;:path=/set;x-set=s");
    check(&r, "req_set_pairs_malformed", BAD_ARGUMENT, "");
    check(&r, "req_trailers_unavailable", NOT_FOUND, "");
    check(&r, "req_trailers_write_unavailable", BAD_ARGUMENT, "");
    check(&r, "resp_headers_in_request", OK, ":status=200;content-type=text/plain");
    check(&r, "req_body_in_headers", NOT_FOUND, "");
    check(&r, "prop_request_path", OK, "/a?b=1");
    check(&r, "prop_request_path_dotted", OK, "/a?b=1");
    check(&r, "prop_source_port", OK, "40123");
    check(&r, "prop_set", OK, "");
    check(&r, "prop_get_after_set", OK, "stored");
    check(&r, "stream_foreign_vm_id", OK, &p.vm.store.data().vm_uid().to_string());
    check(&r, "done_from_stream", NOT_FOUND, "");
    check(&r, "continue_request_v010", OK, "");
    assert_eq!(p.vm.store.data().backend.continued, vec![(s, StreamType::HttpRequest)]);
    assert_eq!(
        p.vm.store.data().backend.map(s, MapType::RequestHeaders),
        vec![(":method".into(), "POST".into()), (":path".into(), "/set".into()), ("x-set".into(), "s".into())]
    );

    // Body: the running total, read with start/size, edited by prepend, append and replace.
    p.vm.store.data_mut().backend.set_buffer(s, BufferType::HttpRequestBody, b"hello world");
    assert_eq!(guest::on_request_body(&mut p.vm, ctx, 11, false).unwrap(), Action::Pause);
    let r = take(&mut p.vm);
    check(&r, "on_request_body", OK, "11/false");
    check(&r, "body_all", OK, "hello world");
    check(&r, "body_slice", OK, "ell");
    check(&r, "body_start_at_end", OK, "");
    check(&r, "body_start_past_end", BAD_ARGUMENT, "");
    check(&r, "body_status", OK, "11/0");
    check(&r, "body_prepend", OK, "");
    check(&r, "body_append", OK, "");
    check(&r, "body_replace", OK, "");
    check(&r, "body_after_edits", OK, "<BODYo world>");
    assert_eq!(p.vm.store.data().backend.buffers[&(s, BufferType::HttpRequestBody)], b"<BODYo world>");
    assert_eq!(guest::on_request_body(&mut p.vm, ctx, 13, true).unwrap(), Action::Continue);
    take(&mut p.vm);

    // Trailers.
    p.vm.store.data_mut().backend.set_map(s, MapType::RequestTrailers, &[("grpc-status", "0")]);
    assert_eq!(guest::on_request_trailers(&mut p.vm, ctx, 1).unwrap(), Action::Continue);
    let r = take(&mut p.vm);
    check(&r, "on_request_trailers", OK, "1");
    check(&r, "req_trailers", OK, "grpc-status=0");
    check(&r, "req_trailers_add", OK, "");

    // Response side.
    assert_eq!(guest::on_response_headers(&mut p.vm, ctx, 2, false).unwrap(), Action::Continue);
    let r = take(&mut p.vm);
    check(&r, "on_response_headers", OK, "2/false");
    check(&r, "resp_get_:status", OK, "200");
    check(&r, "resp_replace_status", OK, "");
    check(&r, "continue_response_v010", OK, "");
    check(&r, "close_response", OK, "");
    assert_eq!(p.vm.store.data().backend.closed, vec![(s, StreamType::HttpResponse)]);
    p.vm.store.data_mut().backend.set_buffer(s, BufferType::HttpResponseBody, b"upstream");
    guest::on_response_body(&mut p.vm, ctx, 8, true).unwrap();
    let r = take(&mut p.vm);
    check(&r, "on_response_body", OK, "8/true");
    check(&r, "resp_body", OK, "upstream");
    check(&r, "resp_body_replace_all", OK, "");
    assert_eq!(p.vm.store.data().backend.buffers[&(s, BufferType::HttpResponseBody)], b"replaced");
    p.vm.store.data_mut().backend.set_map(s, MapType::ResponseTrailers, &[("x-t", "1")]);
    guest::on_response_trailers(&mut p.vm, ctx, 1).unwrap();
    check(&take(&mut p.vm), "resp_trailers", OK, "x-t=1");

    // The end: done, then log (maps still readable), then delete.
    guest::finish_stream_context(&mut p.vm, ctx).unwrap();
    let r = take(&mut p.vm);
    check(&r, "on_done", OK, &format!("{ctx}/false"));
    check(&r, "on_log", OK, &ctx.to_string());
    check(&r, "log_req_get_:path", OK, "/set");
    check(&r, "log_resp_get_:status", OK, "201");
    assert_eq!(p.vm.store.data().live_contexts(), 1);
}

#[test]
fn http_call_from_a_stream_pauses_and_its_response_resumes() {
    let mut p = probe("pause");
    take(&mut p.vm);
    request_stream(&mut p.vm.store.data_mut().backend, 5);
    let ctx = guest::create_stream_context(&mut p.vm, 5).unwrap();
    assert_eq!(guest::on_request_headers(&mut p.vm, ctx, 7, true).unwrap(), Action::Pause);
    let r = take(&mut p.vm);
    let call = p.vm.store.data().backend.http_calls.last().cloned().expect("call sent");
    check(&r, "stream_http_call", OK, &call.token.to_string());
    assert_eq!((call.stream, &call.upstream[..], call.timeout), (Some(5), &b"authz"[..], Duration::from_millis(250)));
    // The stream suite's proxy_continue_request ran before the call.
    let before = p.vm.store.data().backend.continued.len();
    assert_eq!(before, 1);

    let resp = HttpCallResponse {
        headers: vec![(b":status".to_vec(), b"403".to_vec()), (b"x-from".to_vec(), b"authz".to_vec())],
        body: b"nope".to_vec(),
        trailers: vec![(b"x-tr".to_vec(), b"1".to_vec())],
        message: Vec::new(),
    };
    assert!(guest::on_http_call_response(&mut p.vm, call.token, resp).unwrap());
    let r = take(&mut p.vm);
    check(&r, "call_response", OK, "true/2/4/1");
    check(&r, "call_headers", OK, ":status=403;x-from=authz");
    check(&r, "call_header_value", OK, "authz");
    check(&r, "call_trailers", OK, "x-tr=1");
    check(&r, "call_body", OK, "nope");
    check(&r, "call_body_status", OK, "4/0");
    check(&r, "call_body_set", BAD_ARGUMENT, "");
    check(&r, "call_map_write", BAD_ARGUMENT, "");
    check(&r, "get_status_code", OK, "403");
    check(&r, "resume_request", OK, "");
    assert_eq!(p.vm.store.data().backend.continued.len(), before + 1);
    assert_eq!(p.vm.store.data().backend.continued.last(), Some(&(5, StreamType::HttpRequest)));

    // A failed call (no headers) carries its reason in proxy_get_status.
    let ctx2 = guest::create_stream_context(&mut p.vm, 5).unwrap();
    guest::on_request_headers(&mut p.vm, ctx2, 7, true).unwrap();
    let token = p.vm.store.data().backend.http_calls.last().unwrap().token;
    let failed = HttpCallResponse { message: b"timeout".to_vec(), ..Default::default() };
    assert!(guest::on_http_call_response(&mut p.vm, token, failed).unwrap());
    let r = take(&mut p.vm);
    check(&r, "call_response", OK, "true/0/0/0");
    check(&r, "get_status", OK, "timeout");
    check(&r, "get_status_code", OK, "0");
}

#[test]
fn http_call_failures_from_the_backend_reach_the_guest() {
    let mut p = probe("pause");
    p.vm.store.data_mut().backend.http_call_error = Some(super::super::Status::InternalFailure);
    request_stream(&mut p.vm.store.data_mut().backend, 5);
    take(&mut p.vm);
    let pending = p.vm.store.data().pending_http_calls();
    let ctx = guest::create_stream_context(&mut p.vm, 5).unwrap();
    guest::on_request_headers(&mut p.vm, ctx, 7, true).unwrap();
    check(&take(&mut p.vm), "stream_http_call", 10, "");
    assert_eq!(p.vm.store.data().pending_http_calls(), pending, "a failed call is not pending");
}

#[test]
fn local_response_reaches_the_backend_and_malformed_headers_are_refused() {
    let mut p = probe("local_response");
    take(&mut p.vm);
    request_stream(&mut p.vm.store.data_mut().backend, 3);
    let ctx = guest::create_stream_context(&mut p.vm, 3).unwrap();
    assert_eq!(guest::on_request_headers(&mut p.vm, ctx, 7, true).unwrap(), Action::Pause);
    let r = take(&mut p.vm);
    check(&r, "local_response", OK, "");
    check(&r, "local_response_malformed_headers", BAD_ARGUMENT, "");
    let sent = &p.vm.store.data().backend.local_responses;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status_code, 403);
    assert_eq!(sent[0].details, b"denied-by-probe");
    assert_eq!(sent[0].body, b"go away");
    assert_eq!(sent[0].headers, vec![(b"x-probe".to_vec(), b"denied".to_vec())]);
    assert_eq!(sent[0].grpc_status, -1);
}

#[test]
fn deferred_done_keeps_the_context_until_proxy_done_then_logs_and_deletes() {
    let mut p = probe("defer_done");
    take(&mut p.vm);
    request_stream(&mut p.vm.store.data_mut().backend, 4);
    let ctx = guest::create_stream_context(&mut p.vm, 4).unwrap();
    guest::on_request_headers(&mut p.vm, ctx, 7, true).unwrap();
    take(&mut p.vm);
    guest::finish_stream_context(&mut p.vm, ctx).unwrap();
    let r = take(&mut p.vm);
    check(&r, "on_done", OK, &format!("{ctx}/true"));
    assert!(!r.contains_key("on_log"), "no log before proxy_done");
    assert_eq!(p.vm.store.data().live_contexts(), 2);
    guest::on_tick(&mut p.vm).unwrap();
    let r = take(&mut p.vm);
    check(&r, "on_tick", OK, &p.vm.store.data().root_context_id().to_string());
    check(&r, "tick_set_effective", OK, &ctx.to_string());
    check(&r, "tick_done", OK, "");
    check(&r, "tick_done_again", OK, "");
    check(&r, "on_log", OK, &ctx.to_string());
    assert_eq!(p.vm.store.data().live_contexts(), 1, "deleted after proxy_done");
}

#[test]
fn queue_ready_is_delivered_to_the_registering_root_context_across_vms() {
    let shared = Arc::new(Shared::default());
    let mut owner = probe_with("", shared.clone());
    take(&mut owner.vm);
    // The owner's own suite enqueued item-2 after its dequeue: one notification for itself.
    let targets = owner.vm.store.data().backend.queue_ready.clone();
    assert_eq!(targets.len(), 2, "{targets:?}");
    let t = targets[1];
    assert_eq!((t.vm, t.context_id), (owner.vm.store.data().vm_uid(), owner.vm.store.data().root_context_id()));

    // Another VM with the same vm_id registers the same queue name: it now owns the queue,
    // and notifications for its enqueues name it.
    let mut other = probe_with("", shared.clone());
    take(&mut other.vm);
    let t2 = *other.vm.store.data().backend.queue_ready.last().unwrap();
    assert_eq!(t2.queue_id, t.queue_id, "same queue, resolved by vm_id and name");
    assert_eq!(t2.vm, other.vm.store.data().vm_uid());
    assert_ne!(t2.vm, t.vm);

    guest::on_queue_ready(&mut other.vm, t2.context_id, t2.queue_id).unwrap();
    let r = take(&mut other.vm);
    check(&r, "on_queue_ready", OK, &format!("true/{}", t2.context_id));
    check(&r, "queue_ready_dequeue", OK, "item-2");
    // Delivery to a context that does not exist is a no-op.
    guest::on_queue_ready(&mut other.vm, 999, t2.queue_id).unwrap();
    assert!(take(&mut other.vm).is_empty());
}

#[test]
fn foreign_function_callback_reads_its_arguments() {
    let mut p = probe("");
    take(&mut p.vm);
    guest::on_foreign_function(&mut p.vm, 7, b"args").unwrap();
    let r = take(&mut p.vm);
    check(&r, "on_foreign_function", OK, "7/4");
    check(&r, "foreign_args", OK, "args");
    check(&r, "foreign_args_status", OK, "4/0");
    check(&r, "foreign_args_set", BAD_ARGUMENT, "");
    // Outside the callback the arguments are gone.
    assert!(p.vm.store.data().foreign_args.is_none());
}

#[test]
fn every_vm_has_its_own_id() {
    let a = probe("");
    let b = probe("");
    assert_ne!(a.vm.store.data().vm_uid(), b.vm.store.data().vm_uid());
    assert_ne!(a.vm.store.data().vm_uid(), 0);
}
