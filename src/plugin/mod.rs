//! The ATS plugin: `TSPluginInit` → configuration → filters, and transaction hooks →
//! Proxy-Wasm callbacks.
//!
//! Each configured filter has one compiled module and a [`VmPool`](ats_wasm_pool::VmPool)
//! with VMs per net thread. At `READ_REQUEST_HDR` every filter, in `plugin.config` order,
//! leases a VM from its current thread's pool (`shared`: one of the thread's long-lived VMs;
//! `transaction`: a fresh VM of its own), gets a stream context in it and runs
//! `proxy_on_request_headers`; at `SEND_RESPONSE_HDR` the filters run
//! `proxy_on_response_headers` in reverse order (as Envoy does); at `TXN_CLOSE` each context
//! ends with `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`, the leases go back and the
//! thread's pools refill (after the response, so off the request path).

pub mod backend;
mod body;
mod filter;
mod http_call;
pub mod properties;
pub mod telemetry;

use std::cell::{Cell, RefCell};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ats_wasm_pool::{EngineOptions, LeasedVm, ModuleCompiler, PoolError, WasmEngine};

use crate::abi::{Action, HostState, MapType, QueueTarget, guest};
use crate::config;
use crate::ts::headers::{HeaderMap, WellKnownName};
use crate::ts::hooks::{
    EventThread, HttpHook, TimerHandler, TxnCont, TxnHandler, TxnTimer, TxnTimerHandler, every_on_this_thread,
};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn, TxnSlot};
use backend::{AtsBackend, Phase, StreamControl, TxnStream, next_stream_control, take_stream_control};
use filter::Filter;
use telemetry::FailureReason;

