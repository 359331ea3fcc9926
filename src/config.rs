//! Plugin arguments and filter YAML files, in the upstream ATS Wasm plugin's format.
//!
//! `plugin.config`: `libats_wasm.so [--option=value …] a.yaml [b.yaml …]`. Relative YAML paths
//! and relative `code.local.filename`s resolve against the ATS configuration directory. Every
//! error is one line naming the file (or argument) and the problem; nothing here touches ATS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader, yaml::Hash};

/// How transactions share VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Each net thread keeps long-lived VMs; a transaction gets a stream context in one of them.
    Shared,
    /// Each transaction gets a fresh VM of its own, discarded afterwards.
    Transaction,
}

impl Isolation {
    fn parse(key: &str, v: &str) -> Result<Self, String> {
        match v {
            "shared" => Ok(Isolation::Shared),
            "transaction" => Ok(Isolation::Transaction),
            _ => Err(format!("{key}: expected \"shared\" or \"transaction\", got \"{v}\"")),
        }
    }
}

/// The scheme of an HTTP-call upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS (ATS does the TLS to the upstream).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where an HTTP call goes: an `upstreams:` entry, or a literal `host:port` a guest passed to
/// `proxy_http_call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `http` unless the target was written `https://…`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Upstream {
    /// Parses `host:port`, `[v6]:port`, `http://host[:port]` or `https://host[:port]` (the
    /// port defaults to 80 / 443 only when a scheme is written). No path, user or query.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest, default_port) = if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r, Some(443))
        } else if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r, Some(80))
        } else {
            (Scheme::Http, s, None)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("\"{s}\": no host"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(format!("\"{s}\": unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("\"{s}\": \"{h}\" is not an IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or(format!("\"{s}\": expected ':port' after ']'"))?)),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty()
            || host.bytes().any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')))
        {
            return Err(format!("\"{s}\": bad host \"{host}\""));
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("\"{s}\": bad port \"{p}\"")),
            },
            None => default_port.ok_or(format!("\"{s}\": expected host:port or http(s)://host[:port]"))?,
        };
        Ok(Upstream { scheme, host: host.to_string(), port })
    }

    /// `host:port` as a URL authority (`[v6]:port` for IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Options given on the plugin's line in `plugin.config`, and the YAML files after them.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginArgs {
    /// `--pool-size=N`: VMs per net thread per filter (default 1).
    pub pool_size: usize,
    /// `--isolation=shared|transaction` (default `shared`).
    pub isolation: Isolation,
    /// `--callback-deadline-ms=N`: the longest one guest callback may run (default 100).
    pub callback_deadline_ms: u64,
    /// `--pause-timeout-ms=N|off`: the longest a filter may keep a request or response paused
    /// before its failure policy decides (default [`DEFAULT_PAUSE_TIMEOUT_MS`]); `None` (`off`)
    /// leaves paused transactions to ATS's own timeouts.
    pub pause_timeout_ms: Option<u64>,
    /// `--max-memory=SIZE`: the largest linear memory of one VM (default 64M).
    pub max_memory_bytes: usize,
    /// `--max-vms=N`: how many VMs may exist at once across threads and filters (default
    /// 1000); each reserves address space for `--max-memory` plus guard pages.
    pub max_vms: u32,
    /// `--metrics-listen=ADDR|off`: where the Prometheus endpoint listens (default
    /// [`DEFAULT_METRICS_LISTEN`]); `None` (`off`) serves nothing and times nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// `--module-cache=DIR|off`: where compiled modules are kept between restarts (relative
    /// paths from the ATS configuration directory); `None` (`off`, the default) compiles every
    /// module at every start.
    pub module_cache: Option<PathBuf>,
    /// The filter YAML files, absolute, in command-line order.
    pub yaml_files: Vec<PathBuf>,
}

