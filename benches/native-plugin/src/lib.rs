//! Native ATS 9.2 plugin doing the work of `examples/add-headers` configured with
//! `{"request_headers": {"x-added-by": "ats-wasm"}, "response_headers": {"x-wasm-filter": "add-headers"}}`:
//! adds `x-added-by: ats-wasm` to the client request at READ_REQUEST_HDR (before remap, so it
//! reaches the origin) and `x-wasm-filter: add-headers` to the client response at
//! SEND_RESPONSE_HDR. The baseline "native plugin doing the same work" for `benches/load.sh`.
//!
//! The few `extern "C"` declarations are written by hand from `/usr/include/ts/ts.h` and
//! `apidefs.h`; `traffic_server` resolves them when it loads the library.

use std::ffi::{c_char, c_int, c_void};
use std::panic::catch_unwind;
use std::ptr;

#[repr(C)]
struct Opaque {
    _p: [u8; 0],
}
type TSCont = *mut Opaque;
type TSMutex = *mut Opaque;
type TSHttpTxn = *mut Opaque;
type TSMBuffer = *mut Opaque;
type TSMLoc = *mut Opaque;
type TSEvent = c_int;
type TSHttpHookID = c_int;
type TSReturnCode = c_int;
type TSEventFunc = unsafe extern "C" fn(TSCont, TSEvent, *mut c_void) -> c_int;

#[repr(C)]
struct TSPluginRegistrationInfo {
    plugin_name: *const c_char,
    vendor_name: *const c_char,
    support_email: *const c_char,
}

// apidefs.h
const TS_SUCCESS: TSReturnCode = 0;
const TS_HTTP_READ_REQUEST_HDR_HOOK: TSHttpHookID = 0;
const TS_HTTP_SEND_RESPONSE_HDR_HOOK: TSHttpHookID = 5;
const TS_EVENT_HTTP_CONTINUE: TSEvent = 60000;
const TS_EVENT_HTTP_READ_REQUEST_HDR: TSEvent = 60002;
const TS_EVENT_HTTP_SEND_RESPONSE_HDR: TSEvent = 60007;

unsafe extern "C" {
    fn TSPluginRegister(info: *const TSPluginRegistrationInfo) -> TSReturnCode;
    fn TSContCreate(func: TSEventFunc, mutex: TSMutex) -> TSCont;
    fn TSHttpHookAdd(id: TSHttpHookID, contp: TSCont);
    fn TSHttpTxnHookAdd(txnp: TSHttpTxn, id: TSHttpHookID, contp: TSCont);
    fn TSHttpTxnReenable(txnp: TSHttpTxn, event: TSEvent);
    fn TSHttpTxnClientReqGet(txnp: TSHttpTxn, bufp: *mut TSMBuffer, offset: *mut TSMLoc) -> TSReturnCode;
    fn TSHttpTxnClientRespGet(txnp: TSHttpTxn, bufp: *mut TSMBuffer, offset: *mut TSMLoc) -> TSReturnCode;
    fn TSMimeHdrFieldCreateNamed(
        bufp: TSMBuffer,
        mh_mloc: TSMLoc,
        name: *const c_char,
        name_len: c_int,
        locp: *mut TSMLoc,
    ) -> TSReturnCode;
    fn TSMimeHdrFieldValueStringSet(
        bufp: TSMBuffer,
        hdr: TSMLoc,
        field: TSMLoc,
        idx: c_int,
        value: *const c_char,
        length: c_int,
    ) -> TSReturnCode;
    fn TSMimeHdrFieldAppend(bufp: TSMBuffer, hdr: TSMLoc, field: TSMLoc) -> TSReturnCode;
    fn TSHandleMLocRelease(bufp: TSMBuffer, parent: TSMLoc, mloc: TSMLoc) -> TSReturnCode;
}

type HdrGet = unsafe extern "C" fn(TSHttpTxn, *mut TSMBuffer, *mut TSMLoc) -> TSReturnCode;

/// Appends `name: value` to the header `get` returns for `txn`.
unsafe fn add_header(txn: TSHttpTxn, get: HdrGet, name: &[u8], value: &[u8]) {
    let mut buf: TSMBuffer = ptr::null_mut();
    let mut hdr: TSMLoc = ptr::null_mut();
    unsafe {
        if get(txn, &mut buf, &mut hdr) != TS_SUCCESS {
            return;
        }
        let mut field: TSMLoc = ptr::null_mut();
        if TSMimeHdrFieldCreateNamed(buf, hdr, name.as_ptr().cast(), name.len() as c_int, &mut field) == TS_SUCCESS {
            TSMimeHdrFieldValueStringSet(buf, hdr, field, -1, value.as_ptr().cast(), value.len() as c_int);
            TSMimeHdrFieldAppend(buf, hdr, field);
            TSHandleMLocRelease(buf, hdr, field);
        }
        // TS_NULL_MLOC is a null pointer.
        TSHandleMLocRelease(buf, ptr::null_mut(), hdr);
    }
}

unsafe extern "C" fn handle(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    let txn: TSHttpTxn = edata.cast();
    // A panic must not unwind into ATS; whatever happens, the transaction continues.
    let _ = catch_unwind(|| unsafe {
        match event {
            TS_EVENT_HTTP_READ_REQUEST_HDR => {
                add_header(txn, TSHttpTxnClientReqGet, b"x-added-by", b"ats-wasm");
                TSHttpTxnHookAdd(txn, TS_HTTP_SEND_RESPONSE_HDR_HOOK, contp);
            }
            TS_EVENT_HTTP_SEND_RESPONSE_HDR => {
                add_header(txn, TSHttpTxnClientRespGet, b"x-wasm-filter", b"add-headers");
            }
            _ => {}
        }
    });
    unsafe { TSHttpTxnReenable(txn, TS_EVENT_HTTP_CONTINUE) };
    0
}

/// # Safety
/// Called once by `traffic_server` on its main thread when it loads the plugin.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TSPluginInit(_argc: c_int, _argv: *const *const c_char) {
    let info = TSPluginRegistrationInfo {
        plugin_name: c"native_add_headers".as_ptr(),
        vendor_name: c"ats-wasm".as_ptr(),
        support_email: c"".as_ptr(),
    };
    unsafe {
        if TSPluginRegister(&info) != TS_SUCCESS {
            return;
        }
        let cont = TSContCreate(handle, ptr::null_mut());
        TSHttpHookAdd(TS_HTTP_READ_REQUEST_HDR_HOOK, cont);
    }
}
