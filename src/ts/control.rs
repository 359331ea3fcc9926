//! Operator control: `traffic_ctl config reload` (`TSMgmtUpdateRegister`), `traffic_ctl plugin
//! msg <tag> <data>` (`TS_LIFECYCLE_MSG_HOOK`), and work handed to ATS's task threads
//! (`ET_TASK`, `TSContScheduleOnPool`).

use std::ffi::{CStr, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::hooks::TimerHandler;
use super::log;
use super::sys;

/// Receives operator requests. Both run on a management thread, never on a net thread: they
/// should hand long work to [`run_on_task_thread`].
pub trait ControlHandler: 'static {
    /// `traffic_ctl config reload` was run (ATS re-read its configuration files).
    fn on_config_reload();
    /// `traffic_ctl plugin msg <tag> <data>` was run; `data` without ATS's trailing NUL.
    fn on_message(tag: &[u8], data: &[u8]);
}

unsafe extern "C" fn control_trampoline<H: ControlHandler>(
    _cont: sys::TSCont,
    event: sys::TSEvent,
    edata: *mut c_void,
) -> c_int {
    let run = AssertUnwindSafe(|| {
        if event == sys::TS_EVENT_MGMT_UPDATE {
            H::on_config_reload();
        } else if event == sys::TS_EVENT_LIFECYCLE_MSG && !edata.is_null() {
            // SAFETY: for TS_EVENT_LIFECYCLE_MSG, ATS passes a TSPluginMsg valid for the call.
            let msg = unsafe { &*(edata as *const sys::TSPluginMsg) };
            let tag = if msg.tag.is_null() {
                &[][..]
            } else {
                // SAFETY: the tag is a NUL-terminated string owned by ATS for the call.
                unsafe { CStr::from_ptr(msg.tag) }.to_bytes()
            };
            let data = if msg.data.is_null() || msg.data_size == 0 {
                &[][..]
            } else {
                // SAFETY: ATS guarantees data_size readable bytes at data for the call.
                unsafe { std::slice::from_raw_parts(msg.data as *const u8, msg.data_size) }
            };
            let data = data.strip_suffix(b"\0").unwrap_or(data);
            H::on_message(tag, data);
        }
    });
    if catch_unwind(run).is_err() {
        log::error(b"ats_wasm: internal error (panic) handling an operator request; ATS goes on");
    }
    0
}

/// Registers `H` for `traffic_ctl config reload` (as plugin `name`) and for `traffic_ctl plugin
/// msg`. Call once, from `TSPluginInit`.
pub fn register_control<H: ControlHandler>(name: &CStr) {
    // SAFETY: the trampoline has the TSEventFunc signature; the continuation lives for the
    // life of the process (ATS keeps it registered); name is copied by ATS.
    unsafe {
        let cont = sys::TSContCreate(Some(control_trampoline::<H>), std::ptr::null_mut());
        #[cfg(not(ats10))]
        sys::TSMgmtUpdateRegister(cont, name.as_ptr());
        // ATS 10.0 added a third parameter, a file whose mtime gates the callback; null (its
        // default) keeps 9.2's behaviour: called on every `traffic_ctl config reload`.
        #[cfg(ats10)]
        sys::TSMgmtUpdateRegister(cont, name.as_ptr(), std::ptr::null());
        sys::TSLifecycleHookAdd(sys::TS_LIFECYCLE_MSG_HOOK, cont);
    }
}

unsafe extern "C" fn task_trampoline<H: TimerHandler>(
    cont: sys::TSCont,
    _event: sys::TSEvent,
    _edata: *mut c_void,
) -> c_int {
    // SAFETY: cont was made by `run_on_task_thread` with a usize as its data.
    let data = unsafe { sys::TSContDataGet(cont) } as usize;
    if catch_unwind(AssertUnwindSafe(|| H::on_timer(data))).is_err() {
        log::error(b"ats_wasm: internal error (panic) in task-thread work; ATS goes on");
    }
    // SAFETY: this one-shot continuation is not used again.
    unsafe { sys::TSContDestroy(cont) };
    0
}

/// Runs `H::on_timer(data)` once, soon, on one of ATS's task threads (`ET_TASK`). Returns false
/// if ATS refused.
pub fn run_on_task_thread<H: TimerHandler>(data: usize) -> bool {
    // SAFETY: the trampoline has the TSEventFunc signature; the data is a plain integer; the
    // continuation has its own mutex, as ATS requires for scheduled continuations, and
    // destroys itself after running.
    unsafe {
        let cont = sys::TSContCreate(Some(task_trampoline::<H>), sys::TSMutexCreate());
        sys::TSContDataSet(cont, data as *mut c_void);
        !sys::TSContScheduleOnPool(cont, 0, sys::TS_THREAD_POOL_TASK).is_null()
    }
}
