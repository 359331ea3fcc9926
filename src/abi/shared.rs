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
//!
//! Bounds ([`SharedLimits`]; a guest must not eat the process's memory): a key with its value,
//! and a queue item, at most [`SharedLimits::max_value_bytes`] (else `BAD_ARGUMENT`: the write
//! can never succeed); everything one `vm_id` holds — keys and values, queued items, queue
//! names, each with a fixed bookkeeping charge — at most [`SharedLimits::max_bytes`] (else
//! `INTERNAL_FAILURE`: it may succeed once space is freed); at most [`MAX_QUEUE_ITEMS`] items
//! per queue (the oldest are kept, the newest refused with `INTERNAL_FAILURE`). A refused
//! write stores nothing and comes back as [`SharedError::Refused`] naming the bound.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::backend::QueueTarget;
use super::types::{HostResult, SharedBound, Status};

/// The most items one queue holds; an enqueue beyond answers `INTERNAL_FAILURE` (the oldest
/// items are kept).
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// What a key costs beyond its key and value bytes (the host's bookkeeping: map slot, two
/// allocations, the CAS value).
pub const ENTRY_OVERHEAD: usize = 96;

/// What a queued item costs beyond its bytes.
pub const ITEM_OVERHEAD: usize = 32;

/// What a registered queue costs beyond its name.
pub const QUEUE_OVERHEAD: usize = 128;

/// How much shared data and queued items a guest may keep (`--max-shared-data`,
/// `--max-shared-value`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedLimits {
    /// Everything one `vm_id` holds: keys and values (each plus [`ENTRY_OVERHEAD`]), queued
    /// items (each plus [`ITEM_OVERHEAD`]) and queue names (each plus [`QUEUE_OVERHEAD`]).
    pub max_bytes: usize,
    /// One key with its value, or one queue item.
    pub max_value_bytes: usize,
}

