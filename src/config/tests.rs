//! The unit tests of the plugin arguments and the filter YAML files.

use super::*;

fn args(a: &[&str]) -> Result<PluginArgs, String> {
    let v: Vec<String> = std::iter::once("libats_wasm.so").chain(a.iter().copied()).map(String::from).collect();
    parse_args(&v, Path::new("/etc/ts"))
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<FilterConfig, String> {
    parse_filter(text, Path::new("/etc/ts/f.yaml"), Path::new("/etc/ts"), &no_env)
}

const UPSTREAM_EXAMPLE: &str = r#"
config:
  name: "my-filter"
  root_id: "my_root"
  configuration: '{"deny_ua":"perl"}'
  fail_open: false
  capability_restriction_config:
    allowed_capabilities: [proxy_log, proxy_get_header_map_value, proxy_send_local_response]
  vm_config:
    runtime: ats.wasm.runtime.wasmtime
    vm_id: "my_vm"
    configuration: "vm-config-string"
    allow_precompiled: true
    environment_variables:
      host_env_keys: [HOSTNAME, NOT_SET]
      key_values: {REGION: us-east}
    code:
      local:
        filename: /usr/local/var/wasm/my_filter.wasm
"#;

#[test]
fn arguments_have_defaults_and_resolve_relative_yaml_paths() {
    let a = args(&["a.yaml", "/abs/b.yaml"]).unwrap();
    assert_eq!(a.yaml_files, vec![PathBuf::from("/etc/ts/a.yaml"), PathBuf::from("/abs/b.yaml")]);
    assert_eq!(a.pool_size, 1);
    assert_eq!(a.callback_deadline_ms, 100);
    assert_eq!(a.max_memory_bytes, 64 << 20);
    assert_eq!(a.max_vms, 1000);
    assert_eq!(a.pause_timeout_ms, Some(DEFAULT_PAUSE_TIMEOUT_MS));
    let a = args(&[
        "--max-vms=50",
        "--pool-size=4",
        "--callback-deadline-ms=250",
        "--max-memory=128M",
        "--metrics-listen=off",
        "x.yaml",
    ])
    .unwrap();
    assert_eq!((a.pool_size, a.callback_deadline_ms, a.max_memory_bytes), (4, 250, 128 << 20));
    assert_eq!(a.max_vms, 50);
    assert_eq!(a.metrics_listen, None, "off");
    assert_eq!(args(&["--pause-timeout-ms=1500", "x.yaml"]).unwrap().pause_timeout_ms, Some(1500));
    assert_eq!(args(&["--pause-timeout-ms=off", "x.yaml"]).unwrap().pause_timeout_ms, None);
    assert!(
        args(&["--pause-timeout-ms=0", "x.yaml"])
            .unwrap_err()
            .starts_with("--pause-timeout-ms: expected a whole number from 1 to 3600000, got \"0\"")
    );
}

#[test]
fn call_depth_and_call_bounds_have_defaults_and_ranges() {
    let a = args(&["a.yaml"]).unwrap();
    assert_eq!((a.call_depth, a.max_calls_per_vm, a.max_calls_per_txn), (1, 256, 64));
    let a = args(&["--call-depth=3", "--max-calls-per-vm=10", "--max-calls-per-txn=2", "a.yaml"]).unwrap();
    assert_eq!((a.call_depth, a.max_calls_per_vm, a.max_calls_per_txn), (3, 10, 2));
    assert!(
        args(&["--call-depth=0", "a.yaml"])
            .unwrap_err()
            .starts_with("--call-depth: expected a whole number from 1 to 8, got \"0\"")
    );
    assert!(args(&["--max-calls-per-txn=0", "a.yaml"]).is_err());
    assert!(args(&["--max-calls-per-vm=100001", "a.yaml"]).is_err());
}

#[test]
fn module_cache_is_off_by_default_and_resolves_relative_directories() {
    assert_eq!(args(&["a.yaml"]).unwrap().module_cache, None);
    assert_eq!(args(&["--module-cache=off", "a.yaml"]).unwrap().module_cache, None);
    assert_eq!(
        args(&["--module-cache=wasm-cache", "a.yaml"]).unwrap().module_cache,
        Some(PathBuf::from("/etc/ts/wasm-cache"))
    );
    assert_eq!(
        args(&["--module-cache=/var/cache/w", "a.yaml"]).unwrap().module_cache,
        Some(PathBuf::from("/var/cache/w"))
    );
    assert!(args(&["--module-cache=", "a.yaml"]).unwrap_err().starts_with("--module-cache: missing value"));
}

#[test]
fn metrics_listen_defaults_to_loopback_9464_and_takes_an_address_or_off() {
    assert_eq!(args(&["a.yaml"]).unwrap().metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        args(&["--metrics-listen=0.0.0.0:9100", "a.yaml"]).unwrap().metrics_listen,
        Some("0.0.0.0:9100".parse().unwrap())
    );
    assert_eq!(args(&["--metrics-listen=[::1]:0", "a.yaml"]).unwrap().metrics_listen, Some("[::1]:0".parse().unwrap()));
    assert_eq!(
        args(&["--metrics-listen=localhost", "a.yaml"]).unwrap_err(),
        "--metrics-listen: expected IP:PORT (e.g. 127.0.0.1:9464) or \"off\", got \"localhost\""
    );
    assert!(args(&["--metrics-listen=127.0.0.1", "a.yaml"]).is_err(), "a port is required");
}

#[test]
fn bad_arguments_are_named_in_the_error() {
    assert!(args(&["--frobnicate=1", "a.yaml"]).unwrap_err().starts_with("unknown argument \"--frobnicate=1\""));
    assert!(
        args(&["--pool-size=0", "a.yaml"])
            .unwrap_err()
            .starts_with("--pool-size: expected a whole number from 1 to 64, got \"0\"")
    );
    assert!(args(&["--pool-size=x", "a.yaml"]).unwrap_err().contains("got \"x\""));
    assert!(args(&["--max-memory=12Q", "a.yaml"]).unwrap_err().starts_with("--max-memory: expected a size"));
    assert!(args(&["--max-vms=0", "a.yaml"]).unwrap_err().starts_with("--max-vms: expected a whole number from 1"));
    assert!(args(&["--isolation=bogus", "a.yaml"]).unwrap_err().contains("got \"bogus\""));
    assert_eq!(args(&["--isolation=transaction", "a.yaml"]).unwrap().isolation, Isolation::Transaction);
    assert!(args(&["--pool-size", "a.yaml"]).unwrap_err().starts_with("--pool-size: missing value"));
    assert!(args(&[]).unwrap_err().starts_with("no filter configuration file given"));
}

#[test]
fn sizes_parse_with_binary_units() {
    assert_eq!(parse_size("65536"), Some(65536));
    assert_eq!(parse_size("512K"), Some(512 << 10));
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("1g"), Some(1 << 30));
    assert_eq!(parse_size("1.5G"), None);
    assert_eq!(parse_size("M"), None);
}