/// Everything the hooks need, set once by [`init`].
struct Plugin {
    filters: Vec<Filter>,
    /// The per-VM memory cap (`--max-memory`).
    max_memory_bytes: usize,
    slot: TxnSlot<TxnState>,
    cont: TxnCont,
    /// Dropped last: its ticker drives every VM's deadline.
    _engine: WasmEngine,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// One filter's context in one transaction, in the VM it leased.
struct FilterCtx {
    filter: usize,
    lease: LeasedVm<HostState<AtsBackend>>,
    ctx: u32,
}

/// Per-transaction state: the live contexts, in chain order, the extra headers of a local
/// response a filter sent from the request phase, and where the transaction is parked.
struct TxnState {
    contexts: Vec<FilterCtx>,
    local_response_headers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    paused: Option<Paused>,
    hooks_added: bool,
    bodies: body::TxnBodies,
}

impl TxnState {
    fn empty() -> Self {
        TxnState {
            contexts: Vec::new(),
            local_response_headers: None,
            paused: None,
            hooks_added: false,
            bodies: body::TxnBodies::default(),
        }
    }
}

/// Where a parked transaction goes on: the phase, and the next filter (request phase: index
/// into the chain) or the context index below which response filters still have to run.
struct Paused {
    phase: Phase,
    next: usize,
    /// Goes off after the pausing filter's pause timeout; dropped (cancelled) with the pause.
    _timer: Option<TxnTimer>,
}

impl Paused {
    /// The filter (index into the chain) that paused, given the transaction's contexts.
    fn filter(&self, contexts: &[FilterCtx]) -> Option<usize> {
        match self.phase {
            Phase::Request => self.next.checked_sub(1),
            _ => contexts.get(self.next).map(|c| c.filter),
        }
    }
}

/// Runs when a transaction stayed parked for its pausing filter's pause timeout
/// (`pause_timeout_ms`, else `--pause-timeout-ms`).
struct PauseTimeout;

impl TxnTimerHandler for PauseTimeout {
    fn on_txn_timer(txn: Txn) {
        if let Some(p) = PLUGIN.get() {
            p.pause_timed_out(txn);
        }
    }
}

thread_local! {
    /// Which filters' timers run on this thread.
    static TIMERS_STARTED: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
    /// This thread's index in [`THREADS`], once registered.
    static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    /// Live transactions of this thread with contexts in VMs of their own (`transaction`
    /// isolation): queue notifications for those VMs are delivered through them.
    static OWN_VM_TXNS: RefCell<Vec<Txn>> = const { RefCell::new(Vec::new()) };
}

/// Runs `proxy_on_queue_ready` in `vm` for each of `targets` that names it; stops at the first
/// failure.
fn queue_ready_in(vm: &mut guest::ProxyVm<AtsBackend>, targets: &[QueueTarget]) -> wasmtime::Result<()> {
    let uid = vm.store.data().vm_uid();
    for t in targets.iter().filter(|t| t.vm == uid) {
        guest::on_queue_ready(vm, t.context_id, t.queue_id)?;
    }
    Ok(())
}

/// Whether a filter's contexts live in VMs of their transaction's own.
fn owns_vms(f: &Filter) -> bool {
    f.pool.config().isolation == ats_wasm_pool::Isolation::Transaction
}

/// The net threads that have run transactions (and so may own VMs), each with its mailbox of
/// shared-queue notifications not yet delivered.
static THREADS: Mutex<Vec<(EventThread, Vec<QueueTarget>)>> = Mutex::new(Vec::new());

fn threads() -> std::sync::MutexGuard<'static, Vec<(EventThread, Vec<QueueTarget>)>> {
    THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the current net thread (once) so shared-queue notifications can reach its VMs.
fn register_thread() {
    if THREAD_INDEX.with(Cell::get).is_some() {
        return;
    }
    if let Some(t) = EventThread::current() {
        let mut all = threads();
        all.push((t, Vec::new()));
        THREAD_INDEX.with(|i| i.set(Some(all.len() - 1)));
    }
}

/// An item was enqueued on a shared queue: the VM that registered it may live on any thread,
/// so the notification goes to every known net thread's mailbox, and each thread delivers it
/// to its own VMs (the registering VM is on exactly one of them).
pub(crate) fn notify_queue(target: QueueTarget) {
    let mut all = threads();
    for (i, (thread, mailbox)) in all.iter_mut().enumerate() {
        let was_empty = mailbox.is_empty();
        mailbox.push(target);
        if was_empty && !thread.run_once::<QueueDelivery>(i) {
            mailbox.clear();
        }
    }
}

/// Delivers a thread's mailbox of shared-queue notifications; the data is the thread index.
struct QueueDelivery;

impl TimerHandler for QueueDelivery {
    fn on_timer(thread: usize) {
        let targets = match threads().get_mut(thread) {
            Some((_, mailbox)) => std::mem::take(mailbox),
            None => return,
        };
        if let Some(p) = PLUGIN.get() {
            p.deliver_queue_ready(&targets);
        }
    }
}

/// The per-thread tick timers; the timer data is the filter's index.
struct Timers;

impl TimerHandler for Timers {
    fn on_timer(filter: usize) {
        if let Some(p) = PLUGIN.get() {
            p.tick(filter);
        }
    }
}

/// Collapses a (possibly multi-line) error into one diags.log line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    format!("{e:#}").split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// The epoch tick for callback deadlines as short as `shortest_deadline_ms`: a tenth of it,
/// from 1 ms to 10 ms. Every tick wakes the ticker thread, which on a loaded proxy takes the
/// CPU from a net thread; a tenth keeps a deadline within 10 % of its value.
fn epoch_tick_for(shortest_deadline_ms: u64) -> Duration {
    Duration::from_micros((shortest_deadline_ms * 100).clamp(1_000, 10_000))
}

/// Plugin entry: registers, parses arguments and filter files, loads modules, installs hooks.
/// Every problem is one `TSError` line; the plugin then runs without the broken part (or, for
/// bad arguments or no usable filter, without hooks) and ATS keeps serving.
pub fn init(args: &[String]) {
    if !crate::ts::plugin::register(c"ats_wasm", c"ats-wasm", c"ats-wasm@users.noreply.invalid") {
        log::error(b"ats_wasm: plugin registration failed; the plugin is disabled");
        return;
    }
    let config_dir = crate::ts::plugin::config_dir();
    let args = match config::parse_args(args, &config_dir) {
        Ok(a) => a,
        Err(e) => {
            log::error(format!("ats_wasm: bad plugin argument: {e}; the plugin is disabled").as_bytes());
            return;
        }
    };

    let mut configs = Vec::new();
    for path in &args.yaml_files {
        let cfg = match config::load_filter(path, &config_dir, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                log::error(format!("ats_wasm: {e}; this filter is skipped").as_bytes());
                continue;
            }
        };
        if !cfg.unknown_keys.is_empty() {
            log::warning(
                format!("ats_wasm: {}: unknown keys ignored: {}", path.display(), cfg.unknown_keys.join(", "))
                    .as_bytes(),
            );
        }
        configs.push((path, cfg));
    }

