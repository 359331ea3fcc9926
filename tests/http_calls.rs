//! HTTP calls (`proxy_http_call`) through a real `traffic_server` with 2 net threads: the
//! `auth-call` example against the harness origin as its auth service, and the `call-probe`
//! test module (responses, several calls in flight, root-context calls on ticks, both
//! isolation modes, clients that leave early, load, memory).

mod harness;

use std::path::Path;
#[allow(unused_imports)]
use std::time as _unused_time;
use std::time::{Duration, Instant};

use harness::{Ats, Client, example_wasm, free_port};

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

#[test]
fn auth_call_fails_closed_when_the_service_is_down_or_too_slow() {
    // Nothing listens on the auth port: the call fails (ATS's own 502 is not an answer).
    let ats = auth_ats("shared", "", 2000, Some(format!("127.0.0.1:{}", free_port())));
    let r = ats.request("GET", "/page", &[("Authorization", "Bearer good")], b"");
    assert_eq!((r.status, r.header("x-auth")), (403, Some("unavailable")), "{r:?}\n{}", ats.failure_report());
    drop(ats);

    // The service answers after 3 s; the call's timeout is 300 ms.
    let delay = Duration::from_millis(3000);
    let ats = auth_ats("transaction", "&delay_ms=3000", 300, None);
    let t = Instant::now();
    let r = ats.request("GET", "/page", &[("Authorization", "Bearer good")], b"");
    let took = t.elapsed();
    assert_eq!((r.status, r.header("x-auth")), (403, Some("unavailable")), "{r:?}");
    assert!(took >= Duration::from_millis(300) && took < delay / 2, "answered after {took:?}");
    // ATS keeps serving once the late answer arrived and was dropped.
    std::thread::sleep(delay);
    let r = ats.request("GET", "/page", &[("Authorization", "Bearer good")], b"");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(ats.is_running());
}

/// ATS with the `call-probe` module; its `origin` cluster is the harness origin.
fn probe_ats(isolation: &str, configuration: &str) -> Ats {
    let b = Ats::builder().net_threads(2);
    let origin = format!("127.0.0.1:{}", b.origin_port());
    b.config_file("probe.yaml", yaml("call-probe", &example_wasm("call-probe"), configuration, &[("origin", origin)]))
        .plugin(&[&format!("--isolation={isolation}"), "probe.yaml"])
        .start()
}

#[test]
fn call_response_headers_body_and_status_are_readable_in_both_isolations() {
    for isolation in ["shared", "transaction"] {
        let ats = probe_ats(isolation, "{}");
        let r = ats.request(
            "GET",
            "/client",
            &[("x-call-paths", "/called?status=203&header=X-Test:hello"), ("x-call-read-header", "x-test")],
            b"",
        );
        assert_eq!(r.status, 200, "{isolation}: {r:?}\n{}", ats.failure_report());
        assert_eq!(r.header("x-call-status"), Some("203"), "{r:?}");
        assert_eq!(r.header("x-call-header"), Some("hello"), "{r:?}");
        assert_eq!(r.header("x-call-trailers"), Some("0"), "{r:?}");
        // :status, Cache-Control, Content-Type, X-Origin-Count, X-Test, Content-Length at least.
        let n: usize = r.header("x-call-num-headers").unwrap().parse().unwrap();
        assert!(n >= 6, "{r:?}");
        // The body is what the origin saw of the call: its request line and the probe's header.
        let body = r.header("x-call-body").unwrap();
        assert!(body.starts_with("GET /called?status=203&header=X-Test:hello HTTP/1.1|"), "{body}");
        assert!(body.contains("x-probe: 1"), "{body}");
        let size: usize = r.header("x-call-body-size").unwrap().parse().unwrap();
        let seen = ats.origin().seen();
        let called = seen.iter().find(|s| s.path.starts_with("/called")).expect("the call reached the origin");
        assert_eq!(called.header("host"), Some("origin"));
        assert_eq!(called.header("x-probe"), Some("1"));
        assert!(size > 40 && size < 2000, "{size}");
        // The request continued to the origin afterwards.
        assert!(seen.iter().any(|s| s.path == "/client"), "{seen:?}");

        // A local response from the call callback: the origin never sees /local.
        let r = ats.request("GET", "/local", &[("x-call-paths", "/called-for-local"), ("x-call-reply", "local")], b"");
        assert_eq!((r.status, r.header("x-call-status")), (200, Some("200")), "{r:?}");
        assert!(r.body_str().starts_with("GET /called-for-local HTTP/1.1\r\n"), "{r:?}");
        assert!(!ats.origin().seen().iter().any(|s| s.path == "/local"));

        // A call to an unknown cluster is refused at once (BadArgument).
        let r = ats.request("GET", "/x", &[("x-call-paths", "/y"), ("x-call-upstream", "nowhere")], b"");
        assert_eq!((r.status, r.header("x-call-status")), (200, Some("BadArgument")), "{r:?}");
    }
}

