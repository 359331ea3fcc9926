//! The host side of VM snapshots: what an initializer did through host calls, recorded while it
//! runs on the VM a snapshot is taken of ([`InitJournal`]), and how a VM instantiated from the
//! snapshot module gets the same host-side state without running guest code ([`restore`]).
//!
//! Every host call an initializer makes is one of three kinds:
//! - **pure**: reads whose answer the snapshot's memory keeps (configuration, properties, log
//!   level, clocks, `random_get`, shared data reads, metric definitions — the registry answers
//!   one id per name —, queue resolution, environment);
//! - **replayed**: effects re-established for each snapshot VM — log lines (`proxy_log`, WASI
//!   `fd_write`), the tick period, shared-data writes without CAS, queue registrations (owned by
//!   the new VM), metric increments and records;
//! - **refused**: everything else (an HTTP call, a queue dequeue or enqueue, `proxy_done`, a
//!   CAS write, …): the filter is not snapshotted and runs its initializer in every VM.
//!
//! Consequence of "pure": what the initializer read (a clock, random bytes, shared data) is
//! the same in every snapshot VM, as it is across the transactions one `shared` VM serves.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use ats_wasm_pool::{Instrumented, Pristine, Vm, VmTemplate, export_state};
use wasmtime::{Engine, Module, Store};

use super::backend::{Backend, QueueTarget};
use super::guest::{ProxyVm, initialize, setup};
use super::hostcalls::link;
use super::journal::InitJournal;
use super::state::{ContextKind, HostState, register_context};

/// Everything [`restore`] needs: the host-side state an initializer left in the VM a snapshot
/// was taken of.
#[derive(Debug, Clone)]
pub struct InitRecord {
    journal: InitJournal,
    root_context_id: u32,
    next_context_id: u32,
    tick_period: Option<Duration>,
}

/// Turns on recording in a VM about to run its initializer (before [`super::guest::initialize`]).
pub fn start_recording<B: Backend>(st: &mut HostState<B>) {
    st.journal = Some(Box::default());
}

/// The record of an initialized VM that ran with [`start_recording`], or why it cannot be
/// snapshotted (the host call that cannot be replayed, or state the initializer left that a
/// snapshot does not carry).
pub fn take_record<B: Backend>(st: &mut HostState<B>) -> Result<InitRecord, String> {
    let journal = *st.journal.take().ok_or("the initializer was not recorded")?;
    if let Some(call) = journal.refused {
        return Err(format!("the initializer called {call}, which a snapshot cannot replay"));
    }
    if st.contexts.len() != 1 || !st.pending_done.is_empty() || !st.http_calls.is_empty() {
        return Err("the initializer left contexts or calls besides the root context".into());
    }
    Ok(InitRecord {
        journal,
        root_context_id: st.root_context_id,
        next_context_id: st.next_context_id,
        tick_period: st.tick_period,
    })
}

/// Makes a VM instantiated from a snapshot module ready, as [`super::guest::initialize`] made
/// the VM the snapshot was taken of, without calling the guest: finds its memory, allocator and
/// callbacks, creates the root context with the recorded id, and replays the recorded host
/// effects (log lines, tick period, shared-data writes, queue registrations, metric updates).
pub fn restore<B: Backend>(vm: &mut ProxyVm<B>, rec: &InitRecord) -> wasmtime::Result<()> {
    vm.store.limiter(|st| &mut st.grow_watch);
    setup(vm)?;
    restore_host(vm.store.data_mut(), rec)
}

/// Puts a used VM of a snapshot template back into the state [`restore`] leaves a fresh one
/// in: its memory pages and mutable globals (`pristine`), then a new host state (`new_state`,
/// a new VM id) that keeps what [`setup`] found in the instance, with the recorded host effects
/// replayed. An error (e.g. the memory grew) means the VM must be dropped.
pub fn recycle<B: Backend>(
    vm: &mut ProxyVm<B>,
    pristine: &Pristine,
    rec: &InitRecord,
    new_state: &(dyn Fn() -> HostState<B> + Send + Sync),
) -> wasmtime::Result<()> {
    pristine.reset(&mut vm.store, vm.instance)?;
    let old = std::mem::replace(vm.store.data_mut(), new_state());
    let st = vm.store.data_mut();
    st.abi = old.abi;
    st.instance = old.instance;
    st.memory = old.memory;
    st.allocator = old.allocator;
    st.exports = old.exports;
    restore_host(st, rec)
}