    let shortest_deadline_ms = configs
        .iter()
        .map(|(_, c)| c.callback_deadline_ms.unwrap_or(args.callback_deadline_ms))
        .min()
        .unwrap_or(args.callback_deadline_ms);
    let opts = EngineOptions {
        max_memory_bytes: args.max_memory_bytes,
        // VMs (pool slots) at once: net threads × filters × (ready VMs + VMs leased by
        // concurrent transactions in `transaction` isolation).
        max_instances: args.max_vms,
        epoch_tick: epoch_tick_for(shortest_deadline_ms),
        ..EngineOptions::default()
    };
    let engine = match WasmEngine::new(&opts) {
        Ok(e) => e,
        Err(e) => {
            log::error(format!("ats_wasm: {}; the plugin is disabled", one_line(&e)).as_bytes());
            return;
        }
    };
    let endpoint = telemetry::prepare(args.metrics_listen);
    // Compiles each distinct module once per process (and, with --module-cache, once per
    // machine and wasmtime version).
    let compiler = ModuleCompiler::new(engine.engine(), args.module_cache.clone());

    let mut filters = Vec::new();
    for (path, cfg) in configs {
        match Filter::load(&engine, &compiler, cfg, &args, endpoint.as_ref().map(|(_, e)| e)) {
            Ok(f) => {
                log::note(format!("ats_wasm: filter \"{}\" loaded from {}", f.name, path.display()).as_bytes());
                filters.push(f);
            }
            Err(e) => log::error(format!("ats_wasm: {}: {e}; this filter is skipped", path.display()).as_bytes()),
        }
    }
    if filters.is_empty() {
        log::error(b"ats_wasm: no filter could be loaded; the plugin installs no hooks");
        return;
    }
    let Some(slot) = TxnSlot::reserve("ats_wasm", "ats-wasm per-transaction filter contexts") else {
        log::error(b"ats_wasm: no transaction user argument slot is free; the plugin installs no hooks");
        return;
    };
    let cont = TxnCont::new::<Hooks>();
    let plugin = Plugin { filters, max_memory_bytes: args.max_memory_bytes, slot, cont, _engine: engine };
    if PLUGIN.set(plugin).is_err() {
        log::error(b"ats_wasm: the plugin was initialized twice; the second configuration is ignored");
        return;
    }
    cont.add_global(HttpHook::ReadRequestHdr);
    telemetry::start(endpoint, filter_snapshots);
}

/// Every filter's name, pool counters and metrics (for the metrics threads).
fn filter_snapshots() -> Vec<telemetry::FilterSnapshot> {
    let filters = PLUGIN.get().map(|p| &p.filters[..]).unwrap_or_default();
    filters
        .iter()
        .map(|f| telemetry::FilterSnapshot { name: f.name.clone(), pool: f.pool.stats(), metrics: f.metrics.clone() })
        .collect()
}

struct Hooks;

impl TxnHandler for Hooks {
    fn on_hook(hook: HttpHook, txn: Txn) -> Resume {
        let Some(p) = PLUGIN.get() else {
            return Resume::Continue;
        };
        match hook {
            HttpHook::ReadRequestHdr => p.request_headers(txn),
            HttpHook::SendRequestHdr => {
                if txn.is_internal() {
                    // Our HTTP calls' transactions.
                    http_call::call_request_leaving(txn);
                } else {
                    // Transactions with a request body transform.
                    p.send_request_headers(txn);
                }
                Resume::Continue
            }
            HttpHook::SendResponseHdr => p.response_headers(txn),
            HttpHook::TxnClose => {
                p.close(txn);
                Resume::Continue
            }
        }
    }
}

/// The size of a VM's linear memory.
fn memory_size(vm: &mut guest::ProxyVm<AtsBackend>) -> Option<usize> {
    let memory = vm.instance.get_memory(&mut vm.store, "memory")?;
    Some(memory.data_size(&vm.store))
}

