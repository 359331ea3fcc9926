//! The plugin's arguments: `libats_wasm.so [--option=value …] a.yaml [b.yaml …]` in
//! `plugin.config`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::limits::{
    CALL_DEPTH, CALLBACK_DEADLINE_MS, CALLS_IN_FLIGHT, DEFAULT_INIT_DEADLINE_MS, DEFAULT_METRICS_LISTEN,
    DEFAULT_METRICS_PORT, DEFAULT_PAUSE_TIMEOUT_MS, INIT_DEADLINE_MS, Isolation, MAX_VMS, PAUSE_TIMEOUT_MS, POOL_SIZE,
    max_memory, max_shared_data, max_shared_value,
};
use super::resolve;

/// Options given on the plugin's line in `plugin.config`, and the YAML files after them.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginArgs {
    /// `--pool-size=N`: VMs per net thread per filter (default 1).
    pub pool_size: usize,
    /// `--isolation=shared|transaction` (default `shared`).
    pub isolation: Isolation,
    /// `--callback-deadline-ms=N`: the longest one guest callback may run (default 100).
    pub callback_deadline_ms: u64,
    /// `--init-deadline-ms=N`: the longest one run of a VM's initializer (`_initialize`,
    /// `proxy_on_vm_start`, `proxy_on_configure`) may take in `shared` isolation (default
    /// [`DEFAULT_INIT_DEADLINE_MS`]); a `transaction`-isolation VM's initializer has the
    /// callback deadline.
    pub init_deadline_ms: u64,
    /// `--pause-timeout-ms=N|off`: the longest a filter may keep a request or response paused
    /// before its failure policy decides (default [`DEFAULT_PAUSE_TIMEOUT_MS`]); `None` (`off`)
    /// leaves paused transactions to ATS's own timeouts.
    pub pause_timeout_ms: Option<u64>,
    /// `--max-memory=SIZE`: the largest linear memory of one VM (default 64M).
    pub max_memory_bytes: usize,
    /// `--max-vms=N`: how many VMs may exist at once across threads and filters (default
    /// 1000); each reserves address space for `--max-memory` plus guard pages.
    pub max_vms: u32,
    /// `--max-shared-data=SIZE`: the most shared data and queued items one `vm_id` may hold
    /// (default 64M).
    pub max_shared_data_bytes: usize,
    /// `--max-shared-value=SIZE`: the largest shared-data key with its value, or queue item
    /// (default 1M).
    pub max_shared_value_bytes: usize,
    /// `--metrics-listen=ADDR|off`: where the Prometheus endpoint listens (default
    /// [`DEFAULT_METRICS_LISTEN`]); `None` (`off`) serves nothing and times nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// `--module-cache=DIR|off`: where compiled modules are kept between restarts (relative
    /// paths from the ATS configuration directory); `None` (`off`, the default) compiles every
    /// module at every start.
    pub module_cache: Option<PathBuf>,
    /// `--call-depth=N`: filters run on a request only when fewer than N HTTP calls of this
    /// ATS led to it (default 1: a call that comes back into this ATS is not filtered).
    pub call_depth: u32,
    /// `--max-calls-per-vm=N`: HTTP calls in flight at once per VM (default 256).
    pub max_calls_per_vm: u32,
    /// `--max-calls-per-txn=N`: HTTP calls in flight at once per transaction, all filters
    /// together (default 64).
    pub max_calls_per_txn: u32,
    /// The filter YAML files, absolute, in command-line order.
    pub yaml_files: Vec<PathBuf>,
}

impl Default for PluginArgs {
    fn default() -> Self {
        Self {
            pool_size: 1,
            isolation: Isolation::Shared,
            callback_deadline_ms: 100,
            init_deadline_ms: DEFAULT_INIT_DEADLINE_MS,
            pause_timeout_ms: Some(DEFAULT_PAUSE_TIMEOUT_MS),
            max_memory_bytes: 64 << 20,
            max_vms: 1000,
            max_shared_data_bytes: 64 << 20,
            max_shared_value_bytes: 1 << 20,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
            module_cache: None,
            call_depth: 1,
            max_calls_per_vm: 256,
            max_calls_per_txn: 64,
            yaml_files: Vec::new(),
        }
    }
}

