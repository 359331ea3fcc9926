//! The Proxy-Wasm ABI host: host functions and callback dispatch over a [`Backend`].
//!
//! Nothing here touches ATS: the plugin implements [`Backend`] over transactions, and
//! [`testing::MemoryBackend`] implements it in memory so real SDK-built modules can be driven
//! in unit tests. One concern per file, after the Rust SDK's layout. In dependency order (the
//! `use` lines of each file name only files above it, so there is no import cycle):
//!
//! 1. [`types`] (the ABI's enums), [`capabilities`] (`allowed_capabilities`), [`observe`]
//!    (timing callbacks), [`exports`] (what a module exports: ABI version, validation,
//!    callback lookup) — no imports from this module;
//! 2. [`memory`] (checked guest memory), [`serialization`] (header maps), [`buffers`] (buffer
//!    ranges and edits), [`guest_metrics`] (the process-wide registry of the guests' metrics),
//!    [`backend`] (the proxy side) — on `types`;
//! 3. [`properties`] (property paths and value encodings; on `serialization`), [`shared`]
//!    (process-wide shared data and queues; on `backend`), [`testing`] (an in-memory backend),
//!    [`journal`] (what an initializer recorded for a snapshot did; on `types`);
//! 4. [`state`] (per-VM host state; on `backend`, `capabilities`, `exports`, `guest_metrics`,
//!    `journal`, `observe`, `shared`);
//! 5. [`hostcalls`] (the functions the guest imports, WASI included) and [`guest`] (VM
//!    initialization and callbacks into the guest) — on `state` and below, not on each other;
//! 6. [`snapshot`] (VMs that start from a snapshot of an initialized VM; on `guest`, `hostcalls`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod buffers;
pub mod capabilities;
pub mod exports;
pub mod guest;
pub mod guest_metrics;
pub mod hostcalls;
pub mod journal;
pub mod memory;
pub mod observe;
pub mod properties;
pub mod serialization;
pub mod shared;
pub mod snapshot;
pub mod state;
pub mod testing;
pub mod types;

#[cfg(test)]
mod tests;

pub use backend::{Backend, HttpCallRequest, LocalResponse, QueueTarget};
pub use exports::{AbiVersion, validate_module};
pub use guest::{InitError, ProxyVm};
pub use guest_metrics::{MetricSnapshot, Metrics};
pub use hostcalls::{Stub, link, linker_for};
pub use observe::{Callback, CallbackObserver, Observer};
pub use shared::{Shared, SharedLimits};
pub use state::{HostState, HttpCallResponse, PluginInfo};
pub use types::{Action, BufferType, LogLevel, MapType, MetricType, PeerType, SharedBound, Status, StreamType};