/// Names why a guest callback failed: its deadline (epoch interrupt), the memory cap (the
/// guest's memory is within one page of `--max-memory`, so its allocator failed and it
/// aborted), or a trap.
fn failure_kind(err: &wasmtime::Error, memory: Option<usize>, cap: usize) -> (&'static str, FailureReason) {
    if matches!(err.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        ("deadline exceeded", FailureReason::Deadline)
    } else if memory.is_some_and(|m| m + 65536 > cap) {
        ("memory cap reached", FailureReason::MemoryCap)
    } else {
        ("trap", FailureReason::Trap)
    }
}

/// Puts a guest's local-response headers on the response ATS built, replacing what ATS's
/// error-page path adds (`Cache-Control: no-store`, `Content-Language`). A 204 or 304 carries
/// no body, so it loses the `Content-Length` ATS leaves there.
fn apply_local_response_headers(h: &HeaderMap, extra: &[(Vec<u8>, Vec<u8>)]) {
    h.remove(b"cache-control");
    h.remove(b"content-language");
    if matches!(h.status(), 204 | 304) {
        h.remove(b"content-length");
    }
    for (k, v) in extra {
        h.add(k, v);
    }
}

/// `end_of_stream` for a header block: true when no body follows (no `Transfer-Encoding`, and
/// no `Content-Length` or only zero ones).
fn no_body(h: &HeaderMap) -> bool {
    if h.for_each_well_known_value(WellKnownName::TransferEncoding, |_| {}) {
        return false;
    }
    let mut zero = true;
    let found = h.for_each_well_known_value(WellKnownName::ContentLength, |v| {
        zero &= v.iter().all(|&b| b == b'0' || b == b' ');
    });
    !found || zero
}

impl Plugin {
    /// Applies a filter's failure policy after `what` failed: fail-open drops the filter for
    /// this transaction, fail-closed fails the transaction. One diags.log line says why.
    fn failed(&self, f: &Filter, what: &str, err: &dyn std::fmt::Display) -> Resume {
        let policy = if f.fail_open {
            "fail_open: the transaction continues without it"
        } else {
            "fail_closed: the transaction fails"
        };
        log::error(format!("ats_wasm: filter \"{}\": {what} failed: {}; {policy}", f.name, one_line(err)).as_bytes());
        f.metrics.outcome(f.fail_open);
        if f.fail_open { Resume::Continue } else { Resume::Error }
    }

    /// A guest callback failed (trap, deadline, memory cap): the VM is poisoned — never used
    /// again, replaced on refill — and the lease goes back.
    fn guest_failed(
        &self,
        f: &Filter,
        mut lease: LeasedVm<HostState<AtsBackend>>,
        what: &str,
        err: &wasmtime::Error,
    ) -> Resume {
        let memory = f.pool.with_leased(&mut lease, memory_size).ok().flatten();
        f.pool.poison_leased(&mut lease);
        f.pool.release(lease);
        let (why, reason) = failure_kind(err, memory, self.max_memory_bytes);
        f.metrics.callback_failed(reason);
        self.failed(f, &format!("{what} ({why})"), err)
    }

    /// The pool could not give or reach a VM.
    fn pool_failed(&self, f: &Filter, what: &str, err: &PoolError) -> Resume {
        match err {
            // Reported once when creation first failed; the back-off itself is not news.
            PoolError::BackingOff => {
                log::debug(format!("[{}] {what}: {err}", f.name).as_bytes());
                f.metrics.outcome(f.fail_open);
                if f.fail_open { Resume::Continue } else { Resume::Error }
            }
            _ => self.failed(f, what, err),
        }
    }

    /// Fail-closed in the request phase: the client gets a 503 local response and the origin is
    /// not contacted.
    fn fail_closed_local(txn: Txn, filter: &str) -> Resume {
        let body = format!("503 Service Unavailable: filter \"{filter}\" failed\n");
        txn.set_local_response(503, body.as_bytes(), "text/plain");
        Resume::Continue
    }

    fn request_headers(&self, txn: Txn) -> Resume {
        if txn.is_internal() {
            // Our own HTTP calls, and other plugins' internal requests: no filters.
            http_call::internal_request(txn, self.cont);
            return Resume::Continue;
        }
        self.ensure_timers();
        let mut state = TxnState { contexts: Vec::with_capacity(self.filters.len()), ..TxnState::empty() };
        let resume = self.run_request_filters(txn, &mut state, 0);
        self.finish_request_phase(txn, state, resume)
    }