/// The usage line shown with argument errors.
pub const USAGE: &str = "usage: libats_wasm.so [--pool-size=N] [--isolation=shared|transaction] \
    [--callback-deadline-ms=N] [--init-deadline-ms=N] [--pause-timeout-ms=N|off] [--max-memory=SIZE] [--max-vms=N] \
    [--max-shared-data=SIZE] [--max-shared-value=SIZE] [--metrics-listen=ADDR:PORT|off] [--module-cache=DIR|off] \
    [--call-depth=N] [--max-calls-per-vm=N] [--max-calls-per-txn=N] FILTER.yaml [FILTER.yaml ...]";

/// Parses the plugin's arguments (`args[0]` is the plugin path ATS passes first).
pub fn parse_args(args: &[String], config_dir: &Path) -> Result<PluginArgs, String> {
    parse_onto(PluginArgs::default(), args.get(1..).unwrap_or_default(), config_dir)
}

/// Options that hold for the whole process (the engine, the metrics endpoint, shared data,
/// call bounds): accepted only on the `plugin.config` line.
pub const PROCESS_WIDE: [&str; 9] = [
    "metrics-listen",
    "max-vms",
    "module-cache",
    "max-memory",
    "max-shared-data",
    "max-shared-value",
    "call-depth",
    "max-calls-per-vm",
    "max-calls-per-txn",
];

/// Parses a remap rule's `@pparam`s: the same options and filter files as the `plugin.config`
/// line, starting from `base` (the values of that line, or the defaults), except the
/// [`PROCESS_WIDE`] ones, which are an error here.
pub fn parse_rule_args(params: &[String], config_dir: &Path, base: &PluginArgs) -> Result<PluginArgs, String> {
    for p in params {
        if let Some(opt) = p.strip_prefix("--") {
            let name = opt.split_once('=').map_or(opt, |(n, _)| n);
            if PROCESS_WIDE.contains(&name) {
                return Err(format!(
                    "--{name} holds for the whole process: set it on the plugin.config line, not in a remap rule"
                ));
            }
        }
    }
    parse_onto(PluginArgs { yaml_files: Vec::new(), ..base.clone() }, params, config_dir)
}

/// Applies `args` (options and filter files, without the plugin path) to `out`.
fn parse_onto(mut out: PluginArgs, args: &[String], config_dir: &Path) -> Result<PluginArgs, String> {
    for arg in args {
        if let Some(opt) = arg.strip_prefix("--") {
            let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
            let flag = format!("--{name}");
            if value.is_empty() {
                return Err(format!("{flag}: missing value (write {flag}=VALUE); {USAGE}"));
            }
            match name {
                "pool-size" => out.pool_size = POOL_SIZE.parse(&flag, value)? as usize,
                "isolation" => out.isolation = Isolation::parse(&flag, value)?,
                "callback-deadline-ms" => out.callback_deadline_ms = CALLBACK_DEADLINE_MS.parse(&flag, value)?,
                "init-deadline-ms" => out.init_deadline_ms = INIT_DEADLINE_MS.parse(&flag, value)?,
                "pause-timeout-ms" => {
                    out.pause_timeout_ms = match value {
                        "off" => None,
                        v => Some(PAUSE_TIMEOUT_MS.parse(&flag, v)?),
                    }
                }
                "max-memory" => out.max_memory_bytes = max_memory(&flag, value)?,
                "max-vms" => out.max_vms = MAX_VMS.parse(&flag, value)? as u32,
                "max-shared-data" => out.max_shared_data_bytes = max_shared_data(&flag, value)?,
                "max-shared-value" => out.max_shared_value_bytes = max_shared_value(&flag, value)?,
                "metrics-listen" => {
                    out.metrics_listen = match value {
                        "off" => None,
                        v => Some(v.parse::<SocketAddr>().map_err(|_| {
                            format!("{flag}: expected IP:PORT (e.g. {DEFAULT_METRICS_LISTEN}) or \"off\", got \"{v}\"")
                        })?),
                    }
                }
                "call-depth" => out.call_depth = CALL_DEPTH.parse(&flag, value)? as u32,
                "max-calls-per-vm" => out.max_calls_per_vm = CALLS_IN_FLIGHT.parse(&flag, value)? as u32,
                "max-calls-per-txn" => out.max_calls_per_txn = CALLS_IN_FLIGHT.parse(&flag, value)? as u32,
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
