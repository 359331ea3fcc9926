//! The symbols ATS looks up in the plugin. They are defined by [`ts_plugin_entry!`], invoked
//! from the crate root with the plugin's own init function, so this layer never names the
//! plugin above it (as ngx-rust's `ngx_modules!` does for nginx).

use std::ffi::{CStr, c_char, c_int};
use std::panic::{UnwindSafe, catch_unwind};

use super::log;

/// Defines `TSPluginInit`, the symbol ATS calls once, on its main thread, when
/// `plugin.config` loads the plugin: it converts the arguments and runs `$init(&[String])`
/// under `catch_unwind` (a panic is one diags.log line, never an abort).
#[macro_export]
macro_rules! ts_plugin_entry {
    ($init:path) => {
        /// Called by ATS when `plugin.config` loads the plugin (see [`ts_plugin_entry!`]).
        ///
        /// # Safety
        /// ATS passes `argc` valid NUL-terminated strings in `argv`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn TSPluginInit(argc: ::std::ffi::c_int, argv: *const *const ::std::ffi::c_char) {
            // SAFETY: forwarded from ATS's call, with ATS's guarantee on argc/argv.
            unsafe { $crate::ts::entry::plugin_init(argc, argv, |args| $init(args)) }
        }
    };
}

/// The body of `TSPluginInit`: the arguments as strings, then `init` under `catch_unwind`.
///
/// # Safety
/// `argv` holds `argc` valid NUL-terminated strings (or null entries).
pub unsafe fn plugin_init(argc: c_int, argv: *const *const c_char, init: impl FnOnce(&[String]) + UnwindSafe) {
    let mut args = Vec::with_capacity(argc.max(0) as usize);
    for i in 0..argc.max(0) as usize {
        // SAFETY: the caller guarantees argc valid entries.
        let p = unsafe { *argv.add(i) };
        if !p.is_null() {
            // SAFETY: non-null, NUL-terminated (the caller's guarantee).
            args.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    if catch_unwind(move || init(&args)).is_err() {
        log::error(b"ats_wasm: internal error (panic) during plugin initialization; the plugin is disabled");
    }
}
