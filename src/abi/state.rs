//! The host state kept in each VM's `Store`.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Memory, TypedFunc};

use super::backend::Backend;
use super::guest::GuestExports;

/// What a filter was configured with; shared by all of its VMs.
#[derive(Debug, Default)]
pub struct PluginInfo {
    /// The filter's name (`config.name`).
    pub name: String,
    /// `config.root_id`: the root context's id string (`plugin_root_id`).
    pub root_id: String,
    /// `vm_config.vm_id` (`plugin_vm_id`).
    pub vm_id: String,
    /// The plugin configuration (`PLUGIN_CONFIGURATION` buffer).
    pub plugin_configuration: Vec<u8>,
    /// The VM configuration (`VM_CONFIGURATION` buffer).
    pub vm_configuration: Vec<u8>,
    /// Environment seen through WASI `environ_get`, as `KEY=VALUE` strings.
    pub environment: Vec<String>,
    /// Epoch ticks one callback may run.
    pub callback_deadline_ticks: u64,
}

/// A context the host created in this VM.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ContextKind<S> {
    /// The root (plugin) context.
    Root,
    /// A stream context and, while it is attached to one, its stream.
    Stream(Option<S>),
}

/// The per-VM state the host functions work on.
pub struct HostState<B: Backend> {
    /// The proxy side.
    pub backend: B,
    /// The filter's configuration.
    pub plugin: Arc<PluginInfo>,
    pub(crate) memory: Option<Memory>,
    pub(crate) allocator: Option<TypedFunc<i32, i32>>,
    pub(crate) exports: GuestExports,
    pub(crate) root_context_id: u32,
    pub(crate) next_context_id: u32,
    pub(crate) effective_context: u32,
    pub(crate) contexts: HashMap<u32, ContextKind<B::Stream>>,
    /// Contexts whose `proxy_on_done` answered `false`, and whether `proxy_done` came since.
    pub(crate) pending_done: Vec<(u32, bool)>,
    /// Reused buffer for values on their way into the guest.
    pub(crate) scratch: Vec<u8>,
    /// Why the guest asked to stop (`proc_exit`), for the error report.
    pub(crate) exit_code: Option<i32>,
}

impl<B: Backend> HostState<B> {
    /// A fresh state for a new VM of the filter `plugin`.
    pub fn new(backend: B, plugin: Arc<PluginInfo>) -> Self {
        Self {
            backend,
            plugin,
            memory: None,
            allocator: None,
            exports: GuestExports::default(),
            root_context_id: 0,
            next_context_id: 1,
            effective_context: 0,
            contexts: HashMap::new(),
            pending_done: Vec::new(),
            scratch: Vec::new(),
            exit_code: None,
        }
    }

    /// The stream of the effective context, if it is a stream context attached to one.
    pub(crate) fn effective_stream(&self) -> Option<B::Stream> {
        match self.contexts.get(&self.effective_context) {
            Some(ContextKind::Stream(s)) => *s,
            _ => None,
        }
    }

    /// The number of contexts alive in this VM (root included).
    pub fn live_contexts(&self) -> usize {
        self.contexts.len()
    }
}
