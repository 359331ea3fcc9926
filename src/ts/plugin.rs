//! Plugin registration and process-wide ATS facts.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use super::sys;

/// Registers the plugin (`TSPluginRegister`). Returns false if ATS refused.
pub fn register(name: &CStr, vendor: &CStr, email: &CStr) -> bool {
    let info = sys::TSPluginRegistrationInfo {
        plugin_name: name.as_ptr(),
        vendor_name: vendor.as_ptr(),
        support_email: email.as_ptr(),
    };
    // SAFETY: info points to NUL-terminated strings that outlive the call (ATS copies them).
    unsafe { sys::TSPluginRegister(&info) == sys::TS_SUCCESS }
}

/// Asks ATS not to copy this `.so` for each remap.config reload (`TSPluginDSOReloadEnable(0)`,
/// only valid inside `TSPluginInit`): remap rules then load the very library `plugin.config`
/// loaded, so global and per-rule filters share one engine, one set of statics and one
/// metrics endpoint. Returns false if ATS refused.
pub fn keep_one_dso_for_remap() -> bool {
    // SAFETY: a plain call; ATS checks it is made from TSPluginInit.
    unsafe { sys::TSPluginDSOReloadEnable(0) == sys::TS_SUCCESS }
}

/// The ATS configuration directory (where `plugin.config` lives).
pub fn config_dir() -> PathBuf {
    // SAFETY: ATS returns a static NUL-terminated string (or null).
    let p = unsafe { sys::TSConfigDirGet() };
    if p.is_null() {
        return PathBuf::from(".");
    }
    // SAFETY: non-null, NUL-terminated, static.
    PathBuf::from(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Reserves a transaction user argument slot named `name`.
pub fn reserve_txn_arg(name: &str, description: &str) -> Option<i32> {
    let name = CString::new(name).ok()?;
    let description = CString::new(description).ok()?;
    let mut idx: std::ffi::c_int = -1;
    // SAFETY: valid NUL-terminated strings; idx is a valid out-param.
    let rc =
        unsafe { sys::TSUserArgIndexReserve(sys::TS_USER_ARGS_TXN, name.as_ptr(), description.as_ptr(), &mut idx) };
    (rc == sys::TS_SUCCESS).then_some(idx)
}
