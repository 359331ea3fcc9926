//! TLS client connections through a real `traffic_server`: an `ssl` port with a certificate
//! from a throwaway CA, and curl as the client. `examples/echo-properties` reports
//! `connection.*` and `request.scheme` for clients with and without a client certificate;
//! `examples/body-rewrite` filters request and response bodies of HTTP/2 clients.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::{Ats, example_wasm, free_port};

/// Runs openssl with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for `proxy.test` signed by it, and a client certificate signed
/// by it, as PEM files in `dir`: ca.crt, server.crt/server.key, client.crt/client.key.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"]
            .iter()
            .chain(&["-days", "2", "-subj", "/CN=ats-wasm test CA"])
            .copied()
            .collect::<Vec<_>>(),
    );
    for (name, cn) in [("server", "proxy.test"), ("client", "test client")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName=DNS:{cn}\n").replace("DNS:test client", "DNS:client.test"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

const PROPERTIES: &str = r#"{"connection.requested_server_name": "string", "connection.tls_version": "string", "connection.mtls": "bool", "request.scheme": "string", "destination.port": "int", "source.address": "string"}"#;

/// A response's headers as curl printed them (`-D -`), lower-cased names.
fn curl_headers(args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "20"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn prop<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    let key = format!("x-prop-{name}");
    headers.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {key}: {headers:?}"))
}

/// ATS with 2 net threads, a plain port and a TLS port (`tls_port`, HTTP/1.1 and HTTP/2 by
/// ALPN) whose certificates come from `dir` (see [`make_certificates`]), and the filter
/// `file` (YAML `yaml`).
fn tls_ats(dir: &str, tls_port: u16, file: &str, yaml: String, extra_records: &[&str]) -> Ats {
    let mut b = Ats::builder()
        .net_threads(2)
        .record(&format!(
            "CONFIG proxy.config.http.server_ports STRING {{ats_port}}:ip-in=127.0.0.1 {tls_port}:ssl:ip-in=127.0.0.1"
        ))
        .record(&format!("CONFIG proxy.config.ssl.server.cert.path STRING {dir}"))
        .record(&format!("CONFIG proxy.config.ssl.server.private_key.path STRING {dir}"))
        .record(&format!("CONFIG proxy.config.ssl.CA.cert.path STRING {dir}"))
        .record("CONFIG proxy.config.ssl.CA.cert.filename STRING ca.crt")
        .config_file("ssl_multicert.config", "dest_ip=* ssl_cert_name=server.crt ssl_key_name=server.key\n")
        .config_file(file, yaml);
    for r in extra_records {
        b = b.record(r);
    }
    b.plugin(&[file]).start()
}

#[test]
fn tls_connections_report_sni_version_and_client_certificates() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certificates(certs.path());
    let dir = certs.path().display().to_string();
    let tls_port = free_port();
    let yaml = format!(
        "config:\n  name: \"echo\"\n  root_id: \"echo\"\n  configuration: '{PROPERTIES}'\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("echo-properties").display()
    );
    // Ask for a client certificate, accept connections without one.
    let ats = tls_ats(&dir, tls_port, "echo.yaml", yaml, &["CONFIG proxy.config.ssl.client.certification_level INT 1"]);
    // curl connects to 127.0.0.1 but sends SNI and Host proxy.test (the server certificate's
    // name); the harness's `map /` rule sends every host to the origin.
    let url = format!("https://proxy.test:{tls_port}/tls");
    let resolve = format!("proxy.test:{tls_port}:127.0.0.1");
    let ca = format!("{dir}/ca.crt");

    // TLS 1.3 with SNI, no client certificate.
    let h = curl_headers(&["--cacert", &ca, "--resolve", &resolve, "--tlsv1.3", &url]);
    assert_eq!(prop(&h, "connection-requested_server_name"), "proxy.test");
    assert_eq!(prop(&h, "connection-tls_version"), "TLSv1.3");
    assert_eq!(prop(&h, "connection-mtls"), "false");
    assert_eq!(prop(&h, "request-scheme"), "https");
    assert_eq!(prop(&h, "destination-port"), tls_port.to_string());
    assert_eq!(prop(&h, "source-address"), "127.0.0.1");

    // TLS 1.2 with a client certificate signed by the CA ATS trusts.
    let h = curl_headers(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cert",
        &format!("{dir}/client.crt"),
        "--key",
        &format!("{dir}/client.key"),
        &url,
    ]);
    assert_eq!(prop(&h, "connection-tls_version"), "TLSv1.2");
    assert_eq!(prop(&h, "connection-mtls"), "true");
    assert_eq!(prop(&h, "connection-requested_server_name"), "proxy.test");

    // Plain HTTP on the other port: no TLS properties, mtls false, scheme http.
    let r = ats.get("/plain");
    assert_eq!(r.header("x-prop-connection-mtls"), Some("false"));
    assert_eq!(r.header("x-prop-request-scheme"), Some("http"));
    assert_eq!(r.header("x-prop-connection-tls_version"), Some("<not found>"));
    assert_eq!(r.header("x-prop-connection-requested_server_name"), Some("<not found>"));
    let origin_saw = ats.origin().seen();
    assert!(origin_saw.iter().any(|s| s.path == "/tls"), "TLS requests reached the origin: {origin_saw:?}");
}

