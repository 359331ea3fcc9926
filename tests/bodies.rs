//! Request and response bodies through ATS transforms (`bodies:` in a filter's YAML), with
//! `examples/body-rewrite` and `examples/deny`, through a real `traffic_server` with 2 net
//! threads.

mod harness;

use std::time::Duration;

use harness::{Ats, Client, chunk_encode, example_wasm};

/// A filter YAML for module `module` with plugin configuration `configuration` and extra
/// `config:` lines (each `key: value`).
fn yaml(name: &str, module: &str, configuration: &str, extra: &[&str]) -> String {
    let mut s = format!("config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n");
    for line in extra {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str(&format!(
        "  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm(module).display()
    ));
    s
}

/// `text` repeated to `n` bytes, as the origin's `fill=` makes it.
fn fill(text: &str, n: usize) -> String {
    text.chars().cycle().take(n).collect()
}

/// ATS with one body-rewrite filter.
fn rewrite_ats(configuration: &str, extra: &[&str]) -> Ats {
    Ats::builder()
        .net_threads(2)
        .config_file("rw.yaml", yaml("rw", "body-rewrite", configuration, extra))
        .plugin(&["rw.yaml"])
        .start()
}

/// The `[body-rewrite calls=N eos=E max_size=S]` report at the end of a body.
fn report(body: &str) -> Option<(usize, usize, usize)> {
    let start = body.rfind("[body-rewrite ")?;
    let fields: Vec<usize> = body[start..]
        .trim_end_matches(']')
        .split(' ')
        .skip(1)
        .map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect::<Option<_>>()?;
    match fields[..] {
        [calls, eos, max_size] => Some((calls, eos, max_size)),
        _ => None,
    }
}

#[test]
fn response_body_is_rewritten_and_reframed() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter-text"}"#, &["bodies: response"]);
    for path in ["/r?body_size=60&fill=origin-", "/r?body_size=5000&fill=origin-&chunked=700"] {
        let r = ats.get(path);
        assert_eq!(r.status, 200, "{r:?}");
        let n = if path.contains("5000") { 5000 } else { 60 };
        assert_eq!(r.body_str(), fill("origin-", n).replace("origin", "filter-text"), "{path}");
        // The length changed: no Content-Length from the origin, chunked to the client.
        assert_eq!(r.header("content-length"), None, "{r:?}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    }
}

#[test]
fn an_upstream_format_yaml_gets_the_bodies_its_module_exports_callbacks_for() {
    // No ats-wasm key at all: the body-rewrite module exports the body callbacks, so `auto`
    // (the default) filters its bodies, as the upstream plugin does; one NOTE says so.
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "rw.yaml",
            harness::filter_yaml("rw", &example_wasm("body-rewrite"), r#"{"from": "origin", "to": "filter"}"#),
        )
        .config_file(
            "add.yaml",
            yaml("add", "add-headers", r#"{"response_headers": {"x-add": "1"}}"#, &["bodies: none"]),
        )
        .plugin(&["add.yaml", "rw.yaml"])
        .start();
    for path in ["/r?body_size=60&fill=origin-", "/r?body_size=5000&fill=origin-&chunked=700"] {
        let r = ats.get(path);
        let n = if path.contains("5000") { 5000 } else { 60 };
        assert_eq!((r.status, r.header("x-add")), (200, Some("1")), "{r:?}");
        assert_eq!(r.body_str(), fill("origin-", n).replace("origin", "filter"), "{path}");
    }
    let diags = ats.diags_log();
    let notes: Vec<&str> = diags.lines().filter(|l| l.contains("bodies: auto")).collect();
    assert_eq!(notes.len(), 1, "one NOTE, for rw only: {notes:?}");
    assert!(
        notes[0].contains("NOTE") && notes[0].contains("filter \"rw\": gets request and response bodies"),
        "{notes:?}"
    );
    assert!(notes[0].contains("`bodies: none`"), "{notes:?}");
}

#[test]
fn prepend_append_and_report_map_to_set_buffer_bytes() {
    let ats = rewrite_ats(
        r#"{"from": "a", "to": "b", "prepend": "<<", "append": ">>", "report": true}"#,
        &["bodies: response"],
    );
    let r = ats.get("/p?body_size=10&fill=a");
    assert_eq!(r.status, 200);
    let body = r.body_str();
    assert!(body.starts_with("<<bbbbbbbbbb>>[body-rewrite "), "{body}");
    // Buffered (Pause until the end): one call per chunk, the last one sees all 10 bytes.
    let (calls, eos, max_size) = report(&body).expect("report");
    assert!(calls >= 1 && eos == 1 && max_size == 10, "{body}");
}

#[test]
fn filters_with_bodies_none_get_no_transform() {
    // `none` overrides what the module exports (body-rewrite exports the body callbacks).
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter"}"#, &["bodies: none"]);
    let r = ats.get("/n?body_size=60&fill=origin-");
    assert_eq!(r.body_str(), fill("origin-", 60), "bodies: none leaves the body alone");
    assert_eq!(r.header("content-length"), Some("60"), "{r:?}");
}

#[test]
fn cache_hits_are_rewritten_and_the_cache_keeps_the_original() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter"}"#, &["bodies: response"]);
    let path = "/cached?max_age=600&body_size=100&fill=origin-";
    let original = fill("origin-", 100);
    let first = ats.get(path);
    assert_eq!(first.body_str(), original.replace("origin", "filter"));
    std::thread::sleep(Duration::from_millis(300));
    let count = ats.origin().count();
    for _ in 0..3 {
        let hit = ats.get(path);
        assert_eq!(hit.header("x-origin-count"), first.header("x-origin-count"), "a cache hit: {hit:?}");
        assert_eq!(hit.body_str(), original.replace("origin", "filter"), "cache hits are filtered too");
    }
    // The filter leaves requests with x-skip-rewrite alone: the cached object is the original.
    let raw = ats.request("GET", path, &[("x-skip-rewrite", "1")], b"");
    assert_eq!(raw.header("x-origin-count"), first.header("x-origin-count"), "a cache hit: {raw:?}");
    assert_eq!(raw.body_str(), original, "the cache holds the untransformed response");
    assert_eq!(ats.origin().count(), count, "no request reached the origin after the first");
}

#[test]
fn cache_transformed_true_caches_the_filtered_response() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter"}"#, &["bodies: response", "cache_transformed: true"]);
    let path = "/cached-t?max_age=600&body_size=30&fill=origin-";
    let filtered = fill("origin-", 30).replace("origin", "filter");
    assert_eq!(ats.get(path).body_str(), filtered);
    std::thread::sleep(Duration::from_millis(300));
    let count = ats.origin().count();
    // Unfiltered request, cache hit: what the cache holds is the filtered body.
    let hit = ats.request("GET", path, &[("x-skip-rewrite", "1")], b"");
    assert_eq!(hit.body_str(), filtered, "{hit:?}");
    assert_eq!(ats.origin().count(), count, "a cache hit");
}

#[test]
fn request_bodies_are_rewritten_before_the_origin_sees_them() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter-text", "request": true}"#, &["bodies: both"]);
    let body = fill("origin-", 3000);
    let expected = body.replace("origin", "filter-text");
    // Content-Length upload.
    let r = ats.request("POST", "/up/cl", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    // Chunked upload.
    let r =
        ats.request("POST", "/up/chunked", &[("Transfer-Encoding", "chunked")], &chunk_encode(body.as_bytes(), 1000));
    assert_eq!(r.status, 200, "{r:?}");
    let seen = ats.origin().seen();
    for path in ["/up/cl", "/up/chunked"] {
        let s = seen.iter().find(|s| s.path == path).expect("the origin saw the upload");
        assert_eq!(String::from_utf8_lossy(&s.body), expected, "{path}");
        // ATS 9.2 sends a request transform's output with its exact length.
        assert_eq!(s.header("content-length"), Some(expected.len().to_string().as_str()), "{path}: {s:?}");
    }
}

#[test]
fn chained_filters_see_request_bodies_in_order_and_response_bodies_in_reverse() {
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "a.yaml",
            yaml("a", "body-rewrite", r#"{"from": "1", "to": "2", "request": true}"#, &["bodies: both"]),
        )
        .config_file(
            "b.yaml",
            yaml("b", "body-rewrite", r#"{"from": "2", "to": "3", "request": true}"#, &["bodies: both"]),
        )
        .plugin(&["a.yaml", "b.yaml"])
        .start();
    // Request: a (1→2) then b (2→3).
    let r = ats.request("POST", "/chain/req", &[], b"111");
    assert_eq!(r.status, 200);
    let seen = ats.origin().seen();
    let s = seen.iter().find(|s| s.path == "/chain/req").expect("origin saw it");
    assert_eq!(s.body, b"333");
    // Response: b (2→3) first, then a (1→2): "1" ends as "2", "2" as "3".
    assert_eq!(ats.get("/chain/resp?body_size=4&fill=1").body_str(), "2222");
    assert_eq!(ats.get("/chain/resp?body_size=4&fill=2").body_str(), "3333");
}

#[test]
fn large_bodies_stream_or_buffer_within_their_limit() {
    const N: usize = 10 << 20;
    let path = format!("/big?body_size={N}&fill=origin-");
    let original = fill("origin-", N);

    // Streaming: many callbacks, each seeing one chunk; the body arrives complete.
    let ats =
        rewrite_ats(r#"{"from": "origin", "to": "filter", "mode": "stream", "report": true}"#, &["bodies: response"]);
    let r = ats.get(&path);
    let body = r.body_str();
    let (calls, eos, max_size) = report(&body).expect("report");
    assert!(calls > 10 && eos == 1 && max_size < N / 4, "streamed in chunks: calls={calls} max_size={max_size}");
    let payload = &body[..body.rfind("[body-rewrite ").unwrap()];
    assert_eq!(payload.len(), N, "same-length rewrite keeps the size");
    assert!(!payload.contains("filter") || payload.matches("filter").count() > N / 8, "most words rewritten");
    drop(ats);

    // Buffered within the limit: the last callback sees all 10 MiB at once.
    let ats = rewrite_ats(
        r#"{"from": "origin", "to": "filter", "report": true}"#,
        // Rewriting 10 MiB at once takes the guest longer than the default 100 ms deadline.
        &["bodies: response", "max_body_bytes: 16M", "callback_deadline_ms: 5000"],
    );
    let body = ats.get(&path).body_str().into_owned();
    let (calls, eos, max_size) = report(&body).unwrap_or_else(|| panic!("report; diags: {}", ats.diags_log()));
    assert!(calls > 1 && eos == 1 && max_size == N, "buffered: calls={calls} max_size={max_size}");
    assert!(body[..N] == original.replace("origin", "filter"), "every word rewritten");
    drop(ats);

    // Over the limit, fail_open: the body passes unfiltered, complete.
    let ats = rewrite_ats(
        r#"{"from": "origin", "to": "filter", "report": true}"#,
        &["bodies: response", "max_body_bytes: 1M"],
    );
    let r = ats.get(&path);
    assert_eq!(r.body.len(), N);
    assert!(r.body_str() == original, "unfiltered");
    assert!(ats.wait_for_diags("more than max_body_bytes (1048576)", Duration::from_secs(5)), "{}", ats.diags_log());
    drop(ats);

    // Over the limit, fail_closed: the response is aborted (never a complete body).
    let ats = rewrite_ats(
        r#"{"from": "origin", "to": "filter"}"#,
        &["bodies: response", "max_body_bytes: 1M", "failure_policy: fail_closed"],
    );
    // Either the connection is cut mid-body (an error) or the body arrives short.
    if let Ok(r) = ats.try_request("GET", &path, &[], b"") {
        assert!(r.body.len() < N, "a fail_closed over-limit body must not arrive complete");
    }
    assert_eq!(ats.get("/after?body_size=10&fill=origin").body_str(), "filterorig", "ATS keeps serving");
}

#[test]
fn empty_head_204_and_304_responses_pass() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter", "append": "!"}"#, &["bodies: response"]);
    let r = ats.get("/empty?body_size=0");
    assert_eq!((r.status, r.body.len()), (200, 0), "an empty body gets no body callback: {r:?}");
    let mut c = ats.client();
    let r = c.request("HEAD", "/head?body_size=100&fill=origin", &[], b"").expect("HEAD");
    assert_eq!((r.status, r.body.len()), (200, 0), "{r:?}");
    // The connection is still usable after the HEAD.
    let r = c.get("/after-head?body_size=6&fill=origin", &[]).expect("GET after HEAD");
    assert_eq!(r.body_str(), "filter!");
    for status in [204, 304] {
        let r = c.get(&format!("/s?status={status}"), &[]).expect("request");
        assert_eq!((r.status, r.body.len()), (status, 0), "{r:?}");
    }
    let r = c.get("/after?body_size=6&fill=origin", &[]).expect("GET after 204/304");
    assert_eq!(r.body_str(), "filter!");
}

#[test]
fn request_bodies_over_the_limit_follow_the_policy() {
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "open.yaml",
            yaml(
                "open",
                "body-rewrite",
                r#"{"from": "origin", "to": "filter", "request": true}"#,
                &["bodies: request", "max_body_bytes: 1K"],
            ),
        )
        .plugin(&["open.yaml"])
        .start();
    let body = fill("origin-", 4000);
    let r = ats.request("POST", "/big-up", &[], body.as_bytes());
    assert_eq!(r.status, 200);
    let seen = ats.origin().seen();
    assert_eq!(seen.iter().find(|s| s.path == "/big-up").expect("seen").body, body.as_bytes(), "fail_open: unfiltered");
    drop(ats);

    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "closed.yaml",
            yaml(
                "closed",
                "body-rewrite",
                r#"{"from": "origin", "to": "filter", "request": true}"#,
                &["bodies: request", "max_body_bytes: 1K", "failure_policy: fail_closed"],
            ),
        )
        .plugin(&["closed.yaml"])
        .start();
    let r = ats.request("POST", "/big-up", &[], body.as_bytes());
    assert_eq!(r.status, 413, "{r:?}");
    assert!(ats.origin().seen().iter().all(|s| s.path != "/big-up"), "the origin is not contacted");
}

