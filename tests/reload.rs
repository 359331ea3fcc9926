//! Reloads in a real `traffic_server` under `traffic_manager` (2 net threads), triggered by
//! `traffic_ctl plugin msg ats_wasm reload` and `traffic_ctl config reload`: under load no
//! transaction fails or mixes generations, a paused transaction finishes on its own
//! generation, a bad reload changes nothing, and retired generations leave nothing running.
//!
//! The stamp filter is `add-headers` configured to add `x-gen: <value>` to the request (the
//! origin echoes what it received in the body) and to the response.

mod harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Ats, Client, example_wasm, filter_yaml};

/// `add-headers` stamping `x-gen: <value>` in both phases.
fn stamp_yaml(value: &str) -> String {
    filter_yaml(
        "stamp",
        &example_wasm("add-headers"),
        &format!(r#"{{"request_headers": {{"x-gen": "{value}"}}, "response_headers": {{"x-gen": "{value}"}}}}"#),
    )
}

fn write_config(ats: &Ats, name: &str, contents: &str) {
    std::fs::write(ats.config_dir().join(name), contents).expect("writing a filter file");
}

/// Asks for a reload one of the two ways and waits for generation `expect` to serve (the
/// reload's NOTE line).
fn reload(ats: &Ats, via_config_reload: bool, expect: u64) {
    let args: &[&str] =
        if via_config_reload { &["config", "reload"] } else { &["plugin", "msg", "ats_wasm", "reload"] };
    let (ok, out) = ats.ctl(args);
    assert!(ok, "traffic_ctl {args:?}: {out}");
    let needle = format!("reload: generation {expect} (");
    assert!(
        ats.wait_for_diags(&needle, Duration::from_secs(30)),
        "no \"{needle}\" after traffic_ctl {args:?}\n{}",
        ats.failure_report()
    );
}

/// How many lines of diags.log contain `needle`.
fn diags_lines(ats: &Ats, needle: &str) -> usize {
    ats.diags_log().lines().filter(|l| l.contains(needle)).count()
}

/// The `x-gen` the response carries, after checking the transaction saw one value only: the
/// origin (echoing its request in the body) got exactly one `x-gen`, the client exactly one,
/// and they agree.
fn one_generation(r: &harness::Response) -> Result<String, String> {
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    let sent = r.headers_named("x-gen");
    let body = r.body_str();
    let seen: Vec<&str> = body.lines().filter_map(|l| l.trim_end().strip_prefix("x-gen: ")).collect();
    match (sent.as_slice(), seen.as_slice()) {
        ([a], [b]) if a == b => Ok(a.to_string()),
        _ => Err(format!("mixed or missing: response {sent:?}, origin saw {seen:?}")),
    }
}

/// `/metrics` of the plugin's endpoint, as `name{labels}` → value.
fn metrics(ats: &Ats) -> HashMap<String, f64> {
    let port = ats.metrics_port().expect("the metrics endpoint");
    let r = Client::connect(port).and_then(|mut c| c.get("/metrics", &[("Connection", "close")])).expect("scrape");
    r.body_str()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Keep-alive clients hammering ATS until stopped; every response is checked.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    wrong: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ats: &Ats, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let port = ats.port();
        let threads = (0..clients)
            .map(|t| {
                let (stop, done, wrong) = (stop.clone(), done.clone(), wrong.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(port).expect("connecting");
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let r = client.get(&format!("/load/{t}/{i}"), &[]);
                        let verdict = match &r {
                            Ok(r) => one_generation(r).map(|_| ()),
                            Err(e) => Err(format!("I/O error: {e}")),
                        };
                        match verdict {
                            Ok(()) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => wrong.lock().unwrap().push(format!("/load/{t}/{i}: {e}")),
                        }
                        if r.as_ref().map_or(true, |r| r.header("connection") == Some("close")) {
                            client = Client::connect(port).expect("reconnecting");
                        }
                    }
                })
            })
            .collect();
        Load { stop, done, wrong, threads }
    }

    /// Stops the clients; returns (responses checked, wrong ones).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread");
        }
        (self.done.load(Ordering::Relaxed), self.wrong.lock().unwrap().clone())
    }
}

fn stamped_ats(extra: &[(&str, String)], args: &[&str]) -> Ats {
    let mut b = Ats::builder().net_threads(2).under_manager().config_file("stamp.yaml", stamp_yaml("A"));
    for (name, contents) in extra {
        b = b.config_file(name, contents);
    }
    b.plugin(args).start()
}

