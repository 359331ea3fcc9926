//! Observability through a real `traffic_server`: the Prometheus endpoint (hook histograms,
//! failure counters, pool state, guest metrics), `--metrics-listen` edge cases, and the ATS
//! stats (`proxy.plugin.ats_wasm.*`, read through `stats_over_http`).

mod harness;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Ats, Client, example_wasm};

fn yaml(name: &str, configuration: &str, wasm: &Path) -> String {
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

/// `GET path` on 127.0.0.1:`port` (one connection).
fn http_get(port: u16, path: &str) -> std::io::Result<harness::Response> {
    Client::connect_timeout(port, Duration::from_secs(5))?.get(path, &[("Connection", "close")])
}

/// The endpoint's text.
fn scrape(ats: &Ats) -> String {
    let port = ats.metrics_port().unwrap_or_else(|| panic!("no endpoint note in diags.log:\n{}", ats.diags_log()));
    let r = http_get(port, "/metrics").expect("scraping the endpoint");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")), "{r:?}");
    r.body_str().into_owned()
}

/// Sample lines (`name{labels} value`) as a map from `name{labels}` to the value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of the sample whose name is `name` and whose labels include all of `labels`
/// (summed over the series that match).
fn value(s: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for (k, v) in s {
        let (n, rest) = k.split_once('{').unwrap_or((k, "}"));
        if n != name {
            continue;
        }
        if labels.iter().all(|(l, val)| rest.contains(&format!("{l}=\"{val}\""))) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[test]
fn hook_histograms_count_each_callback_of_the_requests() {
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "f.yaml",
            yaml(
                "adder",
                r#"{"request_headers": {"x-a": "1"}, "response_headers": {"x-b": "2"}}"#,
                &example_wasm("add-headers"),
            ),
        )
        .plugin(&["f.yaml"])
        .start();
    let h = "ats_wasm_hook_duration_seconds";
    let count = |s: &HashMap<String, f64>, hook: &str| {
        value(s, &format!("{h}_count"), &[("filter", "adder"), ("hook", hook)]).unwrap_or(0.0)
    };
    // The harness' readiness probes went through the filter too: wait until their
    // transactions are closed (delete ran for each), and count from there.
    let settled = |want_more: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = scrape(&ats);
            let s = samples(&text);
            let (req, del) = (count(&s, "request_headers"), count(&s, "delete"));
            // A lease goes back right after `proxy_on_delete`: a scrape can fall in between.
            let leased = value(&s, "ats_wasm_pool_leased_vms", &[("filter", "adder")]);
            if (req >= want_more && req == del && leased == Some(0.0)) || Instant::now() > deadline {
                return (text, s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (_, before) = settled(1.0);
    assert!(count(&before, "configure") >= 1.0, "the probe VM ran proxy_on_configure");
    assert!(count(&before, "vm_start") >= 1.0);

    let n = 40;
    let mut client = ats.client();
    for i in 0..n {
        let r = client.get(&format!("/m/{i}"), &[]).unwrap();
        assert_eq!(r.header("x-b"), Some("2"));
    }
    drop(client);
    // TXN_CLOSE (done/log/delete) runs after the response was sent: wait for the last one.
    let (text, s) = settled(count(&before, "request_headers") + n as f64);
    for hook in ["context_create", "request_headers", "response_headers", "done", "log", "delete"] {
        let delta = count(&s, hook) - count(&before, hook);
        assert_eq!(delta, n as f64, "{hook}:\n{text}");
        let inf = value(&s, &format!("{h}_bucket"), &[("filter", "adder"), ("hook", hook), ("le", "+Inf")]);
        assert_eq!(inf, Some(count(&s, hook)), "{hook}: the +Inf bucket holds every observation");
        let sum = value(&s, &format!("{h}_sum"), &[("filter", "adder"), ("hook", hook)]).unwrap();
        assert!(sum > 0.0 && sum < count(&s, hook) * 0.1, "{hook}: {} callbacks took {sum} s in all", count(&s, hook));
    }
    // Explicit buckets 1 µs … 1 s, cumulative.
    let bucket_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{h}_bucket{{")) && l.contains("hook=\"request_headers\""))
        .collect();
    assert_eq!(bucket_lines.len(), 20, "19 bounds and +Inf:\n{}", bucket_lines.join("\n"));
    assert!(bucket_lines.iter().any(|l| l.contains("le=\"0.000001\"")), "{bucket_lines:?}");
    assert!(bucket_lines.iter().any(|l| l.contains("le=\"1\"")), "{bucket_lines:?}");
    let mut last = 0.0;
    for l in &bucket_lines {
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v >= last, "cumulative: {bucket_lines:?}");
        last = v;
    }
    assert!(text.contains(&format!("# TYPE {h} histogram")), "{text}");
    // Pool state per filter and thread: 2 net threads served requests; each has its VM.
    let ready = value(&s, "ats_wasm_pool_ready_vms", &[("filter", "adder")]).unwrap();
    assert!(ready >= 1.0, "{text}");
    assert_eq!(value(&s, "ats_wasm_pool_leased_vms", &[("filter", "adder")]), Some(0.0), "all leases are back");
    assert!(value(&s, "ats_wasm_pool_instantiations_total", &[("filter", "adder")]).unwrap() >= 1.0);
    assert_eq!(value(&s, "ats_wasm_callback_failures_total", &[("filter", "adder")]), Some(0.0), "{text}");
}

#[test]
fn traps_and_failure_outcomes_are_counted_per_reason() {
    let wasm = example_wasm("oob-trap");
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("open.yaml", yaml("open", "", &wasm))
        .config_file("closed.yaml", format!("{}  failure_policy: fail_closed\n", yaml("closed", "", &wasm)))
        .plugin(&["--callback-deadline-ms=200", "--max-memory=16M", "open.yaml", "closed.yaml"])
        .start();
    let s = samples(&scrape(&ats));
    let failures = |s: &HashMap<String, f64>, f: &str, reason: &str| {
        value(s, "ats_wasm_callback_failures_total", &[("filter", f), ("reason", reason)])
    };
    let outcomes = |s: &HashMap<String, f64>, f: &str, o: &str| {
        value(s, "ats_wasm_failure_outcomes_total", &[("filter", f), ("outcome", o)])
    };
    assert_eq!(failures(&s, "open", "trap"), Some(0.0), "registered at start, zero");

    // Both filters trap on x-trap: "open" first (request phase, fail-open, goes on), then
    // "closed" traps too (fail-closed: 503).
    for _ in 0..3 {
        let r = ats.request("GET", "/t", &[("x-trap", "oob")], b"");
        assert_eq!(r.status, 503, "{r:?}");
    }
    let r = ats.request("GET", "/l", &[("x-trap", "loop")], b"");
    assert_eq!(r.status, 503, "{r:?}");
    let r = ats.request("GET", "/a", &[("x-trap", "alloc")], b"");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(ats.get("/fine").status, 200);

    let text = scrape(&ats);
    let s = samples(&text);
    for f in ["open", "closed"] {
        assert_eq!(failures(&s, f, "trap"), Some(3.0), "{f}:\n{text}");
        assert_eq!(failures(&s, f, "deadline"), Some(1.0), "{f}:\n{text}");
        assert_eq!(failures(&s, f, "memory_cap"), Some(1.0), "{f}:\n{text}");
        assert_eq!(value(&s, "ats_wasm_pool_poisonings_total", &[("filter", f)]), Some(5.0), "{f}:\n{text}");
    }
    assert_eq!(outcomes(&s, "open", "fail_open"), Some(5.0), "{text}");
    assert_eq!(outcomes(&s, "open", "fail_closed"), Some(0.0), "{text}");
    assert_eq!(outcomes(&s, "closed", "fail_closed"), Some(5.0), "{text}");
    assert_eq!(outcomes(&s, "closed", "fail_open"), Some(0.0), "{text}");
}

#[test]
fn guest_metrics_are_exported_with_sanitized_names() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("t.yaml", yaml("ticker", r#"{"period_ms": 50}"#, &example_wasm("ticker")))
        .plugin(&["t.yaml"])
        .start();
    // Ticks start on a thread once it ran a transaction.
    assert_eq!(ats.get("/start").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, s) = loop {
        let text = scrape(&ats);
        let s = samples(&text);
        let ticks = value(&s, "ats_wasm_guest_ticker_ticks_total", &[]).unwrap_or(0.0);
        if ticks >= 5.0 || Instant::now() > deadline {
            break (text, s);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("# TYPE ats_wasm_guest_ticker_ticks_total counter"), "{text}");
    assert!(value(&s, "ats_wasm_guest_ticker_ticks_total", &[]).unwrap() >= 5.0, "{text}");
    assert!(text.contains("# TYPE ats_wasm_guest_ticker_held_requests gauge"), "{text}");
    assert_eq!(value(&s, "ats_wasm_guest_ticker_held_requests", &[]), Some(0.0), "{text}");
    assert!(text.contains("# TYPE ats_wasm_guest_ticker_tick_interval_ms histogram"), "{text}");
    let n = value(&s, "ats_wasm_guest_ticker_tick_interval_ms_count", &[]).unwrap();
    assert!(n >= 4.0, "{text}");
    assert_eq!(value(&s, "ats_wasm_guest_ticker_tick_interval_ms_bucket", &[("le", "+Inf")]), Some(n));
    // 50 ms ticks: nearly all intervals fall in (25, 100] ms.
    let le25 = value(&s, "ats_wasm_guest_ticker_tick_interval_ms_bucket", &[("le", "25")]).unwrap();
    let le100 = value(&s, "ats_wasm_guest_ticker_tick_interval_ms_bucket", &[("le", "100")]).unwrap();
    assert!(le100 - le25 >= n * 0.5, "le25={le25} le100={le100} n={n}:\n{text}");
    // The ticker's own callback is timed too.
    assert!(
        value(&s, "ats_wasm_hook_duration_seconds_count", &[("filter", "ticker"), ("hook", "tick")]).unwrap() >= 5.0
    );
}

#[test]
fn a_port_in_use_is_one_diags_line_and_ats_keeps_serving() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("f.yaml", yaml("adder", r#"{"response_headers": {"x-b": "2"}}"#, &example_wasm("add-headers")))
        .plugin(&[&format!("--metrics-listen=127.0.0.1:{port}"), "f.yaml"])
        .start();
    let r = ats.get("/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-b"), Some("2"), "the filter still runs");
    let diags = ats.diags_log();
    // Exactly one line about it, at ERROR, and no other ats_wasm error.
    let about: Vec<&str> =
        diags.lines().filter(|l| l.contains("ats_wasm: --metrics-listen") || l.contains("Prometheus")).collect();
    assert_eq!(about.len(), 1, "{diags}");
    let errors: Vec<&str> = diags.lines().filter(|l| l.contains("ERROR") && l.contains("ats_wasm")).collect();
    assert_eq!(errors, about, "{diags}");
    let lines = errors;
    assert!(
        lines[0].contains(&format!("--metrics-listen=127.0.0.1:{port}: cannot listen: Address already in use")),
        "{}",
        lines[0]
    );
    assert_eq!(ats.metrics_port(), None);
    drop(taken);
}

#[test]
fn a_client_that_sends_nothing_does_not_hold_up_scrapes() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("f.yaml", yaml("adder", "", &example_wasm("add-headers")))
        .plugin(&["f.yaml"])
        .start();
    let port = ats.metrics_port().expect("endpoint");
    // Connected, silent: each holds its connection until the endpoint's 5 s read timeout.
    let idle: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(200));
    // A scrape meanwhile is answered well inside that timeout (its client gives up after 2 s).
    let r = Client::connect_timeout(port, Duration::from_secs(2))
        .and_then(|mut c| c.get("/metrics", &[("Connection", "close")]))
        .expect("a scrape while other connections sit idle");
    assert_eq!(r.status, 200);
    assert!(r.body_str().contains("ats_wasm_"), "{}", r.body_str());
    drop(idle);
}

#[test]
fn off_listens_nowhere() {
    // Two ATS with the same filter: one with a port of our choosing, one `off`.
    let port = harness::free_port();
    let wasm = example_wasm("add-headers");
    let on = Ats::builder()
        .net_threads(1)
        .config_file("f.yaml", yaml("adder", "", &wasm))
        .plugin(&[&format!("--metrics-listen=127.0.0.1:{port}"), "f.yaml"])
        .start();
    assert_eq!(on.metrics_port(), Some(port));
    assert!(http_get(port, "/metrics").is_ok_and(|r| r.status == 200));
    assert_eq!(http_get(port, "/other").unwrap().status, 404);
    // The endpoint's threads do not hold traffic_server up: SIGTERM ends it (the harness would
    // SIGKILL only after 10 s).
    let stopping = Instant::now();
    on.stop();
    assert!(stopping.elapsed() < Duration::from_secs(8), "took {:?} to stop", stopping.elapsed());
    drop(on);

    let off = Ats::builder()
        .net_threads(1)
        .config_file("f.yaml", yaml("adder", "", &wasm))
        .plugin(&["--metrics-listen=off", "f.yaml"])
        .start();
    assert_eq!(off.get("/x").header("x-wasm-response"), Some("add-headers"));
    assert!(http_get(port, "/metrics").is_err(), "nothing listens on the old port");
    // traffic_server listens on its HTTP port only.
    let ours = listening_ports(off.pid());
    assert_eq!(ours, vec![off.port()], "traffic_server's listening TCP ports");
    assert!(!off.diags_log().contains("Prometheus"), "{}", off.diags_log());
}

/// The TCP ports process `pid` listens on (from /proc: its socket inodes in /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap();
                ports.push(port);
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

#[test]
fn ats_stats_count_requests_traps_and_outcomes() {
    let wasm = example_wasm("oob-trap");
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("trap.yaml", yaml("trapper", "", &wasm))
        .plugin(&["--metrics-listen=off", "trap.yaml"])
        .plugin_line("stats_over_http.so")
        .start();
    for _ in 0..7 {
        assert_eq!(ats.get("/ok").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(ats.request("GET", "/t", &[("x-trap", "oob")], b"").status, 200, "fail-open");
    }
    // ATS syncs plugin stats every few seconds; every /_stats request (and the harness'
    // readiness probes) goes through the filter too, so `requests` is a lower bound.
    let exact = [
        ("traps", 2),
        ("fail_open", 2),
        ("fail_closed", 0),
        ("pool_poisonings", 2),
        ("deadline_hits", 0),
        ("memory_cap_hits", 0),
        ("pause_timeouts", 0),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = ats.get("/_stats");
        assert_eq!(r.status, 200, "{r:?}");
        let json: serde_json::Value = serde_json::from_slice(&r.body).expect("stats_over_http JSON");
        let stat = |name: &str| -> Option<i64> {
            let v = &json["global"][format!("proxy.plugin.ats_wasm.trapper.{name}")];
            v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64())
        };
        let ok = exact.iter().all(|(k, v)| stat(k) == Some(*v)) && stat("requests").is_some_and(|n| n >= 9);
        if ok {
            assert!(stat("pool_misses").is_some_and(|n| n >= 0));
            assert!(stat("pool_instantiations").is_some_and(|n| n >= 2), "a VM per thread plus replacements");
            break;
        }
        assert!(Instant::now() < deadline, "ATS stats not as expected ({exact:?}, requests >= 9):\n{json:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A `traffic_manager` (with its `traffic_server`) in its own session; the whole process group
/// is killed on drop.
struct Manager {
    child: std::process::Child,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Usually nothing is left to kill.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn traffic_ctl_metric_match_shows_the_ats_stats() {
    if harness::skip_on_ats10("examples/runroot.sh writes a runroot for Debian's ATS 9.2 and traffic_manager") {
        return;
    }
    // 9.2's traffic_ctl talks to traffic_manager, which the harness does not run: start one in
    // a runroot written by examples/runroot.sh, with the shipped add-headers example.
    let root = harness::repo_root();
    let origin = harness::Origin::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = harness::free_port();
    let written = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}/examples/runroot.sh && write_runroot {} {port} 1 {} 0",
            root.display(),
            d.display(),
            origin.port()
        ))
        .status()
        .unwrap();
    assert!(written.success());
    std::fs::copy(example_wasm("add-headers"), d.join("etc/add_headers.wasm")).unwrap();
    std::fs::copy(root.join("examples/add-headers/add-headers.yaml"), d.join("etc/add-headers.yaml")).unwrap();
    std::fs::write(
        d.join("etc/plugin.config"),
        format!("{} --metrics-listen=off add-headers.yaml\n", harness::plugin_so().display()),
    )
    .unwrap();
    let runroot = format!("--run-root={}", d.join("runroot.yaml").display());
    let _manager = Manager {
        child: std::process::Command::new("setsid")
            .args(["traffic_manager", &runroot])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(d.join("manager.log")).unwrap())
            .stderr(std::fs::File::create(d.join("manager.err")).unwrap())
            .spawn()
            .expect("starting traffic_manager"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        if let Ok(r) = http_get(port, "/tc/0") {
            break r;
        }
        assert!(Instant::now() < deadline, "traffic_manager's ATS did not serve");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served.header("x-wasm-filter"), Some("add-headers"));
    for i in 1..5 {
        assert_eq!(http_get(port, &format!("/tc/{i}")).unwrap().status, 200);
    }
    let stats = [
        "requests",
        "traps",
        "deadline_hits",
        "memory_cap_hits",
        "pause_timeouts",
        "fail_open",
        "fail_closed",
        "pool_misses",
        "pool_instantiations",
        "pool_poisonings",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("traffic_ctl").args([&runroot, "metric", "match", "ats_wasm"]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let value = |s: &str| -> Option<i64> {
            let name = format!("proxy.plugin.ats_wasm.add-headers.{s} ");
            text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        };
        if value("requests").is_some_and(|n| n >= 5) {
            for s in stats {
                assert!(value(s).is_some(), "{s} missing:\n{text}");
            }
            assert_eq!(value("traps"), Some(0), "{text}");
            assert_eq!(value("fail_closed"), Some(0), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "traffic_ctl metric match ats_wasm:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
