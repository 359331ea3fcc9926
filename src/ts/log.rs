//! ATS diagnostics: `TSDebug` (console, when the tag is enabled; ATS 10's `DbgCtl` through
//! `shim10.cc`), `TSNote`, `TSWarning` and `TSError` (`diags.log`).

use std::ffi::{CStr, c_int};

use super::sys;

/// The debug tag of everything ats-wasm writes with [`debug`].
pub const TAG: &CStr = c"ats_wasm";

/// Whether `proxy.config.diags.debug.tags` enables [`TAG`].
#[cfg(not(ats10))]
pub fn debug_enabled() -> bool {
    // SAFETY: TAG is a NUL-terminated static string.
    unsafe { sys::TSIsDebugTagSet(TAG.as_ptr()) != 0 }
}

// ATS 10.0 removed TSDebug and TSIsDebugTagSet for the C++ debug-control class DbgCtl:
// src/ts/shim10.cc wraps the one DbgCtl for TAG ("ats_wasm") in these two C functions.
#[cfg(ats10)]
unsafe extern "C" {
    fn ats_wasm_dbg_on() -> c_int;
    fn ats_wasm_dbg(msg: *const u8, len: c_int);
}

/// Whether `proxy.config.diags.debug.tags` enables [`TAG`].
#[cfg(ats10)]
pub fn debug_enabled() -> bool {
    // SAFETY: takes no arguments; the shim's DbgCtl lives for the whole process.
    unsafe { ats_wasm_dbg_on() != 0 }
}

fn len(msg: &[u8]) -> c_int {
    msg.len().min(c_int::MAX as usize) as c_int
}

/// Writes `msg` with `TSDebug` under [`TAG`] (shown only when the tag is enabled).
#[cfg(not(ats10))]
pub fn debug(msg: &[u8]) {
    // SAFETY: "%.*s" reads exactly `len` bytes from `msg`, which outlives the call.
    unsafe { sys::TSDebug(TAG.as_ptr(), c"%.*s".as_ptr(), len(msg), msg.as_ptr()) }
}

/// Writes `msg` under [`TAG`] through ATS 10's debug control (shown only when the tag is enabled).
#[cfg(ats10)]
pub fn debug(msg: &[u8]) {
    // SAFETY: the shim prints with "%.*s", reading exactly `len` bytes of `msg`, which outlives
    // the call.
    unsafe { ats_wasm_dbg(msg.as_ptr(), len(msg)) }
}

/// Writes `msg` to `diags.log` at NOTE level.
pub fn note(msg: &[u8]) {
    // SAFETY: as in `debug`.
    unsafe { sys::TSNote(c"%.*s".as_ptr(), len(msg), msg.as_ptr()) }
}

/// Writes `msg` to `diags.log` at WARNING level.
pub fn warning(msg: &[u8]) {
    // SAFETY: as in `debug`.
    unsafe { sys::TSWarning(c"%.*s".as_ptr(), len(msg), msg.as_ptr()) }
}

/// Writes `msg` to `diags.log` at ERROR level.
pub fn error(msg: &[u8]) {
    // SAFETY: as in `debug`.
    unsafe { sys::TSError(c"%.*s".as_ptr(), len(msg), msg.as_ptr()) }
}
