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

