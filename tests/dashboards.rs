//! The Grafana dashboard (`dashboards/ats-wasm.json`) against real data: Debian's
//! `prometheus` scrapes a harness ATS (with `dashboards/prometheus.yml`, retargeted and at a
//! 1 s interval) while requests run through three filters; then every PromQL expression of
//! every panel must return data through Prometheus's HTTP API.

mod harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{Ats, Client, example_wasm, free_port, repo_root};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Kills and reaps Prometheus when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, its TSDB in a temp dir, scraping `target`
    /// every second with the job of `dashboards/prometheus.yml`.
    fn start(target: &str) -> Prometheus {
        assert!(Path::new(PROMETHEUS).exists(), "{PROMETHEUS} missing: `make deps` installs Debian's prometheus");
        let shipped = std::fs::read_to_string(repo_root().join("dashboards/prometheus.yml")).unwrap();
        assert!(shipped.contains("\"127.0.0.1:9464\""), "the shipped config scrapes the default address");
        assert!(shipped.contains("scrape_interval: 15s"));
        let config = shipped
            .replace("\"127.0.0.1:9464\"", &format!("\"{target}\""))
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.get("/-/ready").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<harness::Response> {
        Client::connect_timeout(self.port, Duration::from_secs(2)).ok()?.get(path, &[("Connection", "close")]).ok()
    }

    /// `/api/v1/query` of `expr` now: the JSON answer.
    fn query(&self, expr: &str) -> serde_json::Value {
        let r = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .unwrap_or_else(|| panic!("querying {expr}: no answer"));
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{expr}: {e}: {}", r.body_str()))
    }

    /// How many series `expr` returns now (panics on a query error).
    fn series(&self, expr: &str) -> usize {
        let v = self.query(expr);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().map(Vec::len).unwrap_or(0)
    }
}

/// Grafana's variables, as the dashboard would resolve them with the filter "All".
fn resolve(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__interval", "2s")
        .replace("$filter", ".+")
        .replace("$scope", ".+")
}

fn yaml(name: &str, configuration: &str, wasm: &Path) -> String {
    format!(
        "config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n  vm_config:\n    code:\n      local:\n        filename: {}\n",
        wasm.display()
    )
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("dashboards/ats-wasm.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push((panel["title"].as_str().unwrap().to_string(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");

    let ats = Ats::builder()
        .net_threads(2)
        .config_file(
            "add.yaml",
            yaml("add-headers", r#"{"response_headers": {"x-b": "2"}}"#, &example_wasm("add-headers")),
        )
        .config_file("ticker.yaml", yaml("ticker", r#"{"period_ms": 100}"#, &example_wasm("ticker")))
        .config_file("trap.yaml", yaml("oob-trap", "", &example_wasm("oob-trap")))
        .plugin(&["add.yaml", "ticker.yaml", "trap.yaml"])
        .start();
    let metrics_port = ats.metrics_port().expect("the endpoint's port");
    let prom = Prometheus::start(&format!("127.0.0.1:{metrics_port}"));

    // Load on 4 connections, a trap now and then, until Prometheus holds enough samples.
    let stop = Arc::new(AtomicBool::new(false));
    let port = ats.port();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(port).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let headers: &[(&str, &str)] = if i.is_multiple_of(50) { &[("x-trap", "oob")] } else { &[] };
                    match client.get(&format!("/d/{w}/{i}"), headers) {
                        Ok(r) => assert_eq!(r.status, 200),
                        Err(_) => client = Client::connect(port).unwrap(),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let up = prom.query("up{job=\"ats-wasm\"} == 1");
        let samples = prom.query("count_over_time(ats_wasm_pool_ready_vms{filter=\"add-headers\"}[1m])");
        let n = samples["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        if up["data"]["result"].as_array().is_some_and(|a| !a.is_empty()) && n >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not collect 8 scrapes: up={up} samples={samples}\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("load worker");
    }

    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let q = resolve(expr);
        assert!(!q.replace("\"$1\"", "").contains('$'), "an unresolved variable in {q}");
        if prom.series(&q) == 0 {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
    // The traps show up as a non-zero rate.
    assert!(prom.series("sum(rate(ats_wasm_callback_failures_total{reason=\"trap\"}[20s])) > 0") == 1);
}
