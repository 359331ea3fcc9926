//! Snapshots of initialized VMs: a module whose linear memory and mutable globals already are
//! the state its initializer left, so that a VM made from it starts initialized without running
//! guest code, and its copy-on-write memory image is the initialized memory.
//!
//! `wasmtime-wizer` does the Wasm side ([`Instrumented::new`] exports every global and memory;
//! [`Instrumented::snapshot`] reads them out of our own instance and rewrites the module's data
//! segments and global initializers); the caller runs the initializer with its own linker in
//! between, and owns whatever host-side state the initializer created.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::{Instance, Store, Val};
use wasmtime_wizer::{InstanceState, ModuleContext, SnapshotVal, ValType, Wizer};

use crate::template::Vm;

/// A module instrumented for a snapshot: instantiate [`Instrumented::wasm`] (it imports what the
/// original imports), run the initializer on it, then call [`Instrumented::snapshot`].
pub struct Instrumented<'a> {
    wizer: Wizer,
    cx: ModuleContext<'a>,
    wasm: Vec<u8>,
}

impl<'a> Instrumented<'a> {
    /// Instruments `wasm`. Fails for what a snapshot cannot capture: imported memories, tables
    /// or globals, table mutations, `data.drop`/`elem.drop`, reference-typed mutable globals.
    pub fn new(wasm: &'a [u8]) -> wasmtime::Result<Self> {
        let wizer = Wizer::new();
        let (cx, wasm) = wizer.instrument(wasm).map_err(|e| wasmtime::Error::msg(format!("{e:#}")))?;
        Ok(Self { wizer, cx, wasm })
    }

    /// The instrumented module's bytes.
    pub fn wasm(&self) -> &[u8] {
        &self.wasm
    }

    /// The snapshot of `vm` (an instance of [`Instrumented::wasm`] after its initializer ran):
    /// the original module with the instance's memory as its data segments and its mutable
    /// globals' values as their initializers (no start function).
    pub fn snapshot<T: Send + 'static>(&self, vm: &mut Vm<T>) -> wasmtime::Result<Vec<u8>> {
        let mut state = State { store: &mut vm.store, instance: vm.instance };
        let fut = self.wizer.snapshot(&self.cx, &mut state);
        match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.map_err(|e| wasmtime::Error::msg(format!("{e:#}"))),
            // Our `InstanceState` never waits, so neither does the snapshot.
            Poll::Pending => wasmtime::bail!("the snapshot did not complete synchronously"),
        }
    }
}

/// Our own instance, read by the snapshot.
struct State<'s, T: 'static> {
    store: &'s mut Store<T>,
    instance: Instance,
}

impl<T: Send + 'static> InstanceState for State<'_, T> {
    fn global_get(&mut self, name: &str, _type_hint: ValType) -> impl Future<Output = SnapshotVal> + Send {
        // The instrumented module exports every global under `name`; were one missing or of a
        // reference type (both refused by the instrumentation), it would read as 0, never panic.
        let v = self.instance.get_global(&mut *self.store, name).map(|g| g.get(&mut *self.store));
        let v = match v {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            _ => SnapshotVal::I32(0),
        };
        std::future::ready(v)
    }

    fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) -> impl Future<Output = ()> + Send {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(m) => contents(m.data(&*self.store)),
            None => contents(&[]), // never: the instrumentation exports every memory
        }
        std::future::ready(())
    }
}