impl Default for PluginArgs {
    fn default() -> Self {
        Self {
            pool_size: 1,
            isolation: Isolation::Shared,
            callback_deadline_ms: 100,
            pause_timeout_ms: Some(DEFAULT_PAUSE_TIMEOUT_MS),
            max_memory_bytes: 64 << 20,
            max_vms: 1000,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
            module_cache: None,
            yaml_files: Vec::new(),
        }
    }
}

/// The default of `--pause-timeout-ms`: 20 s, below ATS's default
/// `proxy.config.http.transaction_no_activity_timeout_in` (30 s), which closes a paused
/// client connection without any response.
pub const DEFAULT_PAUSE_TIMEOUT_MS: u64 = 20_000;

/// The largest pause timeout, as argument or YAML key: one hour.
const MAX_PAUSE_TIMEOUT_MS: u64 = 3_600_000;

/// The Prometheus endpoint's default port (on 127.0.0.1).
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// The Prometheus endpoint's default address, as written in `--metrics-listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// The usage line shown with argument errors.
pub const USAGE: &str = "usage: libats_wasm.so [--pool-size=N] [--isolation=shared|transaction] \
    [--callback-deadline-ms=N] [--pause-timeout-ms=N|off] [--max-memory=SIZE] [--max-vms=N] [--metrics-listen=ADDR:PORT|off] [--module-cache=DIR|off] FILTER.yaml [FILTER.yaml ...]";

fn resolve(config_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { config_dir.join(p) }
}

fn parse_number(opt: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{opt}: expected a whole number from {min} to {max}, got \"{v}\"")),
    }
}

/// Parses a size such as `65536`, `512K`, `64M`, `64MiB` or `1G` (powers of 1024).
pub fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses the plugin's arguments (`args[0]` is the plugin path ATS passes first).
pub fn parse_args(args: &[String], config_dir: &Path) -> Result<PluginArgs, String> {
    let mut out = PluginArgs::default();
    for arg in args.iter().skip(1) {
        if let Some(opt) = arg.strip_prefix("--") {
            let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
            let flag = format!("--{name}");
            if value.is_empty() {
                return Err(format!("{flag}: missing value (write {flag}=VALUE); {USAGE}"));
            }
            match name {
                "pool-size" => out.pool_size = parse_number(&flag, value, 1, 64)? as usize,
                "isolation" => out.isolation = Isolation::parse(&flag, value)?,
                "callback-deadline-ms" => out.callback_deadline_ms = parse_number(&flag, value, 1, 60_000)?,
                "pause-timeout-ms" => {
                    out.pause_timeout_ms = match value {
                        "off" => None,
                        v => Some(parse_number(&flag, v, 1, MAX_PAUSE_TIMEOUT_MS)?),
                    }
                }
                "max-memory" => {
                    out.max_memory_bytes = match parse_size(value) {
                        Some(n) if (1 << 20..=4 << 30).contains(&n) => n,
                        _ => return Err(format!("{flag}: expected a size from 1M to 4G (e.g. 64M), got \"{value}\"")),
                    }
                }
                "max-vms" => out.max_vms = parse_number(&flag, value, 1, 20_000)? as u32,
                "metrics-listen" => {
                    out.metrics_listen = match value {
                        "off" => None,
                        v => Some(v.parse::<SocketAddr>().map_err(|_| {
                            format!("{flag}: expected IP:PORT (e.g. {DEFAULT_METRICS_LISTEN}) or \"off\", got \"{v}\"")
                        })?),
                    }
                }
                "module-cache" => out.module_cache = (value != "off").then(|| resolve(config_dir, value)),
                _ => return Err(format!("unknown argument \"{arg}\"; {USAGE}")),
            }
        } else {
            out.yaml_files.push(resolve(config_dir, arg));
        }
    }
    if out.yaml_files.is_empty() {
        return Err(format!("no filter configuration file given; {USAGE}"));
    }
    Ok(out)
}

/// The default of `config.max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Which message bodies a filter filters (`config.bodies`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bodies {
    /// No body callbacks (no transform is installed for the filter).
    #[default]
    None,
    /// Request bodies only.
    Request,
    /// Response bodies only (also needed for local responses from the response phase).
    Response,
    /// Both.
    Both,
}

