//! The HTTP lifecycle through a real `traffic_server` with 2 net threads: filter chains run in
//! order (request) and in reverse (response), and response callbacks see cache hits too;
//! `transaction` isolation answers alike from a VM snapshot and from a VM that runs its initializer.

mod harness;

use std::path::Path;

use harness::{Ats, example_wasm};

fn add_headers_yaml(name: &str, configuration: &str, wasm: &Path) -> String {
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

/// Two add-headers filters that each append their own name to `x-chain`.
fn chained_ats() -> Ats {
    let wasm = example_wasm("add-headers");
    let conf =
        |v: &str| format!(r#"{{"request_headers": {{"x-chain": "{v}"}}, "response_headers": {{"x-chain": "{v}"}}}}"#);
    Ats::builder()
        .net_threads(2)
        .config_file("a.yaml", add_headers_yaml("a", &conf("a"), &wasm))
        .config_file("b.yaml", add_headers_yaml("b", &conf("b"), &wasm))
        .plugin(&["a.yaml", "b.yaml"])
        .start()
}

#[test]
fn request_filters_run_in_chain_order_and_response_filters_in_reverse() {
    let ats = chained_ats();
    for i in 0..20 {
        let path = format!("/chain/{i}");
        let r = ats.get(&path);
        assert_eq!(r.status, 200);
        // Response phase: b runs first, then a.
        assert_eq!(r.headers_named("x-chain"), vec!["b", "a"], "{r:?}");
        let seen = ats.origin().seen();
        let req = seen.iter().find(|s| s.path == path).expect("origin saw the request");
        // Request phase: a runs first, then b.
        assert_eq!(req.headers_named("x-chain"), vec!["a", "b"], "{req:?}");
    }
}

#[test]
fn cache_hits_run_response_callbacks_too() {
    let wasm = example_wasm("add-headers");
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("f.yaml", add_headers_yaml("f", r#"{"response_headers": {"x-filtered": "yes"}}"#, &wasm))
        .plugin(&["f.yaml"])
        .start();
    let first = ats.get("/cacheable?max_age=600");
    assert_eq!(first.header("x-filtered"), Some("yes"));
    let count = ats.origin().count();
    // Let the cache write finish, then fetch again: served from cache, still filtered.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for _ in 0..5 {
        let hit = ats.get("/cacheable?max_age=600");
        assert_eq!(hit.status, 200);
        assert_eq!(hit.header("x-filtered"), Some("yes"), "the filter's header on a cache hit: {hit:?}");
        assert_eq!(hit.header("x-origin-count"), first.header("x-origin-count"), "served from cache");
    }
    assert_eq!(ats.origin().count(), count, "cache hits must not reach the origin");
    // The filter's response header is added per response, not stored in the cache: exactly one.
    assert_eq!(ats.get("/cacheable?max_age=600").headers_named("x-filtered").len(), 1);
}

#[test]
fn failure_policy_key_and_per_filter_deadline_override_the_arguments() {
    let wasm = example_wasm("oob-trap");
    let yaml = format!(
        "config:\n  name: \"looper\"\n  failure_policy: fail_closed\n  callback_deadline_ms: 300\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    );
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("looper.yaml", yaml)
        // The global deadline is long; the filter's own 300 ms must win.
        .plugin(&["--callback-deadline-ms=20000", "looper.yaml"])
        .start();
    let started = std::time::Instant::now();
    let r = ats.request("GET", "/loop", &[("x-trap", "loop")], b"");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "failure_policy: fail_closed answers 503: {r:?}");
    assert!(took < std::time::Duration::from_millis(600), "stopped within 2x the 300 ms deadline, took {took:?}");
    assert!(ats.get("/after").header("x-oob-trap").is_some(), "later transactions run the filter again");
}

/// `n` requests over `conns` keep-alive connections; returns the responses that lack
/// `header: value`.
fn load(ats: &Ats, conns: usize, per_conn: usize, header: &'static str, value: &'static str) -> Vec<String> {
    let port = ats.port();
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = harness::Client::connect(port).expect("connect");
                let mut bad = Vec::new();
                for i in 0..per_conn {
                    let r = client.get(&format!("/load/{c}/{i}"), &[]).expect("request");
                    if r.status != 200 || r.header(header) != Some(value) {
                        bad.push(format!("{c}/{i}: {} {:?}", r.status, r.headers));
                    }
                }
                bad
            })
        })
        .collect();
    workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
}