    /// Stores the transaction's state and adds its later hooks (once), unless no filter has a
    /// context in it.
    fn finish_request_phase(&self, txn: Txn, mut state: TxnState, resume: Resume) -> Resume {
        if state.contexts.is_empty() && state.paused.is_none() {
            self.refill();
            return resume;
        }
        if !state.hooks_added {
            state.hooks_added = true;
            self.cont.add_to_txn(txn, HttpHook::SendResponseHdr);
            self.cont.add_to_txn(txn, HttpHook::TxnClose);
        }
        if resume == Resume::Continue {
            self.install_body_transforms(txn, &mut state);
        }
        if state.contexts.iter().any(|c| owns_vms(&self.filters[c.filter])) {
            OWN_VM_TXNS.with(|t| {
                let mut t = t.borrow_mut();
                if !t.contains(&txn) {
                    t.push(txn);
                }
            });
        }
        self.slot.put(txn, state);
        resume
    }

    /// Runs `proxy_on_request_headers` of the filters from `from` on, in chain order. Returns
    /// `Parked` (with `state.paused` set) when a filter paused the request.
    fn run_request_filters(&self, txn: Txn, state: &mut TxnState, from: usize) -> Resume {
        let (num_headers, eos) = match txn.client_request() {
            Some(h) => (backend::visible_len(MapType::RequestHeaders, &h), no_body(&h)),
            None => (0, true),
        };
        let stream = TxnStream { txn, phase: Phase::Request };
        for (i, f) in self.filters.iter().enumerate().skip(from) {
            let mut lease = match f.pool.lease() {
                Ok(l) => {
                    f.metrics.request();
                    l
                }
                Err(e) => {
                    if self.pool_failed(f, "getting a VM", &e) == Resume::Error {
                        return Self::fail_closed_local(txn, &f.name);
                    }
                    continue;
                }
            };
            let r = f.pool.with_leased(&mut lease, |vm| {
                let ctx = guest::create_stream_context(vm, stream)?;
                let action = guest::on_request_headers(vm, ctx, num_headers, eos)?;
                Ok::<_, wasmtime::Error>((ctx, action, vm.store.data_mut().backend.take_local_response(txn)))
            });
            let resume = match r {
                Ok(Ok((ctx, _, Some(local)))) => {
                    // A local response: ATS answers without the origin, and the later filters'
                    // request callbacks do not run. Response callbacks still see the response.
                    state.contexts.push(FilterCtx { filter: i, lease, ctx });
                    state.local_response_headers = Some(local.headers);
                    return Resume::Continue;
                }
                Ok(Ok((ctx, action, None))) => {
                    state.contexts.push(FilterCtx { filter: i, lease, ctx });
                    if action == Action::Pause {
                        match take_stream_control(txn) {
                            // Continued within the same callback.
                            Some(StreamControl::Continue) => {}
                            Some(StreamControl::Close) => return Resume::Error,
                            None => {
                                state.paused = Some(Self::pause(txn, f, Phase::Request, i + 1));
                                return Resume::Parked;
                            }
                        }
                    }
                    Resume::Continue
                }
                Ok(Err(e)) => self.guest_failed(f, lease, "proxy_on_request_headers", &e),
                Err(e) => {
                    f.pool.release(lease);
                    self.pool_failed(f, "reaching its VM", &e)
                }
            };
            if resume == Resume::Error {
                return Self::fail_closed_local(txn, &f.name);
            }
        }
        Resume::Continue
    }

    fn response_headers(&self, txn: Txn) -> Resume {
        if txn.is_internal() {
            // Only our HTTP calls' transactions get this hook while internal.
            http_call::call_response_leaving(txn);
            return Resume::Continue;
        }
        // In place: the hook returns before the transaction is re-enabled.
        self.slot
            .with(txn, |state| {
                if let Some(extra) = state.local_response_headers.take()
                    && let Some(h) = txn.client_response()
                {
                    apply_local_response_headers(&h, &extra);
                }
                let n = state.contexts.len();
                let resume = self.run_response_filters(txn, state, n);
                if resume == Resume::Continue {
                    // Schedules (never runs) the response body transform.
                    Self::response_headers_done(state);
                }
                resume
            })
            .unwrap_or(Resume::Continue)
    }

