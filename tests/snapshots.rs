//! `transaction` isolation with VM snapshots through a real `traffic_server`: a snapshotted
//! filter and the same module with `snapshot: false` answer alike, each transaction in a fresh
//! VM, and the NOTE lines say which filter starts its VMs from a snapshot.

mod harness;

use harness::{Ats, example_wasm, filter_yaml};

#[test]
fn a_snapshotted_transaction_filter_answers_as_one_that_runs_its_initializer() {
    let yaml = |name: &str, tag: &str| {
        let config =
            format!(r#"{{"request_headers": {{"x-req-{tag}": "r"}}, "response_headers": {{"x-resp-{tag}": "s"}}}}"#);
        filter_yaml(name, &example_wasm("add-headers"), &config)
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
    assert!(diags.contains("filter \"snap\": transaction VMs start from a snapshot"), "{diags}");
    assert!(!diags.contains("filter \"plain\": transaction VMs start from a snapshot"), "{diags}");
    assert!(!diags.lines().any(|l| l.contains("ERROR") && l.contains("ats_wasm")), "{diags}");
}
