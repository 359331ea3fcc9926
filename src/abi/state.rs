//! The host state kept in each VM's `Store`.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Instance, Memory, TypedFunc};

use super::backend::Backend;
use super::capabilities::Capabilities;
use super::exports::{AbiVersion, GuestExports, HasInstance};
use super::guest_metrics::Metrics;
use super::observe::Observer;
use super::shared::Shared;

/// A map keyed by ids the host hands out itself (context ids, call tokens): no caller picks
/// the keys, so they need no flood-resistant hash. SipHash cost ~110 instructions per lookup,
/// and a cached request looked contexts up 7 times.
pub(crate) type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes one `u32` by a multiplication (Fibonacci hashing): hashbrown takes its bucket from
/// the low bits and its tag from the top 7, and the multiplication spreads a small
/// sequential id over both.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u32 keys are used; this keeps any other key correct, if slower.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What a filter was configured with; shared by all of its VMs.
#[derive(Debug, Default)]
pub struct PluginInfo {
    /// The filter's name (`config.name`).
    pub name: String,
    /// `config.root_id`: the root context's id string (`plugin_root_id`).
    pub root_id: String,
    /// `vm_config.vm_id` (`plugin_vm_id`); also the namespace of shared data and queues.
    pub vm_id: String,
    /// The plugin configuration (`PLUGIN_CONFIGURATION` buffer).
    pub plugin_configuration: Vec<u8>,
    /// The VM configuration (`VM_CONFIGURATION` buffer).
    pub vm_configuration: Vec<u8>,
    /// Environment seen through WASI `environ_get`, as `KEY=VALUE` strings.
    pub environment: Vec<String>,
    /// Epoch ticks one callback may run.
    pub callback_deadline_ticks: u64,
    /// `capability_restriction_config.allowed_capabilities`: the host functions the filter may
    /// call; `None` or empty allows all (see [`super::capabilities`]).
    pub allowed_capabilities: Option<Vec<String>>,
    /// Told the duration of every guest callback (none: callbacks are not timed).
    pub observer: Observer,
}

/// A context the host created in this VM.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ContextKind<S> {
    /// The root (plugin) context.
    Root,
    /// A stream context and, while it is attached to one, its stream.
    Stream(Option<S>),
}

/// An HTTP call's response as the proxy received it, delivered with
/// [`super::guest::on_http_call_response`]. No headers means the call failed (timeout, reset…).
#[derive(Debug, Default, Clone)]
pub struct HttpCallResponse {
    /// Response headers, `:status` included.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Why the call failed (empty on success); `proxy_get_status` returns it as the message.
    pub message: Vec<u8>,
}

