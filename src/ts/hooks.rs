//! Continuations and HTTP hooks, with every handler run under `catch_unwind`.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use super::log;
use super::sys;
use super::txn::{Resume, Txn};

/// The transaction hooks ats-wasm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpHook {
    /// The client's request headers have been read (before remap).
    ReadRequestHdr,
    /// Remap is done: the request carries the rule's `to` URL (added per transaction by a
    /// remap rule's instance).
    PostRemap,
    /// The request headers are about to be sent to the origin.
    SendRequestHdr,
    /// The response headers are about to be sent to the client (origin or cache).
    SendResponseHdr,
    /// The transaction is closing.
    TxnClose,
}

impl HttpHook {
    fn id(self) -> sys::TSHttpHookID {
        match self {
            HttpHook::ReadRequestHdr => sys::TS_HTTP_READ_REQUEST_HDR_HOOK,
            HttpHook::PostRemap => sys::TS_HTTP_POST_REMAP_HOOK,
            HttpHook::SendRequestHdr => sys::TS_HTTP_SEND_REQUEST_HDR_HOOK,
            HttpHook::SendResponseHdr => sys::TS_HTTP_SEND_RESPONSE_HDR_HOOK,
            HttpHook::TxnClose => sys::TS_HTTP_TXN_CLOSE_HOOK,
        }
    }

    fn from_event(ev: sys::TSEvent) -> Option<Self> {
        Some(match ev {
            sys::TS_EVENT_HTTP_READ_REQUEST_HDR => HttpHook::ReadRequestHdr,
            sys::TS_EVENT_HTTP_POST_REMAP => HttpHook::PostRemap,
            sys::TS_EVENT_HTTP_SEND_REQUEST_HDR => HttpHook::SendRequestHdr,
            sys::TS_EVENT_HTTP_SEND_RESPONSE_HDR => HttpHook::SendResponseHdr,
            sys::TS_EVENT_HTTP_TXN_CLOSE => HttpHook::TxnClose,
            _ => return None,
        })
    }
}

/// Handles transaction hook events. The returned [`Resume`] is applied (`TSHttpTxnReenable`)
/// after the handler has returned, so no borrow of the handler survives into the next hook
/// that ATS may run synchronously.
pub trait TxnHandler: 'static {
    /// Handles `hook` for `txn`.
    fn on_hook(hook: HttpHook, txn: Txn) -> Resume;
}

unsafe extern "C" fn trampoline<H: TxnHandler>(_cont: sys::TSCont, event: sys::TSEvent, edata: *mut c_void) -> c_int {
    let Some(hook) = HttpHook::from_event(event) else {
        return 0;
    };
    // SAFETY: for HTTP transaction hook events, edata is the live transaction.
    let txn = unsafe { Txn::from_raw(edata) };
    let resume = match catch_unwind(AssertUnwindSafe(|| H::on_hook(hook, txn))) {
        Ok(r) => r,
        Err(_) => {
            log::error(
                format!("ats_wasm: internal error (panic) in the {hook:?} hook; the transaction continues").as_bytes(),
            );
            Resume::Continue
        }
    };
    txn.reenable(resume);
    0
}

/// A continuation whose events go to `H` (`TSContCreate` with no mutex).
#[derive(Clone, Copy)]
pub struct TxnCont(sys::TSCont);

// SAFETY: a TSCont is an opaque handle; with no mutex, ATS may call it from any thread, which
// the trampoline allows (it keeps no state of its own).
unsafe impl Send for TxnCont {}
// SAFETY: as above.
unsafe impl Sync for TxnCont {}

impl TxnCont {
    /// Creates the continuation.
    pub fn new<H: TxnHandler>() -> Self {
        // SAFETY: trampoline::<H> has the TSEventFunc signature; a null mutex is allowed.
        TxnCont(unsafe { sys::TSContCreate(Some(trampoline::<H>), std::ptr::null_mut()) })
    }

    /// Adds this continuation on `hook` for every transaction (`TSHttpHookAdd`).
    pub fn add_global(self, hook: HttpHook) {
        // SAFETY: self is a valid continuation.
        unsafe { sys::TSHttpHookAdd(hook.id(), self.0) }
    }

