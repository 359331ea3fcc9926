//! A compiled module with everything needed to make a ready VM from it.
#![forbid(unsafe_code)]

use std::sync::Arc;

use wasmtime::{Engine, Instance, InstancePre, Module, Store, Trap};

/// A host state factory: called once per new VM.
type NewState<T> = dyn Fn() -> T + Send + Sync;
/// The initializer: makes a freshly instantiated VM ready (e.g. `_initialize`, root context,
/// `proxy_on_vm_start`, `proxy_on_configure`). An error means the VM must not be used.
type Initializer<T> = dyn Fn(&mut Vm<T>) -> wasmtime::Result<()> + Send + Sync;
/// The recycler: puts a used VM back into the state of a ready one (see [`crate::recycle`]);
/// an error means the VM must be dropped instead.
type Recycler<T> = dyn Fn(&mut Vm<T>) -> wasmtime::Result<()> + Send + Sync;

/// One instantiated guest: its store (which owns the host state `T`) and its instance.
pub struct Vm<T: 'static> {
    /// The store; `store.data()` is the host state.
    pub store: Store<T>,
    /// The instance inside `store`.
    pub instance: Instance,
}

/// A module compiled once per process and pre-linked, plus how to make a ready VM of it.
///
/// Instantiating from a template does no import resolution (`InstancePre`) and, with the
/// pooling allocator and copy-on-write images of [`crate::new_engine`], no copying of the
/// module's data segments.
pub struct VmTemplate<T: 'static> {
    engine: Engine,
    module: Module,
    pre: InstancePre<T>,
    new_state: Box<NewState<T>>,
    init: Box<Initializer<T>>,
    recycle: Option<Box<Recycler<T>>>,
    /// Epoch ticks the initializer may run before it is interrupted.
    init_deadline_ticks: u64,
}

impl<T: Send + 'static> VmTemplate<T> {
    /// Builds a template from a pre-linked module: `new_state` makes each VM's host state,
    /// `init` makes a fresh instance ready (an error means the VM is never used), and
    /// `init_deadline_ticks` bounds how long `init` may run.
    pub fn new(
        pre: InstancePre<T>,
        new_state: impl Fn() -> T + Send + Sync + 'static,
        init: impl Fn(&mut Vm<T>) -> wasmtime::Result<()> + Send + Sync + 'static,
        init_deadline_ticks: u64,
    ) -> Arc<Self> {
        Self::build(pre, Box::new(new_state), Box::new(init), init_deadline_ticks, None)
    }

    fn build(
        pre: InstancePre<T>,
        new_state: Box<NewState<T>>,
        init: Box<Initializer<T>>,
        init_deadline_ticks: u64,
        recycle: Option<Box<Recycler<T>>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine: pre.module().engine().clone(),
            module: pre.module().clone(),
            pre,
            new_state,
            init,
            recycle,
            init_deadline_ticks,
        })
    }

    /// Like [`VmTemplate::new`], for a template whose used VMs can be put back into the state
    /// of a ready one by `recycle` instead of being dropped ([`VmTemplate::recycle`]).
    pub fn recycling(
        pre: InstancePre<T>,
        new_state: impl Fn() -> T + Send + Sync + 'static,
        init: impl Fn(&mut Vm<T>) -> wasmtime::Result<()> + Send + Sync + 'static,
        init_deadline_ticks: u64,
        recycle: impl Fn(&mut Vm<T>) -> wasmtime::Result<()> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(pre, Box::new(new_state), Box::new(init), init_deadline_ticks, Some(Box::new(recycle)))
    }

    /// Whether used VMs of this template can be recycled.
    pub fn recycles(&self) -> bool {
        self.recycle.is_some()
    }

    /// Puts a used VM back into the state of a ready one, as a fresh VM of this template would
    /// be; `false` (the VM must be dropped) when the template does not recycle or the recycler
    /// refused (e.g. the VM's memory grew).
    pub fn recycle(&self, vm: &mut Vm<T>) -> bool {
        match &self.recycle {
            Some(r) => r(vm).is_ok(),
            None => false,
        }
    }

    /// A new host state, as each new VM of this template gets (for recyclers).
    pub fn new_state(&self) -> T {
        (self.new_state)()
    }

    /// The compiled module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Epoch ticks the initializer may run before it is interrupted.
    pub fn init_deadline_ticks(&self) -> u64 {
        self.init_deadline_ticks
    }

    /// Instantiates a new VM (from the `InstancePre`: no import resolution) and runs the
    /// initializer on it under the initializer deadline. The VM is returned only if both
    /// succeeded, so a returned VM is ready; on error nothing of it survives (its pooling
    /// allocator slot is released). An initializer interrupted at its deadline fails with
    /// "the initializer ran past its deadline" (the `Trap::Interrupt` stays in the chain).
    pub fn instantiate(&self) -> wasmtime::Result<Vm<T>> {
        let mut store = Store::new(&self.engine, (self.new_state)());
        store.set_epoch_deadline(self.init_deadline_ticks);
        let instance = self.pre.instantiate(&mut store)?;
        let mut vm = Vm { store, instance };
        (self.init)(&mut vm).map_err(|e| match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => e.context("the initializer ran past its deadline"),
            _ => e,
        })?;
        Ok(vm)
    }
}
