//! The remap plugin interface (`ts/remap.h`): the symbols ATS looks up when a `remap.config`
//! rule names the plugin (`@plugin=libats_wasm.so @pparam=…`). They are defined by
//! [`ts_remap_entry!`] over a [`RemapHandler`], so this layer never names the plugin above it.
//!
//! ATS calls `TSRemapInit` once per loaded library, `TSRemapNewInstance` once per rule (one at a
//! time, on the thread loading remap.config), `TSRemapDoRemap` on a transaction's thread for
//! each request the rule matched (concurrently for one instance), and `TSRemapDeleteInstance`
//! when no transaction holds the rule's table any more. Every call runs under `catch_unwind`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::log;
use super::sys;
use super::txn::Txn;

/// What a remap rule's plugin instance does; implemented by the plugin.
pub trait RemapHandler {
    /// One rule's state, owned by ATS between `TSRemapNewInstance` and `TSRemapDeleteInstance`.
    type Instance: Send + Sync + 'static;

    /// The library was loaded as a remap plugin (`TSRemapInit`). The error reaches ATS.
    fn init() -> Result<(), String>;

    /// A rule naming the plugin: `from` and `to` are the rule's URLs, `params` its `@pparam`s
    /// in order. The error (one line) reaches ATS, which then does not use the rule.
    fn new_instance(from: &str, to: &str, params: &[String]) -> Result<Self::Instance, String>;

    /// A request matched the rule. The plugin never rewrites the URL itself: ATS applies the
    /// rule's `to` URL.
    fn do_remap(instance: &Self::Instance, txn: Txn);
}

/// Defines `TSRemapInit`, `TSRemapNewInstance`, `TSRemapDoRemap` and `TSRemapDeleteInstance`
/// over the [`RemapHandler`] `$handler`.
#[macro_export]
macro_rules! ts_remap_entry {
    ($handler:ty) => {
        /// Called by ATS when a remap rule first loads the plugin (see [`ts_remap_entry!`]).
        ///
        /// # Safety
        /// ATS passes a valid (or null) interface and an error buffer of `errbuf_size` bytes.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn TSRemapInit(
            api: *mut $crate::ts::sys::TSRemapInterface,
            errbuf: *mut ::std::ffi::c_char,
            errbuf_size: ::std::ffi::c_int,
        ) -> $crate::ts::sys::TSReturnCode {
            // SAFETY: forwarded from ATS's call, with ATS's guarantees.
            unsafe { $crate::ts::remap::init::<$handler>(api, errbuf, errbuf_size) }
        }

        /// Called by ATS for each remap rule naming the plugin.
        ///
        /// # Safety
        /// ATS passes `argc` valid strings, a valid instance out-pointer and an error buffer.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn TSRemapNewInstance(
            argc: ::std::ffi::c_int,
            argv: *mut *mut ::std::ffi::c_char,
            ih: *mut *mut ::std::ffi::c_void,
            errbuf: *mut ::std::ffi::c_char,
            errbuf_size: ::std::ffi::c_int,
        ) -> $crate::ts::sys::TSReturnCode {
            // SAFETY: forwarded from ATS's call, with ATS's guarantees.
            unsafe { $crate::ts::remap::new_instance::<$handler>(argc, argv, ih, errbuf, errbuf_size) }
        }

        /// Called by ATS once no transaction holds the rule's table.
        ///
        /// # Safety
        /// `ih` was made by `TSRemapNewInstance` and is not used again.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn TSRemapDeleteInstance(ih: *mut ::std::ffi::c_void) {
            // SAFETY: forwarded from ATS's call, with ATS's guarantees.
            unsafe { $crate::ts::remap::delete_instance::<$handler>(ih) }
        }

        /// Called by ATS for each request the rule matched.
        ///
        /// # Safety
        /// `ih` was made by `TSRemapNewInstance`; `txn` is a live transaction.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn TSRemapDoRemap(
            ih: *mut ::std::ffi::c_void,
            txn: $crate::ts::sys::TSHttpTxn,
            _rri: *mut $crate::ts::sys::TSRemapRequestInfo,
        ) -> $crate::ts::sys::TSRemapStatus {
            // SAFETY: forwarded from ATS's call, with ATS's guarantees.
            unsafe { $crate::ts::remap::do_remap::<$handler>(ih, txn) }
        }
    };
}

/// Writes `msg` into ATS's error buffer (truncated, NUL-terminated).
///
/// # Safety
/// `errbuf` is null or points to `size` writable bytes.
unsafe fn write_errbuf(errbuf: *mut c_char, size: c_int, msg: &str) {
    if errbuf.is_null() || size <= 0 {
        return;
    }
    let n = msg.len().min(size as usize - 1);
    // SAFETY: errbuf has `size` bytes (the caller's guarantee); n + 1 <= size.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), errbuf as *mut u8, n);
        *errbuf.add(n) = 0;
    }
}