/// `n` requests over `conns` keep-alive connections, each checked; returns the failures.
fn rewrite_load(ats: &Ats, conns: usize, per_conn: usize) -> Vec<String> {
    let port = ats.port();
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port).expect("connect");
                let mut bad = Vec::new();
                for i in 0..per_conn {
                    let size = 100 + (c * per_conn + i) % 900;
                    let expected = fill("origin-", size).replace("origin", "filter-text");
                    match client.get(&format!("/load/{c}/{i}?body_size={size}&fill=origin-"), &[]) {
                        Ok(r) if r.status == 200 && r.body_str() == expected => {}
                        Ok(r) => bad.push(format!("{c}/{i}: {} {:?}", r.status, r.body_str())),
                        Err(e) => {
                            bad.push(format!("{c}/{i}: {e}"));
                            client = Client::connect(port).expect("reconnect");
                        }
                    }
                }
                bad
            })
        })
        .collect();
    workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn concurrent_rewrites_are_all_correct_and_memory_stays_flat() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter-text"}"#, &["bodies: response"]);
    let bad = rewrite_load(&ats, 20, 100);
    assert!(bad.is_empty(), "{} of 2000 wrong, e.g. {:?}", bad.len(), &bad[..bad.len().min(3)]);
    let warm = vm_rss_kib(ats.pid());
    let bad = rewrite_load(&ats, 20, 1000);
    assert!(bad.is_empty(), "{} of 20000 wrong, e.g. {:?}", bad.len(), &bad[..bad.len().min(3)]);
    let end = vm_rss_kib(ats.pid());
    eprintln!("traffic_server VmRSS after 2,000 warm-up requests: {warm} KiB; after 20,000 more: {end} KiB");
    assert!(end * 100 <= warm * 105, "RSS grew more than 5%: {warm} KiB -> {end} KiB");
}

