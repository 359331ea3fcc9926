//! Tests of the integration-test harness itself: a private ATS with no plugin in front of the
//! recording origin. They need Debian's `trafficserver` package, not the plugin build.

mod harness;

use harness::{Ats, Client, Origin, chunk_encode, verify_global_plugin};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

fn pid_alive(pid: u32) -> bool {
    // kill(pid, 0) fails with ESRCH once the process is gone (and reaped).
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn get_goes_through_ats_to_origin() {
    let ats = Ats::builder().net_threads(2).start();
    eprintln!("ATS ready in {:?}", ats.started_in());
    assert!(ats.is_running());
    assert!(ats.diags_log().contains("traffic server running"), "{}", ats.diags_log());

    let resp = ats.get("/hello?x=1");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("X-Origin-Count"), Some("1"));
    assert!(resp.body_str().starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{}", resp.body_str());

    let seen = ats.origin().seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(ats.origin().count(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/hello?x=1");
    assert_eq!(req.header("host"), Some(format!("127.0.0.1:{}", ats.origin().port()).as_str()));
    let via = req.header("via").expect("ATS adds a Via header");
    assert!(via.contains("ApacheTrafficServer"), "{via}");
    // The body echoes the forwarded head, headers included.
    assert!(resp.body_str().contains("Via: "), "{}", resp.body_str());
}

#[test]
fn keep_alive_client_and_cache() {
    let ats = Ats::builder().start();
    let mut client = ats.client();
    let t = Instant::now();
    for i in 0..200 {
        let resp = client.get(&format!("/ka?i={i}"), &[]).expect("keep-alive request");
        assert_eq!(resp.status, 200);
        assert!(resp.body_str().starts_with(&format!("GET /ka?i={i} HTTP/1.1")));
        assert!(!client.is_closed(), "ATS closed the keep-alive connection at {i}");
    }
    eprintln!("200 keep-alive requests in {:?}", t.elapsed());
    assert_eq!(ats.origin().count(), 200);

    // A cacheable object: the second fetch is served from cache.
    let first = client.get("/cached?max_age=60", &[]).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("cache-control"), Some("max-age=60"));
    assert_eq!(ats.origin().count(), 201);
    // Let the cache write finish (it completes just after the response is sent).
    thread::sleep(Duration::from_millis(100));
    let second = client.get("/cached?max_age=60", &[]).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("X-Origin-Count"), Some("201"));
    assert_eq!(ats.origin().count(), 201, "second fetch went to the origin");
    assert!(second.header("age").is_some(), "{second:?}");

    // Uncacheable objects are fetched each time.
    let a = ats.get("/nostore");
    let b = ats.get("/nostore");
    assert_eq!(a.header("X-Origin-Count"), Some("202"));
    assert_eq!(b.header("X-Origin-Count"), Some("203"));
}

#[test]
fn two_instances_in_parallel_then_stopped() {
    let handles: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                let ats = Ats::builder().start();
                let resp = ats.get("/who");
                assert_eq!(resp.status, 200);
                ats
            })
        })
        .collect();
    let instances: Vec<Ats> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(instances[0].port(), instances[1].port());
    assert_ne!(instances[0].origin().port(), instances[1].origin().port());
    assert_ne!(instances[0].config_dir(), instances[1].config_dir());
    for ats in &instances {
        // Still serving after the starting thread ended.
        let resp = ats.get("/again");
        assert_eq!(resp.status, 200);
        // Each origin saw this instance's requests and nothing else (a count would be fragile:
        // ATS may retry a request on a fresh origin connection).
        let mut paths: Vec<String> = ats.origin().seen().into_iter().map(|r| r.path).collect();
        paths.dedup();
        assert_eq!(paths, vec!["/who".to_string(), "/again".to_string()]);
        assert!(pid_alive(ats.pid()));
    }
    for ats in &instances {
        let t = Instant::now();
        ats.stop();
        eprintln!("ATS stopped in {:?}", t.elapsed());
        assert!(!ats.is_running());
        assert!(!pid_alive(ats.pid()), "pid {} still exists", ats.pid());
        assert!(ats.exit_status().is_some());
        ats.stop(); // idempotent
        assert!(ats.try_request("GET", "/", &[], b"").is_err(), "nothing listens any more");
    }
}