#[test]
fn several_calls_are_in_flight_at_once_in_both_phases() {
    let ats = probe_ats("shared", "{}");
    // Three calls of 1 s each: answered together, not one after the other.
    let paths = "/a?delay_ms=1000,/b?delay_ms=1000&status=404,/c?delay_ms=1000&status=500";
    let t = Instant::now();
    let r = ats.request("GET", "/three", &[("x-call-paths", paths)], b"");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}\n{}", ats.failure_report());
    assert_eq!(r.header("x-call-status"), Some("200,404,500"), "{r:?}");
    assert!(took < Duration::from_millis(2500), "three 1 s calls took {took:?}");

    // From the response phase (the response is parked, then continued with the results).
    let r = ats.request("GET", "/resp", &[("x-call-paths", "/r1,/r2?status=201"), ("x-call-on", "response")], b"");
    assert_eq!((r.status, r.header("x-call-status")), (200, Some("200,201")), "{r:?}");
    assert!(r.body_str().starts_with("GET /resp HTTP/1.1"), "{r:?}");

    // One call times out, the others answer.
    let r = ats.request(
        "GET",
        "/mixed",
        &[("x-call-paths", "/fast,/slow?delay_ms=2000,/fast2"), ("x-call-timeout-ms", "500")],
        b"",
    );
    assert_eq!((r.status, r.header("x-call-status")), (200, Some("200,fail,200")), "{r:?}");
    assert_eq!(r.header("x-call-num-headers").map(|h| h.split(',').nth(1)), Some(Some("0")), "{r:?}");
}