impl Bodies {
    /// Whether request bodies are filtered.
    pub fn request(self) -> bool {
        matches!(self, Bodies::Request | Bodies::Both)
    }

    /// Whether response bodies are filtered.
    pub fn response(self) -> bool {
        matches!(self, Bodies::Response | Bodies::Both)
    }
}

/// One filter as configured by its YAML file.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterConfig {
    /// The YAML file it came from.
    pub source: PathBuf,
    /// `config.name` (default: the file's stem).
    pub name: String,
    /// `config.root_id` / `rootId`.
    pub root_id: String,
    /// `config.configuration`: the plugin configuration.
    pub configuration: String,
    /// `config.fail_open` (default true), or `config.failure_policy: fail_open|fail_closed`.
    pub fail_open: bool,
    /// `config.pool_size`: overrides `--pool-size` for this filter.
    pub pool_size: Option<usize>,
    /// `config.isolation`: overrides `--isolation` for this filter.
    pub isolation: Option<Isolation>,
    /// `config.callback_deadline_ms`: overrides `--callback-deadline-ms` for this filter.
    pub callback_deadline_ms: Option<u64>,
    /// `config.pause_timeout_ms: N|off`: overrides `--pause-timeout-ms` for this filter;
    /// `Some(None)` is `off`.
    pub pause_timeout_ms: Option<Option<u64>>,
    /// `config.bodies: none|request|response|both` (default `none`): which bodies the filter's
    /// body callbacks see (ATS transforms are installed only for those).
    pub bodies: Bodies,
    /// `config.max_body_bytes` (default [`DEFAULT_MAX_BODY_BYTES`]): the most body bytes the
    /// filter may hold buffered; a size such as `1048576`, `512K` or `4M`.
    pub max_body_bytes: usize,
    /// `config.cache_transformed` (default false): whether a response the filter's transform
    /// changed replaces the cached original.
    pub cache_transformed: bool,
    /// `config.capability_restriction_config.allowed_capabilities`, when given.
    pub allowed_capabilities: Option<Vec<String>>,
    /// `vm_config.runtime`, as written (ats-wasm always runs wasmtime).
    pub runtime: Option<String>,
    /// `vm_config.vm_id` / `vmId`.
    pub vm_id: String,
    /// `vm_config.configuration`: the VM configuration.
    pub vm_configuration: String,
    /// `vm_config.allow_precompiled` (default true).
    pub allow_precompiled: bool,
    /// `environment_variables`: `host_env_keys` looked up in the process environment, then
    /// `key_values`.
    pub environment: Vec<(String, String)>,
    /// `vm_config.code.local.filename`, resolved.
    pub wasm_path: PathBuf,
    /// `config.upstreams`: HTTP-call targets by cluster name (`name: "host:port"` or
    /// `name: "https://host:port"`), in file order.
    pub upstreams: Vec<(String, Upstream)>,
    /// Keys present in the file that ats-wasm does not know (ignored, but reported).
    pub unknown_keys: Vec<String>,
}

fn kind(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "an integer",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a map",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "nothing",
    }
}

struct Map<'a> {
    hash: &'a Hash,
    path: String,
}

