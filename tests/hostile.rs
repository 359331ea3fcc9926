//! A guest is untrusted input, and so is a filter file, in a real `traffic_server`:
//! - what a guest writes into requests and responses is validated: a header value with CR/LF
//!   (or a name that is not a token) would reach the origin or the client as extra header
//!   lines; it is refused with `BAD_ARGUMENT`, counted and reported, and nothing is written;
//! - a YAML alias bomb, a file over 1 MiB and extra YAML documents are one line each, and ATS
//!   starts promptly and serves; an import the host does not provide is one WARNING;
//! - each failure line names the callback and the limit hit (memory cap after a refused
//!   `memory.grow`, context creation, a tick's deadline, a VM that fails to start), once;
//! - failure lines are a few a minute per filter and reason, then a summary; the counters
//!   count every failure.

mod harness;

use std::time::{Duration, Instant};

use harness::{Ats, Client, example_wasm, filter_yaml};

/// The Prometheus endpoint's sample `name{labels}`, if present.
fn sample(ats: &Ats, key: &str) -> Option<f64> {
    let port = ats.metrics_port()?;
    let r =
        Client::connect_timeout(port, Duration::from_secs(5)).ok()?.get("/metrics", &[("Connection", "close")]).ok()?;
    r.body_str().lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// The Prometheus endpoint's text (for failure messages).
fn scrape(ats: &Ats) -> String {
    let port = ats.metrics_port().unwrap_or_default();
    Client::connect_timeout(port, Duration::from_secs(5))
        .and_then(|mut c| c.get("/metrics", &[("Connection", "close")]))
        .map(|r| r.body_str().into_owned())
        .unwrap_or_default()
}

#[test]
fn header_writes_with_line_breaks_or_bad_names_are_refused_and_nothing_is_injected() {
    // add-headers adds the configured headers; the JSON escapes become real CR/LF. The Rust
    // SDK traps on the BAD_ARGUMENT it gets back, so each filter fails open after its refused
    // write, and the request is served without it.
    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "inject-request.yaml",
            filter_yaml(
                "inject-request",
                &example_wasm("add-headers"),
                r#"{"request_headers": {"x-a": "1\r\nx-injected: evil"}}"#,
            ),
        )
        .config_file(
            "inject-response.yaml",
            filter_yaml(
                "inject-response",
                &example_wasm("add-headers"),
                r#"{"response_headers": {"x-b": "2\nx-injected: evil\u0000"}}"#,
            ),
        )
        .config_file(
            "bad-name.yaml",
            filter_yaml("bad-name", &example_wasm("add-headers"), r#"{"request_headers": {"x-c\r\nx-injected": "3"}}"#),
        )
        .config_file(
            "good.yaml",
            filter_yaml(
                "good",
                &example_wasm("add-headers"),
                r#"{"request_headers": {"x-good": "ok"}, "response_headers": {"x-good": "ok"}}"#,
            ),
        )
        .plugin(&["inject-request.yaml", "inject-response.yaml", "bad-name.yaml", "good.yaml"])
        .start();

    for i in 0..3 {
        let r = ats.get(&format!("/inject/{i}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("x-injected").is_none(), "a response header was injected: {r:?}");
        assert!(r.header("x-b").is_none(), "{r:?}");
        assert_eq!(r.header("x-good"), Some("ok"), "the valid filter still runs: {r:?}");
    }
    let seen = ats.origin().seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for req in &seen {
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!names.iter().any(|n| n.eq_ignore_ascii_case("x-injected")), "origin saw an injected header: {req:?}");
        assert!(!names.iter().any(|n| n.eq_ignore_ascii_case("x-a") || n.starts_with("x-c")), "{req:?}");
        assert!(req.headers.iter().any(|(k, v)| k == "x-good" && v == "ok"), "{req:?}");
    }

    let diags = ats.diags_log();
    let lines = |needle: &str| diags.lines().filter(|l| l.contains(needle)).count();
    assert!(
        lines(
            "filter \"inject-request\": refused to write a request header with a value with CR, LF or NUL (BAD_ARGUMENT)"
        ) >= 1,
        "{diags}"
    );
    assert!(
        lines(
            "filter \"inject-response\": refused to write a response header with a value with CR, LF or NUL (BAD_ARGUMENT)"
        ) >= 1,
        "{diags}"
    );
    assert!(
        lines("filter \"bad-name\": refused to write a request header with a name that is not a token") >= 1,
        "{diags}"
    );

    // Every request through a filter (the harness' readiness probe too) is one refused write,
    // after which the SDK traps: the two counters agree.
    let count = |filter: &str, reason: &str| {
        sample(
            &ats,
            &format!("ats_wasm_rejected_writes_total{{filter=\"{filter}\",reason=\"{reason}\",scope=\"global\"}}"),
        )
        .unwrap_or(0.0)
    };
    let traps = |filter: &str| {
        sample(
            &ats,
            &format!("ats_wasm_callback_failures_total{{filter=\"{filter}\",reason=\"trap\",scope=\"global\"}}"),
        )
        .unwrap_or(0.0)
    };
    for (filter, reason) in
        [("inject-request", "invalid_value"), ("inject-response", "invalid_value"), ("bad-name", "invalid_name")]
    {
        assert!(count(filter, reason) >= 3.0, "{filter}: {}", count(filter, reason));
        assert_eq!(count(filter, reason), traps(filter), "{filter}");
    }
    assert_eq!(count("good", "invalid_value") + count("good", "invalid_name"), 0.0);
}

#[test]
fn refused_writes_are_reported_a_few_lines_a_minute_and_counted_exactly() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file(
            "inject.yaml",
            filter_yaml(
                "inject",
                &example_wasm("add-headers"),
                r#"{"request_headers": {"x-a": "1\r\nx-injected: evil"}}"#,
            ),
        )
        .plugin(&["inject.yaml"])
        .start();
    for i in 0..20 {
        assert_eq!(ats.get(&format!("/flood/{i}")).status, 200);
    }
    let diags = ats.diags_log();
    let refused = diags.lines().filter(|l| l.contains("filter \"inject\": refused to write")).count();
    assert_eq!(refused, 5, "at most 5 lines a minute:\n{diags}");
    // The harness' readiness probe went through the filter too: compare with the traps, one
    // per refused write.
    let rejected =
        sample(&ats, "ats_wasm_rejected_writes_total{filter=\"inject\",reason=\"invalid_value\",scope=\"global\"}");
    let traps = sample(&ats, "ats_wasm_callback_failures_total{filter=\"inject\",reason=\"trap\",scope=\"global\"}");
    assert!(rejected.is_some_and(|n| n >= 20.0), "{rejected:?}");
    assert_eq!(rejected, traps, "each refused write made the SDK trap once:\n{}", scrape(&ats));
}

/// Lines of diags.log containing `needle`.
fn lines_with(ats: &Ats, needle: &str) -> Vec<String> {
    ats.diags_log().lines().filter(|l| l.contains(needle)).map(String::from).collect()
}

/// traffic_server's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hostile_filter_files_are_one_line_each_and_ats_starts_promptly_and_serves() {
    let add_headers = example_wasm("add-headers");
    let good = filter_yaml("second-doc", &add_headers, r#"{"request_headers": {"x-doc": "first"}}"#);
    // A "billion laughs" (9^10 values if expanded) in a few hundred bytes.
    let mut bomb = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    let names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
    for w in names.windows(2) {
        bomb += &format!("{}: &{} [{}]\n", w[1], w[1], vec![format!("*{}", w[0]); 9].join(","));
    }
    bomb += &format!(
        "config:\n  configuration: *j\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        add_headers.display()
    );
    let big = format!("{}#{}\n", filter_yaml("big", &add_headers, ""), "x".repeat(1 << 20));
    let two_docs = format!("{good}---\nconfig:\n  name: ignored\n");
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("bomb.yaml", &bomb)
        .config_file("big.yaml", &big)
        .config_file("two-docs.yaml", &two_docs)
        .config_file("oob.yaml", filter_yaml("oob-trap", &example_wasm("oob-trap"), ""))
        .plugin(&["bomb.yaml", "big.yaml", "two-docs.yaml", "oob.yaml"])
        .start();
    let started = ats.started_in().unwrap();
    let peak_mib = peak_rss_kib(ats.pid()) / 1024;
    eprintln!("ATS answered after {started:?}; traffic_server peaked at {peak_mib} MiB");
    assert!(started < Duration::from_secs(10), "{started:?}");
    assert!(peak_mib < 300, "the bomb must not be expanded: traffic_server peaked at {peak_mib} MiB");

    let config_dir = ats.config_dir().to_path_buf();
    let file = |name: &str| config_dir.join(name).display().to_string();
    let bomb_lines =
        lines_with(&ats, &format!("ats_wasm: {}: malformed YAML: alias replay limit exceeded", file("bomb.yaml")));
    assert_eq!(bomb_lines.len(), 1, "{}", ats.diags_log());
    assert!(bomb_lines[0].contains("ERROR") && bomb_lines[0].ends_with("; this filter is skipped"), "{bomb_lines:?}");
    let big_lines = lines_with(&ats, &format!("ats_wasm: {}: the file (", file("big.yaml")));
    assert_eq!(big_lines.len(), 1, "{}", ats.diags_log());
    assert!(
        big_lines[0].contains("is larger than 1 MiB, the limit of a filter file; this filter is skipped"),
        "{big_lines:?}"
    );
    let doc_lines =
        lines_with(&ats, &format!("ats_wasm: {}: the YAML document at line 10 is ignored", file("two-docs.yaml")));
    assert_eq!(doc_lines.len(), 1, "{}", ats.diags_log());
    assert!(doc_lines[0].contains("WARNING"), "{doc_lines:?}");
    let import_lines = lines_with(
        &ats,
        "filter \"oob-trap\": the module imports env.oob_trap_missing, which ats-wasm does not provide; calling it answers UNIMPLEMENTED (12)",
    );
    assert_eq!(import_lines.len(), 1, "{}", ats.diags_log());
    assert!(import_lines[0].contains("WARNING"), "{import_lines:?}");
    assert!(lines_with(&ats, "proxy_grpc").is_empty(), "the ABI's gRPC stubs are not news: {}", ats.diags_log());

    // The two good filters serve: the first document's filter runs, and the missing import
    // answers what the line said.
    let r = ats.request("GET", "/hostile-files", &[("x-trap", "missing")], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = ats.origin().seen();
    let req = seen.iter().find(|s| s.path == "/hostile-files").expect("reached the origin");
    assert!(req.headers.iter().any(|(k, v)| k == "x-doc" && v == "first"), "{req:?}");
    assert!(req.headers.iter().any(|(k, v)| k == "x-oob-trap" && v == "missing=12"), "{req:?}");
}

#[test]
fn failure_lines_name_the_callback_and_the_limit_once() {
    let oob = example_wasm("oob-trap");
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("oob.yaml", filter_yaml("oob-trap", &oob, ""))
        .config_file("restart.yaml", filter_yaml("restart", &oob, "restart_trap"))
        .plugin(&["oob.yaml", "restart.yaml"])
        .start();
    // One memory.grow far past the cap, then the guest's own abort: the memory cap.
    let r = ats.request("GET", "/grow", &[("x-trap", "grow")], b"");
    assert_eq!(r.status, 200, "fail-open: {r:?}");
    assert!(
        ats.wait_for_diags(
            "filter \"oob-trap\": proxy_on_request_headers (memory cap reached) failed",
            Duration::from_secs(5)
        ),
        "{}",
        ats.diags_log()
    );
    // A trap in the context's creation is named as such (arm-create makes the next one trap).
    assert_eq!(ats.request("GET", "/arm", &[("x-trap", "arm-create")], b"").status, 200);
    assert_eq!(ats.get("/created").status, 200);
    assert!(
        ats.wait_for_diags("filter \"oob-trap\": proxy_on_context_create (trap) failed", Duration::from_secs(5)),
        "{}",
        ats.diags_log()
    );
    assert_eq!(ats.get("/after").header("x-oob-trap"), Some("alive"));
    // "restart" loaded (its first VM), every later VM traps in proxy_on_configure: one line,
    // "creating a VM failed" once in it.
    let created = lines_with(&ats, "filter \"restart\": creating a VM failed");
    assert_eq!(created.len(), 1, "{}", ats.diags_log());
    assert_eq!(created[0].matches("creating a VM failed").count(), 1, "{created:?}");
    assert!(created[0].contains("creating a VM failed: proxy_on_configure (trap): "), "{created:?}");
    assert!(lines_with(&ats, "proxy_on_request_headers (trap)").is_empty(), "{}", ats.diags_log());
}

/// ATS with one net thread and `oob-trap` whose every tick (each 100 ms) loops to its 20 ms
/// callback deadline.
fn tick_loop_ats() -> Ats {
    Ats::builder()
        .net_threads(1)
        .config_file(
            "tick.yaml",
            filter_yaml("tick-loop", &example_wasm("oob-trap"), "tick_loop").replacen(
                "config:\n",
                "config:\n  callback_deadline_ms: 20\n",
                1,
            ),
        )
        .plugin(&["tick.yaml"])
        .start()
}

#[test]
fn a_looping_tick_is_reported_as_its_deadline() {
    let ats = tick_loop_ats();
    assert!(
        ats.wait_for_diags("filter \"tick-loop\": proxy_on_tick (deadline exceeded) failed", Duration::from_secs(5)),
        "{}",
        ats.diags_log()
    );
    assert!(lines_with(&ats, "proxy_on_tick failed").is_empty(), "{}", ats.diags_log());
}

#[test]
fn a_tick_that_keeps_failing_backs_off_instead_of_burning_a_core() {
    // Every tick loops to the 20 ms deadline, 10 times a second without a backoff. With it, a
    // thread ticks again after 1 s, 2 s, 4 s … (at most 60 s) while its ticks keep failing.
    let ats = tick_loop_ats();
    assert!(
        ats.wait_for_diags("proxy_on_tick (deadline exceeded) failed", Duration::from_secs(5)),
        "{}",
        ats.diags_log()
    );
    std::thread::sleep(Duration::from_millis(7_500));
    let text = scrape(&ats);
    let failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("ats_wasm_callback_failures_total{") && l.contains("tick-loop"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    // Failed ticks at about 0, 1, 3 and 7 s after the first: 4 (5 with timing slack), not ~75.
    assert!((3.0..=5.0).contains(&failures), "{failures} failed ticks in 7.5 s\n{text}");
    assert!(
        ats.diags_log().contains("3 ticks in a row failed; backing off, the next proxy_on_tick in 4 s"),
        "{}",
        ats.diags_log()
    );
}

#[test]
fn repeated_failure_lines_are_a_few_a_minute_then_a_summary_and_the_counters_are_exact() {
    let ats = Ats::builder()
        .net_threads(1)
        .config_file("oob.yaml", filter_yaml("oob-trap", &example_wasm("oob-trap"), ""))
        .plugin(&["oob.yaml"])
        .start();
    let started = Instant::now();
    const REQUESTS: usize = 40;
    for i in 0..REQUESTS {
        let r = ats.request("GET", &format!("/trap/{i}"), &[("x-trap", "unreachable")], b"");
        assert_eq!(r.status, 200, "fail-open: {r:?}");
    }
    // The stats thread writes the summary within 10 s (the interval) + 2 s (its period).
    assert!(ats.wait_for_diags("more failure lines (trap) left out", Duration::from_secs(15)), "{}", ats.diags_log());
    let lines = lines_with(&ats, "filter \"oob-trap\": proxy_on_request_headers (trap) failed");
    assert_eq!(lines.len(), 5, "{}", ats.diags_log());
    let summarized: u64 = lines_with(&ats, "filter \"oob-trap\": ")
        .iter()
        .filter_map(|l| {
            l.split_once("\": ")?.1.split_once(" more failure lines (trap) left out")?.0.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(summarized, (REQUESTS - 5) as u64, "{}", ats.diags_log());
    let errors = ats.diags_log().lines().filter(|l| l.contains("ERROR") && l.contains("oob-trap")).count();
    assert!(errors <= 7, "5 lines and a summary or two: {errors}\n{}", ats.diags_log());
    let traps = sample(&ats, "ats_wasm_callback_failures_total{filter=\"oob-trap\",reason=\"trap\",scope=\"global\"}");
    assert_eq!(traps, Some(REQUESTS as f64), "{}", scrape(&ats));
    let open =
        sample(&ats, "ats_wasm_failure_outcomes_total{filter=\"oob-trap\",outcome=\"fail_open\",scope=\"global\"}");
    assert_eq!(open, Some(REQUESTS as f64), "{}", scrape(&ats));
    eprintln!("{REQUESTS} traps, {errors} ERROR lines, summary after {:?}", started.elapsed());
}