impl SharedLimits {
    /// The defaults: 64 MiB per `vm_id`, 1 MiB per value.
    pub const DEFAULT: SharedLimits = SharedLimits { max_bytes: 64 << 20, max_value_bytes: 1 << 20 };
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a shared-data or queue write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedError {
    /// The spec's status (`CAS_MISMATCH`, `NOT_FOUND`; `INTERNAL_FAILURE` for a poisoned lock).
    Status(Status),
    /// A bound refused it; nothing was stored.
    Refused(SharedBound),
}

impl SharedError {
    /// The status the guest gets.
    pub fn status(self) -> Status {
        match self {
            SharedError::Status(s) => s,
            SharedError::Refused(b) => b.status(),
        }
    }
}

impl From<Status> for SharedError {
    fn from(s: Status) -> Self {
        SharedError::Status(s)
    }
}

/// The result of a shared-data or queue write.
pub type SharedResult<T = ()> = Result<T, SharedError>;

struct Entry {
    value: Vec<u8>,
    cas: u32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: QueueTarget,
    /// The namespace its items are charged to.
    vm_id: String,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

/// Shared data and shared queues of one process (or one test).
pub struct Shared {
    data: RwLock<HashMap<String, HashMap<Vec<u8>, Entry>>>,
    queues: Mutex<Queues>,
    /// Bytes charged per `vm_id` (taken after `data` or `queues`, never before).
    usage: Mutex<HashMap<String, usize>>,
    max_bytes: AtomicUsize,
    max_value_bytes: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Self::with_limits(SharedLimits::DEFAULT)
    }
}

fn lock_err<T>(_: T) -> Status {
    Status::InternalFailure
}

impl Shared {
    /// The process-wide instance (with [`SharedLimits::DEFAULT`] until [`Shared::set_limits`]).
    pub fn global() -> Arc<Shared> {
        static GLOBAL: OnceLock<Arc<Shared>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Shared::default())).clone()
    }

    /// An empty store with these bounds.
    pub fn with_limits(limits: SharedLimits) -> Self {
        Shared {
            data: RwLock::default(),
            queues: Mutex::default(),
            usage: Mutex::default(),
            max_bytes: AtomicUsize::new(limits.max_bytes),
            max_value_bytes: AtomicUsize::new(limits.max_value_bytes),
        }
    }

    /// Changes the bounds for writes from now on (what is stored stays).
    pub fn set_limits(&self, limits: SharedLimits) {
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.max_value_bytes.store(limits.max_value_bytes, Ordering::Relaxed);
    }

    /// The bounds in force.
    pub fn limits(&self) -> SharedLimits {
        SharedLimits {
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            max_value_bytes: self.max_value_bytes.load(Ordering::Relaxed),
        }
    }

    /// The bytes `vm_id` is charged for now (see [`SharedLimits::max_bytes`]).
    pub fn usage(&self, vm_id: &str) -> usize {
        self.usage.lock().map(|u| u.get(vm_id).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Charges `vm_id` `take` bytes and credits it `release`; refuses (changing nothing) a
    /// growth past [`SharedLimits::max_bytes`].
    fn charge(&self, vm_id: &str, release: usize, take: usize) -> SharedResult {
        let mut usage = self.usage.lock().map_err(lock_err)?;
        if !usage.contains_key(vm_id) {
            usage.insert(vm_id.to_owned(), 0);
        }
        let used = usage.get_mut(vm_id).ok_or(Status::InternalFailure)?;
        let after = used.saturating_sub(release).saturating_add(take);
        if take > release && after > self.max_bytes.load(Ordering::Relaxed) {
            return Err(SharedError::Refused(SharedBound::TotalSize));
        }
        *used = after;
        Ok(())
    }

    /// Appends the value of `key` in namespace `vm_id` to `out` and returns its CAS value;
    /// `NOT_FOUND` when absent.
    pub fn get(&self, vm_id: &str, key: &[u8], out: &mut Vec<u8>) -> HostResult<u32> {
        let data = self.data.read().map_err(lock_err)?;
        let e = data.get(vm_id).and_then(|m| m.get(key)).ok_or(Status::NotFound)?;
        out.extend_from_slice(&e.value);
        Ok(e.cas)
    }

    /// Sets `key` to `value` (see the module documentation for `cas` and the bounds).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> SharedResult {
        if key.len().saturating_add(value.len()) > self.max_value_bytes.load(Ordering::Relaxed) {
            return Err(SharedError::Refused(SharedBound::ValueSize));
        }
        let mut data = self.data.write().map_err(lock_err)?;
        if !data.contains_key(vm_id) {
            data.insert(vm_id.to_owned(), HashMap::new());
        }
        let ns = data.get_mut(vm_id).ok_or(Status::InternalFailure)?;
        match ns.get_mut(key) {
            Some(e) => {
                if cas != 0 && cas != e.cas {
                    return Err(Status::CasMismatch.into());
                }
                self.charge(vm_id, e.value.len(), value.len())?;
                if e.value.len() == value.len() {
                    e.value.copy_from_slice(value);
                } else {
                    // A fresh allocation of exactly the new size: what is charged is what is held.
                    e.value = value.to_vec();
                }
                e.cas = e.cas.wrapping_add(1).max(1);
            }
            None => {
                if cas != 0 {
                    return Err(Status::CasMismatch.into());
                }
                self.charge(vm_id, 0, key.len() + value.len() + ENTRY_OVERHEAD)?;
                ns.insert(key.to_vec(), Entry { value: value.to_vec(), cas: 1 });
            }
        }
        Ok(())
    }

    /// Registers (or reopens) queue `name` of `vm_id`, owned from now on by `owner` (its
    /// `queue_id` is filled in); returns the queue id. A new queue is charged to `vm_id`.
    pub fn register_queue(&self, vm_id: &str, name: &[u8], owner: QueueTarget) -> SharedResult<u32> {
        let mut q = self.queues.lock().map_err(lock_err)?;
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&id) = q.by_name.get(&key) {
            if let Some(queue) = q.queues.get_mut(&id) {
                queue.owner = QueueTarget { queue_id: id, ..owner };
            }
            return Ok(id);
        }
        let id = q.next_id.checked_add(1).ok_or(Status::InternalFailure)?;
        self.charge(vm_id, 0, name.len() + QUEUE_OVERHEAD)?;
        q.next_id = id;
        q.by_name.insert(key, id);
        let queue =
            Queue { items: VecDeque::new(), owner: QueueTarget { queue_id: id, ..owner }, vm_id: vm_id.to_owned() };
        q.queues.insert(id, queue);
        Ok(id)
    }

    /// The id of queue `name` of `vm_id`; `NOT_FOUND` when nobody registered it.
    pub fn resolve_queue(&self, vm_id: &[u8], name: &[u8]) -> HostResult<u32> {
        let vm_id = std::str::from_utf8(vm_id).map_err(|_| Status::NotFound)?;
        let q = self.queues.lock().map_err(lock_err)?;
        q.by_name.get(&(vm_id.to_owned(), name.to_vec())).copied().ok_or(Status::NotFound)
    }

    /// Appends `value` to queue `id`; returns whom to notify. `NOT_FOUND` for unknown ids; a
    /// full queue or namespace refuses it (see the module documentation).
    pub fn enqueue(&self, id: u32, value: &[u8]) -> SharedResult<QueueTarget> {
        if value.len() > self.max_value_bytes.load(Ordering::Relaxed) {
            return Err(SharedError::Refused(SharedBound::ValueSize));
        }
        let mut q = self.queues.lock().map_err(lock_err)?;
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            return Err(SharedError::Refused(SharedBound::QueueItems));
        }
        self.charge(&queue.vm_id, 0, value.len() + ITEM_OVERHEAD)?;
        queue.items.push_back(value.to_vec());
        Ok(queue.owner)
    }

    /// Removes the first item of queue `id` and appends it to `out`. `NOT_FOUND` for unknown
    /// ids, `EMPTY` when there is none.
    pub fn dequeue(&self, id: u32, out: &mut Vec<u8>) -> HostResult {
        let mut q = self.queues.lock().map_err(lock_err)?;
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        // Crediting never refuses; a poisoned lock leaves the charge (the bound stays safe).
        let _ = self.charge(&queue.vm_id, item.len() + ITEM_OVERHEAD, 0);
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
        assert_eq!(s.set("vm", b"k", b"1", 3), Err(Status::CasMismatch.into()), "absent key has no CAS");
        s.set("vm", b"k", b"1", 0).unwrap();
        let c1 = s.get("vm", b"k", &mut out).unwrap();
        assert_eq!(out, b"1");
        s.set("vm", b"k", b"2", c1).unwrap();
        assert_eq!(s.set("vm", b"k", b"3", c1), Err(Status::CasMismatch.into()), "stale CAS");
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
        assert_eq!(s.enqueue(id + 100, b"x"), Err(Status::NotFound.into()));
        assert_eq!(s.dequeue(id + 100, &mut out), Err(Status::NotFound));
    }

    const LIMITS: SharedLimits = SharedLimits { max_bytes: 1000, max_value_bytes: 300 };

    #[test]
    fn a_value_over_the_value_bound_is_refused_and_nothing_is_stored() {
        let s = Shared::with_limits(LIMITS);
        let refused = Err(SharedError::Refused(SharedBound::ValueSize));
        assert_eq!(s.set("vm", b"k", &[7; 300], 0), refused, "key and value together count");
        assert_eq!(SharedBound::ValueSize.status(), Status::BadArgument);
        let mut out = Vec::new();
        assert_eq!(s.get("vm", b"k", &mut out), Err(Status::NotFound));
        assert_eq!(s.usage("vm"), 0);
        s.set("vm", b"k", &[7; 299], 0).unwrap();
        assert_eq!(s.usage("vm"), 1 + 299 + ENTRY_OVERHEAD);
        // An update over the bound keeps the old value and version.
        let cas = s.get("vm", b"k", &mut out).unwrap();
        assert_eq!(s.set("vm", b"k", &[8; 300], 0), refused);
        out.clear();
        assert_eq!(s.get("vm", b"k", &mut out), Ok(cas));
        assert_eq!(out, [7; 299]);
    }

    #[test]
    fn the_vm_id_total_bounds_new_keys_and_growth_and_frees_on_shrink() {
        let s = Shared::with_limits(SharedLimits { max_bytes: 900, max_value_bytes: 300 });
        let entry = 1 + 200 + ENTRY_OVERHEAD; // 297
        for k in [b"a", b"b", b"c"] {
            s.set("vm", k, &[1; 200], 0).unwrap();
        }
        assert_eq!(s.usage("vm"), 3 * entry);
        let full = Err(SharedError::Refused(SharedBound::TotalSize));
        assert_eq!(s.set("vm", b"d", &[1; 200], 0), full, "a fourth key would pass 900 bytes");
        assert_eq!(SharedError::Refused(SharedBound::TotalSize).status(), Status::InternalFailure);
        let mut out = Vec::new();
        assert_eq!(s.get("vm", b"d", &mut out), Err(Status::NotFound), "nothing stored");
        assert_eq!(s.set("vm", b"a", &[1; 299], 0), full, "growing a value counts too");
        assert_eq!(s.usage("vm"), 3 * entry);
        // Other namespaces have their own budget; shrinking a value makes room.
        s.set("other", b"d", &[1; 200], 0).unwrap();
        s.set("vm", b"a", b"", 0).unwrap();
        assert_eq!(s.usage("vm"), 3 * entry - 200);
        s.set("vm", b"d", &[1; 100], 0).unwrap();
        // Rewriting a value of the same size never needs room.
        s.set("vm", b"d", &[2; 100], 0).unwrap();
        assert_eq!(s.set("vm", b"e", &[1; 200], 0), full);
        // Limits set later apply to later writes.
        s.set_limits(SharedLimits { max_bytes: 10_000, max_value_bytes: 300 });
        s.set("vm", b"e", &[1; 200], 0).unwrap();
    }

    #[test]
    fn queues_keep_the_oldest_items_and_refuse_the_newest_past_their_bounds() {
        let s = Shared::with_limits(SharedLimits { max_bytes: 1 << 30, max_value_bytes: 300 });
        let id = s.register_queue("vm", b"q", OWNER).unwrap();
        assert_eq!(s.usage("vm"), 1 + QUEUE_OVERHEAD);
        assert_eq!(s.enqueue(id, &[0; 301]), Err(SharedError::Refused(SharedBound::ValueSize)));
        for i in 0..MAX_QUEUE_ITEMS {
            s.enqueue(id, &(i as u32).to_le_bytes()).unwrap();
        }
        let full = Err(SharedError::Refused(SharedBound::QueueItems));
        assert_eq!(s.enqueue(id, b"newest"), full);
        assert_eq!(SharedError::Refused(SharedBound::QueueItems).status(), Status::InternalFailure);
        let mut out = Vec::new();
        s.dequeue(id, &mut out).unwrap();
        assert_eq!(out, 0u32.to_le_bytes(), "the oldest item was kept");
        s.enqueue(id, b"room again").unwrap();
        // Items are charged to the vm_id and credited back when dequeued.
        let charged = s.usage("vm");
        assert_eq!(charged, 1 + QUEUE_OVERHEAD + (MAX_QUEUE_ITEMS - 1) * (4 + ITEM_OVERHEAD) + 10 + ITEM_OVERHEAD);
        out.clear();
        s.dequeue(id, &mut out).unwrap();
        assert_eq!(s.usage("vm"), charged - 4 - ITEM_OVERHEAD);
    }

    #[test]
    fn queue_items_and_names_share_the_vm_id_total_with_shared_data() {
        let s = Shared::with_limits(LIMITS);
        s.set("vm", b"k", &[1; 250], 0).unwrap(); // 347
        let id = s.register_queue("vm", b"q", OWNER).unwrap(); // 129: 476
        s.enqueue(id, &[0; 250]).unwrap(); // 282: 758
        let full = SharedError::Refused(SharedBound::TotalSize);
        assert_eq!(s.enqueue(id, &[0; 250]), Err(full));
        assert_eq!(s.register_queue("vm", &[b'n'; 200], OWNER), Err(full), "a new queue name is charged");
        assert_eq!(s.register_queue("vm", b"q", OWNER), Ok(id), "reopening is free");
        assert_eq!(s.set("vm", b"k2", &[1; 250], 0), Err(full));
        let mut out = Vec::new();
        s.dequeue(id, &mut out).unwrap();
        s.set("vm", b"k2", &[1; 250], 0).unwrap();
    }
}