    /// Adds this continuation on `hook` for `txn` only (`TSHttpTxnHookAdd`).
    pub fn add_to_txn(self, txn: Txn, hook: HttpHook) {
        // SAFETY: txn is live (Txn invariant) and self is valid.
        unsafe { sys::TSHttpTxnHookAdd(txn.raw(), hook.id(), self.0) }
    }
}

/// Handles one-shot work scheduled with [`EventThread::run_once`] / [`EventThread::run_after`]
/// (and, in [`super::control`], on task threads).
pub trait TimerHandler: 'static {
    /// The scheduled work is due; `data` is what it was scheduled with.
    fn on_timer(data: usize);
}

/// Runs `H::on_timer` with the continuation's data, under `catch_unwind`.
///
/// # Safety
/// `cont` must come from [`scheduled_cont`], whose data is a usize.
unsafe fn run_scheduled<H: TimerHandler>(cont: sys::TSCont) {
    // SAFETY: guaranteed by the caller.
    let data = unsafe { sys::TSContDataGet(cont) } as usize;
    if catch_unwind(AssertUnwindSafe(|| H::on_timer(data))).is_err() {
        log::error(b"ats_wasm: internal error (panic) in scheduled work; ATS goes on");
    }
}

/// `d` as the milliseconds ATS's scheduling calls take: at least 1 (0 would mean "now"),
/// saturating at the largest `TSHRTime`.
pub(super) fn schedule_ms(d: Duration) -> sys::TSHRTime {
    d.as_millis().clamp(1, i64::MAX as u128) as sys::TSHRTime
}

/// A continuation for scheduling, with its own mutex (ATS requires one for scheduled
/// continuations) and `data` as its data.
fn scheduled_cont(func: sys::TSEventFunc, data: usize) -> sys::TSCont {
    // SAFETY: func has the TSEventFunc signature; the data is a plain integer.
    unsafe {
        let cont = sys::TSContCreate(func, sys::TSMutexCreate());
        sys::TSContDataSet(cont, data as *mut c_void);
        cont
    }
}

/// An ATS event thread (e.g. an `ET_NET` thread), for scheduling work on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventThread(sys::TSEventThread);

// SAFETY: a TSEventThread is an opaque handle that ATS lets any thread schedule onto.
unsafe impl Send for EventThread {}
// SAFETY: as above.
unsafe impl Sync for EventThread {}

impl EventThread {
    /// The current thread, if it is an ATS event thread.
    pub fn current() -> Option<Self> {
        // SAFETY: callable from any thread; null when not an event thread.
        let t = unsafe { sys::TSEventThreadSelf() };
        (!t.is_null()).then_some(EventThread(t))
    }

    pub(crate) fn raw(self) -> sys::TSEventThread {
        self.0
    }

    /// Runs `H::on_timer(data)` once, soon, on this thread (`TSContScheduleOnThread` with no
    /// delay). The continuation destroys itself after running. Returns false if ATS refused.
    pub fn run_once<H: TimerHandler>(self, data: usize) -> bool {
        let cont = scheduled_cont(Some(once_trampoline::<H>), data);
        // SAFETY: cont and the thread are valid; the trampoline destroys cont after it ran.
        !unsafe { sys::TSContScheduleOnThread(cont, 0, self.0) }.is_null()
    }

    /// Runs `H::on_timer(data)` once on this thread after `delay` (at least 1 ms). The
    /// continuation destroys itself after running. Returns false if ATS refused.
    pub fn run_after<H: TimerHandler>(self, delay: Duration, data: usize) -> bool {
        let cont = scheduled_cont(Some(once_trampoline::<H>), data);
        // SAFETY: cont and the thread are valid; the trampoline destroys cont after it ran.
        !unsafe { sys::TSContScheduleOnThread(cont, schedule_ms(delay), self.0) }.is_null()
    }
}