fn tick_calls(r: &harness::Response) -> u64 {
    r.header("x-tick-calls").and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn the_root_context_calls_on_ticks_in_both_isolations() {
    for isolation in ["shared", "transaction"] {
        let ats = probe_ats(isolation, r#"{"tick_call": "/tick", "period_ms": 50}"#);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while n < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            n = tick_calls(&ats.get("/look"));
        }
        assert!(n >= 4, "{isolation}: {n} tick calls answered\n{}", ats.failure_report());
        let ticks = ats.origin().seen().iter().filter(|s| s.path == "/tick").count() as u64;
        assert!(ticks >= n, "{isolation}: origin saw {ticks} tick calls, the VMs counted {n}");
    }
}

#[test]
fn clients_leaving_and_transactions_ending_before_their_calls_complete_are_safe() {
    for isolation in ["shared", "transaction"] {
        let ats = probe_ats(isolation, "{}");
        for i in 0..10 {
            let mut c = Client::connect(ats.port()).unwrap();
            let req = format!(
                "GET /gone{i} HTTP/1.1\r\nHost: x\r\nx-call-paths: /late{i}?delay_ms=800,/late{i}b?delay_ms=300\r\nx-call-timeout-ms: {}\r\n\r\n",
                if i % 2 == 0 { 5000 } else { 100 }
            );
            c.send_raw(req.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            drop(c);
        }
        // Transactions that do not wait for their calls end first; the answers (all 200) come
        // later and must be dropped, not handed to the root context (which would count them
        // in `x-tick-calls`).
        for i in 0..10 {
            let r = ats.request(
                "GET",
                &format!("/detached{i}"),
                &[("x-call-paths", "/late?delay_ms=500"), ("x-call-detach", "1")],
                b"",
            );
            assert_eq!((r.status, tick_calls(&r)), (200, 0), "{isolation}: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(1500));
        assert!(ats.is_running(), "{isolation}\n{}", ats.failure_report());
        let late = ats.origin().seen().iter().filter(|s| s.path == "/late?delay_ms=500").count();
        assert_eq!(late, 10, "{isolation}: every detached call reached the origin");
        let r = ats.request("GET", "/after", &[("x-call-paths", "/ok")], b"");
        assert_eq!((r.status, r.header("x-call-status")), (200, Some("200")), "{isolation}: {r:?}");
        assert_eq!(tick_calls(&r), 0, "{isolation}: a late response reached the root context");
        assert!(!ats.diags_log().contains("panic"), "{}", ats.diags_log());
    }
}

/// `n` requests with a good token over `conns` keep-alive connections; every one must be 200
/// with the origin's echo of its own path.
fn load(ats: &Ats, conns: usize, n: usize) {
    let port = ats.port();
    let per = n / conns;
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                c.set_timeout(Duration::from_secs(30)).unwrap();
                for i in 0..per {
                    let path = format!("/load/{w}/{i}");
                    let r = match c.get(&path, &[("Authorization", "Bearer good")]) {
                        Ok(r) => r,
                        Err(_) => {
                            // ATS may close a keep-alive connection; reconnect once.
                            c = Client::connect(port).unwrap();
                            c.set_timeout(Duration::from_secs(30)).unwrap();
                            c.get(&path, &[("Authorization", "Bearer good")]).unwrap()
                        }
                    };
                    assert_eq!(r.status, 200, "{path}: {r:?}");
                    assert!(r.body_str().starts_with(&format!("GET {path} HTTP/1.1")), "{path}: {r:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a load worker failed");
    }
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn concurrent_load_with_calls_is_correct_in_both_isolations() {
    for isolation in ["shared", "transaction"] {
        let ats = auth_ats(isolation, "", 5000, None);
        let t = Instant::now();
        load(&ats, 20, 2000);
        eprintln!("{isolation}: 2,000 requests with calls over 20 connections in {:?}", t.elapsed());
        assert!(ats.is_running());
    }
}

/// Requests (each with one call) measured after the warm-up.
const RSS_REQUESTS: usize = 20_000;

#[test]
fn memory_stays_flat_over_many_requests_with_calls() {
    let ats = auth_ats("shared", "", 5000, None);
    // Warm-up: ATS's allocators and its pool of upstream connections settle within the first
    // ~10,000 requests (measured: +5.5 % over requests 2,000-22,000, then +0.1 % over the next
    // 80,000).
    load(&ats, 20, 10_000);
    let warm = vm_rss_kb(ats.pid());
    load(&ats, 20, RSS_REQUESTS);
    let end = vm_rss_kb(ats.pid());
    eprintln!("VmRSS after 10,000 requests {warm} kB, after {RSS_REQUESTS} more {end} kB");
    assert!(end <= warm + warm / 20, "VmRSS grew from {warm} kB to {end} kB");
    assert!(ats.is_running());
}

/// A loopback HTTPS server (python3's `http.server` with a fresh self-signed certificate)
/// answering every GET with `200`, `X-Tls: yes` and `tls ok <path> host=<Host>`.
struct TlsOrigin {
    child: std::process::Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl TlsOrigin {
    fn start() -> TlsOrigin {
        let dir = std::env::temp_dir().join(format!("ats-wasm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success(), "openssl req failed");
        let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("tls ok " + self.path + " host=" + self.headers.get("Host", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Tls", "yes")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
        let port = free_port();
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS origin did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin { child, port, _dir: dir }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[test]
fn https_upstreams_are_reached_over_tls_by_ats() {
    let tls = TlsOrigin::start();
    let b = Ats::builder()
        .net_threads(2)
        // A self-signed test certificate: no verification (see docs/operations.md, "HTTP calls").
        .record("CONFIG proxy.config.ssl.client.verify.server.policy STRING DISABLED");
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let ats = b
        .config_file(
            "probe.yaml",
            yaml(
                "call-probe",
                &example_wasm("call-probe"),
                "{}",
                &[("origin", origin), ("secure", format!("https://127.0.0.1:{}", tls.port))],
            ),
        )
        .plugin(&["probe.yaml"])
        .start();
    // The TLS server spoken to in plain http gives no HTTP answer: the call fails. (First:
    // once a TLS connection to that address is pooled, ATS 9.2 reuses it for `http` calls to
    // the same IP, port and host too — its session matching does not look at the scheme.)
    let plain = format!("127.0.0.1:{}", tls.port);
    let r = ats.request("GET", "/plain", &[("x-call-paths", "/x"), ("x-call-upstream", plain.as_str())], b"");
    assert_eq!((r.status, r.header("x-call-status")), (200, Some("fail")), "{r:?}");

    let r = ats.request(
        "GET",
        "/tls",
        &[("x-call-paths", "/secret?a=1"), ("x-call-upstream", "secure"), ("x-call-read-header", "x-tls")],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", ats.failure_report());
    assert_eq!(r.header("x-call-status"), Some("200"), "{r:?}\n{}", ats.failure_report());
    assert_eq!(r.header("x-call-header"), Some("yes"), "{r:?}");
    assert_eq!(r.header("x-call-body"), Some("tls ok /secret?a=1 host=origin"), "{r:?}");
}

/// ATS with `call-probe` (its `origin` cluster is the harness origin), the plugin argument
/// `--pause-timeout-ms=<arg_ms>`, and in its YAML `fail_open: <fail_open>` and the lines
/// `yaml_extra`.
fn pause_timeout_ats(arg_ms: u64, fail_open: bool, yaml_extra: &str) -> Ats {
    let b = Ats::builder().net_threads(2);
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let y = yaml("call-probe", &example_wasm("call-probe"), "{}", &[("origin", origin)]).replacen(
        "config:\n",
        &format!("config:\n  fail_open: {fail_open}\n{yaml_extra}"),
        1,
    );
    b.config_file("probe.yaml", y).plugin(&[&format!("--pause-timeout-ms={arg_ms}"), "probe.yaml"]).start()
}

/// `ats_wasm_callback_failures_total{filter="call-probe",reason="pause_timeout",scope="global"}`.
fn pause_timeouts(ats: &Ats) -> u64 {
    let port = ats.metrics_port().expect("metrics endpoint");
    let r = Client::connect(port).unwrap().get("/metrics", &[("Connection", "close")]).expect("scrape");
    let body = r.body_str();
    let line = body.lines().find(|l| {
        l.starts_with(r#"ats_wasm_callback_failures_total{filter="call-probe",reason="pause_timeout",scope="global"}"#)
    });
    line.and_then(|l| l.rsplit_once(' ')).map_or(0, |(_, v)| v.parse::<f64>().unwrap() as u64)
}

#[test]
fn a_filter_that_keeps_a_transaction_paused_too_long_meets_its_failure_policy() {
    // The probe pauses until its call answers; the call takes 4 s, the pause may last 600 ms.
    let slow = [("x-call-paths", "/slow?delay_ms=4000"), ("x-call-timeout-ms", "10000")];
    let ats = pause_timeout_ats(600, false, "");
    let t = Instant::now();
    let r = ats.request("GET", "/held", &slow, b"");
    let took = t.elapsed();
    // fail_closed in the request phase: the filter's 503, the origin never sees the request.
    assert_eq!(r.status, 503, "{r:?}\n{}", ats.failure_report());
    assert!(r.body_str().contains("filter \"call-probe\" failed"), "{r:?}");
    // (ATS's timers may go off a few ms early: its clock is cached per event loop pass.)
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(3000), "answered after {took:?}");
    assert!(!ats.origin().seen().iter().any(|s| s.path == "/held"));
    assert!(
        ats.wait_for_diags(
            "filter \"call-probe\": the paused request failed: not continued within 600 ms (pause timeout); fail_closed",
            Duration::from_secs(2)
        ),
        "{}",
        ats.diags_log()
    );

    // In the response phase: the same 503, not the origin's response.
    let mut both = slow.to_vec();
    both.push(("x-call-on", "response"));
    let mut c = Client::connect_timeout(ats.port(), Duration::from_secs(3)).unwrap();
    let t = Instant::now();
    let r = c.get("/held-response", &both);
    let took = t.elapsed();
    assert!(took < Duration::from_millis(3000), "answered after {took:?}");
    let r = r.expect("an answer");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body_str(), "503 Service Unavailable: filter \"call-probe\" failed\n", "{r:?}");
    assert_eq!(pause_timeouts(&ats), 2);

    // Pauses that end in time cancel their timers: nothing goes off after the transactions
    // closed (a timer of a closed transaction would touch freed memory).
    for i in 0..20 {
        let r = ats.request("GET", &format!("/quick{i}"), &[("x-call-paths", "/fast")], b"");
        assert_eq!((r.status, r.header("x-call-status")), (200, Some("200")), "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert!(ats.is_running(), "{}", ats.failure_report());
    assert_eq!(pause_timeouts(&ats), 2);
    // The late call answers (4 s) reach no parked transaction.
    std::thread::sleep(Duration::from_millis(3000));
    let r = ats.request("GET", "/after", &[("x-call-paths", "/ok")], b"");
    assert_eq!((r.status, r.header("x-call-status")), (200, Some("200")), "{r:?}");
    assert!(!ats.diags_log().contains("panic"), "{}", ats.diags_log());
    drop(ats);

    // fail_open: the request goes on without waiting any longer. The filter's own
    // `pause_timeout_ms` overrides the plugin's 60 s.
    let ats = pause_timeout_ats(60_000, true, "  pause_timeout_ms: 600\n");
    let t = Instant::now();
    let r = ats.request("GET", "/held", &slow, b"");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}\n{}", ats.failure_report());
    assert!(r.body_str().starts_with("GET /held HTTP/1.1"), "{r:?}");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(3000), "answered after {took:?}");
    assert!(ats.diags_log().contains("not continued within 600 ms (pause timeout); fail_open"), "{}", ats.diags_log());
    assert_eq!(pause_timeouts(&ats), 1);
}
