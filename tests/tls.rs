//! Properties of TLS client connections through a real `traffic_server`: an `ssl` port with a
//! certificate from a throwaway CA, clients with and without a client certificate (curl), and
//! `examples/echo-properties` reporting `connection.*` and `request.scheme`.

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
    let ats = Ats::builder()
        .net_threads(2)
        .record(&format!(
            "CONFIG proxy.config.http.server_ports STRING {{ats_port}}:ip-in=127.0.0.1 {tls_port}:ssl:ip-in=127.0.0.1"
        ))
        .record(&format!("CONFIG proxy.config.ssl.server.cert.path STRING {dir}"))
        .record(&format!("CONFIG proxy.config.ssl.server.private_key.path STRING {dir}"))
        .record(&format!("CONFIG proxy.config.ssl.CA.cert.path STRING {dir}"))
        .record("CONFIG proxy.config.ssl.CA.cert.filename STRING ca.crt")
        // Ask for a client certificate, accept connections without one.
        .record("CONFIG proxy.config.ssl.client.certification_level INT 1")
        .config_file("ssl_multicert.config", "dest_ip=* ssl_cert_name=server.crt ssl_key_name=server.key\n")
        .config_file("echo.yaml", yaml)
        .plugin(&["echo.yaml"])
        .start();
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
