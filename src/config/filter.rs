//! One filter's YAML file, checked into a [`FilterConfig`]: the keys are read by `yaml.rs`'s
//! structs, and checked here in a fixed order so a file with several mistakes always reports
//! the same first one.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use super::limits::{
    CALLBACK_DEADLINE_MS, DEFAULT_MAX_BODY_BYTES, Isolation, MAX_FILE_BYTES, PAUSE_TIMEOUT_MS, POOL_SIZE, parse_size,
};
use super::resolve;
use super::schema::TopLevel;
use super::upstream::Upstream;
use super::yaml::{self, Field, Map, Mapping, Node};

/// Which message bodies a filter filters (`config.bodies`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bodies {
    /// The default: the bodies whose callbacks the module exports (`proxy_on_request_body`,
    /// `proxy_on_response_body`), as the upstream plugin filters them; resolved with
    /// [`Bodies::resolve`] when the module is loaded.
    #[default]
    Auto,
    /// No body callbacks (no transform is installed for the filter).
    None,
    /// Request bodies only.
    Request,
    /// Response bodies only (also needed for local responses from the response phase).
    Response,
    /// Both.
    Both,
}

impl Bodies {
    /// `Auto` resolved for a module that exports the request / response body callbacks or
    /// not; an explicit setting stays as it is.
    pub fn resolve(self, request_callback: bool, response_callback: bool) -> Bodies {
        match (self, request_callback, response_callback) {
            (Bodies::Auto, true, true) => Bodies::Both,
            (Bodies::Auto, true, false) => Bodies::Request,
            (Bodies::Auto, false, true) => Bodies::Response,
            (Bodies::Auto, false, false) => Bodies::None,
            (explicit, _, _) => explicit,
        }
    }

    /// The NOTE a filter's load logs when `auto` gave it `self` (no note for `None`).
    pub fn auto_note(self) -> Option<String> {
        let (which, callbacks) = match self {
            Bodies::Request => ("request", "proxy_on_request_body"),
            Bodies::Response => ("response", "proxy_on_response_body"),
            Bodies::Both => ("request and response", "proxy_on_request_body and proxy_on_response_body"),
            Bodies::Auto | Bodies::None => return None,
        };
        Some(format!(
            "gets {which} bodies (bodies: auto, its module exports {callbacks}); a filter that only \
             needs headers should say `bodies: none`: a pass-through response transform adds ~38 k \
             instructions (+35 %) to a 1 KB cache hit (docs/performance.md)"
        ))
    }

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
    /// `config.bodies: auto|none|request|response|both` (default `auto`: the bodies whose
    /// callbacks the module exports): which bodies the filter's body callbacks see (ATS
    /// transforms are installed only for those).
    pub bodies: Bodies,
    /// `config.max_body_bytes` (default [`DEFAULT_MAX_BODY_BYTES`]): the most body bytes the
    /// filter may hold buffered; a size such as `1048576`, `512K` or `4M`.
    pub max_body_bytes: usize,
    /// `config.cache_transformed` (default false): whether a response the filter's transform
    /// changed replaces the cached original.
    pub cache_transformed: bool,
    /// `config.snapshot` (default true): in `transaction` isolation, whether fresh VMs start
    /// from a snapshot of an initialized VM instead of running the initializer each time.
    pub snapshot: bool,
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
    /// The line of the first value of each document after the first (`---`): ignored, but
    /// reported.
    pub ignored_documents: Vec<u64>,
}

impl FilterConfig {
    /// What is ignored in the file, one WARNING line each (without the `ats_wasm: ` prefix):
    /// its unknown keys (one line), each document after the first.
    pub fn warnings(&self) -> Vec<String> {
        let file = self.source.display();
        let mut out = Vec::new();
        if !self.unknown_keys.is_empty() {
            out.push(format!("{file}: unknown keys ignored: {}", self.unknown_keys.join(", ")));
        }
        for line in &self.ignored_documents {
            out.push(format!(
                "{file}: the YAML document at line {line} is ignored (a filter file is one document; only the first is read)"
            ));
        }
        out
    }
}

