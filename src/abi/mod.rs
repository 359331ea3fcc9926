//! The Proxy-Wasm ABI host: host functions and callback dispatch over a [`Backend`].
//!
//! Nothing here touches ATS: the plugin implements [`Backend`] over transactions, and
//! [`testing::MemoryBackend`] implements it in memory so real SDK-built modules can be driven
//! in unit tests. One concern per file, after the Rust SDK's layout:
//! [`types`] (the ABI's enums), [`memory`] (checked guest memory), [`serialization`] (header
//! maps), [`buffers`] (buffer ranges and edits), [`properties`] (property paths and value
//! encodings), [`backend`] (the proxy side), [`state`] (per-VM host state), [`shared`]
//! (process-wide shared data and queues), [`guest_metrics`] (the process-wide registry of the guests' metrics),
//! [`observe`] (timing callbacks), [`capabilities`] (`allowed_capabilities`), [`hostcalls`] and [`wasi`] (functions the guest
//! imports), [`exports`] (what a module exports: ABI version, callbacks), [`guest`] (callbacks
//! into the guest).

pub mod backend;
pub mod buffers;
pub mod capabilities;
pub mod exports;
pub mod guest;
pub mod hostcalls;
pub mod memory;
pub mod guest_metrics;
pub mod observe;
pub mod properties;
pub mod serialization;
pub mod shared;
pub mod state;
pub mod testing;
pub mod types;
pub mod wasi;

#[cfg(test)]
mod tests;

pub use backend::{Backend, HttpCallRequest, LocalResponse, QueueTarget};
pub use exports::{AbiVersion, validate_module};
pub use guest::ProxyVm;
pub use hostcalls::linker_for;
pub use guest_metrics::{MetricSnapshot, Metrics};
pub use observe::{Callback, CallbackObserver, Observer};
pub use shared::Shared;
pub use state::{HostState, HttpCallResponse, PluginInfo};
pub use types::{Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType};