/// The host side of [`restore`]: the root context with the recorded id and the recorded host
/// effects replayed.
fn restore_host<B: Backend>(st: &mut HostState<B>, rec: &InitRecord) -> wasmtime::Result<()> {
    let root = rec.root_context_id;
    st.root_context_id = root;
    st.next_context_id = rec.next_context_id;
    st.effective_context = root;
    register_context(st, root, ContextKind::Root);
    if rec.tick_period.is_some() {
        st.backend.set_tick_period(rec.tick_period).map_err(|s| wasmtime::Error::msg(format!("tick period: {s:?}")))?;
        st.tick_period = rec.tick_period;
    }
    let j = &rec.journal;
    for (level, msg) in &j.logs {
        if *level >= st.backend.log_level() {
            st.backend.log(&st.plugin.name, *level, msg);
        }
    }
    for (key, value) in &j.shared_sets {
        // The write succeeded when recorded; a bound that refuses it now is the backend's to
        // count, as a refused write of the initializer would be.
        if let Err(super::shared::SharedError::Refused(bound)) = st.shared.set(&st.plugin.vm_id, key, value, 0) {
            st.backend.shared_refused(bound);
        }
    }
    for (name, id) in &j.queues {
        let owner = QueueTarget { vm: st.vm_uid, context_id: root, queue_id: 0 };
        match st.shared.register_queue(&st.plugin.vm_id, name, owner) {
            Ok(got) if got == *id => {}
            _ => {
                wasmtime::bail!("registering shared queue {} again did not give id {id}", String::from_utf8_lossy(name))
            }
        }
    }
    for &(id, value, increment) in &j.metric_updates {
        let _ = if increment { st.metrics.increment(id, value) } else { st.metrics.record(id, value as u64) };
    }
    Ok(())
}

/// A template whose VMs start from a snapshot of an initialized VM: instruments `wasm`, runs
/// the initializer ([`super::guest::initialize`]) once on a VM of it with recording on, and
/// builds from its memory and globals the module every VM of the template is instantiated
/// from; each such VM is made ready by [`restore`], without running guest code. `new_state`
/// makes each VM's host state, `init_ticks` bounds the recorded initializer.
///
/// The error says why the module cannot be snapshotted (the initializer made a host call that
/// cannot be replayed, the module cannot be instrumented, or it failed to start): the caller
/// then makes VMs that run the initializer, as without snapshots.
pub fn snapshot_template<B: Backend>(
    engine: &Engine,
    wasm: &[u8],
    new_state: impl Fn() -> HostState<B> + Send + Sync + 'static,
    init_ticks: u64,
) -> Result<Arc<VmTemplate<HostState<B>>>, String> {
    let instrumented = Instrumented::new(wasm).map_err(|e| format!("the module cannot be instrumented: {e:#}"))?;
    let compile = |bytes: &[u8]| -> Result<_, String> {
        let module = Module::new(engine, bytes).map_err(|e| format!("cannot compile: {e:#}"))?;
        let pre = link::<B>(&module).and_then(|(l, _)| l.instantiate_pre(&module));
        pre.map_err(|e| format!("cannot link: {e:#}"))
    };
    let mut store = Store::new(engine, new_state());
    start_recording(store.data_mut());
    let instrumented_pre = compile(instrumented.wasm())?;
    // The deadline starts after compiling: on a loaded machine compiling alone can take longer
    // than the initializer's deadline, which then interrupted `_initialize` at its first check.
    store.set_epoch_deadline(init_ticks);
    let instance = instrumented_pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
    let mut vm = Vm { store, instance };
    initialize(&mut vm).map_err(|e| format!("the initializer failed: {e:#}"))?;
    let record = Arc::new(take_record(vm.store.data_mut())?);
    let snapshot = instrumented.snapshot(&mut vm).map_err(|e| format!("{e:#}"))?;
    drop(vm);
    // Recycling needs the memories and mutable globals exported; without them (or without
    // `/proc/self/pagemap`) used VMs are dropped, as without snapshots.
    let recyclable = export_state(&snapshot).ok();
    let pre = compile(recyclable.as_deref().unwrap_or(&snapshot))?;
    let new_state: Arc<dyn Fn() -> HostState<B> + Send + Sync> = Arc::new(new_state);
    let pristine = recyclable.and_then(|_| {
        let mut store = Store::new(engine, new_state());
        let instance = pre.instantiate(&mut store).ok()?;
        Pristine::read(pre.module(), &mut Vm { store, instance }).ok()
    });
    let (state, rec) = (new_state.clone(), record.clone());
    let restore_vm = move |vm: &mut ProxyVm<B>| restore(vm, &rec);
    Ok(match pristine {
        Some(p) => VmTemplate::recycling(
            pre,
            move || state(),
            restore_vm,
            init_ticks,
            move |vm| recycle(vm, &p, &record, &*new_state),
        ),
        None => VmTemplate::new(pre, move || state(), restore_vm, init_ticks),
    })
}