impl<'a> Map<'a> {
    fn new(y: &'a Yaml, path: &str) -> Result<Self, String> {
        match y {
            Yaml::Hash(hash) => {
                for k in hash.keys() {
                    if k.as_str().is_none() {
                        return Err(format!("{path}: keys must be strings, found {} key", kind(k)));
                    }
                }
                Ok(Map { hash, path: path.to_string() })
            }
            other => Err(format!("{path}: expected a map, found {}", kind(other))),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }

    /// The first of `names` present.
    fn get(&self, names: &[&str]) -> Option<(&'a Yaml, String)> {
        names.iter().find_map(|n| self.hash.get(&Yaml::String((*n).to_string())).map(|v| (v, self.key(n))))
    }

    fn string(&self, names: &[&str]) -> Result<Option<String>, String> {
        match self.get(names) {
            None | Some((Yaml::Null, _)) => Ok(None),
            Some((Yaml::String(s), _)) => Ok(Some(s.clone())),
            Some((Yaml::Integer(i), _)) => Ok(Some(i.to_string())),
            Some((Yaml::Real(r), _)) => Ok(Some(r.clone())),
            Some((Yaml::Boolean(b), _)) => Ok(Some(b.to_string())),
            Some((other, key)) => Err(format!("{key}: expected a string, found {}", kind(other))),
        }
    }

    fn boolean(&self, names: &[&str]) -> Result<Option<bool>, String> {
        match self.get(names) {
            None | Some((Yaml::Null, _)) => Ok(None),
            Some((Yaml::Boolean(b), _)) => Ok(Some(*b)),
            Some((other, key)) => Err(format!("{key}: expected true or false, found {}", kind(other))),
        }
    }

    fn integer(&self, names: &[&str]) -> Result<Option<i64>, String> {
        match self.get(names) {
            None | Some((Yaml::Null, _)) => Ok(None),
            Some((Yaml::Integer(i), _)) => Ok(Some(*i)),
            Some((other, key)) => Err(format!("{key}: expected a whole number, found {}", kind(other))),
        }
    }

    fn map(&self, names: &[&str]) -> Result<Option<Map<'a>>, String> {
        match self.get(names) {
            None | Some((Yaml::Null, _)) => Ok(None),
            Some((y, key)) => Map::new(y, &key).map(Some),
        }
    }