fn deny_ats(status: u16, extra: &[&str]) -> Ats {
    let conf = format!(
        r#"{{"path_prefixes": ["/deny"], "status": {status}, "body": "local {status}\n", "phase": "response"}}"#
    );
    Ats::builder()
        .net_threads(2)
        .config_file("deny.yaml", yaml("deny", "deny", &conf, extra))
        .plugin(&["deny.yaml"])
        .start()
}

#[test]
fn local_responses_from_the_response_phase_replace_status_headers_and_body() {
    for status in [200, 403, 503] {
        let ats = deny_ats(status, &["bodies: response"]);
        for round in 0..2 {
            // max_age: the second round is a cache hit of the origin's response.
            let r = ats.get("/deny/x?max_age=600&body_size=50&header=x-from-origin:1");
            assert_eq!(r.status, status, "round {round}: {r:?}");
            assert_eq!(r.body_str(), format!("local {status}\n"), "round {round}");
            assert_eq!(r.header("x-denied-by"), Some("path prefix /deny"), "{r:?}");
            assert_eq!(r.header("content-type"), Some("text/plain"), "{r:?}");
            assert_eq!(r.header("x-from-origin"), None, "no origin header survives: {r:?}");
            assert_eq!(r.header("x-origin-count"), None, "{r:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            ats.origin().seen().iter().filter(|s| s.path.starts_with("/deny")).count(),
            1,
            "round 2 was a cache hit"
        );
        // Other paths pass untouched.
        assert_eq!(ats.get("/ok?body_size=3&fill=abc").body_str(), "abc");
    }
}

#[test]
fn local_responses_from_the_response_phase_work_with_the_default_bodies() {
    // No `bodies:` key: `auto` gives deny, which exports `proxy_on_response_body` as every Rust
    // SDK module does, a response transform.
    let ats = deny_ats(403, &[]);
    let r = ats.get("/deny/z?body_size=5&fill=o");
    assert_eq!((r.status, r.body_str().as_ref()), (403, "local 403\n"), "{r:?}");
    assert_eq!(r.header("x-denied-by"), Some("path prefix /deny"), "{r:?}");
}

#[test]
fn local_responses_from_the_response_phase_need_a_response_transform() {
    // With `bodies: none` the call answers UNIMPLEMENTED; the Rust SDK traps on it and
    // fail_open lets the origin's response through.
    let ats = deny_ats(403, &["bodies: none"]);
    let r = ats.get("/deny/y?body_size=5&fill=o");
    assert_eq!((r.status, r.body_str().as_ref()), (200, "ooooo"), "{r:?}");
    assert!(
        ats.wait_for_diags("proxy_on_response_headers (trap) failed", Duration::from_secs(5)),
        "{}",
        ats.diags_log()
    );
}
