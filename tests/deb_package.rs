//! The Debian package as an operator uses it: `make deb` packs it (cargo-deb, lintian clean),
//! `dpkg -i` installs it into the machine's Debian ATS, a private ATS loads
//! `libats_wasm.so` by its name relative to ATS's module directory with the installed example
//! YAML files, requests go through every example filter and the metrics endpoint answers, and
//! `dpkg -r` removes every file the package installed.
//!
//! It changes the machine (installs and removes the package `ats-wasm`), so it needs root or
//! passwordless sudo, as `make deps` does. A package left installed by an earlier run is
//! removed first, and a failing run removes what it installed.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use harness::{Ats, Client, repo_root};

/// The package's name, as dpkg knows it.
const PACKAGE: &str = "ats-wasm";
/// Where the package puts the plugin: Debian ATS's module directory (the runroot's libexecdir).
const INSTALLED_PLUGIN: &str = "/usr/lib/trafficserver/modules/libats_wasm.so";
/// Where the package puts the example filters.
const EXAMPLES: &str = "/usr/share/ats-wasm/examples";
/// The example filters that run together in one ATS (auth-call needs an auth service of its
/// own and loads in a second ATS).
const CHAINED_EXAMPLES: [&str; 6] = ["add-headers", "body-rewrite", "deny", "echo-properties", "oob-trap", "ticker"];

/// Runs a command, as root (through `sudo -n` when the test is not root).
fn privileged(program: &str, args: &[&str]) -> Output {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(program);
        c
    };
    cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `dpkg ARGS` as root; waits (up to 2 min) while another dpkg or apt holds dpkg's lock.
fn dpkg(args: &[&str]) -> Output {
    let started = Instant::now();
    loop {
        let out = privileged("dpkg", args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains("lock") || started.elapsed() > Duration::from_secs(120) {
            return out;
        }
        thread::sleep(Duration::from_secs(2));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether dpkg has the package installed (also half-installed or unpacked: anything but gone
/// or config-files only).
fn installed() -> bool {
    let out = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", PACKAGE]).output().expect("dpkg-query");
    let status = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !status.starts_with("un") && !status.starts_with("pn") && !status.trim().is_empty()
}

/// Removes the package (purging leftover configuration state too) if dpkg knows it.
fn remove_if_installed() {
    if installed() {
        let out = dpkg(&["--purge", PACKAGE]);
        assert!(out.status.success(), "dpkg --purge {PACKAGE}: {}", text(&out));
    }
}

/// Removes the package when the test fails half-way, so the machine is left as it was.
struct RemoveOnPanic;

impl Drop for RemoveOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = dpkg(&["--purge", PACKAGE]);
        }
    }
}

/// `make deb-pack` (`make deb` without its `make build`, done by the harness; fast
/// compression); returns the one `ats-wasm_*_amd64.deb` it wrote.
fn make_deb() -> PathBuf {
    harness::build_artifacts();
    let started = Instant::now();
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .args(["deb-pack", "CARGO_DEB_FLAGS=--fast"])
        .stdin(Stdio::null())
        .output()
        .expect("running make deb");
    assert!(out.status.success(), "make deb-pack failed: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("make deb-pack took {:.1?}; lintian:", started.elapsed());
    for line in stdout.lines().filter(|l| l.starts_with(['E', 'W', 'I', 'P', 'O']) && l.contains(": ats-wasm")) {
        eprintln!("  {line}");
    }
    let debs: Vec<PathBuf> = std::fs::read_dir(repo_root())
        .expect("reading the repository root")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("ats-wasm_") && name.ends_with("_amd64.deb")
        })
        .collect();
    assert_eq!(debs.len(), 1, "make deb leaves exactly one package in the repository root: {debs:?}");
    debs.into_iter().next().unwrap()
}