    fn string_list(&self, names: &[&str]) -> Result<Option<Vec<String>>, String> {
        match self.get(names) {
            None | Some((Yaml::Null, _)) => Ok(None),
            Some((Yaml::Array(items), key)) => items
                .iter()
                .enumerate()
                .map(|(i, y)| match y {
                    Yaml::String(s) => Ok(s.clone()),
                    other => Err(format!("{key}[{i}]: expected a string, found {}", kind(other))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((other, key)) => Err(format!("{key}: expected a list of strings, found {}", kind(other))),
        }
    }

    /// Records the keys of this map that are not in `known`.
    fn unknown(&self, known: &[&str], out: &mut Vec<String>) {
        for k in self.hash.keys().filter_map(Yaml::as_str) {
            if !known.contains(&k) {
                out.push(self.key(k));
            }
        }
    }
}

/// Reads and parses a filter YAML file. `env` looks up `host_env_keys` in the process
/// environment. Errors are one line: `<file>: <problem>`.
pub fn load_filter(
    path: &Path,
    config_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_filter(&text, path, config_dir, env).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses filter YAML `text` (from file `source`).
pub fn parse_filter(
    text: &str,
    source: &Path,
    config_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("malformed YAML: {e}"))?;
    let doc = docs.first().ok_or("the file is empty; expected a top-level `config:` map")?;
    let top = Map::new(doc, "(top level)")?;
    let (config_yaml, _) = top.get(&["config"]).ok_or("no top-level `config:` map")?;
    let config = Map::new(config_yaml, "config")?;
    let mut unknown = Vec::new();
    config.unknown(
        &[
            "name",
            "root_id",
            "rootId",
            "configuration",
            "fail_open",
            "capability_restriction_config",
            "vm_config",
            "vmConfig",
            "upstreams",
            "failure_policy",
            "pool_size",
            "isolation",
            "callback_deadline_ms",
            "pause_timeout_ms",
            "bodies",
            "max_body_bytes",
            "cache_transformed",
        ],
        &mut unknown,
    );

    let allowed_capabilities = match config.map(&["capability_restriction_config"])? {
        Some(m) => {
            m.unknown(&["allowed_capabilities"], &mut unknown);
            m.string_list(&["allowed_capabilities"])?
        }
        None => None,
    };

    let vm = config.map(&["vm_config", "vmConfig"])?.ok_or("config.vm_config is missing")?;
    vm.unknown(
        &["runtime", "vm_id", "vmId", "configuration", "allow_precompiled", "environment_variables", "code"],
        &mut unknown,
    );
    let code = vm.map(&["code"])?.ok_or(format!("{} is missing", vm.key("code")))?;
    code.unknown(&["local"], &mut unknown);
    let local = code.map(&["local"])?.ok_or(format!("{} is missing", code.key("local")))?;
    local.unknown(&["filename"], &mut unknown);
    let filename = local
        .string(&["filename"])?
        .filter(|s| !s.is_empty())
        .ok_or(format!("{} is missing", local.key("filename")))?;

    let mut environment = Vec::new();
    if let Some(ev) = vm.map(&["environment_variables"])? {
        ev.unknown(&["host_env_keys", "key_values"], &mut unknown);
        for k in ev.string_list(&["host_env_keys"])?.unwrap_or_default() {
            if let Some(v) = env(&k) {
                environment.push((k, v));
            }
        }
        if let Some(kv) = ev.map(&["key_values"])? {
            for k in kv.hash.keys().filter_map(Yaml::as_str) {
                let v = kv.string(&[k])?.unwrap_or_default();
                environment.push((k.to_string(), v));
            }
        }
    }

    let fail_open = match (config.boolean(&["fail_open"])?, config.string(&["failure_policy"])?) {
        (fo, None) => fo.unwrap_or(true),
        (fo, Some(p)) => {
            let open = match p.as_str() {
                "fail_open" => true,
                "fail_closed" => false,
                _ => {
                    return Err(format!(
                        "config.failure_policy: expected \"fail_open\" or \"fail_closed\", got \"{p}\""
                    ));
                }
            };
            if fo.is_some_and(|fo| fo != open) {
                return Err(format!("config.failure_policy: \"{p}\" contradicts config.fail_open"));
            }
            open
        }
    };
    let pool_size = match config.integer(&["pool_size"])? {
        None => None,
        Some(n) if (1..=64).contains(&n) => Some(n as usize),
        Some(n) => return Err(format!("config.pool_size: expected a whole number from 1 to 64, got {n}")),
    };
    let callback_deadline_ms = match config.integer(&["callback_deadline_ms"])? {
        None => None,
        Some(n) if (1..=60_000).contains(&n) => Some(n as u64),
        Some(n) => {
            return Err(format!("config.callback_deadline_ms: expected a whole number from 1 to 60000, got {n}"));
        }
    };
    let pause_timeout_ms = match config.get(&["pause_timeout_ms"]) {
        None | Some((Yaml::Null, _)) => None,
        Some((Yaml::Integer(n), _)) if (1..=MAX_PAUSE_TIMEOUT_MS as i64).contains(n) => Some(Some(*n as u64)),
        Some((Yaml::String(off), _)) if off == "off" => Some(None),
        Some((other, key)) => {
            let got = match other {
                Yaml::Integer(n) => n.to_string(),
                Yaml::String(s) => format!("\"{s}\""),
                other => kind(other).to_string(),
            };
            return Err(format!(
                "{key}: expected a whole number from 1 to {MAX_PAUSE_TIMEOUT_MS} or \"off\", got {got}"
            ));
        }
    };
    let isolation = match config.string(&["isolation"])? {
        None => None,
        Some(v) => Some(Isolation::parse("config.isolation", &v)?),
    };

    let bodies = match config.string(&["bodies"])?.as_deref() {
        None | Some("none") => Bodies::None,
        Some("request") => Bodies::Request,
        Some("response") => Bodies::Response,
        Some("both") => Bodies::Both,
        Some(v) => {
            return Err(format!(
                "config.bodies: expected \"none\", \"request\", \"response\" or \"both\", got \"{v}\""
            ));
        }
    };
    let max_body_bytes = match config.hash.get(&Yaml::String("max_body_bytes".into())) {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(Yaml::Integer(n)) if *n >= 1 => *n as usize,
        Some(Yaml::String(v)) if parse_size(v).is_some_and(|n| n >= 1) => {
            parse_size(v).unwrap_or(DEFAULT_MAX_BODY_BYTES)
        }
        Some(_) => {
            return Err("config.max_body_bytes: expected a size of at least 1 byte (e.g. 1048576, 512K, 4M)".into());
        }
    };
    let cache_transformed = config.boolean(&["cache_transformed"])?.unwrap_or(false);
    let mut upstreams = Vec::new();
    if let Some(m) = config.map(&["upstreams"])? {
        for name in m.hash.keys().filter_map(Yaml::as_str) {
            if name.is_empty() {
                return Err("config.upstreams: a cluster name is empty".to_string());
            }
            let key = m.key(name);
            let target = m.string(&[name])?.ok_or(format!("{key}: expected \"host:port\" or a URL, found null"))?;
            upstreams.push((name.to_string(), Upstream::parse(&target).map_err(|e| format!("{key}: {e}"))?));
        }
    }

    let default_name = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(FilterConfig {
        source: source.to_path_buf(),
        name: config.string(&["name"])?.unwrap_or(default_name),
        root_id: config.string(&["root_id", "rootId"])?.unwrap_or_default(),
        configuration: config.string(&["configuration"])?.unwrap_or_default(),
        fail_open,
        pool_size,
        isolation,
        callback_deadline_ms,
        pause_timeout_ms,
        bodies,
        max_body_bytes,
        cache_transformed,
        allowed_capabilities,
        runtime: vm.string(&["runtime"])?,
        vm_id: vm.string(&["vm_id", "vmId"])?.unwrap_or_default(),
        vm_configuration: vm.string(&["configuration"])?.unwrap_or_default(),
        allow_precompiled: vm.boolean(&["allow_precompiled"])?.unwrap_or(true),
        environment,
        wasm_path: resolve(config_dir, &filename),
        upstreams,
        unknown_keys: unknown,
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            args(&["--metrics-listen=[::1]:0", "a.yaml"]).unwrap().metrics_listen,
            Some("[::1]:0".parse().unwrap())
        );
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
            Some(
                &["proxy_log".to_string(), "proxy_get_header_map_value".into(), "proxy_send_local_response".into()][..]
            )
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
        let f = parse(
            "config:\n  rootId: r\n  vmConfig:\n    vmId: v\n    code:\n      local:\n        filename: m.wasm\n",
        )
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
        assert_eq!(
            (f.pool_size, f.isolation, f.callback_deadline_ms),
            (Some(3), Some(Isolation::Transaction), Some(20))
        );
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
        assert_eq!((f.bodies, f.max_body_bytes, f.cache_transformed), (Bodies::None, 1 << 20, false));
        let f = parse(&format!("config:\n  bodies: response\n  max_body_bytes: 4M\n  cache_transformed: true\n{base}"))
            .unwrap();
        assert_eq!((f.bodies, f.max_body_bytes, f.cache_transformed), (Bodies::Response, 4 << 20, true));
        assert!(f.unknown_keys.is_empty(), "{:?}", f.unknown_keys);
        assert_eq!(parse(&format!("config:\n  max_body_bytes: 100\n{base}")).unwrap().max_body_bytes, 100);
        assert!(Bodies::Both.request() && Bodies::Both.response() && !Bodies::Response.request());
        assert!(parse(&format!("config:\n  bodies: all\n{base}")).unwrap_err().starts_with("config.bodies:"));
        assert!(
            parse(&format!("config:\n  max_body_bytes: 0\n{base}")).unwrap_err().starts_with("config.max_body_bytes:")
        );
        assert!(
            parse(&format!("config:\n  max_body_bytes: lots\n{base}"))
                .unwrap_err()
                .starts_with("config.max_body_bytes:")
        );
        // The per-filter overrides are known keys, not "unknown keys ignored".
        let f = parse(&format!("config:\n  failure_policy: fail_closed\n  pool_size: 2\n  isolation: shared\n  callback_deadline_ms: 5\n{base}")).unwrap();
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
                assert_eq!(f.wasm_path, Path::new("/etc/ts").join(format!("{crate_name}.wasm")), "{}", file.display());
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
}