#[test]
fn the_upstream_example_parses_unchanged() {
    let env = |k: &str| (k == "HOSTNAME").then(|| "edge-1".to_string());
    let f = parse_filter(UPSTREAM_EXAMPLE, Path::new("/etc/ts/f.yaml"), Path::new("/etc/ts"), &env).unwrap();
    assert_eq!(f.name, "my-filter");
    assert_eq!(f.root_id, "my_root");
    assert_eq!(f.configuration, r#"{"deny_ua":"perl"}"#);
    assert!(!f.fail_open);
    assert_eq!(
        f.allowed_capabilities.as_deref(),
        Some(&["proxy_log".to_string(), "proxy_get_header_map_value".into(), "proxy_send_local_response".into()][..])
    );
    assert_eq!(f.runtime.as_deref(), Some("ats.wasm.runtime.wasmtime"));
    assert_eq!(f.vm_id, "my_vm");
    assert_eq!(f.vm_configuration, "vm-config-string");
    assert!(f.allow_precompiled);
    assert_eq!(f.environment, vec![("HOSTNAME".into(), "edge-1".into()), ("REGION".into(), "us-east".into())]);
    assert_eq!(f.wasm_path, PathBuf::from("/usr/local/var/wasm/my_filter.wasm"));
    assert!(f.unknown_keys.is_empty());
}

#[test]
fn camel_case_aliases_defaults_and_relative_module_paths() {
    let f =
        parse("config:\n  rootId: r\n  vmConfig:\n    vmId: v\n    code:\n      local:\n        filename: m.wasm\n")
            .unwrap();
    assert_eq!((f.root_id.as_str(), f.vm_id.as_str()), ("r", "v"));
    assert_eq!(f.name, "f");
    assert!(f.fail_open, "fail_open defaults to true");
    assert_eq!(f.wasm_path, PathBuf::from("/etc/ts/m.wasm"));
    assert_eq!(f.configuration, "");
}

#[test]
fn errors_name_the_key_and_the_problem() {
    let base = "config:\n  vm_config:\n    code:\n      local:\n        filename: m.wasm\n";
    assert_eq!(
        parse(&format!("{base}  fail_open: \"maybe\"\n")).unwrap_err(),
        "config.fail_open: expected true or false, found a string"
    );
    assert_eq!(
        parse(&format!("{base}  configuration: [1, 2]\n")).unwrap_err(),
        "config.configuration: expected a string, found a list"
    );
    assert_eq!(parse("config:\n  name: x\n").unwrap_err(), "config.vm_config is missing");
    assert_eq!(
        parse("config:\n  vm_config:\n    code:\n      local: {}\n").unwrap_err(),
        "config.vm_config.code.local.filename is missing"
    );
    assert_eq!(parse("other: 1\n").unwrap_err(), "no top-level `config:` map");
    assert_eq!(parse("").unwrap_err(), "the file is empty; expected a top-level `config:` map");
    assert_eq!(parse("config: 3\n").unwrap_err(), "config: expected a map, found an integer");
    assert!(parse("config: {a: [}\n").unwrap_err().starts_with("malformed YAML: "));
    assert_eq!(
        parse(&format!("{base}  capability_restriction_config:\n    allowed_capabilities: [1]\n")).unwrap_err(),
        "config.capability_restriction_config.allowed_capabilities[0]: expected a string, found an integer"
    );
}

#[test]
fn failure_policy_and_per_filter_overrides() {
    let base = "  vm_config:\n    code:\n      local:\n        filename: m.wasm\n";
    let f = parse(&format!("config:\n  failure_policy: fail_closed\n  pool_size: 3\n  isolation: transaction\n  callback_deadline_ms: 20\n  pause_timeout_ms: 1500\n{base}")).unwrap();
    assert!(!f.fail_open);
    assert_eq!(f.pause_timeout_ms, Some(Some(1500)));
    assert_eq!(parse(&format!("config:\n  pause_timeout_ms: off\n{base}")).unwrap().pause_timeout_ms, Some(None));
    assert_eq!(
        parse(&format!("config:\n  pause_timeout_ms: 0\n{base}")).unwrap_err(),
        "config.pause_timeout_ms: expected a whole number from 1 to 3600000 or \"off\", got 0"
    );
    assert_eq!(
        parse(&format!("config:\n  pause_timeout_ms: never\n{base}")).unwrap_err(),
        "config.pause_timeout_ms: expected a whole number from 1 to 3600000 or \"off\", got \"never\""
    );
    assert!(f.unknown_keys.is_empty(), "the overrides are known keys: {:?}", f.unknown_keys);
    assert_eq!((f.pool_size, f.isolation, f.callback_deadline_ms), (Some(3), Some(Isolation::Transaction), Some(20)));
    let f = parse(&format!("config:\n{base}")).unwrap();
    assert_eq!((f.pool_size, f.isolation, f.callback_deadline_ms, f.pause_timeout_ms), (None, None, None, None));
    assert!(parse(&format!("config:\n  failure_policy: fail_open\n  fail_open: true\n{base}")).unwrap().fail_open);
    assert_eq!(
        parse(&format!("config:\n  failure_policy: fail_open\n  fail_open: false\n{base}")).unwrap_err(),
        "config.failure_policy: \"fail_open\" contradicts config.fail_open"
    );
    assert_eq!(
        parse(&format!("config:\n  failure_policy: maybe\n{base}")).unwrap_err(),
        "config.failure_policy: expected \"fail_open\" or \"fail_closed\", got \"maybe\""
    );
    assert_eq!(
        parse(&format!("config:\n  pool_size: 0\n{base}")).unwrap_err(),
        "config.pool_size: expected a whole number from 1 to 64, got 0"
    );
    assert_eq!(
        parse(&format!("config:\n  pool_size: two\n{base}")).unwrap_err(),
        "config.pool_size: expected a whole number, found a string"
    );
    assert_eq!(
        parse(&format!("config:\n  isolation: none\n{base}")).unwrap_err(),
        "config.isolation: expected \"shared\" or \"transaction\", got \"none\""
    );
}

const MINIMAL_VM: &str = "  vm_config:\n    code:\n      local:\n        filename: m.wasm\n";

#[test]
fn upstreams_parse_into_scheme_host_and_port() {
    let f = parse(&format!(
        "config:\n  upstreams:\n    auth: \"127.0.0.1:9000\"\n    secure: \"https://127.0.0.1:9443\"\n    named: \"http://auth.internal\"\n    v6: \"[::1]:8080\"\n{MINIMAL_VM}"
    ))
    .unwrap();
    assert!(f.unknown_keys.is_empty(), "{:?}", f.unknown_keys);
    let up = |h: &str, p, s| Upstream { scheme: s, host: h.to_string(), port: p };
    assert_eq!(
        f.upstreams,
        vec![
            ("auth".to_string(), up("127.0.0.1", 9000, Scheme::Http)),
            ("secure".to_string(), up("127.0.0.1", 9443, Scheme::Https)),
            ("named".to_string(), up("auth.internal", 80, Scheme::Http)),
            ("v6".to_string(), up("::1", 8080, Scheme::Http)),
        ]
    );
    assert_eq!(f.upstreams[3].1.authority(), "[::1]:8080");
    assert_eq!(f.upstreams[0].1.authority(), "127.0.0.1:9000");
    assert!(parse(&format!("config:\n{MINIMAL_VM}")).unwrap().upstreams.is_empty());
}

#[test]
fn bad_upstreams_are_rejected_with_their_key() {
    for (target, why) in [
        ("\"127.0.0.1\"", "expected host:port"),
        ("\"127.0.0.1:0\"", "bad port"),
        ("\"127.0.0.1:70000\"", "bad port"),
        ("\"http://\"", "no host"),
        ("\"ftp://x:1\"", "bad host"),
        ("\"http://a/b:1\"", "bad host"),
        ("\"[::1:80\"", "unclosed"),
        ("\"[nope]:80\"", "not an IPv6"),
        ("[1, 2]", "expected a string"),
    ] {
        let e = parse(&format!("config:\n  upstreams:\n    auth: {target}\n{MINIMAL_VM}")).unwrap_err();
        assert!(e.contains("config.upstreams.auth") && e.contains(why), "{target}: {e}");
    }
    let e = parse(&format!("config:\n  upstreams: [a]\n{MINIMAL_VM}")).unwrap_err();
    assert!(e.contains("config.upstreams: expected a map"), "{e}");
}

#[test]
fn body_keys_have_defaults_and_are_checked() {
    let base = "  vm_config:\n    code:\n      local:\n        filename: m.wasm\n";
    let f = parse(&format!("config:\n{base}")).unwrap();
    assert_eq!((f.bodies, f.max_body_bytes, f.cache_transformed), (Bodies::Auto, 1 << 20, false));
    assert_eq!(parse(&format!("config:\n  bodies: auto\n{base}")).unwrap().bodies, Bodies::Auto);
    assert_eq!(parse(&format!("config:\n  bodies: none\n{base}")).unwrap().bodies, Bodies::None);
    // `auto` follows the module's exports; an explicit setting overrides them.
    assert_eq!(Bodies::Auto.resolve(true, true), Bodies::Both);
    assert_eq!(Bodies::Auto.resolve(false, true), Bodies::Response);
    assert_eq!(Bodies::Auto.resolve(true, false), Bodies::Request);
    assert_eq!(Bodies::Auto.resolve(false, false), Bodies::None);
    assert_eq!(Bodies::None.resolve(true, true), Bodies::None);
    assert_eq!(Bodies::Request.resolve(false, true), Bodies::Request);
    assert!(!Bodies::Auto.request() && !Bodies::Auto.response());
    assert_eq!(Bodies::None.auto_note(), None);
    assert!(
        Bodies::Response
            .auto_note()
            .is_some_and(|n| n.contains("proxy_on_response_body") && n.contains("bodies: none"))
    );
    let f = parse(&format!("config:\n  bodies: response\n  max_body_bytes: 4M\n  cache_transformed: true\n{base}"))
        .unwrap();
    assert_eq!((f.bodies, f.max_body_bytes, f.cache_transformed), (Bodies::Response, 4 << 20, true));
    assert!(f.unknown_keys.is_empty(), "{:?}", f.unknown_keys);
    assert_eq!(parse(&format!("config:\n  max_body_bytes: 100\n{base}")).unwrap().max_body_bytes, 100);
    assert!(Bodies::Both.request() && Bodies::Both.response() && !Bodies::Response.request());
    assert!(parse(&format!("config:\n  bodies: all\n{base}")).unwrap_err().starts_with("config.bodies:"));
    assert!(parse(&format!("config:\n  max_body_bytes: 0\n{base}")).unwrap_err().starts_with("config.max_body_bytes:"));
    assert!(
        parse(&format!("config:\n  max_body_bytes: lots\n{base}")).unwrap_err().starts_with("config.max_body_bytes:")
    );
    // The per-filter overrides are known keys, not "unknown keys ignored".
    let f = parse(&format!(
        "config:\n  failure_policy: fail_closed\n  pool_size: 2\n  isolation: shared\n  callback_deadline_ms: 5\n{base}"
    ))
    .unwrap();
    assert!(f.unknown_keys.is_empty(), "{:?}", f.unknown_keys);
}

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let f = parse("config:\n  fail_opne: false\n  vm_config:\n    code:\n      local:\n        filename: m.wasm\n        sha: x\n").unwrap();
    assert_eq!(f.unknown_keys, vec!["config.fail_opne".to_string(), "config.vm_config.code.local.sha".into()]);
}

