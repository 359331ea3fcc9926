//! Native ATS 9.2 plugin doing the work of `examples/add-headers` configured with
//! `{"request_headers": {"x-added-by": "ats-wasm"}, "response_headers": {"x-wasm-filter": "add-headers"}}`:
//! adds `x-added-by: ats-wasm` to the client request at READ_REQUEST_HDR (before remap, so it
//! reaches the origin) and `x-wasm-filter: add-headers` to the client response at
//! SEND_RESPONSE_HDR. The baseline "native plugin doing the same work" for `benches/load.sh`.
//!
//! With the argument `--null-transform` it also puts every response body through a response
//! transform that passes it on unchanged (ATS's blocks handed on with `TSIOBufferCopy`, no
//! byte copied, the transformed response not cached, as ats-wasm does): the least any plugin
//! that sees response bodies costs in ATS 9.2, the floor for ats-wasm's `bodies: auto`
//! pass-through in `benches/instructions.sh` (configuration `native-bodies`).
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
type TSVConn = *mut Opaque;
#[allow(clippy::upper_case_acronyms)] // ATS's own name
type TSVIO = *mut Opaque;
type TSIOBuffer = *mut Opaque;
type TSIOBufferReader = *mut Opaque;
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
const TS_HTTP_RESPONSE_TRANSFORM_HOOK: TSHttpHookID = 7;
const TS_EVENT_ERROR: TSEvent = 3;
const TS_EVENT_VCONN_WRITE_READY: TSEvent = 101;
const TS_EVENT_VCONN_WRITE_COMPLETE: TSEvent = 103;
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
    fn TSContDestroy(contp: TSCont);
    fn TSContDataGet(contp: TSCont) -> *mut c_void;
    fn TSContDataSet(contp: TSCont, data: *mut c_void);
    fn TSContCall(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int;
    fn TSTransformCreate(func: TSEventFunc, txnp: TSHttpTxn) -> TSVConn;
    fn TSTransformOutputVConnGet(connp: TSVConn) -> TSVConn;
    fn TSHttpTxnTransformedRespCache(txnp: TSHttpTxn, on: c_int);
    fn TSHttpTxnUntransformedRespCache(txnp: TSHttpTxn, on: c_int);
    fn TSVConnClosedGet(connp: TSVConn) -> c_int;
    fn TSVConnWriteVIOGet(connp: TSVConn) -> TSVIO;
    fn TSVConnWrite(connp: TSVConn, contp: TSCont, readerp: TSIOBufferReader, nbytes: i64) -> TSVIO;
    fn TSVConnShutdown(connp: TSVConn, read: c_int, write: c_int);
    fn TSVIOBufferGet(viop: TSVIO) -> TSIOBuffer;
    fn TSVIOReaderGet(viop: TSVIO) -> TSIOBufferReader;
    fn TSVIOContGet(viop: TSVIO) -> TSCont;
    fn TSVIONTodoGet(viop: TSVIO) -> i64;
    fn TSVIONDoneGet(viop: TSVIO) -> i64;
    fn TSVIONDoneSet(viop: TSVIO, ndone: i64);
    fn TSVIONBytesSet(viop: TSVIO, nbytes: i64);
    fn TSVIOReenable(viop: TSVIO);
    fn TSIOBufferCreate() -> TSIOBuffer;
    fn TSIOBufferDestroy(bufp: TSIOBuffer);
    fn TSIOBufferReaderAlloc(bufp: TSIOBuffer) -> TSIOBufferReader;
    fn TSIOBufferReaderAvail(readerp: TSIOBufferReader) -> i64;
    fn TSIOBufferReaderConsume(readerp: TSIOBufferReader, nbytes: i64);
    fn TSIOBufferCopy(bufp: TSIOBuffer, readerp: TSIOBufferReader, length: i64, offset: i64) -> i64;
}

/// Set by `--null-transform`.
static NULL_TRANSFORM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A null transform's output: the buffer it writes to and the VIO of that write.
struct NullOutput {
    buf: TSIOBuffer,
    vio: TSVIO,
}

/// Moves what input there is to the output unchanged; ends the output when the input is done.
unsafe fn null_transform_step(vc: TSVConn) {
    unsafe {
        let input = TSVConnWriteVIOGet(vc);
        let mut out = TSContDataGet(vc).cast::<NullOutput>();
        if out.is_null() {
            let buf = TSIOBufferCreate();
            let reader = TSIOBufferReaderAlloc(buf);
            let vio = TSVConnWrite(TSTransformOutputVConnGet(vc), vc, reader, i64::MAX);
            out = Box::into_raw(Box::new(NullOutput { buf, vio }));
            TSContDataSet(vc, out.cast());
        }
        if TSVIOBufferGet(input).is_null() {
            TSVIONBytesSet((*out).vio, TSVIONDoneGet(input));
            TSVIOReenable((*out).vio);
            return;
        }
        let todo = TSVIONTodoGet(input);
        if todo > 0 {
            let reader = TSVIOReaderGet(input);
            let n = todo.min(TSIOBufferReaderAvail(reader));
            if n > 0 {
                TSIOBufferCopy((*out).buf, reader, n, 0);
                TSIOBufferReaderConsume(reader, n);
                TSVIONDoneSet(input, TSVIONDoneGet(input) + n);
            }
        }
        if TSVIONTodoGet(input) > 0 {
            TSVIOReenable((*out).vio);
            TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_READY, input.cast());
        } else {
            TSVIONBytesSet((*out).vio, TSVIONDoneGet(input));
            TSVIOReenable((*out).vio);
            TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_COMPLETE, input.cast());
        }
    }
}

unsafe extern "C" fn null_transform(contp: TSCont, event: TSEvent, _edata: *mut c_void) -> c_int {
    let vc: TSVConn = contp;
    let _ = catch_unwind(|| unsafe {
        if TSVConnClosedGet(vc) != 0 {
            let out = TSContDataGet(vc).cast::<NullOutput>();
            if !out.is_null() {
                TSIOBufferDestroy(Box::from_raw(out).buf);
            }
            TSContDestroy(contp);
            return;
        }
        match event {
            TS_EVENT_ERROR => {
                let input = TSVConnWriteVIOGet(vc);
                TSContCall(TSVIOContGet(input), TS_EVENT_ERROR, input.cast());
            }
            TS_EVENT_VCONN_WRITE_COMPLETE => TSVConnShutdown(TSTransformOutputVConnGet(vc), 0, 1),
            _ => null_transform_step(vc),
        }
    });
    0
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
                if NULL_TRANSFORM.load(std::sync::atomic::Ordering::Relaxed) {
                    let vc = TSTransformCreate(null_transform, txn);
                    TSHttpTxnHookAdd(txn, TS_HTTP_RESPONSE_TRANSFORM_HOOK, vc);
                    TSHttpTxnTransformedRespCache(txn, 0);
                    TSHttpTxnUntransformedRespCache(txn, 1);
                }
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
pub unsafe extern "C" fn TSPluginInit(argc: c_int, argv: *const *const c_char) {
    for i in 1..argc.max(0) as usize {
        // SAFETY: ATS passes argc C strings in argv.
        let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
        if arg.to_bytes() == b"--null-transform" {
            NULL_TRANSFORM.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
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
