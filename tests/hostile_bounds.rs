//! Bounds on what a hostile guest can hold or block, in a real `traffic_server`, with the
//! test module `examples/hostile-bounds`: shared data past `--max-shared-data` /
//! `--max-shared-value` is refused, counted and never stored (the process does not grow past
//! the bound), and a VM initializer that loops costs its deadline (`--init-deadline-ms`, or the
//! callback deadline in `transaction` isolation) — at start-up and when VMs are made or
//! replaced on a net thread — never ~50 s, and a filter whose new VMs keep failing backs off.

mod harness;

use std::time::{Duration, Instant};

use harness::{Ats, Client, Response, example_wasm, filter_yaml};

/// The sum of the Prometheus endpoint's samples whose `name{labels` starts with `prefix`
/// (e.g. every pool thread of one filter).
fn sum(ats: &Ats, prefix: &str) -> f64 {
    let Some(port) = ats.metrics_port() else { return 0.0 };
    let Ok(r) = Client::connect_timeout(port, Duration::from_secs(5))
        .and_then(|mut c| c.get("/metrics", &[("Connection", "close")]))
    else {
        return 0.0;
    };
    r.body_str()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn hostile_yaml(name: &str, configuration: &str) -> String {
    filter_yaml(name, &example_wasm("hostile-bounds"), configuration)
}

/// A request with its own connection and a 10 s client timeout; its status, headers and how
/// long it took.
fn timed_get(ats: &Ats, path: &str, headers: &[(&str, &str)]) -> (Response, Duration) {
    let start = Instant::now();
    let mut c = Client::connect_timeout(ats.port(), Duration::from_secs(10)).expect("connect");
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    let r = c.get(path, &h).unwrap_or_else(|e| panic!("{path}: {e} after {:?}", start.elapsed()));
    (r, start.elapsed())
}

#[test]
fn shared_data_past_its_bounds_is_refused_stores_nothing_and_the_process_stays_within_the_bound() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("hb.yaml", hostile_yaml("hostile-bounds", "{}"))
        .plugin(&["--max-shared-data=32M", "--max-shared-value=16M", "hb.yaml"])
        .start();
    let set = |key: &str, mib: &str| {
        let r = ats.request("GET", "/set", &[("x-shared-key", key), ("x-shared-mib", mib)], b"");
        assert_eq!(r.status, 200, "{r:?}");
        r.header("x-shared-status").unwrap_or("none").to_string()
    };
    // Warm-up: the guest's 10 MiB buffer and one stored value (10 of the 32 MiB).
    assert_eq!(set("warm", "10"), "0");
    assert_eq!(set("warm", "10"), "0", "replacing a value of the same size needs no room");
    let before = ats.server_rss_kib().expect("VmRSS");
    // 10 MiB values under new keys: two more fit (30 MiB and the keys' bookkeeping), the
    // rest are refused with INTERNAL_FAILURE (10) and stored nowhere.
    let statuses: Vec<String> = (0..20).map(|i| set(&format!("key-{i}"), "10")).collect();
    let after = ats.server_rss_kib().expect("VmRSS");
    let mut expected = vec!["0".to_string(); 2];
    expected.resize(20, "10".to_string());
    assert_eq!(statuses, expected);
    eprintln!("traffic_server VmRSS before 20 writes of 10 MiB under new keys: {before} KiB; after: {after} KiB");
    // Without the bound the process grew by the 200 MiB written; now by what was stored
    // (20 MiB) plus noise, never past the 32 MiB bound.
    assert!(after.saturating_sub(before) < 32 << 10, "RSS grew {before} KiB -> {after} KiB");
    // A value over --max-shared-value: BAD_ARGUMENT (2).
    assert_eq!(set("too-big", "17"), "2");

    let refused = |reason: &str| {
        sum(
            &ats,
            &format!(
                "ats_wasm_shared_data_refused_total{{filter=\"hostile-bounds\",reason=\"{reason}\",scope=\"global\"}}"
            ),
        )
    };
    assert_eq!((refused("total_size"), refused("value_size"), refused("queue_items")), (18.0, 1.0, 0.0));
    let diags = ats.diags_log();
    let lines = diags.lines().filter(|l| l.contains("filter \"hostile-bounds\": refused a shared data")).count();
    assert_eq!(lines, 5, "one line per refusal, at most 5 a minute:\n{diags}");
    assert!(
        diags.contains("its vm_id would hold more than --max-shared-data (INTERNAL_FAILURE, nothing stored"),
        "{diags}"
    );
}