    /// Runs `proxy_on_response_headers` of the contexts below index `from`, in reverse chain
    /// order. Returns `Parked` (with `state.paused` set) when a filter paused the response.
    fn run_response_filters(&self, txn: Txn, state: &mut TxnState, from: usize) -> Resume {
        let (num_headers, eos) = match txn.client_response() {
            Some(h) => {
                (backend::visible_len(MapType::ResponseHeaders, &h), no_body(&h) || matches!(h.status(), 204 | 304))
            }
            None => (0, true),
        };
        let phase = if state.bodies.has_response_transform() { Phase::ResponseTransformed } else { Phase::Response };
        let stream = TxnStream { txn, phase };
        let mut i = from.min(state.contexts.len());
        while i > 0 {
            i -= 1;
            let fc = &mut state.contexts[i];
            let f = &self.filters[fc.filter];
            let ctx = fc.ctx;
            let r = f.pool.with_leased(&mut fc.lease, |vm| {
                guest::attach_stream(vm, ctx, stream);
                let action = guest::on_response_headers(vm, ctx, num_headers, eos);
                (action, vm.store.data_mut().backend.take_local_response(txn))
            });
            let r = match r {
                Ok((action, Some(local))) if action.is_ok() => {
                    // A local response (only accepted with a response transform): the later
                    // response filters do not run.
                    Self::apply_response_local(txn, state, local);
                    return Resume::Continue;
                }
                Ok((action, _)) => Ok(action),
                Err(e) => Err(e),
            };
            let resume = match r {
                Ok(Ok(Action::Pause)) => match take_stream_control(txn) {
                    Some(StreamControl::Continue) => Resume::Continue,
                    Some(StreamControl::Close) => Resume::Error,
                    None => {
                        state.paused = Some(Self::pause(txn, f, Phase::Response, i));
                        return Resume::Parked;
                    }
                },
                Ok(Ok(Action::Continue)) => Resume::Continue,
                Ok(Err(e)) => {
                    let fc = state.contexts.remove(i);
                    self.guest_failed(f, fc.lease, "proxy_on_response_headers", &e)
                }
                Err(e) => {
                    // E.g. the shared VM was poisoned by another transaction meanwhile.
                    let fc = state.contexts.remove(i);
                    f.pool.release(fc.lease);
                    self.pool_failed(f, "reaching its VM for the response", &e)
                }
            };
            if resume == Resume::Error {
                return resume;
            }
        }
        Resume::Continue
    }

    /// Applies a guest's `proxy_continue_stream` / `proxy_close_stream` to a parked
    /// transaction: runs the rest of its paused phase and re-enables it. Called only from a
    /// timer continuation on the transaction's thread, never inside a guest call.
    fn resume_txn(&self, txn: Txn, control: StreamControl) {
        let Some(mut state) = self.slot.take(txn) else {
            return;
        };
        let Some(paused) = state.paused.take() else {
            // Not parked (e.g. continued before it paused): nothing to do.
            self.slot.put(txn, state);
            return;
        };
        let (phase, next) = (paused.phase, paused.next);
        // Cancels its timer.
        drop(paused);
        let resume = match (control, phase) {
            (StreamControl::Close, _) => Resume::Error,
            (StreamControl::Continue, Phase::Request) => self.run_request_filters(txn, &mut state, next),
            (StreamControl::Continue, _) => self.run_response_filters(txn, &mut state, next),
        };
        let resume = match phase {
            Phase::Request => self.finish_request_phase(txn, state, resume),
            _ => {
                if resume == Resume::Continue {
                    Self::response_headers_done(&mut state);
                }
                self.slot.put(txn, state);
                resume
            }
        };
        // The state is stored again before this: re-enabling may run the next hook at once.
        txn.reenable(resume);
    }

