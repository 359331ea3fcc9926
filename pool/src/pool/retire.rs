//! Retiring a pool: the last look at every VM it still holds, on every thread, before the pool
//! is dropped (e.g. to end each VM's root context in the spec's order when a configuration is
//! replaced).
#![forbid(unsafe_code)]

use super::VmPool;
use super::lease::Held;
use crate::template::Vm;

impl<T: Send + 'static> VmPool<T> {
    /// Runs `f` once with every VM the pool still holds — each thread's `Shared`-mode VMs, its
    /// ready `Transaction`-mode VMs and the VMs of leases sent home but not yet settled — and
    /// returns how many it visited. VMs leased out are not reached (their leases own them).
    ///
    /// Takes `&mut self`, so no thread can be using the pool meanwhile; `f` runs on the
    /// calling thread whatever thread a VM belongs to (every VM is `Send`). The VMs are
    /// dropped with the pool.
    pub fn retire(&mut self, mut f: impl FnMut(&mut Vm<T>)) -> usize {
        let mut n = 0;
        for local in self.threads.iter_mut() {
            let tp = local.pool.get_mut();
            for vm in tp.slots.iter_mut().filter_map(|s| s.vm.as_mut()).chain(tp.ready.iter_mut()) {
                f(vm);
                n += 1;
            }
            while let Some(back) = tp.home.returns.pop() {
                if let Held::Owned(mut vm) = back.held
                    && !back.poisoned
                {
                    f(&mut vm);
                    n += 1;
                }
            }
        }
        n
    }
}