/// Runs `H::on_timer(data)` once, soon, on one of ATS's net threads (`TSContScheduleOnPool`
/// with `TS_THREAD_POOL_NET`, a fresh continuation each time, so no thread affinity). ATS 9.2
/// (`EventProcessor::schedule`) puts it on the calling thread when that is a net thread, else
/// on the net threads in turn (round robin): called from a task thread, `n` calls in a row
/// reach `n` different net threads (unless other work is scheduled on them in between).
/// Returns false if ATS refused.
pub fn run_on_net_pool<H: TimerHandler>(data: usize) -> bool {
    let cont = scheduled_cont(Some(once_trampoline::<H>), data);
    // SAFETY: cont is valid; the trampoline destroys it after it ran.
    !unsafe { sys::TSContScheduleOnPool(cont, 0, sys::TS_THREAD_POOL_NET) }.is_null()
}

/// The record that turns net-thread autoconfiguration on (default 1).
#[cfg(not(ats10))]
const AUTOCONFIG: &std::ffi::CStr = c"proxy.config.exec_thread.autoconfig";
/// ATS 10.0 renamed it: `exec_thread.autoconfig` became a map (`enabled`, `scale`).
#[cfg(ats10)]
const AUTOCONFIG: &std::ffi::CStr = c"proxy.config.exec_thread.autoconfig.enabled";

/// How many net threads (`ET_NET`) ATS starts, from its records as ATS computes it:
/// `proxy.config.exec_thread.limit` when autoconfig ([`AUTOCONFIG`]) is 0, else the CPUs this
/// process may use × `proxy.config.exec_thread.autoconfig.scale`; at least 1.
pub fn net_thread_count() -> usize {
    let int = |name: &std::ffi::CStr| {
        let mut v: sys::TSMgmtInt = 0;
        // SAFETY: name is NUL-terminated; v is a valid out-pointer.
        (unsafe { sys::TSMgmtIntGet(name.as_ptr(), &mut v) } == sys::TS_SUCCESS).then_some(v)
    };
    let n = if int(AUTOCONFIG).unwrap_or(1) == 0 {
        int(c"proxy.config.exec_thread.limit").unwrap_or(1)
    } else {
        let mut scale: sys::TSMgmtFloat = 1.0;
        // SAFETY: the name is NUL-terminated; scale is a valid out-pointer (left at 1.0 on
        // failure).
        unsafe { sys::TSMgmtFloatGet(c"proxy.config.exec_thread.autoconfig.scale".as_ptr(), &mut scale) };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus as f64 * f64::from(scale)) as i64
    };
    n.clamp(1, 4096) as usize
}

unsafe extern "C" fn lifecycle_trampoline<H: TimerHandler>(
    _cont: sys::TSCont,
    _event: sys::TSEvent,
    _edata: *mut c_void,
) -> c_int {
    if catch_unwind(AssertUnwindSafe(|| H::on_timer(0))).is_err() {
        log::error(b"ats_wasm: internal error (panic) in start-up work; ATS goes on");
    }
    0
}

/// Runs `H::on_timer(0)` once ATS's task threads are up
/// (`TS_LIFECYCLE_TASK_THREADS_READY_HOOK`, on a task thread; the net threads started before
/// the plugin was loaded). Call once, from `TSPluginInit`.
pub fn when_task_threads_ready<H: TimerHandler>() {
    // SAFETY: the trampoline has the TSEventFunc signature; the continuation lives for the
    // life of the process (ATS keeps it registered).
    unsafe {
        let cont = sys::TSContCreate(Some(lifecycle_trampoline::<H>), std::ptr::null_mut());
        sys::TSLifecycleHookAdd(sys::TS_LIFECYCLE_TASK_THREADS_READY_HOOK, cont);
    }
}

unsafe extern "C" fn once_trampoline<H: TimerHandler>(
    cont: sys::TSCont,
    _event: sys::TSEvent,
    _edata: *mut c_void,
) -> c_int {
    // SAFETY: cont was created by `EventThread::run_once` or `run_after` through `scheduled_cont`.
    unsafe { run_scheduled::<H>(cont) };
    // SAFETY: this one-shot continuation is not used again.
    unsafe { sys::TSContDestroy(cont) };
    0
}

/// Handles the timers started with [`TxnTimer::start`].
pub trait TxnTimerHandler: 'static {
    /// The timer of `txn` went off (on the thread that started it).
    fn on_txn_timer(txn: Txn);
}

