//! The patterns the Proxy-Wasm SDKs' own examples rely on, each a small module of ours
//! (`examples/replace-body`, `config-header`, `call-gate`, `background`, `local-echo`), through
//! a real `traffic_server` with 2 net threads, from upstream-format YAML files with no ats-wasm
//! key except `upstreams:`.

mod harness;

use std::time::{Duration, Instant};

use harness::{Ats, example_wasm, filter_yaml};

/// One filter from an upstream-format YAML (`filter_yaml` writes no ats-wasm key).
fn one(name: &str, module: &str, configuration: &str) -> Ats {
    Ats::builder()
        .config_file("f.yaml", filter_yaml(name, &example_wasm(module), configuration))
        .plugin(&["f.yaml"])
        .start()
}

#[test]
fn a_replaces_the_whole_body_at_end_of_stream_with_the_default_bodies() {
    let ats = one("replace", "replace-body", "replaced after ");
    for path in [
        "/a?body_size=3000",
        "/b?body_size=70000&chunked=4096",
        "/c?body_size=900&max_age=600",
        "/c?body_size=900&max_age=600",
    ] {
        let r = ats.get(path);
        let n: usize =
            path.split("body_size=").nth(1).and_then(|s| s.split('&').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.body_str(), format!("replaced after {n}\n"), "{path}: {r:?}");
        assert_eq!(r.header("content-length"), None, "{path}: {r:?}");
    }
}

#[test]
fn b_adds_the_plugin_configuration_to_origin_responses_and_cache_hits() {
    let conf = r#"{"any": "string", "n": 1}"#;
    let ats = one("conf", "config-header", conf);
    for round in 0..2 {
        let r = ats.get("/b?max_age=600&body_size=4");
        assert_eq!((r.status, r.header("x-plugin-configuration")), (200, Some(conf)), "round {round}: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ats.origin().seen().iter().filter(|s| s.path.starts_with("/b")).count(), 1, "round 2 was a cache hit");
}

#[test]
fn c_grants_or_denies_from_a_named_upstreams_response_body() {
    // The origin doubles as the gate: its body is what the call's query asks for.
    let b = Ats::builder();
    let port = b.origin_port();
    let yaml = filter_yaml("gate", &example_wasm("call-gate"), "")
        .replace("  vm_config:", &format!("  upstreams:\n    gate: \"127.0.0.1:{port}\"\n  vm_config:"));
    let ats = b.config_file("gate.yaml", yaml).plugin(&["gate.yaml"]).start();
    let r = ats.get("/ok?body_size=5&fill=allow");
    assert_eq!((r.status, r.body_str().as_ref()), (200, "allow"), "{r:?}");
    let r = ats.get("/no?body_size=4&fill=deny");
    assert_eq!((r.status, r.body_str().as_ref()), (403, "gate: denied\n"), "{r:?}");
    let seen = ats.origin().seen();
    let call = seen.iter().find(|s| s.path == "/gate/ok?body_size=5&fill=allow").expect("the call reached the gate");
    assert_eq!(call.header("host"), Some("gate.example.com"), "{call:?}");
    assert_eq!(call.header("x-gate"), None, "the call did not pass through the filter: {call:?}");
    let granted = seen.iter().find(|s| s.path == "/ok?body_size=5&fill=allow").expect("the granted request");
    assert_eq!(granted.header("x-gate"), Some("allowed"), "{granted:?}");
    assert!(!seen.iter().any(|s| s.path.starts_with("/gate/gate") || s.path.starts_with("/no")), "{seen:?}");
}

/// How many `background: tick` lines the console has.
fn ticks(ats: &Ats) -> usize {
    ats.console().lines().filter(|l| l.contains("[background] background: tick")).count()
}

/// The net threads (`[ET_NET n]` in the console) that logged `background: tick 1`.
fn ticking_threads(ats: &Ats) -> std::collections::BTreeSet<String> {
    ats.console()
        .lines()
        .filter(|l| l.contains("[background] background: tick 1"))
        .filter_map(|l| l.split("[ET_NET ").nth(1).and_then(|t| t.split(']').next()).map(str::to_string))
        .collect()
}

#[test]
fn d_ticks_start_on_every_net_thread_with_no_traffic() {
    // No request but the harness' readiness probe, which reaches one of the 3 net threads: the
    // other two tick only if ticks start when ATS's threads are up.
    let ats = Ats::builder()
        .net_threads(3)
        .config_file("f.yaml", filter_yaml("background", &example_wasm("background"), ""))
        .plugin(&["f.yaml"])
        .start();
    let deadline = Instant::now() + Duration::from_secs(6);
    while ticking_threads(&ats).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ticking_threads(&ats).len(),
        3,
        "net threads that ticked: {:?}\n{}",
        ticking_threads(&ats),
        ats.console()
    );
}

#[test]
fn d_a_background_root_context_keeps_ticking_when_requests_make_it_trap() {
    let ats = one("background", "background", "");
    // Requests reach the module (its stream contexts trap: it names no context type) and go
    // on without it (fail_open).
    for i in 0..4 {
        let r = ats.get(&format!("/d{i}?body_size=2"));
        assert_eq!((r.status, r.body.len()), (200, 2), "{r:?}");
    }
    assert!(ats.wait_for_diags("filter \"background\"", Duration::from_secs(5)), "{}", ats.diags_log());
    let before = ticks(&ats);
    let deadline = Instant::now() + Duration::from_secs(6);
    while ticks(&ats) < before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ticks(&ats) >= before + 3, "ticks stopped after the traps: {before} -> {}", ticks(&ats));
    assert_eq!(ats.get("/after?body_size=1").status, 200);
}

#[test]
fn e_answers_one_path_locally_and_logs_every_header_and_on_log() {
    let ats = one("echo", "local-echo", "/hello");
    let r = ats.get("/hello");
    assert_eq!(
        (r.status, r.body_str().as_ref(), r.header("x-local-echo")),
        (200, "local-echo: hello\n", Some("yes")),
        "{r:?}"
    );
    let r = ats.get("/other?body_size=3");
    assert_eq!((r.status, r.body.len(), r.header("x-local-echo")), (200, 3, None), "{r:?}");
    assert!(!ats.origin().seen().iter().any(|s| s.path == "/hello"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let needles = [
        "request header :path: /hello",
        "request header :method: GET",
        "request header :authority:",
        "request header :scheme: http",
        "response header :status: 200",
        "request header :path: /other?body_size=3",
        "response header Content-Type: text/plain",
        "response header Content-Length: 18",
        ": on_log",
    ];
    loop {
        let console = ats.console();
        let missing: Vec<&str> = needles.iter().copied().filter(|n| !console.contains(n)).collect();
        if missing.is_empty() {
            // The local reply's headers as the client gets them, not ATS's error page's.
            assert!(!console.contains("response header Content-Type: text/html"), "{console}");
            // One on_log line per request (the harness' readiness probes included).
            let count = |suffix: &str| {
                console.lines().filter(|l| l.contains("[echo] local-echo #") && l.contains(suffix)).count()
            };
            // (The last request's on_log comes at its TXN_CLOSE, which may follow its response.)
            let (logs, requests) = (count(": on_log"), count(": request header :path: "));
            if logs == requests {
                break;
            }
            assert!(Instant::now() < deadline, "{logs} on_log lines for {requests} requests:\n{console}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in:\n{console}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