/// Reads and parses a filter YAML file. `env` looks up `host_env_keys` in the process
/// environment. Errors are one line: `<file>: <problem>`.
pub fn load_filter(
    path: &Path,
    config_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, String> {
    let text = read_bounded(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_filter(&text, path, config_dir, env).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a whole filter file of at most [`MAX_FILE_BYTES`] (also when it grows while read).
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let too_big = |n: Option<u64>| {
        let size = n.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
        format!("the file{size} is larger than {} MiB, the limit of a filter file", MAX_FILE_BYTES >> 20)
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    if let Ok(m) = file.metadata()
        && m.len() > MAX_FILE_BYTES
    {
        return Err(too_big(Some(m.len())));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(None));
    }
    Ok(text)
}

/// Parses filter YAML `text` (from file `source`).
pub fn parse_filter(
    text: &str,
    source: &Path,
    config_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FilterConfig, String> {
    let loaded = yaml::load::<TopLevel>(text)?;
    let top = loaded.first.ok_or("the file is empty; expected a top-level `config:` map")?;
    // Unknown keys are reported map by map in the order the maps are checked, each map's keys
    // in file order; unknown top-level keys are not reported.
    let mut unknown = Vec::new();
    let top = &required_map(&top, "(top level)")?.fields;
    if matches!(top.config.value, Mapping::Absent) {
        return Err("no top-level `config:` map".into());
    }
    let config = required_map(&top.config.value, "config")?;
    note_unknown(config, "config", &mut unknown);
    let config = &config.fields;

    let allowed_capabilities =
        match map(&config.capability_restriction_config, "config", "capability_restriction_config")? {
            Some((m, at)) => {
                note_unknown(m, &at, &mut unknown);
                string_list(&m.fields.allowed_capabilities, &at, "allowed_capabilities")?
            }
            None => None,
        };

    let (vm, vm_at) = map(&config.vm_config, "config", "vm_config")?.ok_or("config.vm_config is missing")?;
    note_unknown(vm, &vm_at, &mut unknown);
    let vm = &vm.fields;
    let (code, code_at) = map(&vm.code, &vm_at, "code")?.ok_or(format!("{vm_at}.code is missing"))?;
    note_unknown(code, &code_at, &mut unknown);
    let (local, local_at) = map(&code.fields.local, &code_at, "local")?.ok_or(format!("{code_at}.local is missing"))?;
    note_unknown(local, &local_at, &mut unknown);
    let local = &local.fields;
    let filename = string(&local.filename, &local_at, "filename")?
        .filter(|s| !s.is_empty())
        .ok_or(format!("{local_at}.filename is missing"))?;

    let mut environment = Vec::new();
    if let Some((ev, ev_at)) = map(&vm.environment_variables, &vm_at, "environment_variables")? {
        note_unknown(ev, &ev_at, &mut unknown);
        let ev = &ev.fields;
        for k in string_list(&ev.host_env_keys, &ev_at, "host_env_keys")?.unwrap_or_default() {
            if let Some(v) = env(&k) {
                environment.push((k, v));
            }
        }
        if let Some((kv, kv_at)) = map(&ev.key_values, &ev_at, "key_values")? {
            for (k, node) in &kv.fields.0 {
                let v = string_of(node, &format!("{kv_at}.{k}"))?.unwrap_or_default();
                environment.push((k.clone(), v));
            }
        }
    }

    let fail_open = match (
        boolean(&config.fail_open, "config", "fail_open")?,
        string(&config.failure_policy, "config", "failure_policy")?,
    ) {
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
    let pool_size = match integer(&config.pool_size, "config", "pool_size")? {
        None => None,
        Some(n) => Some(POOL_SIZE.check("config.pool_size", n)? as usize),
    };
    let callback_deadline_ms = match integer(&config.callback_deadline_ms, "config", "callback_deadline_ms")? {
        None => None,
        Some(n) => Some(CALLBACK_DEADLINE_MS.check("config.callback_deadline_ms", n)?),
    };
    let pause_timeout_ms = pause_timeout(&config.pause_timeout_ms)?;
    let isolation = match string(&config.isolation, "config", "isolation")? {
        None => None,
        Some(v) => Some(Isolation::parse("config.isolation", &v)?),
    };

    let bodies = match string(&config.bodies, "config", "bodies")?.as_deref() {
        None | Some("auto") => Bodies::Auto,
        Some("none") => Bodies::None,
        Some("request") => Bodies::Request,
        Some("response") => Bodies::Response,
        Some("both") => Bodies::Both,
        Some(v) => {
            return Err(format!(
                "config.bodies: expected \"auto\", \"none\", \"request\", \"response\" or \"both\", got \"{v}\""
            ));
        }
    };
    // Unlike the other keys, an explicit null here is an error, not the default.
    let max_body_bytes = match &config.max_body_bytes.value {
        Node::Absent => DEFAULT_MAX_BODY_BYTES,
        Node::Integer(n) if *n >= 1 => *n as usize,
        Node::Str(v) if parse_size(v).is_some_and(|n| n >= 1) => parse_size(v).unwrap_or(DEFAULT_MAX_BODY_BYTES),
        _ => {
            return Err("config.max_body_bytes: expected a size of at least 1 byte (e.g. 1048576, 512K, 4M)".into());
        }
    };
    let cache_transformed = boolean(&config.cache_transformed, "config", "cache_transformed")?.unwrap_or(false);
    let snapshot = boolean(&config.snapshot, "config", "snapshot")?.unwrap_or(true);
    let mut upstreams = Vec::new();
    if let Some((m, at)) = map(&config.upstreams, "config", "upstreams")? {
        for (name, node) in &m.fields.0 {
            if name.is_empty() {
                return Err("config.upstreams: a cluster name is empty".to_string());
            }
            let key = format!("{at}.{name}");
            let target = string_of(node, &key)?.ok_or(format!("{key}: expected \"host:port\" or a URL, found null"))?;
            upstreams.push((name.clone(), Upstream::parse(&target).map_err(|e| format!("{key}: {e}"))?));
        }
    }

    let default_name = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(FilterConfig {
        source: source.to_path_buf(),
        name: string(&config.name, "config", "name")?.unwrap_or(default_name),
        root_id: string(&config.root_id, "config", "root_id")?.unwrap_or_default(),
        configuration: string(&config.configuration, "config", "configuration")?.unwrap_or_default(),
        fail_open,
        pool_size,
        isolation,
        callback_deadline_ms,
        pause_timeout_ms,
        bodies,
        max_body_bytes,
        cache_transformed,
        snapshot,
        allowed_capabilities,
        runtime: string(&vm.runtime, &vm_at, "runtime")?,
        vm_id: string(&vm.vm_id, &vm_at, "vm_id")?.unwrap_or_default(),
        vm_configuration: string(&vm.configuration, &vm_at, "configuration")?.unwrap_or_default(),
        allow_precompiled: boolean(&vm.allow_precompiled, &vm_at, "allow_precompiled")?.unwrap_or(true),
        environment,
        wasm_path: resolve(config_dir, &filename),
        upstreams,
        unknown_keys: unknown,
        ignored_documents: loaded.ignored,
    })
}

/// Adds the unknown keys of map `m` at path `at` to `out`.
fn note_unknown<M>(m: &Map<M>, at: &str, out: &mut Vec<String>) {
    out.extend(m.unknown_keys.iter().map(|k| format!("{at}.{k}")));
}

/// A map that must be there: null or another type is an error naming `at`.
fn required_map<'a, M>(m: &'a Mapping<M>, at: &str) -> Result<&'a Map<M>, String> {
    match m {
        Mapping::Map(Map { non_string_key: Some(kind), .. }) => {
            Err(format!("{at}: keys must be strings, found {kind} key"))
        }
        Mapping::Map(map) => Ok(map),
        Mapping::Absent => Err(format!("{at}: expected a map, found nothing")),
        Mapping::Null => Err(format!("{at}: expected a map, found null")),
        Mapping::Other(kind) => Err(format!("{at}: expected a map, found {kind}")),
    }
}

/// An optional map (absent or null: `None`), with its path.
fn map<'a, M>(f: &'a Field<Mapping<M>>, parent: &str, name: &str) -> Result<Option<(&'a Map<M>, String)>, String> {
    match f.value {
        Mapping::Absent | Mapping::Null => Ok(None),
        ref m => {
            let at = f.path(parent, name);
            required_map(m, &at).map(|map| Some((map, at)))
        }
    }
}

/// An optional string; numbers and booleans read as their text.
fn string(f: &Field<Node>, parent: &str, name: &str) -> Result<Option<String>, String> {
    string_of(&f.value, &f.path(parent, name))
}

/// [`string`] of a node at path `at`.
fn string_of(node: &Node, at: &str) -> Result<Option<String>, String> {
    match node {
        Node::Absent | Node::Null => Ok(None),
        Node::Str(s) | Node::Real(s) => Ok(Some(s.clone())),
        Node::Integer(i) => Ok(Some(i.to_string())),
        Node::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!("{at}: expected a string, found {}", other.kind())),
    }
}