#[test]
fn an_initializer_that_always_loops_delays_start_up_by_its_deadline_per_filter() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("loop-a.yaml", hostile_yaml("loop-a", r#"{"loop_after_starts": 0}"#))
        .config_file("loop-b.yaml", hostile_yaml("loop-b", r#"{"loop_after_starts": 0}"#))
        .config_file("good.yaml", filter_yaml("good", &example_wasm("add-headers"), ""))
        .plugin(&["--init-deadline-ms=500", "loop-a.yaml", "loop-b.yaml", "good.yaml"])
        .start();
    let started = ats.started_in().expect("start-up time");
    eprintln!("ATS with two filters looping in proxy_on_configure (500 ms deadline) served after {started:?}");
    // Two deadlines plus compilation and ATS's own start (~0.2 s); it was ~50 s per filter.
    assert!(started < Duration::from_secs(4), "started after {started:?}");
    let diags = ats.diags_log();
    for name in ["loop-a", "loop-b"] {
        assert!(
            diags.lines().any(|l| l.contains(&format!("{name}.yaml: module"))
                && l.contains("failed to start: proxy_on_configure (deadline exceeded)")
                && l.contains("this filter is skipped")),
            "{diags}"
        );
    }
    let r = ats.get("/after");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-wasm-response"), Some("add-headers"), "the good filter serves: {r:?}");
}

/// Requests every 100 ms for `total` after a trap poisoned the filter's VM: every one is
/// answered (200, with or without the filter: it fails open) in under a second. Returns the
/// slowest.
fn requests_stay_fast_while_replacements_loop(ats: &Ats, total: Duration) -> (usize, Duration) {
    let (r, _) = timed_get(ats, "/trap", &[("x-trap", "1")]);
    assert_eq!(r.status, 200, "fail_open: {r:?}");
    let start = Instant::now();
    let (mut n, mut slowest) = (0, Duration::ZERO);
    while start.elapsed() < total {
        let (r, took) = timed_get(ats, &format!("/after-trap/{n}"), &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(took < Duration::from_secs(1), "request {n} took {took:?}");
        slowest = slowest.max(took);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    (n, slowest)
}

#[test]
fn a_replacement_vm_that_loops_in_configure_never_holds_a_request_for_a_second() {
    // Start 1 is the start-up probe, start 2 the thread's VM; every later VM (the
    // replacement of the one the trap poisons) loops in proxy_on_configure.
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("late-loop.yaml", hostile_yaml("late-loop", r#"{"loop_after_starts": 2}"#))
        .plugin(&["--init-deadline-ms=300", "late-loop.yaml"])
        .start();
    let (r, _) = timed_get(&ats, "/first", &[]);
    assert_eq!(r.header("x-hostile-bounds"), Some("2"), "the thread's VM configured: {r:?}");
    let (n, slowest) = requests_stay_fast_while_replacements_loop(&ats, Duration::from_secs(5));
    eprintln!("shared isolation: {n} requests while replacement VMs looped, slowest {slowest:?}");
    // Each failed replacement cost 300 ms and is retried after ten times that: a handful of
    // attempts in 5 s, not one per request.
    let failures = sum(&ats, "ats_wasm_pool_init_failures_total{filter=\"late-loop\"");
    assert!((1.0..=4.0).contains(&failures), "{failures} initializer failures for {n} requests");
    let diags = ats.diags_log();
    assert!(
        diags.lines().any(|l| l.contains("filter \"late-loop\": creating a VM failed:")
            && l.contains("proxy_on_configure (deadline exceeded)")),
        "{diags}"
    );
}

#[test]
fn fresh_transaction_vms_that_loop_in_configure_cost_the_callback_deadline() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("late-loop.yaml", hostile_yaml("late-loop", r#"{"loop_after_starts": 2}"#))
        .plugin(&["--isolation=transaction", "--callback-deadline-ms=100", "late-loop.yaml"])
        .start();
    let (n, slowest) = requests_stay_fast_while_replacements_loop(&ats, Duration::from_secs(4));
    eprintln!("transaction isolation: {n} requests while fresh VMs looped, slowest {slowest:?}");
    let failures = sum(&ats, "ats_wasm_pool_init_failures_total{filter=\"late-loop\"");
    assert!((1.0..=6.0).contains(&failures), "{failures} initializer failures for {n} requests");
}
