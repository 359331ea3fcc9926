//! The example filters through a real `traffic_server` with 2 net threads: `deny` (local
//! responses that stop the chain), `echo-properties` (properties from ATS, and which VM served
//! each transaction in both isolation modes).

mod harness;

use std::collections::HashSet;

use harness::{Ats, example_wasm, filter_yaml};

fn deny_then_add_headers() -> Ats {
    Ats::builder()
        .net_threads(2)
        .config_file(
            "deny.yaml",
            filter_yaml(
                "deny",
                &example_wasm("deny"),
                r#"{"path_prefixes": ["/admin"], "user_agents": ["evil-bot"], "status": 403, "body": "denied\n"}"#,
            ),
        )
        .config_file(
            "local200.yaml",
            filter_yaml(
                "local200",
                &example_wasm("deny"),
                r#"{"path_prefixes": ["/local-ok"], "status": 200, "body": "hello from wasm\n"}"#,
            ),
        )
        .config_file(
            "redirect.yaml",
            filter_yaml(
                "redirect",
                &example_wasm("deny"),
                r#"{"path_prefixes": ["/moved"], "status": 302, "body": ""}"#,
            ),
        )
        .config_file(
            "add.yaml",
            filter_yaml(
                "add",
                &example_wasm("add-headers"),
                r#"{"request_headers": {"x-second": "ran"}, "response_headers": {"x-second": "ran"}}"#,
            ),
        )
        .plugin(&["deny.yaml", "local200.yaml", "redirect.yaml", "add.yaml"])
        .start()
}