    /// A pause of `txn` by filter `f` in `phase` that goes on at `next` (see [`Paused`]), with
    /// its timer.
    fn pause(txn: Txn, f: &Filter, phase: Phase, next: usize) -> Paused {
        let timer = f.pause_timeout.and_then(|d| {
            let t = TxnTimer::start::<PauseTimeout>(txn, d);
            if t.is_none() {
                log::debug(b"no pause timer (not on an event thread, or ATS refused)");
            }
            t
        });
        Paused { phase, next, _timer: timer }
    }

    /// A filter kept `txn` parked for its pause timeout: counted as a failure of that
    /// filter (reason `pause_timeout`), and its policy decides, as for a failed callback.
    fn pause_timed_out(&self, txn: Txn) {
        let Some(state) = self.slot.take(txn) else { return };
        let Some(paused) = &state.paused else {
            self.slot.put(txn, state);
            return;
        };
        let what = if paused.phase == Phase::Request { "the paused request" } else { "the paused response" };
        let Some(f) = paused.filter(&state.contexts).and_then(|i| self.filters.get(i)) else {
            self.slot.put(txn, state);
            self.resume_txn(txn, StreamControl::Continue);
            return;
        };
        f.metrics.callback_failed(FailureReason::PauseTimeout);
        let ms = f.pause_timeout.map_or(0, |d| d.as_millis());
        self.failed(f, what, &format!("not continued within {ms} ms (pause timeout)"));
        self.fail_parked(txn, state, f.fail_open, &f.name);
    }

    /// Ends the pause of a parked transaction (`state.paused` set) whose pausing filter failed,
    /// under that filter's policy: fail-open runs the rest of the paused phase; fail-closed
    /// answers with a 503 local response in the request phase and fails the transaction in
    /// the response phase.
    fn fail_parked(&self, txn: Txn, mut state: TxnState, fail_open: bool, name: &str) {
        if !fail_open && state.paused.as_ref().is_some_and(|p| p.phase == Phase::Request) {
            state.paused = None;
            let resume = Self::fail_closed_local(txn, name);
            let resume = self.finish_request_phase(txn, state, resume);
            txn.reenable(resume);
        } else {
            self.slot.put(txn, state);
            let control = if fail_open { StreamControl::Continue } else { StreamControl::Close };
            self.resume_txn(txn, control);
        }
    }

    /// Starts this thread's timers for the filters whose modules asked for ticks (once per
    /// thread and filter).
    fn ensure_timers(&self) {
        register_thread();
        TIMERS_STARTED.with(|started| {
            let mut started = started.borrow_mut();
            if started.len() == self.filters.len() {
                return;
            }
            started.resize(self.filters.len(), false);
            for (i, f) in self.filters.iter().enumerate() {
                if let Some(period) = f.tick_period
                    && !started[i]
                {
                    started[i] = true;
                    if !every_on_this_thread::<Timers>(period, i) {
                        log::error(format!("ats_wasm: filter \"{}\": cannot start its timer", f.name).as_bytes());
                    }
                }
            }
        });
    }

    /// One tick of filter `i` on this thread: `proxy_on_tick` of every VM of this thread that
    /// asked for ticks, then the stream controls those ticks issued.
    fn tick(&self, i: usize) {
        let Some(f) = self.filters.get(i) else { return };
        let pool = f.tick_pool.as_ref().unwrap_or(&f.pool);
        if f.tick_pool.is_some() {
            pool.refill(1);
        }
        self.run_in_local_vms(f, pool, "proxy_on_tick", |vm| {
            if vm.store.data().tick_period().is_some() { guest::on_tick(vm) } else { Ok(()) }
        });
        self.apply_stream_controls();
    }

    /// Runs `callback` (named `what` for diags.log) in each of this thread's VMs of `pool`, a
    /// pool of filter `f`; a VM where it fails is poisoned (replaced on refill), counted and
    /// reported in one line.
    fn run_in_local_vms(
        &self,
        f: &Filter,
        pool: &ats_wasm_pool::VmPool<HostState<AtsBackend>>,
        what: &str,
        mut callback: impl FnMut(&mut guest::ProxyVm<AtsBackend>) -> wasmtime::Result<()>,
    ) {
        let mut failed = Vec::new();
        pool.for_each_local(|r, vm| {
            if let Err(e) = callback(vm) {
                failed.push((r, e));
            }
        });
        for (r, e) in failed {
            pool.poison(r);
            f.metrics.callback_failed(failure_kind(&e, None, self.max_memory_bytes).1);
            log::error(
                format!("ats_wasm: filter \"{}\": {what} failed: {}; the VM is replaced", f.name, one_line(&e))
                    .as_bytes(),
            );
        }
    }