/// A control field of a `.deb`.
fn control_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb").arg("-f").arg(deb).arg(field).output().expect("dpkg-deb -f");
    assert!(out.status.success(), "dpkg-deb -f {field}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// GET `path` on 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> harness::Response {
    Client::connect_timeout(port, Duration::from_secs(5))
        .and_then(|mut c| c.get(path, &[("Connection", "close")]))
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// The summed value of the samples named `name` whose labels include `labels`.
fn sample_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (n, rest) = key.split_once('{').unwrap_or((key, ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A plugin.config line naming the plugin relative to ATS's module directory, as an operator
/// writes it, with installed example YAML files.
fn plugin_line(examples: &[&str]) -> String {
    let mut line = String::from("libats_wasm.so --metrics-listen=127.0.0.1:0");
    for name in examples {
        line.push_str(&format!(" {EXAMPLES}/{name}.yaml"));
    }
    line
}

#[test]
fn package_installs_into_debian_ats_serves_and_removes_cleanly() {
    if harness::skip_on_ats10("the Debian package installs into Debian's ATS 9.2") {
        return;
    }
    let deb = make_deb();

    // apt refuses a mismatching ATS: the dependency names Debian's trafficserver 9.2.x, which
    // the installed one satisfies.
    let depends = control_field(&deb, "Depends");
    assert!(depends.contains("trafficserver (>= 9.2)") && depends.contains("trafficserver (<< 9.3~)"), "{depends}");
    let ats_version =
        Command::new("dpkg-query").args(["-W", "-f=${Version}", "trafficserver"]).output().expect("dpkg-query");
    let ats_version = String::from_utf8_lossy(&ats_version.stdout).to_string();
    for (op, bound) in [("ge", "9.2"), ("lt", "9.3~")] {
        let ok = Command::new("dpkg").args(["--compare-versions", &ats_version, op, bound]).status().expect("dpkg");
        assert!(ok.success(), "installed trafficserver {ats_version} is not {op} {bound}");
    }

    remove_if_installed();
    let _cleanup = RemoveOnPanic;
    let out = dpkg(&["-i", &deb.display().to_string()]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert!(installed());

    let listed = dpkg(&["-L", PACKAGE]);
    assert!(listed.status.success(), "dpkg -L: {}", text(&listed));
    let paths: Vec<PathBuf> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.starts_with('/') && *l != "/.")
        .map(PathBuf::from)
        .collect();
    let mut expected = vec![
        INSTALLED_PLUGIN.to_string(),
        "/usr/share/ats-wasm/dashboards/ats-wasm.json".into(),
        "/usr/share/ats-wasm/dashboards/prometheus.yml".into(),
        "/usr/share/doc/ats-wasm/README.md".into(),
        "/usr/share/doc/ats-wasm/copyright".into(),
        "/usr/share/doc/ats-wasm/changelog.Debian.gz".into(),
        "/usr/share/doc/ats-wasm/docs/configuration.md".into(),
        "/usr/share/doc/ats-wasm/docs/operations.md".into(),
    ];
    for name in CHAINED_EXAMPLES.iter().chain(&["auth-call"]) {
        expected.push(format!("{EXAMPLES}/{name}.yaml"));
        expected.push(format!("{EXAMPLES}/{}.wasm", name.replace('-', "_")));
    }
    for path in &expected {
        assert!(paths.iter().any(|p| p == Path::new(path)), "the package does not list {path}: {paths:?}");
        assert!(Path::new(path).is_file(), "{path} is not installed");
    }
    let files: Vec<&PathBuf> = paths.iter().filter(|p| p.symlink_metadata().is_ok_and(|m| !m.is_dir())).collect();
    let dirs: Vec<&PathBuf> = paths.iter().filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir())).collect();
    assert_eq!(files.len() + dirs.len(), paths.len(), "every listed path exists after dpkg -i: {paths:?}");

    {
        // The installed examples, chained, in one ATS: each one's effect shows on a request.
        let ats = Ats::builder().plugin_line(&plugin_line(&CHAINED_EXAMPLES)).start();
        let diags = ats.diags_log();
        for name in CHAINED_EXAMPLES {
            let note = format!("ats_wasm: filter \"{name}\" loaded from {EXAMPLES}/{name}.yaml");
            assert!(diags.contains(&note), "no `{note}` in diags.log:\n{diags}");
        }
        assert!(!diags.contains("ERROR"), "diags.log has errors:\n{diags}");

        let r = ats.get("/hello");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-wasm-filter"), Some("add-headers"), "add-headers' response header: {r:?}");
        assert_eq!(r.header("x-oob-trap"), Some("alive"), "oob-trap's response header: {r:?}");
        assert_eq!(r.header("x-prop-request-path"), Some("/hello"), "echo-properties' response header: {r:?}");
        assert!(r.header("x-ticks").is_some(), "ticker's response header: {r:?}");
        let seen = ats.origin().seen();
        let hello = seen.iter().rfind(|s| s.path == "/hello").expect("the origin saw /hello");
        assert_eq!(
            hello.header("x-added-by"),
            Some("ats-wasm"),
            "add-headers' request header at the origin: {hello:?}"
        );
        let denied = ats.get("/admin/x");
        assert_eq!((denied.status, denied.body_str().as_ref()), (403, "denied\n"), "deny: {denied:?}");

        let port = ats.metrics_port().unwrap_or_else(|| panic!("no metrics endpoint note:\n{}", ats.diags_log()));
        let scrape = http_get(port, "/metrics");
        assert_eq!(scrape.status, 200, "{scrape:?}");
        let metrics = scrape.body_str();
        let counted = sample_sum(&metrics, "ats_wasm_hook_duration_seconds_count", &[("filter", "add-headers")]);
        assert!(counted >= 1.0, "the endpoint counts add-headers' callbacks:\n{metrics}");
        ats.stop();
    }
    {
        // auth-call loads from its installed YAML too (its auth service is not running here).
        let ats = Ats::builder().plugin_line(&plugin_line(&["auth-call"])).start();
        let note = format!("ats_wasm: filter \"auth-call\" loaded from {EXAMPLES}/auth-call.yaml");
        assert!(ats.diags_log().contains(&note), "no `{note}` in diags.log:\n{}", ats.diags_log());
        ats.stop();
    }

    let out = dpkg(&["-r", PACKAGE]);
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    assert!(!installed(), "dpkg still lists {PACKAGE} after dpkg -r");
    let left: Vec<&&PathBuf> = files.iter().filter(|p| p.symlink_metadata().is_ok()).collect();
    assert!(left.is_empty(), "files left after dpkg -r: {left:?}");
    // A directory may stay only when another package owns it too (/usr/lib/trafficserver/
    // modules belongs to trafficserver, /usr/share/doc to many).
    for dir in dirs {
        if dir.exists() {
            let owner = Command::new("dpkg-query").arg("-S").arg(dir).output().expect("dpkg-query -S");
            assert!(owner.status.success(), "{} is left after dpkg -r and no other package owns it", dir.display());
        }
    }
    for dir in ["/usr/share/ats-wasm", "/usr/share/doc/ats-wasm"] {
        assert!(!Path::new(dir).exists(), "{dir} is left after dpkg -r");
    }
}