#[test]
fn deny_answers_locally_and_stops_the_rest_of_the_chain() {
    let ats = deny_then_add_headers();

    let r = ats.get("/admin/panel");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body_str(), "denied\n");
    assert_eq!(r.header("x-denied-by"), Some("path prefix /admin"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-second"), None, "the later filter's callbacks must not run");

    let r = ats.request("GET", "/ua", &[("User-Agent", "evil-bot/1.0")], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-denied-by"), Some("user agent evil-bot"));

    // Any status works, 2xx and 3xx included (the upstream plugin turns them into 500).
    let r = ats.get("/local-ok");
    assert_eq!((r.status, r.body_str().as_ref()), (200, "hello from wasm\n"), "{r:?}");
    let r = ats.get("/moved/here");
    assert_eq!(r.status, 302, "{r:?}");

    let seen: Vec<String> = ats.origin().seen().into_iter().map(|s| s.path).collect();
    for p in ["/admin/panel", "/ua", "/local-ok", "/moved/here"] {
        assert!(!seen.iter().any(|s| s == p), "the origin must not see {p}: {seen:?}");
    }

    // Allowed requests go through every filter.
    let r = ats.get("/public");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-second"), Some("ran"));
    let seen = ats.origin().seen();
    assert_eq!(seen.iter().find(|s| s.path == "/public").and_then(|s| s.header("x-second")), Some("ran"));

    // Keep-alive survives local responses.
    let mut c = ats.client();
    for _ in 0..3 {
        assert_eq!(c.get("/admin", &[]).expect("request").status, 403);
        assert_eq!(c.get("/public", &[]).expect("request").status, 200);
    }
}

fn echo_ats(isolation: &str) -> Ats {
    let config = r#"{"request.path": "string", "request.url_path": "string", "request.query": "string", "request.host": "string", "request.scheme": "string", "request.method": "string", "request.protocol": "string", "request.useragent": "string", "request.referer": "string", "request.headers.x-custom": "string", "request.time": "int", "request.duration": "int", "source.address": "string", "source.port": "int", "destination.address": "string", "destination.port": "int", "connection.id": "int", "connection.mtls": "bool", "upstream.address": "string", "upstream.port": "int", "response.code": "int", "response.code_details": "string", "response.headers.content-type": "string", "plugin_name": "string", "plugin_root_id": "string", "no.such.property": "string", "@vm_id": "int"}"#;
    Ats::builder()
        .net_threads(2)
        .config_file("echo.yaml", filter_yaml("echo", &example_wasm("echo-properties"), config))
        .plugin(&[&format!("--isolation={isolation}"), "echo.yaml"])
        .start()
}

#[test]
fn echo_properties_reports_the_documented_values() {
    let ats = echo_ats("shared");
    let r = ats.request(
        "GET",
        "/props/a?x=1",
        &[("User-Agent", "props-test/1"), ("Referer", "http://ref.example/"), ("X-Custom", "custom value")],
        b"",
    );
    assert_eq!(r.status, 200);
    let p = |name: &str| {
        r.header(&format!("x-prop-{name}")).unwrap_or_else(|| panic!("no x-prop-{name}: {r:?}")).to_string()
    };
    assert_eq!(p("request-path"), "/props/a?x=1");
    assert_eq!(p("request-url_path"), "/props/a");
    assert_eq!(p("request-query"), "x=1");
    assert_eq!(p("request-host"), format!("127.0.0.1:{}", ats.port()));
    assert_eq!(p("request-scheme"), "http");
    assert_eq!(p("request-method"), "GET");
    assert_eq!(p("request-protocol"), "HTTP/1.1");
    assert_eq!(p("request-useragent"), "props-test/1");
    assert_eq!(p("request-referer"), "http://ref.example/");
    assert_eq!(p("request-headers-x-custom"), "custom value");
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let t: i64 = p("request-time").parse().unwrap();
    assert!((now_ns - t).abs() < 60_000_000_000, "request.time {t} is a timestamp in ns near {now_ns}");
    let d: i64 = p("request-duration").parse().unwrap();
    assert!((0..60_000_000_000).contains(&d), "request.duration {d} ns");
    // Addresses without ports, ports as integers in host byte order.
    assert_eq!(p("source-address"), "127.0.0.1");
    let sport: i64 = p("source-port").parse().unwrap();
    assert!(sport > 0 && sport < 65536 && sport != ats.port() as i64, "source.port {sport}");
    assert_eq!(p("destination-address"), "127.0.0.1");
    assert_eq!(p("destination-port"), ats.port().to_string());
    assert!(p("connection-id").parse::<i64>().unwrap() >= 0);
    assert_eq!(p("connection-mtls"), "false");
    assert_eq!(p("upstream-address"), "127.0.0.1");
    assert_eq!(p("upstream-port"), ats.origin().port().to_string());
    assert_eq!(p("response-code"), "200");
    assert_eq!(p("response-code_details"), "via_upstream");
    assert_eq!(p("response-headers-content-type"), "text/plain");
    assert_eq!(p("plugin_name"), "echo");
    assert_eq!(p("plugin_root_id"), "echo");
    assert_eq!(p("no-such-property"), "<not found>");
}

/// `n` requests over `conns` connections; the `x-vm-id` each response reports.
fn vm_ids(ats: &Ats, conns: usize, per_conn: usize) -> Vec<String> {
    let port = ats.port();
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = harness::Client::connect(port).expect("connect");
                (0..per_conn)
                    .map(|i| {
                        let r = client.get(&format!("/vm/{c}/{i}"), &[]).expect("request");
                        assert_eq!(r.status, 200);
                        r.header("x-vm-id").expect("x-vm-id").to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
}

#[test]
fn transaction_isolation_never_shares_a_vm_and_shared_isolation_reuses_the_threads_vms() {
    let tx = echo_ats("transaction");
    let ids = vm_ids(&tx, 20, 100);
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 2000);
    assert_eq!(distinct.len(), ids.len(), "transaction isolation: every transaction had a VM of its own");

    let shared = echo_ats("shared");
    let ids = vm_ids(&shared, 20, 100);
    let distinct: HashSet<_> = ids.iter().collect();
    // 2 net threads × pool size 1 (plus at most one replacement each, none expected here).
    assert!(distinct.len() <= 2, "shared isolation reuses each thread's VM: {} VMs", distinct.len());
}

fn ticker_ats(isolation: &str) -> Ats {
    Ats::builder()
        .net_threads(2)
        .config_file("ticker.yaml", filter_yaml("ticker", &example_wasm("ticker"), r#"{"period_ms": 50}"#))
        .plugin(&[&format!("--isolation={isolation}"), "ticker.yaml"])
        .start()
}

fn ticks(r: &harness::Response) -> u64 {
    r.header("x-ticks").unwrap_or_else(|| panic!("no x-ticks: {r:?}")).parse().expect("a number")
}

#[test]
fn ticks_reach_the_root_context_in_both_isolation_modes() {
    for isolation in ["shared", "transaction"] {
        let ats = ticker_ats(isolation);
        // The first transactions on each thread start that thread's timer.
        let first = (0..4).map(|_| ticks(&ats.get("/t"))).max().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        let later = ticks(&ats.get("/t"));
        // 800 ms at a 50 ms period is ~16 ticks per ticking thread; allow for a loaded machine.
        assert!(later >= first + 4, "{isolation}: ticks went from {first} to {later}");
        assert!(ats.is_running());
    }
}

#[test]
fn a_paused_request_is_resumed_by_a_tick_and_others_are_not_held() {
    let ats = ticker_ats("shared");
    let port = ats.port();
    let held: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = harness::Client::connect(port).expect("connect");
                c.get(&format!("/held/{i}"), &[("x-hold", "1")]).expect("request")
            })
        })
        .collect();
    // Requests without x-hold go straight through meanwhile.
    for _ in 0..5 {
        let r = ats.get("/free");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-held"), None);
    }
    for h in held {
        let r = h.join().expect("held request");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-held"), Some("released"), "{r:?}");
    }
    let seen: Vec<String> = ats.origin().seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen.iter().filter(|p| p.starts_with("/held/")).count(), 8, "every held request reached the origin");
}