    /// Resumes or closes the transactions guests continued or closed during the callbacks
    /// that just ran on this thread.
    fn apply_stream_controls(&self) {
        while let Some((txn, control)) = next_stream_control() {
            self.resume_txn(txn, control);
        }
    }

    /// Runs `proxy_on_queue_ready` in this thread's VMs that registered the queues of
    /// `targets` (shared VMs and per-thread root VMs; a VM that is gone misses it, and the
    /// item stays queued).
    fn deliver_queue_ready(&self, targets: &[QueueTarget]) {
        for f in &self.filters {
            for pool in [Some(&f.pool), f.tick_pool.as_ref()].into_iter().flatten() {
                self.run_in_local_vms(f, pool, "proxy_on_queue_ready", |vm| queue_ready_in(vm, targets));
            }
        }
        // VMs that belong to a transaction (`transaction` isolation) are in no pool.
        let txns = OWN_VM_TXNS.with(|t| t.borrow().clone());
        for txn in txns {
            self.slot.with(txn, |state| {
                let mut i = 0;
                while i < state.contexts.len() {
                    let fc = &mut state.contexts[i];
                    let f = &self.filters[fc.filter];
                    if !owns_vms(f) {
                        // A shared VM: reached through its pool above.
                        i += 1;
                        continue;
                    }
                    let r = f.pool.with_leased(&mut fc.lease, |vm| queue_ready_in(vm, targets));
                    match r {
                        Ok(Err(e)) => {
                            let fc = state.contexts.remove(i);
                            self.guest_failed(f, fc.lease, "proxy_on_queue_ready", &e);
                        }
                        _ => i += 1,
                    }
                }
            });
        }
        self.apply_stream_controls();
    }

    fn close(&self, txn: Txn) {
        OWN_VM_TXNS.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(i) = t.iter().position(|x| *x == txn) {
                t.swap_remove(i);
            }
        });
        // Calls still in flight: their responses will be dropped.
        let calls = Self::forget_calls(txn);
        let Some(state) = self.slot.take(txn) else {
            return;
        };
        let stream = TxnStream { txn, phase: Phase::Close };
        for mut fc in state.contexts {
            let f = &self.filters[fc.filter];
            let ctx = fc.ctx;
            let r = f.pool.with_leased(&mut fc.lease, |vm| {
                let st = vm.store.data_mut();
                let uid = st.vm_uid();
                for (_, token) in calls.iter().filter(|(vm, _)| *vm == uid) {
                    st.cancel_http_call(*token);
                }
                guest::attach_stream(vm, ctx, stream);
                guest::finish_stream_context(vm, ctx)
            });
            match r {
                Ok(Ok(())) => f.pool.release(fc.lease),
                Ok(Err(e)) => {
                    self.guest_failed(f, fc.lease, "ending the stream context", &e);
                }
                Err(e) => {
                    f.pool.release(fc.lease);
                    log::debug(format!("[{}] context lost before close: {e}", f.name).as_bytes());
                }
            }
        }
        self.refill();
    }

    /// Tops this thread's pools back up to their size (fresh VMs for `transaction` isolation,
    /// replacements for poisoned `shared` VMs). Runs after a transaction's response, so the
    /// cost is off every request path.
    fn refill(&self) {
        for f in &self.filters {
            let r = f.pool.refill(f.pool_size);
            if let Some(e @ PoolError::Init(_)) = &r.error {
                log::error(
                    format!("ats_wasm: filter \"{}\": creating a VM failed: {}", f.name, one_line(e)).as_bytes(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_tick_is_a_tenth_of_the_shortest_deadline_within_1_to_10_ms() {
        assert_eq!(epoch_tick_for(100), Duration::from_millis(10));
        assert_eq!(epoch_tick_for(60_000), Duration::from_millis(10));
        assert_eq!(epoch_tick_for(25), Duration::from_micros(2_500));
        assert_eq!(epoch_tick_for(5), Duration::from_millis(1));
        assert_eq!(epoch_tick_for(1), Duration::from_millis(1));
    }
}
