//! Process-wide shared data (key-value store with compare-and-swap) and shared queues.
//!
//! One [`Shared`] is shared by every VM of the process through an `Arc` (by default
//! [`Shared::global`]); each VM reaches it from its [`super::HostState`]. Keys and queue names
//! are namespaced by the VM id (`vm_config.vm_id`), as in Envoy: filters with the same VM id
//! share data and queues, others do not.
//!
//! Shared data: every key has a version (the CAS value) that starts at 1 and grows with every
//! successful set (skipping 0). A set with `cas == 0` always succeeds; a non-zero `cas` must be
//! the key's current version, and a key that does not exist has none (`CAS_MISMATCH`).
//!
//! Shared queues: ids are process-unique and never reused. A queue remembers the VM and root
//! context that last registered it; every enqueue produces a [`QueueTarget`] for them, which
//! the enqueuing VM's backend delivers ([`super::Backend::queue_ready`]).

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::backend::QueueTarget;
use super::types::{HostResult, Status};

/// The most items one queue holds; an enqueue beyond answers `INTERNAL_FAILURE` (a guest that
/// never dequeues must not eat the process's memory).
pub const MAX_QUEUE_ITEMS: usize = 10_000;

struct Entry {
    value: Vec<u8>,
    cas: u32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: QueueTarget,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

/// Shared data and shared queues of one process (or one test).
#[derive(Default)]
pub struct Shared {
    data: RwLock<HashMap<String, HashMap<Vec<u8>, Entry>>>,
    queues: Mutex<Queues>,
}

fn lock_err<T>(_: T) -> Status {
    Status::InternalFailure
}

impl Shared {
    /// The process-wide instance.
    pub fn global() -> Arc<Shared> {
        static GLOBAL: OnceLock<Arc<Shared>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Shared::default())).clone()
    }

    /// Appends the value of `key` in namespace `vm_id` to `out` and returns its CAS value;
    /// `NOT_FOUND` when absent.
    pub fn get(&self, vm_id: &str, key: &[u8], out: &mut Vec<u8>) -> HostResult<u32> {
        let data = self.data.read().map_err(lock_err)?;
        let e = data.get(vm_id).and_then(|m| m.get(key)).ok_or(Status::NotFound)?;
        out.extend_from_slice(&e.value);
        Ok(e.cas)
    }

    /// Sets `key` to `value` (see the module documentation for `cas`).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> HostResult {
        let mut data = self.data.write().map_err(lock_err)?;
        if !data.contains_key(vm_id) {
            data.insert(vm_id.to_owned(), HashMap::new());
        }
        let ns = data.get_mut(vm_id).ok_or(Status::InternalFailure)?;
        match ns.get_mut(key) {
            Some(e) => {
                if cas != 0 && cas != e.cas {
                    return Err(Status::CasMismatch);
                }
                e.value.clear();
                e.value.extend_from_slice(value);
                e.cas = e.cas.wrapping_add(1).max(1);
            }
            None => {
                if cas != 0 {
                    return Err(Status::CasMismatch);
                }
                ns.insert(key.to_vec(), Entry { value: value.to_vec(), cas: 1 });
            }
        }
        Ok(())
    }

    /// Registers (or reopens) queue `name` of `vm_id`, owned from now on by `owner` (its
    /// `queue_id` is filled in); returns the queue id.
    pub fn register_queue(&self, vm_id: &str, name: &[u8], owner: QueueTarget) -> HostResult<u32> {
        let mut q = self.queues.lock().map_err(lock_err)?;
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&id) = q.by_name.get(&key) {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = QueueTarget { queue_id: id, ..owner };
            }
            return Ok(id);
        }
        q.next_id = q.next_id.checked_add(1).ok_or(Status::InternalFailure)?;
        let id = q.next_id;
        q.by_name.insert(key, id);
        q.queues.insert(id, Queue { items: VecDeque::new(), owner: QueueTarget { queue_id: id, ..owner } });
        Ok(id)
    }

    /// The id of queue `name` of `vm_id`; `NOT_FOUND` when nobody registered it.
    pub fn resolve_queue(&self, vm_id: &[u8], name: &[u8]) -> HostResult<u32> {
        let vm_id = std::str::from_utf8(vm_id).map_err(|_| Status::NotFound)?;
        let q = self.queues.lock().map_err(lock_err)?;
        q.by_name.get(&(vm_id.to_owned(), name.to_vec())).copied().ok_or(Status::NotFound)
    }

    /// Appends `value` to queue `id`; returns whom to notify. `NOT_FOUND` for unknown ids.
    pub fn enqueue(&self, id: u32, value: &[u8]) -> HostResult<QueueTarget> {
        let mut q = self.queues.lock().map_err(lock_err)?;
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            return Err(Status::InternalFailure);
        }
        queue.items.push_back(value.to_vec());
        Ok(queue.owner)
    }

    /// Removes the first item of queue `id` and appends it to `out`. `NOT_FOUND` for unknown
    /// ids, `EMPTY` when there is none.
    pub fn dequeue(&self, id: u32, out: &mut Vec<u8>) -> HostResult {
        let mut q = self.queues.lock().map_err(lock_err)?;
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        out.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: QueueTarget = QueueTarget { vm: 7, context_id: 1, queue_id: 0 };

    #[test]
    fn cas_versions_guard_updates() {
        let s = Shared::default();
        let mut out = Vec::new();
        assert_eq!(s.get("vm", b"k", &mut out), Err(Status::NotFound));
        assert_eq!(s.set("vm", b"k", b"1", 3), Err(Status::CasMismatch), "absent key has no CAS");
        s.set("vm", b"k", b"1", 0).unwrap();
        let c1 = s.get("vm", b"k", &mut out).unwrap();
        assert_eq!(out, b"1");
        s.set("vm", b"k", b"2", c1).unwrap();
        assert_eq!(s.set("vm", b"k", b"3", c1), Err(Status::CasMismatch), "stale CAS");
        out.clear();
        let c2 = s.get("vm", b"k", &mut out).unwrap();
        assert_ne!(c1, c2);
        assert_eq!(out, b"2");
        assert_eq!(s.get("other-vm", b"k", &mut out), Err(Status::NotFound), "namespaced by VM id");
    }

    #[test]
    fn queues_register_resolve_and_notify_the_owner() {
        let s = Shared::default();
        let id = s.register_queue("vm", b"q", OWNER).unwrap();
        assert_eq!(s.register_queue("vm", b"q", OWNER).unwrap(), id, "reopened");
        assert_eq!(s.resolve_queue(b"vm", b"q").unwrap(), id);
        assert_eq!(s.resolve_queue(b"other", b"q"), Err(Status::NotFound));
        let mut out = Vec::new();
        assert_eq!(s.dequeue(id, &mut out), Err(Status::Empty));
        assert_eq!(s.enqueue(id, b"x").unwrap(), QueueTarget { queue_id: id, ..OWNER });
        s.dequeue(id, &mut out).unwrap();
        assert_eq!(out, b"x");
        assert_eq!(s.enqueue(id + 100, b"x"), Err(Status::NotFound));
        assert_eq!(s.dequeue(id + 100, &mut out), Err(Status::NotFound));
    }
}
