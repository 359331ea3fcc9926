//! The symbols ATS looks up in the plugin: `TSPluginInit`.

use std::ffi::{CStr, c_char, c_int};
use std::panic::catch_unwind;

use super::log;

/// Called by ATS once, on its main thread, when `plugin.config` loads the plugin.
/// Converts the arguments and runs [`crate::plugin::init`] under `catch_unwind`.
///
/// # Safety
/// ATS passes `argc` valid NUL-terminated strings in `argv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TSPluginInit(argc: c_int, argv: *const *const c_char) {
    let mut args = Vec::with_capacity(argc.max(0) as usize);
    for i in 0..argc.max(0) as usize {
        // SAFETY: ATS guarantees argc valid entries.
        let p = unsafe { *argv.add(i) };
        if !p.is_null() {
            // SAFETY: non-null, NUL-terminated (ATS guarantee).
            args.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    if catch_unwind(|| crate::plugin::init(&args)).is_err() {
        log::error(b"ats_wasm: internal error (panic) during plugin initialization; the plugin is disabled");
    }
}
