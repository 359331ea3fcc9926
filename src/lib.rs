//! ats-wasm: an Apache Traffic Server plugin that runs Proxy-Wasm filters on wasmtime.
//!
//! Layers, each testable alone:
//! - [`ts`]: bindgen over ATS's `ts/ts.h` and thin safe wrappers — the only module that names
//!   ATS symbols, and the only one with `unsafe` code;
//! - [`abi`]: the Proxy-Wasm ABI host (host functions and callbacks) over a backend trait;
//! - the VM pool, in its own crate (`ats-wasm-pool`);
//! - [`config`]: plugin arguments and filter YAML files;
//! - [`plugin`]: `TSPluginInit`, hooks → callbacks.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod abi;
pub mod config;
pub mod plugin;
pub mod ts;

// The symbols ATS looks up: `TSPluginInit` runs the plugin's start-up.
ts_plugin_entry!(plugin::startup::init);
ts_remap_entry!(plugin::remap::Rules);