#[test]
fn every_example_yaml_parses_and_names_a_module_the_examples_build() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for dir in std::fs::read_dir(&examples).unwrap() {
        let dir = dir.unwrap().path();
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for file in entries {
            let file = file.unwrap().path();
            if file.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let f = load_filter(&file, Path::new("/etc/ts"), &no_env).unwrap_or_else(|e| panic!("{e}"));
            assert!(f.unknown_keys.is_empty(), "{}: {:?}", file.display(), f.unknown_keys);
            let crate_name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
            if crate_name == "remap" {
                // Per-route example files name other examples' modules.
                let stem = f.wasm_path.file_stem().unwrap().to_string_lossy().replace('_', "-");
                assert!(examples.join(&stem).join("Cargo.toml").exists(), "{}: {stem}", file.display());
            } else {
                assert_eq!(f.wasm_path, Path::new("/etc/ts").join(format!("{crate_name}.wasm")), "{}", file.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "found only {checked} example YAML files");
}

#[test]
fn load_filter_prefixes_errors_with_the_file() {
    let err = load_filter(Path::new("/nonexistent/x.yaml"), Path::new("/"), &no_env).unwrap_err();
    assert!(err.starts_with("/nonexistent/x.yaml: cannot read: "), "{err}");
}

#[test]
fn scalars_keep_the_types_and_texts_of_the_previous_yaml_reader() {
    let f = parse(&format!(
        "config:\n  name: 1.50\n  root_id: 0x10\n  configuration: True\n  pool_size: 010\n  Null: x\n  pause_timeout_ms: +5\n{MINIMAL_VM}"
    ))
    .unwrap();
    assert_eq!((f.name.as_str(), f.root_id.as_str(), f.configuration.as_str()), ("1.50", "16", "true"));
    assert_eq!((f.pool_size, f.pause_timeout_ms), (Some(10), Some(Some(5))));
    assert_eq!(f.unknown_keys, vec!["config.Null".to_string()], "`Null` is a string key, not null");
    assert_eq!(
        parse(&format!("config:\n  fail_open: yes\n{MINIMAL_VM}")).unwrap_err(),
        "config.fail_open: expected true or false, found a string"
    );
    assert_eq!(
        parse(&format!("config:\n  upstreams: NULL\n{MINIMAL_VM}")).unwrap_err(),
        "config.upstreams: expected a map, found a string"
    );
    assert_eq!(
        parse(&format!("config:\n  pool_size: !!str 5\n{MINIMAL_VM}")).unwrap_err(),
        "config.pool_size: expected a whole number, found a string"
    );
    assert_eq!(
        parse(&format!("config:\n  ~: 1\n{MINIMAL_VM}")).unwrap_err(),
        "config: keys must be strings, found null key"
    );
    assert_eq!(parse("---\n").unwrap_err(), "(top level): expected a map, found null");
    assert_eq!(parse("# nothing\n").unwrap_err(), "the file is empty; expected a top-level `config:` map");
    let f = parse(&format!("config:\n  name: &n n1\n  root_id: *n\n  bogus: {{1: x}}\n{MINIMAL_VM}")).unwrap();
    assert_eq!((f.name.as_str(), f.root_id.as_str()), ("n1", "n1"));
    assert_eq!(f.unknown_keys, vec!["config.bogus".to_string()]);
}

#[test]
fn shared_data_bounds_and_the_init_deadline_have_defaults_and_ranges() {
    let a = args(&["a.yaml"]).unwrap();
    assert_eq!((a.max_shared_data_bytes, a.max_shared_value_bytes), (64 << 20, 1 << 20));
    assert_eq!(a.init_deadline_ms, 1000);
    let a = args(&["--max-shared-data=8M", "--max-shared-value=16K", "--init-deadline-ms=250", "a.yaml"]).unwrap();
    assert_eq!((a.max_shared_data_bytes, a.max_shared_value_bytes, a.init_deadline_ms), (8 << 20, 16 << 10, 250));
    assert_eq!(
        args(&["--max-shared-data=1K", "a.yaml"]).unwrap_err(),
        "--max-shared-data: expected a size from 64K to 64G (e.g. 64M), got \"1K\""
    );
    assert!(args(&["--max-shared-value=2G", "a.yaml"]).unwrap_err().starts_with("--max-shared-value: expected a size"));
    assert!(
        args(&["--init-deadline-ms=0", "a.yaml"])
            .unwrap_err()
            .starts_with("--init-deadline-ms: expected a whole number from 1 to 60000, got \"0\"")
    );
}

/// A "billion laughs": ten levels of nine aliases each (9^10 values if expanded) in a few
/// hundred bytes, expanded where ats-wasm reads a value (`config.configuration`) or skips one
/// (`bomb:`).
fn alias_bomb(read: bool) -> String {
    let mut s = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    let names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
    for w in names.windows(2) {
        s += &format!("{}: &{} [{}]\n", w[1], w[1], vec![format!("*{}", w[0]); 9].join(","));
    }
    let at = if read { "config:\n  configuration: *j\n" } else { "bomb: *j\nconfig:\n" };
    format!("{s}{at}{MINIMAL_VM}")
}

/// The peak resident memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Run by [`an_alias_bomb_is_an_error_within_100_ms_and_50_mb`] in a process of its own (so
/// that its peak memory is the bomb's alone); does nothing in a normal test run.
#[test]
fn alias_bomb_in_a_child_process() {
    let Some(read) = std::env::var_os("ATS_WASM_ALIAS_BOMB") else { return };
    let started = std::time::Instant::now();
    let err = parse(&alias_bomb(read == "read")).unwrap_err();
    let took = started.elapsed();
    println!("BOMB|{}|{}|{err}", took.as_micros(), peak_rss_kib());
}

#[test]
fn an_alias_bomb_is_an_error_within_100_ms_and_50_mb() {
    assert!(alias_bomb(true).len() < 500, "a few hundred bytes: {}", alias_bomb(true).len());
    for how in ["read", "skipped"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["config::tests::alias_bomb_in_a_child_process", "--exact", "--nocapture", "--test-threads=1"])
            .env("ATS_WASM_ALIAS_BOMB", how)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line =
            stdout.lines().find_map(|l| Some(l.split_once("BOMB|")?.1)).unwrap_or_else(|| panic!("{how}: {stdout}"));
        let mut parts = line.splitn(3, '|');
        let micros: u64 = parts.next().unwrap().parse().unwrap();
        let peak_kib: u64 = parts.next().unwrap().parse().unwrap();
        let err = parts.next().unwrap();
        assert!(err.starts_with("malformed YAML: "), "{how}: {err}");
        assert!(err.contains("alias") || err.contains("expands"), "{how}: names the bound: {err}");
        assert!(micros < 100_000, "{how}: took {micros} µs");
        assert!(peak_kib < 50 * 1024, "{how}: the whole process peaked at {peak_kib} KiB");
    }
}

#[test]
fn aliases_of_a_long_scalar_cannot_expand_past_the_text_bound() {
    // 512 KiB written once, repeated by 20 aliases: 10 MiB if expanded.
    let long = "x".repeat(512 << 10);
    let aliases = vec!["*big"; 20].join(", ");
    let err = parse(&format!("big: &big {long}\nconfig:\n  configuration: [{aliases}]\n{MINIMAL_VM}")).unwrap_err();
    assert!(err.contains("expands to more than 4 MiB of text"), "{}", &err[..err.len().min(300)]);
    // The same scalar used a few times is fine.
    let f = parse(&format!("big: &big {long}\nconfig:\n  configuration: *big\n  name: n\n{MINIMAL_VM}")).unwrap();
    assert_eq!(f.configuration.len(), 512 << 10);
}

#[test]
fn documents_after_the_first_are_ignored_and_each_is_reported_with_its_line() {
    let text =
        format!("config:\n  name: first\n{MINIMAL_VM}---\nconfig:\n  name: second\n---\n---\n# nothing\n---\n[1, 2]\n");
    let f = parse(&text).unwrap();
    assert_eq!(f.name, "first");
    assert_eq!(f.ignored_documents, vec![8, 14], "the two documents that are not empty, by their first value");
    let w = f.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0],
        "/etc/ts/f.yaml: the YAML document at line 8 is ignored (a filter file is one document; only the first is read)"
    );
    assert!(parse(&format!("---\nconfig:\n  name: only\n{MINIMAL_VM}...\n")).unwrap().ignored_documents.is_empty());
    assert!(parse(&format!("config:\n  name: one\n{MINIMAL_VM}")).unwrap().warnings().is_empty());
}

#[test]
fn a_filter_file_over_1_mib_is_an_error_naming_the_file_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let ok = format!("config:\n  name: n\n{MINIMAL_VM}");
    let padded = |n: usize| format!("{ok}#{}\n", "x".repeat(n - ok.len() - 2));
    std::fs::write(&path, padded(1 << 20)).unwrap();
    assert_eq!(load_filter(&path, dir.path(), &no_env).unwrap().name, "n", "exactly 1 MiB is read");
    std::fs::write(&path, padded((1 << 20) + 1)).unwrap();
    let err = load_filter(&path, dir.path(), &no_env).unwrap_err();
    assert_eq!(
        err,
        format!("{}: the file (1048577 bytes) is larger than 1 MiB, the limit of a filter file", path.display())
    );
}
