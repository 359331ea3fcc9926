//! Local responses through a real `traffic_server` (2 net threads): bodiless ones, which filters
//! of a chain see them, and fail-closed answers in every phase.

mod harness;

use harness::{Ats, example_wasm, filter_yaml};

/// A `deny` filter named `name` answering `status` with `body` for paths under `prefix`.
fn deny(name: &str, prefix: &str, status: u16, body: &str) -> String {
    filter_yaml(
        name,
        &example_wasm("deny"),
        &format!(r#"{{"path_prefixes": ["{prefix}"], "status": {status}, "body": "{body}"}}"#),
    )
}

#[test]
fn a_local_response_without_a_body_is_sent_with_content_length_zero() {
    let ats = Ats::builder()
        .config_file("ok.yaml", deny("ok", "/empty200", 200, ""))
        .config_file("multi.yaml", deny("multi", "/empty300", 300, ""))
        .config_file("forbidden.yaml", deny("forbidden", "/empty403", 403, ""))
        .config_file("nocontent.yaml", deny("nocontent", "/empty204", 204, ""))
        .plugin(&["ok.yaml", "multi.yaml", "forbidden.yaml", "nocontent.yaml"])
        .start();
    let mut c = ats.client();
    for (path, status) in [("/empty200", 200), ("/empty300", 300), ("/empty403", 403)] {
        let r = c.get(path, &[]).expect("request");
        assert_eq!(r.status, status, "{r:?}");
        assert!(r.body.is_empty(), "{path}: no body expected, got {:?}", r.body_str());
        assert_eq!(r.header("content-length"), Some("0"), "{r:?}");
        assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
        assert_eq!(r.header("content-type"), None, "no body, no content type: {r:?}");
        assert!(r.header("x-denied-by").is_some(), "{r:?}");
        // The same connection goes on: the framing was right.
        assert_eq!(c.get("/after?body_size=3", &[]).expect("request after").body.len(), 3);
    }
    let r = c.get("/empty204", &[]).expect("204");
    assert_eq!((r.status, r.body.len(), r.header("content-length")), (204, 0, None), "{r:?}");
    // HEAD: ATS sends no Content-Length for it (no body can follow).
    let r = ats.request("HEAD", "/empty403", &[], b"");
    assert_eq!((r.status, r.header("content-type")), (403, None), "{r:?}");
    assert!(ats.origin().seen().iter().all(|s| !s.path.starts_with("/empty")));
}

/// An `add-headers` filter named `add` that adds `x-second: ran` to requests and responses.
fn add_second() -> String {
    filter_yaml(
        "add",
        &example_wasm("add-headers"),
        r#"{"request_headers": {"x-second": "ran"}, "response_headers": {"x-second": "ran"}}"#,
    )
}

/// As Envoy runs a Proxy-Wasm filter chain: a local reply goes through the encoder side of
/// every filter whose request callbacks ran (the replying one and those before it, in reverse
/// order), not through the filters after it, whose stream contexts were never created.
#[test]
fn a_request_phase_local_response_runs_the_response_callbacks_of_the_filters_before_it() {
    for deny_first in [true, false] {
        let order: &[&str] = if deny_first { &["deny.yaml", "add.yaml"] } else { &["add.yaml", "deny.yaml"] };
        let ats = Ats::builder()
            .config_file("deny.yaml", deny("deny", "/admin", 403, "denied\\n"))
            .config_file("add.yaml", add_second())
            .plugin(order)
            .start();
        let r = ats.get("/admin/x");
        assert_eq!((r.status, r.body_str().as_ref()), (403, "denied\n"), "{order:?}: {r:?}");
        let expected = if deny_first { None } else { Some("ran") };
        assert_eq!(r.header("x-second"), expected, "{order:?}: {r:?}");
        // Allowed requests run both filters in both orders.
        let r = ats.get("/public");
        assert_eq!((r.status, r.header("x-second")), (200, Some("ran")), "{order:?}: {r:?}");
    }
}

/// The `oob-trap` module as filter `trap`, failing closed, with extra `config:` lines.
fn trap_closed(extra: &str) -> String {
    format!(
        "config:\n  name: \"trap\"\n  failure_policy: fail_closed\n{extra}  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("oob-trap").display()
    )
}

#[test]
fn fail_closed_answers_503_in_the_response_phase_for_header_and_body_filters() {
    // `bodies: none`: a header-only filter; the default (`auto`) gives the module, which
    // exports the body callbacks, a response transform.
    for extra in ["  bodies: none\n", ""] {
        let ats = Ats::builder()
            .config_file("trap.yaml", trap_closed(extra))
            .config_file("add.yaml", add_second())
            .plugin(&["add.yaml", "trap.yaml"])
            .start();
        for path in ["/rt/a?body_size=40", "/rt/b?body_size=40&max_age=600", "/rt/b?body_size=40&max_age=600"] {
            let r = ats.request("GET", path, &[("x-trap-response", "unreachable")], b"");
            assert_eq!(r.status, 503, "{extra:?} {path}: {r:?}");
            assert_eq!(r.body_str(), "503 Service Unavailable: filter \"trap\" failed\n", "{extra:?}: {r:?}");
            // The 503 goes past the other filters' response callbacks, as Envoy's does.
            assert_eq!(r.header("x-second"), None, "{extra:?}: {r:?}");
        }
        assert!(
            ats.wait_for_diags(
                "filter \"trap\": proxy_on_response_headers (trap) failed",
                std::time::Duration::from_secs(5)
            ),
            "{}",
            ats.diags_log()
        );
        let r = ats.get("/after?body_size=3");
        assert_eq!((r.status, r.body.len(), r.header("x-oob-trap")), (200, 3, Some("alive")), "{r:?}");
    }
}
