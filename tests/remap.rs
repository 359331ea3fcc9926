//! Per-route filters in a real `traffic_server` (2 net threads): `libats_wasm.so` named by
//! remap rules (`@plugin=… @pparam=…`), alone and beside the global plugin.
//!
//! Rules are told apart by host: `a.example` and `b.example` have filters of their own,
//! `c.example` has none. The stamp filter is `add-headers` adding `x-order: <name>` to the
//! request (the origin echoes what it received in its body) and to the response, so the order
//! in which filters ran is the order of the values.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{Ats, AtsBuilder, Response, example_wasm, filter_yaml};

/// `add-headers` adding `x-order: <name>` in both phases.
fn stamp_yaml(name: &str) -> String {
    filter_yaml(
        name,
        &example_wasm("add-headers"),
        &format!(r#"{{"request_headers": {{"x-order": "{name}"}}, "response_headers": {{"x-order": "{name}"}}}}"#),
    )
}

/// The three rules: `a.example` with filter `ra`, `b.example` with `rb1` then `rb2`,
/// `c.example` without filters.
fn three_rules(b: AtsBuilder) -> AtsBuilder {
    b.config_file("ra.yaml", stamp_yaml("ra"))
        .config_file("rb1.yaml", stamp_yaml("rb1"))
        .config_file("rb2.yaml", stamp_yaml("rb2"))
        .remap("map http://a.example/ http://{origin}/ @plugin={plugin_so} @pparam=ra.yaml")
        .remap("map http://b.example/ http://{origin}/ @plugin={plugin_so} @pparam=--pool-size=2 @pparam=rb1.yaml @pparam=rb2.yaml")
        .remap("map http://c.example/ http://{origin}/")
}

/// The `x-order` values the origin received (from the echoed request) and the client got.
fn orders(r: &Response) -> (Vec<String>, Vec<String>) {
    let body = r.body_str();
    let origin: Vec<String> =
        body.lines().filter_map(|l| l.trim_end().strip_prefix("x-order: ")).map(str::to_string).collect();
    let client: Vec<String> = r.headers_named("x-order").iter().map(|s| s.to_string()).collect();
    (origin, client)
}

fn get(ats: &Ats, host: &str, path: &str) -> Response {
    ats.request("GET", path, &[("Host", host)], b"")
}

#[test]
fn each_rule_gets_exactly_its_filters_and_global_filters_wrap_them() {
    let ats =
        three_rules(Ats::builder().net_threads(2)).config_file("g.yaml", stamp_yaml("g")).plugin(&["g.yaml"]).start();
    // Request phase: global, then the rule's filters in @pparam order; response phase: the
    // reverse.
    let r = get(&ats, "a.example", "/one");
    assert_eq!(r.status, 200, "{}", ats.failure_report());
    assert_eq!(orders(&r), (vec!["g".into(), "ra".into()], vec!["ra".into(), "g".into()]));
    let r = get(&ats, "b.example", "/two");
    assert_eq!(
        orders(&r),
        (vec!["g".into(), "rb1".into(), "rb2".into()], vec!["rb2".into(), "rb1".into(), "g".into()])
    );
    let r = get(&ats, "c.example", "/three");
    assert_eq!(orders(&r), (vec!["g".into()], vec!["g".into()]));

    // Under 2,000 concurrent requests spread over the three rules, each gets exactly its own.
    let wrong = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let expect = |host: &str| -> (Vec<String>, Vec<String>) {
        let rule: Vec<String> = match host {
            "a.example" => vec!["ra".into()],
            "b.example" => vec!["rb1".into(), "rb2".into()],
            _ => vec![],
        };
        let mut req = vec!["g".to_string()];
        req.extend(rule.iter().cloned());
        let mut resp: Vec<String> = rule.iter().rev().cloned().collect();
        resp.push("g".into());
        (req, resp)
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..20 {
            let (wrong, done, ats) = (wrong.clone(), done.clone(), &ats);
            s.spawn(move || {
                let mut c = ats.client();
                for i in 0..100 {
                    let host = ["a.example", "b.example", "c.example"][(t + i) % 3];
                    match c.get(&format!("/load/{t}/{i}"), &[("Host", host)]) {
                        Ok(r) if r.status == 200 && orders(&r) == expect(host) => {}
                        Ok(r) => {
                            eprintln!("{host}: status {} orders {:?}", r.status, orders(&r));
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("{host}: {e}");
                            wrong.fetch_add(1, Ordering::Relaxed);
                            c = ats.client();
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 2_000);
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "{}", ats.failure_report());
    eprintln!("2,000 requests over three rules in {:?}", started.elapsed());
    // Rule filters are labelled by scope.
    let metrics = ats.scrape_metrics();
    for (filter, scope) in [("g", "global"), ("ra", "remap:http://a.example/"), ("rb2", "remap:http://b.example/")] {
        let (f, sc) = (format!("filter=\"{filter}\""), format!("scope=\"{scope}\""));
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("ats_wasm_hook_duration_seconds_count{") && l.contains(&f) && l.contains(&sc)),
            "no callback timings of {filter} in {scope}:\n{metrics}"
        );
    }
    assert!(metrics.contains("ats_wasm_remap_instances_live 2\n"), "{metrics}");
}

#[test]
fn rules_work_without_a_plugin_config_line() {
    let ats = three_rules(Ats::builder().net_threads(2)).start();
    let r = get(&ats, "b.example", "/x");
    assert_eq!(r.status, 200, "{}", ats.failure_report());
    assert_eq!(orders(&r), (vec!["rb1".into(), "rb2".into()], vec!["rb2".into(), "rb1".into()]));
    let r = get(&ats, "c.example", "/y");
    assert_eq!(orders(&r), (vec![], vec![]));
    assert!(ats.diags_log().contains("loaded by remap rules only"), "{}", ats.diags_log());
    let _ = Duration::ZERO;
}

/// `rule(host, files)`: a remap line for `host` with the plugin and `files` as `@pparam`s.
fn rule(host: &str, params: &[&str]) -> String {
    let mut line = format!("map http://{host}/ http://{{origin}}/ @plugin={{plugin_so}}");
    for p in params {
        line.push_str(&format!(" @pparam={p}"));
    }
    line
}

#[test]
fn rule_filters_answer_locally_call_out_rewrite_bodies_rewrite_paths_and_fail_by_policy() {
    let b = Ats::builder().net_threads(2);
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let trap = |open: bool| {
        let mut y = filter_yaml(if open { "trap-open" } else { "trap-closed" }, &example_wasm("oob-trap"), "");
        y.push_str(&format!("  fail_open: {open}\n"));
        y
    };
    let ats = b
        .config_file(
            "deny.yaml",
            filter_yaml(
                "deny",
                &example_wasm("deny"),
                r#"{"path_prefixes": ["/admin"], "status": 403, "body": "denied\n"}"#,
            ),
        )
        .config_file(
            "auth.yaml",
            harness::filter_yaml_upstreams(
                "auth-call",
                &example_wasm("auth-call"),
                r#"{"upstream": "auth", "path": "/check?allow=good", "authority": "auth.local", "timeout_ms": 2000}"#,
                &[("auth", origin)],
            ),
        )
        .config_file(
            "body.yaml",
            filter_yaml("body-rewrite", &example_wasm("body-rewrite"), r#"{"from": "HTTP/1.1", "to": "HTTP/9.9"}"#),
        )
        .config_file(
            "path.yaml",
            filter_yaml("path", &example_wasm("add-headers"), r#"{"request_headers": {":path": "/rewritten"}}"#),
        )
        .config_file("open.yaml", trap(true))
        .config_file("closed.yaml", trap(false))
        .remap(&rule("deny.example", &["deny.yaml"]))
        .remap(&rule("auth.example", &["auth.yaml"]))
        .remap(&rule("body.example", &["body.yaml"]))
        .remap(&rule("path.example", &["path.yaml"]))
        .remap(&rule("open.example", &["open.yaml"]))
        .remap(&rule("closed.example", &["closed.yaml"]))
        .remap("map / http://{origin}/")
        .start();
    let report = || ats.failure_report();
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("{:>8.3?} {what}", t0.elapsed());

    // A request-phase local response from a rule filter: the origin is not contacted.
    ats.origin().clear();
    let r = ats.request("GET", "/admin/x", &[("Host", "deny.example")], b"");
    assert_eq!((r.status, r.body_str().as_ref()), (403, "denied\n"), "{r:?}\n{}", report());
    assert_eq!(get(&ats, "deny.example", "/fine").status, 200);
    let seen = ats.origin().seen();
    assert!(seen.iter().all(|s| !s.path.starts_with("/admin")), "{seen:?}");

    step("// An HTTP call from a rule fi");
    // An HTTP call from a rule filter, pausing the request at POST_REMAP.
    let r = ats.request("GET", "/page", &[("Host", "auth.example"), ("Authorization", "Bearer good")], b"");
    assert_eq!(r.status, 200, "{r:?}\n{}", report());
    let r = ats.request("GET", "/page", &[("Host", "auth.example"), ("Authorization", "Bearer bad")], b"");
    assert_eq!((r.status, r.header("x-auth")), (403, Some("status 401")), "{r:?}");

    step("// A response body rewritten");
    // A response body rewritten by a rule filter (the default `bodies: auto`).
    let r = get(&ats, "body.example", "/b");
    assert_eq!(r.status, 200, "{r:?}\n{}", report());
    assert!(r.body_str().starts_with("GET /b HTTP/9.9"), "{r:?}");

    step("// A `:path` write");
    // A `:path` write from a rule filter changes what the origin is asked for.
    ats.origin().clear();
    let r = get(&ats, "path.example", "/original");
    assert_eq!(r.status, 200, "{r:?}\n{}", report());
    assert!(r.body_str().starts_with("GET /rewritten HTTP/1.1"), "{r:?}");

    step("// A trapping rule filter");
    // A trapping rule filter: fail-open serves from the origin, fail-closed answers 503.
    let r = ats.request("GET", "/t", &[("Host", "open.example"), ("x-trap", "unreachable")], b"");
    assert_eq!(r.status, 200, "{r:?}\n{}", report());
    let r = ats.request("GET", "/t", &[("Host", "closed.example"), ("x-trap", "unreachable")], b"");
    assert_eq!(r.status, 503, "{r:?}\n{}", report());
    step(
        "let diags = ats.diags_log();
 ",
    );
    let diags = ats.diags_log();
    assert!(diags.contains("filter \"trap-closed\""), "{diags}");
    // The metrics tell the rule's filters apart.
    let metrics = ats.scrape_metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("ats_wasm_failure_outcomes_total{filter=\"trap-closed\",outcome=\"fail_closed\",scope=\"remap:http://closed.example/\"} 1")),
        "{metrics}"
    );
}

/// The bad `@pparam` lists: (host, params, what the ERROR line must say).
const BAD_RULES: [(&str, &[&str], &str); 4] = [
    ("unknown.example", &["--no-such-option=1", "ok.yaml"], "unknown argument \"--no-such-option=1\""),
    ("wide.example", &["--max-vms=5", "ok.yaml"], "--max-vms holds for the whole process"),
    ("missing.example", &["missing.yaml"], "missing.yaml"),
    ("badwasm.example", &["badwasm.yaml"], "/nonexistent/x.wasm"),
];

/// The remap.config of the reload tests: `ok.example` with `file`, `c.example` without
/// filters, `extra` lines, and a catch-all.
fn remap_config(file: &str, extra: &[String]) -> String {
    let mut lines = vec![rule("ok.example", &[file]), "map http://c.example/ http://{origin}/".to_string()];
    lines.extend(extra.iter().cloned());
    lines.push("map / http://{origin}/".into());
    lines.join("\n") + "\n"
}

/// Writes remap.config (placeholders filled in) and runs `traffic_ctl config reload`.
fn reload_remap(ats: &Ats, config: &str) {
    let text = config
        .replace("{origin}", &format!("127.0.0.1:{}", ats.origin().port()))
        .replace("{plugin_so}", &harness::plugin_so().display().to_string());
    std::fs::write(ats.config_dir().join("remap.config"), text).expect("writing remap.config");
    let (ok, out) = ats.ctl(&["config", "reload"]);
    assert!(ok, "traffic_ctl config reload: {out}");
}

fn diags_count(ats: &Ats, needle: &str) -> usize {
    ats.diags_log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_bad_rule_at_start_up_stops_ats_with_one_error_line_as_any_failing_remap_plugin_does() {
    let started = Ats::builder()
        .config_file("ok.yaml", stamp_yaml("ok"))
        .remap(&rule("ok.example", &["ok.yaml"]))
        .remap(&rule("unknown.example", &["--no-such-option=1", "ok.yaml"]))
        .try_start();
    let Err(e) = started else { panic!("ATS started with a rule whose instance failed") };
    let ours: Vec<&str> = e.lines().filter(|l| l.contains("ats_wasm: remap rule http://unknown.example/:")).collect();
    assert_eq!(ours.len(), 1, "{e}");
    assert!(ours[0].contains("ERROR") && ours[0].contains("unknown argument"), "{e}");
}

#[test]
fn a_bad_rule_on_reload_is_one_error_line_and_every_rule_keeps_serving() {
    let ats = Ats::builder()
        .net_threads(2)
        .under_manager()
        .config_file("ok.yaml", stamp_yaml("ok"))
        .config_file("badwasm.yaml", filter_yaml("badwasm", std::path::Path::new("/nonexistent/x.wasm"), ""))
        .config_file("g.yaml", stamp_yaml("g"))
        .plugin(&["g.yaml"])
        .remap(&rule("ok.example", &["ok.yaml"]))
        .remap("map http://c.example/ http://{origin}/")
        .remap("map / http://{origin}/")
        .start();
    for (i, (host, params, why)) in BAD_RULES.into_iter().enumerate() {
        let needle = format!("ats_wasm: remap rule http://{host}/:");
        reload_remap(&ats, &remap_config("ok.yaml", &[rule(host, params)]));
        assert!(ats.wait_for_diags(&needle, Duration::from_secs(30)), "no line for {host}\n{}", ats.failure_report());
        let lines: Vec<String> = ats.diags_log().lines().filter(|l| l.contains(&needle)).map(str::to_string).collect();
        assert_eq!(lines.len(), 1, "{host}: {lines:?}");
        assert!(lines[0].contains("ERROR") && lines[0].contains(why), "{host}: {lines:?}");
        // ATS rejects the whole new remap.config and keeps the table it had.
        assert!(
            harness::wait_until(Duration::from_secs(10), || diags_count(&ats, "remap.config failed to load") == i + 1),
            "{}",
            ats.diags_log()
        );
        // Both rules serve as before.
        let r = get(&ats, "ok.example", "/");
        assert_eq!((r.status, orders(&r).1), (200, vec!["ok".to_string(), "g".to_string()]), "{host}");
        assert_eq!(get(&ats, "c.example", "/").status, 200);
        // The rule that failed does not exist: ATS answers as for any unmapped host.
        eprintln!("{host} after its failed reload: {}", get(&ats, host, "/").status);
    }
    let metrics = ats.scrape_metrics();
    assert!(metrics.contains("ats_wasm_remap_instances_failed_total 4\n"), "{metrics}");
}

#[test]
fn remap_reloads_swap_a_rules_filters_under_load_and_old_chains_retire() {
    let ats = Ats::builder()
        .net_threads(2)
        .under_manager()
        .config_file("g.yaml", stamp_yaml("g"))
        .config_file("v0.yaml", stamp_yaml("v0"))
        .plugin(&["g.yaml"])
        .remap(&rule("ok.example", &["v0.yaml"]))
        .remap("map http://c.example/ http://{origin}/")
        .remap("map / http://{origin}/")
        .start();
    // A slow request in flight across the first reload: it finishes on the old chain.
    let slow = {
        let port = ats.port();
        std::thread::spawn(move || {
            let mut c = harness::Client::connect(port).expect("connect");
            c.set_timeout(Duration::from_secs(30)).expect("timeout");
            c.get("/slow?delay_ms=3000", &[("Host", "ok.example")]).expect("the slow request")
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok_count, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let rss_after_first = std::thread::scope(|s| {
        for t in 0..8 {
            let (stop, ok_count, bad, ats) = (stop.clone(), ok_count.clone(), bad.clone(), &ats);
            s.spawn(move || {
                let mut c = ats.client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let host = if (t + i) % 2 == 0 { "ok.example" } else { "c.example" };
                    let good = match c.get(&format!("/l/{t}/{i}"), &[("Host", host)]) {
                        Ok(r) => {
                            let (origin, client) = orders(&r);
                            // One chain per transaction: the same rule stamp at the origin and
                            // the client, after the global one.
                            r.status == 200
                                && origin.first().map(String::as_str) == Some("g")
                                && client.last().map(String::as_str) == Some("g")
                                && origin.len() == if host == "c.example" { 1 } else { 2 }
                                && origin.get(1) == client.first().filter(|_| client.len() == 2)
                        }
                        Err(_) => {
                            c = ats.client();
                            false
                        }
                    };
                    if good {
                        ok_count.fetch_add(1, Ordering::Relaxed)
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed)
                    };
                }
            });
        }
        let mut rss = None;
        for n in 1..=20 {
            let file = format!("v{n}.yaml");
            std::fs::write(ats.config_dir().join(&file), stamp_yaml(&format!("v{n}"))).expect("filter file");
            reload_remap(&ats, &remap_config(&file, &[]));
            let needle = format!("remap:http://ok.example/: filters [\"v{n}\"] loaded");
            assert!(ats.wait_for_diags(&needle, Duration::from_secs(30)), "reload {n}\n{}", ats.failure_report());
            // New transactions get the new filters once ATS swapped its table.
            assert!(
                harness::wait_until(Duration::from_secs(10), || orders(&get(&ats, "ok.example", "/probe")).1.first()
                    == Some(&format!("v{n}"))),
                "reload {n}: still the old filters"
            );
            if n == 1 {
                rss = ats.server_rss_kib();
            }
        }
        stop.store(true, Ordering::Relaxed);
        rss
    });
    let r = slow.join().expect("the slow request");
    assert_eq!(orders(&r), (vec!["g".into(), "v0".into()], vec!["v0".into(), "g".into()]), "{r:?}");
    let (good, bad) = (ok_count.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!("{good} responses under 20 remap reloads, {bad} wrong");
    assert!(good > 200, "{good}");
    assert_eq!(bad, 0, "{}", ats.failure_report());
    // Every old chain retired: its VMs ended, the gauge is back to the one rule.
    assert!(
        harness::wait_until(Duration::from_secs(30), || diags_count(
            &ats,
            "filters of remap:http://ok.example/ retired"
        ) == 20),
        "retired: {}\n{}",
        diags_count(&ats, "filters of remap:http://ok.example/ retired"),
        ats.diags_log()
    );
    let metrics = ats.scrape_metrics();
    assert!(metrics.contains("ats_wasm_remap_instances_live 1\n"), "{metrics}");
    let (before, after) = (rss_after_first.expect("RSS"), ats.server_rss_kib().expect("RSS"));
    eprintln!("VmRSS after the first reload {before} KiB, after 20: {after} KiB");
    assert!((after as f64) < before as f64 * 1.05, "RSS grew from {before} to {after} KiB");
}