#[test]
fn verify_global_plugin_rejects_missing_so() {
    let out = verify_global_plugin(Path::new("/nonexistent/libnothing.so"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("/nonexistent/libnothing.so"), "{text}");
    assert!(text.contains("Fail"), "{text}");

    // And a real (bundled) plugin passes.
    let ok = verify_global_plugin(&harness::ats_plugin_dir().join("stats_over_http.so"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn origin_features_through_ats() {
    let ats = Ats::builder().record("CONFIG proxy.config.http.insert_request_via_str INT 1").start();
    // Content-Length request body.
    let resp = ats.request("POST", "/post", &[("X-Test", "a")], b"hello body");
    assert_eq!(resp.status, 200);
    // Chunked request body.
    let mut c = ats.client();
    let chunked = chunk_encode(&[b'y'; 10000], 3000);
    let resp = c.request("POST", "/chunked", &[("Transfer-Encoding", "chunked")], &chunked).unwrap();
    assert_eq!(resp.status, 200);
    // Status, body_size, header=, HEAD, 204.
    let resp = c.get("/missing?status=404", &[]).unwrap();
    assert_eq!((resp.status, resp.reason.as_str()), (404, "Not Found"));
    let resp = c.get("/big?body_size=300000", &[]).unwrap();
    assert_eq!(resp.body.len(), 300000);
    assert!(resp.body.iter().all(|&b| b == b'x'));
    let resp = c.get("/h?header=X-Extra%3A%20one&header=X-Extra:two", &[]).unwrap();
    assert_eq!(resp.headers_named("x-extra"), vec!["one", "two"]);
    let resp = c.request("HEAD", "/head?body_size=1234", &[], b"").unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    let resp = c.get("/empty?status=204", &[]).unwrap();
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
    // The connection still works after all of those.
    let resp = c.get("/last", &[]).unwrap();
    assert_eq!(resp.status, 200);

    let seen = ats.origin().seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/post",
            "/chunked",
            "/missing?status=404",
            "/big?body_size=300000",
            "/h?header=X-Extra%3A%20one&header=X-Extra:two",
            "/head?body_size=1234",
            "/empty?status=204",
            "/last"
        ]
    );
    assert_eq!(seen[0].body, b"hello body");
    assert_eq!(seen[0].header("x-test"), Some("a"));
    assert_eq!(seen[1].body, vec![b'y'; 10000]);
    assert_eq!(seen[5].method, "HEAD");
}

#[test]
fn origin_alone_reads_bodies_and_keeps_alive() {
    let origin = Origin::new();
    let mut s = TcpStream::connect(("127.0.0.1", origin.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = b"POST /a?max_age=5 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunk_encode(b"abcdef", 4));
    req.extend_from_slice(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz");
    s.write_all(&req).unwrap();
    let mut c = ClientOver(s);
    let r1 = c.read();
    assert!(r1.starts_with("HTTP/1.1 200 OK\r\n"), "{r1}");
    assert!(r1.contains("Cache-Control: max-age=5\r\n"), "{r1}");
    assert!(r1.contains("X-Origin-Count: 1\r\n"), "{r1}");
    let r2 = c.read();
    assert!(r2.contains("Cache-Control: no-store\r\n"), "{r2}");
    assert!(r2.contains("X-Origin-Count: 2\r\n"), "{r2}");
    assert!(r2.ends_with("PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"), "{r2}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, b"abcdef");
    assert_eq!(seen[1].body, b"xyz");
    assert_eq!(seen[1].headers[1], ("Content-Length".to_string(), "3".to_string()));

    // Dropping the origin closes its connections and does not hang.
    let t = Instant::now();
    drop(origin);
    assert!(t.elapsed() < Duration::from_secs(2));
    let mut buf = [0u8; 16];
    assert_eq!(c.0.read(&mut buf).unwrap_or(0), 0);
}

/// Reads whole responses (Content-Length framed) off a raw socket.
struct ClientOver(TcpStream);

impl ClientOver {
    fn read(&mut self) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf.clone()).unwrap();
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().trim().parse().unwrap();
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).unwrap();
        buf.extend_from_slice(&body);
        String::from_utf8(buf).unwrap()
    }
}

#[test]
fn client_sees_connection_close() {
    let ats = Ats::builder().start();
    let mut c: Client = ats.client();
    let resp = c.get("/bye", &[("Connection", "close")]).unwrap();
    assert_eq!(resp.status, 200);
    assert!(c.is_closed());
    assert!(c.get("/again", &[]).is_err());
}

#[test]
fn bad_plugin_line_fails_start_with_logs() {
    let t = Instant::now();
    let err = match Ats::builder().plugin_line("/nonexistent/libnothing.so").try_start() {
        Ok(_) => panic!("ATS started with a missing plugin"),
        Err(e) => e,
    };
    // Not a speed check: a failed start must not hang (12 s were seen on a loaded machine).
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert!(err.contains("traffic_server exited"), "{err}");
    assert!(err.contains("/nonexistent/libnothing.so"), "{err}");
    assert!(err.contains("--- diags.log ---"), "{err}");
}

/// Drop during a panic prints the logs (run with `--nocapture` to see them); it must neither
/// hang nor double-panic.
#[test]
#[should_panic(expected = "deliberate failure")]
fn drop_while_panicking_dumps_logs() {
    let ats = Ats::builder().start();
    let report = ats.failure_report();
    assert!(report.contains("diags.log"), "{report}");
    assert!(report.contains("traffic server running"), "{report}");
    panic!("deliberate failure (ATS on port {})", ats.port());
}

#[test]
fn port_clash_is_detected_and_retried() {
    // Force ATS onto a port that is taken: every attempt fails to bind, the harness retries
    // (3 attempts in all) and then reports the bind failure.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let t = Instant::now();
    let err = match Ats::builder()
        .record(&format!("CONFIG proxy.config.http.server_ports STRING {taken}:ip-in=127.0.0.1"))
        .try_start()
    {
        Ok(_) => panic!("ATS started on a taken port"),
        Err(e) => e,
    };
    eprintln!("port clash reported after {:?}", t.elapsed());
    assert!(err.contains("Address already in use"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn records_yaml_for_ats10_is_flat_typed_renamed_and_the_later_line_wins() {
    let yaml = harness::records_yaml(
        "CONFIG proxy.config.exec_thread.autoconfig INT 0\n\
         CONFIG proxy.config.diags.debug.tags STRING ats_wasm\n\
         CONFIG proxy.config.admin.user_id STRING #-1\n\
         CONFIG proxy.config.http.cache.http INT 1\n\
         CONFIG proxy.config.exec_thread.autoconfig.scale FLOAT 1.5\n\
         CONFIG proxy.config.diags.debug.tags STRING a|\"b\"\n\
         not a record line\n",
    );
    assert_eq!(
        yaml,
        "records:\n\
         \x20 exec_thread.autoconfig.enabled: !!int 0\n\
         \x20 diags.debug.tags: !!str \"a|\\\"b\\\"\"\n\
         \x20 admin.user_id: !!str \"#-1\"\n\
         \x20 http.cache.http: !!int 1\n\
         \x20 exec_thread.autoconfig.scale: !!float 1.5\n"
    );
}