/// Runs curl with `args` and `stdin`; (HTTP version, status, body) from `-w` and `-o`.
fn curl_http2(args: &[&str], stdin: &[u8]) -> (String, u16, Vec<u8>) {
    use std::io::Write;
    let out_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "30", "-w", "%{http_version} %{http_code}", "-o"])
        .arg(out_file.path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running curl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, status) = w.split_once(' ').unwrap_or_else(|| panic!("curl -w said {w:?}"));
    (version.to_string(), status.parse().expect("a status"), std::fs::read(out_file.path()).unwrap())
}

#[test]
fn http2_clients_get_request_and_response_bodies_filtered() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certificates(certs.path());
    let dir = certs.path().display().to_string();
    let tls_port = free_port();
    let yaml = format!(
        "config:\n  name: \"rw\"\n  root_id: \"rw\"\n  configuration: '{{\"from\": \"origin\", \"to\": \"filter\", \"request\": true}}'\n  bodies: both\n  max_body_bytes: 8M\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm("body-rewrite").display()
    );
    let ats = tls_ats(&dir, tls_port, "rw.yaml", yaml, &[]);
    let base = format!("https://proxy.test:{tls_port}");
    let resolve = format!("proxy.test:{tls_port}:127.0.0.1");
    let ca = format!("{dir}/ca.crt");
    let curl = |path: &str, extra: &[&str], stdin: &[u8]| {
        let url = format!("{base}{path}");
        let mut args = vec!["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
        args.extend_from_slice(extra);
        args.push(url.as_str());
        curl_http2(&args, stdin)
    };
    let seen_body = |path: &str| -> Vec<u8> {
        let seen = ats.origin().seen();
        let s = seen.iter().find(|s| s.path == path).unwrap_or_else(|| panic!("{path} never reached the origin"));
        s.body.clone()
    };

    // A POST with a length: rewritten on the way in; the origin echoes it back.
    let (v, status, body) = curl("/post?echo_body=1", &["--data-binary", "@-"], b"to the origin and back");
    assert_eq!((v.as_str(), status), ("2", 200), "{}", ats.failure_report());
    assert_eq!(seen_body("/post?echo_body=1"), b"to the filter and back");
    assert_eq!(body, b"to the filter and back");

    // An upload without a length (HTTP/2 has no chunked coding; curl sends DATA frames until
    // the end of the stream): ATS 9.2 runs request transforms only for bodies with a length or
    // chunked coding, and shows plugins nothing else that says a body follows, so this body
    // passes unfiltered — whole — and only the echo is rewritten on the way back.
    let upload: Vec<u8> = b"origin;".iter().copied().cycle().take(7 * 40_000).collect();
    let (v, status, body) = curl("/upload?echo_body=1", &["-T", "-", "-X", "POST"], &upload);
    assert_eq!((v.as_str(), status), ("2", 200), "{}", ats.failure_report());
    assert!(seen_body("/upload?echo_body=1") == upload, "the origin got the upload whole");
    let rewritten: Vec<u8> = b"filter;".iter().copied().cycle().take(7 * 40_000).collect();
    assert!(body == rewritten, "the echo came back rewritten ({} bytes)", body.len());

    // A POST without a body (curl ends the stream with the headers).
    let (v, status, body) = curl("/nobody?echo_body=1", &["-X", "POST"], b"");
    assert_eq!((v.as_str(), status, body.len()), ("2", 200, 0), "{}", ats.failure_report());
    assert!(seen_body("/nobody?echo_body=1").is_empty());

    // A large response (3 MB) rewritten on the way out, and an empty one.
    let (v, status, body) = curl("/big?body_size=3000000&fill=origin.", &[], b"");
    assert_eq!((v.as_str(), status), ("2", 200));
    assert_eq!(body.len(), 3_000_000);
    // Every whole word rewritten; the last 3 bytes are "ori", not a word.
    let origin_body: String = "origin.".chars().cycle().take(3_000_000).collect();
    assert!(body == origin_body.replace("origin", "filter").as_bytes(), "the response rewritten whole");
    let (v, status, body) = curl("/empty?body_size=0", &[], b"");
    assert_eq!((v.as_str(), status, body.len()), ("2", 200, 0));
    assert!(ats.is_running());
    assert!(!ats.diags_log().contains("ERROR"), "{}", ats.diags_log());
}
