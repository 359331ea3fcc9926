//! A guest is untrusted input: what it writes into requests and responses is validated in a
//! real `traffic_server`. A header value with CR/LF (or a name that is not a token) would reach
//! the origin or the client as extra header lines; it is refused with `BAD_ARGUMENT`, counted
//! and reported, and nothing of it is written.

mod harness;

use std::time::Duration;

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
        sample(&ats, &format!("ats_wasm_rejected_writes_total{{filter=\"{filter}\",reason=\"{reason}\"}}"))
            .unwrap_or(0.0)
    };
    let traps = |filter: &str| {
        sample(&ats, &format!("ats_wasm_callback_failures_total{{filter=\"{filter}\",reason=\"trap\"}}")).unwrap_or(0.0)
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
    let rejected = sample(&ats, "ats_wasm_rejected_writes_total{filter=\"inject\",reason=\"invalid_value\"}");
    let traps = sample(&ats, "ats_wasm_callback_failures_total{filter=\"inject\",reason=\"trap\"}");
    assert!(rejected.is_some_and(|n| n >= 20.0), "{rejected:?}");
    assert_eq!(rejected, traps, "each refused write made the SDK trap once:\n{}", scrape(&ats));
}
