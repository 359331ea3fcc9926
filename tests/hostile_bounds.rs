//! Bounds on what a hostile guest can hold, in a real `traffic_server`, with the test module
//! `examples/hostile-bounds`: shared data past `--max-shared-data` / `--max-shared-value` is
//! refused, counted and never stored (the process does not grow past the bound).

mod harness;

use std::time::Duration;

use harness::{Ats, Client, example_wasm, filter_yaml};

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

/// `traffic_server`'s resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn hostile_yaml(name: &str, configuration: &str) -> String {
    filter_yaml(name, &example_wasm("hostile-bounds"), configuration)
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
    let before = vm_rss_kib(ats.pid());
    // 10 MiB values under new keys: two more fit (30 MiB and the keys' bookkeeping), the
    // rest are refused with INTERNAL_FAILURE (10) and stored nowhere.
    let statuses: Vec<String> = (0..20).map(|i| set(&format!("key-{i}"), "10")).collect();
    let after = vm_rss_kib(ats.pid());
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
        sum(&ats, &format!("ats_wasm_shared_data_refused_total{{filter=\"hostile-bounds\",reason=\"{reason}\"}}"))
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
