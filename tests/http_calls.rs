//! HTTP calls (`proxy_http_call`) through a real `traffic_server` with 2 net threads: the
//! `auth-call` example against the harness origin as its auth service, and the `call-probe`
//! test module (responses, several calls in flight, root-context calls on ticks, both
//! isolation modes, clients that leave early, load, memory).

mod harness;

use std::path::Path;
#[allow(unused_imports)]
use std::time as _unused_time;

use harness::{Ats, example_wasm};

fn yaml(name: &str, wasm: &Path, configuration: &str, upstreams: &[(&str, String)]) -> String {
    let mut ups = String::new();
    if !upstreams.is_empty() {
        ups.push_str("  upstreams:\n");
        for (k, v) in upstreams {
            ups.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n{ups}  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

/// ATS with `auth-call` asking the harness origin (`/check?allow=good…`) with `timeout_ms`.
fn auth_ats(isolation: &str, check_query: &str, timeout_ms: u64, upstream: Option<String>) -> Ats {
    let b = Ats::builder().net_threads(2);
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let config = format!(
        r#"{{"upstream": "auth", "path": "/check?allow=good{check_query}", "authority": "auth.local", "timeout_ms": {timeout_ms}}}"#
    );
    b.config_file(
        "auth.yaml",
        yaml("auth-call", &example_wasm("auth-call"), &config, &[("auth", upstream.unwrap_or(origin))]),
    )
    .plugin(&[&format!("--isolation={isolation}"), "auth.yaml"])
    .start()
}

#[test]
fn auth_call_lets_good_tokens_through_and_denies_the_rest() {
    for isolation in ["shared", "transaction"] {
        let ats = auth_ats(isolation, "", 2000, None);
        ats.origin().clear();
        let r = ats.request("GET", "/page", &[("Authorization", "Bearer good")], b"");
        assert_eq!(r.status, 200, "{isolation}: {r:?}\n{}", ats.failure_report());
        assert!(r.body_str().starts_with("GET /page HTTP/1.1"), "the origin answered: {r:?}");

        let r = ats.request("GET", "/page", &[("Authorization", "Bearer bad")], b"");
        assert_eq!((r.status, r.header("x-auth")), (403, Some("status 401")), "{isolation}: {r:?}");
        let r = ats.get("/page");
        assert_eq!((r.status, r.header("x-auth")), (403, Some("status 401")), "{isolation}: {r:?}");

        // What the auth service saw: the call's path, Host from :authority, the client's
        // Authorization, and no marker header.
        let seen = ats.origin().seen();
        let checks: Vec<_> = seen.iter().filter(|s| s.path.starts_with("/check")).collect();
        assert_eq!(checks.len(), 3, "{isolation}: {seen:?}");
        assert_eq!(checks[0].header("host"), Some("auth.local"));
        assert_eq!(checks[0].header("authorization"), Some("Bearer good"));
        assert_eq!(checks[1].header("authorization"), Some("Bearer bad"));
        assert!(checks.iter().all(|c| c.header("x-ats-wasm-call").is_none()), "{checks:?}");
        // Denied requests never reach the origin's /page.
        assert_eq!(seen.iter().filter(|s| s.path == "/page").count(), 1, "{isolation}: {seen:?}");
    }
}