impl HttpCallResponse {
    /// The numeric `:status`, or 0 when absent or not a number.
    pub fn status_code(&self) -> u32 {
        self.headers
            .iter()
            .find(|(k, _)| k == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A process-unique id for every VM ever created (never 0, never reused).
fn next_vm_uid() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The per-VM state the host functions work on.
pub struct HostState<B: Backend> {
    /// The proxy side.
    pub backend: B,
    /// The filter's configuration.
    pub plugin: Arc<PluginInfo>,
    /// Shared data and queues (process-wide, or a test's own).
    pub(crate) shared: Arc<Shared>,
    /// The guests' metrics registry (process-wide, or a test's own).
    pub(crate) metrics: Arc<Metrics>,
    /// The host functions the filter may call.
    pub(crate) capabilities: Capabilities,
    /// This VM's process-unique id.
    pub(crate) vm_uid: u64,
    /// The ABI version the module declared (set by initialization).
    pub(crate) abi: Option<AbiVersion>,
    /// The VM's instance (set by initialization).
    pub(crate) instance: Option<Instance>,
    /// The guest's exported memory (set by initialization).
    pub(crate) memory: Option<Memory>,
    /// The guest's allocator, `proxy_on_memory_allocate` or `malloc` (set by initialization).
    pub(crate) allocator: Option<Arc<TypedFunc<i32, i32>>>,
    /// The guest's callbacks, looked up on first use.
    pub(crate) exports: Arc<GuestExports>,
    /// The root context's id (0 before initialization).
    pub(crate) root_context_id: u32,
    /// Where the search for the next free context id starts.
    pub(crate) next_context_id: u32,
    /// The context host calls act for: the callback's, or the one `proxy_set_effective_context`
    /// chose.
    pub(crate) effective_context: u32,
    /// The contexts alive in this VM.
    pub(crate) contexts: IdMap<ContextKind<B::Stream>>,
    /// Contexts whose `proxy_on_done` answered `false`, and whether `proxy_done` came since.
    pub(crate) pending_done: Vec<(u32, bool)>,
    /// Outstanding HTTP calls: token → the context that made the call.
    pub(crate) http_calls: IdMap<u32>,
    /// Where the search for the next free HTTP call token starts.
    pub(crate) next_token: u32,
    /// The response being delivered by `proxy_on_http_call_response`.
    pub(crate) call_response: Option<HttpCallResponse>,
    /// The arguments being delivered by `proxy_on_foreign_function`.
    pub(crate) foreign_args: Option<Vec<u8>>,
    /// Set while `proxy_on_vm_start` runs (0.1.0's `proxy_get_configuration` answers the VM
    /// configuration then).
    pub(crate) in_vm_start: bool,
    /// Set while the host is inside the guest's allocator: host calls that would allocate
    /// again answer `INTERNAL_FAILURE` instead of recursing.
    pub(crate) in_allocator: bool,
    /// The tick period the guest asked for, if any.
    pub(crate) tick_period: Option<Duration>,
    /// Reused buffer for values on their way into the guest.
    pub(crate) scratch: Vec<u8>,
    /// A second reused buffer (keys read from the guest, a serialized map's bytes).
    pub(crate) scratch2: Vec<u8>,
    /// Why the guest asked to stop (`proc_exit`), for the error report.
    pub(crate) exit_code: Option<i32>,
    /// Whether a `memory.grow` was refused during the current callback (the store's resource
    /// limiter, installed by initialization).
    pub(crate) grow_watch: GrowWatch,
    /// Set while an initializer runs on the VM a snapshot is taken of: what it did through host
    /// calls (see `abi::snapshot`).
    pub(crate) journal: Option<Box<super::journal::InitJournal>>,
}

/// The store's resource limiter: it allows what the engine allows (the memory cap is the
/// pooling allocator's) and remembers a refused `memory.grow`, so that the trap a guest's
/// allocator raises after the refusal is reported as the memory cap, not a plain trap.
#[derive(Debug, Default)]
pub struct GrowWatch {
    refused: bool,
}

impl GrowWatch {
    /// Whether a `memory.grow` was refused since the last [`GrowWatch::reset`].
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Forgets earlier refusals (a new callback starts).
    pub fn reset(&mut self) {
        self.refused = false;
    }
}

impl wasmtime::ResourceLimiter for GrowWatch {
    fn memory_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl<B: Backend> HostState<B> {
    /// A fresh state for a new VM of the filter `plugin`, using the process-wide shared data,
    /// queues and metrics.
    pub fn new(backend: B, plugin: Arc<PluginInfo>) -> Self {
        Self::with_registries(backend, plugin, Shared::global(), Metrics::global())
    }

    /// A fresh state using the given shared data/queues and metrics registry (tests use their
    /// own to stay independent).
    pub fn with_registries(backend: B, plugin: Arc<PluginInfo>, shared: Arc<Shared>, metrics: Arc<Metrics>) -> Self {
        let capabilities = Capabilities::new(plugin.allowed_capabilities.as_deref());
        Self {
            backend,
            plugin,
            shared,
            metrics,
            capabilities,
            vm_uid: next_vm_uid(),
            abi: None,
            instance: None,
            memory: None,
            allocator: None,
            exports: Arc::default(),
            root_context_id: 0,
            next_context_id: 1,
            effective_context: 0,
            contexts: IdMap::default(),
            pending_done: Vec::new(),
            http_calls: IdMap::default(),
            next_token: 1,
            call_response: None,
            foreign_args: None,
            in_vm_start: false,
            in_allocator: false,
            tick_period: None,
            scratch: Vec::new(),
            scratch2: Vec::new(),
            exit_code: None,
            grow_watch: GrowWatch::default(),
            journal: None,
        }
    }

    /// Whether the guest's `memory.grow` was refused during the current callback (or, for a
    /// VM that failed to start, during its initialization).
    pub fn memory_refused(&self) -> bool {
        self.grow_watch.refused()
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

    /// This VM's process-unique id (what the `vm_id` foreign function returns, and what
    /// [`super::backend::QueueTarget::vm`] names).
    pub fn vm_uid(&self) -> u64 {
        self.vm_uid
    }

    /// The root context id (0 before initialization).
    pub fn root_context_id(&self) -> u32 {
        self.root_context_id
    }

    /// The ABI version the module declared (known after initialization).
    pub fn abi_version(&self) -> Option<AbiVersion> {
        self.abi
    }

    /// The tick period the guest asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick_period
    }

    /// HTTP calls sent and not answered yet.
    pub fn pending_http_calls(&self) -> usize {
        self.http_calls.len()
    }

    /// Forgets HTTP call `token` (its context is going away): a response delivered for it later
    /// is ignored. True when it was outstanding.
    pub fn cancel_http_call(&mut self, token: u32) -> bool {
        self.http_calls.remove(&token).is_some()
    }

    /// The exit code the guest passed to `proc_exit`, if it did.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }
}

impl<B: Backend> HasInstance for HostState<B> {
    fn instance(&self) -> Option<Instance> {
        self.instance
    }
}

/// Marks a context alive in `st` (used by the callback side when it creates contexts).
pub(crate) fn register_context<B: Backend>(st: &mut HostState<B>, id: u32, kind: ContextKind<B::Stream>) {
    st.contexts.insert(id, kind);
}

#[cfg(test)]
mod id_map_tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=1024u32).map(|id| b.hash_one(id)).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(buckets.len() > 600, "{} distinct low-bit buckets of 1024", buckets.len());
        assert_eq!(tags.len(), 128, "top-7-bit tags used");
    }

    #[test]
    fn an_id_map_finds_what_was_inserted_and_not_what_was_removed() {
        let mut m: IdMap<u32> = IdMap::default();
        for id in 1..=5000u32 {
            m.insert(id, id * 2);
        }
        for id in (2..=5000u32).step_by(2) {
            m.remove(&id);
        }
        for id in 1..=5000u32 {
            assert_eq!(m.get(&id).copied(), (id % 2 == 1).then_some(id * 2), "id {id}");
        }
    }
}