#[test]
fn writable_properties_change_what_the_origin_sees() {
    let config = r#"{"=request.path": "/rewritten?by=property", "=request.method": "DELETE", "=request.headers.x-set-by": "property", "request.path": "string"}"#;
    let ats = Ats::builder()
        .net_threads(2)
        .config_file("echo.yaml", filter_yaml("echo", &example_wasm("echo-properties"), config))
        .plugin(&["echo.yaml"])
        .start();
    let r = ats.get("/original");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = ats.origin().seen();
    let req = seen.iter().find(|s| s.header("x-set-by") == Some("property")).expect("the origin saw the set header");
    assert_eq!(req.path, "/rewritten?by=property");
    assert_eq!(req.method, "DELETE");
    // request.path reads ATS's pre-remap URL, which includes what filters changed in
    // READ_REQUEST_HDR (but not what remap rewrote).
    assert_eq!(r.header("x-prop-request-path"), Some("/rewritten?by=property"));
    assert!(!ats.diags_log().contains("failed"), "{}", ats.diags_log());
}

#[test]
fn shared_queue_items_reach_the_registering_vm_on_its_own_thread() {
    let ats = ticker_ats("shared");
    // Let both net threads create their VMs (each registers the queue; the last one owns it).
    let port = ats.port();
    let warm: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = harness::Client::connect(port).expect("connect");
                for _ in 0..5 {
                    c.get("/warm", &[]).expect("request");
                }
            })
        })
        .collect();
    for w in warm {
        w.join().unwrap();
    }
    for i in 0..5 {
        let value = format!("item-{i}");
        let r = ats.request("GET", "/enqueue", &[("x-enqueue", &value)], b"");
        assert_eq!(r.status, 200);
        // proxy_on_queue_ready runs on the owning VM's thread, soon after the enqueue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let seen = ats.get("/check");
            if seen.header("x-last-dequeued") == Some(value.as_str()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{value} never reached on_queue_ready: {seen:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(!ats.diags_log().contains("failed"), "{}", ats.diags_log());
}

#[test]
fn a_request_waiting_on_its_own_vms_queue_is_resumed_in_both_isolation_modes() {
    // `x-wait` registers `ticker.wait` from the request's VM and pauses; `x-signal` enqueues.
    // In `transaction` isolation the queue's owner is the waiting transaction's own VM, which
    // no pool holds: the notification has to reach it through the transaction.
    for isolation in ["shared", "transaction"] {
        let ats = ticker_ats(isolation);
        let port = ats.port();
        let waiter = std::thread::spawn(move || {
            let mut c = harness::Client::connect(port).expect("connect");
            c.set_timeout(std::time::Duration::from_secs(20)).expect("timeout");
            c.get("/wait", &[("x-wait", "1")])
        });
        // Give the waiter time to register the queue and pause; it must not have gone on.
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(ats.origin().seen().iter().all(|s| s.path != "/wait"), "{isolation}: the waiter is paused");
        assert_eq!(ats.get("/meanwhile").status, 200, "{isolation}: ATS serves while the waiter waits");
        let signal = ats.request("GET", "/signal", &[("x-signal", &format!("go-{isolation}"))], b"");
        assert_eq!(signal.status, 200, "{signal:?}");
        let r = waiter.join().expect("waiter").unwrap_or_else(|e| panic!("{isolation}: the waiter got no answer: {e}"));
        assert_eq!(r.status, 200, "{isolation}: {r:?}");
        assert_eq!(r.header("x-signaled"), Some(format!("go-{isolation}").as_str()), "{isolation}: {r:?}");
        assert!(
            ats.origin().seen().iter().any(|s| s.path == "/wait"),
            "{isolation}: the resumed request reached the origin"
        );
    }
}

/// `examples/remap/`: each rule of its remap.config runs exactly its filters.
#[test]
fn the_remap_example_gives_each_rule_its_own_filters() {
    let dir = harness::repo_root().join("examples/remap");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("example file");
    let b = Ats::builder().net_threads(2);
    let origin = format!("127.0.0.1:{}", b.origin_port());
    let plugin = harness::plugin_so().display().to_string();
    let remap = read("remap.config").replace("ORIGIN", &origin).replace("libats_wasm.so", &plugin);
    let module = |name: &str| std::fs::read(example_wasm(name)).expect("example module");
    let mut b = b
        .config_file("route-api.yaml", read("route-api.yaml"))
        .config_file("route-admin.yaml", read("route-admin.yaml"))
        .config_file("add_headers.wasm", module("add-headers"))
        .config_file("deny.wasm", module("deny"));
    for line in remap.lines().filter(|l| l.starts_with("map ")) {
        b = b.remap(line);
    }
    let ats = b.start();
    let get = |host: &str, path: &str| ats.request("GET", path, &[("Host", host)], b"");
    let r = get("api.example", "/v1");
    assert_eq!((r.status, r.header("x-route")), (200, Some("api")), "{r:?}\n{}", ats.failure_report());
    assert!(r.body_str().contains("x-route: api"), "the origin saw the mark: {r:?}");
    let r = get("admin.example", "/private/x");
    assert_eq!((r.status, r.body_str().as_ref()), (403, "denied by route-admin\n"), "{r:?}");
    let r = get("admin.example", "/public");
    assert_eq!((r.status, r.header("x-route")), (200, Some("api")), "{r:?}");
    for host in ["static.example", "other.example"] {
        let r = get(host, "/");
        assert_eq!((r.status, r.header("x-route")), (200, None), "{host}: {r:?}");
    }
    assert!(ats.origin().seen().iter().all(|s| !s.path.starts_with("/private")));
}