#[test]
fn reloads_under_load_swap_the_configuration_without_a_failed_or_mixed_transaction() {
    let ats = stamped_ats(&[], &["stamp.yaml"]);
    assert_eq!(one_generation(&ats.get("/first")), Ok("A".into()));
    let load = Load::start(&ats, 20);
    let started = Instant::now();
    for k in 1..=10u64 {
        std::thread::sleep(Duration::from_millis(2_500));
        let value = if k % 2 == 1 { "B" } else { "A" };
        write_config(&ats, "stamp.yaml", &stamp_yaml(value));
        reload(&ats, k % 2 == 0, k + 1);
        // Every transaction that starts after the reload completed sees the new value.
        assert_eq!(one_generation(&ats.get(&format!("/after/{k}"))), Ok(value.into()), "after reload {k}");
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(started.elapsed()));
    let (done, wrong) = load.finish();
    eprintln!("{done} responses checked in {:?} across 10 reloads", started.elapsed());
    assert!(wrong.is_empty(), "{} wrong responses, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert!(done > 1_000, "only {done} responses");
    let m = metrics(&ats);
    assert_eq!(m.get("ats_wasm_reloads_total{result=\"ok\"}"), Some(&10.0), "{m:?}");
    assert_eq!(m.get("ats_wasm_reloads_total{result=\"failed\"}"), Some(&0.0));
    assert_eq!(m.get("ats_wasm_generation"), Some(&11.0));
    // The filter's counters went on across the reloads.
    let requests = m
        .get("ats_wasm_hook_duration_seconds_count{filter=\"stamp\",hook=\"request_headers\",scope=\"global\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(requests as usize >= done, "request callbacks counted {requests}, responses {done}");
}

#[test]
fn a_transaction_paused_across_a_reload_finishes_on_its_own_generation() {
    // auth-call pauses every request on the harness origin's /check, answered after 2 s; the
    // stamp filter runs after it in the chain.
    let b = Ats::builder().net_threads(2).under_manager();
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let auth = format!(
        "config:\n  name: \"auth-call\"\n  root_id: \"auth-call\"\n  configuration: '{{\"upstream\": \"auth\", \"path\": \"/check?allow=good&delay_ms=2000\", \"authority\": \"auth.local\", \"timeout_ms\": 5000}}'\n  upstreams:\n    auth: \"{origin}\"\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("auth-call").display()
    );
    let ats = b
        .config_file("auth.yaml", auth)
        .config_file("stamp.yaml", stamp_yaml("A"))
        .plugin(&["auth.yaml", "stamp.yaml"])
        .start();
    let port = ats.port();
    let old = std::thread::spawn(move || {
        Client::connect(port).and_then(|mut c| c.get("/paused", &[("Authorization", "Bearer good")]))
    });
    std::thread::sleep(Duration::from_millis(500));
    write_config(&ats, "stamp.yaml", &stamp_yaml("B"));
    reload(&ats, false, 2);
    let new = ats.request("GET", "/new", &[("Authorization", "Bearer good")], b"");
    let old = old.join().unwrap().expect("the paused request");
    assert_eq!(one_generation(&old), Ok("A".into()), "paused before the reload: {old:?}");
    assert_eq!(one_generation(&new), Ok("B".into()), "started after the reload: {new:?}");
    // Generation 1 retires once the paused transaction is done.
    assert!(ats.wait_for_diags("generation 1 retired", Duration::from_secs(10)), "{}", ats.diags_log());
}

#[test]
fn a_bad_reload_is_one_error_line_and_changes_nothing() {
    let ats = stamped_ats(&[], &["stamp.yaml"]);
    let bad = [
        ("config: [broken".to_string(), "stamp.yaml"),
        (filter_yaml("stamp", std::path::Path::new("/nonexistent/missing.wasm"), "{}"), "missing.wasm"),
        // add-headers refuses invalid JSON: proxy_on_configure answers false.
        (filter_yaml("stamp", &example_wasm("add-headers"), "{not json"), "proxy_on_configure returned false"),
    ];
    for (i, (contents, names)) in bad.iter().enumerate() {
        write_config(&ats, "stamp.yaml", contents);
        let (ok, out) = ats.ctl(&["plugin", "msg", "ats_wasm", "reload"]);
        assert!(ok, "{out}");
        assert!(
            harness::wait_until(Duration::from_secs(20), || diags_lines(&ats, "reload failed") == i + 1),
            "reload {i}: {}",
            ats.diags_log()
        );
        let line = ats.diags_log().lines().rfind(|l| l.contains("reload failed")).unwrap().to_string();
        assert!(line.contains("ERROR") && line.contains(names), "{line}");
        assert!(line.contains("generation 1 keeps serving"), "{line}");
        assert_eq!(one_generation(&ats.get(&format!("/still/{i}"))), Ok("A".into()), "after bad reload {i}");
    }
    write_config(&ats, "stamp.yaml", &stamp_yaml("B"));
    reload(&ats, true, 2);
    assert_eq!(one_generation(&ats.get("/good")), Ok("B".into()));
    let m = metrics(&ats);
    assert_eq!(m.get("ats_wasm_reloads_total{result=\"failed\"}"), Some(&3.0), "{m:?}");
    assert_eq!(m.get("ats_wasm_reloads_total{result=\"ok\"}"), Some(&1.0));
}

#[test]
fn status_names_each_filter_with_its_generation_module_and_vms() {
    let ats = stamped_ats(&[], &["stamp.yaml"]);
    ats.get("/warm");
    let (ok, out) = ats.ctl(&["plugin", "msg", "ats_wasm", "status"]);
    assert!(ok, "{out}");
    assert!(
        ats.wait_for_diags("status: generation 1, filter \"stamp\"", Duration::from_secs(10)),
        "{}",
        ats.diags_log()
    );
    let line = ats.diags_log().lines().find(|l| l.contains("filter \"stamp\": module")).unwrap().to_string();
    assert!(line.contains("NOTE") && line.contains("isolation shared") && line.contains("VMs ready"), "{line}");
}

/// `[Mon dd HH:MM:SS.mmm]` at the start of an ATS log line, as milliseconds of the day.
fn log_time_ms(line: &str) -> Option<u64> {
    let t = line.strip_prefix('[')?.split(']').next()?.split_whitespace().last()?;
    let (hms, ms) = t.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}

#[test]
fn fifty_reloads_under_load_leave_memory_flat_and_old_generations_gone() {
    let ticker = filter_yaml("ticker", &example_wasm("ticker"), r#"{"period_ms": 100}"#);
    let ats = {
        let b = Ats::builder()
            .net_threads(2)
            .under_manager()
            .config_file("stamp.yaml", stamp_yaml("A"))
            .config_file("ticker.yaml", ticker)
            .debug_tags("ats_wasm");
        b.plugin(&["stamp.yaml", "ticker.yaml"]).start()
    };
    let load = Load::start(&ats, 4);
    let mut rss_after_first = 0;
    for k in 1..=50u64 {
        write_config(&ats, "stamp.yaml", &stamp_yaml(if k % 2 == 1 { "B" } else { "A" }));
        reload(&ats, false, k + 1);
        if k == 1 {
            std::thread::sleep(Duration::from_secs(1));
            rss_after_first = ats.server_rss_kib().expect("VmRSS");
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_end = ats.server_rss_kib().expect("VmRSS");
    let (done, wrong) = load.finish();
    eprintln!(
        "50 reloads, {done} responses; VmRSS after the first {rss_after_first} KiB, after the 50th {rss_end} KiB"
    );
    assert!(wrong.is_empty(), "{} wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert!(rss_end <= rss_after_first + rss_after_first / 20, "VmRSS grew from {rss_after_first} to {rss_end} KiB");
    // With no load, every thread lets go of old generations once it adopts the newest.
    let live =
        harness::wait_until(Duration::from_secs(10), || metrics(&ats).get("ats_wasm_generations_live") == Some(&1.0));
    assert!(live, "generations live: {:?}", metrics(&ats).get("ats_wasm_generations_live"));
    assert_eq!(metrics(&ats).get("ats_wasm_generation"), Some(&51.0));
    // No tick of a generation after it retired (both logs carry ATS's millisecond timestamps).
    std::thread::sleep(Duration::from_millis(500));
    let diags = ats.diags_log();
    let console = ats.console();
    let mut retired = 0;
    for n in 1..=50u64 {
        let Some(t) = diags.lines().find(|l| l.contains(&format!("generation {n} retired"))).and_then(log_time_ms)
        else {
            continue;
        };
        retired += 1;
        let late: Vec<&str> = console
            .lines()
            .filter(|l| l.contains(&format!("tick of generation {n})")))
            .filter(|l| log_time_ms(l).is_some_and(|x| x > t))
            .collect();
        assert!(late.is_empty(), "generation {n} retired at {t} ms but ticked after: {late:?}");
    }
    assert_eq!(retired, 50, "{diags}");
    assert!(console.contains("tick of generation 51)"), "the newest generation ticks");
}

/// The live-object gauges (`ats_wasm_live_objects{kind}`) and `ats_wasm_generations_live`.
fn live_objects(ats: &Ats) -> Vec<(String, f64)> {
    let m = metrics(ats);
    let mut v: Vec<(String, f64)> = m
        .into_iter()
        .filter(|(k, _)| k.starts_with("ats_wasm_live_objects") || k == "ats_wasm_generations_live")
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn failed_responses_with_a_body_transform_leave_no_transform_or_generation_behind() {
    // oob-trap fails closed in its response callback; it exports body callbacks, so each
    // transaction has a response transform ATS has opened by then. Failing the hook there made
    // ATS 9.2 drop the transform without closing it: its state, holding the generation, stayed
    // (one per failed transaction, ~2.7 KiB of RSS each, and every reload left its generation).
    let trap = format!(
        "config:\n  name: \"trap\"\n  failure_policy: fail_closed\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("oob-trap").display()
    );
    let ats = stamped_ats(&[("trap.yaml", trap)], &["stamp.yaml", "trap.yaml"]);
    for i in 0..20 {
        // Half from the origin, half cache hits (the transform is fed by the cache then).
        let path = if i % 2 == 0 { format!("/rt/{i}?body_size=40") } else { "/rt/hit?body_size=40&max_age=600".into() };
        let r = ats.request("GET", &path, &[("x-trap-response", "unreachable")], b"");
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert_eq!(r.body_str(), "503 Service Unavailable: filter \"trap\" failed\n", "{path}: {r:?}");
    }
    assert_eq!(one_generation(&ats.get("/ok")), Ok("A".into()), "ATS keeps serving");
    reload(&ats, false, 2);
    let idle = |v: &[(String, f64)]| {
        v.iter().all(|(k, n)| if k == "ats_wasm_generations_live" { *n == 1.0 } else { *n == 0.0 }) && v.len() == 4
    };
    let settled = harness::wait_until(Duration::from_secs(10), || idle(&live_objects(&ats)));
    assert!(settled, "not back to idle after the reload: {:?}\n{}", live_objects(&ats), ats.failure_report());
    assert!(ats.diags_log().contains("generation 1 retired"), "{}", ats.diags_log());
}

/// The "built in N ms" of every reload NOTE line so far.
fn build_times_ms(ats: &Ats) -> Vec<u64> {
    ats.diags_log().lines().filter_map(|l| l.split("built in ").nth(1)?.split(" ms").next()?.parse().ok()).collect()
}

/// Not a check, a measurement (`cargo test --release --test reload -- --ignored --nocapture`):
/// how long a reload of `add-headers` takes when its module is unchanged, and when the module
/// changes each time (alternating with `deny`), without and with `--module-cache`.
#[test]
#[ignore]
fn measure_reload_time() {
    for cache in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let arg = format!("--module-cache={}", dir.path().display());
        let mut args = vec!["stamp.yaml"];
        if cache {
            args.insert(0, &arg);
        }
        let ats = stamped_ats(&[], &args);
        let mut n = 1;
        for _ in 0..5 {
            n += 1;
            reload(&ats, false, n);
        }
        let unchanged = build_times_ms(&ats);
        for k in 0..6 {
            let wasm = if k % 2 == 0 { example_wasm("deny") } else { example_wasm("add-headers") };
            write_config(&ats, "stamp.yaml", &filter_yaml("stamp", &wasm, "{}"));
            n += 1;
            reload(&ats, false, n);
        }
        let changed = build_times_ms(&ats)[unchanged.len()..].to_vec();
        eprintln!(
            "--module-cache {}: unchanged module {unchanged:?} ms; module changed each time {changed:?} ms",
            if cache { "on" } else { "off" }
        );
    }
}

#[test]
fn a_reload_adds_and_removes_the_filters_named_on_the_plugin_line() {
    let extra = filter_yaml("extra", &example_wasm("add-headers"), r#"{"response_headers": {"x-extra": "1"}}"#);
    let ats = stamped_ats(&[("extra.yaml", extra)], &["stamp.yaml"]);
    let r = ats.get("/one");
    assert_eq!((one_generation(&r), r.header("x-extra")), (Ok("A".into()), None));
    let plugin_config = ats.config_dir().join("plugin.config");
    let line = std::fs::read_to_string(&plugin_config).unwrap();
    // Added: the new file on the plugin's line.
    std::fs::write(&plugin_config, line.replace("stamp.yaml", "stamp.yaml extra.yaml")).unwrap();
    reload(&ats, true, 2);
    let r = ats.get("/two");
    assert_eq!((one_generation(&r), r.header("x-extra")), (Ok("A".into()), Some("1")), "{r:?}");
    // Removed: the stamp filter is not called any more.
    std::fs::write(&plugin_config, line.replace("stamp.yaml", "extra.yaml")).unwrap();
    reload(&ats, false, 3);
    let r = ats.get("/three");
    assert_eq!((r.headers_named("x-gen").len(), r.header("x-extra")), (0, Some("1")), "{r:?}");
    assert!(!r.body_str().contains("x-gen"), "the origin saw no stamp: {r:?}");
    // An option changed on the line is one WARNING and waits for a restart.
    std::fs::write(&plugin_config, line.replace("stamp.yaml", "--pool-size=3 extra.yaml")).unwrap();
    reload(&ats, false, 4);
    assert_eq!(diags_lines(&ats, "options on the plugin's line changed"), 1, "{}", ats.diags_log());
}
