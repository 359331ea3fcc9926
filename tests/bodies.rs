//! Request and response bodies through ATS transforms (`bodies:` in a filter's YAML), with
//! `examples/body-rewrite` and `examples/deny`, through a real `traffic_server` with 2 net
//! threads.

mod harness;

use harness::{Ats, example_wasm};

/// A filter YAML for module `module` with plugin configuration `configuration` and extra
/// `config:` lines (each `key: value`).
fn yaml(name: &str, module: &str, configuration: &str, extra: &[&str]) -> String {
    let mut s = format!("config:\n  name: \"{name}\"\n  root_id: \"{name}\"\n  configuration: '{configuration}'\n");
    for line in extra {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str(&format!(
        "  vm_config:\n    code:\n      local:\n        filename: {}\n",
        example_wasm(module).display()
    ));
    s
}

/// `text` repeated to `n` bytes, as the origin's `fill=` makes it.
fn fill(text: &str, n: usize) -> String {
    text.chars().cycle().take(n).collect()
}

/// ATS with one body-rewrite filter.
fn rewrite_ats(configuration: &str, extra: &[&str]) -> Ats {
    Ats::builder()
        .net_threads(2)
        .config_file("rw.yaml", yaml("rw", "body-rewrite", configuration, extra))
        .plugin(&["rw.yaml"])
        .start()
}

#[test]
fn response_body_is_rewritten_and_reframed() {
    let ats = rewrite_ats(r#"{"from": "origin", "to": "filter"}"#, &["bodies: response"]);
    let r = ats.get("/r?body_size=60&fill=origin-");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), fill("origin-", 60).replace("origin", "filter"), "{r:?}");
}