#[test]
fn transaction_isolation_serves_concurrent_load_and_survives_traps() {
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "f.yaml",
            add_headers_yaml(
                "f",
                r#"{"request_headers": {"x-req": "1"}, "response_headers": {"x-resp": "2"}}"#,
                &example_wasm("add-headers"),
            ),
        )
        .config_file(
            "trap.yaml",
            format!(
                "config:\n  name: \"trap\"\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
                example_wasm("oob-trap").display()
            ),
        )
        .plugin(&["--isolation=transaction", "--pool-size=2", "f.yaml", "trap.yaml"])
        .start();
    let bad = load(&ats, 20, 50, "x-resp", "2");
    assert!(bad.is_empty(), "{} bad responses, e.g. {:?}", bad.len(), &bad[..bad.len().min(3)]);
    let seen = ats.origin().seen();
    let loads: Vec<_> = seen.iter().filter(|s| s.path.starts_with("/load/")).collect();
    assert_eq!(loads.len(), 1000);
    assert!(loads.iter().all(|s| s.header("x-req") == Some("1")), "every request carries the filter's header");

    // A trap in one transaction's VM: that transaction goes on without the trapping filter
    // (fail_open); the next ones get fresh VMs.
    let r = ats.request("GET", "/trap", &[("x-trap", "oob")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-oob-trap"), None);
    assert_eq!(r.header("x-resp"), Some("2"), "the other filter still ran");
    for _ in 0..4 {
        assert_eq!(ats.get("/after").header("x-oob-trap"), Some("alive"));
    }
    assert!(ats.is_running());
}

fn trap_yaml(extra: &str) -> String {
    format!(
        "config:\n  name: \"trap\"\n{extra}  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("oob-trap").display()
    )
}

#[test]
fn response_phase_failures_cost_one_transaction_under_both_policies_and_isolations() {
    for isolation in ["shared", "transaction"] {
        for (policy, extra) in [("fail_open", ""), ("fail_closed", "  failure_policy: fail_closed\n")] {
            let ats = Ats::builder()
                .net_threads(2)
                .config_file("trap.yaml", trap_yaml(extra))
                .plugin(&[
                    &format!("--isolation={isolation}"),
                    "--callback-deadline-ms=200",
                    "--max-memory=16M",
                    "trap.yaml",
                ])
                .start();
            for kind in ["oob", "unreachable", "loop", "alloc"] {
                let what = format!("{isolation}/{policy}/{kind}");
                let started = std::time::Instant::now();
                let r = ats.try_request("GET", &format!("/rt/{kind}"), &[("x-trap-response", kind)], b"");
                let took = started.elapsed();
                match policy {
                    "fail_open" => {
                        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(r.status, 200, "{what}: the response goes on without the filter: {r:?}");
                        assert_eq!(r.header("x-oob-trap"), None, "{what}");
                    }
                    _ => {
                        // No byte of the response left yet: the same 503 as in the request phase.
                        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(r.status, 503, "{what}: fail_closed answers 503: {r:?}");
                        assert!(r.body_str().contains("filter \"trap\" failed"), "{what}: {r:?}");
                    }
                }
                if kind == "loop" {
                    assert!(
                        took < std::time::Duration::from_millis(2000),
                        "{what}: the loop is stopped, took {took:?}"
                    );
                }
                let after = ats.get("/after");
                assert_eq!(after.status, 200, "{what}: later transactions are unaffected");
                assert_eq!(after.header("x-oob-trap"), Some("alive"), "{what}: {after:?}");
            }
            assert!(ats.is_running(), "{isolation}/{policy}: ATS survives");
        }
    }
}

#[test]
fn max_vms_caps_concurrent_transaction_vms_and_the_excess_fails_open() {
    // Two VMs in all: with `transaction` isolation every transaction holds one until it closes,
    // so of 8 concurrent slow requests at most 2 can have the filter; the others go through
    // without it (fail_open, the default) and ATS keeps serving.
    let conf = r#"{"request_headers": {"x-filtered": "yes"}, "response_headers": {"x-filtered": "yes"}}"#;
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("a.yaml", add_headers_yaml("capped", conf, &example_wasm("add-headers")))
        .plugin(&["--isolation=transaction", "--max-vms=2", "a.yaml"])
        .start();
    let port = ats.port();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = harness::Client::connect(port).expect("connect");
                c.get(&format!("/slow/{i}?delay_ms=700"), &[]).expect("request")
            })
        })
        .collect();
    let responses: Vec<_> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    assert!(responses.iter().all(|r| r.status == 200), "{responses:?}");
    let filtered = responses.iter().filter(|r| r.header("x-filtered") == Some("yes")).count();
    assert!(filtered <= 2, "at most 2 VMs exist, {filtered} transactions had one");
    assert!(filtered < 8, "the cap must have refused some transactions");
    assert!(
        ats.wait_for_diags("capped", std::time::Duration::from_secs(5)),
        "a refused VM is reported for the filter:\n{}",
        ats.diags_log()
    );
    // Once the slow transactions closed, VMs are available again.
    let later = (0..20).map(|i| ats.get(&format!("/after/{i}"))).filter(|r| r.header("x-filtered").is_some()).count();
    assert!(later > 0, "later transactions get VMs again");
}

#[test]
fn a_snapshotted_transaction_filter_answers_as_one_that_runs_its_initializer() {
    let yaml = |name: &str, tag: &str| {
        let config =
            format!(r#"{{"request_headers": {{"x-req-{tag}": "r"}}, "response_headers": {{"x-resp-{tag}": "s"}}}}"#);
        harness::filter_yaml(name, &example_wasm("add-headers"), &config)
    };
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("snap.yaml", yaml("snap", "snap"))
        .config_file("plain.yaml", yaml("plain", "plain").replacen("config:\n", "config:\n  snapshot: false\n", 1))
        .plugin(&["--isolation=transaction", "snap.yaml", "plain.yaml"])
        .start();
    ats.origin().clear();
    for i in 0..5 {
        let r = ats.get(&format!("/snap/{i}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!((r.header("x-resp-snap"), r.header("x-resp-plain")), (Some("s"), Some("s")), "{r:?}");
    }
    let seen = ats.origin().seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        let has = |k: &str| s.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(k) && v == "r");
        assert!(has("x-req-snap") && has("x-req-plain"), "{:?}", s.headers);
    }
    let diags = ats.diags_log();
    // Five transactions on one net thread: all but the first get a recycled VM.
    assert!(
        diags.contains("filter \"snap\": transaction VMs start from a snapshot of an initialized VM and are recycled"),
        "{diags}"
    );
    assert!(!diags.contains("filter \"plain\": transaction VMs start from a snapshot"), "{diags}");
    assert!(!diags.lines().any(|l| l.contains("ERROR") && l.contains("ats_wasm")), "{diags}");
}