/// The body of `TSRemapInit`.
///
/// # Safety
/// As for `TSRemapInit`.
pub unsafe fn init<H: RemapHandler>(
    api: *mut sys::TSRemapInterface,
    errbuf: *mut c_char,
    errbuf_size: c_int,
) -> sys::TSReturnCode {
    // SAFETY: ATS passes a valid interface or null.
    let version = unsafe { api.as_ref() }.map(|a| a.tsremap_version).unwrap_or(0);
    let result = if version >> 16 < std::ffi::c_ulong::from(sys::TSREMAP_VMAJOR) {
        Err(format!("remap API version {}.{} is too old", version >> 16, version & 0xffff))
    } else {
        catch_unwind(H::init).unwrap_or_else(|_| Err("internal error (panic) in TSRemapInit".into()))
    };
    match result {
        Ok(()) => sys::TS_SUCCESS,
        Err(e) => {
            // SAFETY: ATS's buffer of errbuf_size bytes.
            unsafe { write_errbuf(errbuf, errbuf_size, &e) };
            sys::TS_ERROR
        }
    }
}

/// The body of `TSRemapNewInstance`: `argv[0]` and `argv[1]` are the rule's URLs, the rest
/// its `@pparam`s.
///
/// # Safety
/// As for `TSRemapNewInstance`.
pub unsafe fn new_instance<H: RemapHandler>(
    argc: c_int,
    argv: *mut *mut c_char,
    ih: *mut *mut c_void,
    errbuf: *mut c_char,
    errbuf_size: c_int,
) -> sys::TSReturnCode {
    let mut args = Vec::with_capacity(argc.max(0) as usize);
    for i in 0..argc.max(0) as usize {
        // SAFETY: ATS passes argc entries.
        let p = unsafe { *argv.add(i) };
        if !p.is_null() {
            // SAFETY: non-null, NUL-terminated (ATS's guarantee).
            args.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let from = args.first().map(String::as_str).unwrap_or_default();
        let to = args.get(1).map(String::as_str).unwrap_or_default();
        H::new_instance(from, to, args.get(2..).unwrap_or_default())
    }))
    .unwrap_or_else(|_| Err("internal error (panic) while creating the rule's instance".into()));
    match result {
        Ok(instance) if !ih.is_null() => {
            // SAFETY: ih is ATS's valid out-pointer; ownership goes to ATS until
            // TSRemapDeleteInstance gives it back.
            unsafe { *ih = Box::into_raw(Box::new(instance)) as *mut c_void };
            sys::TS_SUCCESS
        }
        Ok(_) => sys::TS_ERROR,
        Err(e) => {
            // SAFETY: ATS's buffer of errbuf_size bytes.
            unsafe { write_errbuf(errbuf, errbuf_size, &e) };
            sys::TS_ERROR
        }
    }
}

/// The body of `TSRemapDeleteInstance`: the instance is dropped.
///
/// # Safety
/// `ih` is null or came from [`new_instance`] for the same `H`, and is not used again.
pub unsafe fn delete_instance<H: RemapHandler>(ih: *mut c_void) {
    if ih.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in new_instance for H::Instance; ATS gives it back once.
    let instance = unsafe { Box::from_raw(ih as *mut H::Instance) };
    if catch_unwind(AssertUnwindSafe(move || drop(instance))).is_err() {
        log::error(b"ats_wasm: internal error (panic) while deleting a remap rule's instance");
    }
}

/// The body of `TSRemapDoRemap`: never rewrites the URL (`TSREMAP_NO_REMAP`), so ATS applies
/// the rule's own mapping.
///
/// # Safety
/// `ih` came from [`new_instance`] for the same `H` and is alive; `txn` is live.
pub unsafe fn do_remap<H: RemapHandler>(ih: *mut c_void, txn: sys::TSHttpTxn) -> sys::TSRemapStatus {
    if ih.is_null() || txn.is_null() {
        return sys::TSREMAP_NO_REMAP;
    }
    // SAFETY: made by new_instance for H::Instance; ATS keeps it alive during the call, and
    // only shared references are made (DoRemap may run concurrently for one instance).
    let instance = unsafe { &*(ih as *const H::Instance) };
    // SAFETY: a live transaction handle from ATS.
    let txn = unsafe { Txn::from_raw(txn as *mut c_void) };
    if catch_unwind(AssertUnwindSafe(|| H::do_remap(instance, txn))).is_err() {
        log::error(b"ats_wasm: internal error (panic) in a remap rule; the request goes on without its filters");
    }
    sys::TSREMAP_NO_REMAP
}