/// An optional boolean.
fn boolean(f: &Field<Node>, parent: &str, name: &str) -> Result<Option<bool>, String> {
    match f.value {
        Node::Absent | Node::Null => Ok(None),
        Node::Bool(b) => Ok(Some(b)),
        ref other => Err(format!("{}: expected true or false, found {}", f.path(parent, name), other.kind())),
    }
}

/// An optional whole number.
fn integer(f: &Field<Node>, parent: &str, name: &str) -> Result<Option<i64>, String> {
    match f.value {
        Node::Absent | Node::Null => Ok(None),
        Node::Integer(i) => Ok(Some(i)),
        ref other => Err(format!("{}: expected a whole number, found {}", f.path(parent, name), other.kind())),
    }
}

/// An optional list of strings (the items must be written as strings).
fn string_list(f: &Field<Node>, parent: &str, name: &str) -> Result<Option<Vec<String>>, String> {
    let at = f.path(parent, name);
    match &f.value {
        Node::Absent | Node::Null => Ok(None),
        Node::List(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Node::Str(s) => Ok(s.clone()),
                other => Err(format!("{at}[{i}]: expected a string, found {}", other.kind())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(format!("{at}: expected a list of strings, found {}", other.kind())),
    }
}

/// `config.pause_timeout_ms`: a number in [`PAUSE_TIMEOUT_MS`] or `off` (`Some(None)`).
fn pause_timeout(f: &Field<Node>) -> Result<Option<Option<u64>>, String> {
    match &f.value {
        Node::Absent | Node::Null => Ok(None),
        Node::Integer(n) if PAUSE_TIMEOUT_MS.contains(*n) => Ok(Some(Some(*n as u64))),
        Node::Str(off) if off == "off" => Ok(Some(None)),
        other => {
            let got = match other {
                Node::Integer(n) => n.to_string(),
                Node::Str(s) => format!("\"{s}\""),
                other => other.kind().to_string(),
            };
            Err(format!(
                "{}: expected a whole number from 1 to {} or \"off\", got {got}",
                f.path("config", "pause_timeout_ms"),
                PAUSE_TIMEOUT_MS.max()
            ))
        }
    }
}