/// One pending transaction timer (keyed by its id, the continuation's data): the transaction,
/// the thread it runs on, and what cancelling it needs.
struct PendingTxnTimer {
    txn: Txn,
    thread: EventThread,
    action: sys::TSAction,
    cont: sys::TSCont,
}

// SAFETY: opaque ATS handles; the action and continuation are only used on `thread` (see
// `TxnTimer::drop`), the transaction only by the timer's handler on that thread.
unsafe impl Send for PendingTxnTimer {}

type TxnTimerTable = HashMap<usize, PendingTxnTimer>;

/// Transaction timers that have neither gone off nor been cancelled, by id. Process-wide (not
/// per thread) so that a timer dropped on another thread than its own still stops its handler
/// from running; only paused transactions have timers, so the lock is off the common path.
static TXN_TIMERS: LazyLock<Mutex<TxnTimerTable>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_TXN_TIMER: AtomicUsize = AtomicUsize::new(1);

fn txn_timers() -> MutexGuard<'static, TxnTimerTable> {
    TXN_TIMERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes timer `id` from the table, if it is still pending.
fn take_txn_timer(id: usize) -> Option<PendingTxnTimer> {
    txn_timers().remove(&id)
}

/// A one-shot timer for one transaction on the current event thread: `H::on_txn_timer(txn)`
/// runs once, on that thread, after the delay — unless the timer is dropped first. Dropping it
/// cancels it (from its own thread it also frees the continuation at once; from another, the
/// event still comes and does nothing). A holder that drops it no later than the
/// transaction's `TXN_CLOSE` hook therefore never gets a call for a closed transaction.
#[must_use = "dropping the timer cancels it"]
pub struct TxnTimer {
    id: usize,
}

impl TxnTimer {
    /// Starts the timer for `txn`. `None` when this is not an event thread or ATS refused.
    pub fn start<H: TxnTimerHandler>(txn: Txn, delay: Duration) -> Option<TxnTimer> {
        let ms = schedule_ms(delay);
        let thread = EventThread::current()?;
        let id = NEXT_TXN_TIMER.fetch_add(1, Ordering::Relaxed);
        let cont = scheduled_cont(Some(txn_timer_trampoline::<H>), id);
        // The entry is in the table before the event can run.
        let mut timers = txn_timers();
        // SAFETY: cont and the thread are valid.
        let action = unsafe { sys::TSContScheduleOnThread(cont, ms, thread.0) };
        if action.is_null() {
            drop(timers);
            // SAFETY: never scheduled, so nothing else refers to it.
            unsafe { sys::TSContDestroy(cont) };
            return None;
        }
        timers.insert(id, PendingTxnTimer { txn, thread, action, cont });
        Some(TxnTimer { id })
    }
}

impl Drop for TxnTimer {
    fn drop(&mut self) {
        // Not in the table: it went off already.
        let Some(pending) = take_txn_timer(self.id) else { return };
        if EventThread::current() != Some(pending.thread) {
            // Out of the table, its event will find nothing to do and free the continuation.
            return;
        }
        // SAFETY: the timer is pending (the trampoline takes it out of the table before
        // anything else) and its event runs on this thread, so not concurrently: the action is
        // live. Cancelling a TSContScheduleOnThread action also settles the continuation's
        // event count, after which destroying it frees it at once.
        unsafe {
            sys::TSActionCancel(pending.action);
            sys::TSContDestroy(pending.cont);
        }
    }
}

unsafe extern "C" fn txn_timer_trampoline<H: TxnTimerHandler>(
    cont: sys::TSCont,
    _event: sys::TSEvent,
    _edata: *mut c_void,
) -> c_int {
    // SAFETY: cont was created by `TxnTimer::start` through `scheduled_cont`; its data is the id.
    let id = unsafe { sys::TSContDataGet(cont) } as usize;
    let pending = take_txn_timer(id);
    // SAFETY: this one-shot continuation is not used again (it is out of the table).
    unsafe { sys::TSContDestroy(cont) };
    // A timer still in the table has not been dropped, so its transaction has not closed.
    if let Some(p) = pending
        && catch_unwind(AssertUnwindSafe(|| H::on_txn_timer(p.txn))).is_err()
    {
        log::error(b"ats_wasm: internal error (panic) in a transaction timer; ATS goes on");
    }
    0
}
