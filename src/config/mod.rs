//! Plugin arguments and filter YAML files, in the upstream ATS Wasm plugin's format.
//!
//! `plugin.config`: `libats_wasm.so [--option=value …] a.yaml [b.yaml …]`. Relative YAML paths
//! and relative `code.local.filename`s resolve against the ATS configuration directory. Every
//! error is one line naming the file (or argument) and the problem; nothing here touches ATS.
//!
//! - `args.rs`: the plugin's arguments ([`parse_args`], [`PluginArgs`]) and a remap rule's ([`parse_rule_args`]);
//! - `filter.rs`: one filter's YAML file ([`load_filter`], [`FilterConfig`]), checked key by key;
//! - `schema.rs`: the file's keys as serde structs, each key once with its aliases;
//! - `yaml.rs`: reading them with serde-saphyr into nodes that record what was written (type,
//!   key spelling, unknown keys) and leave the checks to `filter.rs`;
//! - `limits.rs`: each range, size and choice shared by an argument and a YAML key, once;
//! - `upstream.rs`: HTTP-call targets ([`Upstream`]);
//! - `plugin_line.rs`: the plugin's line in `plugin.config`, found again for a reload.

#![forbid(unsafe_code)]

mod args;
mod filter;
mod limits;
mod plugin_line;
mod schema;
mod upstream;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use args::{PROCESS_WIDE, PluginArgs, USAGE, parse_args, parse_rule_args};
pub use filter::{Bodies, FilterConfig, load_filter, parse_filter};
pub use limits::{
    DEFAULT_INIT_DEADLINE_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_METRICS_LISTEN, DEFAULT_METRICS_PORT,
    DEFAULT_PAUSE_TIMEOUT_MS, Isolation, parse_size,
};
pub use plugin_line::plugin_line;
pub use upstream::{Scheme, Upstream};

/// `p` as is if absolute, else under the ATS configuration directory.
fn resolve(config_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { config_dir.join(p) }
}
